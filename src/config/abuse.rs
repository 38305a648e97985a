//! `[abuse]`: bans after authentication failures and scanner User-Agents (issue 9): the typed
//! table, its defaults, its raw (serde) form, its checks and their tests.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{format_duration, parse_duration};
use super::{list, value, Checker};

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

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAbuse {
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

pub(super) fn check_abuse(raw: RawAbuse, ck: &mut Checker) -> AbuseConfig {
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

impl From<&AbuseConfig> for RawAbuse {
    /// The typed values in the file's notation, for `Config::effective_toml`.
    fn from(a: &AbuseConfig) -> Self {
        RawAbuse {
            ban_after_auth_failures: Some(a.ban_after_auth_failures),
            ban_window: Some(format_duration(a.ban_window)),
            ban_time: Some(format_duration(a.ban_time)),
            max_tracked: Some(a.max_tracked),
            drop_scanners: Some(a.drop_scanners),
            scanner_user_agents: Some(a.scanner_user_agents.clone()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::tests::{ok, problem_at, with, MINIMAL};

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
}
