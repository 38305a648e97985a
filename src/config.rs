//! Typed configuration (SPEC section 3): the TOML file, its defaults and its validation.
//!
//! Boundary: this module turns text into a [`Config`], or into the list of *every* problem in it,
//! each named by its key path (`sip.upstream[1]: "10.0.0.5:99999" is not a socket address`). It
//! reads one file at most (the configuration itself, in [`Config::load`]); it does not open the
//! secret or token files, bind sockets, resolve names or pick the worker count: the daemon does.
//!
//! How: the text is parsed into a `toml::Table` and deserialised with serde into "raw" structs
//! (`#[serde(deny_unknown_fields)]` on every table; strings for durations, sizes, addresses and
//! money). Serde stops at its first error, so a structural error (unknown key, wrong type) is
//! recorded with its path from `serde_path_to_error`, the offending key is removed from the
//! table and deserialisation is retried. The semantic checks then turn what is left into the
//! typed structs, collecting their problems too. One pass, every problem reported (STYLE rule 7).
//!
//! Defaults live in the `Default` impls of the typed structs and nowhere else; the raw structs are
//! all `Option`s, and `None` means "take the default".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The IANA port for SIP over UDP (RFC 3261 section 19.1.2).
const SIP_PORT: u16 = 5060;
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
/// Shortest inline `sip.secret` accepted: 128 bits, the usual floor for an HMAC key.
pub const MIN_SECRET_LEN: usize = 16;
/// Upper bound for `sip.workers`: each worker is one socket per listen address, so a typo such as
/// `10000` would open thousands of sockets; no machine we target has more cores than this.
const MAX_WORKERS: usize = 1024;
/// Highest `sip.realtime_priority`: the top of Linux's `SCHED_FIFO` range.
const MAX_REALTIME_PRIORITY: u32 = 99;
/// Smallest `sip.recv_buffer`: below this a burst of a few large INVITEs already overflows.
const MIN_RECV_BUFFER: u64 = 4 * KIB;
/// Largest `sip.recv_buffer`: `SO_RCVBUF` is a C `int` that the kernel doubles; 1 GiB is far
/// beyond any useful queue (and beyond `net.core.rmem_max` anywhere sane).
const MAX_RECV_BUFFER: u64 = GIB;
/// Shortest `credit.refresh_interval`: a full Redis SCAN more than once a second is a DoS on the
/// billing Redis, and push updates exist for faster changes.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest `live.call_expiry`: a real call lasting longer than the expiry loses its hold on the
/// credit, so anything below a minute would forget ordinary calls.
const MIN_CALL_EXPIRY: Duration = Duration::from_secs(60);
/// The URL schemes the Redis client understands.
const REDIS_SCHEMES: [&str; 4] = [
    "redis://",
    "rediss://",
    "redis+sentinel://",
    "redis+unix://",
];
/// Default `sip.source_pps_limit`: 200 calls a second from one address at a generous ten
/// datagrams per call (INVITE, retransmissions, ACK, BYE, responses to calls the switch sends,
/// keep-alives). No customer trunk of a credit-controlled service gets near it; a flood or a
/// scanner sends far more. Costs one hash-map operation per datagram (`flood.rs`).
const DEFAULT_SOURCE_PPS_LIMIT: u32 = 2_000;
/// Default `abuse.ban_after_auth_failures`: generous, because a challenge (401/407) answered
/// with the right credentials clears the count; 30 failures without a success in
/// `ban_window` is a password guesser, not a phone with a typo (which retries a few times).
const DEFAULT_BAN_AFTER_AUTH_FAILURES: u32 = 30;
/// Default `abuse.ban_window`.
const DEFAULT_BAN_WINDOW: Duration = Duration::from_secs(60);
/// Default `abuse.ban_time`: long enough that a guesser moves on, short enough that a
/// customer banned by mistake (a PBX with a stale password) recovers without a phone call.
const DEFAULT_BAN_TIME: Duration = Duration::from_secs(15 * 60);
/// Default `abuse.max_tracked`: sources with failure counts, and bans, each. About 64 bytes an
/// entry: a few MiB at most, whatever a spoofed flood does.
const DEFAULT_MAX_TRACKED: usize = 65_536;
/// Highest `abuse.max_tracked`.
const MAX_MAX_TRACKED: usize = 10_000_000;
/// The User-Agents of common SIP scanners and password guessers (SIPVicious svmap/svwar/
/// svcrack, sipcli, VaxSIPUserAgent, sundayddr, pplsip, iWar, sip-scan), matched as
/// case-insensitive substrings. No phone or PBX sends these.
pub const DEFAULT_SCANNER_USER_AGENTS: [&str; 8] = [
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "vaxsipuseragent",
    "sundayddr",
    "pplsip",
    "iwar",
    "sip-scan",
];
/// Default `log.refusal_lines_per_second`: a screenful a second is enough to see what is being
/// refused and why; the metrics count every refusal.
const DEFAULT_REFUSAL_LINES_PER_SECOND: u32 = 20;
/// Highest `log.refusal_lines_per_second`.
const MAX_REFUSAL_LINES_PER_SECOND: u32 = 1_000_000;
/// Level names accepted for `log.level` as a single word.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

// ---------------------------------------------------------------------------------------------
// The typed configuration
// ---------------------------------------------------------------------------------------------

/// The whole configuration file. `Config::default()` holds every documented default, except that
/// `sip.upstream` is empty and therefore invalid: there is no sensible default switch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// `[sip]`: sockets, the upstream switch and SIP handling.
    pub sip: SipConfig,
    /// `[credit]`: where balances come from and how stale they may get.
    pub credit: CreditConfig,
    /// `[live]`: the live spend estimate and related limits (SPEC section 7), all off by default.
    pub live: LiveConfig,
    /// `[identify]`: how a request is mapped to an account.
    pub identify: IdentifyConfig,
    /// `[reply]`: the SIP reply sent for each refusal cause.
    pub reply: ReplyConfig,
    /// `[admin]`: the HTTP admin API (metrics, health, accounts, refresh).
    pub admin: AdminConfig,
    /// `[log]`: log level and format.
    pub log: LogConfig,
    /// `[abuse]`: bans after authentication failures, scanner User-Agents.
    pub abuse: AbuseConfig,
}

/// `[sip]`: sockets, upstreams and SIP handling.
#[derive(Debug, Clone, PartialEq)]
pub struct SipConfig {
    /// UDP sockets to receive customers' and the switch's traffic on. Default `["0.0.0.0:5060"]`;
    /// must not be empty nor repeat an address. IPv6 is written `"[::1]:5060"`. Port 0 binds an
    /// ephemeral port (tests); then set `advertise` with an explicit port or leave it empty.
    pub listen: Vec<SocketAddr>,
    /// `host:port` written into creditgate's Via and Record-Route. `""` or absent = `None`: the
    /// daemon uses the address of the socket the request arrived on. Set it behind NAT or when
    /// listening on `0.0.0.0`. `"host"` alone takes the port of the first `listen` address. The
    /// host is an IP (IPv6 in brackets when a port follows) or a DNS name.
    pub advertise: Option<Advertise>,
    /// The switch(es) new calls are forwarded to, `IP:port`; several = spread by Call-ID hash.
    /// Required, no default. Requests arriving from these IPs (any port) are never credit-checked.
    pub upstream: Vec<SocketAddr>,
    /// Insert a Record-Route so in-dialog requests keep flowing through creditgate (default
    /// `true`). Without it the dialog's later requests bypass creditgate entirely, which also
    /// disables call tracking (`[live]`).
    pub record_route: bool,
    /// Further sources treated like upstreams (never credit-checked), as CIDRs or bare IPs (a
    /// bare IP is a /32 or /128). Default empty. Stored with the host bits cleared.
    pub trusted: Vec<IpNet>,
    /// Number of worker sockets per listen address (`SO_REUSEPORT`). Default `0` = one per CPU
    /// core, resolved by the daemon, not here. At most 1024.
    pub workers: usize,
    /// Out-of-dialog methods that need credit, as SIP tokens stored upper-case. Default
    /// `["INVITE"]`. Must not be empty (use `credit.enforce = false` for a dry run); ACK and
    /// CANCEL are never checked and are refused here.
    pub check_methods: Vec<String>,
    /// Forward customers' other out-of-dialog requests (REGISTER, OPTIONS, MESSAGE...) upstream
    /// unchecked (default `true`); `false` refuses them instead.
    pub forward_other_methods: bool,
    /// Inline key for the Record-Route token and the Via branch HMAC (an extension of SPEC
    /// section 3). Default `""` = not set. At least 16 bytes when set; prefer `secret_file`,
    /// which keeps the key out of the config file. Setting both is an error.
    pub secret: String,
    /// File holding the HMAC key (its bytes, trailing newline trimmed by the daemon). `""` =
    /// `None`: with no `secret` either, a random key per start and a warning (Record-Route tokens
    /// of calls in progress die on restart). Relative paths are resolved against the directory of
    /// the config file. All instances behind one address must share the key.
    pub secret_file: Option<PathBuf>,
    /// `SO_RCVBUF` per socket, in bytes; written `"8MiB"`, `"512KiB"`, `"1MB"`, `"65536"` (also a
    /// bare integer). Default 8 MiB. The kernel caps it at `net.core.rmem_max`: raise that too.
    /// Between 4 KiB and 1 GiB.
    pub recv_buffer: u64,
    /// Packets per second accepted from one source address before further packets are dropped;
    /// default 2000, `0` = off. A flood guard, not a CPS limit (that is per account,
    /// `max_cps`): 2000 is a PBX placing 200 calls a second from one address at ten datagrams
    /// per call, more than any one customer trunk sends, and far below what a flood or a
    /// scanner does (docs/overload.md).
    pub source_pps_limit: u32,
    /// `SCHED_FIFO` priority (1-99) of the packet worker threads; default `0` = normal
    /// scheduling. A woken packet worker then takes its CPU from any normal process at once
    /// (redis-server, a backup, a kernel thread) instead of waiting for it to use up its time
    /// slice: with Redis on the same host, a full refresh of a million accounts otherwise lifted
    /// the admission p99 several-fold (BENCHMARKS.md). Needs `CAP_SYS_NICE` or an
    /// `RLIMIT_RTPRIO` at least this high (the shipped systemd unit sets `LimitRTPRIO=10`);
    /// without them the daemon logs a warning and runs at normal priority. Keep it low (10):
    /// it only has to beat normal processes, and the kernel's RT throttling still leaves 5 %
    /// of each CPU to them under a flood.
    pub realtime_priority: u8,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, SIP_PORT))],
            advertise: None,
            upstream: Vec::new(),
            record_route: true,
            trusted: Vec::new(),
            workers: 0,
            check_methods: vec!["INVITE".to_owned()],
            forward_other_methods: true,
            secret: String::new(),
            secret_file: None,
            recv_buffer: 8 * MIB,
            source_pps_limit: DEFAULT_SOURCE_PPS_LIMIT,
            realtime_priority: 0,
        }
    }
}

/// The address creditgate writes into its Via and Record-Route headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Advertise {
    /// An IP address (IPv6 without brackets) or a DNS name.
    pub host: String,
    /// The port, never 0.
    pub port: u16,
}

impl Advertise {
    /// The host as an IP address, when it is one (not a DNS name).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Advertise {
    /// `host:port`, with the host in brackets when it is an IPv6 address (RFC 3261 `hostport`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `credit.source`: where account balances come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// `"file"`: a TOML file of `[[account]]` tables (no Redis needed).
    #[default]
    File,
    /// `"redis"`: Redis hashes plus push updates (the production source).
    Redis,
}

/// `credit.on_stale`: what to decide once the snapshot is older than `max_staleness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnStale {
    /// `"serve"`: keep deciding on the last snapshot.
    #[default]
    Serve,
    /// `"reject"`: refuse every new call (reply `no_snapshot`).
    Reject,
    /// `"reject_prepaid"`: refuse accounts with `debit_limit <= 0`, serve post-pay accounts.
    RejectPrepaid,
}

/// `credit.on_no_snapshot`: what to decide before any snapshot was ever loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNoSnapshot {
    /// `"reject"`: refuse new calls with the `no_snapshot` reply (503 by default).
    #[default]
    Reject,
    /// `"admit"`: forward every new call unchecked until the first snapshot arrives.
    Admit,
}

/// `[credit]`: the credit source and snapshot policy.
#[derive(Debug, Clone, PartialEq)]
pub struct CreditConfig {
    /// `"file"` (default) or `"redis"`.
    pub source: SourceKind,
    /// The accounts file for `source = "file"`. Default `"accounts.toml"`; a relative path is
    /// resolved against the directory of the config file (after loading, this is the resolved
    /// path; `Config::default()` holds the bare default).
    pub file: PathBuf,
    /// Redis URL for `source = "redis"`; `redis://`, `rediss://` (TLS), `redis+sentinel://` or
    /// `redis+unix://`. Default `"redis://127.0.0.1:6379/0"`. Printed with its password redacted.
    pub redis_url: String,
    /// Prefix of every Redis key creditgate reads or publishes on (`{prefix}account:{id}`,
    /// `{prefix}updates`, `{prefix}events`). Default `"cg:"`. No whitespace and no SCAN glob
    /// characters (`* ? [ ] \`).
    pub key_prefix: String,
    /// How often the whole snapshot is re-read. Default `"60s"`, at least `"1s"`. Push updates
    /// make single accounts fresher; this is the safety net.
    pub refresh_interval: Duration,
    /// A snapshot older than this is stale and `on_stale` applies. Default `"5m"`; at least
    /// `refresh_interval` (a few intervals, so one failed refresh does not trip it).
    pub max_staleness: Duration,
    /// What to decide on a stale snapshot. Default `"serve"`.
    pub on_stale: OnStale,
    /// Largest share (0.0 to 1.0) of known accounts a full refresh may remove; a refresh that
    /// would remove more is not applied and raises an alarm. Default `0.5`. `1.0` disables the
    /// guard, `0.0` refuses any shrinking refresh.
    pub max_shrink: f64,
    /// What to decide before the first snapshot. Default `"reject"`.
    pub on_no_snapshot: OnNoSnapshot,
    /// `false` = dry run: decide, count and log refusals, but forward everything. Default `true`.
    pub enforce: bool,
}

impl Default for CreditConfig {
    fn default() -> Self {
        CreditConfig {
            source: SourceKind::File,
            file: PathBuf::from("accounts.toml"),
            redis_url: "redis://127.0.0.1:6379/0".to_owned(),
            key_prefix: "cg:".to_owned(),
            refresh_interval: Duration::from_secs(60),
            max_staleness: Duration::from_secs(5 * 60),
            on_stale: OnStale::Serve,
            max_shrink: 0.5,
            on_no_snapshot: OnNoSnapshot::Reject,
            enforce: true,
        }
    }
}

/// `live.low_credit_threshold`: when a low-credit event fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Threshold {
    /// An amount in the account's currency (written `"2.50"`; a bare number is money).
    Money(Decimal),
    /// Talk time at the account's `rate_per_min` (written `"5m"`).
    Time(Duration),
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Money(amount) => write!(f, "{amount}"),
            Threshold::Time(time) => f.write_str(&format_duration(*time)),
        }
    }
}

/// `[live]`: narrowing the credit lag (SPEC section 7). Everything is off by default.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveConfig {
    /// Follow admitted calls (2xx, BYE, CANCEL, final failures) to estimate live spend. Default
    /// `false`. Needs `sip.record_route = true` to see the BYE.
    pub track_calls: bool,
    /// A new call must be covered for this long at the account's rate. Default `"0s"` (off).
    pub reserve: Duration,
    /// No more calls in progress than the live credit covers for `reserve`. Default `false`;
    /// needs `track_calls = true` and `reserve` above zero.
    pub credit_scaled_channels: bool,
    /// Publish a low-credit event on `{prefix}events` when an account's live credit crosses this:
    /// `"2.50"` (money) or `"5m"` (time at the account's rate). `""` = `None` (default): no events.
    /// Events go to Redis, so this needs `credit.source = "redis"`.
    pub low_credit_threshold: Option<Threshold>,
    /// Cap on tracked calls; beyond it new calls are still decided but not tracked (and counted).
    /// Default 1000000 (a few hundred bytes each). At least 1.
    pub max_tracked_calls: usize,
    /// Forget a tracked call whose BYE never came after this long. Default `"4h"`, at least
    /// `"1m"`; keep it above your longest legitimate call.
    pub call_expiry: Duration,
    /// Forget a tracked call never answered after this long. Default `"3m"`, at least `"1s"`
    /// and at most `call_expiry`.
    pub ring_timeout: Duration,
    /// What a call to a number no rate covers gets. Default `admit` (on snapshot credit alone,
    /// counted); `refuse` answers with `[reply] no_rate`.
    pub unrated: Unrated,
    /// SPEC section 9: live state shared by instances through Redis. Default `false`.
    pub shared: bool,
    /// SPEC section 9: what a dead instance held comes back after this. Default `"30s"`.
    pub lease_ttl: Duration,
}

/// `live.unrated`: a call to a number that no tariff entry and no `rate_per_min` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unrated {
    /// Admitted on snapshot credit alone (and counted).
    #[default]
    Admit,
    /// Refused with the `no_rate` cause.
    Refuse,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            track_calls: false,
            reserve: Duration::ZERO,
            credit_scaled_channels: false,
            low_credit_threshold: None,
            max_tracked_calls: 1_000_000,
            call_expiry: Duration::from_secs(4 * 3600),
            ring_timeout: Duration::from_secs(180),
            unrated: Unrated::Admit,
            shared: false,
            lease_ttl: Duration::from_secs(30),
        }
    }
}

/// One identification rule of `identify.order`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdentifyRule {
    /// `"source_ip"`: longest-prefix match of the packet's source address over accounts' `ips`.
    SourceIp,
    /// `"header:NAME"`: the value of header NAME (a SIP token, matched case-insensitively) is the
    /// account id.
    Header(String),
    /// `"auth_user"`: the `username` of Authorization / Proxy-Authorization (not verified).
    AuthUser,
    /// `"from_user"`: the user part of the From URI.
    FromUser,
}

impl fmt::Display for IdentifyRule {
    /// The rule as written in the config file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentifyRule::SourceIp => f.write_str("source_ip"),
            IdentifyRule::Header(name) => write!(f, "header:{name}"),
            IdentifyRule::AuthUser => f.write_str("auth_user"),
            IdentifyRule::FromUser => f.write_str("from_user"),
        }
    }
}

/// `[identify]`: how a request is mapped to an account.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentifyConfig {
    /// Rules tried in order; the first that finds an account wins. Default `["source_ip",
    /// "header:X-Account-Id", "auth_user", "from_user"]`. Not empty, no rule twice. Drop the rules
    /// your customers could abuse: `from_user` trusts what the caller writes.
    pub order: Vec<IdentifyRule>,
}

impl Default for IdentifyConfig {
    fn default() -> Self {
        IdentifyConfig {
            order: vec![
                IdentifyRule::SourceIp,
                IdentifyRule::Header("X-Account-Id".to_owned()),
                IdentifyRule::AuthUser,
                IdentifyRule::FromUser,
            ],
        }
    }
}

/// A refusal reply: status code, reason phrase and optional Retry-After.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReplySpec {
    /// Status code, 400 to 699 (not 401/407, which need a challenge creditgate does not send).
    pub code: u16,
    /// Reason phrase: not empty, printable, no CR/LF. When an entry sets `code` but not `reason`,
    /// the standard phrase of that code is used.
    pub reason: String,
    /// Retry-After header, whole seconds; `""` = `None` (no header).
    pub retry_after: Option<Duration>,
}

impl ReplySpec {
    fn new(code: u16, reason: &str, retry_after: Option<Duration>) -> Self {
        ReplySpec {
            code,
            reason: reason.to_owned(),
            retry_after,
        }
    }
}

/// `[reply]`: code and reason per refusal cause. Each entry is an inline table
/// `{ code = 402, reason = "Payment Required", retry_after = "30s" }`; omitted keys keep their
/// defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyConfig {
    /// The account's available credit is used up. Default 402 Payment Required.
    pub insufficient_credit: ReplySpec,
    /// No identification rule found an account. Default 403 Forbidden.
    pub unknown_account: ReplySpec,
    /// The account exists but is disabled. Default 403 Forbidden.
    pub account_disabled: ReplySpec,
    /// No snapshot loaded yet (or stale with `on_stale = "reject"`). Default 503 Service
    /// Unavailable, Retry-After 30s, so a well-behaved peer tries another route or waits.
    pub no_snapshot: ReplySpec,
    /// `max_channels` or the credit-scaled channel limit reached. Default 503 Service Unavailable.
    pub channel_limit: ReplySpec,
    /// `max_cps` exceeded. Default 503 Service Unavailable, Retry-After 1s.
    pub cps_limit: ReplySpec,
    /// `daily_spend_limit` reached. Default 402 Payment Required.
    pub spend_limit: ReplySpec,
    /// No tariff entry and no `rate_per_min` covers the dialled number, with
    /// `live.unrated = "refuse"`. Default 403 Forbidden.
    pub no_rate: ReplySpec,
    /// Whether a refusal tells the caller its cause (default `true`): each cause gets its own
    /// reply above and a `Reason: SIP;cause=CODE;text="CAUSE"` header. `false` hides what an
    /// unauthenticated scanner could learn from it: refusals for no credit
    /// (`insufficient_credit`, `spend_limit`), a disabled account and no account at all are all
    /// sent with the `unknown_account` reply, and no refusal carries a `Reason` header. Logs and
    /// metrics keep the real cause either way.
    pub reveal_cause: bool,
}

impl Default for ReplyConfig {
    fn default() -> Self {
        ReplyConfig {
            insufficient_credit: ReplySpec::new(402, "Payment Required", None),
            unknown_account: ReplySpec::new(403, "Forbidden", None),
            account_disabled: ReplySpec::new(403, "Forbidden", None),
            no_snapshot: ReplySpec::new(503, "Service Unavailable", Some(Duration::from_secs(30))),
            channel_limit: ReplySpec::new(503, "Service Unavailable", None),
            cps_limit: ReplySpec::new(503, "Service Unavailable", Some(Duration::from_secs(1))),
            spend_limit: ReplySpec::new(402, "Payment Required", None),
            no_rate: ReplySpec::new(403, "Forbidden", None),
            reveal_cause: true,
        }
    }
}

/// `[admin]`: the HTTP admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// TCP address of the admin HTTP server (`/metrics /health /ready /accounts/{id} /refresh`).
    /// Default `"127.0.0.1:9060"`; `""` = `None` = disabled. A non-loopback address requires
    /// `token_file`.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token for the admin API. `""` = `None` (default) = no token: keep
    /// the API on loopback then. Relative paths are resolved against the config file's directory.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9060))),
            token_file: None,
        }
    }
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// `"text"`: human-readable lines (default).
    #[default]
    Text,
    /// `"json"`: one JSON object per line, for log shippers.
    Json,
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `trace`, `debug`, `info` (default), `warn`, `error` or `off`, or a `tracing` filter
    /// directive such as `"info,creditgate=debug"`. `RUST_LOG` overrides it.
    pub level: String,
    /// `"text"` (default) or `"json"`.
    pub format: LogFormat,
    /// Refusal log lines (and dry-run "would refuse" lines) written per second at most, across
    /// all workers; the rest are counted in `creditgate_log_lines_suppressed_total` and summed
    /// up in one line when the next second starts. Default 20; from 1 to 1 000 000. A refusal
    /// is always counted in the metrics, whatever its log line.
    pub refusal_lines_per_second: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
            refusal_lines_per_second: DEFAULT_REFUSAL_LINES_PER_SECOND,
        }
    }
}

/// `[abuse]`: what creditgate does against scanners and password guessers (issue 9).
#[derive(Debug, Clone, PartialEq)]
pub struct AbuseConfig {
    /// Authentication failures the switch answers to one source (401 and 407 to any request,
    /// 403 to a REGISTER) within `ban_window` before that source is banned: everything it
    /// sends is dropped for `ban_time`. A 2xx to its REGISTER or INVITE clears the count, so
    /// ordinary challenges never add up. Default 30; `0` = no bans. Upstreams and `[sip]
    /// trusted` networks are never banned. IPv6 sources are banned per /64.
    pub ban_after_auth_failures: u32,
    /// Window the failures are counted in (from the first one). Default `"60s"`; at least 1s.
    pub ban_window: Duration,
    /// How long a ban lasts (the admin API lifts one earlier: `DELETE /bans/{ip}`). Default
    /// `"15m"`; at least 1s.
    pub ban_time: Duration,
    /// Sources tracked at most: failure counts and bans, each. Default 65 536 (a few MiB). A
    /// full table first forgets expired entries; a new source that still finds no room is not
    /// counted (failures) or not banned, and counted in `creditgate_bans_refused_total`.
    pub max_tracked: usize,
    /// Drop requests whose User-Agent contains one of `scanner_user_agents` (no reply, counted
    /// as `creditgate_drops_total{reason="scanner"}`). Default `true`: no phone or PBX sends
    /// those names, and a scanner that gets no answer moves on; upstream and trusted sources are
    /// never dropped. A scanner can change its User-Agent, so this stops the noise, not a
    /// determined attacker (the bans do that).
    pub drop_scanners: bool,
    /// User-Agent substrings (case-insensitive) of scanners. Default
    /// [`DEFAULT_SCANNER_USER_AGENTS`]; stored lower-case; none may be empty.
    pub scanner_user_agents: Vec<String>,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        AbuseConfig {
            ban_after_auth_failures: DEFAULT_BAN_AFTER_AUTH_FAILURES,
            ban_window: DEFAULT_BAN_WINDOW,
            ban_time: DEFAULT_BAN_TIME,
            max_tracked: DEFAULT_MAX_TRACKED,
            drop_scanners: true,
            scanner_user_agents: DEFAULT_SCANNER_USER_AGENTS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Key path, e.g. `sip.upstream[1]` or `reply.cps_limit.code`.
    pub key: String,
    /// What is wrong, and where possible what would be right.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable): a wrong path or a deployment problem.
    #[error("cannot read configuration file {}: {source}", .path.display())]
    Io {
        /// The path that was tried.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration: the operator's to fix. Holds every
    /// problem found, never empty; displayed one per line.
    #[error("{}", display_problems(.0))]
    Invalid(Vec<ConfigProblem>),
}

impl ConfigError {
    /// The problems of an `Invalid` error (empty for `Io`).
    pub fn problems(&self) -> &[ConfigProblem] {
        match self {
            ConfigError::Invalid(problems) => problems,
            ConfigError::Io { .. } => &[],
        }
    }
}

fn display_problems(problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Reads and validates the configuration file at `path`. Relative paths inside it are
    /// resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or_else(|| Path::new(""));
        Config::from_toml_str(&text, base_dir)
    }

    /// Parses and validates configuration text. Relative paths in it (`credit.file`,
    /// `sip.secret_file`, `admin.token_file`) are resolved against `base_dir`. Returns every
    /// problem found, not just the first.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let doc = match toml::from_str::<toml::Table>(text) {
            Ok(doc) => doc,
            Err(err) => return Err(ConfigError::Invalid(vec![syntax_problem(text, &err)])),
        };
        let mut ck = Checker::default();
        let Some(raw) = deserialize_raw(doc, &mut ck) else {
            sort_by_position(text, &mut ck.problems);
            return Err(ConfigError::Invalid(ck.problems));
        };
        let config = check_config(raw, base_dir, &mut ck);
        if ck.problems.is_empty() {
            Ok(config)
        } else {
            sort_by_position(text, &mut ck.problems);
            Err(ConfigError::Invalid(ck.problems))
        }
    }

    /// The effective configuration as TOML, in the file's key layout, with every default filled
    /// in: durations as `"60s"`-style strings, sizes as `"8MiB"` or a byte count, money as a
    /// decimal string, absent options as `""`. Secrets are replaced by `<redacted>` (`sip.secret`,
    /// the password of `credit.redis_url`), so the output is safe to print; a redacted secret
    /// pasted back is refused as too short rather than used.
    pub fn effective_toml(&self) -> String {
        match toml::to_string(&RawConfig::from(self)) {
            Ok(text) => text,
            // Only strings, integers, floats, booleans, arrays and tables are serialised, none of
            // which toml refuses; keep a readable answer rather than a panic all the same.
            Err(err) => format!("# cannot print the effective configuration: {err}\n"),
        }
    }
}

/// Turns a TOML syntax error into a problem keyed by its position.
fn syntax_problem(text: &str, err: &toml::de::Error) -> ConfigProblem {
    let key = match err.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before
                .rsplit('\n')
                .next()
                .map_or(0, |last| last.chars().count())
                + 1;
            format!("line {line}, column {column}")
        }
        None => "(toml)".to_owned(),
    };
    ConfigProblem {
        key,
        message: format!("TOML syntax error: {}", err.message().trim_end()),
    }
}

/// Orders problems as their keys appear in the file (problems about absent keys follow their
/// table; those about absent tables come last). Serde reports in its own order and the semantic
/// pass in table order; the operator reads the file top to bottom.
fn sort_by_position(text: &str, problems: &mut [ConfigProblem]) {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return;
    };
    let root = toml::de::DeValue::Table(doc.into_inner());
    problems.sort_by_cached_key(|p| key_position(&root, &p.key));
}

/// Byte offset of the value at `key` (`reply.cps_limit.code`, `sip.upstream[1]`), or of its
/// nearest parent present in the file; `usize::MAX` if not even the table is there.
fn key_position(root: &toml::de::DeValue<'_>, key: &str) -> usize {
    let mut node = root;
    let mut position = usize::MAX;
    for part in key.split('.') {
        let mut pieces = part.split('[');
        let name = pieces.next().unwrap_or(part);
        let Some(next) = node.get(name) else {
            return position;
        };
        position = next.span().start;
        node = next.get_ref();
        for index in pieces {
            let Some(next) = index
                .trim_end_matches(']')
                .parse::<usize>()
                .ok()
                .and_then(|i| node.get(i))
            else {
                return position;
            };
            position = next.span().start;
            node = next.get_ref();
        }
    }
    position
}

/// Collects problems. Keys removed by the structural pass are remembered so that the semantic
/// pass does not report a second, derived problem for them (a wrongly typed `sip.upstream` is
/// not also "empty").
#[derive(Debug, Default)]
struct Checker {
    problems: Vec<ConfigProblem>,
    removed: Vec<String>,
}

impl Checker {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        let key = key.into();
        if self.removed.iter().any(|removed| covers(removed, &key)) {
            return;
        }
        self.problems.push(ConfigProblem {
            key,
            message: message.into(),
        });
    }

    /// Whether `key`, or anything below it, already has a problem (so a cross-check involving
    /// it would only repeat the news).
    fn has_problem(&self, key: &str) -> bool {
        self.problems.iter().any(|p| covers(key, &p.key))
            || self
                .removed
                .iter()
                .any(|r| covers(r, key) || covers(key, r))
    }
}

/// Whether `key` is `prefix` or lies below it (`sip.upstream` covers `sip.upstream[1]`).
fn covers(prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// The structural pass: serde into the raw structs, recording and removing each offending key
/// until deserialisation succeeds. Every round removes one key, so it ends. `None` if an error
/// could not be pinned to a removable key (then the problem recorded is all there is to say).
fn deserialize_raw(mut doc: toml::Table, ck: &mut Checker) -> Option<RawConfig> {
    loop {
        let value = toml::Value::Table(doc.clone());
        let err = match serde_path_to_error::deserialize::<_, RawConfig>(value) {
            Ok(raw) => return Some(raw),
            Err(err) => err,
        };
        // The key to remove: the path up to its first array index (a bad element removes the
        // whole array, whose other elements would otherwise shift their indices).
        let mut keys = Vec::new();
        for segment in err.path().iter() {
            match segment {
                serde_path_to_error::Segment::Map { key } => keys.push(key.clone()),
                _ => break,
            }
        }
        let key = err.path().to_string();
        let message = describe_serde_error(err.inner().message());
        ck.push(key, message);
        if !remove_key(&mut doc, &keys) {
            return None;
        }
        ck.removed.push(keys.join("."));
    }
}

fn remove_key(doc: &mut toml::Table, keys: &[String]) -> bool {
    match keys {
        [] => false,
        [last] => doc.remove(last).is_some(),
        [first, rest @ ..] => match doc.get_mut(first) {
            Some(toml::Value::Table(table)) => remove_key(table, rest),
            _ => false,
        },
    }
}

/// Rewords serde's messages for unknown keys and values into the house style; others pass.
fn describe_serde_error(message: &str) -> String {
    fn expected_list(expected: &str) -> String {
        expected
            .strip_prefix("one of ")
            .unwrap_or(expected)
            .replace(" or ", ", ")
            .replace('`', "")
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((_, expected)) = rest.split_once("`, expected ") {
            return format!("unknown key (expected one of: {})", expected_list(expected));
        }
        if rest.ends_with("there are no fields") {
            return "unknown key (this table has no keys)".to_owned();
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        if let Some((value, expected)) = rest.split_once("`, expected ") {
            return format!(
                "unknown value {value:?} (expected one of: {})",
                expected_list(expected)
            );
        }
    }
    // Rust type names mean nothing to an operator.
    for (rust, plain) in [
        ("expected i64", "expected an integer"),
        ("expected usize", "expected a non-negative integer"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected f64", "expected a number"),
    ] {
        if let Some(head) = message.strip_suffix(rust) {
            return format!("{head}{plain}");
        }
    }
    message.to_owned()
}

// ---------------------------------------------------------------------------------------------
// The raw layer: what serde reads and writes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    sip: Option<RawSip>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credit: Option<RawCredit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    live: Option<RawLive>,
    #[serde(skip_serializing_if = "Option::is_none")]
    identify: Option<RawIdentify>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<RawReply>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<RawAdmin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<RawLog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    abuse: Option<RawAbuse>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAbuse {
    #[serde(skip_serializing_if = "Option::is_none")]
    ban_after_auth_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ban_window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ban_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tracked: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    drop_scanners: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scanner_user_agents: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSip {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_route: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trusted: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check_methods: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forward_other_methods: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recv_buffer: Option<SizeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_pps_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    realtime_priority: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCredit {
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<SourceKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_staleness: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_stale: Option<OnStale>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_shrink: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_no_snapshot: Option<OnNoSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enforce: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLive {
    #[serde(skip_serializing_if = "Option::is_none")]
    track_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reserve: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credit_scaled_channels: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    low_credit_threshold: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tracked_calls: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    call_expiry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ring_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unrated: Option<Unrated>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shared: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawIdentify {
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawReply {
    #[serde(skip_serializing_if = "Option::is_none")]
    no_rate: Option<RawReplySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    insufficient_credit: Option<RawReplySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unknown_account: Option<RawReplySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_disabled: Option<RawReplySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    no_snapshot: Option<RawReplySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel_limit: Option<RawReplySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cps_limit: Option<RawReplySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spend_limit: Option<RawReplySpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reveal_cause: Option<bool>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawReplySpec {
    /// `i64` rather than `u16` so that 70000 gets the 400..=699 message, not serde's.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal_lines_per_second: Option<u32>,
}

/// A size as written: `"8MiB"` or a bare integer of bytes; kept as text until checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SizeValue(String);

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"8MiB\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeValue, E> {
                Ok(SizeValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for SizeValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// The semantic pass: raw -> typed, collecting problems (one `check_*` per table)
// ---------------------------------------------------------------------------------------------

fn check_config(raw: RawConfig, base_dir: &Path, ck: &mut Checker) -> Config {
    let sip = check_sip(raw.sip.unwrap_or_default(), base_dir, ck);
    let credit = check_credit(raw.credit.unwrap_or_default(), base_dir, ck);
    let live = check_live(raw.live.unwrap_or_default(), ck);
    let identify = check_identify(raw.identify.unwrap_or_default(), ck);
    let reply = check_reply(raw.reply.unwrap_or_default(), ck);
    let admin = check_admin(raw.admin.unwrap_or_default(), base_dir, ck);
    let log = check_log(raw.log.unwrap_or_default(), ck);
    let abuse = check_abuse(raw.abuse.unwrap_or_default(), ck);
    let config = Config {
        sip,
        credit,
        live,
        identify,
        reply,
        admin,
        log,
        abuse,
    };
    check_across_tables(&config, ck);
    config
}

/// A scalar: absent = `default`; present and invalid = a problem, and `default` to go on with.
fn value<R, T>(
    ck: &mut Checker,
    key: &str,
    raw: Option<R>,
    default: T,
    parse: impl FnOnce(R) -> Result<T, String>,
) -> T {
    match raw {
        None => default,
        Some(raw) => parse(raw).unwrap_or_else(|message| {
            ck.push(key, message);
            default
        }),
    }
}

/// A list: absent = `default`; each invalid element is a problem keyed `key[i]` and skipped.
fn list<T>(
    ck: &mut Checker,
    key: &str,
    raw: Option<Vec<String>>,
    default: Vec<T>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<T> {
    let Some(items) = raw else { return default };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match parse(item) {
            Ok(v) => out.push(v),
            Err(message) => ck.push(format!("{key}[{i}]"), message),
        }
    }
    out
}

/// Reports the second and later occurrences of a value in a list, by index.
fn report_duplicates<T, K: PartialEq>(
    ck: &mut Checker,
    key: &str,
    items: &[T],
    norm: impl Fn(&T) -> K,
) {
    for (i, item) in items.iter().enumerate() {
        let k = norm(item);
        if let Some(first) = items.iter().take(i).position(|other| norm(other) == k) {
            ck.push(format!("{key}[{i}]"), format!("repeats {key}[{first}]"));
        }
    }
}

fn check_sip(raw: RawSip, base_dir: &Path, ck: &mut Checker) -> SipConfig {
    let d = SipConfig::default();

    let listen = list(ck, "sip.listen", raw.listen, d.listen, parse_socket_addr);
    if listen.is_empty() && !ck.has_problem("sip.listen") {
        ck.push(
            "sip.listen",
            "must list at least one address, e.g. [\"0.0.0.0:5060\"]",
        );
    }
    if !ck.has_problem("sip.listen") {
        report_duplicates(ck, "sip.listen", &listen, |a| *a);
    }

    // A bare host takes the port of the first listen address.
    let default_port = listen.first().map_or(SIP_PORT, SocketAddr::port);
    let advertise = value(ck, "sip.advertise", raw.advertise, d.advertise, |s| {
        if s.is_empty() {
            Ok(None)
        } else {
            parse_advertise(&s, default_port).map(Some)
        }
    });

    let upstream = list(ck, "sip.upstream", raw.upstream, d.upstream, |s| {
        let addr = parse_socket_addr(s)?;
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(format!(
                "{s:?} cannot be sent to (port 0 or unspecified address)"
            ));
        }
        Ok(addr)
    });
    if upstream.is_empty() && !ck.has_problem("sip.upstream") {
        ck.push(
            "sip.upstream",
            "required: list at least one switch to forward to, e.g. [\"10.0.0.5:5060\"]",
        );
    }
    for (i, up) in upstream.iter().enumerate() {
        if listen.contains(up) {
            ck.push(
                format!("sip.upstream[{i}]"),
                format!("{up} is one of sip.listen: forwarding there would loop"),
            );
        }
    }

    let record_route = raw.record_route.unwrap_or(d.record_route);
    let trusted = list(ck, "sip.trusted", raw.trusted, d.trusted, parse_net);

    let workers = value(ck, "sip.workers", raw.workers, d.workers, |n| {
        if n > MAX_WORKERS {
            Err(format!("{n} is more than {MAX_WORKERS} (0 = one per core)"))
        } else {
            Ok(n)
        }
    });

    let check_methods = list(
        ck,
        "sip.check_methods",
        raw.check_methods,
        d.check_methods,
        |s| {
            if !is_token(s) {
                return Err(format!(
                    "{s:?} is not a SIP method name (a token such as \"INVITE\")"
                ));
            }
            let method = s.to_ascii_uppercase();
            if method == "ACK" || method == "CANCEL" {
                return Err(format!(
                    "{method} belongs to an INVITE transaction and is never credit-checked"
                ));
            }
            Ok(method)
        },
    );
    if check_methods.is_empty() && !ck.has_problem("sip.check_methods") {
        ck.push(
            "sip.check_methods",
            "must list at least one method (for a dry run set credit.enforce = false)",
        );
    }
    if !ck.has_problem("sip.check_methods") {
        report_duplicates(ck, "sip.check_methods", &check_methods, Clone::clone);
    }
    if !check_methods.is_empty()
        && !ck.has_problem("sip.check_methods")
        && !check_methods.iter().any(|m| m == "INVITE")
    {
        ck.push(
            "sip.check_methods",
            "must include INVITE: new calls are what creditgate admits or refuses \
             (for a dry run set credit.enforce = false)",
        );
    }

    let forward_other_methods = raw.forward_other_methods.unwrap_or(d.forward_other_methods);

    let secret = value(ck, "sip.secret", raw.secret, d.secret, |s| {
        if !s.is_empty() && s.len() < MIN_SECRET_LEN {
            Err(format!(
                "is {} bytes; use at least {MIN_SECRET_LEN} (or \"\" for none)",
                s.len()
            ))
        } else {
            Ok(s)
        }
    });
    let secret_file = value(ck, "sip.secret_file", raw.secret_file, d.secret_file, |s| {
        Ok(optional_path(&s, base_dir))
    });
    if !secret.is_empty() && secret_file.is_some() {
        ck.push(
            "sip.secret",
            "set either sip.secret or sip.secret_file, not both",
        );
    }

    let recv_buffer = value(ck, "sip.recv_buffer", raw.recv_buffer, d.recv_buffer, |s| {
        let n = parse_size(&s.0)?;
        if !(MIN_RECV_BUFFER..=MAX_RECV_BUFFER).contains(&n) {
            return Err(format!(
                "{} is outside {} ..= {}",
                s.0,
                format_size(MIN_RECV_BUFFER),
                format_size(MAX_RECV_BUFFER)
            ));
        }
        Ok(n)
    });
    let source_pps_limit = raw.source_pps_limit.unwrap_or(d.source_pps_limit);
    let realtime_priority = value(
        ck,
        "sip.realtime_priority",
        raw.realtime_priority,
        d.realtime_priority,
        |n| {
            u8::try_from(n)
                .ok()
                .filter(|p| u32::from(*p) <= MAX_REALTIME_PRIORITY)
                .ok_or_else(|| {
                    format!(
                        "{n} is outside 0 ..= {MAX_REALTIME_PRIORITY} \
                         (0 = normal scheduling, 1-99 = SCHED_FIFO priority)"
                    )
                })
        },
    );

    SipConfig {
        listen,
        advertise,
        upstream,
        record_route,
        trusted,
        workers,
        check_methods,
        forward_other_methods,
        secret,
        secret_file,
        recv_buffer,
        source_pps_limit,
        realtime_priority,
    }
}

fn check_credit(raw: RawCredit, base_dir: &Path, ck: &mut Checker) -> CreditConfig {
    let d = CreditConfig::default();
    let source = raw.source.unwrap_or(d.source);
    let file = value(
        ck,
        "credit.file",
        raw.file,
        resolve(base_dir, &d.file),
        |s| {
            if s.is_empty() {
                Err("must name the accounts file (default \"accounts.toml\")".to_owned())
            } else {
                Ok(resolve(base_dir, Path::new(&s)))
            }
        },
    );
    let redis_url = value(ck, "credit.redis_url", raw.redis_url, d.redis_url, |s| {
        check_redis_url(&s).map(|()| s)
    });
    let key_prefix = value(ck, "credit.key_prefix", raw.key_prefix, d.key_prefix, |s| {
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "*?[]\\".contains(c))
        {
            Err(format!(
                "{s:?} contains whitespace or a SCAN glob character (* ? [ ] \\)"
            ))
        } else {
            Ok(s)
        }
    });
    let refresh_interval = value(
        ck,
        "credit.refresh_interval",
        raw.refresh_interval,
        d.refresh_interval,
        |s| {
            let t = parse_duration(&s)?;
            if t < MIN_REFRESH_INTERVAL {
                Err(format!("{s:?} is shorter than \"1s\""))
            } else {
                Ok(t)
            }
        },
    );
    let max_staleness = value(
        ck,
        "credit.max_staleness",
        raw.max_staleness,
        d.max_staleness,
        |s| parse_duration(&s),
    );
    if max_staleness < refresh_interval
        && !ck.has_problem("credit.max_staleness")
        && !ck.has_problem("credit.refresh_interval")
    {
        ck.push(
            "credit.max_staleness",
            format!(
                "{} is shorter than credit.refresh_interval ({}): every snapshot would be stale",
                format_duration(max_staleness),
                format_duration(refresh_interval)
            ),
        );
    }
    let on_stale = raw.on_stale.unwrap_or(d.on_stale);
    let max_shrink = value(ck, "credit.max_shrink", raw.max_shrink, d.max_shrink, |x| {
        if (0.0..=1.0).contains(&x) {
            Ok(x)
        } else {
            Err(format!(
                "{x} is outside 0.0 ..= 1.0 (a share of the known accounts)"
            ))
        }
    });
    let on_no_snapshot = raw.on_no_snapshot.unwrap_or(d.on_no_snapshot);
    let enforce = raw.enforce.unwrap_or(d.enforce);
    CreditConfig {
        source,
        file,
        redis_url,
        key_prefix,
        refresh_interval,
        max_staleness,
        on_stale,
        max_shrink,
        on_no_snapshot,
        enforce,
    }
}

fn check_live(raw: RawLive, ck: &mut Checker) -> LiveConfig {
    let d = LiveConfig::default();
    let track_calls = raw.track_calls.unwrap_or(d.track_calls);
    let reserve = value(ck, "live.reserve", raw.reserve, d.reserve, |s| {
        parse_duration(&s)
    });
    let credit_scaled_channels = raw
        .credit_scaled_channels
        .unwrap_or(d.credit_scaled_channels);
    if credit_scaled_channels {
        if !track_calls {
            ck.push(
                "live.credit_scaled_channels",
                "needs live.track_calls = true (it counts the calls in progress)",
            );
        }
        if reserve.is_zero() && !ck.has_problem("live.reserve") {
            ck.push(
                "live.credit_scaled_channels",
                "needs live.reserve above \"0s\" (channels are scaled to the credit for reserve)",
            );
        }
    }
    let low_credit_threshold = value(
        ck,
        "live.low_credit_threshold",
        raw.low_credit_threshold,
        d.low_credit_threshold,
        |s| {
            if s.is_empty() {
                Ok(None)
            } else {
                parse_threshold(&s).map(Some)
            }
        },
    );
    let max_tracked_calls = value(
        ck,
        "live.max_tracked_calls",
        raw.max_tracked_calls,
        d.max_tracked_calls,
        |n| {
            if n == 0 {
                Err("must be at least 1".to_owned())
            } else {
                Ok(n)
            }
        },
    );
    let call_expiry = value(
        ck,
        "live.call_expiry",
        raw.call_expiry,
        d.call_expiry,
        |s| {
            let t = parse_duration(&s)?;
            if t < MIN_CALL_EXPIRY {
                Err(format!(
                    "{s:?} is shorter than \"1m\"; it must outlast your longest legitimate call"
                ))
            } else {
                Ok(t)
            }
        },
    );
    let ring_timeout = value(
        ck,
        "live.ring_timeout",
        raw.ring_timeout,
        d.ring_timeout,
        |s| {
            let t = parse_duration(&s)?;
            if t < Duration::from_secs(1) {
                Err(format!("{s:?} is shorter than \"1s\""))
            } else {
                Ok(t)
            }
        },
    );
    if ring_timeout > call_expiry
        && !ck.has_problem("live.ring_timeout")
        && !ck.has_problem("live.call_expiry")
    {
        ck.push(
            "live.ring_timeout",
            format!(
                "{} is longer than live.call_expiry ({}): a ringing call would outlive its Route token",
                format_duration(ring_timeout),
                format_duration(call_expiry)
            ),
        );
    }
    let unrated = raw.unrated.unwrap_or(d.unrated);
    let shared = raw.shared.unwrap_or(d.shared);
    let lease_ttl = value(ck, "live.lease_ttl", raw.lease_ttl, d.lease_ttl, |s| {
        let t = parse_duration(&s)?;
        if t < Duration::from_secs(1) {
            Err(format!("{s:?} is shorter than \"1s\""))
        } else {
            Ok(t)
        }
    });
    LiveConfig {
        track_calls,
        reserve,
        credit_scaled_channels,
        low_credit_threshold,
        max_tracked_calls,
        call_expiry,
        ring_timeout,
        unrated,
        shared,
        lease_ttl,
    }
}

fn check_identify(raw: RawIdentify, ck: &mut Checker) -> IdentifyConfig {
    let d = IdentifyConfig::default();
    let order = list(
        ck,
        "identify.order",
        raw.order,
        d.order,
        parse_identify_rule,
    );
    if order.is_empty() && !ck.has_problem("identify.order") {
        ck.push(
            "identify.order",
            "must list at least one rule (source_ip, header:NAME, auth_user, from_user)",
        );
    }
    if !ck.has_problem("identify.order") {
        // Header names are case-insensitive, so header:X-A and header:x-a are the same rule.
        report_duplicates(ck, "identify.order", &order, |rule| match rule {
            IdentifyRule::Header(name) => IdentifyRule::Header(name.to_ascii_lowercase()),
            other => other.clone(),
        });
    }
    IdentifyConfig { order }
}

fn check_reply(raw: RawReply, ck: &mut Checker) -> ReplyConfig {
    let d = ReplyConfig::default();
    ReplyConfig {
        insufficient_credit: check_reply_spec(
            ck,
            "reply.insufficient_credit",
            raw.insufficient_credit,
            d.insufficient_credit,
        ),
        unknown_account: check_reply_spec(
            ck,
            "reply.unknown_account",
            raw.unknown_account,
            d.unknown_account,
        ),
        account_disabled: check_reply_spec(
            ck,
            "reply.account_disabled",
            raw.account_disabled,
            d.account_disabled,
        ),
        no_snapshot: check_reply_spec(ck, "reply.no_snapshot", raw.no_snapshot, d.no_snapshot),
        channel_limit: check_reply_spec(
            ck,
            "reply.channel_limit",
            raw.channel_limit,
            d.channel_limit,
        ),
        cps_limit: check_reply_spec(ck, "reply.cps_limit", raw.cps_limit, d.cps_limit),
        spend_limit: check_reply_spec(ck, "reply.spend_limit", raw.spend_limit, d.spend_limit),
        no_rate: check_reply_spec(ck, "reply.no_rate", raw.no_rate, d.no_rate),
        reveal_cause: raw.reveal_cause.unwrap_or(d.reveal_cause),
    }
}

fn check_reply_spec(
    ck: &mut Checker,
    key: &str,
    raw: Option<RawReplySpec>,
    default: ReplySpec,
) -> ReplySpec {
    let Some(raw) = raw else { return default };
    let code_key = format!("{key}.code");
    let code_given = raw.code.is_some();
    let code = value(ck, &code_key, raw.code, default.code, |n| {
        let code = u16::try_from(n)
            .ok()
            .filter(|c| (400..=699).contains(c))
            .ok_or_else(|| format!("{n} is not a refusal status (400 ..= 699)"))?;
        if code == 401 || code == 407 {
            return Err(format!(
                "{code} needs an authentication challenge, which creditgate does not send"
            ));
        }
        Ok(code)
    });
    let reason_key = format!("{key}.reason");
    let reason = match raw.reason {
        Some(reason) => match check_reason(&reason) {
            Ok(()) => reason,
            Err(message) => {
                ck.push(&reason_key, message);
                default.reason
            }
        },
        // A new code without a reason takes that code's standard phrase, not the default's.
        None if code_given && code != default.code => match standard_reason(code) {
            Some(phrase) => phrase.to_owned(),
            None => {
                if !ck.has_problem(&code_key) {
                    ck.push(
                        &reason_key,
                        format!("required: {code} has no standard reason phrase"),
                    );
                }
                default.reason
            }
        },
        None => default.reason,
    };
    let retry_after = value(
        ck,
        &format!("{key}.retry_after"),
        raw.retry_after,
        default.retry_after,
        |s| {
            if s.is_empty() {
                return Ok(None);
            }
            let t = parse_duration(&s)?;
            if t.subsec_nanos() != 0 || t.is_zero() || u32::try_from(t.as_secs()).is_err() {
                return Err(format!(
                    "{s:?} is not a whole number of seconds from \"1s\" (Retry-After counts seconds)"
                ));
            }
            Ok(Some(t))
        },
    );
    ReplySpec {
        code,
        reason,
        retry_after,
    }
}

fn check_admin(raw: RawAdmin, base_dir: &Path, ck: &mut Checker) -> AdminConfig {
    let d = AdminConfig::default();
    let listen = value(ck, "admin.listen", raw.listen, d.listen, |s| {
        if s.is_empty() {
            Ok(None)
        } else {
            parse_socket_addr(&s).map(Some)
        }
    });
    let token_file = value(ck, "admin.token_file", raw.token_file, d.token_file, |s| {
        Ok(optional_path(&s, base_dir))
    });
    if let Some(addr) = listen {
        if !addr.ip().is_loopback() && token_file.is_none() && !ck.has_problem("admin.token_file") {
            ck.push(
                "admin.listen",
                format!(
                    "{addr} is reachable from other hosts: set admin.token_file, or listen on \
                     127.0.0.1"
                ),
            );
        }
    }
    AdminConfig { listen, token_file }
}

fn check_log(raw: RawLog, ck: &mut Checker) -> LogConfig {
    let d = LogConfig::default();
    let level = value(ck, "log.level", raw.level, d.level, |s| {
        check_log_level(&s).map(|()| s.trim().to_owned())
    });
    let format = raw.format.unwrap_or(d.format);
    let refusal_lines_per_second = value(
        ck,
        "log.refusal_lines_per_second",
        raw.refusal_lines_per_second,
        d.refusal_lines_per_second,
        |n| {
            if (1..=MAX_REFUSAL_LINES_PER_SECOND).contains(&n) {
                Ok(n)
            } else {
                Err(format!(
                    "{n} is outside 1 ..= {MAX_REFUSAL_LINES_PER_SECOND} (the metrics count \
                     every refusal; this only bounds the log lines)"
                ))
            }
        },
    );
    LogConfig {
        level,
        format,
        refusal_lines_per_second,
    }
}

fn check_abuse(raw: RawAbuse, ck: &mut Checker) -> AbuseConfig {
    let d = AbuseConfig::default();
    let ban_after_auth_failures = raw
        .ban_after_auth_failures
        .unwrap_or(d.ban_after_auth_failures);
    let at_least_a_second = |s: String| {
        let t = parse_duration(&s)?;
        if t < Duration::from_secs(1) {
            return Err(format!("{s:?} is shorter than \"1s\""));
        }
        Ok(t)
    };
    let ban_window = value(
        ck,
        "abuse.ban_window",
        raw.ban_window,
        d.ban_window,
        at_least_a_second,
    );
    let ban_time = value(
        ck,
        "abuse.ban_time",
        raw.ban_time,
        d.ban_time,
        at_least_a_second,
    );
    let max_tracked = value(
        ck,
        "abuse.max_tracked",
        raw.max_tracked,
        d.max_tracked,
        |n| {
            if (1..=MAX_MAX_TRACKED).contains(&n) {
                Ok(n)
            } else {
                Err(format!("{n} is outside 1 ..= {MAX_MAX_TRACKED}"))
            }
        },
    );
    let drop_scanners = raw.drop_scanners.unwrap_or(d.drop_scanners);
    let scanner_user_agents = list(
        ck,
        "abuse.scanner_user_agents",
        raw.scanner_user_agents,
        d.scanner_user_agents,
        |s| {
            if s.trim().is_empty() {
                Err("is empty: it would match every User-Agent".to_owned())
            } else if s.chars().any(|c| c.is_control()) {
                Err(format!("{s:?} holds a control character"))
            } else {
                Ok(s.trim().to_ascii_lowercase())
            }
        },
    );
    AbuseConfig {
        ban_after_auth_failures,
        ban_window,
        ban_time,
        max_tracked,
        drop_scanners,
        scanner_user_agents,
    }
}

/// Checks that relate keys of different tables.
fn check_across_tables(config: &Config, ck: &mut Checker) {
    if config.live.low_credit_threshold.is_some() && config.credit.source != SourceKind::Redis {
        ck.push(
            "live.low_credit_threshold",
            "low-credit events are published on Redis: needs credit.source = \"redis\"",
        );
    }
    if config.live.track_calls && !config.sip.record_route {
        ck.push(
            "live.track_calls",
            "needs sip.record_route = true (without it BYEs bypass creditgate and calls never end)",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Value parsers
// ---------------------------------------------------------------------------------------------

/// Parses a size in bytes: an integer with an optional unit, case-insensitive, optionally
/// separated by spaces: `B`; `K`, `KiB` = 1024 and `KB` = 1000; likewise `M`/`MiB`/`MB` and
/// `G`/`GiB`/`GB`. A bare `K`, `M` or `G` is binary, as in systemd and nginx.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let bad = || format!("{s:?} is not a size (write it like \"8MiB\", \"512KiB\" or \"65536\")");
    if number.is_empty() {
        return Err(bad());
    }
    let multiplier = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "kb" => 1000,
        "m" | "mib" => MIB,
        "mb" => 1_000_000,
        "g" | "gib" => GIB,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Formats a size the way [`parse_size`] reads it: the largest binary unit that divides it
/// exactly, else a bare byte count.
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes != 0 && bytes % unit == 0 {
            return format!("{}{name}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Parses a human duration such as `"60s"`, `"5m"`, `"1h 30m"` or `"250ms"` (humantime).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    humantime::parse_duration(text).map_err(|e| {
        use humantime::DurationError as E;
        // The word at a byte position of `text` (humantime reports positions, not words).
        let word_at = |i: usize| {
            text.get(i..)
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        let why = match e {
            E::Empty => "it is empty".to_owned(),
            E::NumberOverflow => "it is too large".to_owned(),
            E::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            E::InvalidCharacter(i) | E::NumberExpected(i) => {
                format!("{:?} is not a number with a unit", word_at(i))
            }
        };
        format!(
            "{s:?} is not a duration ({why}); write numbers with units, like \"60s\", \"5m\", \
             \"1h 30m\" or \"250ms\""
        )
    })
}

/// Formats a duration the way [`parse_duration`] reads it (`"1m"`, `"1h 30m"`, `"0s"`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not a socket address (IP:port, IPv6 in brackets: \"[::1]:5060\")")
    })
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR (\"10.0.0.0/8\", \"192.0.2.7\")"))
}

/// Parses `host:port`, `host`, `[v6]:port`, `[v6]` or a bare IPv6 address.
fn parse_advertise(s: &str, default_port: u16) -> Result<Advertise, String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?} has no closing bracket"))?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("{v6:?} in brackets is not an IPv6 address"))?;
        match after {
            "" => (v6, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return Err(format!("{s:?}: expected \":port\" after \"]\"")),
            },
        }
    } else if s.parse::<Ipv6Addr>().is_ok() {
        (s, None)
    } else if let Some((host, port)) = s.rsplit_once(':') {
        if host.contains(':') {
            return Err(format!(
                "{s:?}: write an IPv6 address with a port as \"[addr]:port\""
            ));
        }
        (host, Some(port))
    } else {
        (s, None)
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{s:?}: {p:?} is not a port (1 ..= 65535)"))?,
        None if default_port == 0 => {
            return Err(format!(
                "{s:?} has no port and the first sip.listen port is 0 (ephemeral): write host:port"
            ))
        }
        None => default_port,
    };
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {
            return Err(format!("{s:?}: cannot advertise the unspecified address"))
        }
        Ok(_) => {}
        Err(_) => check_dns_name(host).map_err(|why| format!("{s:?}: {why}"))?,
    }
    Ok(Advertise {
        host: host.to_owned(),
        port,
    })
}

fn check_dns_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{host:?} is not a host name"));
    }
    if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{host:?} is not a valid IPv4 address"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("{host:?} is neither an IP address nor a DNS name"))
    }
}

/// RFC 3261 `token`: alphanumerics and `-.!%*_+`'~`.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

fn parse_identify_rule(s: &str) -> Result<IdentifyRule, String> {
    match s {
        "source_ip" => Ok(IdentifyRule::SourceIp),
        "auth_user" => Ok(IdentifyRule::AuthUser),
        "from_user" => Ok(IdentifyRule::FromUser),
        _ => match s.strip_prefix("header:") {
            Some(name) if is_token(name) => Ok(IdentifyRule::Header(name.to_owned())),
            Some(name) => Err(format!(
                "{name:?} is not a header name (in \"header:NAME\", NAME is a SIP token such as \
                 X-Account-Id)"
            )),
            None => Err(format!(
                "unknown rule {s:?} (expected one of: source_ip, header:NAME, auth_user, from_user)"
            )),
        },
    }
}

fn parse_threshold(s: &str) -> Result<Threshold, String> {
    let text = s.trim();
    let threshold = if let Ok(amount) = Decimal::from_str_exact(text) {
        Threshold::Money(amount)
    } else if let Ok(time) = humantime::parse_duration(text) {
        Threshold::Time(time)
    } else {
        return Err(format!(
            "{s:?} is neither an amount (\"2.50\") nor a duration (\"5m\"); \"\" = no events"
        ));
    };
    match threshold {
        Threshold::Money(amount) if amount <= Decimal::ZERO => {
            Err(format!("{s:?} must be above 0"))
        }
        Threshold::Time(time) if time.is_zero() => Err(format!("{s:?} must be above 0")),
        _ => Ok(threshold),
    }
}

fn check_reason(reason: &str) -> Result<(), String> {
    if reason.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else if reason.chars().any(char::is_control) {
        Err(format!(
            "{reason:?} contains a control character (CR, LF, tab...)"
        ))
    } else {
        Ok(())
    }
}

/// Standard reason phrases (RFC 3261 section 21 and later RFCs) of refusal codes.
fn standard_reason(code: u16) -> Option<&'static str> {
    Some(match code {
        400 => "Bad Request",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        429 => "Provide Referrer Identity",
        433 => "Anonymity Disallowed",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        580 => "Precondition Failure",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        607 => "Unwanted",
        608 => "Rejected",
        _ => return None,
    })
}

fn check_redis_url(url: &str) -> Result<(), String> {
    let rest = REDIS_SCHEMES
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or_else(|| {
            format!(
                "{url:?} is not a Redis URL (scheme redis://, rediss://, redis+sentinel:// or \
                 redis+unix://)"
            )
        })?;
    if rest.is_empty() {
        return Err(format!("{url:?} names no host or socket"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} contains whitespace"));
    }
    Ok(())
}

/// The URL with the password of its userinfo part, if any, replaced by `<redacted>`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:<redacted>@{host}{path}")
            } else {
                format!("{scheme}://<redacted>@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

fn check_log_level(level: &str) -> Result<(), String> {
    let text = level.trim();
    if text.contains('=') || text.contains(',') {
        return tracing_subscriber::EnvFilter::try_new(text)
            .map(drop)
            .map_err(|e| format!("{level:?} is not a valid filter directive ({e})"));
    }
    if LOG_LEVELS.contains(&text.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(format!(
            "unknown level {level:?} (expected one of: {}, or a directive like \
             \"info,creditgate=debug\")",
            LOG_LEVELS.join(", ")
        ))
    }
}

fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// `""` = `None`; otherwise the path resolved against `base_dir`.
fn optional_path(s: &str, base_dir: &Path) -> Option<PathBuf> {
    if s.is_empty() {
        None
    } else {
        Some(resolve(base_dir, Path::new(s)))
    }
}

// ---------------------------------------------------------------------------------------------
// Typed -> raw, for `effective_toml`
// ---------------------------------------------------------------------------------------------

fn path_text(path: Option<&PathBuf>) -> String {
    path.map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl From<&Config> for RawConfig {
    fn from(c: &Config) -> Self {
        let s = &c.sip;
        let sip = RawSip {
            listen: Some(s.listen.iter().map(ToString::to_string).collect()),
            advertise: Some(
                s.advertise
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
            upstream: Some(s.upstream.iter().map(ToString::to_string).collect()),
            record_route: Some(s.record_route),
            trusted: Some(s.trusted.iter().map(ToString::to_string).collect()),
            workers: Some(s.workers),
            check_methods: Some(s.check_methods.clone()),
            forward_other_methods: Some(s.forward_other_methods),
            secret: Some(if s.secret.is_empty() {
                String::new()
            } else {
                // Shorter than MIN_SECRET_LEN on purpose: pasted back, it fails loudly.
                "<redacted>".to_owned()
            }),
            secret_file: Some(path_text(s.secret_file.as_ref())),
            recv_buffer: Some(SizeValue(format_size(s.recv_buffer))),
            source_pps_limit: Some(s.source_pps_limit),
            realtime_priority: Some(u32::from(s.realtime_priority)),
        };
        let cr = &c.credit;
        let credit = RawCredit {
            source: Some(cr.source),
            file: Some(path_text(Some(&cr.file))),
            redis_url: Some(redact_url(&cr.redis_url)),
            key_prefix: Some(cr.key_prefix.clone()),
            refresh_interval: Some(format_duration(cr.refresh_interval)),
            max_staleness: Some(format_duration(cr.max_staleness)),
            on_stale: Some(cr.on_stale),
            max_shrink: Some(cr.max_shrink),
            on_no_snapshot: Some(cr.on_no_snapshot),
            enforce: Some(cr.enforce),
        };
        let l = &c.live;
        let live = RawLive {
            track_calls: Some(l.track_calls),
            reserve: Some(format_duration(l.reserve)),
            credit_scaled_channels: Some(l.credit_scaled_channels),
            low_credit_threshold: Some(
                l.low_credit_threshold
                    .map(|t| t.to_string())
                    .unwrap_or_default(),
            ),
            max_tracked_calls: Some(l.max_tracked_calls),
            call_expiry: Some(format_duration(l.call_expiry)),
            ring_timeout: Some(format_duration(l.ring_timeout)),
            unrated: Some(l.unrated),
            shared: Some(l.shared),
            lease_ttl: Some(format_duration(l.lease_ttl)),
        };
        let identify = RawIdentify {
            order: Some(c.identify.order.iter().map(ToString::to_string).collect()),
        };
        let spec = |r: &ReplySpec| {
            Some(RawReplySpec {
                code: Some(i64::from(r.code)),
                reason: Some(r.reason.clone()),
                retry_after: Some(r.retry_after.map(format_duration).unwrap_or_default()),
            })
        };
        let r = &c.reply;
        let reply = RawReply {
            insufficient_credit: spec(&r.insufficient_credit),
            unknown_account: spec(&r.unknown_account),
            account_disabled: spec(&r.account_disabled),
            no_snapshot: spec(&r.no_snapshot),
            channel_limit: spec(&r.channel_limit),
            cps_limit: spec(&r.cps_limit),
            spend_limit: spec(&r.spend_limit),
            no_rate: spec(&r.no_rate),
            reveal_cause: Some(r.reveal_cause),
        };
        let admin = RawAdmin {
            listen: Some(c.admin.listen.map(|a| a.to_string()).unwrap_or_default()),
            token_file: Some(path_text(c.admin.token_file.as_ref())),
        };
        let log = RawLog {
            level: Some(c.log.level.clone()),
            format: Some(c.log.format),
            refusal_lines_per_second: Some(c.log.refusal_lines_per_second),
        };
        let a = &c.abuse;
        let abuse = RawAbuse {
            ban_after_auth_failures: Some(a.ban_after_auth_failures),
            ban_window: Some(format_duration(a.ban_window)),
            ban_time: Some(format_duration(a.ban_time)),
            max_tracked: Some(a.max_tracked),
            drop_scanners: Some(a.drop_scanners),
            scanner_user_agents: Some(a.scanner_user_agents.clone()),
        };
        RawConfig {
            sip: Some(sip),
            credit: Some(credit),
            live: Some(live),
            identify: Some(identify),
            reply: Some(reply),
            admin: Some(admin),
            log: Some(log),
            abuse: Some(abuse),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../config/creditgate.toml");
    const EXAMPLE_REDIS: &str = include_str!("../config/creditgate-redis.toml");
    /// The smallest valid file: only the key without a default.
    const MINIMAL: &str = "[sip]\nupstream = [\"10.0.0.5:5060\"]\n";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/etc/creditgate"))
    }

    fn ok(text: &str) -> Config {
        match parse(text) {
            Ok(config) => config,
            Err(e) => panic!("expected a valid config, got:\n{e}\n--- input ---\n{text}"),
        }
    }

    fn problems(text: &str) -> Vec<ConfigProblem> {
        match parse(text) {
            Ok(_) => panic!("expected problems, the config was accepted:\n{text}"),
            Err(e) => {
                let problems = e.problems().to_vec();
                assert!(!problems.is_empty());
                problems
            }
        }
    }

    /// Asserts that exactly one problem names `key` and returns its message.
    fn problem_at(text: &str, key: &str) -> String {
        let all = problems(text);
        let hits: Vec<_> = all.iter().filter(|p| p.key == key).collect();
        assert_eq!(hits.len(), 1, "expected one problem at {key}, got {all:#?}");
        hits[0].message.clone()
    }

    fn with(extra: &str) -> String {
        format!("{MINIMAL}{extra}")
    }

    #[test]
    fn shipped_examples_parse() {
        let base = Path::new("/opt/cg/config");
        let file = Config::from_toml_str(EXAMPLE, base).unwrap();
        assert_eq!(file.credit.source, SourceKind::File);
        assert_eq!(file.credit.file, base.join("accounts.toml"));
        assert_eq!(file.sip.listen, vec!["127.0.0.1:5060".parse().unwrap()]);
        assert_eq!(file.sip.upstream, vec!["127.0.0.2:5080".parse().unwrap()]);
        assert_eq!(file.admin.listen, Some("127.0.0.1:9060".parse().unwrap()));

        let redis = Config::from_toml_str(EXAMPLE_REDIS, base).unwrap();
        assert_eq!(redis.credit.source, SourceKind::Redis);
        assert_eq!(redis.credit.redis_url, "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn shipped_examples_load_from_disk() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let config = Config::load(&dir.join("creditgate.toml")).unwrap();
        assert_eq!(config.credit.file, dir.join("accounts.toml"));
        Config::load(&dir.join("creditgate-redis.toml")).unwrap();
    }

    /// Every key of the shipped example is set to its default value, except the few the brief
    /// says to change for a one-machine setup.
    #[test]
    fn shipped_example_states_the_defaults() {
        let example = Config::from_toml_str(EXAMPLE, Path::new("")).unwrap();
        let mut expected = Config::default();
        expected.sip.listen = vec!["127.0.0.1:5060".parse().unwrap()];
        expected.sip.upstream = vec!["127.0.0.2:5080".parse().unwrap()];
        assert_eq!(example, expected);
    }

    /// Every table and sub-table of the shipped examples, found by walking the parsed TOML, with
    /// an unknown key injected: the error must name it (STYLE rule 8).
    #[test]
    fn unknown_key_in_every_table_of_the_examples_is_named() {
        fn tables(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
            for (key, value) in table {
                if let toml::Value::Table(inner) = value {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    out.push(path.clone());
                    tables(&path, inner, out);
                }
            }
        }
        fn inject(table: &mut toml::Table, path: &[&str]) {
            match path {
                [] => {
                    table.insert("surplus_key".into(), toml::Value::Boolean(true));
                }
                [first, rest @ ..] => match table.get_mut(*first) {
                    Some(toml::Value::Table(inner)) => inject(inner, rest),
                    _ => panic!("no table {first}"),
                },
            }
        }
        for example in [EXAMPLE, EXAMPLE_REDIS] {
            let doc: toml::Table = toml::from_str(example).unwrap();
            let mut paths = vec![String::new()];
            tables("", &doc, &mut paths);
            // 8 tables + the root + 7 reply entries
            assert_eq!(paths.len(), 16, "{paths:?}");
            for path in paths {
                let mut doc = doc.clone();
                let segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
                inject(&mut doc, &segments);
                let text = toml::to_string(&doc).unwrap();
                let key = if path.is_empty() {
                    "surplus_key".to_owned()
                } else {
                    format!("{path}.surplus_key")
                };
                let message = problem_at(&text, &key);
                assert!(
                    message.starts_with("unknown key (expected one of: "),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn unknown_key_in_sip() {
        let msg = problem_at(&with("upstrem = [\"10.0.0.6:5060\"]\n"), "sip.upstrem");
        assert_eq!(
            msg,
            "unknown key (expected one of: listen, advertise, upstream, record_route, trusted, \
             workers, check_methods, forward_other_methods, secret, secret_file, recv_buffer, \
             source_pps_limit, realtime_priority)"
        );
    }

    #[test]
    fn unknown_key_in_credit() {
        let msg = problem_at(&with("[credit]\nrefresh = \"30s\"\n"), "credit.refresh");
        assert!(msg.contains("refresh_interval"), "{msg}");
    }

    #[test]
    fn unknown_key_in_live() {
        problem_at(&with("[live]\ntrack = true\n"), "live.track");
    }

    #[test]
    fn unknown_key_in_identify() {
        let msg = problem_at(&with("[identify]\nrules = []\n"), "identify.rules");
        assert_eq!(msg, "unknown key (expected one of: order)");
    }

    #[test]
    fn unknown_key_in_reply() {
        problem_at(
            &with("[reply]\nno_credit = { code = 402 }\n"),
            "reply.no_credit",
        );
    }

    #[test]
    fn unknown_key_in_reply_entry() {
        let msg = problem_at(
            &with("[reply]\ninsufficient_credit = { code = 402, reson = \"x\" }\n"),
            "reply.insufficient_credit.reson",
        );
        assert_eq!(
            msg,
            "unknown key (expected one of: code, reason, retry_after)"
        );
        // Also as a [reply.insufficient_credit] table.
        problem_at(
            &with("[reply.insufficient_credit]\ncode = 402\nreson = \"x\"\n"),
            "reply.insufficient_credit.reson",
        );
    }

    #[test]
    fn unknown_key_in_admin() {
        problem_at(&with("[admin]\ntoken = \"x\"\n"), "admin.token");
    }

    #[test]
    fn unknown_key_in_log() {
        problem_at(&with("[log]\nlevels = \"info\"\n"), "log.levels");
    }

    #[test]
    fn unknown_table() {
        let msg = problem_at(&with("[sipp]\nlisten = []\n"), "sipp");
        assert!(
            msg.contains("sip, credit, live, identify, reply, admin, log"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_type_names_its_key() {
        let msg = problem_at(&with("record_route = \"yes\"\n"), "sip.record_route");
        assert!(msg.contains("expected a boolean"), "{msg}");
        problem_at(&with("[credit]\nenforce = 1\n"), "credit.enforce");
        problem_at(
            &with("[credit]\nrefresh_interval = 60\n"),
            "credit.refresh_interval",
        );
        problem_at(&with("workers = -1\n"), "sip.workers");
        problem_at(
            &with("[live]\nmax_tracked_calls = \"many\"\n"),
            "live.max_tracked_calls",
        );
        problem_at(&with("[log]\nformat = \"xml\"\n"), "log.format");
        problem_at(&with("[credit]\nsource = \"fil\"\n"), "credit.source");
        // A table where a value goes and the other way round.
        problem_at("sip = 5\n", "sip");
        problem_at(&with("[reply]\ncps_limit = 503\n"), "reply.cps_limit");
    }

    #[test]
    fn wrong_type_inside_an_array_names_the_index_once() {
        let all = problems("[sip]\nupstream = [\"10.0.0.5:5060\", 5]\n");
        assert_eq!(all.len(), 1, "{all:#?}");
        assert_eq!(all[0].key, "sip.upstream[1]");
    }

    #[test]
    fn unknown_variant_message() {
        let msg = problem_at(&with("[credit]\non_stale = \"drop\"\n"), "credit.on_stale");
        assert_eq!(
            msg,
            "unknown value \"drop\" (expected one of: serve, reject, reject_prepaid)"
        );
    }

    #[test]
    fn bad_duration_names_its_key() {
        let msg = problem_at(
            &with("[credit]\nrefresh_interval = \"60 seconds please\"\n"),
            "credit.refresh_interval",
        );
        assert!(msg.contains("is not a duration"), "{msg}");
        problem_at(
            &with("[live]\ncall_expiry = \"forever\"\n"),
            "live.call_expiry",
        );
        problem_at(&with("[live]\nreserve = \"-1s\"\n"), "live.reserve");
        problem_at(
            &with("[credit]\nrefresh_interval = \"500ms\"\n"),
            "credit.refresh_interval",
        );
    }

    #[test]
    fn bad_upstream_at_index_1() {
        let msg = problem_at(
            "[sip]\nupstream = [\"10.0.0.5:5060\", \"10.0.0.5:99999\"]\n",
            "sip.upstream[1]",
        );
        assert!(
            msg.starts_with("\"10.0.0.5:99999\" is not a socket address"),
            "{msg}"
        );
        // And the Display of the whole error.
        let err = parse("[sip]\nupstream = [\"10.0.0.5:5060\", \"10.0.0.5:99999\"]\n").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("sip.upstream[1]: \"10.0.0.5:99999\" is not a socket address"));
    }

    #[test]
    fn upstream_is_required() {
        let msg = problem_at("", "sip.upstream");
        assert!(msg.starts_with("required"), "{msg}");
        problem_at("[sip]\nupstream = []\n", "sip.upstream");
        problem_at("[sip]\nupstream = [\"0.0.0.0:5060\"]\n", "sip.upstream[0]");
        problem_at("[sip]\nupstream = [\"10.0.0.5:0\"]\n", "sip.upstream[0]");
    }

    #[test]
    fn upstream_equal_to_listen_is_a_loop() {
        problem_at(
            "[sip]\nlisten = [\"127.0.0.1:5060\"]\nupstream = [\"127.0.0.1:5060\"]\n",
            "sip.upstream[0]",
        );
    }

    #[test]
    fn listen_rules() {
        problem_at(&with("listen = []\n"), "sip.listen");
        problem_at(&with("listen = [\"localhost:5060\"]\n"), "sip.listen[0]");
        let msg = problem_at(
            &with("listen = [\"127.0.0.1:5060\", \"127.0.0.1:5060\"]\n"),
            "sip.listen[1]",
        );
        assert_eq!(msg, "repeats sip.listen[0]");
        let c = ok(&with("listen = [\"[::1]:5060\", \"0.0.0.0:5061\"]\n"));
        assert_eq!(c.sip.listen[0], "[::1]:5060".parse().unwrap());
    }

    #[test]
    fn reply_code_out_of_range() {
        let msg = problem_at(
            &with("[reply]\ninsufficient_credit = { code = 200 }\n"),
            "reply.insufficient_credit.code",
        );
        assert!(msg.contains("400 ..= 699"), "{msg}");
        problem_at(
            &with("[reply]\ninsufficient_credit = { code = 70000 }\n"),
            "reply.insufficient_credit.code",
        );
        problem_at(
            &with("[reply]\nunknown_account = { code = 407 }\n"),
            "reply.unknown_account.code",
        );
    }

    #[test]
    fn reply_reason_and_retry_after() {
        problem_at(
            &with("[reply]\nspend_limit = { code = 402, reason = \"\" }\n"),
            "reply.spend_limit.reason",
        );
        problem_at(
            &with("[reply]\nspend_limit = { reason = \"Pay\\r\\nX-Evil: 1\" }\n"),
            "reply.spend_limit.reason",
        );
        problem_at(
            &with("[reply]\ncps_limit = { retry_after = \"1500ms\" }\n"),
            "reply.cps_limit.retry_after",
        );
        problem_at(
            &with("[reply]\ncps_limit = { code = 499 }\n"),
            "reply.cps_limit.reason",
        );
        // A code alone takes its standard phrase; other keys keep their defaults.
        let c = ok(&with(
            "[reply]\ninsufficient_credit = { code = 603 }\nno_snapshot = { retry_after = \"\" }\n\
             cps_limit = { reason = \"Slow Down\" }\n",
        ));
        assert_eq!(
            c.reply.insufficient_credit,
            ReplySpec::new(603, "Decline", None)
        );
        assert_eq!(c.reply.no_snapshot.retry_after, None);
        assert_eq!(c.reply.no_snapshot.code, 503);
        assert_eq!(
            c.reply.cps_limit,
            ReplySpec::new(503, "Slow Down", Some(Duration::from_secs(1)))
        );
    }

    #[test]
    fn max_shrink_out_of_range() {
        let msg = problem_at(&with("[credit]\nmax_shrink = 1.5\n"), "credit.max_shrink");
        assert!(msg.contains("0.0 ..= 1.0"), "{msg}");
        problem_at(&with("[credit]\nmax_shrink = -0.1\n"), "credit.max_shrink");
        problem_at(&with("[credit]\nmax_shrink = nan\n"), "credit.max_shrink");
        assert_eq!(
            ok(&with("[credit]\nmax_shrink = 1\n")).credit.max_shrink,
            1.0
        );
    }

    #[test]
    fn identify_rules() {
        let msg = problem_at(
            &with("[identify]\norder = [\"source_ip\", \"caller_id\"]\n"),
            "identify.order[1]",
        );
        assert!(msg.starts_with("unknown rule \"caller_id\""), "{msg}");
        problem_at(
            &with("[identify]\norder = [\"header:\"]\n"),
            "identify.order[0]",
        );
        problem_at(
            &with("[identify]\norder = [\"header:X Account\"]\n"),
            "identify.order[0]",
        );
        problem_at(&with("[identify]\norder = []\n"), "identify.order");
        let msg = problem_at(
            &with("[identify]\norder = [\"header:X-Acct\", \"from_user\", \"header:x-acct\"]\n"),
            "identify.order[2]",
        );
        assert_eq!(msg, "repeats identify.order[0]");
        let c = ok(&with(
            "[identify]\norder = [\"header:P-Asserted-Identity\", \"auth_user\"]\n",
        ));
        assert_eq!(
            c.identify.order,
            vec![
                IdentifyRule::Header("P-Asserted-Identity".into()),
                IdentifyRule::AuthUser
            ]
        );
    }

    #[test]
    fn low_credit_threshold() {
        let redis = "[credit]\nsource = \"redis\"\n";
        let msg = problem_at(
            &with(&format!("{redis}[live]\nlow_credit_threshold = \"abc\"\n")),
            "live.low_credit_threshold",
        );
        assert!(msg.contains("neither an amount"), "{msg}");
        problem_at(
            &with(&format!("{redis}[live]\nlow_credit_threshold = \"-1\"\n")),
            "live.low_credit_threshold",
        );
        let c = ok(&with(&format!(
            "{redis}[live]\nlow_credit_threshold = \"2.50\"\n"
        )));
        let amount = Decimal::from_str_exact("2.50").unwrap();
        assert_eq!(c.live.low_credit_threshold, Some(Threshold::Money(amount)));
        assert_eq!(amount.to_string(), "2.50");
        let c = ok(&with(&format!(
            "{redis}[live]\nlow_credit_threshold = \"5m\"\n"
        )));
        assert_eq!(
            c.live.low_credit_threshold,
            Some(Threshold::Time(Duration::from_secs(300)))
        );
        // Exact decimals, no binary rounding.
        let c = ok(&with(&format!(
            "{redis}[live]\nlow_credit_threshold = \"0.1000000000000000000001\"\n"
        )));
        assert_eq!(
            c.live.low_credit_threshold.unwrap().to_string(),
            "0.1000000000000000000001"
        );
        // Events need Redis.
        problem_at(
            &with("[live]\nlow_credit_threshold = \"2.50\"\n"),
            "live.low_credit_threshold",
        );
    }

    #[test]
    fn live_cross_checks() {
        let msgs = problems(&with("[live]\ncredit_scaled_channels = true\n"));
        assert_eq!(msgs.len(), 2, "{msgs:#?}");
        assert!(msgs.iter().all(|p| p.key == "live.credit_scaled_channels"));
        ok(&with(
            "[live]\ntrack_calls = true\nreserve = \"60s\"\ncredit_scaled_channels = true\n",
        ));
        problem_at(
            &with("record_route = false\n[live]\ntrack_calls = true\n"),
            "live.track_calls",
        );
        problem_at(
            &with("[live]\nmax_tracked_calls = 0\n"),
            "live.max_tracked_calls",
        );
        problem_at(&with("[live]\ncall_expiry = \"30s\"\n"), "live.call_expiry");
    }

    #[test]
    fn staleness_must_cover_the_refresh_interval() {
        problem_at(
            &with("[credit]\nrefresh_interval = \"10m\"\nmax_staleness = \"5m\"\n"),
            "credit.max_staleness",
        );
        // No derived complaint when the interval itself is bad.
        let all = problems(&with(
            "[credit]\nrefresh_interval = \"ten\"\nmax_staleness = \"1s\"\n",
        ));
        assert_eq!(all.len(), 1, "{all:#?}");
    }

    #[test]
    fn several_problems_are_all_reported() {
        let text = "\
[sip]
upstream = [\"10.0.0.5:5060\", \"nonsense\"]
upstrem = 1
record_route = \"yes\"
recv_buffer = \"8 furlongs\"
[credit]
refresh_interval = \"sixty\"
max_shrink = 1.5
redis_url = \"http://localhost\"
[live]
low_credit_threshold = \"abc\"
[identify]
order = [\"source_ip\", \"header:\"]
[reply]
insufficient_credit = { code = 200, reason = \"OK\" }
[log]
level = \"verbose\"
[admin]
listen = \"localhost\"
";
        let all = problems(text);
        let keys: Vec<&str> = all.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "sip.upstrem",
            "sip.record_route",
            "sip.upstream[1]",
            "sip.recv_buffer",
            "credit.refresh_interval",
            "credit.max_shrink",
            "credit.redis_url",
            "live.low_credit_threshold",
            "identify.order[1]",
            "reply.insufficient_credit.code",
            "log.level",
            "admin.listen",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:#?}");
        }
        assert_eq!(all.len(), 12, "{all:#?}");
        // In the order of the file, whichever pass found them.
        assert_eq!(
            keys[..4],
            [
                "sip.upstream[1]",
                "sip.upstrem",
                "sip.record_route",
                "sip.recv_buffer"
            ]
        );
        assert_eq!(keys[keys.len() - 2..], ["log.level", "admin.listen"]);
        let display = ConfigError::Invalid(all.clone()).to_string();
        assert_eq!(display.lines().count(), all.len());
        assert!(display
            .lines()
            .any(|l| l.starts_with("sip.upstrem: unknown key (expected one of: listen,")));
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = ok(MINIMAL);
        let s = &c.sip;
        assert_eq!(s.listen, vec!["0.0.0.0:5060".parse().unwrap()]);
        assert_eq!(s.advertise, None);
        assert!(s.record_route);
        assert!(s.trusted.is_empty());
        assert_eq!(s.workers, 0);
        assert_eq!(s.check_methods, vec!["INVITE".to_owned()]);
        assert!(s.forward_other_methods);
        assert_eq!(s.secret, "");
        assert_eq!(s.secret_file, None);
        assert_eq!(s.recv_buffer, 8 * 1024 * 1024);
        assert_eq!(s.source_pps_limit, 2000);

        let cr = &c.credit;
        assert_eq!(cr.source, SourceKind::File);
        assert_eq!(cr.file, PathBuf::from("/etc/creditgate/accounts.toml"));
        assert_eq!(cr.redis_url, "redis://127.0.0.1:6379/0");
        assert_eq!(cr.key_prefix, "cg:");
        assert_eq!(cr.refresh_interval, Duration::from_secs(60));
        assert_eq!(cr.max_staleness, Duration::from_secs(300));
        assert_eq!(cr.on_stale, OnStale::Serve);
        assert_eq!(cr.max_shrink, 0.5);
        assert_eq!(cr.on_no_snapshot, OnNoSnapshot::Reject);
        assert!(cr.enforce);

        let l = &c.live;
        assert!(!l.track_calls);
        assert_eq!(l.reserve, Duration::ZERO);
        assert!(!l.credit_scaled_channels);
        assert_eq!(l.low_credit_threshold, None);
        assert_eq!(l.max_tracked_calls, 1_000_000);
        assert_eq!(l.call_expiry, Duration::from_secs(4 * 3600));

        assert_eq!(
            c.identify.order,
            vec![
                IdentifyRule::SourceIp,
                IdentifyRule::Header("X-Account-Id".into()),
                IdentifyRule::AuthUser,
                IdentifyRule::FromUser
            ]
        );

        let r = &c.reply;
        let payment = ReplySpec::new(402, "Payment Required", None);
        let forbidden = ReplySpec::new(403, "Forbidden", None);
        let unavailable = ReplySpec::new(503, "Service Unavailable", None);
        assert_eq!(r.insufficient_credit, payment);
        assert_eq!(r.unknown_account, forbidden);
        assert_eq!(r.account_disabled, forbidden);
        assert_eq!(
            r.no_snapshot,
            ReplySpec::new(503, "Service Unavailable", Some(Duration::from_secs(30)))
        );
        assert_eq!(r.channel_limit, unavailable);
        assert_eq!(
            r.cps_limit,
            ReplySpec::new(503, "Service Unavailable", Some(Duration::from_secs(1)))
        );
        assert_eq!(r.spend_limit, payment);

        assert_eq!(c.admin.listen, Some("127.0.0.1:9060".parse().unwrap()));
        assert_eq!(c.admin.token_file, None);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Text);

        // Config::default() is the same, except for the unresolved path and the empty upstream.
        let mut d = Config::default();
        assert!(d.sip.upstream.is_empty());
        d.sip.upstream = c.sip.upstream.clone();
        d.credit.file = c.credit.file.clone();
        assert_eq!(d, c);
    }

    #[test]
    fn advertise_forms() {
        let adv = |v: &str| ok(&with(&format!("advertise = {v:?}\n"))).sip.advertise;
        assert_eq!(adv(""), None);
        let a = adv("203.0.113.10:5070").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("203.0.113.10", 5070));
        assert_eq!(a.to_string(), "203.0.113.10:5070");
        assert_eq!(a.ip(), Some("203.0.113.10".parse().unwrap()));
        let a = adv("sbc.example.net").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("sbc.example.net", 5060));
        assert_eq!(a.ip(), None);
        let a = adv("[2001:db8::1]:5062").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("2001:db8::1", 5062));
        assert_eq!(a.to_string(), "[2001:db8::1]:5062");
        let a = adv("2001:db8::1").unwrap();
        assert_eq!(a.to_string(), "[2001:db8::1]:5060");
        assert_eq!(adv("[::1]").unwrap().port, 5060);
        // Port from the first listen address.
        let c = ok(&with(
            "listen = [\"127.0.0.1:5070\"]\nadvertise = \"sbc.example.net\"\n",
        ));
        assert_eq!(c.sip.advertise.unwrap().port, 5070);

        for bad in [
            "sbc.example.net:0",
            "sbc.example.net:99999",
            "0.0.0.0:5060",
            "300.1.1.1",
            "-bad-.example",
            "[2001:db8::1",
            "[2001:db8::1]5060",
            "2001:db8::1::5:5060x",
            "host name",
        ] {
            problem_at(&with(&format!("advertise = {bad:?}\n")), "sip.advertise");
        }
        problem_at(
            &with("listen = [\"127.0.0.1:0\"]\nadvertise = \"sbc.example.net\"\n"),
            "sip.advertise",
        );
    }

    #[test]
    fn trusted_and_methods() {
        let c = ok(&with(
            "trusted = [\"10.1.0.0/16\", \"192.0.2.7\", \"2001:db8::/32\", \"10.2.3.4/8\"]\n\
             check_methods = [\"invite\", \"MESSAGE\"]\n",
        ));
        let nets: Vec<String> = c.sip.trusted.iter().map(ToString::to_string).collect();
        assert_eq!(
            nets,
            ["10.1.0.0/16", "192.0.2.7/32", "2001:db8::/32", "10.0.0.0/8"]
        );
        assert_eq!(c.sip.check_methods, ["INVITE", "MESSAGE"]);
        problem_at(&with("trusted = [\"10.0.0.0/33\"]\n"), "sip.trusted[0]");
        problem_at(
            &with("check_methods = [\"IN VITE\"]\n"),
            "sip.check_methods[0]",
        );
        problem_at(&with("check_methods = [\"ACK\"]\n"), "sip.check_methods[0]");
        problem_at(&with("check_methods = []\n"), "sip.check_methods");
        problem_at(
            &with("check_methods = [\"MESSAGE\"]\n"),
            "sip.check_methods",
        );
        problem_at(
            &with("check_methods = [\"INVITE\", \"invite\"]\n"),
            "sip.check_methods[1]",
        );
        problem_at(&with("workers = 100000\n"), "sip.workers");
    }

    #[test]
    fn secrets_and_paths() {
        let c = ok(&with(
            "secret_file = \"secret.key\"\n[admin]\ntoken_file = \"/run/token\"\n\
             [credit]\nfile = \"/var/lib/cg/accounts.toml\"\n",
        ));
        assert_eq!(
            c.sip.secret_file,
            Some(PathBuf::from("/etc/creditgate/secret.key"))
        );
        assert_eq!(c.admin.token_file, Some(PathBuf::from("/run/token")));
        assert_eq!(c.credit.file, PathBuf::from("/var/lib/cg/accounts.toml"));
        problem_at(&with("secret = \"short\"\n"), "sip.secret");
        problem_at(
            &with("secret = \"0123456789abcdef\"\nsecret_file = \"k\"\n"),
            "sip.secret",
        );
        assert_eq!(
            ok(&with("secret = \"0123456789abcdef\"\n"))
                .sip
                .secret
                .len(),
            16
        );
    }

    #[test]
    fn redis_url_and_prefix() {
        for good in [
            "redis://127.0.0.1:6379/0",
            "rediss://user:pw@redis.example.net:6380/1",
            "redis+sentinel://s1:26379,s2:26379/mymaster/0",
            "redis+unix:///run/redis.sock",
        ] {
            ok(&with(&format!("[credit]\nredis_url = {good:?}\n")));
        }
        for bad in [
            "http://localhost",
            "redis://",
            "127.0.0.1:6379",
            "redis://a b",
        ] {
            problem_at(
                &with(&format!("[credit]\nredis_url = {bad:?}\n")),
                "credit.redis_url",
            );
        }
        problem_at(
            &with("[credit]\nkey_prefix = \"cg*\"\n"),
            "credit.key_prefix",
        );
        assert_eq!(
            ok(&with("[credit]\nkey_prefix = \"\"\n")).credit.key_prefix,
            ""
        );
    }

    #[test]
    fn admin_rules() {
        assert_eq!(ok(&with("[admin]\nlisten = \"\"\n")).admin.listen, None);
        assert_eq!(
            ok(&with("[admin]\nlisten = \"[::1]:9060\"\n")).admin.listen,
            Some("[::1]:9060".parse().unwrap())
        );
        problem_at(
            &with("[admin]\nlisten = \"0.0.0.0:9060\"\n"),
            "admin.listen",
        );
        ok(&with(
            "[admin]\nlisten = \"0.0.0.0:9060\"\ntoken_file = \"token\"\n",
        ));
    }

    #[test]
    fn log_levels() {
        for good in [
            "debug",
            "WARN",
            "off",
            "info,creditgate=debug",
            "creditgate::core=trace",
        ] {
            assert_eq!(
                ok(&with(&format!("[log]\nlevel = {good:?}\n"))).log.level,
                good
            );
        }
        for bad in ["verbose", "", "info,creditgate=loud"] {
            problem_at(&with(&format!("[log]\nlevel = {bad:?}\n")), "log.level");
        }
        assert_eq!(
            ok(&with("[log]\nformat = \"json\"\n")).log.format,
            LogFormat::Json
        );
    }

    #[test]
    fn abuse_keys() {
        let a = ok(MINIMAL).abuse;
        assert_eq!(a.ban_after_auth_failures, 30);
        assert_eq!(a.ban_window, Duration::from_secs(60));
        assert_eq!(a.ban_time, Duration::from_secs(900));
        assert_eq!(a.max_tracked, 65_536);
        assert!(a.drop_scanners);
        assert!(a
            .scanner_user_agents
            .iter()
            .any(|u| u == "friendly-scanner"));
        let a = ok(&with(
            "[abuse]\nban_after_auth_failures = 0\nscanner_user_agents = [\"EvilBot\"]\n",
        ))
        .abuse;
        assert_eq!(a.ban_after_auth_failures, 0);
        assert_eq!(a.scanner_user_agents, ["evilbot"]);
        for (text, key) in [
            ("ban_window = \"0s\"", "abuse.ban_window"),
            ("ban_window = \"soon\"", "abuse.ban_window"),
            ("ban_time = \"500ms\"", "abuse.ban_time"),
            ("max_tracked = 0", "abuse.max_tracked"),
            ("max_tracked = 20000000", "abuse.max_tracked"),
            (
                "ban_after_auth_failures = -1",
                "abuse.ban_after_auth_failures",
            ),
            (
                "scanner_user_agents = [\"ok\", \" \"]",
                "abuse.scanner_user_agents[1]",
            ),
            ("drop_scanners = \"yes\"", "abuse.drop_scanners"),
        ] {
            problem_at(&with(&format!("[abuse]\n{text}\n")), key);
        }
    }

    #[test]
    fn reveal_cause_key() {
        assert!(ok(MINIMAL).reply.reveal_cause);
        assert!(
            !ok(&with("[reply]\nreveal_cause = false\n"))
                .reply
                .reveal_cause
        );
        problem_at(
            &with("[reply]\nreveal_cause = \"no\"\n"),
            "reply.reveal_cause",
        );
    }

    #[test]
    fn refusal_log_rate() {
        assert_eq!(ok(MINIMAL).log.refusal_lines_per_second, 20);
        assert_eq!(
            ok(&with("[log]\nrefusal_lines_per_second = 5\n"))
                .log
                .refusal_lines_per_second,
            5
        );
        for bad in ["0", "1000001", "-1", "\"10\""] {
            problem_at(
                &with(&format!("[log]\nrefusal_lines_per_second = {bad}\n")),
                "log.refusal_lines_per_second",
            );
        }
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let all = problems("[sip]\nupstream = [\"10.0.0.5:5060\"\n");
        assert_eq!(all.len(), 1);
        assert!(all[0].key.starts_with("line "), "{all:?}");
        assert!(all[0].message.starts_with("TOML syntax error"), "{all:?}");
        let dup = problems("[sip]\nworkers = 1\nworkers = 2\n");
        assert_eq!(dup[0].key, "line 3, column 1", "{dup:?}");
    }

    #[test]
    fn io_error_names_the_path() {
        let path = Path::new("/nonexistent/creditgate.toml");
        let err = Config::load(path).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(
            err.to_string().contains("/nonexistent/creditgate.toml"),
            "{err}"
        );
        assert!(err.problems().is_empty());
    }

    #[test]
    fn effective_toml_round_trips() {
        let text = with(
            "advertise = \"[2001:db8::1]:5062\"\ntrusted = [\"10.0.0.0/8\"]\nworkers = 4\n\
             recv_buffer = 65537\nsecret_file = \"/k\"\n\
             [credit]\nsource = \"redis\"\non_stale = \"reject_prepaid\"\nmax_shrink = 0.25\n\
             refresh_interval = \"90s\"\n\
             [live]\ntrack_calls = true\nreserve = \"1m 30s\"\nlow_credit_threshold = \"2.50\"\n\
             [identify]\norder = [\"header:X-Acct\", \"source_ip\"]\n\
             [reply]\nno_snapshot = { retry_after = \"\" }\n[admin]\nlisten = \"\"\n",
        );
        let config = ok(&text);
        let printed = config.effective_toml();
        let again = ok(&printed);
        assert_eq!(again, config, "{printed}");
        assert!(
            printed.contains("refresh_interval = \"1m 30s\""),
            "{printed}"
        );
        assert!(printed.contains("recv_buffer = \"65537\""), "{printed}");
        assert!(
            printed.contains("low_credit_threshold = \"2.50\""),
            "{printed}"
        );
        // Defaults print too, and parse back to the same thing.
        let defaults = ok(MINIMAL);
        let printed = defaults.effective_toml();
        assert!(printed.contains("recv_buffer = \"8MiB\""), "{printed}");
        assert!(printed.contains("max_staleness = \"5m\""), "{printed}");
        assert!(printed.contains("retry_after = \"30s\""), "{printed}");
        assert_eq!(ok(&printed), defaults);
    }

    #[test]
    fn effective_toml_redacts_secrets() {
        let config = ok(&with(
            "secret = \"0123456789abcdef-very-secret\"\n\
             [credit]\nredis_url = \"redis://user:hunter2hunter2@redis:6379/0\"\n",
        ));
        let printed = config.effective_toml();
        assert!(!printed.contains("very-secret"), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("redis://user:<redacted>@redis:6379/0"),
            "{printed}"
        );
        assert!(printed.contains("secret = \"<redacted>\""), "{printed}");
        // Pasted back, a redacted secret is refused, never used as a key.
        problem_at(&printed, "sip.secret");
        assert_eq!(redact_url("redis://:pw@h/0"), "redis://:<redacted>@h/0");
        assert_eq!(redact_url("redis://tok@h"), "redis://<redacted>@h");
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
    }

    #[test]
    fn sizes() {
        let cases = [
            ("65536", 65_536),
            ("8MiB", 8 << 20),
            ("8 MiB", 8 << 20),
            ("512KiB", 512 << 10),
            ("512k", 512 << 10),
            ("1MB", 1_000_000),
            ("1mb", 1_000_000),
            ("2KB", 2_000),
            ("1G", 1 << 30),
            ("3GB", 3_000_000_000),
            ("100B", 100),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "MiB",
            "8 furlongs",
            "-1",
            "1.5MiB",
            "99999999999999999999",
            "20000000000GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        for n in [1, 1000, 1024, 8 << 20, 3 << 30, 65_537] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(8 << 20), "8MiB");
        assert_eq!(format_size(0), "0");
        problem_at(&with("recv_buffer = \"1KiB\"\n"), "sip.recv_buffer");
        problem_at(&with("recv_buffer = \"2GiB\"\n"), "sip.recv_buffer");
        problem_at(&with("recv_buffer = -5\n"), "sip.recv_buffer");
        assert_eq!(ok(&with("recv_buffer = 65536\n")).sip.recv_buffer, 65_536);
    }

    #[test]
    fn realtime_priority_is_off_by_default_and_bounded() {
        assert_eq!(ok(&with("")).sip.realtime_priority, 0);
        assert_eq!(
            ok(&with("realtime_priority = 10\n")).sip.realtime_priority,
            10
        );
        assert_eq!(
            ok(&with("realtime_priority = 99\n")).sip.realtime_priority,
            99
        );
        let msg = problem_at(&with("realtime_priority = 100\n"), "sip.realtime_priority");
        assert!(msg.contains("0 ..= 99"), "{msg}");
        problem_at(&with("realtime_priority = -1\n"), "sip.realtime_priority");
        problem_at(
            &with("realtime_priority = \"high\"\n"),
            "sip.realtime_priority",
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("60").is_err());
        assert!(parse_duration("soon").is_err());
        for d in [0, 1, 60, 90, 3600, 4 * 3600] {
            let d = Duration::from_secs(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn serde_messages_are_reworded() {
        assert_eq!(
            describe_serde_error("unknown field `x`, expected `order`"),
            "unknown key (expected one of: order)"
        );
        assert_eq!(
            describe_serde_error("unknown field `x`, expected `a` or `b`"),
            "unknown key (expected one of: a, b)"
        );
        assert_eq!(
            describe_serde_error("unknown field `x`, there are no fields"),
            "unknown key (this table has no keys)"
        );
        assert_eq!(
            describe_serde_error("invalid value: integer `-1`, expected usize"),
            "invalid value: integer `-1`, expected a non-negative integer"
        );
        assert_eq!(describe_serde_error("something else"), "something else");
    }
}
