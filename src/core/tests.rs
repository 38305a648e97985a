//! Table-driven tests of the core against SPEC sections 1, 4 and 6, with raw SIP byte strings.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use super::keys::Keys;
use super::*;
use crate::config::{Config, IdentifyRule, OnNoSnapshot, OnStale};
use crate::credit::{parse_ips, Account, RefusalCause};
use crate::snapshot::Snapshot;

const CG: &str = "127.0.0.1:5060";
const SWITCH: &str = "127.0.0.2:5080";
const CALLER: &str = "127.0.0.1:40000";
/// The wall clock the tests run at (unix seconds, 2027-01-15).
const WALL: u64 = 1_800_000_000;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config() -> Config {
    let mut c = Config::default();
    c.sip.listen = vec![sa(CG)];
    c.sip.upstream = vec![sa(SWITCH)];
    c
}

fn policy_from(c: &Config) -> Policy {
    let l = Listener {
        bound: sa(CG),
        advertised_host: "127.0.0.1".into(),
        advertised_port: 5060,
    };
    Policy::new(c, Keys::new(b"unit-test-secret-unit-test-secret"), vec![l]).unwrap()
}

fn policy() -> Policy {
    policy_from(&config())
}

struct World {
    snap: Snapshot,
    t0: Instant,
}

fn acct(id: &str, bal: &str, lim: &str) -> Account {
    Account::new(
        id,
        Decimal::from_str(bal).unwrap(),
        Decimal::from_str(lim).unwrap(),
    )
}

fn world() -> World {
    let t0 = Instant::now();
    let snap = Snapshot::new(t0);
    let mut pbx = acct("pbx", "10", "0");
    pbx.ips = parse_ips("192.0.2.0/24").unwrap();
    let mut off = acct("off", "100", "0");
    off.enabled = false;
    snap.apply_full(
        vec![
            acct("alice", "25", "0"),
            acct("bob", "0", "0"),
            acct("carol", "-42", "100"),
            acct("dave", "5", "-5"),
            acct("tiny", "0.0001", "0"),
            off,
            pbx,
        ],
        t0,
        0.5,
        false,
    )
    .unwrap();
    World { snap, t0 }
}

fn run<'a>(w: &World, p: &Policy, data: &'a [u8], from: &str) -> Outcome<'a> {
    handle(
        Packet {
            data,
            source: sa(from),
            local: sa(CG),
            now: w.t0 + Duration::from_secs(1),
            wall_secs: WALL,
        },
        &w.snap,
        p,
    )
}

fn invite(user: &str, call: &str, extra: &str) -> Vec<u8> {
    format!(
        "INVITE sip:+4915112345@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK-{call}\r\n\
         Max-Forwards: 70\r\n\
         From: \"Caller\" <sip:{user}@example.com>;tag=ft-{call}\r\n\
         To: <sip:+4915112345@example.com>\r\n\
         Call-ID: {call}@example.com\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:{user}@127.0.0.1:40000>\r\n\
         {extra}Content-Type: application/sdp\r\n\
         Content-Length: 4\r\n\r\nv=0\n"
    )
    .into_bytes()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn fwd(o: &Outcome<'_>) -> (SocketAddr, String) {
    match &o.action {
        Action::Forward { to, bytes, .. } => (*to, text(bytes)),
        other => panic!("expected forward, got {other:?} / {:?}", o.event),
    }
}

fn reply(o: &Outcome<'_>) -> (SocketAddr, String) {
    match &o.action {
        Action::Reply { to, bytes, .. } => (*to, text(bytes)),
        other => panic!("expected reply, got {other:?} / {:?}", o.event),
    }
}

fn hdr<'s>(m: &'s str, name: &str) -> Vec<&'s str> {
    m.split("\r\n")
        .take_while(|l| !l.is_empty())
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

fn status(m: &str) -> u16 {
    m.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn param<'s>(v: &'s str, name: &str) -> Option<&'s str> {
    v.split(';').skip(1).find_map(|kv| {
        let (k, val) = kv.split_once('=').unwrap_or((kv, ""));
        (k.trim() == name).then_some(val.trim_end_matches('>'))
    })
}

/// Builds the switch's response to a forwarded request: same Vias, Record-Route copied.
fn switch_response(forwarded: &str, code: u16, to_tag: Option<&str>) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {code} X\r\n");
    for line in forwarded
        .split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
    {
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "call-id" | "cseq" | "record-route" => {
                out.push_str(&format!("{line}\r\n"))
            }
            "to" => match to_tag {
                Some(t) if !line.contains("tag=") => out.push_str(&format!("{line};tag={t}\r\n")),
                _ => out.push_str(&format!("{line}\r\n")),
            },
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out.into_bytes()
}

// --- SPEC section 1: the credit model through the whole core --------------------------------

#[test]
fn credit_model_examples_through_the_core() {
    let w = world();
    let p = policy();
    let cases = [
        ("alice", None),                                         // pre-pay with money
        ("bob", Some((402, RefusalCause::InsufficientCredit))),  // pre-pay at exactly 0
        ("tiny", None),                                          // available 0.0001
        ("carol", None),                                         // post-pay -42 of 100
        ("dave", Some((402, RefusalCause::InsufficientCredit))), // buffer: balance 5, limit -5
        ("off", Some((403, RefusalCause::AccountDisabled))),
        ("nobody", Some((403, RefusalCause::UnknownAccount))),
    ];
    for (user, want) in cases {
        let m = invite(user, &format!("c-{user}"), "");
        let o = run(&w, &p, &m, CALLER);
        match want {
            None => {
                let (to, _) = fwd(&o);
                assert_eq!(to, sa(SWITCH), "{user}");
                assert!(
                    matches!(o.event, Event::Admitted { .. }),
                    "{user}: {:?}",
                    o.event
                );
            }
            Some((code, cause)) => {
                let (_, r) = reply(&o);
                assert_eq!(status(&r), code, "{user}");
                assert!(
                    matches!(o.event, Event::Refused { cause: c, .. } if c == cause),
                    "{user}: {:?}",
                    o.event
                );
            }
        }
    }
}

// --- SPEC section 6: forwarding a new INVITE -------------------------------------------------

#[test]
fn admitted_invite_is_forwarded_with_our_edits_only() {
    let w = world();
    let p = policy();
    let m = invite("alice", "a1", "X-Unknown: Keep  This  ;odd\r\n");
    let o = run(&w, &p, &m, CALLER);
    let (to, f) = fwd(&o);
    assert_eq!(to, sa(SWITCH));
    let vias = hdr(&f, "via");
    assert_eq!(vias.len(), 2);
    assert!(
        vias[0].starts_with("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcg"),
        "{}",
        vias[0]
    );
    assert_eq!(param(vias[1], "rport"), Some("40000"));
    assert_eq!(param(vias[1], "received"), Some("127.0.0.1"));
    assert_eq!(hdr(&f, "max-forwards"), ["69"]);
    let rr = hdr(&f, "record-route");
    assert_eq!(rr.len(), 1);
    assert!(
        rr[0].starts_with("<sip:127.0.0.1:5060;lr;cgt="),
        "{}",
        rr[0]
    );
    // Everything else byte for byte, body included.
    assert!(f.contains("X-Unknown: Keep  This  ;odd\r\n"));
    assert!(f.ends_with("\r\n\r\nv=0\n"));
    let orig = text(&m);
    let stripped: Vec<&str> = f
        .split("\r\n")
        .filter(|l| !l.starts_with("Record-Route") && !l.contains("z9hG4bKcg"))
        .collect();
    let orig_lines: Vec<&str> = orig.split("\r\n").collect();
    assert_eq!(stripped.len(), orig_lines.len());
    for (a, b) in stripped.iter().zip(orig_lines.iter()) {
        if !b.starts_with("Via") && !b.starts_with("Max-Forwards") {
            assert_eq!(a, b);
        }
    }
}

#[test]
fn response_is_relayed_with_our_via_removed() {
    let w = world();
    let p = policy();
    let m = invite("alice", "r1", "");
    let (_, f) = fwd(&run(&w, &p, &m, CALLER));
    let resp = switch_response(&f, 200, Some("sw"));
    let o = run(&w, &p, &resp, SWITCH);
    let (to, r) = fwd(&o);
    assert_eq!(to, sa(CALLER), "rport/received route the response back");
    assert_eq!(o.event, Event::Passed(PassKind::Response));
    let vias = hdr(&r, "via");
    assert_eq!(vias.len(), 1);
    assert!(vias[0].contains("branch=z9hG4bK-r1"));
    // Without rport: received + sent-by port.
    let m2 = text(&invite("alice", "r2", ""))
        .replace(";rport", "")
        .replace("127.0.0.1:40000;", "10.9.9.9:5070;");
    let (_, f2) = fwd(&run(&w, &p, m2.as_bytes(), CALLER));
    let (to2, _) = fwd(&run(&w, &p, &switch_response(&f2, 180, Some("sw")), SWITCH));
    assert_eq!(to2, sa("127.0.0.1:5070"));
}

#[test]
fn response_with_comma_joined_vias() {
    let w = world();
    let p = policy();
    let m = invite("alice", "cj", "");
    let (_, f) = fwd(&run(&w, &p, &m, CALLER));
    // The switch joins both Vias on one line.
    let vias = hdr(&f, "via");
    let joined = format!("Via: {}, {}\r\n", vias[0], vias[1]);
    let resp = text(&switch_response(&f, 200, Some("x")));
    let mut lines: Vec<String> = resp.split("\r\n").map(str::to_string).collect();
    lines.retain(|l| !l.starts_with("Via"));
    lines.insert(1, joined.trim_end().to_string());
    let resp = lines.join("\r\n");
    let (to, r) = fwd(&run(&w, &p, resp.as_bytes(), SWITCH));
    assert_eq!(to, sa(CALLER));
    assert_eq!(hdr(&r, "via"), [vias[1]]);
}

#[test]
fn forged_and_stray_responses_are_dropped() {
    let w = world();
    let p = policy();
    let m = invite("alice", "fg", "");
    let (_, f) = fwd(&run(&w, &p, &m, CALLER));
    let good = text(&switch_response(&f, 200, Some("t")));
    let our_branch = param(hdr(&f, "via")[0], "branch").unwrap().to_string();
    let cases: Vec<(String, DropReason)> = vec![
        // Top Via is somebody else's.
        (
            good.replacen("127.0.0.1:5060;branch", "192.0.2.1:5060;branch", 1),
            DropReason::NotOurVia,
        ),
        // Our address, a branch of our shape but a wrong MAC.
        (
            good.replace(
                &our_branch,
                &format!("{}0000000000000000{}", &our_branch[..9], &our_branch[25..]),
            ),
            DropReason::NotOurVia,
        ),
        // Our Via, but the caller's Via below was altered (the MAC covers its branch).
        (
            good.replace("z9hG4bK-fg", "z9hG4bK-other"),
            DropReason::NotOurVia,
        ),
        // Only our Via.
        (
            good.split("\r\n")
                .filter(|l| !(l.starts_with("Via") && l.contains("z9hG4bK-fg")))
                .collect::<Vec<_>>()
                .join("\r\n"),
            DropReason::NoNextVia,
        ),
        (
            "SIP/2.0 200 OK\r\nCall-ID: x\r\n\r\n".into(),
            DropReason::MalformedResponse,
        ),
    ];
    for (msg, want) in cases {
        let o = run(&w, &p, msg.as_bytes(), SWITCH);
        assert_eq!(o.event, Event::Dropped(want), "{msg}");
        assert_eq!(o.action, Action::Drop);
    }
    // RFC 4475 bcast: a response routed to a broadcast address is never sent.
    let bc =
        text(&invite("alice", "bc", "")).replace("127.0.0.1:40000;rport;", "255.255.255.255:5060;");
    let (_, f) = fwd(&run(&w, &p, bc.as_bytes(), "255.255.255.255:5060"));
    let msg = switch_response(&f, 200, None);
    let o = run(&w, &p, &msg, SWITCH);
    assert_eq!(o.event, Event::Dropped(DropReason::BadDestination));
}

#[test]
fn branch_is_deterministic_for_retransmission_cancel_and_ack() {
    let w = world();
    let p = policy();
    let m = invite("alice", "b1", "");
    let (_, f1) = fwd(&run(&w, &p, &m, CALLER));
    let (_, f2) = fwd(&run(&w, &p, &m, CALLER));
    let b = |f: &str| param(hdr(f, "via")[0], "branch").unwrap().to_string();
    assert_eq!(b(&f1), b(&f2), "retransmission");
    let cancel = text(&m)
        .replace("INVITE sip", "CANCEL sip")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
        .replace("Content-Type: application/sdp\r\n", "")
        .replace(
            "Content-Length: 4\r\n\r\nv=0\n",
            "Content-Length: 0\r\n\r\n",
        );
    let o = run(&w, &p, cancel.as_bytes(), CALLER);
    assert_eq!(o.event, Event::Passed(PassKind::Cancel));
    let (to, fc) = fwd(&o);
    assert_eq!(to, sa(SWITCH));
    assert_eq!(b(&fc), b(&f1), "CANCEL carries the INVITE's branch");
    let ack = cancel
        .replace("CANCEL sip", "ACK sip")
        .replace("CSeq: 1 CANCEL", "CSeq: 1 ACK")
        .replace(
            "To: <sip:+4915112345@example.com>",
            "To: <sip:+4915112345@example.com>;tag=sw487",
        );
    let o = run(&w, &p, ack.as_bytes(), CALLER);
    assert_eq!(o.event, Event::Passed(PassKind::Ack));
    assert_eq!(
        b(&fwd(&o).1),
        b(&f1),
        "ACK of a non-2xx carries the INVITE's branch"
    );
    // Another call gets another branch.
    let (_, f3) = fwd(&run(&w, &p, &invite("alice", "b2", ""), CALLER));
    assert_ne!(b(&f3), b(&f1));
}

#[test]
fn max_forwards_rules() {
    let w = world();
    let p = policy();
    let base = text(&invite("alice", "mf", ""));
    let (_, r) = reply(&run(
        &w,
        &p,
        base.replace("Max-Forwards: 70", "Max-Forwards: 0")
            .as_bytes(),
        CALLER,
    ));
    assert_eq!(status(&r), 483);
    let (_, r) = reply(&run(
        &w,
        &p,
        base.replace("Max-Forwards: 70", "Max-Forwards : 00")
            .as_bytes(),
        CALLER,
    ));
    assert_eq!(status(&r), 483);
    let (_, f) = fwd(&run(
        &w,
        &p,
        base.replace("Max-Forwards: 70", "Max-Forwards: 0068")
            .as_bytes(),
        CALLER,
    ));
    assert_eq!(hdr(&f, "max-forwards"), ["67"]);
    let (_, f) = fwd(&run(
        &w,
        &p,
        base.replace("Max-Forwards: 70\r\n", "").as_bytes(),
        CALLER,
    ));
    assert_eq!(hdr(&f, "max-forwards"), ["69"], "missing counts as 70");
    let (_, r) = reply(&run(
        &w,
        &p,
        base.replace("Max-Forwards: 70", "Max-Forwards: ten")
            .as_bytes(),
        CALLER,
    ));
    assert_eq!(status(&r), 400);
    // An ACK with Max-Forwards 0 cannot be answered: dropped.
    let ack = base
        .replace("INVITE sip", "ACK sip")
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(
        run(&w, &p, ack.as_bytes(), CALLER).event,
        Event::Dropped(DropReason::AckRejected)
    );
}

#[test]
fn loop_is_detected_482() {
    let w = world();
    let p = policy();
    let (_, f) = fwd(&run(&w, &p, &invite("alice", "lp", ""), CALLER));
    // The switch sends the same request straight back (its own Via on top).
    let back = f.replacen(
        "Via: ",
        "Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKsw1\r\nVia: ",
        1,
    );
    let (_, r) = reply(&run(&w, &p, back.as_bytes(), SWITCH));
    assert_eq!(status(&r), 482);
    // A spiral (Request-URI changed) is not a loop.
    let spiral = back.replace(
        "INVITE sip:+4915112345@127.0.0.1 SIP/2.0",
        "INVITE sip:bob@127.0.0.9 SIP/2.0",
    );
    let o = run(&w, &p, spiral.as_bytes(), SWITCH);
    assert_eq!(fwd(&o).0, sa("127.0.0.9:5060"));
}

#[test]
fn refusal_is_a_proper_stateless_response_and_its_ack_is_absorbed() {
    let w = world();
    let p = policy();
    let m = invite("bob", "rf", "");
    let o = run(&w, &p, &m, CALLER);
    let (to, r) = reply(&o);
    assert_eq!(to, sa(CALLER));
    assert!(r.starts_with("SIP/2.0 402 Payment Required\r\n"));
    assert_eq!(hdr(&r, "via").len(), 1);
    assert_eq!(param(hdr(&r, "via")[0], "received"), Some("127.0.0.1"));
    assert_eq!(hdr(&r, "call-id"), ["rf@example.com"]);
    assert_eq!(hdr(&r, "cseq"), ["1 INVITE"]);
    assert_eq!(
        hdr(&r, "reason"),
        ["SIP;cause=402;text=\"insufficient_credit\""]
    );
    let to_h = hdr(&r, "to")[0].to_string();
    let tag = param(&to_h, "tag").unwrap().to_string();
    assert!(tag.starts_with("cg"));
    // Retransmission: identical reply.
    assert_eq!(reply(&run(&w, &p, &m, CALLER)).1, r);
    // The ACK (same branch, our To-tag) is absorbed.
    let ack = text(&m)
        .replace("INVITE sip", "ACK sip")
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace("To: <sip:+4915112345@example.com>", &format!("To: {to_h}"));
    let o = run(&w, &p, ack.as_bytes(), CALLER);
    assert_eq!(o.event, Event::Dropped(DropReason::AckAbsorbed));
    // An ACK with a tag that is not ours is an ordinary ACK and goes upstream.
    let other = ack.replace(&tag, "cg0000000000000000");
    assert_eq!(
        run(&w, &p, other.as_bytes(), CALLER).event,
        Event::Passed(PassKind::Ack)
    );
}

#[test]
fn reply_codes_and_retry_after_come_from_config() {
    let w = world();
    let mut c = config();
    c.reply.insufficient_credit.code = 403;
    c.reply.insufficient_credit.reason = "No Credit Left".into();
    c.reply.insufficient_credit.retry_after = Some(Duration::from_secs(60));
    let p = policy_from(&c);
    let (_, r) = reply(&run(&w, &p, &invite("bob", "cf", ""), CALLER));
    assert!(r.starts_with("SIP/2.0 403 No Credit Left\r\n"), "{r}");
    assert_eq!(hdr(&r, "retry-after"), ["60"]);
}

// --- In-dialog, Route token, upstream traffic ------------------------------------------------

/// Runs an admitted call to its 200 and returns (forwarded INVITE, 200 as the caller got it).
fn established(w: &World, p: &Policy, user: &str, call: &str) -> (String, String) {
    let (_, f) = fwd(&run(w, p, &invite(user, call, ""), CALLER));
    let (_, ok) = fwd(&run(
        w,
        p,
        &switch_response(&f, 200, Some("sw-tag")),
        SWITCH,
    ));
    (f, ok)
}

fn in_dialog(method: &str, call: &str, user: &str, route: &str, cseq: u32) -> Vec<u8> {
    format!(
        "{method} sip:switch@127.0.0.2:5080 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK-{method}-{call}\r\n\
         Max-Forwards: 70\r\n\
         {route}\
         From: <sip:{user}@example.com>;tag=ft-{call}\r\n\
         To: <sip:+4915112345@example.com>;tag=sw-tag\r\n\
         Call-ID: {call}@example.com\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn in_dialog_requests_pass_after_the_account_ran_dry() {
    let w = world();
    let p = policy();
    let (_, ok) = established(&w, &p, "alice", "dl");
    let rr = hdr(&ok, "record-route")[0].to_string();
    // Alice runs dry.
    w.snap.upsert(acct("alice", "0", "0"));
    let route = format!("Route: {rr}\r\n");
    for (method, cseq) in [("INVITE", 2), ("BYE", 3)] {
        let m = in_dialog(method, "dl", "alice", &route, cseq);
        let o = run(&w, &p, &m, CALLER);
        assert_eq!(o.event, Event::Passed(PassKind::InDialog), "{method}");
        let (to, f) = fwd(&o);
        assert_eq!(to, sa(SWITCH));
        assert!(hdr(&f, "route").is_empty(), "our Route is popped");
    }
    // The same re-INVITE without creditgate's Route token is a new call for credit purposes.
    let forged = in_dialog("INVITE", "dl", "alice", "", 4);
    let (_, r) = reply(&run(&w, &p, &forged, CALLER));
    assert_eq!(status(&r), 402);
    assert_eq!(
        param(hdr(&r, "to")[0], "tag"),
        Some("sw-tag"),
        "an existing To-tag is kept"
    );
    // A token of another dialog does not help.
    let other = in_dialog("INVITE", "dl2", "alice", &route, 2);
    assert_eq!(status(&reply(&run(&w, &p, &other, CALLER)).1), 402);
    // A BYE without token is not a check method: forwarded as an out-of-dialog request
    // (`forward_other_methods = true`), not as an in-dialog one.
    let bye = in_dialog("BYE", "dl", "alice", "", 5);
    let o = run(&w, &p, &bye, CALLER);
    assert_eq!(o.event, Event::Passed(PassKind::OtherMethod));
    assert!(matches!(o.action, Action::Forward { .. }));
}

#[test]
fn route_pop_keeps_the_rest_of_the_route_set() {
    let w = world();
    let p = policy();
    let (_, ok) = established(&w, &p, "alice", "rs");
    let rr = hdr(&ok, "record-route")[0].to_string();
    let route = format!("Route: {rr}, <sip:127.0.0.2:5080;lr>\r\n");
    let (to, f) = fwd(&run(
        &w,
        &p,
        &in_dialog("BYE", "rs", "alice", &route, 2),
        CALLER,
    ));
    assert_eq!(to, sa(SWITCH));
    assert_eq!(hdr(&f, "route"), ["<sip:127.0.0.2:5080;lr>"]);
}

#[test]
fn requests_from_upstream_are_never_checked_and_follow_route_or_ruri() {
    let w = world();
    let p = policy();
    // The switch calls a customer: INVITE by Request-URI, From user bob (dry) is irrelevant.
    let m = b"INVITE sip:alice@127.0.0.1:40000 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKsw-up1\r\n\
From: <sip:bob@example.com>;tag=sw1\r\n\
To: <sip:alice@example.com>\r\n\
Call-ID: up1@switch\r\n\
CSeq: 7 INVITE\r\n\
Content-Length: 0\r\n\r\n";
    let o = run(&w, &p, m, "127.0.0.2:6000");
    assert_eq!(o.event, Event::Passed(PassKind::FromUpstream));
    let (to, f) = fwd(&o);
    assert_eq!(to, sa(CALLER));
    assert_eq!(
        hdr(&f, "record-route").len(),
        1,
        "dialogs from the switch are record-routed too"
    );
    // A name-based Request-URI cannot be resolved statelessly: 478.
    let m2 = text(m).replace("sip:alice@127.0.0.1:40000", "sip:alice@pbx.example.com");
    assert_eq!(status(&reply(&run(&w, &p, m2.as_bytes(), SWITCH)).1), 478);
}

/// The Route token covers the Call-ID and the tag of the dialog's initiator, so it is valid
/// whichever side sent the request: the initiator's tag is in From one way and in To the other.
#[test]
fn route_token_is_valid_in_both_directions_of_a_dialog() {
    let w = world();
    let p = policy();

    // Case A: a customer's call. Alice's in-dialog requests carry her tag in From.
    let (_, ok) = established(&w, &p, "alice", "bd");
    let rr = hdr(&ok, "record-route")[0].to_string();
    w.snap.upsert(acct("alice", "0", "0"));
    let route = format!("Route: {rr}\r\n");
    let m = in_dialog("INVITE", "bd", "alice", &route, 2);
    let o = run(&w, &p, &m, CALLER);
    assert_eq!(o.event, Event::Passed(PassKind::InDialog));
    assert_eq!(fwd(&o).0, sa(SWITCH));
    // The switch's requests in the same dialog carry alice's tag in To; our Route is popped and
    // the Request-URI (alice's Contact) is the next hop, not creditgate itself.
    for (method, cseq) in [("INVITE", 1), ("BYE", 2)] {
        let m = format!(
            "{method} sip:alice@127.0.0.1:40000 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKsw-{method}-bd\r\n\
             Max-Forwards: 70\r\n\
             {route}\
             From: <sip:+4915112345@example.com>;tag=sw-tag\r\n\
             To: \"Caller\" <sip:alice@example.com>;tag=ft-bd\r\n\
             Call-ID: bd@example.com\r\n\
             CSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let o = run(&w, &p, m.as_bytes(), SWITCH);
        assert_eq!(o.event, Event::Passed(PassKind::FromUpstream), "{method}");
        let (to, f) = fwd(&o);
        assert_eq!(to, sa(CALLER), "{method}");
        assert!(hdr(&f, "route").is_empty(), "{method}: our Route is popped");
        assert!(
            hdr(&f, "via")[0].contains("branch=z9hG4bKcg"),
            "{method}: our Via"
        );
    }

    // Case B: the switch calls bob (dry). Its INVITE is record-routed with a token over the
    // switch's tag, which is in To when bob sends a request back.
    let sw_invite = b"INVITE sip:bob@127.0.0.1:40000 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKsw-cb\r\n\
Max-Forwards: 70\r\n\
From: <sip:+4930111@switch.example>;tag=sw-init\r\n\
To: <sip:bob@example.com>\r\n\
Call-ID: cb@switch\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:gw@127.0.0.2:5080>\r\n\
Content-Length: 0\r\n\r\n";
    let o = run(&w, &p, sw_invite, SWITCH);
    assert_eq!(o.event, Event::Passed(PassKind::FromUpstream));
    let (to, f) = fwd(&o);
    assert_eq!(to, sa(CALLER));
    // Bob's 200 goes back to the switch with the Record-Route.
    let resp = switch_response(&f, 200, Some("bob-tag"));
    let o = run(&w, &p, &resp, CALLER);
    let (to, ok) = fwd(&o);
    assert_eq!(to, sa(SWITCH));
    let rr = hdr(&ok, "record-route")[0].to_string();
    assert!(rr.starts_with("<sip:127.0.0.1:5060;lr;cgt="), "{rr}");
    let from_bob = |method: &str, to_tag: &str, route: &str, cseq: u32| {
        format!(
            "{method} sip:gw@127.0.0.2:5080 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK-cb-{method}-{cseq}\r\n\
             Max-Forwards: 70\r\n\
             Route: {route}\r\n\
             From: <sip:bob@example.com>;tag=bob-tag\r\n\
             To: <sip:+4930111@switch.example>;tag={to_tag}\r\n\
             Call-ID: cb@switch\r\n\
             CSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    for (method, cseq) in [("INVITE", 1), ("BYE", 2)] {
        let m = from_bob(method, "sw-init", &rr, cseq);
        let o = run(&w, &p, &m, CALLER);
        assert_eq!(o.event, Event::Passed(PassKind::InDialog), "{method}");
        let (to, f) = fwd(&o);
        assert_eq!(to, sa(SWITCH), "{method}");
        assert!(hdr(&f, "route").is_empty(), "{method}: our Route is popped");
    }
    // The token binds the initiator's tag: another To-tag, or an altered token, makes bob's
    // INVITE a new call of a dry account.
    let last = rr.len() - 2;
    let flipped = if &rr[last..=last] == "0" { "1" } else { "0" };
    let bad_token = format!("{}{flipped}>", &rr[..last]);
    for (to_tag, route) in [("sw-other", rr.as_str()), ("sw-init", bad_token.as_str())] {
        let m = from_bob("INVITE", to_tag, route, 3);
        let o = run(&w, &p, &m, CALLER);
        assert_eq!(status(&reply(&o).1), 402, "To-tag {to_tag}, Route {route}");
    }
}

#[test]
fn customer_requests_only_ever_reach_an_upstream() {
    let w = world();
    let mut c = config();
    c.sip.upstream = vec![
        sa("127.0.0.2:5080"),
        sa("127.0.0.3:5080"),
        sa("127.0.0.4:5080"),
    ];
    let p = policy_from(&c);
    // A Route naming a third party is not followed (no open relay).
    let m = in_dialog(
        "BYE",
        "or",
        "alice",
        "Route: <sip:203.0.113.9:5060;lr>\r\n",
        2,
    );
    let (to, _) = fwd(&run(&w, &p, &m, CALLER));
    assert!(c.sip.upstream.contains(&to));
    // Upstream choice is per Call-ID and stable; calls spread over the upstreams.
    let mut seen = std::collections::HashSet::new();
    for i in 0..60 {
        let m = invite("alice", &format!("spread{i}"), "");
        let a = fwd(&run(&w, &p, &m, CALLER)).0;
        assert_eq!(a, fwd(&run(&w, &p, &m, CALLER)).0);
        seen.insert(a);
    }
    assert_eq!(seen.len(), 3);
}

#[test]
fn options_ping_is_answered_200() {
    let w = world();
    let p = policy();
    let m = b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKping\r\nFrom: <sip:lb@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: ping1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let o = run(&w, &p, m, CALLER);
    assert_eq!(o.event, Event::Answered(Answer::OptionsPing));
    assert!(reply(&o).1.starts_with("SIP/2.0 200 OK"));
    // With a user part it is a request for somebody else: forwarded unchecked.
    let m2 = text(m).replace(
        "OPTIONS sip:127.0.0.1:5060",
        "OPTIONS sip:bob@127.0.0.1:5060",
    );
    assert_eq!(
        run(&w, &p, m2.as_bytes(), CALLER).event,
        Event::Passed(PassKind::OtherMethod)
    );
}

// --- Config-driven paths (SPEC section 3, [sip]) ----------------------------------------------

/// `invite(user, call, "")` turned into an out-of-dialog request of `method` (start line and
/// CSeq rewritten; everything else, body included, as it was).
fn as_method(m: &[u8], method: &str) -> Vec<u8> {
    text(m)
        .replacen("INVITE ", &format!("{method} "), 1)
        .replace("CSeq: 1 INVITE\r\n", &format!("CSeq: 1 {method}\r\n"))
        .into_bytes()
}

#[test]
fn trusted_networks_are_never_credit_checked() {
    let w = world();
    let mut c = config();
    c.sip.trusted = ["198.51.100.0/24", "203.0.113.9/32", "2001:db8:77::/48"]
        .iter()
        .map(|n| n.parse().unwrap())
        .collect();
    let p = policy_from(&c);
    // bob is dry; his INVITE, addressed to a customer's PBX, comes from each source.
    let m = text(&invite("bob", "tr", "")).replace(
        "INVITE sip:+4915112345@127.0.0.1 SIP/2.0",
        "INVITE sip:+4915112345@192.0.2.10:5070 SIP/2.0",
    );
    let cases = [
        ("198.51.100.7:5060", true),
        ("198.51.100.254:6000", true),
        ("[::ffff:198.51.100.8]:5060", true), // v4-mapped, as a dual-stack socket reports it
        ("203.0.113.9:5060", true),
        ("[2001:db8:77::5]:5060", true),
        ("198.51.101.7:5060", false),
        ("203.0.113.10:5060", false),
        ("[2001:db8:78::5]:5060", false),
        (CALLER, false),
    ];
    for (source, trusted) in cases {
        let o = run(&w, &p, m.as_bytes(), source);
        if trusted {
            assert_eq!(o.event, Event::Passed(PassKind::FromUpstream), "{source}");
            let (to, f) = fwd(&o);
            assert_eq!(to, sa("192.0.2.10:5070"), "{source}: by Request-URI");
            assert!(hdr(&f, "via")[0].contains("branch=z9hG4bKcg"), "{source}");
        } else {
            assert!(
                matches!(
                    o.event,
                    Event::Refused {
                        cause: RefusalCause::InsufficientCredit,
                        ..
                    }
                ),
                "{source}: {:?}",
                o.event
            );
            assert_eq!(status(&reply(&o).1), 402, "{source}");
        }
    }
    // Without the setting the same sources are customers.
    let o = run(&w, &policy(), m.as_bytes(), "198.51.100.7:5060");
    assert_eq!(status(&reply(&o).1), 402);
}

#[test]
fn forward_other_methods_false_refuses_other_out_of_dialog_methods() {
    let w = world();
    let mut c = config();
    c.sip.forward_other_methods = false;
    let p = policy_from(&c);
    let options_user = text(&as_method(&invite("alice", "fo-o", ""), "OPTIONS"))
        .replacen("sip:+4915112345@127.0.0.1", "sip:bob@127.0.0.1", 1)
        .into_bytes();
    let ping = b"OPTIONS sip:127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKfo-p\r\nFrom: <sip:lb@example.com>;tag=1\r\nTo: <sip:127.0.0.1>\r\nCall-ID: fo-p\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n".to_vec();
    let cancel = text(&as_method(&invite("alice", "fo-c", ""), "CANCEL")).into_bytes();
    let sw_message = text(&as_method(&invite("bob", "fo-s", ""), "MESSAGE"))
        .replace(
            "Via: SIP/2.0/UDP 127.0.0.1:40000;rport;",
            "Via: SIP/2.0/UDP 127.0.0.2:5080;",
        )
        .replacen("sip:+4915112345@127.0.0.1", "sip:bob@127.0.0.1:40000", 1)
        .into_bytes();
    // (what, request, source, expected event)
    let cases: Vec<(&str, Vec<u8>, &str, Event<'static>)> = vec![
        (
            "MESSAGE",
            as_method(&invite("alice", "fo-m", ""), "MESSAGE"),
            CALLER,
            Event::Answered(Answer::MethodNotAllowed),
        ),
        (
            "REGISTER",
            as_method(&invite("alice", "fo-r", ""), "REGISTER"),
            CALLER,
            Event::Answered(Answer::MethodNotAllowed),
        ),
        (
            "OPTIONS to a user",
            options_user,
            CALLER,
            Event::Answered(Answer::MethodNotAllowed),
        ),
        (
            "OPTIONS ping",
            ping,
            CALLER,
            Event::Answered(Answer::OptionsPing),
        ),
        // A To-tag without creditgate's dialog token is no free pass (issue 9 item 4): the
        // out-of-dialog rules apply (this case expected a pass before).
        (
            "BYE with a To-tag but no token",
            in_dialog("BYE", "fo-b", "bob", "", 2),
            CALLER,
            Event::Answered(Answer::MethodNotAllowed),
        ),
        ("CANCEL", cancel, CALLER, Event::Passed(PassKind::Cancel)),
        (
            "MESSAGE from the switch",
            sw_message,
            SWITCH,
            Event::Passed(PassKind::FromUpstream),
        ),
    ];
    for (what, m, source, want) in cases {
        let o = run(&w, &p, &m, source);
        assert_eq!(o.event, want, "{what}");
        match want {
            Event::Answered(Answer::MethodNotAllowed) => {
                let (to, r) = reply(&o);
                assert_eq!(to, sa(CALLER), "{what}");
                assert!(
                    r.starts_with("SIP/2.0 403 Method not forwarded\r\n"),
                    "{what}: {r}"
                );
            }
            Event::Answered(_) => assert_eq!(status(&reply(&o).1), 200, "{what}"),
            _ => assert!(matches!(o.action, Action::Forward { .. }), "{what}"),
        }
    }
    // INVITE still goes through the credit check.
    let m = invite("alice", "fo-i", "");
    let o = run(&w, &p, &m, CALLER);
    assert!(matches!(o.event, Event::Admitted { .. }), "{:?}", o.event);
    assert_eq!(fwd(&o).0, sa(SWITCH));
    let m = invite("bob", "fo-j", "");
    let o = run(&w, &p, &m, CALLER);
    assert_eq!(status(&reply(&o).1), 402);
    // The default forwards the same MESSAGE unchecked.
    let m = as_method(&invite("alice", "fo-m", ""), "MESSAGE");
    let o = run(&w, &policy(), &m, CALLER);
    assert_eq!(o.event, Event::Passed(PassKind::OtherMethod));
    assert_eq!(fwd(&o).0, sa(SWITCH));
}

#[test]
fn record_route_false_forwards_without_record_route() {
    let w = world();
    let sw_invite = b"INVITE sip:alice@127.0.0.1:40000 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKsw-rr\r\n\
From: <sip:gw@example.com>;tag=sw-rr\r\n\
To: <sip:alice@example.com>\r\n\
Call-ID: rr@switch\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n";
    for record_route in [true, false] {
        let mut c = config();
        c.sip.record_route = record_route;
        let p = policy_from(&c);
        let m = invite("alice", "rr", "");
        let o = run(&w, &p, &m, CALLER);
        assert!(matches!(o.event, Event::Admitted { .. }), "{:?}", o.event);
        let (to, f) = fwd(&o);
        assert_eq!(to, sa(SWITCH));
        assert!(hdr(&f, "via")[0].contains("branch=z9hG4bKcg"), "{f}");
        assert_eq!(hdr(&f, "max-forwards"), ["69"]);
        assert_eq!(
            hdr(&f, "record-route").len(),
            usize::from(record_route),
            "record_route = {record_route}: {f}"
        );
        // Dialogs the switch starts follow the same setting.
        let (to, f) = fwd(&run(&w, &p, sw_invite, SWITCH));
        assert_eq!(to, sa(CALLER));
        assert_eq!(
            hdr(&f, "record-route").len(),
            usize::from(record_route),
            "record_route = {record_route}, from the switch: {f}"
        );
    }
}

/// An in-dialog INVITE without creditgate's Route token is credit-checked as a new call; when
/// the account has credit it is forwarded, but not record-routed: its To-tag says the dialog
/// (and its route set) already exists, and RFC 3261 12.2.1.2 does not change a route set on a
/// target refresh. (The `dialog` fuzz target once expected a Record-Route on every admitted
/// INVITE: crash-45238fe7, a folded To with `tag = 98asjd8`.)
#[test]
fn admitted_in_dialog_invite_without_token_is_not_record_routed() {
    let w = world();
    let p = policy();
    let m = in_dialog("INVITE", "notoken", "alice", "", 2);
    let o = run(&w, &p, &m, CALLER);
    assert!(matches!(o.event, Event::Admitted { .. }), "{:?}", o.event);
    let (to, f) = fwd(&o);
    assert_eq!(to, sa(SWITCH));
    assert!(hdr(&f, "record-route").is_empty(), "{f}");
    // The same with the tag folded onto a continuation line and spaced around '='.
    let folded = String::from_utf8(m)
        .unwrap()
        .replace(">;tag=sw-tag\r\n", ">\r\n  ;\r\n  tag = sw-tag\r\n")
        .into_bytes();
    assert!(text(&folded).contains("tag = sw-tag"));
    let o = run(&w, &p, &folded, CALLER);
    assert!(matches!(o.event, Event::Admitted { .. }), "{:?}", o.event);
    assert!(hdr(&fwd(&o).1, "record-route").is_empty());
}

#[test]
fn check_methods_decide_which_out_of_dialog_methods_need_credit() {
    let w = world();
    let default = policy();
    let mut c = config();
    c.sip.check_methods = vec!["INVITE".into(), "MESSAGE".into()];
    let with_message = policy_from(&c);
    let req = |user: &str, method: &str| {
        as_method(&invite(user, &format!("cm-{user}-{method}"), ""), method)
    };
    // (policy, its name, user, method, refused with 402 rather than forwarded)
    let cases = [
        (&default, "default", "bob", "MESSAGE", false),
        (&default, "default", "bob", "INVITE", true),
        (&with_message, "INVITE+MESSAGE", "bob", "MESSAGE", true),
        (&with_message, "INVITE+MESSAGE", "alice", "MESSAGE", false),
        (&with_message, "INVITE+MESSAGE", "bob", "INVITE", true),
        (&with_message, "INVITE+MESSAGE", "bob", "REGISTER", false),
    ];
    for (p, name, user, method, refused) in cases {
        let m = req(user, method);
        let o = run(&w, p, &m, CALLER);
        let what = format!("{name}: {user} {method}");
        if refused {
            assert!(
                matches!(
                    o.event,
                    Event::Refused {
                        cause: RefusalCause::InsufficientCredit,
                        ..
                    }
                ),
                "{what}: {:?}",
                o.event
            );
            let (_, r) = reply(&o);
            assert_eq!(status(&r), 402, "{what}");
            assert_eq!(hdr(&r, "cseq"), [format!("1 {method}")], "{what}");
        } else {
            let (to, _) = fwd(&o);
            assert_eq!(to, sa(SWITCH), "{what}");
        }
    }
    // A checked MESSAGE with credit counts as an admission, an unchecked one as a pass.
    assert!(matches!(
        run(&w, &with_message, &req("alice", "MESSAGE"), CALLER).event,
        Event::Admitted { .. }
    ));
    assert_eq!(
        run(&w, &default, &req("bob", "MESSAGE"), CALLER).event,
        Event::Passed(PassKind::OtherMethod)
    );
}

// --- Identification (SPEC section 4) ---------------------------------------------------------

#[test]
fn identification_rules_in_order() {
    let w = world();
    let p = policy();
    // source_ip first: the PBX's address wins over the From user.
    let msg = invite("bob", "id1", "");
    let o = run(&w, &p, &msg, "192.0.2.55:5060");
    assert!(
        matches!(&o.event, Event::Admitted { account: Some(a), .. } if a.as_str() == "pbx"),
        "{:?}",
        o.event
    );
    // header:X-Account-Id next.
    let msg = invite("nobody", "id2", "X-Account-Id: alice\r\n");
    let o = run(&w, &p, &msg, CALLER);
    assert!(matches!(&o.event, Event::Admitted { account: Some(a), .. } if a.as_str() == "alice"));
    // auth_user.
    let msg = invite(
        "nobody",
        "id3",
        "Proxy-Authorization: Digest realm=\"x\", username=\"carol\", nonce=\"n\"\r\n",
    );
    let o = run(&w, &p, &msg, CALLER);
    assert!(
        matches!(&o.event, Event::Admitted { account: Some(a), .. } if a.as_str() == "carol"),
        "{:?}",
        o.event
    );
    // from_user last; a header naming an unknown account falls through to the next rule.
    let msg = invite("bob", "id4", "X-Account-Id: ghost\r\n");
    let o = run(&w, &p, &msg, CALLER);
    assert!(matches!(
        &o.event,
        Event::Refused {
            cause: RefusalCause::InsufficientCredit,
            ..
        }
    ));
    // Only from_user configured: the header is ignored.
    let mut c = config();
    c.identify.order = vec![IdentifyRule::FromUser];
    let p2 = policy_from(&c);
    let msg = invite("bob", "id5", "X-Account-Id: alice\r\n");
    let o = run(&w, &p2, &msg, CALLER);
    assert!(matches!(&o.event, Event::Refused { .. }));
}

// --- Snapshot state ----------------------------------------------------------------------------

#[test]
fn no_snapshot_stale_and_dry_run() {
    let p = policy();
    let empty = World {
        snap: Snapshot::new(Instant::now()),
        t0: Instant::now(),
    };
    let (_, r) = reply(&run(&empty, &p, &invite("alice", "ns", ""), CALLER));
    assert_eq!(status(&r), 503);
    assert_eq!(hdr(&r, "retry-after"), ["30"]);
    let mut c = config();
    c.credit.on_no_snapshot = OnNoSnapshot::Admit;
    assert!(matches!(
        run(
            &empty,
            &policy_from(&c),
            &invite("alice", "ns2", ""),
            CALLER
        )
        .action,
        Action::Forward { .. }
    ));

    let w = world();
    let late = |p: &Policy, user: &str| {
        let m = invite(user, &format!("st-{user}"), "");
        let now = w.t0 + Duration::from_secs(301);
        let o = handle(
            Packet {
                data: &m,
                source: sa(CALLER),
                local: sa(CG),
                now,
                wall_secs: WALL,
            },
            &w.snap,
            p,
        );
        matches!(o.action, Action::Forward { .. })
    };
    assert!(late(&policy(), "alice"), "on_stale = serve keeps deciding");
    let mut c = config();
    c.credit.on_stale = OnStale::Reject;
    assert!(!late(&policy_from(&c), "alice"));
    c.credit.on_stale = OnStale::RejectPrepaid;
    assert!(
        !late(&policy_from(&c), "alice"),
        "pre-pay refused when stale"
    );
    assert!(
        late(&policy_from(&c), "carol"),
        "post-pay served when stale"
    );

    let mut c = config();
    c.credit.enforce = false;
    let msg = invite("bob", "dry", "");
    let o = run(&w, &policy_from(&c), &msg, CALLER);
    assert!(matches!(
        o.event,
        Event::WouldRefuse {
            cause: RefusalCause::InsufficientCredit,
            ..
        }
    ));
    assert!(matches!(o.action, Action::Forward { .. }));
}

// --- Malformed input ---------------------------------------------------------------------------

#[test]
fn malformed_requests_get_400_or_are_dropped() {
    let w = world();
    let p = policy();
    let good = text(&invite("alice", "mal", ""));
    let cases: Vec<(String, Option<u16>)> = vec![
        (good.replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS"), Some(400)),
        (good.replace("Call-ID: mal@example.com\r\n", ""), Some(400)),
        (
            good.replace(
                "Call-ID: mal@example.com\r\n",
                "Call-ID: a\r\nCall-ID: b\r\n",
            ),
            Some(400),
        ),
        (
            good.replace("Content-Length: 4", "Content-Length: 400"),
            Some(400),
        ),
        (
            good.replace(
                "Content-Length: 4",
                "Content-Length: 4\r\nContent-Length: 5",
            ),
            Some(400),
        ),
        (
            good.replace("From: \"Caller\"", "From: \"Caller"),
            Some(400),
        ),
        (
            good.replace(
                "INVITE sip:+4915112345@127.0.0.1 SIP/2.0",
                "INVITE sip:+4915112345@127.0.0.1 SIP/3.0",
            ),
            Some(505),
        ),
        (
            good.replace(
                "INVITE sip:+4915112345@127.0.0.1",
                "INVITE nobodyKnowsThisScheme:x",
            ),
            Some(416),
        ),
        (
            good.replace(
                "INVITE sip:+4915112345@127.0.0.1",
                "INVITE <sip:+4915112345@127.0.0.1>",
            ),
            Some(400),
        ),
        (
            good.replace(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nProxy-Require: foo\r\n",
            ),
            Some(420),
        ),
        (
            good.replace(
                "Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK-mal",
                "Via: SIP/2.0/UDP 192.0.2.15;;,;,,",
            ),
            Some(400),
        ),
        (good.replace("CSeq: 1 INVITE\r\n", ""), None),
        (good.split("\r\n\r\n").next().unwrap().to_string(), None),
        ("\u{0}\u{1}garbage".into(), None),
    ];
    for (m, want) in cases {
        let o = run(&w, &p, m.as_bytes(), CALLER);
        match want {
            Some(code) => assert_eq!(status(&reply(&o).1), code, "{m}"),
            None => assert!(matches!(o.event, Event::Dropped(_)), "{m}: {:?}", o.event),
        }
    }
    assert_eq!(
        run(&w, &p, b"\r\n\r\n", CALLER).event,
        Event::Dropped(DropReason::KeepAlive)
    );
    let (_, r) = reply(&run(
        &w,
        &p,
        good.replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS").as_bytes(),
        CALLER,
    ));
    assert!(r.starts_with("SIP/2.0 400 CSeq method does not match"));
}

#[test]
fn compact_forms_folding_and_latin1_are_handled_and_preserved() {
    let w = world();
    let p = policy();
    let m = b"INVITE sip:+4915112345@127.0.0.1 SIP/2.0\r\n\
v: SIP/2.0/UDP 127.0.0.1:40000\r\n ;branch=z9hG4bK-cmp ;rport\r\n\
Max-Forwards : 10\r\n\
f: \"Jos\xe9 M\xfcller\" <sip:alice@example.com>;tag=ft1\r\n\
t: <sip:+4915112345@example.com>\r\n\
i: cmp@example.com\r\n\
CSeq: 1 INVITE\r\n\
Subject: folded\r\n  subject\r\n\
l: 0\r\n\r\n";
    let o = run(&w, &p, m, CALLER);
    assert!(
        matches!(&o.event, Event::Admitted { account: Some(a), .. } if a.as_str() == "alice"),
        "{:?}",
        o.event
    );
    let (_, f) = fwd(&o);
    assert!(f.contains("v: SIP/2.0/UDP 127.0.0.1:40000\r\n ;branch=z9hG4bK-cmp ;rport=40000;received=127.0.0.1\r\n"), "{f}");
    assert!(f.contains("Max-Forwards : 9\r\n"));
    match &o.action {
        Action::Forward { bytes, .. } => assert!(bytes.windows(8).any(|x| x == b"Jos\xe9 M\xfcl")),
        _ => unreachable!(),
    }
    assert!(f.contains("Subject: folded\r\n  subject\r\n"));
    assert!(f.contains("i: cmp@example.com\r\n"));
}

#[test]
fn extra_octets_after_the_body_are_not_forwarded() {
    let w = world();
    let p = policy();
    let mut m = invite("alice", "dbl", "");
    m.extend_from_slice(b"INVITE sip:joe@example.com SIP/2.0\r\n\r\n");
    let (_, f) = fwd(&run(&w, &p, &m, CALLER));
    assert!(f.ends_with("\r\n\r\nv=0\n"));
}

#[test]
fn ipv6_listeners_and_upstreams_bridge_families() {
    let w = world();
    let mut c = config();
    c.sip.listen = vec![sa(CG), sa("[::1]:5060")];
    c.sip.upstream = vec![sa("[2001:db8::5]:5080")];
    let listeners = vec![
        Listener {
            bound: sa(CG),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 5060,
        },
        Listener {
            bound: sa("[::1]:5060"),
            advertised_host: "::1".into(),
            advertised_port: 5060,
        },
    ];
    let p = Policy::new(
        &c,
        Keys::new(b"unit-test-secret-unit-test-secret"),
        listeners,
    )
    .unwrap();
    // An IPv4 caller's INVITE goes to the IPv6 switch from the IPv6 socket, with an IPv6 Via.
    let m = invite("alice", "v6", "");
    let o = run(&w, &p, &m, CALLER);
    let Action::Forward { from, to, bytes } = &o.action else {
        panic!("{:?}", o.event)
    };
    assert_eq!((*from, *to), (sa("[::1]:5060"), sa("[2001:db8::5]:5080")));
    let f = text(bytes);
    assert!(
        hdr(&f, "via")[0].starts_with("SIP/2.0/UDP [::1]:5060;branch=z9hG4bKcg"),
        "{f}"
    );
    assert!(hdr(&f, "record-route")[0].starts_with("<sip:[::1]:5060;lr;cgt="));
    // The switch's response over IPv6 comes back to the IPv4 caller from the IPv4 socket.
    let resp = switch_response(&f, 200, Some("sw6"));
    let o = handle(
        Packet {
            data: &resp,
            source: sa("[2001:db8::5]:5080"),
            local: sa("[::1]:5060"),
            now: w.t0,
            wall_secs: WALL,
        },
        &w.snap,
        &p,
    );
    let Action::Forward { from, to, .. } = &o.action else {
        panic!("{:?}", o.event)
    };
    assert_eq!((*from, *to), (sa(CG), sa(CALLER)));
    // An IPv6 caller: received carries the bare IPv6 address; the reply goes back over IPv6.
    let m6 = text(&invite("bob", "v6b", ""))
        .replace("127.0.0.1:40000;rport", "[2001:db8::77]:40000;rport");
    let o = handle(
        Packet {
            data: m6.as_bytes(),
            source: sa("[2001:db8::77]:40000"),
            local: sa("[::1]:5060"),
            now: w.t0,
            wall_secs: WALL,
        },
        &w.snap,
        &p,
    );
    let (to, r) = reply(&o);
    assert_eq!(to, sa("[2001:db8::77]:40000"));
    assert_eq!(status(&r), 402);
    assert_eq!(param(hdr(&r, "via")[0], "received"), Some("2001:db8::77"));
    // The IPv6 upstream is trusted by its address.
    assert!(p.is_trusted("2001:db8::5".parse().unwrap()));
}

/// RFC 5118 4.2: an IPv6 reference must be bracketed in a SIP URI. A bare IPv6 address in the
/// Request-URI (or a Route) is a malformed URI: 400, never forwarded.
#[test]
fn bare_ipv6_request_uri_gets_400() {
    let w = world();
    let p = policy();
    for ruri in [
        "sip:2001:db8::10",
        "sip:user@2001:db8::10",
        "sip:fe80::1",
        "sip:db8::10",
        "sip:abc:12::1",
        "sip:1::1",
        "sip:::1",
        "sip:127.0.0.2:5080::1",
        "sip:2001:db8::10;transport=udp",
        "sip:user@::ffff:127.0.0.2",
        // maddr-param = "maddr=" host: the same rule applies to the address it names.
        "sip:alice@example.com;maddr=2001:db8::10",
        "sip:127.0.0.2:5080;maddr=::ffff:127.0.0.2",
        "sip:127.0.0.2;lr;maddr=fe80::1;transport=udp",
    ] {
        for method in ["REGISTER", "OPTIONS", "INVITE", "MESSAGE"] {
            let m = format!(
                "{method} {ruri} SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK-v6\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:alice@example.com>;tag=ft\r\n\
                 To: <sip:alice@example.com>\r\n\
                 Call-ID: v6@example.com\r\n\
                 CSeq: 1 {method}\r\n\
                 Content-Length: 0\r\n\r\n"
            );
            let o = run(&w, &p, m.as_bytes(), CALLER);
            let (to, r) = reply(&o);
            assert_eq!(to, sa(CALLER), "{method} {ruri}");
            assert!(
                r.starts_with("SIP/2.0 400 Malformed Request-URI\r\n"),
                "{method} {ruri}: {r}"
            );
        }
    }
    // The bracketed form (RFC 5118 4.1) is a well-formed URI.
    let m = as_method(&invite("alice", "v6ok", ""), "INVITE");
    let m = text(&m).replace(
        "sip:+4915112345@127.0.0.1",
        "sip:+4915112345@[2001:db8::10]",
    );
    let o = run(&w, &p, m.as_bytes(), CALLER);
    assert_eq!(fwd(&o).0, sa(SWITCH));
}

// --- Spirals (RFC 3261 16.3 step 4, 16.6 step 8) ---------------------------------------------

const ERIN: &str = "127.0.0.1:40002";

/// What a proxying switch does to a request it routes back through creditgate: its own Via on
/// top, and (`pop`) its own Route removed (the first Route line, which names it).
fn switch_relay(msg: &str, pop: bool) -> String {
    let mut out = String::new();
    let mut via_done = false;
    let mut route_done = !pop;
    for line in msg.split_inclusive("\r\n") {
        if !via_done && line.starts_with("Via:") {
            out.push_str("Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKsw-");
            out.push_str(&format!("{:x}\r\n", out.len() ^ msg.len()));
            via_done = true;
        }
        if !route_done && line.starts_with("Route:") {
            assert!(line.contains("127.0.0.2:5080"), "{line}");
            route_done = true;
            continue;
        }
        out.push_str(line);
    }
    out
}

/// A request inside the spiralled dialog: `from_user`/`from_tag` the sender, `to_tag` the
/// other side's tag, `routes` the route set in order, sent-by `via`.
#[allow(clippy::too_many_arguments)]
fn spiral_request(
    method: &str,
    ruri: &str,
    via: &str,
    routes: &[&str],
    from: (&str, &str),
    to: (&str, &str),
    cseq: u32,
    branch: &str,
) -> String {
    let mut m = format!(
        "{method} {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {via};rport;branch=z9hG4bK-{branch}\r\n\
         Max-Forwards: 70\r\n"
    );
    for r in routes {
        m.push_str(&format!("Route: {r}\r\n"));
    }
    m.push_str(&format!(
        "From: <sip:{}@example.com>;tag={}\r\n\
         To: <sip:{}@example.com>;tag={}\r\n\
         Call-ID: sp@example.com\r\n\
         CSeq: {cseq} {}\r\n\
         Content-Length: 0\r\n\r\n",
        from.0,
        from.1,
        to.0,
        to.1,
        if method == "ACK" { "ACK" } else { method }
    ));
    m
}

/// alice -> creditgate -> switch -> creditgate -> erin: every request of the dialog passes
/// creditgate twice with creditgate's Via already in it. The second pass is a spiral (the Route
/// set changed: creditgate's and the switch's entries were consumed), not a loop.
#[test]
fn spiral_through_the_switch_is_processed_and_only_a_true_loop_gets_482() {
    let w = world();
    let p = policy();
    // INVITE, first pass: admitted, to the switch.
    let (to, f1) = fwd(&run(&w, &p, &invite("alice", "sp", ""), CALLER));
    assert_eq!(to, sa(SWITCH));
    // The switch routes it to erin, who sits behind creditgate too.
    let back = switch_relay(&f1, false)
        .replacen(
            "INVITE sip:+4915112345@127.0.0.1 SIP/2.0",
            &format!("INVITE sip:erin@{ERIN} SIP/2.0"),
            1,
        )
        .replacen(
            "Record-Route:",
            "Record-Route: <sip:127.0.0.2:5080;lr>\r\nRecord-Route:",
            1,
        );
    let o = run(&w, &p, back.as_bytes(), SWITCH);
    let (to, f2) = fwd(&o);
    assert_eq!(to, sa(ERIN));
    let rr = hdr(&f2, "record-route");
    assert_eq!(rr.len(), 3, "{f2}");
    let (cg2, sw, cg1) = (rr[0], rr[1], rr[2]);
    // erin's 200 goes back the same way.
    let ok = text(&switch_response(&f2, 200, Some("erin-tag"))).replacen(
        "Content-Length",
        &format!("Contact: <sip:erin@{ERIN}>\r\nContent-Length"),
        1,
    );
    let (to, r1) = fwd(&run(&w, &p, ok.as_bytes(), ERIN));
    assert_eq!(to, sa(SWITCH));
    let r1 = r1.replacen(hdr(&r1, "via")[0], "", 1);
    let r1 = r1.replacen("Via: \r\n", "", 1);
    let (to, _) = fwd(&run(&w, &p, r1.as_bytes(), SWITCH));
    assert_eq!(to, sa(CALLER));

    let alice = ("alice", "ft-sp");
    let erin = ("erin", "erin-tag");
    let erin_uri = format!("sip:erin@{ERIN}");
    // alice's requests: Route set cg1, switch, cg2; erin's: cg2, switch, cg1.
    let cases: Vec<(String, &str, u32, bool)> = vec![
        (
            spiral_request(
                "ACK",
                &erin_uri,
                CALLER,
                &[cg1, sw, cg2],
                alice,
                erin,
                1,
                "a1",
            ),
            ERIN,
            1,
            true,
        ),
        (
            spiral_request(
                "INVITE",
                &erin_uri,
                CALLER,
                &[cg1, sw, cg2],
                alice,
                erin,
                2,
                "a2",
            ),
            ERIN,
            2,
            true,
        ),
        (
            spiral_request(
                "INVITE",
                "sip:alice@127.0.0.1:40000",
                ERIN,
                &[cg2, sw, cg1],
                erin,
                alice,
                1,
                "e1",
            ),
            CALLER,
            1,
            false,
        ),
        (
            spiral_request(
                "BYE",
                "sip:alice@127.0.0.1:40000",
                ERIN,
                &[cg2, sw, cg1],
                erin,
                alice,
                2,
                "e2",
            ),
            CALLER,
            2,
            false,
        ),
        (
            spiral_request(
                "BYE",
                &erin_uri,
                CALLER,
                &[cg1, sw, cg2],
                alice,
                erin,
                3,
                "a3",
            ),
            ERIN,
            3,
            true,
        ),
    ];
    for (m, dest, _, from_alice) in &cases {
        let src = if *from_alice { CALLER } else { ERIN };
        let o = run(&w, &p, m.as_bytes(), src);
        let (to, first) = fwd(&o);
        assert_eq!(to, sa(SWITCH), "first pass: {m}");
        assert_eq!(hdr(&first, "route").len(), 2, "{first}");
        // Second pass: the switch consumed its Route and sends it back.
        let relayed = switch_relay(&first, true);
        let o = run(&w, &p, relayed.as_bytes(), SWITCH);
        assert_eq!(o.event, Event::Passed(PassKind::FromUpstream), "{m}");
        let (to, second) = fwd(&o);
        assert_eq!(to, sa(dest), "second pass: {m}");
        assert!(hdr(&second, "route").is_empty(), "{second}");
        assert_eq!(hdr(&second, "via").len(), 4, "{second}");

        // A true loop: the switch sends the very request it got back unchanged (its Route
        // not consumed, so creditgate would forward it to the switch again).
        let looped = switch_relay(&first, false);
        let o = run(&w, &p, looped.as_bytes(), SWITCH);
        if m.starts_with("ACK") {
            assert_eq!(o.event, Event::Dropped(DropReason::AckRejected));
        } else {
            let (to, r) = reply(&o);
            assert_eq!((status(&r), to), (482, sa(SWITCH)), "{m}");
        }
    }
}

/// The loop hash covers the Route set, and (outside INVITE/ACK/CANCEL) the To-tag and
/// Proxy-Authorization; an INVITE with credentials and a Route set still shares its branch with
/// its CANCEL (no credentials) and the ACK of its non-2xx (a To-tag), which carry the same Route
/// set (RFC 3261 9.1, 17.1.1.3).
#[test]
fn invite_cancel_and_ack_share_a_branch_with_routes_and_credentials() {
    let w = world();
    let p = policy();
    let routes = "Route: <sip:127.0.0.1:5060;lr>\r\nRoute: <sip:127.0.0.2:5080;lr>\r\n";
    let m = invite(
        "alice",
        "b3",
        &format!("{routes}Proxy-Authorization: Digest username=\"alice\", realm=\"sw\"\r\n"),
    );
    let b = |f: &str| param(hdr(f, "via")[0], "branch").unwrap().to_string();
    let (_, f1) = fwd(&run(&w, &p, &m, CALLER));
    let plain = invite("alice", "b3", routes);
    let cancel = as_method(&plain, "CANCEL");
    let (_, fc) = fwd(&run(&w, &p, &cancel, CALLER));
    assert_eq!(b(&fc), b(&f1), "CANCEL carries the INVITE's branch");
    let ack = text(&as_method(&plain, "ACK")).replace(
        "To: <sip:+4915112345@example.com>",
        "To: <sip:+4915112345@example.com>;tag=sw487",
    );
    let (_, fa) = fwd(&run(&w, &p, ack.as_bytes(), CALLER));
    assert_eq!(
        b(&fa),
        b(&f1),
        "ACK of a non-2xx carries the INVITE's branch"
    );
    // Another Route set (as forwarded, after creditgate's own is popped) is another request as
    // far as loops go; the transaction part of the branch, from the sender's Via, is the same.
    let other = invite("alice", "b3", "Route: <sip:127.0.0.1:5060;lr>\r\n");
    let (_, fo) = fwd(&run(&w, &p, &other, CALLER));
    assert_eq!(b(&fo)[..25], b(&f1)[..25]);
    assert_ne!(b(&fo), b(&f1));
    let same = invite("alice", "b3", "Route: <sip:127.0.0.2:5080;lr>\r\n");
    assert_eq!(b(&fwd(&run(&w, &p, &same, CALLER)).1), b(&f1));
    // Outside INVITE/ACK/CANCEL, credentials are covered.
    let bye = in_dialog("BYE", "b4", "alice", "", 2);
    let bye_auth = text(&bye).replacen(
        "Content-Length",
        "Proxy-Authorization: Digest username=\"alice\"\r\nContent-Length",
        1,
    );
    let (_, f) = fwd(&run(&w, &p, &bye, CALLER));
    let (_, g) = fwd(&run(&w, &p, bye_auth.as_bytes(), CALLER));
    assert_ne!(b(&f), b(&g));
}

/// The admin API's decision for an identified account (`admission::decide`) is the proxy's: for
/// every account and snapshot state, a new INVITE identified as that account gets the same
/// outcome through `handle`.
#[test]
fn admin_decision_is_the_proxys_decision() {
    let w = world();
    // Fresh; then stale (6 minutes, default max_staleness 5m) under each on_stale rule.
    for (on_stale, at) in [
        (OnStale::Serve, 1u64),
        (OnStale::Serve, 360),
        (OnStale::Reject, 360),
        (OnStale::RejectPrepaid, 360),
    ] {
        let extra = format!("{on_stale:?} at {at}s");
        let mut c = config();
        c.credit.on_stale = on_stale;
        let p = policy_from(&c);
        let now = w.t0 + Duration::from_secs(at);
        for user in ["alice", "bob", "carol", "dave", "tiny", "off", "nobody"] {
            let want =
                super::admission::decide(&w.snap, &p, now, || Some(AccountId::Borrowed(user)));
            let m = invite(user, &format!("ad-{user}"), "");
            let o = handle(
                Packet {
                    data: &m,
                    source: sa(CALLER),
                    local: sa(CG),
                    now,
                    wall_secs: WALL,
                },
                &w.snap,
                &p,
            );
            match (&want, &o.event) {
                (Ok(_), Event::Admitted { .. }) => {}
                (Err((cause, _)), Event::Refused { cause: c, .. }) if c == cause => {}
                _ => panic!("{user} ({extra}): admin {want:?}, proxy {:?}", o.event),
            }
        }
    }
    // No snapshot at all.
    let empty = Snapshot::new(w.t0);
    let p = policy();
    let want = super::admission::decide(&empty, &p, w.t0, || None);
    assert_eq!(want, Err((RefusalCause::NoSnapshot, None)));
    let m = invite("alice", "ad-none", "");
    let o = run(
        &World {
            snap: empty,
            t0: w.t0,
        },
        &p,
        &m,
        CALLER,
    );
    assert!(matches!(
        o.event,
        Event::Refused {
            cause: RefusalCause::NoSnapshot,
            ..
        }
    ));
}
mod hardening;
mod live;
