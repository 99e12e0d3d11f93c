//! Any bytes a backend may hand over as a stored record: parsing gives a record whose
//! JSON reads back the same, or a short error quoting the start of the text; never a
//! panic, never unbounded memory.
#![no_main]

use leaderelection::LeaderElectionRecord;
use libfuzzer_sys::fuzz_target;

fn check(text: &str) {
    match LeaderElectionRecord::from_json(text) {
        Ok(record) => {
            let once = record.to_json();
            let again = LeaderElectionRecord::from_json(&once)
                .unwrap_or_else(|e| panic!("the crate cannot read its own output {once:?}: {e}"));
            assert_eq!(again.to_json(), once, "writing is not stable");
        }
        Err(e) => {
            assert!(e.text.len() <= 256, "quoted {} bytes", e.text.len());
            assert!(
                text.starts_with(&e.text),
                "the quote is not the start of the text"
            );
            assert!(
                !e.reason.is_empty() && e.reason.len() <= 512,
                "reason of {} bytes",
                e.reason.len()
            );
            // The message an operator reads is built from both: bounded too.
            assert!(e.to_string().len() <= 2048);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Locks decode stored bytes as UTF-8; invalid UTF-8 is refused before parsing, or
    // replaced, depending on the backend's client: try both.
    match std::str::from_utf8(data) {
        Ok(text) => check(text),
        Err(_) => check(&String::from_utf8_lossy(data)),
    }
});
