//! kube-scheduler's leader election flags on clap, and Go's duration syntax.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::NonEmptyStringValueParser;
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, ValueEnum};
use leaderelection::{Config, ConfigError};

/// The lock kinds `--leader-elect-resource-lock` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "lower")]
pub enum LockKind {
    /// A file on this host (the embedded default)
    File,
    /// A key in etcd (feature `etcd`)
    Etcd,
    /// A coordination.k8s.io/v1 Lease, kube-scheduler's default (feature `kube`)
    Leases,
    /// The leader annotation on an Endpoints object (feature `kube`)
    Endpoints,
    /// The leader annotation on a ConfigMap (feature `kube`)
    ConfigMaps,
    /// Endpoints and Lease together, for migrating to Leases (feature `kube`)
    EndpointsLeases,
    /// ConfigMap and Lease together, for migrating to Leases (feature `kube`)
    ConfigMapsLeases,
}

impl LockKind {
    /// The flag value that names this kind.
    pub fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned())
    }
}

/// The port kube-scheduler served plain-HTTP health and metrics on before 1.23.
pub const DEFAULT_PORT: u16 = 10251;

/// An example scheduler replica: it assigns pending pods only while it leads the
/// election, and stands by otherwise. Run the same command in two terminals to see one
/// active and one standby; stop the active one and watch the other take over.
#[derive(Clone, Debug, PartialEq, Parser)]
#[command(
    name = "scheduler",
    after_help = "\
Durations use Go's syntax: 15s, 1m30s, 500ms, 1.5h.
Timings must satisfy lease-duration > renew-deadline > 1.2 * retry-period > 0.
The etcd and Kubernetes locks are cargo features of the example package:
  cargo run -p leaderelection-examples --features etcd --bin scheduler -- --leader-elect-resource-lock=etcd
  cargo run -p leaderelection-examples --features kube --bin scheduler -- --leader-elect-resource-lock=leases
SIGTERM or Ctrl-C stops the work first, then releases the lease so a standby takes over at once.
Serves /healthz, /readyz and /metrics. Set RUST_LOG=leaderelection=debug to see every renewal."
)]
pub struct Options {
    /// Run leader election; false means always act
    #[arg(long, value_name = "true|false", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true", value_parser = parse_bool)]
    pub leader_elect: bool,
    /// How long standbys wait after the last renewal before taking over
    #[arg(long = "leader-elect-lease-duration", value_name = "DURATION", default_value = "15s", value_parser = parse_go_duration)]
    pub lease_duration: Duration,
    /// How long the leader retries a failed renewal before it steps down
    #[arg(long = "leader-elect-renew-deadline", value_name = "DURATION", default_value = "10s", value_parser = parse_go_duration)]
    pub renew_deadline: Duration,
    /// How often the leader renews and standbys retry
    #[arg(long = "leader-elect-retry-period", value_name = "DURATION", default_value = "2s", value_parser = parse_go_duration)]
    pub retry_period: Duration,
    /// The lock kind (kube-scheduler's default is leases)
    #[arg(
        long = "leader-elect-resource-lock",
        value_name = "KIND",
        default_value = "file"
    )]
    pub resource_lock: LockKind,
    /// The election, and the object that stores it
    #[arg(long = "leader-elect-resource-name", value_name = "NAME", default_value = "kube-scheduler", value_parser = NonEmptyStringValueParser::new())]
    pub resource_name: String,
    /// Namespace of that object, for the Kubernetes locks
    #[arg(long = "leader-elect-resource-namespace", value_name = "NS", default_value = "kube-system", value_parser = NonEmptyStringValueParser::new())]
    pub resource_namespace: String,
    /// Comma-separated etcd endpoints, for the etcd lock
    #[arg(long, value_name = "URLS", value_delimiter = ',', default_value = "http://127.0.0.1:2379", value_parser = NonEmptyStringValueParser::new())]
    pub etcd_servers: Vec<String>,
    /// kubeconfig for the Kubernetes locks [default: in-cluster, then $KUBECONFIG]
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// This replica's identity [default: host name and a random suffix]
    #[arg(long, value_name = "ID", value_parser = NonEmptyStringValueParser::new())]
    pub identity: Option<String>,
    /// The file lock's file [default: leaderelection-NAME.json in the temp dir]
    #[arg(long, value_name = "PATH")]
    pub lock_file: Option<PathBuf>,
    /// Address of the /healthz, /readyz and /metrics server
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub bind_address: IpAddr,
    /// Port of that server; 0 picks a free one [default: 10251, or a free port when it is taken]
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// How often the leader assigns a pending pod
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = positive_duration)]
    pub assign_interval: Duration,
    /// Take part in Kubernetes' coordinated leader election (KEP-4355): publish a
    /// LeaseCandidate and lead only when kube-apiserver names this replica; needs
    /// --leader-elect-resource-lock=leases and an API server with the
    /// CoordinatedLeaderElection gate
    #[arg(long = "leader-elect-coordinated", value_name = "true|false", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_bool)]
    pub coordinated: bool,
    /// This binary's version in the coordinated election (as 1.35 or 1.35.0)
    #[arg(long, value_name = "VERSION", default_value = "1.33.0", value_parser = NonEmptyStringValueParser::new())]
    pub binary_version: String,
    /// The version this binary emulates in the coordinated election [default: --binary-version]
    #[arg(long, value_name = "VERSION", value_parser = NonEmptyStringValueParser::new())]
    pub emulation_version: Option<String>,
    /// Split the work into N shards, each a lease of its own (`<name>-shard-<i>`):
    /// each replica owns about N / replicas shards and assigns only the pods whose
    /// name hashes to one of them; 0 for active/standby
    #[arg(long, value_name = "N", default_value = "0")]
    pub shards: u32,
    /// Start three replicas, crash the leader, stop the next one gracefully, and print
    /// a timeline (about 15 seconds); with --shards N, three sharded replicas: balance,
    /// a crash and a join
    #[arg(long)]
    pub demo: bool,
    /// Catches `--leader-elect false`, to say how booleans take a value.
    #[arg(hide = true)]
    pub stray: Vec<String>,
}

impl Options {
    /// Parses the command line; on a bad one prints the error naming the flag and
    /// exits with status 2 (0 for `--help`).
    pub fn parse_or_exit() -> Self {
        let o = Self::parse();
        if let Some(arg) = o.stray.first() {
            let hint = if parse_bool(arg).is_ok() {
                format!("boolean flags take their value after '=', as in --leader-elect={arg}")
            } else {
                "all options are --flags (see --help)".into()
            };
            Self::command()
                .error(
                    ErrorKind::UnknownArgument,
                    format!("{arg}: unexpected argument; {hint}"),
                )
                .exit();
        }
        if o.leader_elect {
            if let Err(e) = o.config().validate() {
                Self::command()
                    .error(ErrorKind::ValueValidation, config_error(e, &o))
                    .exit();
            }
        }
        if let Err(message) = o.check_coordinated() {
            Self::command()
                .error(ErrorKind::ArgumentConflict, message)
                .exit();
        }
        o
    }

    /// `--leader-elect-coordinated` runs only on a Lease, in active/standby.
    pub fn check_coordinated(&self) -> Result<(), String> {
        if !self.coordinated {
            return Ok(());
        }
        let flag = "--leader-elect-coordinated";
        if !self.leader_elect {
            return Err(format!("{flag} needs --leader-elect"));
        }
        if self.resource_lock != LockKind::Leases {
            return Err(format!(
                "{flag} needs --leader-elect-resource-lock=leases (not {}): only a Lease carries the coordinated election",
                self.resource_lock.name()
            ));
        }
        if self.shards > 0 {
            return Err(format!("{flag} cannot be combined with --shards"));
        }
        Ok(())
    }

    /// The `--emulation-version`, defaulting to `--binary-version`.
    pub fn emulation_version(&self) -> &str {
        self.emulation_version
            .as_deref()
            .unwrap_or(&self.binary_version)
    }

    /// The elector's configuration these options describe.
    pub fn config(&self) -> Config {
        let mut config = Config::new(self.resource_name.clone())
            .lease_duration(self.lease_duration)
            .renew_deadline(self.renew_deadline)
            .retry_period(self.retry_period)
            .coordinated(self.coordinated);
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

/// Names the flag behind each of the elector's configuration errors.
fn config_error(e: ConfigError, o: &Options) -> String {
    let (lease, renew, retry) = (
        "--leader-elect-lease-duration",
        "--leader-elect-renew-deadline",
        "--leader-elect-retry-period",
    );
    match e {
        ConfigError::LeaseNotAfterRenewDeadline { lease: l, renew: r } => {
            format!(
                "{lease}: {} must be greater than {renew} ({})",
                go(l),
                go(r)
            )
        }
        // Computed here rather than taken from the error, in exact decimal.
        ConfigError::RenewDeadlineNotAfterRetry { renew: r, .. } => format!(
            "{renew}: {} must be greater than 1.2 * {retry} (1.2 * {} = {})",
            go(r),
            go(o.retry_period),
            go(o.retry_period * 6 / 5)
        ),
        ConfigError::Zero { field } => {
            let flag = match field {
                "lease_duration" => lease,
                "renew_deadline" => renew,
                _ => retry,
            };
            format!("{flag}: must be greater than zero")
        }
        ConfigError::LeaseTooLong(d) => format!("{lease}: {} is too long", go(d)),
        other => format!("--leader-elect: {other}"),
    }
}

/// Go's `strconv.ParseBool`.
fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {v:?}; use true or false")),
    }
}

fn positive_duration(v: &str) -> Result<Duration, String> {
    match parse_go_duration(v) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
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

    #[test]
    fn coordinated_runs_only_on_a_lease_in_active_standby() {
        let o = run(&[
            "--leader-elect-coordinated",
            "--leader-elect-resource-lock=leases",
        ])
        .unwrap();
        assert!(o.config().coordinated);
        assert_eq!(o.check_coordinated(), Ok(()));
        assert_eq!(o.emulation_version(), "1.33.0");
        let o = run(&[
            "--leader-elect-coordinated=true",
            "--leader-elect-resource-lock=leases",
            "--binary-version=1.35",
            "--emulation-version=1.34",
        ])
        .unwrap();
        assert_eq!(
            (o.binary_version.as_str(), o.emulation_version()),
            ("1.35", "1.34")
        );
        let e = run(&["--leader-elect-coordinated"])
            .unwrap()
            .check_coordinated()
            .unwrap_err();
        assert!(
            e.contains("--leader-elect-resource-lock=leases (not file)"),
            "{e}"
        );
        let e = run(&[
            "--leader-elect-coordinated",
            "--leader-elect-resource-lock=leases",
            "--shards=4",
        ])
        .unwrap()
        .check_coordinated()
        .unwrap_err();
        assert!(e.contains("--shards"), "{e}");
        assert!(!run(&[]).unwrap().config().coordinated);
    }

    fn run(args: &[&str]) -> Result<Options, clap::Error> {
        Options::try_parse_from(std::iter::once("scheduler").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_kube_schedulers_but_on_the_file_lock() {
        let o = run(&[]).unwrap();
        assert!(o.leader_elect);
        let c = o.config();
        assert_eq!(
            c,
            Config::new("kube-scheduler").identity(c.identity.clone())
        );
        assert_eq!(o.resource_lock, LockKind::File);
        assert!(o
            .lock_file()
            .ends_with("leaderelection-kube-scheduler.json"));
        Options::command().debug_assert();
    }

    #[test]
    fn flags_take_go_values() {
        let o = run(&[
            "--leader-elect=f",
            "--leader-elect-lease-duration=1m30s",
            "--leader-elect-resource-lock",
            "configmapsleases",
            "--etcd-servers=http://a:2379,http://b:2379",
        ])
        .unwrap();
        assert!(!o.leader_elect);
        assert_eq!(o.lease_duration, Duration::from_secs(90));
        assert_eq!(o.resource_lock, LockKind::ConfigMapsLeases);
        assert_eq!(o.resource_lock.name(), "configmapsleases");
        assert_eq!(o.etcd_servers, ["http://a:2379", "http://b:2379"]);
        assert!(run(&["--leader-elect"]).unwrap().leader_elect);
        for (args, words) in [
            (&["--leader-elect-retry-period=2x"][..], "unknown unit"),
            (&["--assign-interval=0s"], "greater than zero"),
            (&["--identity="], "--identity"),
            (&["--leader-elect-resource-lock=zookeeper"], "zookeeper"),
        ] {
            let e = run(args).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(words), "{args:?}: {e}");
        }
    }

    #[test]
    fn invalid_timings_name_the_flag_and_the_rule() {
        let o = run(&["--leader-elect-retry-period=9s"]).unwrap();
        assert_eq!(
            config_error(o.config().validate().unwrap_err(), &o),
            "--leader-elect-renew-deadline: 10s must be greater than 1.2 * --leader-elect-retry-period (1.2 * 9s = 10.8s)"
        );
    }
}
