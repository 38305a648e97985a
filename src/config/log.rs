//! `[log]`: log level, format and the refusal log rate: the typed table, its defaults, its raw
//! (serde) form, its checks and their tests.

use serde::{Deserialize, Serialize};

use super::{value, Checker};

/// Default `log.refusal_lines_per_second`: a screenful a second is enough to see what is being
/// refused and why; the metrics count every refusal.
const DEFAULT_REFUSAL_LINES_PER_SECOND: u32 = 20;
/// Highest `log.refusal_lines_per_second`.
const MAX_REFUSAL_LINES_PER_SECOND: u32 = 1_000_000;
/// Level names accepted for `log.level` as a single word.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

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

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal_lines_per_second: Option<u32>,
}

pub(super) fn check_log(raw: RawLog, ck: &mut Checker) -> LogConfig {
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

impl From<&LogConfig> for RawLog {
    /// The typed values in the file's notation, for `Config::effective_toml`.
    fn from(l: &LogConfig) -> Self {
        RawLog {
            level: Some(l.level.clone()),
            format: Some(l.format),
            refusal_lines_per_second: Some(l.refusal_lines_per_second),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::tests::{ok, problem_at, with, MINIMAL};

    #[test]
    fn unknown_key_in_log() {
        problem_at(&with("[log]\nlevels = \"info\"\n"), "log.levels");
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
}
