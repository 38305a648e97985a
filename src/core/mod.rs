//! The sans-IO core: one datagram in, one [`Action`] out.
//!
//! [`handle`] is a pure function of (datagram bytes, source address, local address, `now`,
//! `wall_secs`, snapshot, policy). It owns no socket, reads no clock and draws no randomness:
//! the daemon passes everything in, and unit tests drive it with plain byte strings.
//!
//! Layers: [`scan`] frames the datagram, [`grammar`] reads the few header values the proxy
//! interprets, [`splice`] builds the forwarded bytes by editing the arrival buffer, [`keys`] makes
//! and checks the keyed branch / tag / Route token, [`admission`] identifies the caller and makes
//! the credit decision (for the proxy and the admin API alike), and [`proxy`] holds the RFC 3261
//! 16.11 stateless-proxy logic.

// STYLE rule 10: no panicking index or slice in the core outside its tests (applies to every
// submodule of `core`).
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

pub mod admission;
pub mod grammar;
pub mod keys;
pub mod policy;
pub mod proxy;
pub mod scan;
pub mod scanner;
pub mod splice;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

pub use policy::{Listener, Policy, PolicyError};
pub use proxy::{handle, handle_live};

use crate::credit::RefusalCause;

/// One received datagram and its context.
#[derive(Debug, Clone, Copy)]
pub struct Packet<'a> {
    pub data: &'a [u8],
    pub source: SocketAddr,
    /// The local address of the socket it arrived on.
    pub local: SocketAddr,
    pub now: Instant,
    /// Wall-clock time in unix seconds: Route tokens carry their issue time (SPEC 6).
    pub wall_secs: u64,
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `bytes` to `to` from the socket bound to `from` (a proxied request or response).
    Forward {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Send creditgate's own response `bytes` to `to` from the socket bound to `from`.
    Reply {
        from: SocketAddr,
        to: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Send nothing.
    Drop,
}

/// An account id as found by identification: borrowed from the datagram or shared with the
/// snapshot's IP index. No allocation either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountId<'a> {
    Borrowed(&'a str),
    Shared(Arc<str>),
}

impl AccountId<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            AccountId::Borrowed(s) => s,
            AccountId::Shared(s) => s,
        }
    }
}

/// What kind of message passed through without a credit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PassKind {
    /// A response relayed back along the Via path.
    Response,
    /// A request from an upstream or trusted address.
    FromUpstream,
    /// An in-dialog request of a customer carrying a valid Route token.
    InDialog,
    /// ACK (of a 2xx, or of a non-2xx final from the switch).
    Ack,
    Cancel,
    /// An out-of-dialog request of a method that needs no credit (REGISTER, OPTIONS, ...).
    OtherMethod,
}

impl PassKind {
    pub const ALL: [PassKind; 6] = [
        PassKind::Response,
        PassKind::FromUpstream,
        PassKind::InDialog,
        PassKind::Ack,
        PassKind::Cancel,
        PassKind::OtherMethod,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            PassKind::Response => "response",
            PassKind::FromUpstream => "from_upstream",
            PassKind::InDialog => "in_dialog",
            PassKind::Ack => "ack",
            PassKind::Cancel => "cancel",
            PassKind::OtherMethod => "other_method",
        }
    }
}

/// Answers creditgate gives on its own that are not credit refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// 400, with the reason phrase naming the defect.
    BadRequest(&'static str),
    /// 416
    UnsupportedUriScheme,
    /// 420
    BadExtension,
    /// 482
    LoopDetected,
    /// 483
    TooManyHops,
    /// 478: the next hop of a request from the switch is not an IP address.
    Unresolvable,
    /// 505
    VersionNotSupported,
    /// 403 for a method creditgate does not forward (`forward_other_methods = false`).
    MethodNotAllowed,
    /// 200 to an OPTIONS ping addressed to creditgate.
    OptionsPing,
}

impl Answer {
    pub fn code(self) -> u16 {
        match self {
            Answer::BadRequest(_) => 400,
            Answer::UnsupportedUriScheme => 416,
            Answer::BadExtension => 420,
            Answer::LoopDetected => 482,
            Answer::TooManyHops => 483,
            Answer::Unresolvable => 478,
            Answer::VersionNotSupported => 505,
            Answer::MethodNotAllowed => 403,
            Answer::OptionsPing => 200,
        }
    }
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::BadRequest(_) => "bad_request",
            Answer::UnsupportedUriScheme => "unsupported_uri_scheme",
            Answer::BadExtension => "bad_extension",
            Answer::LoopDetected => "loop_detected",
            Answer::TooManyHops => "too_many_hops",
            Answer::Unresolvable => "unresolvable",
            Answer::VersionNotSupported => "version_not_supported",
            Answer::MethodNotAllowed => "method_not_allowed",
            Answer::OptionsPing => "options_ping",
        }
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// CRLF keep-alive: expected traffic, not an error.
    KeepAlive,
    /// Could not be framed as SIP at all.
    Unparseable,
    /// A request too broken to answer (no usable Via or CSeq), or a malformed ACK.
    Malformed,
    /// A malformed response.
    MalformedResponse,
    /// A response whose top Via is not creditgate's (forged, stray, or for another element).
    NotOurVia,
    /// A response with no Via below creditgate's.
    NoNextVia,
    /// The destination is not a usable unicast address (broadcast, a DNS name, port 0...).
    BadDestination,
    /// No listening socket of the destination's address family.
    NoEgress,
    /// The ACK of one of creditgate's own refusals.
    AckAbsorbed,
    /// An ACK that would need an error reply (ACKs are never answered).
    AckRejected,
    /// A request from a known scanner's User-Agent (`[abuse] drop_scanners`).
    Scanner,
}

impl DropReason {
    pub const ALL: [DropReason; 11] = [
        DropReason::KeepAlive,
        DropReason::Unparseable,
        DropReason::Malformed,
        DropReason::MalformedResponse,
        DropReason::NotOurVia,
        DropReason::NoNextVia,
        DropReason::BadDestination,
        DropReason::NoEgress,
        DropReason::AckAbsorbed,
        DropReason::AckRejected,
        DropReason::Scanner,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::KeepAlive => "keepalive",
            DropReason::Unparseable => "unparseable",
            DropReason::Malformed => "malformed",
            DropReason::MalformedResponse => "malformed_response",
            DropReason::NotOurVia => "not_our_via",
            DropReason::NoNextVia => "no_next_via",
            DropReason::BadDestination => "bad_destination",
            DropReason::NoEgress => "no_egress",
            DropReason::AckAbsorbed => "ack_absorbed",
            DropReason::AckRejected => "ack_rejected",
            DropReason::Scanner => "scanner",
        }
    }
}

/// What happened, for logs and metrics (one place defines each outcome, STYLE rule 11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// A new call passed the credit check and was forwarded.
    Admitted {
        account: Option<AccountId<'a>>,
        call_id: &'a [u8],
    },
    /// A new call was refused with the `[reply]` of `cause`.
    Refused {
        cause: RefusalCause,
        account: Option<AccountId<'a>>,
        call_id: &'a [u8],
    },
    /// Dry run (`enforce = false`): would have been refused, forwarded instead.
    WouldRefuse {
        cause: RefusalCause,
        account: Option<AccountId<'a>>,
        call_id: &'a [u8],
    },
    /// Forwarded without a credit check.
    Passed(PassKind),
    /// Answered by creditgate itself.
    Answered(Answer),
    Dropped(DropReason),
}

/// The method of the datagram, for per-method metrics (a bounded label: unknown methods are
/// `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MethodClass {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Other,
    /// A SIP response.
    Response,
    /// Not parseable far enough to tell.
    Unknown,
}

impl MethodClass {
    pub const ALL: [MethodClass; 9] = [
        MethodClass::Invite,
        MethodClass::Ack,
        MethodClass::Bye,
        MethodClass::Cancel,
        MethodClass::Options,
        MethodClass::Register,
        MethodClass::Other,
        MethodClass::Response,
        MethodClass::Unknown,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodClass::Invite => "INVITE",
            MethodClass::Ack => "ACK",
            MethodClass::Bye => "BYE",
            MethodClass::Cancel => "CANCEL",
            MethodClass::Options => "OPTIONS",
            MethodClass::Register => "REGISTER",
            MethodClass::Other => "other",
            MethodClass::Response => "response",
            MethodClass::Unknown => "unknown",
        }
    }

    /// Classifies a request method (case-sensitive, as RFC 3261 methods are).
    pub fn of_method(m: &[u8]) -> MethodClass {
        match m {
            b"INVITE" => MethodClass::Invite,
            b"ACK" => MethodClass::Ack,
            b"BYE" => MethodClass::Bye,
            b"CANCEL" => MethodClass::Cancel,
            b"OPTIONS" => MethodClass::Options,
            b"REGISTER" => MethodClass::Register,
            _ => MethodClass::Other,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why the live state (SPEC 7) refused a new call: a ledger check, or no rate for the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveRefusal {
    Ledger(crate::live::ledger::Refusal),
    /// No tariff entry and no `rate_per_min` cover the dialled number (`unrated = "refuse"`).
    NoRate,
    /// The account left the snapshot between identification and the live check.
    Vanished,
}

impl LiveRefusal {
    /// The `[reply]` cause it answers with.
    pub fn cause(self) -> RefusalCause {
        use crate::live::ledger::Refusal as R;
        match self {
            LiveRefusal::Ledger(R::InsufficientCredit) => RefusalCause::InsufficientCredit,
            LiveRefusal::Ledger(
                R::ChannelLimit | R::CreditScaledChannels | R::TableFull | R::KeyInUse,
            ) => RefusalCause::ChannelLimit,
            LiveRefusal::Ledger(R::CpsLimit) => RefusalCause::CpsLimit,
            LiveRefusal::Ledger(R::SpendLimit) => RefusalCause::SpendLimit,
            LiveRefusal::NoRate => RefusalCause::NoRate,
            LiveRefusal::Vanished => RefusalCause::UnknownAccount,
        }
    }

    /// Metric label (`creditgate_live_refusals_total{reason}`).
    pub fn label(self) -> &'static str {
        match self {
            LiveRefusal::Ledger(r) => r.label(),
            LiveRefusal::NoRate => "no_rate",
            LiveRefusal::Vanished => "unknown_account",
        }
    }
}

/// What the live state did with a datagram (SPEC 7), for metrics. `None` when tracking is off
/// or the datagram touched no tracked call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LiveNote {
    #[default]
    None,
    /// A new call was admitted and is tracked (`retransmission`: it already was).
    Tracked { retransmission: bool },
    /// The live check refused the new call (or, in a dry run, would have: it is forwarded and
    /// tracked anyway when it could be).
    Refused(LiveRefusal),
    /// A tracked call was answered.
    Answered,
    /// A tracked call ended.
    Ended(crate::live::calls::EndCause),
    /// A customer's in-dialog request with a valid Route token whose call is not tracked (ended,
    /// expired, admitted before a restart): handled as out of dialog (in a dry run, passed).
    Untracked,
}

/// The result of handling one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome<'a> {
    pub action: Action,
    pub event: Event<'a>,
    pub method: MethodClass,
    /// What the live state did (SPEC 7).
    pub live: LiveNote,
}

impl<'a> Outcome<'a> {
    pub(crate) fn drop(reason: DropReason) -> Self {
        Outcome {
            method: MethodClass::Unknown,
            action: Action::Drop,
            event: Event::Dropped(reason),
            live: LiveNote::None,
        }
    }
}

#[cfg(test)]
mod tests;
