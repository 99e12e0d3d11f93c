//! The leader election record, field for field the one client-go stores.

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest stored text kept in an error or a log line; a hostile record can be megabytes.
const MAX_QUOTED: usize = 256;

/// The state of one election as stored by its lock.
///
/// It is client-go's `resourcelock.LeaderElectionRecord`: the JSON that
/// [`to_json`](Self::to_json) writes is byte for byte what client-go writes into the
/// `control-plane.alpha.kubernetes.io/leader` annotation, so Rust and Go replicas can
/// contend for the same object.
///
/// The timestamps are informational. Expiry is never judged from them: an elector
/// times a lease on its own monotonic clock from the moment it saw the record change.
///
/// # Examples
///
/// ```
/// use leaderelection::LeaderElectionRecord;
///
/// let json = r#"{"holderIdentity":"node-a","leaseDurationSeconds":15,"acquireTime":"2024-05-01T10:00:00Z","renewTime":"2024-05-01T10:00:08Z","leaderTransitions":3}"#;
/// let record = LeaderElectionRecord::from_json(json)?;
/// assert_eq!(record.holder_identity, "node-a");
/// assert_eq!(record.leader_transitions, 3);
/// # Ok::<(), leaderelection::InvalidRecord>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderElectionRecord {
    /// `holderIdentity`: who holds the lease. Empty when nobody does (released).
    #[serde(default, deserialize_with = "null_as_default")]
    pub holder_identity: String,
    /// `leaseDurationSeconds`: how long the holder's lease lasts after each renewal,
    /// as the holder configured it. Standbys honour this value, not their own.
    #[serde(default, deserialize_with = "null_as_default")]
    pub lease_duration_seconds: i32,
    /// `acquireTime`: when the holder took the lease (wall clock, informational).
    #[serde(default, with = "go_time")]
    pub acquire_time: Option<Timestamp>,
    /// `renewTime`: when the holder last renewed (wall clock, informational).
    #[serde(default, with = "go_time")]
    pub renew_time: Option<Timestamp>,
    /// `leaderTransitions`: grows by one on every change of holder, never on a renewal.
    #[serde(default, deserialize_with = "null_as_default")]
    pub leader_transitions: i32,
    /// `strategy`: the coordinated leader election strategy (`OldestEmulationVersion`),
    /// empty for ordinary elections.
    #[serde(default, deserialize_with = "null_as_default")]
    pub strategy: String,
    /// `preferredHolder`: the identity a coordinated election asks to hand over to.
    #[serde(default, deserialize_with = "null_as_default")]
    pub preferred_holder: String,
}

impl LeaderElectionRecord {
    /// Parses the JSON that client-go (or this crate) stored.
    ///
    /// As Go's decoder does, missing fields take their zero value (`strategy` and
    /// `preferredHolder` are absent in older client-go records) and missing or `null`
    /// times are unset.
    ///
    /// # Errors
    ///
    /// [`InvalidRecord`] when the text is not such a record, with the reason and the
    /// start of the offending text.
    pub fn from_json(text: &str) -> Result<Self, InvalidRecord> {
        serde_json::from_str(text).map_err(|e| InvalidRecord::new(e.to_string(), text))
    }

    /// Writes the record as client-go does: every field, times in RFC 3339 with
    /// seconds in UTC, unset times as `null`.
    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, integers and formatted times cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// True when nobody holds the lease (never taken, or released).
    pub fn is_released(&self) -> bool {
        self.holder_identity.is_empty()
    }
}

/// A stored record that could not be understood.
///
/// Carries the reason and the start of the offending text, so the log shows what an
/// operator has to fix or delete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid leader election record: {reason}; stored text starts with {text:?}")]
pub struct InvalidRecord {
    /// Why the text was refused.
    pub reason: String,
    /// The start of the stored text (at most 256 bytes).
    pub text: String,
}

impl InvalidRecord {
    /// An error for `text`, keeping only its start.
    pub fn new(reason: impl Into<String>, text: &str) -> Self {
        Self {
            reason: shorten(reason.into()),
            text: truncate(text, MAX_QUOTED).to_owned(),
        }
    }
}

/// Longest reason kept: parsers quote the bad value, which can be megabytes.
const MAX_REASON: usize = 512;

/// Keeps the start of a long reason and its end, which says where the error is.
fn shorten(reason: String) -> String {
    if reason.len() <= MAX_REASON {
        return reason;
    }
    let head = truncate(&reason, MAX_REASON - 96);
    let mut tail = reason.len() - 80;
    while !reason.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{head} … {}", &reason[tail..])
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `metav1.Time` as Go writes it: RFC 3339 in UTC with whole seconds, `null` for the
/// zero time. Reading accepts any RFC 3339 time (fractions and offsets too).
mod go_time {
    use super::*;

    /// The earliest time RFC 3339 (and Go) can write: years have four digits.
    fn year_zero() -> Timestamp {
        Timestamp::from_second(-62_167_219_200).unwrap_or(Timestamp::MIN)
    }

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            // A time before year 0 cannot be written readably; write the earliest that can.
            Some(t) => s.collect_str(&GoTime((*t).max(year_zero()))),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => match s.parse::<Timestamp>() {
                Ok(t) if t < year_zero() => Err(serde::de::Error::custom(format!(
                    "bad time {s:?}: years before 0 are not RFC 3339"
                ))),
                Ok(t) => Ok(Some(t)),
                Err(e) => Err(serde::de::Error::custom(format!("bad time {s:?}: {e}"))),
            },
        }
    }

    struct GoTime(Timestamp);

    impl fmt::Display for GoTime {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0.strftime("%Y-%m-%dT%H:%M:%SZ"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn writes_what_client_go_writes() {
        let r = LeaderElectionRecord {
            holder_identity: "master-1_4f2c".into(),
            lease_duration_seconds: 15,
            acquire_time: ts("2024-05-01T10:00:00.123456Z"),
            renew_time: ts("2024-05-01T10:00:08Z"),
            leader_transitions: 2,
            ..Default::default()
        };
        assert_eq!(
            r.to_json(),
            r#"{"holderIdentity":"master-1_4f2c","leaseDurationSeconds":15,"acquireTime":"2024-05-01T10:00:00Z","renewTime":"2024-05-01T10:00:08Z","leaderTransitions":2,"strategy":"","preferredHolder":""}"#
        );
    }

    #[test]
    fn released_record_has_null_times_like_go_zero_time() {
        let r = LeaderElectionRecord {
            lease_duration_seconds: 1,
            leader_transitions: 4,
            ..Default::default()
        };
        assert_eq!(
            r.to_json(),
            r#"{"holderIdentity":"","leaseDurationSeconds":1,"acquireTime":null,"renewTime":null,"leaderTransitions":4,"strategy":"","preferredHolder":""}"#
        );
    }

    #[test]
    fn missing_times_read_as_unset_like_go_zero_times() {
        let r =
            LeaderElectionRecord::from_json(r#"{"holderIdentity":"a","leaseDurationSeconds":15}"#)
                .unwrap();
        assert_eq!((r.acquire_time, r.renew_time), (None, None));
        assert!(LeaderElectionRecord::from_json("{}").unwrap().is_released());
    }

    #[test]
    fn reads_old_client_go_records_without_strategy() {
        let r = LeaderElectionRecord::from_json(
            r#"{"holderIdentity":"a","leaseDurationSeconds":15,"acquireTime":"2019-01-01T00:00:00Z","renewTime":"2019-01-01T00:00:10+00:00","leaderTransitions":0}"#,
        )
        .unwrap();
        assert_eq!(r.renew_time, ts("2019-01-01T00:00:10Z"));
        assert_eq!(r.strategy, "");
    }

    #[test]
    fn round_trips() {
        let r = LeaderElectionRecord {
            holder_identity: "x".into(),
            lease_duration_seconds: 15,
            acquire_time: ts("2024-05-01T10:00:00Z"),
            renew_time: ts("2024-05-01T10:00:08Z"),
            leader_transitions: 7,
            strategy: "OldestEmulationVersion".into(),
            preferred_holder: "y".into(),
        };
        assert_eq!(LeaderElectionRecord::from_json(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn garbage_is_an_error_with_a_short_quote() {
        let big = format!("{{\"holderIdentity\": {}", "9".repeat(10_000));
        let e = LeaderElectionRecord::from_json(&big).unwrap_err();
        assert!(e.text.len() <= 256);
        let e = LeaderElectionRecord::from_json(r#"{"renewTime":"yesterday"}"#).unwrap_err();
        assert!(e.reason.contains("yesterday"), "{e}");
        assert!(LeaderElectionRecord::from_json(r#"{"leaseDurationSeconds":1e99}"#).is_err());
    }

    #[test]
    fn long_reasons_keep_their_start_and_end() {
        let value = "é".repeat(5_000);
        let json =
            format!(r#"{{"leaseDurationSeconds":"{value}","acquireTime":null,"renewTime":null}}"#);
        let e = LeaderElectionRecord::from_json(&json).unwrap_err();
        assert!(e.reason.len() <= MAX_REASON, "{}", e.reason.len());
        assert!(e.reason.starts_with("invalid type: string"), "{}", e.reason);
        assert!(
            e.reason.ends_with("expected i32 at line 1 column 10026"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn years_before_zero_are_refused_and_never_written() {
        let e = LeaderElectionRecord::from_json(
            r#"{"acquireTime":"-000001-12-31T23:59:59Z","renewTime":null}"#,
        )
        .unwrap_err();
        assert!(e.reason.contains("years before 0"), "{e}");
        let r = LeaderElectionRecord {
            renew_time: Some(Timestamp::MIN),
            ..Default::default()
        };
        let back = LeaderElectionRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(back.renew_time, ts("0000-01-01T00:00:00Z"));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
