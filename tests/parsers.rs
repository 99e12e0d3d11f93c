//! Property tests of the record parser: whatever the store holds, parsing gives a
//! record or a short, clear error, never a panic; what the crate writes it reads back
//! unchanged; and an election over any stored text recovers.

use std::time::Duration;

use jiff::Timestamp;
use leaderelection::{
    Config, LeaderElectionRecord, LeaderElector, MemoryStore, MAX_HONOURED_LEASE,
};
use proptest::prelude::*;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

/// The longest text an error may quote from the store.
const MAX_QUOTED: usize = 256;

/// A bound on an error's reason: serde's message plus a quote of the bad value.
const MAX_REASON: usize = 1024;

/// The first second of year 0: RFC 3339 (and Go) cannot write earlier times.
const YEAR_ZERO: i64 = -62_167_219_200;

/// Any instant RFC 3339 can write, in whole seconds (what client-go writes).
fn timestamp() -> impl Strategy<Value = Option<Timestamp>> {
    let (lo, hi) = (YEAR_ZERO, Timestamp::MAX.as_second());
    prop_oneof![
        1 => Just(None),
        4 => (lo..=hi).prop_map(|s| Some(Timestamp::from_second(s).expect("in range"))),
        // Around now, where real records are.
        4 => (1_500_000_000i64..2_500_000_000).prop_map(|s| Some(Timestamp::from_second(s).expect("in range"))),
    ]
}

fn record() -> impl Strategy<Value = LeaderElectionRecord> {
    (
        any::<String>(),
        any::<i32>(),
        timestamp(),
        timestamp(),
        any::<i32>(),
        any::<String>(),
        any::<String>(),
    )
        .prop_map(
            |(holder, lease, acquire, renew, transitions, strategy, preferred)| {
                LeaderElectionRecord {
                    holder_identity: holder,
                    lease_duration_seconds: lease,
                    acquire_time: acquire,
                    renew_time: renew,
                    leader_transitions: transitions,
                    strategy,
                    preferred_holder: preferred,
                }
            },
        )
}

/// Any JSON value, nested a few levels.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})"
            .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 7] = [
    "holderIdentity",
    "leaseDurationSeconds",
    "acquireTime",
    "renewTime",
    "leaderTransitions",
    "strategy",
    "preferredHolder",
];

/// Objects shaped like a record: each field absent, well-typed, or any JSON value.
fn record_shaped() -> impl Strategy<Value = Value> {
    let field = |good: BoxedStrategy<Value>| {
        prop_oneof![
            1 => Just(None),
            4 => good.prop_map(Some),
            2 => json().prop_map(Some),
        ]
    };
    let time = timestamp()
        .prop_map(|t| t.map_or(Value::Null, |t| Value::String(t.to_string())))
        .boxed();
    let string = any::<String>().prop_map(Value::String).boxed();
    let int = any::<i32>().prop_map(Value::from).boxed();
    (
        field(string.clone()),
        field(int.clone()),
        field(time.clone()),
        field(time),
        field(int),
        field(string.clone()),
        field(string),
    )
        .prop_map(|(a, b, c, d, e, f, g)| {
            let mut m = Map::new();
            for (k, v) in FIELDS.iter().zip([a, b, c, d, e, f, g]) {
                if let Some(v) = v {
                    m.insert((*k).to_owned(), v);
                }
            }
            Value::Object(m)
        })
}

/// Parses `text` and checks the error's shape, or the record's stable re-serialization.
fn parse_checked(text: &str) -> Result<(), TestCaseError> {
    match LeaderElectionRecord::from_json(text) {
        Ok(r) => {
            let once = r.to_json();
            let again = LeaderElectionRecord::from_json(&once)
                .map_err(|e| TestCaseError::fail(format!("own output unreadable: {e}")))?;
            prop_assert_eq!(again.to_json(), once);
        }
        Err(e) => {
            prop_assert!(e.text.len() <= MAX_QUOTED, "quoted {} bytes", e.text.len());
            prop_assert!(
                text.starts_with(&e.text),
                "the quote is not the text's start"
            );
            prop_assert!(!e.reason.is_empty());
            prop_assert!(
                e.reason.len() <= MAX_REASON,
                "a reason of {} bytes: {:.200}",
                e.reason.len(),
                e.reason
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn what_is_written_is_read_back_unchanged(r in record()) {
        let json = r.to_json();
        let back = LeaderElectionRecord::from_json(&json);
        prop_assert_eq!(back, Ok(r), "{}", json);
    }

    #[test]
    fn times_before_year_zero_are_written_readably(secs in Timestamp::MIN.as_second()..YEAR_ZERO) {
        let r = LeaderElectionRecord {
            acquire_time: Some(Timestamp::from_second(secs).expect("in range")),
            ..Default::default()
        };
        let back = LeaderElectionRecord::from_json(&r.to_json());
        prop_assert_eq!(back.map(|b| b.acquire_time), Ok(Timestamp::from_second(YEAR_ZERO).ok()));
    }

    #[test]
    fn any_string_parses_or_fails_cleanly(s in any::<String>()) {
        parse_checked(&s)?;
    }

    #[test]
    fn any_bytes_parse_or_fail_cleanly(b in prop::collection::vec(any::<u8>(), 0..512)) {
        // Backends hand over bytes; the locks decode them as UTF-8 first.
        parse_checked(&String::from_utf8_lossy(&b))?;
        if let Ok(s) = std::str::from_utf8(&b) {
            parse_checked(s)?;
        }
    }

    #[test]
    fn any_json_value_parses_or_fails_cleanly(v in json()) {
        parse_checked(&v.to_string())?;
    }

    #[test]
    fn record_shaped_objects_parse_or_fail_cleanly(v in record_shaped()) {
        let text = v.to_string();
        parse_checked(&text)?;
        // Well-typed values for the required fields always parse.
        let obj = v.as_object().expect("an object");
        let well_typed = |k: &str, ok: fn(&Value) -> bool| obj.get(k).is_none_or(ok);
        let is_time = |v: &Value| v.is_null() || v.as_str().is_some_and(|s| s.parse::<Timestamp>().is_ok());
        let is_i32 = |v: &Value| v.is_null() || v.as_i64().is_some_and(|n| i32::try_from(n).is_ok());
        let is_str = |v: &Value| v.is_null() || v.is_string();
        if obj.contains_key("acquireTime") && obj.contains_key("renewTime")
            && well_typed("acquireTime", is_time) && well_typed("renewTime", is_time)
            && well_typed("leaseDurationSeconds", is_i32) && well_typed("leaderTransitions", is_i32)
            && well_typed("holderIdentity", is_str) && well_typed("strategy", is_str)
            && well_typed("preferredHolder", is_str)
        {
            prop_assert!(LeaderElectionRecord::from_json(&text).is_ok(), "{}", text);
        }
    }

    #[test]
    fn huge_values_are_not_quoted_whole(n in 1usize..4, big in "[a-z\"\\\\]{2000,4000}") {
        // A bad value of kilobytes in any field: the error stays short.
        let field = FIELDS[n];
        let text = format!(r#"{{"acquireTime":null,"renewTime":null,"{field}":{}}}"#, Value::String(big));
        parse_checked(&text)?;
    }
}

proptest! {
    // Each case runs an election for up to an hour and a half of virtual time.
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever the store holds, two candidates end up with a leader within the longest
    /// lease a record can claim plus one of theirs, and nothing panics.
    #[test]
    fn an_election_over_any_stored_text_recovers(v in prop_oneof![record_shaped(), json()]) {
        let text = v.to_string();
        let outcome = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime")
            .block_on(elect_over(text.clone()));
        prop_assert!(outcome.is_ok(), "{}: {}", text, outcome.unwrap_err());
    }
}

async fn elect_over(text: String) -> Result<(), String> {
    let store = MemoryStore::new();
    store.put_raw("e", text);
    let shutdown = CancellationToken::new();
    let mut electors = Vec::new();
    let mut tasks = Vec::new();
    for id in ["a", "b"] {
        let elector = LeaderElector::new(store.lock("e"), Config::new("e").identity(id))
            .map_err(|e| e.to_string())?;
        electors.push(elector.clone());
        let shutdown = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            elector
                .run(shutdown, |l| async move { l.lost().await })
                .await
        }));
    }
    let limit = MAX_HONOURED_LEASE + Duration::from_secs(15 + 5);
    let start = tokio::time::Instant::now();
    while !electors.iter().any(|e| e.is_leader()) {
        if start.elapsed() > limit {
            return Err(format!("no leader after {limit:?}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let stored = store.get_raw("e").ok_or("the record vanished")?;
    LeaderElectionRecord::from_json(&stored).map_err(|e| format!("leader wrote {e}"))?;
    shutdown.cancel();
    for t in tasks {
        t.await.map_err(|e| format!("an elector panicked: {e}"))?;
    }
    Ok(())
}
