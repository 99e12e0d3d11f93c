//! Malformed and hostile records in the store, planted before the election starts or
//! written over a live leader's record: never a panic, a clear log line or event,
//! and the election recovers after the documented wait.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leaderelection::{ElectionEvent, LeaderElectionRecord, MAX_HONOURED_LEASE};
use leaderelection_testkit::checker::Report;
use tokio::time::{sleep, Instant};

use crate::support::{check, Backend, Election, Memory};

/// What the election must make of a stored record.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Unreadable: treated as held by an unknown holder, overwritten once it has stayed
    /// unchanged for the reader's own lease.
    Unreadable,
    /// Readable, held by a holder that never renews: taken once the honoured lease
    /// (the record's, bounded) has passed since it was first seen.
    Ghost(Duration),
}

fn ghost(lease: i32) -> LeaderElectionRecord {
    LeaderElectionRecord {
        holder_identity: "ghost".into(),
        lease_duration_seconds: lease,
        acquire_time: Some("2024-05-01T10:00:00Z".parse().expect("a valid time")),
        renew_time: Some("2024-05-01T10:00:08Z".parse().expect("a valid time")),
        leader_transitions: 3,
        ..Default::default()
    }
}

/// The hostile records: a name, the stored text, what the election must make of it.
fn cases() -> Vec<(&'static str, String, Expect)> {
    let own = crate::support::Timing::virtual_default().lease;
    let s15 = Duration::from_secs(15);
    let with = |f: &dyn Fn(&mut LeaderElectionRecord)| {
        let mut r = ghost(15);
        f(&mut r);
        r.to_json()
    };
    let g = ghost(15).to_json();
    vec![
        (
            "truncated-json",
            "{\"holderIdentity\": 42".into(),
            Expect::Unreadable,
        ),
        (
            "binary",
            String::from_utf8_lossy(&[0xff, 0x00, 0xfe, 0x7b, 0x22, 0x80]).into_owned(),
            Expect::Unreadable,
        ),
        ("empty", String::new(), Expect::Unreadable),
        ("json-null", "null".into(), Expect::Unreadable),
        ("json-array", "[1,2,3]".into(), Expect::Unreadable),
        // Missing fields are zero values, as Go decodes them: `{}` is a released record
        // (taken at once, not hostile), and a record without times is a ghost holder.
        (
            "no-times",
            r#"{"holderIdentity":"ghost","leaseDurationSeconds":15,"leaderTransitions":1}"#.into(),
            Expect::Ghost(s15),
        ),
        (
            "lease-as-string",
            g.replace(":15,", ":\"15\","),
            Expect::Unreadable,
        ),
        (
            "lease-beyond-i32",
            g.replace(":15,", ":99999999999,"),
            Expect::Unreadable,
        ),
        (
            "lease-1e999",
            g.replace(":15,", ":1e999,"),
            Expect::Unreadable,
        ),
        (
            "lease-1-mib-string",
            g.replace(":15,", &format!(":\"{}\",", "9".repeat(1 << 20))),
            Expect::Unreadable,
        ),
        (
            "lease-fraction",
            g.replace(":15,", ":15.5,"),
            Expect::Unreadable,
        ),
        (
            "time-garbage",
            g.replace("2024-05-01T10:00:08Z", "yesterday"),
            Expect::Unreadable,
        ),
        (
            "time-year-10000",
            g.replace("2024-05-01T10:00:08Z", "+010000-01-01T00:00:00Z"),
            Expect::Unreadable,
        ),
        (
            "duplicate-holder",
            g.replace(
                "\"holderIdentity\":\"ghost\"",
                "\"holderIdentity\":\"ghost\",\"holderIdentity\":\"other\"",
            ),
            Expect::Unreadable,
        ),
        (
            "nested-100k",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
            Expect::Unreadable,
        ),
        ("lease-negative", ghost(-5).to_json(), Expect::Ghost(own)),
        ("lease-zero", ghost(0).to_json(), Expect::Ghost(own)),
        (
            "lease-i32-max",
            ghost(i32::MAX).to_json(),
            Expect::Ghost(MAX_HONOURED_LEASE),
        ),
        (
            "renew-time-9999",
            with(&|r| r.renew_time = Some(jiff::Timestamp::MAX)),
            Expect::Ghost(s15),
        ),
        (
            "renew-time-epoch",
            with(&|r| r.renew_time = Some(jiff::Timestamp::UNIX_EPOCH)),
            Expect::Ghost(s15),
        ),
        (
            "renew-before-acquire",
            with(&|r| r.acquire_time = Some("9000-01-01T00:00:00Z".parse().expect("time"))),
            Expect::Ghost(s15),
        ),
        (
            "transitions-negative",
            with(&|r| r.leader_transitions = -7),
            Expect::Ghost(s15),
        ),
        (
            "transitions-max",
            with(&|r| r.leader_transitions = i32::MAX),
            Expect::Ghost(s15),
        ),
        (
            "holder-1-mib",
            with(&|r| r.holder_identity = "x".repeat(1 << 20)),
            Expect::Ghost(s15),
        ),
        (
            "holder-control-chars",
            with(&|r| r.holder_identity = "\u{0}\u{1b}[31m\n👻".into()),
            Expect::Ghost(s15),
        ),
        (
            "unknown-fields",
            g.replacen('{', "{\"evil\":{\"x\":[1,2,3]},\"spec\":null,", 1),
            Expect::Ghost(s15),
        ),
    ]
}

/// Log lines written while a run lasts, for asserting on what an operator would see.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Longest log line tolerated: a hostile record must not turn into megabyte log lines.
const MAX_LOG_LINE: usize = 16 * 1024;

/// Plants `text` before any replica starts (`midterm` false) or over a live leader's
/// record, and checks the election's answer.
async fn run_case(name: &str, text: &str, expect: Expect, midterm: bool, logs: &Logs) -> Report {
    let memory = Memory::default();
    let backend: &dyn Backend = &memory;
    let mut e = Election::new(backend, "bad-input");
    let t = e.timing;
    let wait = match expect {
        Expect::Unreadable => t.lease,
        Expect::Ghost(d) => d,
    };
    if !midterm {
        memory.store.put_raw(&e.name, text);
        e.checker.fault(format!("{name} planted"));
    }
    let planted_at = Instant::now();
    for _ in 0..3 {
        e.join(None).await;
    }
    let (planted_at, old_leader) = if midterm {
        let l = e.wait_leader(t.lease).await;
        sleep(t.lease).await;
        e.checker
            .fault(format!("{name} written over the leader's record"));
        memory.store.put_raw(&e.name, text);
        (Instant::now(), Some(l))
    } else {
        (planted_at, None)
    };
    let terms_before = e.checker.intervals().len();

    // Nobody may lead again before the wait has passed...
    sleep(wait.saturating_sub(t.slack)).await;
    let early: Vec<_> = e.checker.intervals()[terms_before..]
        .iter()
        .filter(|i| i.start >= planted_at)
        .cloned()
        .collect();
    assert!(
        early.is_empty(),
        "{name}: took over {:?} after the record was planted, before {wait:?}",
        early[0].start - planted_at
    );
    if let Some(l) = old_leader {
        // ...and the old leader stepped down at its next renewal, not at its deadline.
        assert!(
            !e.replicas[l].is_leader(),
            "{name}: the old leader still leads"
        );
    }
    // ...and someone leads soon after.
    let l = e.wait_leader(t.jittered_retry() + t.slack * 2).await;
    let took = e.checker.intervals().last().expect("a term").start - planted_at;
    assert!(took >= wait.saturating_sub(t.slack), "{name}: {took:?}");

    // What is stored now is the new leader's readable record.
    let stored = memory.store.get_raw(&e.name).expect("a record");
    let record = LeaderElectionRecord::from_json(&stored)
        .unwrap_or_else(|err| panic!("{name}: the overwritten record is unreadable: {err}"));
    assert_eq!(record.holder_identity, e.replicas[l].id);

    // The operator was told, in lines of sane length, and the replicas saw it happen.
    let log = logs.text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(
        longest <= MAX_LOG_LINE,
        "{name}: a log line of {longest} bytes: {:.200}",
        log.lines().max_by_key(|l| l.len()).unwrap_or_default()
    );
    match expect {
        Expect::Unreadable => {
            let reason = LeaderElectionRecord::from_json(text)
                .expect_err("an unreadable record")
                .reason;
            assert!(
                log.contains("invalid record") && log.contains(&format!("reason={reason}")),
                "{name}: no warning gives the reason {reason:?}:\n{log:.2000}"
            );
        }
        Expect::Ghost(_) => {}
    }
    if let Some(old) = old_leader {
        let events = e.replicas[old].drain_events();
        assert!(
            events.contains(&ElectionEvent::StoppedLeading),
            "{name}: {events:?}"
        );
        let expected = match expect {
            Expect::Unreadable => ElectionEvent::NewLeader(None),
            Expect::Ghost(_) => {
                let r = LeaderElectionRecord::from_json(text).expect("a ghost record");
                ElectionEvent::NewLeader(Some(r.holder_identity))
            }
        };
        for (i, r) in e.replicas.iter().enumerate() {
            if i != old {
                let events = r.drain_events();
                assert!(
                    events.contains(&expected),
                    "{name}: standby {} never reported {expected:?}",
                    r.id
                );
            }
        }
    }
    sleep(t.lease).await;
    let report = e.finish().await;
    check(&report, wait + t.jittered_retry() + t.lease);
    report
}

/// Every hostile record, planted before the election and written mid-term; each report
/// under its summary row.
pub fn all() -> Vec<(String, Report)> {
    let mut reports = Vec::new();
    for midterm in [false, true] {
        for (name, text, expect) in cases() {
            let logs = Logs::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(logs.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .finish();
            let report = {
                let _guard = tracing::subscriber::set_default(subscriber);
                crate::support::paused(run_case(name, &text, expect, midterm, &logs))
            };
            let row = format!(
                "bad-input/{}/{}",
                if midterm { "mid-term" } else { "planted" },
                match expect {
                    Expect::Unreadable => "unreadable",
                    Expect::Ghost(_) => "ghost-holder",
                }
            );
            reports.push((row, report));
        }
    }
    reports
}
