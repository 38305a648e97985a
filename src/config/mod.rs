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
//!
//! Layout: one child module per table (`sip`, `credit`, `live`, `identify`, `reply`, `admin`,
//! `log`, `abuse`), each holding that table's typed struct and its `Default`, its raw struct,
//! its `check_*` function, its half of the typed -> raw conversion and its unit tests, so a key's
//! parsing, default and validation are read in one place. `values` holds the value parsers the
//! tables share (durations, sizes, addresses, paths). This module holds [`Config`], the errors,
//! the structural pass, the helpers every check uses, the cross-table checks and the tests that
//! span tables (`tests`). Everything public is re-exported here: use `crate::config::X`.

mod abuse;
mod admin;
mod credit;
mod identify;
mod live;
mod log;
mod reply;
mod sip;
#[cfg(test)]
mod tests;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use abuse::{AbuseConfig, DEFAULT_SCANNER_USER_AGENTS};
pub use admin::AdminConfig;
pub use credit::{CreditConfig, OnNoSnapshot, OnStale, SourceKind};
pub use identify::{IdentifyConfig, IdentifyRule};
pub use live::{LiveConfig, Threshold, Unrated};
pub use log::{LogConfig, LogFormat};
pub use reply::{ReplyConfig, ReplySpec};
pub use sip::{Advertise, SipConfig, MIN_SECRET_LEN};
pub use values::{format_duration, format_size, parse_duration, parse_size};

use abuse::{check_abuse, RawAbuse};
use admin::{check_admin, RawAdmin};
use credit::{check_credit, RawCredit};
use identify::{check_identify, RawIdentify};
use live::{check_live, RawLive};
use log::{check_log, RawLog};
use reply::{check_reply, RawReply};
use sip::{check_sip, RawSip};

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
// The raw layer: what serde reads and writes (each table's raw struct is in its module)
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

/// Checks that relate keys of different tables.
fn check_across_tables(config: &Config, ck: &mut Checker) {
    if config.live.low_credit_threshold.is_some() && config.credit.source != SourceKind::Redis {
        ck.push(
            "live.low_credit_threshold",
            "low-credit events are published on Redis: needs credit.source = \"redis\"",
        );
    }
    if config.live.tracking() && !config.sip.record_route {
        ck.push(
            "live.track_calls",
            "call tracking (track_calls, or reserve, credit_scaled_channels, low_credit_threshold, \
             which imply it) needs sip.record_route = true (without it BYEs bypass creditgate and \
             calls never end)",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Typed -> raw, for `effective_toml` (each table converts its own part)
// ---------------------------------------------------------------------------------------------

impl From<&Config> for RawConfig {
    fn from(c: &Config) -> Self {
        RawConfig {
            sip: Some(RawSip::from(&c.sip)),
            credit: Some(RawCredit::from(&c.credit)),
            live: Some(RawLive::from(&c.live)),
            identify: Some(RawIdentify::from(&c.identify)),
            reply: Some(RawReply::from(&c.reply)),
            admin: Some(RawAdmin::from(&c.admin)),
            log: Some(RawLog::from(&c.log)),
            abuse: Some(RawAbuse::from(&c.abuse)),
        }
    }
}
