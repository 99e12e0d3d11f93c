//! When a standby may revoke the session lease of a leader that stopped keeping it
//! alive: before etcd's lessor does at its next 500 ms tick, and never while the
//! lease can still be alive on the server.
//!
//! etcd answers `LeaseTimeToLive` from the lease primary with the remaining time
//! truncated toward zero to whole seconds: `n >= 1` means `[n, n + 1)` seconds left,
//! `0` means anything in `(-1, 1)`: up to a second left, or up to a second past. One
//! answer, sent at `s` and received at `r`, puts the expiry `E`, if no keep-alive
//! lands afterwards, in `[s + n, r + n + 1)` (`(s - 1, r + 1)` for `0`). Answers are
//! chained: two answers belong to one chain when no keep-alive can have landed
//! between them, which holds when a keep-alive would have shown: a keep-alive at `k`
//! after the first was sent leaves `G - (r2 - k) >= G - (r2 - s1)` seconds at the
//! second (`G` the granted TTL), so an answer `n2` with `n2 + 1 <= G - (r2 - s1)`
//! rules it out. Along one chain the windows intersect, and a chain whose window
//! ends (`hi`) before an answer of the chain was sent proves the lease past expiry
//! at the primary when that answer was given. etcd never renews a lease past expiry
//! (`Renew` waits for its revocation and returns `ErrLeaseNotFound`), so revoking it
//! then only does early what the primary's tick does anyway. `docs/safety.md` has
//! the whole argument, and what it assumes of etcd.

use std::time::Duration;

use tokio::time::Instant;

const SECOND: Duration = Duration::from_secs(1);
/// How close the window of the expiry is narrowed before the confirming answer, and
/// how far apart the questions are while it is.
const PRECISION: Duration = Duration::from_millis(25);
/// The shortest pause between two answers, so that a slow etcd is not hammered.
const MIN_GAP: Duration = Duration::from_millis(5);

/// What to do after an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The lease is past expiry at the primary (or gone): revoking it is safe.
    Expired,
    /// Ask again at this instant.
    AskAt(Instant),
    /// The granted TTL is too short for the rule (under two seconds): leave the
    /// lease to etcd.
    Never,
}

#[derive(Debug, Clone, Copy)]
struct Chain {
    /// The expiry, if no keep-alive lands, is in `[lo, hi)`.
    lo: Instant,
    hi: Instant,
    /// When the last answer of the chain was asked for.
    last_sent: Instant,
}

/// What a standby has learned of one lease from `LeaseTimeToLive` answers.
#[derive(Debug, Clone)]
pub(super) struct Expiry {
    chain: Option<Chain>,
    /// TTLs up to this are left to etcd: an old primary cut off from its peers may
    /// answer for that long without the keep-alives the new primary receives.
    floor: Duration,
}

impl Expiry {
    pub(super) fn new(floor: Duration) -> Self {
        Self { chain: None, floor }
    }

    /// Clock-rate skew between this host and the primary over a chain (which lasts
    /// about the TTL), with room: 10 ms plus 0.5% of the TTL, ten times the 500 ppm
    /// an NTP-disciplined clock may slew.
    fn margin(granted: Duration) -> Duration {
        Duration::from_millis(10) + granted / 200
    }

    /// Takes an answer `ttl` (seconds, as etcd sends it) to a request sent at `sent`
    /// and answered at `received`, for a lease granted `granted` seconds.
    pub(super) fn observe(
        &mut self,
        sent: Instant,
        received: Instant,
        ttl: i64,
        granted: i64,
    ) -> Verdict {
        if ttl < 0 && granted <= 0 {
            // etcd no longer has it: its revocation was committed.
            return Verdict::Expired;
        }
        let Ok(g) = u64::try_from(granted) else {
            return Verdict::Never;
        };
        if g < 2 || Duration::from_secs(g) <= self.floor {
            return Verdict::Never;
        }
        if ttl < 0 {
            // At least a second past expiry at the primary.
            return Verdict::Expired;
        }
        let granted = Duration::from_secs(g);
        let margin = Self::margin(granted);
        if ttl.unsigned_abs() > g {
            // More than was granted: no answer about this lease. A new primary answers
            // "forever" (9223372036 s) for a lease it has not promoted yet; ask again
            // within the TTL, keeping what earlier answers showed.
            return Verdict::AskAt(received + (granted / 4).max(MIN_GAP));
        }
        let n = u32::try_from(ttl).unwrap_or(u32::MAX).min(u32::MAX - 1);
        let (lo, hi) = if n == 0 {
            (sent.checked_sub(SECOND).unwrap_or(sent), received + SECOND)
        } else {
            (sent + SECOND * n, received + SECOND * (n + 1))
        };
        let continued = self.chain.filter(|c| {
            let no_keepalive = (received - c.last_sent) + margin + SECOND * (n + 1) <= granted;
            no_keepalive && lo < c.hi && c.lo < hi
        });
        let chain = match continued {
            Some(c) => Chain {
                lo: c.lo.max(lo),
                hi: c.hi.min(hi),
                last_sent: sent,
            },
            None => Chain {
                lo,
                hi,
                last_sent: sent,
            },
        };
        self.chain = Some(chain);
        if continued.is_some() && sent >= chain.hi + margin {
            return Verdict::Expired;
        }
        let at = if n >= 2 {
            // More than a second to go, even if nothing renews it: ask again when an
            // answer of 1 is due at the earliest. A leader that keeps its session
            // alive is asked about once per TTL less two seconds.
            chain.lo - SECOND - PRECISION
        } else {
            // Near the end: the answer steps to 0 a second before the expiry, at some
            // point of `[lo - 1, hi - 1)`. That moment cannot be searched for after
            // the fact, only watched for: ask every `PRECISION` through the window,
            // then confirm once past its end. Two answers of one chain are never
            // further apart than an answer of 0 allows (half of it, for the time the
            // answer takes).
            let at = if chain.hi - chain.lo > PRECISION && chain.hi - SECOND > received {
                (received + PRECISION).max(chain.lo.checked_sub(SECOND).unwrap_or(chain.lo))
            } else {
                chain.hi + margin
            };
            at.min(sent + granted.saturating_sub(SECOND + margin) / 2)
        };
        let at = at.max(received + MIN_GAP);
        Verdict::AskAt(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No floor: the tests of the chain's own rules.
    const FLOOR: Duration = Duration::ZERO;

    /// An old primary cut off from its peers answers for up to twice the election
    /// timeout without the keep-alives that reach the new one: a TTL it can outlast is
    /// never proved expired, whatever it answers, not even a lease it holds past
    /// expiry (a negative TTL); a lease etcd no longer has is gone at any TTL.
    #[test]
    fn a_ttl_an_old_primary_can_outlast_is_left_to_etcd() {
        let t0 = Instant::now();
        for granted in [2, 3, 5] {
            for answer in [1, 0, -1, -3] {
                let mut e = Expiry::new(Duration::from_secs(5) + Duration::from_millis(500));
                assert_eq!(
                    e.observe(t0, t0 + Duration::from_millis(2), answer, granted),
                    Verdict::Never,
                    "TTL {granted} s, answer {answer}"
                );
            }
        }
        let mut e = Expiry::new(Duration::from_millis(2500));
        assert_eq!(e.observe(t0, t0, -1, 0), Verdict::Expired);
        assert_eq!(e.observe(t0, t0, -2, 3), Verdict::Expired);
    }

    /// A lease on a simulated primary: expiry `e`, renewed by keep-alives.
    struct Lease {
        granted: Duration,
        keepalives: Vec<Instant>,
    }

    impl Lease {
        fn expiry(&self, at: Instant) -> Instant {
            let last = self.keepalives.iter().filter(|k| **k <= at).max().unwrap();
            *last + self.granted
        }

        /// etcd's answer at `at`: `int64(Remaining().Seconds())`.
        fn answer(&self, at: Instant) -> i64 {
            let e = self.expiry(at);
            if e >= at {
                (e - at).as_secs() as i64
            } else {
                -((at - e).as_secs() as i64)
            }
        }
    }

    /// Runs the standby's questions against `lease` from `start` until `Expired` or
    /// `until`; returns when it said expired, and the answers asked for.
    fn run(
        lease: &Lease,
        start: Instant,
        until: Instant,
        rtt: Duration,
    ) -> (Option<Instant>, usize) {
        let mut expiry = Expiry::new(FLOOR);
        let mut at = start;
        let mut asked = 0;
        while at < until {
            asked += 1;
            let sent = at;
            // The primary answers halfway.
            let answer = lease.answer(sent + rtt / 2);
            let received = sent + rtt;
            match expiry.observe(sent, received, answer, lease.granted.as_secs() as i64) {
                Verdict::Expired => return (Some(received), asked),
                Verdict::AskAt(next) => at = next,
                Verdict::Never => return (None, asked),
            }
        }
        (None, asked)
    }

    /// etcd's answer for a lease a new primary has not promoted yet.
    const FOREVER: i64 = 9_223_372_036;

    #[test]
    fn an_answer_of_forever_neither_panics_nor_ends_the_questions() {
        let t0 = Instant::now();
        let mut e = Expiry::new(FLOOR);
        let received = t0 + Duration::from_millis(3);
        match e.observe(t0, received, FOREVER, 15) {
            Verdict::AskAt(at) => assert!(at <= received + Duration::from_secs(15), "{at:?}"),
            other => panic!("{other:?}"),
        }
        // The answers that follow still lead to the revoke: 2 s left at 13 s, then 0
        // and gone past the expiry.
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(matches!(
            e.observe(at(13_000), at(13_002), 2, 15),
            Verdict::AskAt(_)
        ));
        assert_eq!(e.observe(at(17_000), at(17_002), -1, 15), Verdict::Expired);
        // Out of range both ways: no panic.
        let _ = e.observe(at(18_000), at(18_001), i64::MAX, 15);
        let _ = e.observe(at(18_000), at(18_001), i64::MIN + 1, i64::MAX);
    }

    #[test]
    fn a_crashed_leader_is_revoked_soon_after_expiry_and_never_before() {
        let base = Instant::now();
        let (mut latest, mut most_asked) = (Duration::ZERO, 0);
        for crash_ms in (0..3000).step_by(37) {
            for rtt_ms in [1, 4, 15] {
                let rtt = Duration::from_millis(rtt_ms);
                // Kept alive every 500 ms until the crash.
                let crash = base + Duration::from_secs(10) + Duration::from_millis(crash_ms);
                let mut keepalives = vec![base];
                while *keepalives.last().unwrap() + Duration::from_millis(500) <= crash {
                    keepalives.push(*keepalives.last().unwrap() + Duration::from_millis(500));
                }
                let lease = Lease {
                    granted: Duration::from_secs(3),
                    keepalives,
                };
                let e = lease.expiry(crash + Duration::from_secs(100));
                let start = base + Duration::from_millis(1);
                let (revoked, asked) = run(&lease, start, e + Duration::from_secs(5), rtt);
                let revoked = revoked.expect("revoked in the end");
                latest = latest.max(revoked - e);
                // Questions after the last keep-alive: about one a second before the
                // final second, then one per `PRECISION` through it.
                let after_crash = asked - (crash - start).as_secs() as usize;
                most_asked = most_asked.max(after_crash);
                assert!(revoked > e, "revoked {:?} before expiry", e - revoked);
                assert!(
                    revoked - e < Duration::from_millis(60) + rtt * 3,
                    "revoked {:?} after expiry (crash at +{crash_ms} ms, rtt {rtt_ms} ms)",
                    revoked - e
                );
            }
        }
        eprintln!(
            "latest revoke {latest:?} after expiry; at most {most_asked} questions after a crash"
        );
        assert!(most_asked <= 60, "{most_asked} questions after a crash");
    }

    #[test]
    fn a_leader_that_keeps_alive_late_but_within_the_ttl_is_never_revoked() {
        let base = Instant::now();
        for granted in [2u64, 3, 5, 15] {
            for late_ms in [0u64, 400, 900, 1700, 2400, 2950] {
                let granted = Duration::from_secs(granted);
                let gap =
                    Duration::from_millis(late_ms + 50).min(granted - Duration::from_millis(10));
                let mut keepalives = vec![base];
                while *keepalives.last().unwrap() < base + Duration::from_secs(60) {
                    keepalives.push(*keepalives.last().unwrap() + gap);
                }
                let lease = Lease {
                    granted,
                    keepalives,
                };
                let (revoked, asked) = run(
                    &lease,
                    base + Duration::from_millis(3),
                    base + Duration::from_secs(55),
                    Duration::from_millis(2),
                );
                assert_eq!(
                    revoked, None,
                    "revoked a live lease (TTL {granted:?}, keep-alive every {gap:?})"
                );
                assert!(asked > 0);
            }
        }
    }

    #[test]
    fn a_lease_kept_alive_on_time_is_asked_about_once_per_ttl_less_two_seconds() {
        let base = Instant::now();
        // (TTL, keep-alive period, most questions in a minute)
        for (granted, every, most) in [(3u64, 500u64, 62), (15, 2000, 5)] {
            let mut keepalives = vec![base];
            while *keepalives.last().unwrap() < base + Duration::from_secs(70) {
                keepalives.push(*keepalives.last().unwrap() + Duration::from_millis(every));
            }
            let lease = Lease {
                granted: Duration::from_secs(granted),
                keepalives,
            };
            let minute = base + Duration::from_secs(60);
            let (revoked, asked) = run(&lease, base, minute, Duration::from_millis(2));
            assert_eq!(revoked, None);
            eprintln!("TTL {granted} s, kept alive every {every} ms: {asked} questions a minute");
            assert!(asked <= most, "asked {asked} times in 60 s");
        }
    }
}
