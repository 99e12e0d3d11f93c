//! Semantic versions as kube-apiserver reads a LeaseCandidate's `binaryVersion` and
//! `emulationVersion` (github.com/blang/semver/v4): strictly when validating
//! (`semver.Parse`), tolerantly when electing (`semver.ParseTolerant`), compared by
//! SemVer 2.0 precedence.

use std::cmp::Ordering;

/// A parsed `major.minor.patch[-pre][+build]`; build metadata takes no part in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Version {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<Pre>,
}

/// A pre-release identifier: numeric ones order below alphanumeric ones.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Pre {
    Numeric(u64),
    Alpha(String),
}

impl Version {
    /// `semver.Parse`: exactly three numbers without leading zeros, then optional
    /// pre-release and build identifiers of `[0-9A-Za-z-]`, none empty.
    pub fn parse(text: &str) -> Option<Version> {
        let (rest, build) = match text.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (text, None),
        };
        if let Some(build) = build {
            if !build.split('.').all(is_identifier) {
                return None;
            }
        }
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (rest, None),
        };
        let mut numbers = core.split('.').map(number);
        let (Some(Some(major)), Some(Some(minor)), Some(Some(patch)), None) = (
            numbers.next(),
            numbers.next(),
            numbers.next(),
            numbers.next(),
        ) else {
            return None;
        };
        let pre = match pre {
            None => Vec::new(),
            Some(pre) => pre
                .split('.')
                .map(|id| {
                    if !is_identifier(id) {
                        None
                    } else if id.bytes().all(|b| b.is_ascii_digit()) {
                        number(id).map(Pre::Numeric)
                    } else {
                        Some(Pre::Alpha(id.to_string()))
                    }
                })
                .collect::<Option<Vec<_>>>()?,
        };
        Some(Version {
            major,
            minor,
            patch,
            pre,
        })
    }

    /// `semver.ParseTolerant`: spaces and a leading `v` trimmed, leading zeros dropped,
    /// a missing minor or patch read as 0 (`1.33` is `1.33.0`).
    pub fn parse_tolerant(text: &str) -> Option<Version> {
        let text = text.trim();
        let text = text.strip_prefix('v').unwrap_or(text);
        let mut parts: Vec<String> = text
            .splitn(3, '.')
            .map(|part| {
                let trimmed = part.trim_start_matches('0');
                if part.len() > 1 && !trimmed.starts_with(|c: char| c.is_ascii_digit()) {
                    format!("0{trimmed}")
                } else if part.len() > 1 {
                    trimmed.to_string()
                } else {
                    part.to_string()
                }
            })
            .collect();
        if parts.len() < 3 {
            if parts.last().is_some_and(|p| p.contains(['+', '-'])) {
                return None;
            }
            parts.resize(3, "0".to_string());
        }
        Version::parse(&parts.join("."))
    }

    /// Whether this is 0.0.0, what Go's zero `semver.Version` is.
    pub fn is_zero(&self) -> bool {
        *self == Version::default()
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| match (self.pre.is_empty(), other.pre.is_empty()) {
                // A release orders above its pre-releases.
                (true, true) => Ordering::Equal,
                (true, false) => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => self.pre.cmp(&other.pre),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn is_identifier(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A decimal number without a leading zero (but `0` itself).
fn number(text: &str) -> Option<u64> {
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if text.is_empty() || leading_zero || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_parsing_wants_three_plain_numbers() {
        for good in ["1.33.0", "0.0.0", "1.2.3-alpha.1+build.5", "10.20.30-rc-1"] {
            assert!(Version::parse(good).is_some(), "{good}");
        }
        for bad in [
            "",
            "1.33",
            "v1.33.0",
            "1.33.0.1",
            "01.2.3",
            "1.2.3-",
            "1.2.3-a..b",
            "1.2.3+",
            "1.2.3-01",
            "1.2.x",
            " 1.2.3",
            "1.2.3-é",
        ] {
            assert!(Version::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tolerant_parsing_fills_in_and_trims() {
        let v = |s| Version::parse_tolerant(s);
        assert_eq!(v("v1.33"), Version::parse("1.33.0"));
        assert_eq!(v(" 1.033.00 "), Version::parse("1.33.0"));
        assert_eq!(v("1"), Version::parse("1.0.0"));
        assert!(v("1.2-rc").is_none());
        assert!(v("garbage").is_none());
        assert!(v("1.2.3").is_some_and(|v| !v.is_zero()));
        assert!(v("0.0").is_some_and(|v| v.is_zero()));
    }

    #[test]
    fn precedence_is_semver_2() {
        let order = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.2.0",
            "1.10.0",
        ];
        for pair in order.windows(2) {
            let (a, b) = (Version::parse(pair[0]), Version::parse(pair[1]));
            assert!(a < b, "{} < {}", pair[0], pair[1]);
        }
        assert_eq!(
            Version::parse("1.0.0+a").cmp(&Version::parse("1.0.0+b")),
            Ordering::Equal
        );
    }
}
