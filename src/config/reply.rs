//! `[reply]`: the SIP reply sent for each refusal cause: the typed table, its defaults, its raw
//! (serde) form, its checks and their tests.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::values::{format_duration, parse_duration};
use super::{value, Checker};

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
    pub(super) fn new(code: u16, reason: &str, retry_after: Option<Duration>) -> Self {
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

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReply {
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

pub(super) fn check_reply(raw: RawReply, ck: &mut Checker) -> ReplyConfig {
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

impl From<&ReplyConfig> for RawReply {
    /// The typed values in the file's notation, for `Config::effective_toml`.
    fn from(r: &ReplyConfig) -> Self {
        RawReply {
            insufficient_credit: Some(RawReplySpec::from(&r.insufficient_credit)),
            unknown_account: Some(RawReplySpec::from(&r.unknown_account)),
            account_disabled: Some(RawReplySpec::from(&r.account_disabled)),
            no_snapshot: Some(RawReplySpec::from(&r.no_snapshot)),
            channel_limit: Some(RawReplySpec::from(&r.channel_limit)),
            cps_limit: Some(RawReplySpec::from(&r.cps_limit)),
            spend_limit: Some(RawReplySpec::from(&r.spend_limit)),
            no_rate: Some(RawReplySpec::from(&r.no_rate)),
            reveal_cause: Some(r.reveal_cause),
        }
    }
}

impl From<&ReplySpec> for RawReplySpec {
    fn from(r: &ReplySpec) -> Self {
        RawReplySpec {
            code: Some(i64::from(r.code)),
            reason: Some(r.reason.clone()),
            retry_after: Some(r.retry_after.map(format_duration).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::tests::{ok, problem_at, with, MINIMAL};

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
    fn no_rate_reply() {
        assert_eq!(
            ok(MINIMAL).reply.no_rate,
            ReplySpec::new(403, "Forbidden", None)
        );
        let msg = problem_at(
            &with("[reply]\nno_rate = { code = 99 }\n"),
            "reply.no_rate.code",
        );
        assert!(msg.contains("400 ..= 699"), "{msg}");
        assert_eq!(
            ok(&with("[reply]\nno_rate = { code = 404 }\n"))
                .reply
                .no_rate,
            ReplySpec::new(404, "Not Found", None)
        );
        problem_at(
            &with("[reply]\nno_rate = { code = 404, reson = \"x\" }\n"),
            "reply.no_rate.reson",
        );
    }
}
