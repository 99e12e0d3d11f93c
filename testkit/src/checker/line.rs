//! The line protocol of terms run in another process.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::time::Instant;

#[cfg(doc)]
use super::Checker;
use leaderelection::Leadership;

/// One event of a term in another process, as a line of text on its stdout:
/// `BEGIN <token> <identity>`, `ACT <token> <identity>` (a write to the fenced store)
/// or `END <token> <identity>`. The checking process stamps each line when it arrives
/// ([`Checker::receive`]), so every term is on one clock even when the reporting
/// process's clocks are faked.
///
/// `BEGIN` and `ACT` may end with ` valid_for=<ms>`: the term's remaining validity,
/// in whole milliseconds rounded up, when the line was written. The checker then
/// takes the term to be valid until the line's arrival plus that (later than the
/// truth, since the line took time to arrive: it never blames a term wrongly), and
/// an accepted `ACT` with `valid_for=0` acted after its validity. Lines without it
/// (older children, other programs) still parse, with `valid_for: None`. An identity
/// that itself ends in ` valid_for=<digits>` cannot be told from the suffix.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use leaderelection_testkit::checker::Line;
///
/// let line: Line = "ACT 42 node a".parse().unwrap();
/// assert_eq!(line, Line::Act { token: 42, identity: "node a".into(), valid_for: None });
/// assert_eq!(line.to_string(), "ACT 42 node a");
///
/// let line: Line = "ACT 42 node a valid_for=1500".parse().unwrap();
/// assert_eq!(line.valid_for(), Some(Duration::from_millis(1500)));
/// assert_eq!(line.identity(), "node a");
/// assert_eq!(line.to_string(), "ACT 42 node a valid_for=1500");
/// assert!("hello".parse::<Line>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// The term's work started.
    Begin {
        /// The term's fencing token.
        token: u64,
        /// The leader's identity.
        identity: String,
        /// The term's remaining validity when the line was written, if it says.
        valid_for: Option<Duration>,
    },
    /// The term's work wrote to the fenced store.
    Act {
        /// The term's fencing token.
        token: u64,
        /// The leader's identity.
        identity: String,
        /// The term's remaining validity when the line was written, if it says.
        valid_for: Option<Duration>,
    },
    /// The term's work stopped.
    End {
        /// The term's fencing token.
        token: u64,
        /// The leader's identity.
        identity: String,
    },
}

/// What is left of `leadership`'s validity now, in whole milliseconds rounded up: zero
/// only once it has run out.
fn remaining(leadership: &Leadership) -> Duration {
    let left = leadership
        .valid_until()
        .saturating_duration_since(Instant::now());
    let ms = left.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

impl Line {
    /// `BEGIN` for `leadership`'s term, with its remaining validity.
    pub fn begin(leadership: &Leadership) -> Line {
        Line::Begin {
            token: leadership.fencing_token(),
            identity: leadership.identity().to_owned(),
            valid_for: Some(remaining(leadership)),
        }
    }

    /// `ACT` for `leadership`'s term, with its remaining validity.
    pub fn act(leadership: &Leadership) -> Line {
        Line::Act {
            token: leadership.fencing_token(),
            identity: leadership.identity().to_owned(),
            valid_for: Some(remaining(leadership)),
        }
    }

    /// `END` for `leadership`'s term.
    pub fn end(leadership: &Leadership) -> Line {
        Line::End {
            token: leadership.fencing_token(),
            identity: leadership.identity().to_owned(),
        }
    }

    /// The term's fencing token.
    pub fn token(&self) -> u64 {
        match self {
            Line::Begin { token, .. } | Line::Act { token, .. } | Line::End { token, .. } => *token,
        }
    }

    /// The leader's identity.
    pub fn identity(&self) -> &str {
        match self {
            Line::Begin { identity, .. }
            | Line::Act { identity, .. }
            | Line::End { identity, .. } => identity,
        }
    }

    /// The same line under another identity.
    #[must_use]
    pub fn with_identity(mut self, new: impl Into<String>) -> Line {
        match &mut self {
            Line::Begin { identity, .. }
            | Line::Act { identity, .. }
            | Line::End { identity, .. } => *identity = new.into(),
        }
        self
    }

    /// The term's remaining validity when the line was written, if it says (`END`
    /// never does).
    pub fn valid_for(&self) -> Option<Duration> {
        match self {
            Line::Begin { valid_for, .. } | Line::Act { valid_for, .. } => *valid_for,
            Line::End { .. } => None,
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Line::Begin { .. } => "BEGIN",
            Line::Act { .. } => "ACT",
            Line::End { .. } => "END",
        };
        write!(f, "{kind} {} {}", self.token(), self.identity())?;
        if let Some(v) = self.valid_for() {
            write!(f, " {VALID_FOR}{}", v.as_millis())?;
        }
        Ok(())
    }
}

const VALID_FOR: &str = "valid_for=";

/// A line that is not a [`Line`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a term event (expected `BEGIN|ACT|END <token> <identity> [valid_for=<ms>]`): {0:.80}")]
pub struct InvalidLine(String);

impl FromStr for Line {
    type Err = InvalidLine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidLine(s.to_owned());
        let mut parts = s.trim().splitn(3, ' ');
        let kind = parts.next().ok_or_else(bad)?;
        let token = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let rest = parts.next().ok_or_else(bad)?;
        // ` valid_for=<ms>` at the end, on BEGIN and ACT only.
        let split = || {
            let (identity, ms) = rest.rsplit_once(' ')?;
            let ms = ms.strip_prefix(VALID_FOR)?;
            if identity.is_empty() || ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((identity, Duration::from_millis(ms.parse().ok()?)))
        };
        let (identity, valid_for) = match kind {
            "BEGIN" | "ACT" => split().map_or((rest, None), |(i, v)| (i, Some(v))),
            _ => (rest, None),
        };
        let identity = identity.to_owned();
        match kind {
            "BEGIN" => Ok(Line::Begin {
                token,
                identity,
                valid_for,
            }),
            "ACT" => Ok(Line::Act {
                token,
                identity,
                valid_for,
            }),
            "END" => Ok(Line::End { token, identity }),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_with_and_without_validity() {
        for text in [
            "BEGIN 1 a",
            "BEGIN 1 a valid_for=0",
            "ACT 7 node a valid_for=1500",
            "ACT 7 node a",
            "END 9 b",
        ] {
            let line: Line = text.parse().unwrap();
            assert_eq!(line.to_string(), text);
        }
        let old: Line = "ACT 7 node a".parse().unwrap();
        assert_eq!((old.identity(), old.valid_for()), ("node a", None));
    }

    #[test]
    fn a_suffix_that_is_not_a_validity_belongs_to_the_identity() {
        for (text, identity) in [
            ("ACT 1 a valid_for=", "a valid_for="),
            ("ACT 1 a valid_for=1x", "a valid_for=1x"),
            ("ACT 1 valid_for=5", "valid_for=5"),
            ("END 1 a valid_for=5", "a valid_for=5"),
        ] {
            let line: Line = text.parse().unwrap();
            assert_eq!(
                (line.identity(), line.valid_for()),
                (identity, None),
                "{text}"
            );
        }
        for text in ["", "ACT", "ACT x a", "ACT 1", "ACT -1 a", "BOGUS 1 a"] {
            assert!(text.parse::<Line>().is_err(), "{text:?}");
        }
    }
}
