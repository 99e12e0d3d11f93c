//! The line protocol of terms run in another process.

use std::fmt;
use std::str::FromStr;

#[cfg(doc)]
use super::Checker;
use leaderelection::Leadership;

/// One event of a term in another process, as a line of text on its stdout:
/// `BEGIN <token> <identity>`, `ACT <token> <identity>` (a write to the fenced store)
/// or `END <token> <identity>`. The checking process stamps each line when it arrives
/// ([`Checker::receive`]), so every term is on one clock even when the reporting
/// process's clocks are faked.
///
/// # Examples
///
/// ```
/// use leaderelection_testkit::checker::Line;
///
/// let line: Line = "ACT 42 node a".parse().unwrap();
/// assert_eq!(line, Line::Act { token: 42, identity: "node a".into() });
/// assert_eq!(line.to_string(), "ACT 42 node a");
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
    },
    /// The term's work wrote to the fenced store.
    Act {
        /// The term's fencing token.
        token: u64,
        /// The leader's identity.
        identity: String,
    },
    /// The term's work stopped.
    End {
        /// The term's fencing token.
        token: u64,
        /// The leader's identity.
        identity: String,
    },
}

impl Line {
    /// The line for `kind` (`BEGIN`, `ACT` or `END`) of `leadership`'s term.
    fn of(kind: fn(u64, String) -> Line, leadership: &Leadership) -> Line {
        kind(leadership.fencing_token(), leadership.identity().to_owned())
    }

    /// `BEGIN` for `leadership`'s term.
    pub fn begin(leadership: &Leadership) -> Line {
        Self::of(
            |token, identity| Line::Begin { token, identity },
            leadership,
        )
    }

    /// `ACT` for `leadership`'s term.
    pub fn act(leadership: &Leadership) -> Line {
        Self::of(|token, identity| Line::Act { token, identity }, leadership)
    }

    /// `END` for `leadership`'s term.
    pub fn end(leadership: &Leadership) -> Line {
        Self::of(|token, identity| Line::End { token, identity }, leadership)
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, token, identity) = match self {
            Line::Begin { token, identity } => ("BEGIN", token, identity),
            Line::Act { token, identity } => ("ACT", token, identity),
            Line::End { token, identity } => ("END", token, identity),
        };
        write!(f, "{kind} {token} {identity}")
    }
}

/// A line that is not a [`Line`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a term event (expected `BEGIN|ACT|END <token> <identity>`): {0:.80}")]
pub struct InvalidLine(String);

impl FromStr for Line {
    type Err = InvalidLine;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidLine(s.to_owned());
        let mut parts = s.trim().splitn(3, ' ');
        let kind = parts.next().ok_or_else(bad)?;
        let token = parts.next().and_then(|t| t.parse().ok()).ok_or_else(bad)?;
        let identity = parts.next().ok_or_else(bad)?.to_owned();
        match kind {
            "BEGIN" => Ok(Line::Begin { token, identity }),
            "ACT" => Ok(Line::Act { token, identity }),
            "END" => Ok(Line::End { token, identity }),
            _ => Err(bad()),
        }
    }
}
