//! `[credit]`: where balances come from and how stale the snapshot may get: the typed table,
//! its defaults, its raw (serde) form, its checks and their tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{format_duration, parse_duration, path_text, redact_url, resolve};
use super::{value, Checker};

/// Shortest `credit.refresh_interval`: a full Redis SCAN more than once a second is a DoS on the
/// billing Redis, and push updates exist for faster changes.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The URL schemes the Redis client understands.
const REDIS_SCHEMES: [&str; 4] = [
    "redis://",
    "rediss://",
    "redis+sentinel://",
    "redis+unix://",
];

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

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredit {
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

pub(super) fn check_credit(raw: RawCredit, base_dir: &Path, ck: &mut Checker) -> CreditConfig {
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

impl From<&CreditConfig> for RawCredit {
    /// The typed values in the file's notation, for `Config::effective_toml`.
    fn from(cr: &CreditConfig) -> Self {
        RawCredit {
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
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use crate::config::tests::{ok, problem_at, problems, with};

    #[test]
    fn unknown_key_in_credit() {
        let msg = problem_at(&with("[credit]\nrefresh = \"30s\"\n"), "credit.refresh");
        assert!(msg.contains("refresh_interval"), "{msg}");
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
}
