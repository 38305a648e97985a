//! The stateless proxy (RFC 3261 16.11) with credit admission (SPEC sections 1, 4, 6).
//!
//! Requests: validate (16.3), answer what creditgate answers itself (refusals, 4xx/5xx, OPTIONS
//! ping), otherwise forward with `received`/`rport` on the top Via (RFC 3581), creditgate's own
//! keyed Via on top, Max-Forwards decremented, our Route popped and, for new dialogs, a
//! Record-Route carrying the dialog token. Responses: relayed only when the top Via is
//! creditgate's and its branch verifies; that Via is removed and the response goes to the next
//! Via's `received`/`rport`/sent-by (18.2.2).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use smallvec::SmallVec;

use super::admission;
use super::grammar::{
    self, for_each_name_addr, for_each_via, parse_uri, single_name_addr, Host, NameAddr, Scheme,
    Via,
};
use super::keys::{ct_eq, hex_into, BRANCH_LEN, TOKEN_LEN};
use super::scan::{self, Hdr, HeaderLine, Message, Start};
use super::splice::{bytes, Edits};
use super::{
    AccountId, Action, Answer, DropReason, Event, LiveNote, MethodClass, Outcome, Packet, PassKind,
    Policy,
};
use crate::credit::RefusalCause;
use crate::live::calls::{CallEvent, LiveState};
use crate::snapshot::Snapshot;

const MAGIC: &[u8] = b"z9hG4bK";
const OUR_BRANCH_PREFIX: &[u8] = b"z9hG4bKcg";
/// Max-Forwards assumed when a request carries none (RFC 3261 16.6 step 3).
const DEFAULT_MAX_FORWARDS: u8 = 70;

/// Handles one datagram, with call tracking off.
pub fn handle<'a>(pkt: Packet<'a>, snap: &Snapshot, policy: &Policy) -> Outcome<'a> {
    handle_live(pkt, snap, policy, None)
}

/// Handles one datagram. `live` is the live-credit state (SPEC 7) when `[live] track_calls` is
/// on: new INVITEs are checked and held in it, and the messages of tracked calls move them
/// along (2xx answers, a final failure or 487 ends a ringing call, a BYE from the switch or
/// the switch's 2xx to a customer's BYE ends an answered one).
pub fn handle_live<'a>(
    pkt: Packet<'a>,
    snap: &Snapshot,
    policy: &Policy,
    live: Option<&LiveState>,
) -> Outcome<'a> {
    if scan::is_keepalive(pkt.data) {
        return Outcome::drop(DropReason::KeepAlive);
    }
    let msg = match scan::scan(pkt.data) {
        Ok(m) => m,
        Err(_) => return Outcome::drop(DropReason::Unparseable),
    };
    let source = SocketAddr::new(normalise(pkt.source.ip()), pkt.source.port());
    let pkt = Packet { source, ..pkt };
    match msg.start {
        Start::Response { .. } => Outcome {
            method: MethodClass::Response,
            ..handle_response(&msg, pkt, policy, live)
        },
        Start::Request {
            ref method,
            ref uri,
        } => {
            let (method, uri) = (method.clone(), uri.clone());
            let class = MethodClass::of_method(scan::at(msg.buf, method.clone()));
            if super::scanner::is_scanner(&msg, pkt.source.ip(), policy) {
                return Outcome {
                    method: class,
                    ..Outcome::drop(DropReason::Scanner)
                };
            }
            Outcome {
                method: class,
                ..handle_request(&msg, method, uri, pkt, snap, policy, live)
            }
        }
    }
}

fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The first two via-parms of a message, with the header line that carries the first.
struct TopVias {
    first_line: Range<usize>,
    /// Whether the first Via header carries more than one via-parm.
    first_shared: bool,
    top: Via,
    second: Option<Via>,
}

fn top_vias(msg: &Message<'_>) -> Option<Result<TopVias, grammar::GrammarError>> {
    let mut vias = msg.headers.iter().filter(|h| h.kind == Hdr::Via);
    let first = vias.next()?;
    let mut found: SmallVec<[Via; 2]> = SmallVec::new();
    if let Err(e) = for_each_via(msg.buf, first.value.clone(), |v| {
        found.push(v);
        found.len() < 2
    }) {
        return Some(Err(e));
    }
    let first_shared = found.len() > 1;
    if found.len() < 2 {
        if let Some(next) = vias.next() {
            match grammar::first_via(msg.buf, next.value.clone()) {
                Ok(v) => found.push(v),
                Err(e) => return Some(Err(e)),
            }
        }
    }
    let mut it = found.into_iter();
    let top = it.next()?;
    Some(Ok(TopVias {
        first_line: first.line.clone(),
        first_shared,
        top,
        second: it.next(),
    }))
}

/// The transaction identity of a request as its sender's top Via gives it (RFC 3261 16.11):
/// the branch and sent-by when the branch has the magic cookie, otherwise the fields an RFC 2543
/// element keeps constant (no Request-URI or To-tag, so responses and the ACK of a non-2xx
/// verify against the same value); then the response target creditgate wrote into that Via
/// (`received`/`rport`, SPEC 6 "Responses"), so an edited Via no longer verifies.
fn txn_parts<'b>(
    buf: &'b [u8],
    via: &Via,
    call_id: &'b [u8],
    from_tag: &'b [u8],
    cseq: &'b [u8],
    target: &'b [u8],
) -> SmallVec<[&'b [u8]; 5]> {
    let branch = via
        .branch
        .clone()
        .map(|b| scan::at(buf, b))
        .unwrap_or_default();
    let sent_by = scan::at(buf, via.sent_by());
    if branch.len() > MAGIC.len() && branch.starts_with(MAGIC) {
        SmallVec::from_slice(&[branch, sent_by, target])
    } else {
        SmallVec::from_slice(&[sent_by, call_id, from_tag, cseq, target])
    }
}

/// A socket address as MAC input: the (normalised) IP's octets and the port, big-endian.
fn addr_bytes(a: SocketAddr) -> SmallVec<[u8; 18]> {
    let mut out = SmallVec::new();
    match normalise(a.ip()) {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&a.port().to_be_bytes());
    out
}

/// Where the response to a request from `source` whose top Via is `via` goes once creditgate
/// has written `received` and `rport` into that Via (what [`response_target`] reads back).
fn written_target(via: &Via, source: SocketAddr) -> SocketAddr {
    let port = match via.rport {
        Some(_) if source.port() != 0 => source.port(),
        _ => via.port.unwrap_or(5060),
    };
    SocketAddr::new(normalise(source.ip()), port)
}

fn header<'m>(msg: &'m Message<'_>, kind: Hdr) -> impl Iterator<Item = &'m HeaderLine> {
    msg.headers.iter().filter(move |h| h.kind == kind)
}

/// The CSeq number as written (digits), for hashing.
fn cseq_num_bytes<'b>(buf: &'b [u8], value: &Range<usize>) -> &'b [u8] {
    let v = scan::at(buf, value.clone());
    let n = v
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(v.len());
    let digits = v.get(..n).unwrap_or_default();
    // Leading zeros do not make a different transaction.
    let z = digits
        .iter()
        .position(|b| *b != b'0')
        .unwrap_or(digits.len().saturating_sub(1));
    digits.get(z..).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Responses

fn handle_response<'a>(
    msg: &Message<'a>,
    pkt: Packet<'a>,
    policy: &Policy,
    live: Option<&LiveState>,
) -> Outcome<'a> {
    if msg.defect.is_some() {
        return Outcome::drop(DropReason::MalformedResponse);
    }
    let tv = match top_vias(msg) {
        Some(Ok(tv)) => tv,
        Some(Err(_)) | None => return Outcome::drop(DropReason::MalformedResponse),
    };
    let buf = msg.buf;
    let top = &tv.top;
    let branch = top
        .branch
        .clone()
        .map(|b| scan::at(buf, b))
        .unwrap_or_default();
    if branch.len() != BRANCH_LEN
        || !branch.starts_with(OUR_BRANCH_PREFIX)
        || !buf
            .get(top.host_span.clone())
            .is_some_and(|h| policy.is_own(h, top.host, top.port))
    {
        return Outcome::drop(DropReason::NotOurVia);
    }
    let Some(next) = tv.second.as_ref() else {
        return Outcome::drop(DropReason::NoNextVia);
    };
    // Verify the branch: recompute its transaction part from the Via below ours.
    let call_id = header(msg, Hdr::CallId)
        .next()
        .map(|h| scan::at(buf, h.value.clone()))
        .unwrap_or_default();
    let from_tag = header(msg, Hdr::From)
        .next()
        .and_then(|h| single_name_addr(buf, h.value.clone()).ok())
        .and_then(|na| na.tag)
        .map(|t| scan::at(buf, t))
        .unwrap_or_default();
    let cseq = header(msg, Hdr::CSeq)
        .next()
        .map(|h| cseq_num_bytes(buf, &h.value))
        .unwrap_or_default();
    // The MAC covers where the response goes: a Via whose received/rport was edited (or
    // removed) since creditgate wrote them fails here (SPEC 6: never a relay to a third address).
    let Some(raw_to) = response_target(buf, next) else {
        return Outcome::drop(DropReason::NotOurVia);
    };
    let target = addr_bytes(raw_to);
    let want = policy
        .keys
        .branch_txn(&txn_parts(buf, next, call_id, from_tag, cseq, &target));
    if !branch.get(9..25).is_some_and(|mac| ct_eq(mac, &want)) {
        return Outcome::drop(DropReason::NotOurVia);
    }
    let Some(to) = usable_unicast(raw_to) else {
        return Outcome::drop(DropReason::BadDestination);
    };
    let Some(out) = policy.egress(pkt.local, to) else {
        return Outcome::drop(DropReason::NoEgress);
    };
    let mut e = Edits::new();
    if tv.first_shared {
        // Remove "ours, " up to the next via-parm.
        e.delete(top.span.start..next.span.start);
    } else {
        e.delete(tv.first_line.clone());
    }
    let bytes = e.apply(buf, msg.body.end);
    let live = live.map_or(LiveNote::None, |live| {
        response_event(msg, live, call_id, from_tag, pkt)
    });
    Outcome {
        method: MethodClass::Unknown,
        action: Action::Forward {
            from: out.bound,
            to,
            bytes,
        },
        event: Event::Passed(PassKind::Response),
        live,
    }
}

/// What a verified response does to a tracked call (SPEC 7): the final response to its INVITE
/// answers (2xx) or ends it (487: cancelled; any other >= 300: failed); a 2xx to a BYE ends
/// it. The key is (Call-ID, From-tag): creditgate tracks the calls its customers start, and the
/// responses to their requests carry their tag in From. Anything else is one missed lookup.
fn response_event(
    msg: &Message<'_>,
    live: &LiveState,
    call_id: &[u8],
    from_tag: &[u8],
    pkt: Packet<'_>,
) -> LiveNote {
    let Start::Response { code } = msg.start else {
        return LiveNote::None;
    };
    if code < 200 {
        return LiveNote::None;
    }
    let buf = msg.buf;
    let Some(Ok((_, method))) = header(msg, Hdr::CSeq)
        .next()
        .map(|h| grammar::parse_cseq(buf, h.value.clone()))
    else {
        return LiveNote::None;
    };
    let key = || live.call_key(call_id, from_tag);
    let event = match (scan::at(buf, method), code) {
        (b"INVITE", 200..=299) => live.answered(key(), pkt.now, pkt.wall_secs),
        (b"INVITE", 487) => live.cancelled(key(), pkt.now, pkt.wall_secs),
        (b"INVITE", _) => live.failed(key(), pkt.now, pkt.wall_secs),
        (b"BYE", 200..=299) => live.bye(key(), pkt.now, pkt.wall_secs),
        _ => return LiveNote::None,
    };
    note_of(event)
}

fn note_of(event: CallEvent) -> LiveNote {
    match event {
        CallEvent::Ignored => LiveNote::None,
        CallEvent::Answered => LiveNote::Answered,
        CallEvent::Ended { cause, .. } => LiveNote::Ended(cause),
    }
}

/// Where a response goes per RFC 3261 18.2.2 / RFC 3581: `received` (else the sent-by IP), and
/// `rport` (else the sent-by port, else 5060). Not yet checked for being usable unicast.
fn response_target(buf: &[u8], via: &Via) -> Option<SocketAddr> {
    let ip = match &via.received {
        Some((_, v)) => parse_ip_text(scan::at(buf, v.clone()))?,
        None => match via.host {
            Host::Ip(ip) => ip,
            Host::Name => return None,
        },
    };
    let port = match &via.rport {
        Some((_, Some(v))) => scan::parse_u32_digits(scan::at(buf, v.clone()))
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0),
        _ => None,
    }
    .or(via.port)
    .unwrap_or(5060);
    Some(SocketAddr::new(normalise(ip), port))
}

fn parse_ip_text(t: &[u8]) -> Option<IpAddr> {
    let t = t
        .strip_prefix(b"[")
        .and_then(|x| x.strip_suffix(b"]"))
        .unwrap_or(t);
    std::str::from_utf8(t).ok()?.parse().ok()
}

/// Refuses destinations that are not one unicast host (RFC 4475 bcast: never reflect to a
/// broadcast address).
fn usable_unicast(a: SocketAddr) -> Option<SocketAddr> {
    let ok = match a.ip() {
        IpAddr::V4(v4) => {
            !(v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.octets()[3] == 255 && v4.octets()[0] >= 224)
        }
        IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_unspecified()),
    };
    (ok && a.port() != 0).then_some(a)
}

// ---------------------------------------------------------------------------------------------
// Requests

/// The parts of a request needed for replies and decisions.
struct Req<'m, 'a> {
    msg: &'m Message<'a>,
    method: &'a [u8],
    tv: Option<TopVias>,
    call_id: &'a [u8],
    from_tag: &'a [u8],
    from: Option<NameAddr>,
    to: Option<NameAddr>,
    to_line: Option<Range<usize>>,
    cseq: &'a [u8],
}

fn handle_request<'a>(
    msg: &Message<'a>,
    method: Range<usize>,
    uri: Range<usize>,
    pkt: Packet<'a>,
    snap: &Snapshot,
    policy: &Policy,
    live: Option<&LiveState>,
) -> Outcome<'a> {
    let buf = msg.buf;
    let method_b = scan::at(buf, method);
    let is_ack = method_b == b"ACK";
    let is_cancel = method_b == b"CANCEL";

    // Whatever a reply needs, gathered leniently first so that even a broken request can get its
    // 400 (RFC 3261 8.2.6 / 16.3 step 1).
    let tv = match top_vias(msg) {
        Some(Ok(tv)) => Some(tv),
        _ => None,
    };
    let via_present = header(msg, Hdr::Via).next().is_some();
    let cseq_h = header(msg, Hdr::CSeq).next();
    let call_id = header(msg, Hdr::CallId)
        .next()
        .map(|h| scan::at(buf, h.value.clone()))
        .unwrap_or_default();
    let from = header(msg, Hdr::From)
        .next()
        .and_then(|h| single_name_addr(buf, h.value.clone()).ok());
    let to_h = header(msg, Hdr::To).next();
    let to = to_h.and_then(|h| single_name_addr(buf, h.value.clone()).ok());
    let from_tag = from
        .as_ref()
        .and_then(|f| f.tag.clone())
        .map(|t| scan::at(buf, t))
        .unwrap_or_default();
    let cseq = cseq_h
        .map(|h| cseq_num_bytes(buf, &h.value))
        .unwrap_or_default();
    let req = Req {
        msg,
        method: method_b,
        tv,
        call_id,
        from_tag,
        from,
        to,
        to_line: to_h.map(|h| h.line.clone()),
        cseq,
    };

    // Without a Via and a CSeq no response can be matched by the sender: drop.
    if !via_present || cseq_h.is_none() {
        return Outcome::drop(if is_ack {
            DropReason::AckRejected
        } else {
            DropReason::Malformed
        });
    }
    let bad = |reason: &'static str| answer(&req, pkt, policy, Answer::BadRequest(reason), &[]);
    if let Some(d) = msg.defect {
        if is_ack {
            return Outcome::drop(DropReason::AckRejected);
        }
        return if d == scan::Defect::BadVersion {
            answer(&req, pkt, policy, Answer::VersionNotSupported, &[])
        } else {
            bad(d.as_str())
        };
    }
    if is_ack && (req.tv.is_none() || req.from.is_none() || req.to.is_none() || call_id.is_empty())
    {
        return Outcome::drop(DropReason::AckRejected);
    }
    let Some(tv) = req.tv.as_ref() else {
        return bad("Malformed Via");
    };
    // Exactly one of each of these (RFC 4475 multi01: never pick one of several callers).
    for (kind, what) in [
        (Hdr::From, "Missing or repeated From"),
        (Hdr::To, "Missing or repeated To"),
        (Hdr::CallId, "Missing or repeated Call-ID"),
        (Hdr::CSeq, "Repeated CSeq"),
    ] {
        if header(msg, kind).count() != 1 {
            return if is_ack {
                Outcome::drop(DropReason::AckRejected)
            } else {
                bad(what)
            };
        }
    }
    if header(msg, Hdr::MaxForwards).count() > 1 {
        return bad("Repeated Max-Forwards");
    }
    if call_id.is_empty() || call_id.iter().any(|b| *b <= b' ' || *b >= 0x7f) {
        return bad("Malformed Call-ID");
    }
    if req.from.is_none() {
        return bad("Malformed From");
    }
    if req.to.is_none() {
        return bad("Malformed To");
    }
    match cseq_h.map(|h| grammar::parse_cseq(buf, h.value.clone())) {
        Some(Ok((_, m))) if buf.get(m.clone()) == Some(method_b) => {}
        Some(Ok(_)) => return bad("CSeq method does not match the request"),
        _ => return bad("Malformed CSeq"),
    }
    let ruri = match parse_uri(buf, uri.clone()) {
        Ok(u) if u.scheme == Scheme::Other => {
            return answer(&req, pkt, policy, Answer::UnsupportedUriScheme, &[])
        }
        Ok(u) if u.has_headers => return bad("Headers in Request-URI"),
        Ok(u) => u,
        Err(_) => return bad("Malformed Request-URI"),
    };
    let to_tag = req
        .to
        .as_ref()
        .and_then(|t| t.tag.clone())
        .and_then(|t| buf.get(t));
    let top_branch = tv
        .top
        .branch
        .clone()
        .map(|b| scan::at(buf, b))
        .unwrap_or_default();
    let cseq_n = scan::parse_u32_digits(cseq).unwrap_or(0);

    // The ACK of creditgate's own refusal ends there (its To-tag is ours).
    if is_ack {
        if let Some(tt) = to_tag {
            let ours = policy
                .keys
                .refusal_tag(call_id, req.from_tag, cseq_n, top_branch);
            if ct_eq(tt, &ours) {
                return Outcome::drop(DropReason::AckAbsorbed);
            }
        }
    }

    let routes = RouteInfo::read(msg, policy);
    let Ok(routes) = routes else {
        return bad("Malformed Route");
    };

    // OPTIONS addressed to creditgate itself: answer, so customers and balancers can ping it.
    if method_b == b"OPTIONS" && to_tag.is_none() && ruri.user.is_none() && routes.remaining == 0 {
        return answer(&req, pkt, policy, Answer::OptionsPing, &[]);
    }

    let mf = match header(msg, Hdr::MaxForwards).next() {
        Some(h) => match grammar::parse_max_forwards(scan::at(buf, h.value.clone())) {
            Ok(v) => Some((h, v)),
            Err(_) => return bad("Malformed Max-Forwards"),
        },
        None => None,
    };
    if mf.as_ref().is_some_and(|(_, v)| *v == 0) {
        return if is_ack {
            Outcome::drop(DropReason::AckRejected)
        } else {
            answer(&req, pkt, policy, Answer::TooManyHops, &[])
        };
    }
    if !is_ack && !is_cancel {
        let mut unsupported: SmallVec<[&[u8]; 4]> = SmallVec::new();
        for h in header(msg, Hdr::ProxyRequire) {
            unsupported.extend(
                scan::at(buf, h.value.clone())
                    .split(|b| *b == b',')
                    .map(trim)
                    .filter(|t| !t.is_empty()),
            );
        }
        if !unsupported.is_empty() {
            let mut line = b"Unsupported: ".to_vec();
            for (i, t) in unsupported.iter().enumerate() {
                if i > 0 {
                    line.extend_from_slice(b", ");
                }
                line.extend_from_slice(t);
            }
            line.extend_from_slice(b"\r\n");
            return answer(&req, pkt, policy, Answer::BadExtension, &[&line]);
        }
    }

    // Loop detection (16.3 step 4): a Via of ours whose loop hash equals the one we would put.
    let loop_hash = loop_hash(&req, scan::at(buf, uri.clone()), &routes, to_tag, policy);
    if header(msg, Hdr::Via).count() > 1 || tv.first_shared {
        let mut looped = false;
        for h in header(msg, Hdr::Via) {
            let _ = for_each_via(buf, h.value.clone(), |v| {
                if let Some(b) = v.branch.clone() {
                    let b = scan::at(buf, b);
                    // An unreadable hash or host counts as ours (refuse), never as a pass.
                    if b.len() == BRANCH_LEN
                        && b.starts_with(OUR_BRANCH_PREFIX)
                        && b.get(25..).is_none_or(|h| h == loop_hash)
                        && buf
                            .get(v.host_span.clone())
                            .is_none_or(|h| policy.is_own(h, v.host, v.port))
                    {
                        looped = true;
                    }
                }
                !looped
            });
            if looped {
                break;
            }
        }
        if looped {
            return if is_ack {
                Outcome::drop(DropReason::AckRejected)
            } else {
                answer(&req, pkt, policy, Answer::LoopDetected, &[])
            };
        }
    }

    let from_upstream = policy.is_trusted(pkt.source.ip());
    let ruri_user = ruri
        .user
        .clone()
        .map(|u| scan::at(buf, u))
        .unwrap_or_default();
    let is_check_method = policy
        .check_methods
        .iter()
        .any(|m| m.as_slice() == method_b);

    // The dialog our Route token vouches for (valid, unexpired), if any.
    let mut dialog =
        to_tag.and_then(|tt| routes.verify(policy, call_id, req.from_tag, tt, pkt.wall_secs));
    let mut note = LiveNote::None;
    // With call tracking on, a customer's in-dialog request of a call it started must belong to
    // a tracked call (SPEC 7): a token of an ended call is not a pass. ACK and CANCEL follow
    // their INVITE and pass either way. In a dry run it passes, counted.
    if let (Some(live), Some(d)) = (live, dialog) {
        if !from_upstream
            && d.sender_started
            && !is_ack
            && !is_cancel
            && !live.is_tracked(live.call_key(call_id, req.from_tag))
        {
            note = LiveNote::Untracked;
            if policy.enforce {
                dialog = None;
            }
        }
    }

    // Classify.
    let mut event = if from_upstream {
        Event::Passed(PassKind::FromUpstream)
    } else if is_ack {
        Event::Passed(PassKind::Ack)
    } else if is_cancel {
        Event::Passed(PassKind::Cancel)
    } else {
        if dialog.is_some() {
            Event::Passed(PassKind::InDialog)
        } else if is_check_method {
            // A new call, or an in-dialog request without creditgate's token: credit decides.
            let caller = admission::CallerInfo {
                msg,
                from: req.from.as_ref(),
                ruri_user,
                source: pkt.source.ip(),
            };
            let decided = admission::admission(&caller, snap, policy, pkt.now);
            // The live check (SPEC 7) for a new call of an identified account: after the
            // snapshot admitted it, or in a dry run whatever the snapshot said (it is forwarded
            // and will spend, so it is tracked).
            let tracked_account = match (&decided, live) {
                (_, None) => None,
                _ if method_b != b"INVITE" => None,
                (Ok(Some(a)), Some(l)) => Some((a.clone(), l)),
                (Err((_, Some(a))), Some(l)) if !policy.enforce => Some((a.clone(), l)),
                _ => None,
            };
            let live_verdict = tracked_account.map(|(account, l)| {
                let key = l.call_key(call_id, req.from_tag);
                let verdict = admission::admit_live(
                    l,
                    snap,
                    policy,
                    account.as_str(),
                    ruri_user,
                    key,
                    pkt.now,
                    pkt.wall_secs,
                );
                (account, verdict)
            });
            match (decided, live_verdict) {
                (Ok(account), None) => Event::Admitted { account, call_id },
                (Ok(_), Some((account, Ok(a)))) => {
                    note = match a.would_refuse {
                        Some(r) => LiveNote::Refused(r),
                        None => LiveNote::Tracked {
                            retransmission: a.retransmission,
                        },
                    };
                    match a.would_refuse {
                        Some(r) => Event::WouldRefuse {
                            cause: r.cause(),
                            account: Some(account),
                            call_id,
                        },
                        None => Event::Admitted {
                            account: Some(account),
                            call_id,
                        },
                    }
                }
                (Ok(_), Some((account, Err(r)))) if policy.enforce => {
                    return Outcome {
                        live: LiveNote::Refused(r),
                        ..refusal(&req, pkt, policy, r.cause(), Some(account))
                    };
                }
                (Ok(_), Some((account, Err(r)))) => {
                    note = LiveNote::Refused(r);
                    Event::WouldRefuse {
                        cause: r.cause(),
                        account: Some(account),
                        call_id,
                    }
                }
                (Err((cause, account)), _) if policy.enforce => {
                    return refusal(&req, pkt, policy, cause, account);
                }
                (Err((cause, account)), verdict) => {
                    if let Some((_, v)) = verdict {
                        note = match v {
                            Ok(a) => a.would_refuse.map_or(
                                LiveNote::Tracked {
                                    retransmission: a.retransmission,
                                },
                                LiveNote::Refused,
                            ),
                            Err(r) => LiveNote::Refused(r),
                        };
                    }
                    Event::WouldRefuse {
                        cause,
                        account,
                        call_id,
                    }
                }
            }
        } else if to_tag.is_some() && !policy.record_route {
            // Without Record-Route there is no token: a To-tag is all there is (docs say what
            // this gives up). With it, an in-dialog request without a valid token is treated
            // as out of dialog (SPEC 6 "Security of the bypass").
            Event::Passed(PassKind::InDialog)
        } else if policy.forward_other_methods {
            Event::Passed(PassKind::OtherMethod)
        } else {
            return answer(&req, pkt, policy, Answer::MethodNotAllowed, &[]);
        }
    };

    // Next hop.
    let dest = if from_upstream {
        match routes.next_hop(buf).or_else(|| uri_target(buf, &ruri)) {
            Some(Ok(a)) => a,
            Some(Err(())) | None => {
                return if is_ack {
                    Outcome::drop(DropReason::BadDestination)
                } else {
                    answer(&req, pkt, policy, Answer::Unresolvable, &[])
                };
            }
        }
    } else {
        // Customers reach only the switch (SPEC 6 "Where a customer's request may go"): the
        // trusted node a valid dialog token names, else a Route or Request-URI naming an
        // upstream's exact IP:port, else the upstream chosen by Call-ID (no open relay).
        let named = routes
            .next_hop(buf)
            .or_else(|| uri_target(buf, &ruri))
            .and_then(Result::ok);
        let upstream = named.filter(|a| {
            policy
                .upstreams
                .iter()
                .any(|u| normalise(u.ip()) == a.ip() && u.port() == a.port())
        });
        match dialog.and_then(|d| d.node).or(upstream) {
            Some(a) => a,
            None => match policy.upstream_for(call_id) {
                Some(a) => a,
                None => return Outcome::drop(DropReason::BadDestination),
            },
        }
    };
    let Some(dest) = usable_unicast(dest) else {
        return Outcome::drop(DropReason::BadDestination);
    };
    if policy.is_own(
        dest.ip().to_string().as_bytes(),
        Host::Ip(dest.ip()),
        Some(dest.port()),
    ) {
        return if is_ack {
            Outcome::drop(DropReason::AckRejected)
        } else {
            answer(&req, pkt, policy, Answer::LoopDetected, &[])
        };
    }
    let Some(out) = policy.egress(pkt.local, dest) else {
        return Outcome::drop(DropReason::NoEgress);
    };

    // creditgate adds at most three header lines (Via, Max-Forwards, Record-Route); what it
    // forwards must stay within what it accepts itself.
    if msg.headers.len() + 3 > scan::MAX_HEADERS {
        return if is_ack {
            Outcome::drop(DropReason::AckRejected)
        } else {
            answer(
                &req,
                pkt,
                policy,
                Answer::BadRequest(scan::Defect::TooManyHeaders.as_str()),
                &[],
            )
        };
    }

    // Build the forwarded request.
    let mut e = Edits::new();
    let insert_at = tv.first_line.start;
    let from_tag_b = req.from_tag;
    let target = addr_bytes(written_target(&tv.top, pkt.source));
    let txn = txn_parts(buf, &tv.top, call_id, from_tag_b, cseq, &target);
    let branch = policy.keys.branch(&txn, &loop_hash);
    let host = bracket(&out.advertised_host);
    let port = out.advertised_port.to_string();
    top_via_edits(&mut e, &tv.top, pkt.source);
    match &mf {
        Some((h, v)) => e.replace(h.value.clone(), bytes(&[(v - 1).to_string().as_bytes()])),
        None => e.insert(
            insert_at,
            bytes(&[
                b"Max-Forwards: ",
                (DEFAULT_MAX_FORWARDS - 1).to_string().as_bytes(),
                b"\r\n",
            ]),
        ),
    }
    if policy.record_route && to_tag.is_none() && creates_dialog(method_b) {
        // A dialog a trusted node (not a configured upstream) starts belongs to that node: its
        // exact address goes into the token, so the customer's in-dialog requests go back to it.
        let node = (from_upstream
            && !policy
                .upstreams
                .iter()
                .any(|u| normalise(u.ip()) == pkt.source.ip()))
        .then(|| addr_bytes(pkt.source));
        let node = node.unwrap_or_default();
        let issued = pkt.wall_secs / 60;
        let mac = policy.keys.route_token(call_id, from_tag_b, issued, &node);
        let mut node_hex = [0u8; 36];
        hex_into(&mut node_hex, &node);
        let node_hex = node_hex.get(..2 * node.len()).unwrap_or_default();
        let issued = issued.to_string();
        let rr = |host: &str, port: &str| {
            bytes(&[
                b"Record-Route: <sip:",
                host.as_bytes(),
                b":",
                port.as_bytes(),
                b";lr;cgt=",
                issued.as_bytes(),
                b"-",
                &mac,
                if node_hex.is_empty() { b"" } else { b";cgn=" },
                node_hex,
                b">\r\n",
            ])
        };
        let at = header(msg, Hdr::RecordRoute)
            .next()
            .map_or(insert_at, |h| h.line.start.min(insert_at));
        // RFC 5658 4: received on one listener and sent from another (another address family,
        // or another socket), creditgate record-routes twice: the top entry is the egress
        // listener (what the next hop can reach), the one below it the ingress listener (what
        // the sender can reach). Both carry the token; both are popped on the way back.
        e.insert(at, rr(&host, &port));
        if let Some(ingress) = policy
            .listeners
            .iter()
            .find(|l| l.bound == pkt.local && l.bound != out.bound)
        {
            let in_host = bracket(&ingress.advertised_host);
            e.insert(at, rr(&in_host, &ingress.advertised_port.to_string()));
        }
    }
    // Our Via goes last at the insertion point, so it sits directly above the sender's Via.
    e.insert(
        insert_at,
        bytes(&[
            b"Via: SIP/2.0/UDP ",
            host.as_bytes(),
            b":",
            port.as_bytes(),
            b";branch=",
            &branch,
            b"\r\n",
        ]),
    );
    for pop in routes.pop {
        e.delete(pop);
    }
    let bytes = e.apply(buf, msg.body.end);
    if let Event::Admitted { .. } | Event::WouldRefuse { .. } = event {
    } else if from_upstream {
        event = Event::Passed(PassKind::FromUpstream);
    }
    // The switch's BYE ends the call at once (a trusted source; the call's initiator, the
    // customer, is the To side). A customer's BYE does not: the switch's 2xx to it does
    // (`response_event`), so a BYE the switch refuses leaves the call counted.
    if let (Some(l), true, true) = (live, from_upstream, method_b == b"BYE") {
        if let Some(tt) = to_tag {
            note = note_of(l.bye(l.call_key(call_id, tt), pkt.now, pkt.wall_secs));
        }
    }
    Outcome {
        method: MethodClass::Unknown,
        action: Action::Forward {
            from: out.bound,
            to: dest,
            bytes,
        },
        event,
        live: note,
    }
}

/// The loop-detection value of a request (RFC 3261 16.6 step 8): it must change on a spiral (the
/// request comes back through creditgate legitimately, e.g. alice -> creditgate -> switch ->
/// creditgate -> erin) and stay the same on a true loop. It covers:
///
/// * the Request-URI as received, Call-ID, From-tag and CSeq number;
/// * the Route set as creditgate forwards it (after popping its own Route): on a spiral the
///   switch consumed its own entry and the request comes back with fewer Routes (3 on the first
///   pass of alice's BYE, 1 on the second), on a loop it comes back with the same set;
/// * for methods other than INVITE, ACK and CANCEL, the To-tag and every Proxy-Authorization
///   value too. INVITE, its CANCEL and the ACK of its non-2xx response must carry one branch
///   (RFC 3261 9.1, 17.1.1.3), so for them only what those three share is covered: the ACK
///   carries a To-tag the INVITE lacked, and credentials need not be repeated in a CANCEL.
///
/// Proxy-Require needs no place: a request carrying it is answered 420 before this point (ACK and
/// CANCEL aside, which must not carry it). The top Via is left out on purpose: the element that
/// returns a looping request always adds its own, so a value covering it would never match.
fn loop_hash(
    req: &Req<'_, '_>,
    ruri: &[u8],
    routes: &RouteInfo<'_>,
    to_tag: Option<&[u8]>,
    policy: &Policy,
) -> [u8; 8] {
    let msg = req.msg;
    let buf = msg.buf;
    let n_routes = u32::try_from(routes.remaining)
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    let mut parts: SmallVec<[&[u8]; 12]> =
        SmallVec::from_slice(&[ruri, req.call_id, req.from_tag, req.cseq, &n_routes]);
    let mut skip = routes.pop.len();
    for h in header(msg, Hdr::Route) {
        // RouteInfo::read has validated every value already.
        let _ = for_each_name_addr(buf, h.value.clone(), |na| {
            if skip > 0 {
                skip -= 1;
            } else {
                parts.push(scan::at(buf, na.uri));
            }
            true
        });
    }
    if !matches!(req.method, b"INVITE" | b"ACK" | b"CANCEL") {
        parts.push(to_tag.unwrap_or_default());
        parts.extend(header(msg, Hdr::ProxyAuthorization).map(|h| scan::at(buf, h.value.clone())));
    }
    policy.keys.branch_loop(parts)
}

fn trim(s: &[u8]) -> &[u8] {
    let a = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let z = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(a, |p| p + 1);
    s.get(a..z.max(a)).unwrap_or_default()
}

fn bracket(host: &str) -> Cow<'_, str> {
    if host.contains(':') && !host.starts_with('[') {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

fn creates_dialog(method: &[u8]) -> bool {
    matches!(method, b"INVITE" | b"SUBSCRIBE" | b"REFER" | b"NOTIFY")
}

/// `received=<source IP>` always (whatever the sender wrote there is overwritten: it is where
/// the response goes, SPEC 6) and the `rport` value when the top Via has `rport` (RFC 3261
/// 18.2.1, RFC 3581 4).
fn top_via_edits(e: &mut Edits, via: &Via, source: SocketAddr) {
    if let Some((span, _)) = &via.rport {
        e.replace(
            span.clone(),
            bytes(&[b"rport=", source.port().to_string().as_bytes()]),
        );
    }
    let ip = normalise(source.ip()).to_string();
    match &via.received {
        Some((span, _)) => e.replace(span.clone(), bytes(&[b"received=", ip.as_bytes()])),
        None => e.insert(via.span.end, bytes(&[b";received=", ip.as_bytes()])),
    }
}

/// The socket address a SIP URI names, when its host is an IP literal (`Err` for a DNS name:
/// the core does no DNS).
fn uri_target(buf: &[u8], uri: &grammar::Uri) -> Option<Result<SocketAddr, ()>> {
    if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips) {
        return Some(Err(()));
    }
    if let Some(maddr) = uri.param(buf, b"maddr") {
        if let Some(ip) = parse_ip_text(maddr) {
            return Some(Ok(SocketAddr::new(normalise(ip), uri.port.unwrap_or(5060))));
        }
    }
    match uri.host {
        Some(Host::Ip(ip)) => Some(Ok(SocketAddr::new(normalise(ip), uri.port.unwrap_or(5060)))),
        _ => Some(Err(())),
    }
}

/// The Route set as creditgate sees it.
struct RouteInfo<'a> {
    /// Spans to delete: creditgate's top Route, and the second of an RFC 5658 pair.
    pop: SmallVec<[Range<usize>; 2]>,
    /// Our top Route's `cgt` token, if the top Route was ours.
    token: Option<&'a [u8]>,
    /// Our top Route's `cgn` node (hex), if any.
    node: Option<&'a [u8]>,
    /// The next Route's URI once ours are popped.
    next: Option<grammar::Uri>,
    /// Route values left after popping.
    remaining: usize,
}

/// What a verified Route token says about its dialog.
#[derive(Clone, Copy)]
struct Dialog {
    /// The trusted switch node that started the dialog (issue 9 item 3), still trusted.
    node: Option<SocketAddr>,
    /// The token verified with the request's From-tag: its sender started the dialog (for a
    /// customer, a call creditgate admitted). Otherwise the To-tag verified it: the sender is
    /// the called party.
    sender_started: bool,
}

impl<'a> RouteInfo<'a> {
    fn read(msg: &Message<'a>, policy: &Policy) -> Result<RouteInfo<'a>, grammar::GrammarError> {
        let buf = msg.buf;
        // (value, its header line, values on that line); the first three suffice.
        let mut values: SmallVec<[(NameAddr, Range<usize>, usize); 3]> = SmallVec::new();
        let mut total = 0usize;
        for h in header(msg, Hdr::Route) {
            let mut in_line = 0usize;
            let mut bad_uri = false;
            for_each_name_addr(buf, h.value.clone(), |na| {
                total += 1;
                in_line += 1;
                // Every Route value must be a URI the next hop can use, not only the ones
                // creditgate reads itself.
                bad_uri = parse_uri(buf, na.uri.clone()).is_err();
                if values.len() < 3 {
                    values.push((na, h.line.clone(), 0));
                }
                !bad_uri
            })?;
            if bad_uri {
                return Err(grammar::GrammarError::Uri);
            }
            for v in values.iter_mut().filter(|v| v.1 == h.line) {
                v.2 = in_line;
            }
        }
        let mut info = RouteInfo {
            pop: SmallVec::new(),
            token: None,
            node: None,
            next: None,
            remaining: total,
        };
        // creditgate's own Routes at the top: one, or the two of a double Record-Route (RFC
        // 5658) carrying the same token.
        let mut popped = 0;
        for (na, _, _) in values.iter().take(2) {
            let uri = parse_uri(buf, na.uri.clone())?;
            let ours = matches!(uri.scheme, Scheme::Sip | Scheme::Sips)
                && uri.host.is_some_and(|h| {
                    policy.is_own(scan::at(buf, uri.host_span.clone()), h, uri.port)
                });
            if !ours {
                break;
            }
            let token = uri.param(buf, b"cgt");
            if popped == 0 {
                info.token = token;
                info.node = uri.param(buf, b"cgn");
            } else if token.is_none() || token != info.token {
                break;
            }
            popped += 1;
        }
        for (i, (first, line, count)) in values.iter().enumerate().take(popped) {
            if i > 0 && values.get(i - 1).is_some_and(|v| v.1 == *line) {
                continue; // deleted with the value before it
            }
            let in_line_popped = values
                .get(i..popped)
                .unwrap_or_default()
                .iter()
                .filter(|v| v.1 == *line)
                .count();
            info.pop.push(if in_line_popped == *count {
                line.clone()
            } else {
                // Ours are the first values of a comma list: remove them and the comma.
                let next_start = values
                    .get(i + in_line_popped)
                    .filter(|v| v.1 == *line)
                    .map_or(first.span.end, |v| v.0.span.start);
                first.span.start..next_start
            });
        }
        info.remaining = total - popped;
        if let Some((na, _, _)) = values.get(popped) {
            info.next = Some(parse_uri(buf, na.uri.clone())?);
        }
        Ok(info)
    }

    fn next_hop(&self, buf: &[u8]) -> Option<Result<SocketAddr, ()>> {
        self.next.as_ref().and_then(|u| uri_target(buf, u))
    }

    /// Verifies our popped Route's token: `MINUTES-MAC`, issued no later than a minute from now
    /// and no earlier than `[live] call_expiry` ago, with a MAC over the Call-ID, the
    /// initiator's tag (the From-tag one way and the To-tag the other), the issue time and the
    /// node. `None` when there is no valid token.
    fn verify(
        &self,
        policy: &Policy,
        call_id: &[u8],
        from_tag: &[u8],
        to_tag: &[u8],
        wall_secs: u64,
    ) -> Option<Dialog> {
        let t = self.token?;
        let dash = t.iter().position(|b| *b == b'-')?;
        let (min_text, mac) = (t.get(..dash)?, t.get(dash + 1..)?);
        if min_text.is_empty() || min_text.len() > 12 || mac.len() != TOKEN_LEN {
            return None;
        }
        let issued = u64::from(scan::parse_u32_digits(min_text)?);
        let now = wall_secs / 60;
        if issued > now + 1 || now.saturating_sub(issued) > policy.token_life_min {
            return None;
        }
        let node_hex = self.node.unwrap_or_default();
        let node_bytes = decode_hex::<18>(node_hex)?;
        let ok = |tag: &[u8]| {
            ct_eq(
                mac,
                &policy.keys.route_token(call_id, tag, issued, &node_bytes),
            )
        };
        let sender_started = ok(from_tag);
        if !(sender_started || ok(to_tag)) {
            return None;
        }
        let node = match node_bytes.len() {
            0 => None,
            _ => Some(decode_addr(&node_bytes)?).filter(|n| policy.is_trusted(n.ip())),
        };
        Some(Dialog {
            node,
            sender_started,
        })
    }
}

/// Lower-case hex to bytes (at most `N`); `None` if malformed or longer.
fn decode_hex<const N: usize>(hex: &[u8]) -> Option<SmallVec<[u8; N]>>
where
    [u8; N]: smallvec::Array<Item = u8>,
{
    if hex.len() % 2 != 0 || hex.len() > 2 * N {
        return None;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    hex.chunks(2)
        .map(|p| match p {
            [a, b] => Some(nib(*a)? << 4 | nib(*b)?),
            _ => None,
        })
        .collect()
}

/// The inverse of [`addr_bytes`].
fn decode_addr(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        6 => {
            let ip: [u8; 4] = b.get(..4)?.try_into().ok()?;
            let port = u16::from_be_bytes(b.get(4..6)?.try_into().ok()?);
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        18 => {
            let ip: [u8; 16] = b.get(..16)?.try_into().ok()?;
            let port = u16::from_be_bytes(b.get(16..18)?.try_into().ok()?);
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// creditgate's own responses (stateless UAS, RFC 3261 8.2.6)

fn refusal<'a>(
    req: &Req<'_, 'a>,
    pkt: Packet<'a>,
    policy: &Policy,
    cause: RefusalCause,
    account: Option<AccountId<'a>>,
) -> Outcome<'a> {
    let t = policy.reply(cause);
    let (to, bytes) = build_reply(req, pkt, policy, &t.status_line, &[&t.extra]);
    Outcome {
        method: MethodClass::Unknown,
        action: Action::Reply {
            from: pkt.local,
            to,
            bytes,
        },
        event: Event::Refused {
            cause,
            account,
            call_id: req.call_id,
        },
        live: LiveNote::None,
    }
}

fn answer<'a>(
    req: &Req<'_, 'a>,
    pkt: Packet<'a>,
    policy: &Policy,
    kind: Answer,
    extra: &[&[u8]],
) -> Outcome<'a> {
    if req.method == b"ACK" {
        return Outcome::drop(DropReason::AckRejected);
    }
    let reason: &str = match kind {
        Answer::BadRequest(r) => r,
        Answer::UnsupportedUriScheme => "Unsupported URI Scheme",
        Answer::BadExtension => "Bad Extension",
        Answer::LoopDetected => "Loop Detected",
        Answer::TooManyHops => "Too Many Hops",
        Answer::Unresolvable => "Unresolvable destination",
        Answer::VersionNotSupported => "Version Not Supported",
        Answer::MethodNotAllowed => "Method not forwarded",
        Answer::OptionsPing => "OK",
    };
    let status = format!("SIP/2.0 {} {}\r\n", kind.code(), reason);
    let (to, bytes) = build_reply(req, pkt, policy, status.as_bytes(), extra);
    Outcome {
        method: MethodClass::Unknown,
        action: Action::Reply {
            from: pkt.local,
            to,
            bytes,
        },
        event: Event::Answered(kind),
        live: LiveNote::None,
    }
}

/// A response built from the request: Vias (top one with `received`/`rport`), From, To (with a
/// keyed To-tag when it had none, identical for retransmissions), Call-ID, CSeq, then `extra`.
fn build_reply(
    req: &Req<'_, '_>,
    pkt: Packet<'_>,
    policy: &Policy,
    status_line: &[u8],
    extra: &[&[u8]],
) -> (SocketAddr, Vec<u8>) {
    let msg = req.msg;
    let buf = msg.buf;
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(status_line);
    let mut first = true;
    for h in header(msg, Hdr::Via) {
        match (&req.tv, first) {
            (Some(tv), true) => {
                let mut e = Edits::new();
                top_via_edits(&mut e, &tv.top, pkt.source);
                e.apply_range_into(buf, h.line.clone(), &mut out);
            }
            _ => out.extend_from_slice(scan::at(buf, h.line.clone())),
        }
        first = false;
    }
    if let Some(h) = header(msg, Hdr::From).next() {
        out.extend_from_slice(scan::at(buf, h.line.clone()));
    }
    if let (Some(line), Some(to)) = (&req.to_line, &req.to) {
        if to.tag.is_none() {
            let top_branch = req
                .tv
                .as_ref()
                .and_then(|tv| tv.top.branch.clone())
                .map(|b| scan::at(buf, b))
                .unwrap_or_default();
            let tag = policy.keys.refusal_tag(
                req.call_id,
                req.from_tag,
                scan::parse_u32_digits(req.cseq).unwrap_or(0),
                top_branch,
            );
            let mut e = Edits::new();
            e.insert(to.span.end, bytes(&[b";tag=", &tag]));
            e.apply_range_into(buf, line.clone(), &mut out);
        } else {
            out.extend_from_slice(scan::at(buf, line.clone()));
        }
    } else if let Some(h) = header(msg, Hdr::To).next() {
        out.extend_from_slice(scan::at(buf, h.line.clone()));
    }
    for kind in [Hdr::CallId, Hdr::CSeq] {
        if let Some(h) = header(msg, kind).next() {
            out.extend_from_slice(scan::at(buf, h.line.clone()));
        }
    }
    for x in extra {
        out.extend_from_slice(x);
    }
    out.extend_from_slice(b"Server: creditgate\r\nContent-Length: 0\r\n\r\n");
    (reply_target(req, pkt), out)
}

/// RFC 3261 18.2.2 with RFC 3581: the source address, at the source port when the top Via has
/// `rport`, else at the sent-by port (5060 by default). A Via that does not parse: the source.
fn reply_target(req: &Req<'_, '_>, pkt: Packet<'_>) -> SocketAddr {
    match &req.tv {
        Some(tv) if tv.top.rport.is_none() => {
            SocketAddr::new(pkt.source.ip(), tv.top.port.unwrap_or(5060))
        }
        _ => pkt.source,
    }
}
