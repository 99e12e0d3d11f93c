//! The child-process helper end to end: this test binary re-run as the ignored
//! `child_entry` test, in a role, reporting terms and text on stdout.

use std::time::Duration;

use leaderelection_testkit::checker::{Checker, Line};
use leaderelection_testkit::child::{self, Command, Output};
use serde::{Deserialize, Serialize};

const ROLE: &str = "testkit-child";

#[derive(Serialize, Deserialize)]
struct Spec {
    identity: String,
}

/// The child: reports one term, acts once a `GO` arrives on stdin, then ends the term
/// and waits for a SIGTERM or for stdin to close.
#[test]
#[ignore = "the child process of the tests below, which run it themselves"]
fn child_entry() {
    let Some(role) = child::role().filter(|r| r.name() == ROLE) else {
        return;
    };
    let spec: Spec = role.spec().expect("a spec");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let (go_tx, mut go) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = child::commands(move |line| {
            let _ = go_tx.send(line.to_owned());
        });
        child::cancel_on_sigterm(&shutdown).expect("a SIGTERM handler");
        child::say("READY");
        let term = child::Term::untimed(7, spec.identity);
        while go.recv().await.as_deref() != Some("GO") {}
        term.act();
        drop(term);
        shutdown.cancelled().await;
        child::say("BYE");
    });
}

fn spawn(checker: &Checker) -> child::Child {
    let spec = Spec {
        identity: "c1".into(),
    };
    Command::role(ROLE, &spec)
        .expect("a spec")
        .libtest("child_entry")
        .checker(checker)
        .spawn()
        .expect("start the child")
}

fn text(t: &'static str) -> impl FnMut(&Output) -> bool {
    move |o| o.text() == Some(t)
}

#[tokio::test]
async fn terms_reach_the_checker_and_sigterm_shuts_down_gracefully() {
    let checker = Checker::new();
    let mut c = spawn(&checker);
    let within = Duration::from_secs(30);
    c.expect("READY", within, text("READY")).await.unwrap();
    let (begin, _) = c
        .expect("BEGIN", within, |o| {
            matches!(o.line(), Some(Line::Begin { .. }))
        })
        .await
        .unwrap();
    assert_eq!(begin.line().map(Line::identity), Some("c1"));
    assert!(c.leads());

    // Frozen, it does not act on a command; resumed, it does.
    c.stop().unwrap();
    c.send("GO").unwrap();
    let frozen = c
        .expect("ACT", Duration::from_millis(300), |o| o.line().is_some())
        .await;
    assert!(frozen.is_err(), "{frozen:?}");
    c.resume().unwrap();
    c.expect("END", within, |o| {
        matches!(o.line(), Some(Line::End { .. }))
    })
    .await
    .unwrap();
    assert!(!c.leads());

    c.terminate().unwrap();
    c.expect("BYE", within, text("BYE")).await.unwrap();
    assert!(c.wait().unwrap().success());
    let report = checker.report();
    assert_eq!(
        (report.intervals, report.actions, report.stalled),
        (1, 1, 1)
    );
    assert!(report.is_safe(), "{}", report.explain());
    // A signal to a process that exited reaches nobody.
    assert!(c.stop().is_err());
}

#[tokio::test]
async fn a_killed_child_ends_its_open_term() {
    let checker = Checker::new();
    let mut c = spawn(&checker);
    c.expect("BEGIN", Duration::from_secs(30), |o| o.line().is_some())
        .await
        .unwrap();
    assert_eq!(c.open_terms(), [(7, "c1".to_owned())]);
    c.kill().unwrap();
    assert!(!c.leads());
    assert!(checker.intervals()[0].end.is_some());
    let closed = c.expect("BYE", Duration::from_secs(5), text("BYE")).await;
    assert!(
        matches!(closed, Err(child::ChildError::Closed { .. })),
        "{closed:?}"
    );
}
