//! What the election logs: every line carries the election's name and this replica's
//! identity, from the span the loop runs in.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leaderelection::{Config, LeaderElector, MemoryStore};
use tokio_util::sync::CancellationToken;

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn log_lines_carry_the_election_name_and_identity() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = MemoryStore::new();
    let elector = LeaderElector::new(
        store.lock("lock"),
        Config::new("scheduler").identity("node-a"),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        stop.cancel();
    });
    elector
        .run(shutdown, |l| async move { l.lost().await })
        .await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for message in [
        "starting leader election",
        "started leading",
        "released lease",
        "stopped leading",
    ] {
        let line = lines
            .iter()
            .find(|l| l.contains(message))
            .unwrap_or_else(|| panic!("no {message:?} in:\n{text}"));
        assert!(
            line.contains("leader_election{name=scheduler identity=node-a}"),
            "{line}"
        );
    }
}
