//! kube-scheduler's leader election flags, and Go's duration syntax.
//!
//! Hand-written: a dozen flags do not need a parser crate, and the rules are pflag's:
//! `--flag=value` or `--flag value`, booleans only as `--flag` or `--flag=false`, the
//! last occurrence wins.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use leaderelection::{Config, ConfigError};

/// The lock kinds `--leader-elect-resource-lock` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// A file on this host (the embedded default).
    File,
    /// A key in etcd.
    Etcd,
    /// A `coordination.k8s.io/v1` Lease (kube-scheduler's default).
    Leases,
    /// The leader annotation on an Endpoints object.
    Endpoints,
    /// The leader annotation on a ConfigMap.
    ConfigMaps,
    /// Endpoints and Lease together, for migrating to Leases.
    EndpointsLeases,
    /// ConfigMap and Lease together, for migrating to Leases.
    ConfigMapsLeases,
}

impl LockKind {
    const ALL: [(&'static str, LockKind); 7] = [
        ("file", LockKind::File),
        ("etcd", LockKind::Etcd),
        ("leases", LockKind::Leases),
        ("endpoints", LockKind::Endpoints),
        ("configmaps", LockKind::ConfigMaps),
        ("endpointsleases", LockKind::EndpointsLeases),
        ("configmapsleases", LockKind::ConfigMapsLeases),
    ];

    /// The flag value that names this kind.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("?", |(n, _)| n)
    }

    fn parse(value: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == value).map(|(_, k)| *k)
    }

    fn names() -> String {
        Self::ALL.map(|(n, _)| n).join(", ")
    }
}

/// Everything the command line says.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// `--leader-elect`: run an election (true) or always act (false).
    pub leader_elect: bool,
    /// `--leader-elect-lease-duration`.
    pub lease_duration: Duration,
    /// `--leader-elect-renew-deadline`.
    pub renew_deadline: Duration,
    /// `--leader-elect-retry-period`.
    pub retry_period: Duration,
    /// `--leader-elect-resource-lock`.
    pub resource_lock: LockKind,
    /// `--leader-elect-resource-name`: the election and its stored object.
    pub resource_name: String,
    /// `--leader-elect-resource-namespace`.
    pub resource_namespace: String,
    /// `--etcd-servers`, comma separated.
    pub etcd_servers: Vec<String>,
    /// `--kubeconfig`; empty means in-cluster or `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// `--identity`; default: the host name and a random suffix.
    pub identity: Option<String>,
    /// `--lock-file`, for the file lock; default: in the temp directory, after the name.
    pub lock_file: Option<PathBuf>,
    /// `--bind-address` of the health and metrics server.
    pub bind_address: IpAddr,
    /// `--port` of the health and metrics server.
    pub port: u16,
    /// Whether `--port` was given (else a busy default port falls back to a free one).
    pub port_given: bool,
    /// `--assign-interval`: how often the leader assigns a pending pod.
    pub assign_interval: Duration,
    /// `--demo`: run the three-replica demo instead of one replica.
    pub demo: bool,
}

/// The port kube-scheduler served plain-HTTP health and metrics on before 1.23.
pub const DEFAULT_PORT: u16 = 10251;

impl Default for Options {
    fn default() -> Self {
        Self {
            leader_elect: true,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            resource_lock: LockKind::File,
            resource_name: "kube-scheduler".into(),
            resource_namespace: "kube-system".into(),
            etcd_servers: vec!["http://127.0.0.1:2379".into()],
            kubeconfig: None,
            identity: None,
            lock_file: None,
            bind_address: IpAddr::from([127, 0, 0, 1]),
            port: DEFAULT_PORT,
            port_given: false,
            assign_interval: Duration::from_secs(1),
            demo: false,
        }
    }
}

impl Options {
    /// The elector's configuration these options describe.
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.resource_name.clone())
            .lease_duration(self.lease_duration)
            .renew_deadline(self.renew_deadline)
            .retry_period(self.retry_period);
        if let Some(identity) = &self.identity {
            config = config.identity(identity.clone());
        }
        config
    }

    /// Where the file lock keeps the record.
    pub fn lock_file(&self) -> PathBuf {
        self.lock_file.clone().unwrap_or_else(|| {
            let name: String = self
                .resource_name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            std::env::temp_dir().join(format!("leaderelection-{name}.json"))
        })
    }
}

/// What to do.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// Print [`HELP`] and exit 0.
    Help,
    /// Run with these options.
    Run(Box<Options>),
}

/// A bad command line, naming the flag. The process exits with status 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError {
    /// The flag (or argument) at fault, as typed.
    pub flag: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for FlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.flag, self.message)
    }
}

impl std::error::Error for FlagError {}

fn err(flag: &str, message: impl Into<String>) -> FlagError {
    FlagError {
        flag: flag.to_owned(),
        message: message.into(),
    }
}

/// Usage text for `--help`.
pub const HELP: &str = "\
An example scheduler replica: it assigns pending pods only while it leads the
election, and stands by otherwise. Run the same command in two terminals to see
one active and one standby; stop the active one and watch the other take over.

Usage: scheduler [flags]
       scheduler --demo

Leader election (kube-scheduler's flags):
      --leader-elect[=true|false]            Run leader election; false means always act (default true)
      --leader-elect-lease-duration DURATION How long standbys wait after the last renewal before taking over (default 15s)
      --leader-elect-renew-deadline DURATION How long the leader retries a failed renewal before it steps down (default 10s)
      --leader-elect-retry-period DURATION   How often the leader renews and standbys retry (default 2s)
      --leader-elect-resource-lock KIND      file, etcd, leases, endpoints, configmaps, endpointsleases or
                                             configmapsleases (default file; kube-scheduler's default is leases)
      --leader-elect-resource-name NAME      The election, and the object that stores it (default kube-scheduler)
      --leader-elect-resource-namespace NS   Namespace of that object, for the Kubernetes locks (default kube-system)
      --etcd-servers URLS                    Comma-separated etcd endpoints, for the etcd lock (default http://127.0.0.1:2379)
      --kubeconfig PATH                      kubeconfig for the Kubernetes locks (default: in-cluster, then $KUBECONFIG)
      --identity ID                          This replica's identity (default: host name and a random suffix)

This example:
      --lock-file PATH                       The file lock's file (default: <temp dir>/leaderelection-<name>.json)
      --bind-address IP                      Address of the /healthz and /metrics server (default 127.0.0.1)
      --port PORT                            Port of that server; 0 picks a free one (default 10251, or a free
                                             port when 10251 is taken and --port was not given)
      --assign-interval DURATION             How often the leader assigns a pending pod (default 1s)
      --demo                                 Start three replicas, crash the leader, stop the next one
                                             gracefully, and print a timeline (about 15 seconds)
  -h, --help                                 Show this help

Durations use Go's syntax: 15s, 1m30s, 500ms, 1.5h.
Timings must satisfy lease-duration > renew-deadline > 1.2 * retry-period > 0.
SIGTERM or Ctrl-C stops the work first, then releases the lease so a standby takes over at once.
Set RUST_LOG=leaderelection=debug to see every renewal.
";

const VALUE_FLAGS: [&str; 13] = [
    "--leader-elect-lease-duration",
    "--leader-elect-renew-deadline",
    "--leader-elect-retry-period",
    "--leader-elect-resource-lock",
    "--leader-elect-resource-name",
    "--leader-elect-resource-namespace",
    "--etcd-servers",
    "--kubeconfig",
    "--identity",
    "--lock-file",
    "--bind-address",
    "--port",
    "--assign-interval",
];

/// Parses the arguments after the program name.
///
/// # Errors
///
/// A [`FlagError`] naming the first bad flag, or the timing flag a combination of
/// timings breaks.
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Parsed, FlagError> {
    let mut o = Options::default();
    let mut args = args.iter().map(AsRef::as_ref);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            return Ok(Parsed::Help);
        }
        if !arg.starts_with("--") || arg == "--" {
            return Err(err(
                arg,
                if arg.eq_ignore_ascii_case("false") || arg.eq_ignore_ascii_case("true") {
                    "unexpected argument; boolean flags take their value after '=', as in --leader-elect=false"
                } else {
                    "unexpected argument; all options are --flags (see --help)"
                },
            ));
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (arg, None),
        };
        // Booleans never consume the next argument, as in pflag.
        match flag {
            "--leader-elect" => {
                o.leader_elect = match inline {
                    None => true,
                    Some(v) => parse_bool(v).ok_or_else(|| {
                        err(flag, format!("invalid boolean {v:?}; use true or false"))
                    })?,
                };
                continue;
            }
            "--demo" => {
                if inline.is_some() {
                    return Err(err(flag, "takes no value"));
                }
                o.demo = true;
                continue;
            }
            _ => {}
        }
        if !VALUE_FLAGS.contains(&flag) {
            return Err(err(flag, "unknown flag (see --help)"));
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| err(flag, "flag needs an argument"))?,
        };
        let duration = || parse_go_duration(value).map_err(|e| err(flag, format!("{e}")));
        match flag {
            "--leader-elect-lease-duration" => o.lease_duration = duration()?,
            "--leader-elect-renew-deadline" => o.renew_deadline = duration()?,
            "--leader-elect-retry-period" => o.retry_period = duration()?,
            "--assign-interval" => {
                o.assign_interval = duration()?;
                if o.assign_interval.is_zero() {
                    return Err(err(flag, "must be greater than zero"));
                }
            }
            "--leader-elect-resource-lock" => {
                o.resource_lock = LockKind::parse(value).ok_or_else(|| {
                    err(
                        flag,
                        format!(
                            "unknown lock {value:?}; expected one of {}",
                            LockKind::names()
                        ),
                    )
                })?;
            }
            "--leader-elect-resource-name" => o.resource_name = non_empty(flag, value)?,
            "--leader-elect-resource-namespace" => o.resource_namespace = non_empty(flag, value)?,
            "--etcd-servers" => {
                o.etcd_servers = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if o.etcd_servers.is_empty() {
                    return Err(err(flag, "needs at least one URL"));
                }
            }
            "--kubeconfig" => {
                o.kubeconfig = Some(value).filter(|v| !v.is_empty()).map(PathBuf::from)
            }
            "--identity" => o.identity = Some(non_empty(flag, value)?),
            "--lock-file" => o.lock_file = Some(PathBuf::from(non_empty(flag, value)?)),
            "--bind-address" => {
                o.bind_address = value
                    .parse()
                    .map_err(|_| err(flag, format!("{value:?} is not an IP address")))?;
            }
            "--port" => {
                o.port = value
                    .parse()
                    .map_err(|_| err(flag, format!("{value:?} is not a port (0-65535)")))?;
                o.port_given = true;
            }
            _ => return Err(err(flag, "unknown flag (see --help)")),
        }
    }
    if o.leader_elect {
        o.config().validate().map_err(|e| config_error(e, &o))?;
    }
    Ok(Parsed::Run(Box::new(o)))
}

/// Names the flag behind each of the elector's configuration errors.
fn config_error(e: ConfigError, o: &Options) -> FlagError {
    let lease = "--leader-elect-lease-duration";
    let renew = "--leader-elect-renew-deadline";
    let retry = "--leader-elect-retry-period";
    match e {
        ConfigError::LeaseNotAfterRenewDeadline { lease: l, renew: r } => err(
            lease,
            format!("{} must be greater than {renew} ({})", go(l), go(r)),
        ),
        // Computed here rather than taken from the error, in exact decimal.
        ConfigError::RenewDeadlineNotAfterRetry { renew: r, .. } => err(
            renew,
            format!(
                "{} must be greater than 1.2 * {retry} (1.2 * {} = {})",
                go(r),
                go(o.retry_period),
                go(o.retry_period * 6 / 5)
            ),
        ),
        ConfigError::Zero { field } => {
            let flag = match field {
                "lease_duration" => lease,
                "renew_deadline" => renew,
                _ => retry,
            };
            err(flag, "must be greater than zero")
        }
        ConfigError::LeaseTooLong(d) => err(lease, format!("{} is too long", go(d))),
        ConfigError::EmptyIdentity => err("--identity", "must not be empty"),
        other => err("--leader-elect", other.to_string()),
    }
}

fn non_empty(flag: &str, value: &str) -> Result<String, FlagError> {
    if value.is_empty() {
        return Err(err(flag, "must not be empty"));
    }
    Ok(value.to_owned())
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// A bad duration, with Go's wording.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

/// Go's `time.ParseDuration`, for durations that cannot be negative: a sequence of
/// decimal numbers with optional fraction and a unit each (`300ms`, `1.5h`, `2h45m`),
/// units `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`; `0` alone needs no unit. Like Go,
/// the total is at most 2^63-1 nanoseconds and fractions finer than a nanosecond are
/// dropped (Go rounds them in floating point: results can differ by a nanosecond).
///
/// # Errors
///
/// A message in Go's words, with the input quoted.
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let invalid = |what: &str| DurationError(format!("time: {what} {input:?}"));
    let mut s = input;
    if let Some(rest) = s.strip_prefix('-') {
        if rest.chars().any(|c| c.is_ascii_digit() && c != '0') {
            return Err(DurationError(format!(
                "negative duration {input:?} is not allowed"
            )));
        }
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid("invalid duration"));
    }
    const MAX: u128 = (1 << 63) - 1;
    let mut total: u128 = 0;
    while !s.is_empty() {
        if !s.starts_with(|c: char| c == '.' || c.is_ascii_digit()) {
            return Err(invalid("invalid duration"));
        }
        // The integer part.
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (int_part, rest) = s.split_at(digits);
        s = rest;
        let mut value: u128 = 0;
        for d in int_part.bytes() {
            value = value * 10 + u128::from(d - b'0');
            if value > MAX {
                return Err(invalid("invalid duration"));
            }
        }
        // The fraction: digits past 2^63 are dropped, as in Go. Go scales it in
        // floating point; this is exact, so the two may differ by a nanosecond.
        let mut frac: u128 = 0;
        let mut scale: u128 = 1;
        let mut frac_digits = 0;
        if let Some(rest) = s.strip_prefix('.') {
            let n = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let (f, rest) = rest.split_at(n);
            for d in f.bytes() {
                if frac <= MAX / 10 {
                    frac = frac * 10 + u128::from(d - b'0');
                    scale *= 10;
                }
            }
            frac_digits = n;
            s = rest;
        }
        if int_part.is_empty() && frac_digits == 0 {
            // "." or ".s"
            return Err(invalid("invalid duration"));
        }
        // The unit.
        let n = s
            .find(|c: char| c == '.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        let (unit, rest) = s.split_at(n);
        s = rest;
        let nanos: u128 = match unit {
            "" => return Err(invalid("missing unit in duration")),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(DurationError(format!(
                    "time: unknown unit {other:?} in duration {input:?}"
                )))
            }
        };
        let part = value
            .checked_mul(nanos)
            .filter(|v| *v <= MAX)
            .ok_or_else(|| invalid("invalid duration"))?;
        total += part + frac * nanos / scale;
        if total > MAX {
            return Err(invalid("invalid duration"));
        }
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration the way Go prints one (`1m30s`, `1.5s`, `500ms`), for messages
/// that quote flags back to the user.
pub fn go(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", decimal(nanos, div));
    }
    let secs = nanos / 1_000_000_000;
    let (h, m) = (secs / 3600, secs / 60 % 60);
    let s = decimal(nanos % 60_000_000_000, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

/// `n / div` with the remainder as a decimal fraction, trailing zeros cut.
fn decimal(n: u128, div: u128) -> String {
    let (whole, rem) = (n / div, n % div);
    if rem == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let frac = format!("{rem:0width$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn durations_parse_like_go() {
        let cases: &[(&str, Duration)] = &[
            ("0", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("+0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("15s", Duration::from_secs(15)),
            ("+15s", Duration::from_secs(15)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", ms(500)),
            ("1.5h", Duration::from_secs(5400)),
            ("1.5s", ms(1500)),
            (".5s", ms(500)),
            ("1.s", Duration::from_secs(1)),
            ("2h45m", Duration::from_secs(2 * 3600 + 45 * 60)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("100µs", Duration::from_micros(100)),
            ("100μs", Duration::from_micros(100)),
            ("100us", Duration::from_micros(100)),
            ("3ns", Duration::from_nanos(3)),
            ("1.0000000001s", Duration::from_secs(1)),
            ("0.5h", Duration::from_secs(1800)),
            (
                "9223372036854775807ns",
                Duration::from_nanos(i64::MAX as u64),
            ),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
        ];
        for (input, want) in cases {
            assert_eq!(parse_go_duration(input).as_ref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn bad_durations_are_refused_in_go_words() {
        let cases: &[(&str, &str)] = &[
            ("", "time: invalid duration \"\""),
            ("15", "time: missing unit in duration \"15\""),
            ("1.5", "time: missing unit in duration \"1.5\""),
            ("s", "time: invalid duration \"s\""),
            (".", "time: invalid duration \".\""),
            (".s", "time: invalid duration \".s\""),
            ("1d", "time: unknown unit \"d\" in duration \"1d\""),
            ("15 s", "time: unknown unit \" s\" in duration \"15 s\""),
            ("1s-1s", "time: unknown unit \"s-\" in duration \"1s-1s\""),
            ("abc", "time: invalid duration \"abc\""),
            (
                "9223372036854775808ns",
                "time: invalid duration \"9223372036854775808ns\"",
            ),
            ("2562048h", "time: invalid duration \"2562048h\""),
            ("-5s", "negative duration \"-5s\" is not allowed"),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_go_duration(input).map_err(|e| e.to_string()),
                Err(want.to_string()),
                "{input}"
            );
        }
    }

    #[test]
    fn durations_print_like_go() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (ms(500), "500ms"),
            (ms(1500), "1.5s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(5400), "1h30m0s"),
            (ms(2400), "2.4s"),
            (Duration::from_micros(1500), "1.5ms"),
        ] {
            assert_eq!(go(d), want);
            assert_eq!(parse_go_duration(want), Ok(d), "{want} round-trips");
        }
    }

    fn run(args: &[&str]) -> Options {
        match parse(args) {
            Ok(Parsed::Run(o)) => *o,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    fn fails(args: &[&str]) -> FlagError {
        match parse(args) {
            Err(e) => e,
            Ok(other) => panic!("{args:?} was accepted: {other:?}"),
        }
    }

    #[test]
    fn defaults_are_kube_schedulers_but_on_the_file_lock() {
        let o = run(&[]);
        assert_eq!(o, Options::default());
        assert!(o.leader_elect);
        assert_eq!(
            (o.lease_duration, o.renew_deadline, o.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        assert_eq!(o.resource_lock, LockKind::File);
        assert_eq!(o.resource_name, "kube-scheduler");
        assert!(o
            .lock_file()
            .ends_with("leaderelection-kube-scheduler.json"));
    }

    #[test]
    fn both_flag_forms_and_the_last_one_wins() {
        let o = run(&[
            "--leader-elect-lease-duration=30s",
            "--leader-elect-renew-deadline",
            "20s",
            "--leader-elect-retry-period",
            "4s",
            "--leader-elect-resource-lock",
            "leases",
            "--leader-elect-resource-name=my-sched",
            "--leader-elect-resource-namespace",
            "ops",
            "--etcd-servers=http://a:2379, http://b:2379",
            "--kubeconfig",
            "/k/config",
            "--identity=node-1",
            "--bind-address",
            "0.0.0.0",
            "--port=0",
            "--identity",
            "node-2",
        ]);
        assert_eq!(o.lease_duration, Duration::from_secs(30));
        assert_eq!(o.renew_deadline, Duration::from_secs(20));
        assert_eq!(o.retry_period, Duration::from_secs(4));
        assert_eq!(o.resource_lock, LockKind::Leases);
        assert_eq!(o.resource_name, "my-sched");
        assert_eq!(o.resource_namespace, "ops");
        assert_eq!(o.etcd_servers, ["http://a:2379", "http://b:2379"]);
        assert_eq!(o.kubeconfig, Some(PathBuf::from("/k/config")));
        assert_eq!(o.identity.as_deref(), Some("node-2"));
        assert_eq!(o.bind_address, IpAddr::from([0, 0, 0, 0]));
        assert_eq!((o.port, o.port_given), (0, true));
        assert_eq!(o.config().identity, "node-2");
        for (name, kind) in LockKind::ALL {
            let flag = format!("--leader-elect-resource-lock={name}");
            assert_eq!(run(&[flag.as_str()]).resource_lock, kind);
            assert_eq!(kind.name(), name);
        }
    }

    #[test]
    fn booleans_take_their_value_after_equals() {
        assert!(!run(&["--leader-elect=false"]).leader_elect);
        assert!(run(&["--leader-elect=false", "--leader-elect"]).leader_elect);
        assert!(run(&["--leader-elect=T"]).leader_elect);
        let e = fails(&["--leader-elect", "false"]);
        assert_eq!(e.flag, "false");
        assert!(e.message.contains("--leader-elect=false"), "{e}");
        assert_eq!(fails(&["--leader-elect=maybe"]).flag, "--leader-elect");
        assert!(run(&["--demo"]).demo);
    }

    #[test]
    fn bad_flags_name_the_flag() {
        let cases: &[(&[&str], &str, &str)] = &[
            (&["--no-such-flag"], "--no-such-flag", "unknown flag"),
            (&["--no-such-flag=1"], "--no-such-flag", "unknown flag"),
            (&["positional"], "positional", "unexpected argument"),
            (&["--identity"], "--identity", "needs an argument"),
            (&["--identity="], "--identity", "must not be empty"),
            (
                &["--leader-elect-lease-duration", "15"],
                "--leader-elect-lease-duration",
                "missing unit",
            ),
            (
                &["--leader-elect-retry-period=2x"],
                "--leader-elect-retry-period",
                "unknown unit",
            ),
            (
                &["--leader-elect-resource-lock=zookeeper"],
                "--leader-elect-resource-lock",
                "expected one of file, etcd, leases",
            ),
            (&["--port=70000"], "--port", "not a port"),
            (&["--bind-address=localhost"], "--bind-address", "not an IP"),
            (&["--etcd-servers=,"], "--etcd-servers", "at least one"),
            (
                &["--assign-interval=0s"],
                "--assign-interval",
                "greater than zero",
            ),
            (&["--demo=yes"], "--demo", "no value"),
        ];
        for (args, flag, words) in cases {
            let e = fails(args);
            assert_eq!(e.flag, *flag, "{args:?}: {e}");
            assert!(e.message.contains(words), "{args:?}: {e}");
        }
        assert_eq!(parse(&["--help"]), Ok(Parsed::Help));
        assert_eq!(parse(&["--port=x", "-h"]), Err(fails(&["--port=x"])));
    }

    #[test]
    fn invalid_timings_name_the_flag_and_the_rule() {
        let e = fails(&["--leader-elect-lease-duration=10s"]);
        assert_eq!(e.flag, "--leader-elect-lease-duration");
        assert_eq!(
            e.message,
            "10s must be greater than --leader-elect-renew-deadline (10s)"
        );
        let e = fails(&["--leader-elect-retry-period=9s"]);
        assert_eq!(e.flag, "--leader-elect-renew-deadline");
        assert_eq!(
            e.message,
            "10s must be greater than 1.2 * --leader-elect-retry-period (1.2 * 9s = 10.8s)"
        );
        let e = fails(&[
            "--leader-elect-retry-period=0s",
            "--leader-elect-renew-deadline=1s",
        ]);
        assert_eq!(e.flag, "--leader-elect-retry-period");
        assert_eq!(e.message, "must be greater than zero");
        // Without an election the timings do not matter.
        assert!(!run(&["--leader-elect=false", "--leader-elect-lease-duration=1s"]).leader_elect);
        // client-go's smallest sensible setting is fine.
        run(&[
            "--leader-elect-lease-duration=2s",
            "--leader-elect-renew-deadline=1.5s",
            "--leader-elect-retry-period=500ms",
        ]);
    }
}
