//! `[live]`: the live spend estimate and its limits (SPEC section 7; `shared` and `lease_ttl`
//! are section 9): the typed table, its defaults, its raw (serde) form, its checks and their
//! tests. The cross-table rules (`low_credit_threshold` needs Redis, `track_calls` needs
//! `sip.record_route`) are in the parent module.

use std::fmt;
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::values::{format_duration, parse_duration};
use super::{value, Checker};

/// Shortest `live.call_expiry`: a real call lasting longer than the expiry loses its hold on the
/// credit, so anything below a minute would forget ordinary calls.
const MIN_CALL_EXPIRY: Duration = Duration::from_secs(60);

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
    /// `false`; implied by `reserve`, `credit_scaled_channels` and `low_credit_threshold` (see
    /// [`LiveConfig::tracking`]). Needs `sip.record_route = true` to see the BYE.
    pub track_calls: bool,
    /// A new call must be covered for this long at the account's rate. Default `"0s"` (off).
    pub reserve: Duration,
    /// No more calls in progress than the live credit covers for `reserve`. Default `false`;
    /// needs `reserve` above zero (and implies call tracking).
    pub credit_scaled_channels: bool,
    /// Publish a low-credit event on `{prefix}events` when an account's live credit crosses this:
    /// `"2.50"` (money) or `"5m"` (time at the account's rate). `""` = `None` (default): no events.
    /// Events go to Redis, so this needs `credit.source = "redis"`.
    pub low_credit_threshold: Option<Threshold>,
    /// Cap on tracked calls; at it a new call is refused (cause `channel_limit`), never silently
    /// left untracked (SPEC section 7). Default 1000000 (a few hundred bytes each). At least 1.
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

impl LiveConfig {
    /// Whether calls are tracked: `track_calls`, or an option that needs the calls in progress
    /// (SPEC 7: tracking is implied by every option below it).
    pub fn tracking(&self) -> bool {
        self.track_calls
            || !self.reserve.is_zero()
            || self.credit_scaled_channels
            || self.low_credit_threshold.is_some()
    }
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

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLive {
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

pub(super) fn check_live(raw: RawLive, ck: &mut Checker) -> LiveConfig {
    let d = LiveConfig::default();
    let track_calls = raw.track_calls.unwrap_or(d.track_calls);
    let reserve = value(ck, "live.reserve", raw.reserve, d.reserve, |s| {
        parse_duration(&s)
    });
    let credit_scaled_channels = raw
        .credit_scaled_channels
        .unwrap_or(d.credit_scaled_channels);
    if credit_scaled_channels && reserve.is_zero() && !ck.has_problem("live.reserve") {
        ck.push(
            "live.credit_scaled_channels",
            "needs live.reserve above \"0s\" (channels are scaled to the credit for reserve)",
        );
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

impl From<&LiveConfig> for RawLive {
    /// The typed values in the file's notation, for `Config::effective_toml`.
    fn from(l: &LiveConfig) -> Self {
        RawLive {
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
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::tests::{ok, problem_at, problems, with, MINIMAL};

    #[test]
    fn unknown_key_in_live() {
        problem_at(&with("[live]\ntrack = true\n"), "live.track");
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
        assert_eq!(msgs.len(), 1, "{msgs:#?}");
        assert!(msgs.iter().all(|p| p.key == "live.credit_scaled_channels"));
        ok(&with(
            "[live]\ntrack_calls = true\nreserve = \"60s\"\ncredit_scaled_channels = true\n",
        ));
        problem_at(
            &with("record_route = false\n[live]\ntrack_calls = true\n"),
            "live.track_calls",
        );
        // An option that implies tracking needs the Record-Route too.
        problem_at(
            &with("record_route = false\n[live]\nreserve = \"30s\"\n"),
            "live.track_calls",
        );
        ok(&with("[live]\nreserve = \"30s\"\n"));
        problem_at(
            &with("[live]\nmax_tracked_calls = 0\n"),
            "live.max_tracked_calls",
        );
        problem_at(&with("[live]\ncall_expiry = \"30s\"\n"), "live.call_expiry");
    }

    #[test]
    fn unknown_key_in_live_lists_the_new_keys() {
        let msg = problem_at(&with("[live]\nring_timout = \"3m\"\n"), "live.ring_timout");
        assert_eq!(
            msg,
            "unknown key (expected one of: track_calls, reserve, credit_scaled_channels, \
             low_credit_threshold, max_tracked_calls, call_expiry, ring_timeout, unrated, shared, \
             lease_ttl)"
        );
    }

    #[test]
    fn ring_timeout_longer_than_call_expiry_is_a_problem() {
        let msg = problem_at(
            &with("[live]\nring_timeout = \"5h\"\n"),
            "live.ring_timeout",
        );
        assert!(msg.contains("longer than live.call_expiry (4h)"), "{msg}");
        // The default ring_timeout (3m) against a shorter call_expiry.
        problem_at(&with("[live]\ncall_expiry = \"2m\"\n"), "live.ring_timeout");
        // Equal is fine.
        let c = ok(&with(
            "[live]\ncall_expiry = \"3m\"\nring_timeout = \"3m\"\n",
        ));
        assert_eq!(c.live.ring_timeout, c.live.call_expiry);
        // No derived complaint when call_expiry itself is bad.
        let all = problems(&with(
            "[live]\ncall_expiry = \"30s\"\nring_timeout = \"5h\"\n",
        ));
        let keys: Vec<&str> = all.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["live.call_expiry"], "{all:#?}");
    }

    #[test]
    fn ring_timeout_bounds() {
        assert_eq!(ok(MINIMAL).live.ring_timeout, Duration::from_secs(180));
        assert_eq!(
            ok(&with("[live]\nring_timeout = \"1s\"\n"))
                .live
                .ring_timeout,
            Duration::from_secs(1)
        );
        let msg = problem_at(
            &with("[live]\nring_timeout = \"0s\"\n"),
            "live.ring_timeout",
        );
        assert!(msg.contains("shorter than \"1s\""), "{msg}");
        problem_at(
            &with("[live]\nring_timeout = \"500ms\"\n"),
            "live.ring_timeout",
        );
        problem_at(
            &with("[live]\nring_timeout = \"soon\"\n"),
            "live.ring_timeout",
        );
        problem_at(&with("[live]\nring_timeout = 180\n"), "live.ring_timeout");
    }

    #[test]
    fn unrated_values() {
        assert_eq!(ok(MINIMAL).live.unrated, Unrated::Admit);
        assert_eq!(
            ok(&with("[live]\nunrated = \"refuse\"\n")).live.unrated,
            Unrated::Refuse
        );
        let msg = problem_at(&with("[live]\nunrated = \"maybe\"\n"), "live.unrated");
        assert_eq!(
            msg,
            "unknown value \"maybe\" (expected one of: admit, refuse)"
        );
    }

    #[test]
    fn shared_and_lease_ttl() {
        let l = ok(MINIMAL).live;
        assert!(!l.shared);
        assert_eq!(l.lease_ttl, Duration::from_secs(30));
        let l = ok(&with("[live]\nlease_ttl = \"2m\"\n")).live;
        assert_eq!(l.lease_ttl, Duration::from_secs(120));
        problem_at(&with("[live]\nlease_ttl = \"0s\"\n"), "live.lease_ttl");
        problem_at(&with("[live]\nlease_ttl = \"later\"\n"), "live.lease_ttl");
        problem_at(&with("[live]\nshared = \"no\"\n"), "live.shared");
    }
}
