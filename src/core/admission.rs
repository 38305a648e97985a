//! Credit admission (SPEC sections 1, 4 and 5): who is calling, and may they call now.
//!
//! One decision for the whole program: [`admission`] is what the proxy asks for every
//! credit-checked request (identify the caller by the configured rules, then [`decide`]), and
//! [`decide`] with an account already identified is what the admin API shows for
//! `GET /accounts/{id}` (`daemon::admin::decision_now`). A rule added to the decision (SPEC
//! section 7) goes into [`decide`], and both see it.
//!
//! Boundary: reads the snapshot and the policy, never a socket or the clock (`now` is an input);
//! formatting the outcome (a SIP refusal, a JSON answer) is the caller's business.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::grammar::{parse_uri, NameAddr};
use super::scan::{Hdr, Message};
use super::{AccountId, LiveRefusal, Policy};
use crate::config::{IdentifyRule, OnNoSnapshot, OnStale, Unrated};
use crate::credit::{credit_decision, CreditDecision, RefusalCause};
use crate::live::calls::{AccountFigures, Admitted, CallKey, LiveState};
use crate::live::tariff::TariffEntry;
use crate::snapshot::Snapshot;

/// Why a call is refused, and the account it was identified as (if any).
pub type Refusal<'a> = (RefusalCause, Option<AccountId<'a>>);

/// The outcome of admission: admitted (as this account; `None` when admitted without one, with
/// `on_no_snapshot = "admit"` and no snapshot loaded), or refused.
pub type Decision<'a> = Result<Option<AccountId<'a>>, Refusal<'a>>;

/// What identification reads from a request.
#[derive(Debug, Clone, Copy)]
pub struct CallerInfo<'m, 'a> {
    /// The scanned request.
    pub msg: &'m Message<'a>,
    /// Its From, parsed.
    pub from: Option<&'m NameAddr>,
    /// The user part of the Request-URI (for `tech_prefix` matching of source-IP accounts).
    pub ruri_user: &'a [u8],
    /// The datagram's source address.
    pub source: IpAddr,
}

/// Identifies the caller and decides from the snapshot. Identification is skipped when no
/// snapshot is loaded (the decision is then `on_no_snapshot`'s alone).
pub fn admission<'a>(
    caller: &CallerInfo<'_, 'a>,
    snap: &Snapshot,
    policy: &Policy,
    now: Instant,
) -> Decision<'a> {
    decide(snap, policy, now, || identify(caller, snap, policy))
}

/// The decision for a caller that `identify` names (called at most once, and only when a
/// snapshot is loaded): `on_no_snapshot`, unknown account, `on_stale`, then the credit model.
pub fn decide<'a>(
    snap: &Snapshot,
    policy: &Policy,
    now: Instant,
    identify: impl FnOnce() -> Option<AccountId<'a>>,
) -> Decision<'a> {
    let Some(age) = snap.age(now) else {
        return match policy.on_no_snapshot {
            OnNoSnapshot::Reject => Err((RefusalCause::NoSnapshot, None)),
            OnNoSnapshot::Admit => Ok(None),
        };
    };
    let Some(id) = identify() else {
        return Err((RefusalCause::UnknownAccount, None));
    };
    let Some(view) = snap.credit(id.as_str()) else {
        return Err((RefusalCause::UnknownAccount, Some(id)));
    };
    if age > policy.max_staleness {
        let refuse = match policy.on_stale {
            OnStale::Serve => false,
            OnStale::Reject => true,
            OnStale::RejectPrepaid => view.debit_limit <= rust_decimal::Decimal::ZERO,
        };
        if refuse {
            return Err((RefusalCause::NoSnapshot, Some(id)));
        }
    }
    match credit_decision(view.enabled, view.balance, view.debit_limit) {
        CreditDecision::Admit => Ok(Some(id)),
        CreditDecision::Refuse(cause) => Err((cause, Some(id))),
    }
}

/// What the live state needs of an account for one decision (SPEC 7): its snapshot figures and
/// limits, and the price of the dialled number.
#[derive(Debug, Clone)]
pub struct LiveInputs {
    pub figures: AccountFigures,
    /// The tariff entry of the dialled number, else the account's `rate_per_min`; `None` when
    /// neither covers it (unrated).
    pub entry: Option<Arc<TariffEntry>>,
    /// The whole view (rate, tariff name) for the admin API and the low-credit sweep.
    pub view: crate::snapshot::LiveView,
}

/// Reads [`LiveInputs`] of `account` for a call to Request-URI user `ruri_user`: one snapshot
/// read ([`Snapshot::live_view`]).
pub fn live_inputs(snap: &Snapshot, account: &str, ruri_user: &[u8]) -> Option<LiveInputs> {
    let view = snap.live_view(account, ruri_user)?;
    Some(LiveInputs {
        figures: AccountFigures {
            available: view.available,
            read_at: view.read_at,
            max_channels: view.max_channels,
            max_cps: view.max_cps,
            daily_spend_limit: view.daily_spend_limit,
            spent_today: view.spent_today,
        },
        entry: view.entry.clone(),
        view,
    })
}

/// The price a new call of `inputs`' account pays under the policy: its entry, the free entry
/// for an unrated number admitted on snapshot credit, or `no_rate`.
pub fn price<'i>(
    inputs: &'i LiveInputs,
    policy: &'i Policy,
) -> Result<&'i Arc<TariffEntry>, LiveRefusal> {
    match (&inputs.entry, policy.unrated) {
        (Some(e), _) => Ok(e),
        (None, Unrated::Admit) => Ok(&policy.free_entry),
        (None, Unrated::Refuse) => Err(LiveRefusal::NoRate),
    }
}

/// A new call the live state tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveAdmitted {
    /// A retransmitted INVITE of a call already tracked: nothing new held.
    pub retransmission: bool,
    /// Dry run: the refusal the check would have given (the call is tracked anyway).
    pub would_refuse: Option<LiveRefusal>,
}

/// The live half of the admission of a new call (SPEC 7), after [`admission`] admitted it on
/// the snapshot (or, in a dry run, identified its account): the check and the hold as one
/// step. `key` is the call's key (Call-ID and From-tag). In a dry run
/// (`policy.enforce = false`) the call is tracked whatever the check says, and the check's
/// verdict is returned in [`LiveAdmitted::would_refuse`]; `Err` then means it could not be
/// tracked (table full, key of another account).
#[allow(clippy::too_many_arguments)]
pub fn admit_live(
    live: &LiveState,
    snap: &Snapshot,
    policy: &Policy,
    account: &str,
    ruri_user: &[u8],
    key: CallKey,
    now: Instant,
    wall_secs: u64,
) -> Result<LiveAdmitted, LiveRefusal> {
    let Some(inputs) = live_inputs(snap, account, ruri_user) else {
        return Err(LiveRefusal::Vanished);
    };
    let (entry, unpriced) = match price(&inputs, policy) {
        Ok(e) => (e, None),
        Err(r) if policy.enforce => return Err(r),
        // Dry run: tracked as a free call (nothing to hold), reported as refused.
        Err(r) => (&policy.free_entry, Some(r)),
    };
    let admitted: Admitted = if policy.enforce {
        live.admit(account, key, entry, &inputs.figures, now, wall_secs)
    } else {
        live.admit_dry_run(account, key, entry, &inputs.figures, now, wall_secs)
    }
    .map_err(LiveRefusal::Ledger)?;
    Ok(LiveAdmitted {
        retransmission: admitted.retransmission,
        would_refuse: unpriced.or(admitted.would_refuse.map(LiveRefusal::Ledger)),
    })
}

/// What [`admit_live`] would answer for a new call of `account` to Request-URI user
/// `ruri_user` now, holding nothing (the admin API): the live available credit left after the
/// call's reserve, or the refusal. Same rules, same order.
pub fn probe_live(
    live: &LiveState,
    snap: &Snapshot,
    policy: &Policy,
    account: &str,
    ruri_user: &[u8],
    now: Instant,
    wall_secs: u64,
) -> Result<rust_decimal::Decimal, LiveRefusal> {
    let Some(inputs) = live_inputs(snap, account, ruri_user) else {
        return Err(LiveRefusal::Vanished);
    };
    let entry = price(&inputs, policy)?;
    live.probe(account, entry, &inputs.figures, now, wall_secs)
        .map_err(LiveRefusal::Ledger)
}

/// The identification rules in the configured order; the first that names a known account wins.
pub fn identify<'a>(
    caller: &CallerInfo<'_, 'a>,
    snap: &Snapshot,
    policy: &Policy,
) -> Option<AccountId<'a>> {
    let msg = caller.msg;
    let buf = msg.buf;
    let value = |r: &std::ops::Range<usize>| buf.get(r.clone()).unwrap_or_default();
    for rule in &policy.identify {
        let found: Option<AccountId<'a>> = match rule {
            IdentifyRule::SourceIp => snap
                .lookup_ip(caller.source, caller.ruri_user)
                .map(AccountId::Shared),
            IdentifyRule::Header(name) => msg
                .headers
                .iter()
                .find(|h| value(&h.name).eq_ignore_ascii_case(name.as_bytes()))
                .and_then(|h| std::str::from_utf8(value(&h.value)).ok())
                .map(AccountId::Borrowed),
            IdentifyRule::AuthUser => msg
                .headers
                .iter()
                .filter(|h| matches!(h.kind, Hdr::ProxyAuthorization | Hdr::Authorization))
                .find_map(|h| auth_username(value(&h.value)))
                .and_then(|u| std::str::from_utf8(u).ok())
                .map(AccountId::Borrowed),
            IdentifyRule::FromUser => caller
                .from
                .and_then(|f| parse_uri(buf, f.uri.clone()).ok())
                .and_then(|u| u.user)
                .and_then(|u| std::str::from_utf8(value(&u)).ok())
                .map(AccountId::Borrowed),
        };
        if let Some(id) = found {
            if snap.credit(id.as_str()).is_some() {
                return Some(id);
            }
        }
    }
    None
}

/// The `username` parameter of a Digest credentials value (quoted or token).
pub fn auth_username(v: &[u8]) -> Option<&[u8]> {
    let sp = v.iter().position(|b| b.is_ascii_whitespace())?;
    let mut rest = v.get(sp..)?;
    loop {
        rest = rest.trim_ascii_start();
        let eq = rest.iter().position(|b| *b == b'=')?;
        let name = rest.get(..eq)?.trim_ascii();
        rest = rest.get(eq + 1..)?.trim_ascii_start();
        let (val, after) = match rest.split_first() {
            Some((b'"', quoted)) => {
                let close = quoted.iter().position(|b| *b == b'"')?;
                (quoted.get(..close)?, quoted.get(close + 1..)?)
            }
            _ => {
                let end = rest.iter().position(|b| *b == b',').unwrap_or(rest.len());
                (rest.get(..end)?.trim_ascii(), rest.get(end..)?)
            }
        };
        if name.eq_ignore_ascii_case(b"username") {
            return (!val.is_empty()).then_some(val);
        }
        let comma = after.iter().position(|b| *b == b',')?;
        rest = after.get(comma + 1..)?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn digest_username_forms() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"Digest username=\"alice\", realm=\"x\"", Some(b"alice")),
            (b"Digest realm=\"x\",username=bob ,nonce=1", Some(b"bob")),
            (
                b"Digest  realm = \"a,b\" , username = \"c d\"",
                Some(b"c d"),
            ),
            (b"Digest username=\"\"", None),
            (b"Digest realm=\"x\"", None),
            (b"Digest username=\"open", None),
            (b"Digest", None),
            (b"", None),
        ];
        for (v, want) in cases {
            assert_eq!(auth_username(v), *want, "{}", String::from_utf8_lossy(v));
        }
    }
}
