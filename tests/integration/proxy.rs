//! End-to-end SIP behaviour of the daemon (SPEC section 6) and its config command line (SPEC
//! sections 2 and 3), against the real binary. Each test starts its own daemon, fake switch and
//! caller (see [`crate::harness`]), so the tests run in parallel.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use crate::harness::*;

/// A daemon in front of a fresh fake switch, and a caller.
fn setup(refresh_interval: &str) -> (Daemon, Switch, Caller) {
    let switch = Switch::bind();
    let daemon = Daemon::start(&test_config(0, switch.addr(), refresh_interval), ACCOUNTS);
    (daemon, switch, Caller::bind())
}

/// A call set up through the daemon: INVITE forwarded, the switch's 200 relayed back.
struct Call {
    /// The INVITE as the caller built it.
    invite: Request,
    /// The INVITE as the switch received it.
    at_switch: Vec<u8>,
    /// The 200 OK as the caller received it.
    ok: Vec<u8>,
    /// The switch's To-tag.
    switch_tag: String,
}

/// Sends an INVITE from `from_user`, expects it at the switch, answers 200 with a Contact on the
/// switch and the Record-Route copied, and expects the 200 at the caller.
fn establish(daemon: &Daemon, switch: &Switch, caller: &Caller, from_user: &str) -> Call {
    let d = daemon.sip_addr();
    let invite = Request::invite(caller.addr(), d, &new_call_id(), from_user);
    caller.send(&invite.build(), d);
    let (at_switch, src) = switch.recv_or_fail(WAIT, "the admitted INVITE at the switch");
    assert_eq!(
        method(&at_switch).as_deref(),
        Some("INVITE"),
        "{}",
        text(&at_switch)
    );
    assert_eq!(src, d, "the INVITE must come from the daemon's socket");
    let switch_tag = new_tag();
    let contact = format!("<sip:4930123456@{}>", switch.addr());
    let ok = response(
        &at_switch,
        200,
        "OK",
        Some(&switch_tag),
        &[("Contact", &contact)],
    );
    switch.send(&ok, src);
    let (ok, src) = caller.recv_or_fail(WAIT, "the 200 OK at the caller");
    assert_eq!(src, d, "the 200 must come from the daemon's socket");
    assert_eq!(status_code(&ok), Some(200), "{}", text(&ok));
    Call {
        invite,
        at_switch,
        ok,
        switch_tag,
    }
}

fn assert_our_via(via: &str, daemon: SocketAddr) -> String {
    assert!(
        via.starts_with(&format!("SIP/2.0/UDP {daemon};")),
        "top Via must be creditgate's ({daemon}): {via}"
    );
    let branch = param(via, "branch").unwrap_or_else(|| panic!("no branch in {via}"));
    assert!(
        branch.starts_with("z9hG4bK") && branch.len() > 7,
        "branch must have the magic cookie: {via}"
    );
    branch
}

// ---------------------------------------------------------------------------------------------
// Admitted calls

/// An admitted INVITE reaches the switch with creditgate's Via on top, the caller's Via second
/// with `received`/`rport`, Max-Forwards 70 → 69, a Record-Route with the dialog token, and
/// every other byte unchanged; the switch's 200 reaches the caller with creditgate's Via gone
/// and every other byte unchanged.
#[test]
fn admitted_invite_is_forwarded_and_its_200_relayed() {
    let (daemon, switch, caller) = setup("60s");
    let d = daemon.sip_addr();
    let invite = Request::invite(caller.addr(), d, &new_call_id(), "alice");
    let sent = invite.build();
    caller.send(&sent, d);

    let (fwd, src) = switch.recv_or_fail(WAIT, "the admitted INVITE at the switch");
    assert_eq!(src, d, "forwarded from the daemon's socket");
    assert_eq!(start_line(&fwd), start_line(&sent), "Request-URI unchanged");

    let vias = all_headers(&fwd, "Via");
    assert_eq!(vias.len(), 2, "two Vias expected:\n{}", text(&fwd));
    let branch = assert_our_via(&vias[0], d);
    assert_ne!(
        branch, invite.branch,
        "creditgate must not reuse the caller's branch"
    );
    let theirs = &vias[1];
    assert!(
        theirs.starts_with(&format!(
            "SIP/2.0/UDP {};branch={}",
            caller.addr(),
            invite.branch
        )),
        "second Via must be the caller's: {theirs}"
    );
    assert_eq!(
        param(theirs, "received").as_deref(),
        Some("127.0.0.1"),
        "received on the caller's Via: {theirs}"
    );
    assert_eq!(
        param(theirs, "rport"),
        Some(caller.addr().port().to_string()),
        "rport filled: {theirs}"
    );
    assert_eq!(
        all_headers(&fwd, "Max-Forwards"),
        vec!["69".to_owned()],
        "Max-Forwards decremented"
    );

    let rr = all_headers(&fwd, "Record-Route");
    assert_eq!(rr.len(), 1, "one Record-Route:\n{}", text(&fwd));
    let prefix = format!("<sip:{d};lr;cgt=");
    assert!(
        rr[0].starts_with(&prefix) && rr[0].ends_with('>'),
        "Record-Route {:?} should look like {prefix}TOKEN>",
        rr[0]
    );
    let token = &rr[0][prefix.len()..rr[0].len() - 1];
    // MINUTES-MAC since issue 9 item 5 (was a bare MAC).
    let (minutes, mac) = token.split_once('-').unwrap_or_default();
    assert!(
        !minutes.is_empty()
            && minutes.bytes().all(|b| b.is_ascii_digit())
            && mac.len() == 20
            && mac.bytes().all(|b| b.is_ascii_hexdigit()),
        "token {token:?}"
    );

    // Every other byte as sent: remove what creditgate added, undo what it edited.
    let rest = without_first_header(&fwd, "Record-Route").expect("Record-Route line");
    let rest = without_first_header(&rest, "Via").expect("our Via line");
    let original_via = header(&sent, "Via").expect("Via in the sent INVITE");
    let expected = text(&sent)
        .replacen(
            &format!("Via: {original_via}\r\n"),
            &format!("Via: {theirs}\r\n"),
            1,
        )
        .replacen("Max-Forwards: 70\r\n", "Max-Forwards: 69\r\n", 1);
    assert_eq!(
        text(&rest),
        expected,
        "forwarded INVITE differs beyond Via/Record-Route/Max-Forwards"
    );

    // The switch answers to where the INVITE came from, copying Vias and Record-Route.
    let contact = format!("<sip:4930123456@{}>", switch.addr());
    let ok = response(&fwd, 200, "OK", Some("sw-tag-1"), &[("Contact", &contact)]);
    switch.send(&ok, src);
    let (got, src) = caller.recv_or_fail(WAIT, "the 200 OK at the caller");
    assert_eq!(src, d, "relayed from the daemon's socket");
    let expected = without_first_header(&ok, "Via").expect("Via in the 200");
    assert_eq!(
        text(&got),
        text(&expected),
        "the relayed 200 must equal the switch's minus creditgate's Via"
    );
    assert_eq!(all_headers(&got, "Via"), vec![theirs.clone()]);
    switch.expect_nothing(Duration::from_millis(100));
}

// ---------------------------------------------------------------------------------------------
// Refused calls

/// A new call of an account without credit gets creditgate's own 402 (To-tag, Reason header),
/// and nothing reaches the switch; the ACK of that 402 is absorbed; a retransmitted INVITE gets
/// the identical 402.
#[test]
fn refused_invite_gets_402_its_ack_is_absorbed_and_retransmissions_get_the_same_402() {
    let (daemon, switch, caller) = setup("60s");
    let d = daemon.sip_addr();
    let invite = Request::invite(caller.addr(), d, &new_call_id(), "bob");
    let sent = invite.build();
    caller.send(&sent, d);

    let (refusal, src) = caller.recv_or_fail(WAIT, "a 402 for bob");
    assert_eq!(src, d);
    assert_eq!(status_code(&refusal), Some(402), "{}", text(&refusal));
    let tag = to_tag(&refusal).unwrap_or_else(|| panic!("402 without To-tag:\n{}", text(&refusal)));
    assert!(!tag.is_empty());
    let reason = header(&refusal, "Reason")
        .unwrap_or_else(|| panic!("402 without Reason header:\n{}", text(&refusal)));
    assert!(
        reason.contains("credit"),
        "the Reason header should state the cause: {reason}"
    );
    // The request's transaction identifiers are copied.
    assert_eq!(
        top_branch(&refusal),
        Some(invite.branch.clone()),
        "Via copied:\n{}",
        text(&refusal)
    );
    assert_eq!(header(&refusal, "Call-ID"), header(&sent, "Call-ID"));
    assert_eq!(header(&refusal, "CSeq").as_deref(), Some("1 INVITE"));
    assert_eq!(header(&refusal, "From"), header(&sent, "From"));
    switch.expect_nothing(QUIET);

    // ACK of the 402: same branch, To with the 402's tag. Absorbed.
    let ack = invite.ack_for(&refusal);
    assert_eq!(ack.to_tag.as_deref(), Some(tag.as_str()));
    caller.send(&ack.build(), d);
    switch.expect_nothing(QUIET);
    caller.expect_nothing(Duration::from_millis(50));

    // A retransmission of the INVITE: the same 402, byte for byte.
    caller.send(&sent, d);
    let (again, _) = caller.recv_or_fail(WAIT, "the 402 again");
    assert_eq!(
        to_tag(&again).as_deref(),
        Some(tag.as_str()),
        "same To-tag on the retransmission"
    );
    assert_eq!(
        text(&again),
        text(&refusal),
        "retransmission must get the identical 402"
    );
    switch.expect_nothing(QUIET);
}

// ---------------------------------------------------------------------------------------------
// In-dialog requests after the credit ran out

/// Calls in progress keep flowing when the account runs dry: after the balance was set to 0 and
/// a refresh applied it (a new INVITE now gets 402), an in-dialog re-INVITE carrying
/// creditgate's Route is forwarded, an in-dialog INVITE without it is treated as a new call
/// (402), and the BYE is forwarded and its 200 relayed.
#[test]
fn in_dialog_requests_pass_after_the_balance_ran_out() {
    let (daemon, switch, caller) = setup("1s");
    let d = daemon.sip_addr();
    let call = establish(&daemon, &switch, &caller, "alice");
    let rr = header(&call.ok, "Record-Route").expect("Record-Route in the 200");

    // ACK of the 2xx, routed through creditgate.
    let ack = call.invite.in_dialog("ACK", &call.ok, 1);
    assert_eq!(ack.routes, vec![format!("<{}>", uri_of(&rr))]);
    caller.send(&ack.build(), d);
    let (ack_fwd, _) = switch.recv_or_fail(WAIT, "the ACK of the 200 at the switch");
    assert_eq!(
        method(&ack_fwd).as_deref(),
        Some("ACK"),
        "{}",
        text(&ack_fwd)
    );
    assert!(
        all_headers(&ack_fwd, "Route").is_empty(),
        "creditgate's Route must be popped:\n{}",
        text(&ack_fwd)
    );

    // Balance to 0; wait for a refresh (refresh_interval 1 s).
    daemon.rewrite_accounts(&accounts_with_balance("alice", "0.00"));
    std::thread::sleep(Duration::from_millis(2500));
    let fresh = Request::invite(caller.addr(), d, &new_call_id(), "alice");
    caller.send(&fresh.build(), d);
    let (r, _) = caller.recv_or_fail(WAIT, "a 402 for alice's new call after the refresh");
    assert_eq!(
        status_code(&r),
        Some(402),
        "the refresh did not apply balance 0:\n{}",
        text(&r)
    );
    caller.send(&fresh.ack_for(&r).build(), d);
    switch.expect_nothing(QUIET);

    // re-INVITE inside the dialog, with creditgate's Route: forwarded without a credit check.
    let reinvite = call.invite.in_dialog("INVITE", &call.ok, 2).sdp();
    caller.send(&reinvite.build(), d);
    let (re_fwd, src) = switch.recv_or_fail(WAIT, "the in-dialog re-INVITE at the switch");
    assert_eq!(
        method(&re_fwd).as_deref(),
        Some("INVITE"),
        "{}",
        text(&re_fwd)
    );
    assert_eq!(to_tag(&re_fwd).as_deref(), Some(call.switch_tag.as_str()));
    switch.send(&response(&re_fwd, 200, "OK", None, &[]), src);
    let (re_ok, _) = caller.recv_or_fail(WAIT, "the 200 of the re-INVITE");
    assert_eq!(status_code(&re_ok), Some(200), "{}", text(&re_ok));
    caller.send(&call.invite.in_dialog("ACK", &call.ok, 2).build(), d);
    let (a, _) = switch.recv_or_fail(WAIT, "the ACK of the re-INVITE");
    assert_eq!(method(&a).as_deref(), Some("ACK"));

    // An "in-dialog" INVITE without creditgate's Route token is a new call: refused.
    let mut forged = call.invite.in_dialog("INVITE", &call.ok, 3).sdp();
    forged.routes.clear();
    caller.send(&forged.build(), d);
    let (r, _) = caller.recv_or_fail(WAIT, "a 402 for the INVITE without Route token");
    assert_eq!(status_code(&r), Some(402), "{}", text(&r));
    switch.expect_nothing(QUIET);

    // The BYE goes through and its 200 comes back.
    let bye = call.invite.in_dialog("BYE", &call.ok, 4);
    caller.send(&bye.build(), d);
    let (bye_fwd, src) = switch.recv_or_fail(WAIT, "the BYE at the switch");
    assert_eq!(
        method(&bye_fwd).as_deref(),
        Some("BYE"),
        "{}",
        text(&bye_fwd)
    );
    assert_eq!(
        header(&bye_fwd, "Call-ID").as_deref(),
        Some(call.invite.call_id.as_str())
    );
    assert_eq!(to_tag(&bye_fwd).as_deref(), Some(call.switch_tag.as_str()));
    assert_our_via(&header(&bye_fwd, "Via").expect("Via"), d);
    assert!(
        all_headers(&bye_fwd, "Route").is_empty(),
        "creditgate's Route must be popped:\n{}",
        text(&bye_fwd)
    );
    assert!(
        all_headers(&bye_fwd, "Record-Route").is_empty(),
        "no Record-Route on a BYE:\n{}",
        text(&bye_fwd)
    );
    switch.send(&response(&bye_fwd, 200, "OK", None, &[]), src);
    let (bye_ok, src) = caller.recv_or_fail(WAIT, "the 200 for the BYE at the caller");
    assert_eq!(src, d);
    assert_eq!(status_code(&bye_ok), Some(200), "{}", text(&bye_ok));
    assert_eq!(header(&bye_ok, "CSeq").as_deref(), Some("4 BYE"));
    let _ = call.at_switch;
}

/// A customer whose account ran dry cannot start new calls disguised as re-INVITEs: an
/// in-dialog INVITE (To-tag present) with creditgate's own Route URI but a token with one
/// character changed, or with the valid token of another of its dialogs, is a new call: 402, and
/// nothing reaches the switch. (The genuine re-INVITE with the right token passes:
/// `in_dialog_requests_pass_after_the_balance_ran_out`.)
#[test]
fn in_dialog_invite_with_a_wrong_or_foreign_route_token_is_refused() {
    let (mut daemon, switch, caller) = setup("1s");
    let d = daemon.sip_addr();
    let call_a = establish(&daemon, &switch, &caller, "alice");
    let call_b = establish(&daemon, &switch, &caller, "alice");
    assert_ne!(call_a.invite.call_id, call_b.invite.call_id);

    daemon.rewrite_accounts(&accounts_with_balance("alice", "0.00"));
    if !daemon.wait_for_log("changed=1", 1, Duration::from_secs(10)) {
        daemon.fail("no refresh applied alice's balance 0 within 10 s");
    }
    let fresh = Request::invite(caller.addr(), d, &new_call_id(), "alice");
    caller.send(&fresh.build(), d);
    let (r, _) = caller.recv_or_fail(WAIT, "a 402 for alice's new call after the refresh");
    assert_eq!(status_code(&r), Some(402), "{}", text(&r));

    let genuine = call_a.invite.in_dialog("INVITE", &call_a.ok, 2).sdp();
    let prefix = format!("<sip:{d};lr;cgt=");
    let [route_a] = genuine.routes.as_slice() else {
        panic!("one Route expected: {:?}", genuine.routes)
    };
    assert!(route_a.starts_with(&prefix), "{route_a}");
    let routes_b = call_b.invite.in_dialog("INVITE", &call_b.ok, 2).routes;
    let [route_b] = routes_b.as_slice() else {
        panic!("one Route expected in call B: {routes_b:?}")
    };
    assert!(route_b.starts_with(&prefix), "{route_b}");
    assert_ne!(route_b, route_a, "two dialogs, two tokens");
    // One character of the token changed (the last one before '>').
    let at = route_a.len() - 2;
    let changed = if &route_a[at..=at] == "0" { "1" } else { "0" };
    let wrong = format!("{}{changed}>", &route_a[..at]);

    for (what, route) in [
        ("a token with one character changed", wrong),
        ("the token of another dialog", route_b.clone()),
    ] {
        let mut forged = genuine.clone();
        forged.branch = new_branch();
        forged.routes = vec![route.clone()];
        caller.send(&forged.build(), d);
        let (r, src) = caller.recv_or_fail(WAIT, &format!("a 402 for {what}"));
        assert_eq!(src, d);
        assert_eq!(status_code(&r), Some(402), "{what}:\n{}", text(&r));
        assert_eq!(
            to_tag(&r).as_deref(),
            Some(call_a.switch_tag.as_str()),
            "{what}: the existing To-tag is kept"
        );
        assert_eq!(top_branch(&r), Some(forged.branch.clone()), "{what}");
        switch.expect_nothing(QUIET);
    }
}

// ---------------------------------------------------------------------------------------------
// CANCEL

/// A CANCEL reaches the switch with the INVITE's creditgate branch; the switch's 200 (CANCEL)
/// and 487 (INVITE) reach the caller; the ACK of the 487 reaches the switch with the INVITE's
/// branch too.
#[test]
fn cancel_and_the_ack_of_487_carry_the_invite_branch() {
    let (daemon, switch, caller) = setup("60s");
    let d = daemon.sip_addr();
    let invite = Request::invite(caller.addr(), d, &new_call_id(), "alice");
    caller.send(&invite.build(), d);
    let (inv_fwd, src) = switch.recv_or_fail(WAIT, "the INVITE at the switch");
    let branch = assert_our_via(&header(&inv_fwd, "Via").expect("Via"), d);
    let tag = new_tag();

    // A provisional response is relayed.
    switch.send(&response(&inv_fwd, 180, "Ringing", Some(&tag), &[]), src);
    let (ringing, _) = caller.recv_or_fail(WAIT, "the 180 at the caller");
    assert_eq!(status_code(&ringing), Some(180), "{}", text(&ringing));

    let cancel = invite.cancel();
    caller.send(&cancel.build(), d);
    let (cancel_fwd, src2) = switch.recv_or_fail(WAIT, "the CANCEL at the switch");
    assert_eq!(
        method(&cancel_fwd).as_deref(),
        Some("CANCEL"),
        "{}",
        text(&cancel_fwd)
    );
    assert_eq!(src2, d);
    assert_eq!(
        top_branch(&cancel_fwd),
        Some(branch.clone()),
        "CANCEL must carry the INVITE's branch:\n{}",
        text(&cancel_fwd)
    );
    assert_eq!(header(&cancel_fwd, "CSeq").as_deref(), Some("1 CANCEL"));
    assert!(
        all_headers(&cancel_fwd, "Record-Route").is_empty(),
        "no Record-Route on CANCEL:\n{}",
        text(&cancel_fwd)
    );

    switch.send(&response(&cancel_fwd, 200, "OK", Some(&tag), &[]), src2);
    let (c_ok, _) = caller.recv_or_fail(WAIT, "the 200 for the CANCEL at the caller");
    assert_eq!(status_code(&c_ok), Some(200), "{}", text(&c_ok));
    assert_eq!(header(&c_ok, "CSeq").as_deref(), Some("1 CANCEL"));
    assert_eq!(top_branch(&c_ok), Some(invite.branch.clone()));

    switch.send(
        &response(&inv_fwd, 487, "Request Terminated", Some(&tag), &[]),
        src,
    );
    let (terminated, _) = caller.recv_or_fail(WAIT, "the 487 at the caller");
    assert_eq!(status_code(&terminated), Some(487), "{}", text(&terminated));
    assert_eq!(header(&terminated, "CSeq").as_deref(), Some("1 INVITE"));
    assert_eq!(to_tag(&terminated).as_deref(), Some(tag.as_str()));

    let ack = invite.ack_for(&terminated);
    caller.send(&ack.build(), d);
    let (ack_fwd, _) = switch.recv_or_fail(WAIT, "the ACK of the 487 at the switch");
    assert_eq!(
        method(&ack_fwd).as_deref(),
        Some("ACK"),
        "{}",
        text(&ack_fwd)
    );
    assert_eq!(
        top_branch(&ack_fwd),
        Some(branch),
        "ACK of a non-2xx must carry the INVITE's branch:\n{}",
        text(&ack_fwd)
    );
    assert_eq!(to_tag(&ack_fwd).as_deref(), Some(tag.as_str()));
    caller.expect_nothing(Duration::from_millis(100));
}

// ---------------------------------------------------------------------------------------------
// What creditgate answers or drops itself

/// An OPTIONS addressed to creditgate itself (no user part) gets 200 from creditgate.
#[test]
fn options_ping_gets_200() {
    let (daemon, switch, caller) = setup("60s");
    let d = daemon.sip_addr();
    let ping = Request::new(
        "OPTIONS",
        &format!("sip:{d}"),
        caller.addr(),
        &new_call_id(),
        "alice",
    )
    .with_to_user("");
    caller.send(&ping.build(), d);
    let (r, src) = caller.recv_or_fail(WAIT, "200 to the OPTIONS ping");
    assert_eq!(src, d);
    assert_eq!(status_code(&r), Some(200), "{}", text(&r));
    assert_eq!(top_branch(&r), Some(ping.branch.clone()));
    assert_eq!(header(&r, "CSeq").as_deref(), Some("1 OPTIONS"));
    switch.expect_nothing(QUIET);
}

/// A request with Max-Forwards 0 gets 483 and is not forwarded.
#[test]
fn max_forwards_zero_gets_483() {
    let (daemon, switch, caller) = setup("60s");
    let d = daemon.sip_addr();
    let invite =
        Request::invite(caller.addr(), d, &new_call_id(), "alice").with_max_forwards(Some(0));
    caller.send(&invite.build(), d);
    let (r, _) = caller.recv_or_fail(WAIT, "483 for Max-Forwards: 0");
    assert_eq!(status_code(&r), Some(483), "{}", text(&r));
    assert_eq!(top_branch(&r), Some(invite.branch.clone()));
    switch.expect_nothing(QUIET);
}

/// Garbage datagrams get no answer, reach nobody, and do not stop the daemon.
#[test]
fn garbage_is_dropped_and_the_daemon_keeps_serving() {
    let (mut daemon, switch, caller) = setup("60s");
    let d = daemon.sip_addr();
    let big = vec![b'A'; 60_000];
    let garbage: [&[u8]; 8] = [
        b"hello, world",
        b"\x00\x01\x02\x03\xff\xfe\xfd",
        b"INVITE\r\n\r\n",
        b"SIP/2.0 200\r\n\r\n",
        b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: \r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &big,
    ];
    for g in garbage {
        caller.send(g, d);
    }
    caller.expect_nothing(QUIET);
    switch.expect_nothing(Duration::from_millis(50));
    assert!(daemon.is_running(), "the daemon died on garbage");
    assert!(
        daemon.ping(WAIT),
        "the daemon no longer answers after garbage"
    );
}

/// Responses whose top Via is not creditgate's own, or whose branch does not verify, are
/// dropped: neither the caller they name nor the switch receives anything.
#[test]
fn forged_responses_are_dropped() {
    let (daemon, switch, caller) = setup("60s");
    let d = daemon.sip_addr();
    let c = caller.addr();
    let call_id = new_call_id();
    let common = format!(
        "From: <sip:alice@example.com>;tag=f1\r\nTo: <sip:4930123456@{d}>;tag=t1\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    // 1. Top Via is the caller's, not creditgate's.
    let not_ours = format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bK-forged1;rport={};received=127.0.0.1\r\n{common}", c.port());
    // 2. creditgate's sent-by with a made-up branch of the right shape, over the caller's Via.
    let fake_branch = format!("z9hG4bKcg{}", "0123456789abcdef01234567");
    let bad_branch = format!(
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {d};branch={fake_branch}\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bK-forged2;rport={};received=127.0.0.1\r\n{common}",
        c.port()
    );
    // 3. creditgate's sent-by with a foreign branch.
    let foreign = format!(
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP {d};branch=z9hG4bK-notcg\r\nVia: SIP/2.0/UDP {c};branch=z9hG4bK-forged3;rport={};received=127.0.0.1\r\n{common}",
        c.port()
    );
    let other = Caller::bind();
    for forged in [&not_ours, &bad_branch, &foreign] {
        switch.send(forged.as_bytes(), d);
        other.send(forged.as_bytes(), d);
    }
    caller.expect_nothing(QUIET);
    switch.expect_nothing(Duration::from_millis(50));
    other.expect_nothing(Duration::from_millis(50));
    assert!(daemon.ping(WAIT), "the daemon still answers");
}

// ---------------------------------------------------------------------------------------------
// IPv6 and several workers

/// An IPv6 listener next to the IPv4 one, two `SO_REUSEPORT` workers: callers on `::1` get
/// their calls with credit to the IPv4 switch (creditgate's IPv4 Via on top, the caller's
/// IPv6 Via with `received`/`rport` below), the switch's 200 back over IPv6 without
/// creditgate's Via, and a 402 for a dry account. Several caller sockets, so that both workers'
/// sockets are likely used (the kernel spreads by source address and port; not asserted).
#[test]
fn ipv6_callers_through_two_workers_reach_an_ipv4_switch() {
    let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    if let Err(e) = UdpSocket::bind(SocketAddr::new(loopback6, 0)) {
        assert!(
            std::env::var_os("CI").is_none(),
            "no IPv6 loopback on this CI machine: {e}"
        );
        println!("skipped: no IPv6 loopback ({e})");
        return;
    }
    let switch = Switch::bind();
    let base = test_config(0, switch.addr(), "60s");
    let listen4 = format!("listen = [\"{DAEMON_IP}:0\"]");
    assert!(base.contains(&listen4) && base.contains("workers = 2\n"));
    // IPv4 first: the harness pings the first listen address from an IPv4 socket.
    let config = base.replacen(
        &listen4,
        &format!("listen = [\"{DAEMON_IP}:0\", \"[::1]:0\"]"),
        1,
    );
    let daemon = Daemon::start(&config, ACCOUNTS);
    let d4 = daemon.sip_addr();
    let d6 = daemon.sip_addrs()[1];
    assert_eq!(d4.ip(), DAEMON_IP);
    assert_eq!(d6.ip(), loopback6);

    for i in 0..6 {
        let caller = Endpoint::bind(loopback6);
        let c = caller.addr();
        // A call with credit.
        let invite = Request::invite(c, d6, &new_call_id(), "alice");
        let sent = invite.build();
        caller.send(&sent, d6);
        let (fwd, src) =
            switch.recv_or_fail(WAIT, &format!("caller {i}: the INVITE at the switch"));
        assert_eq!(src, d4, "caller {i}: forwarded from the IPv4 socket");
        assert_eq!(start_line(&fwd), start_line(&sent), "caller {i}");
        let vias = all_headers(&fwd, "Via");
        assert_eq!(vias.len(), 2, "caller {i}:\n{}", text(&fwd));
        assert_our_via(&vias[0], d4);
        assert!(
            vias[1].starts_with(&format!("SIP/2.0/UDP {c};branch={}", invite.branch)),
            "caller {i}: the caller's Via second: {}",
            vias[1]
        );
        assert_eq!(
            param(&vias[1], "received").as_deref(),
            Some("::1"),
            "{}",
            vias[1]
        );
        assert_eq!(
            param(&vias[1], "rport"),
            Some(c.port().to_string()),
            "{}",
            vias[1]
        );

        let ok = response(&fwd, 200, "OK", Some(&new_tag()), &[]);
        switch.send(&ok, src);
        let (got, src) = caller.recv_or_fail(WAIT, &format!("caller {i}: the 200 over IPv6"));
        assert_eq!(src, d6, "caller {i}: relayed from the IPv6 socket");
        let expected = without_first_header(&ok, "Via").expect("Via in the 200");
        assert_eq!(
            text(&got),
            text(&expected),
            "caller {i}: the relayed 200 must equal the switch's minus creditgate's Via"
        );

        // A dry account.
        let dry = Request::invite(c, d6, &new_call_id(), "bob");
        caller.send(&dry.build(), d6);
        let (r, src) = caller.recv_or_fail(WAIT, &format!("caller {i}: a 402 for bob"));
        assert_eq!(src, d6, "caller {i}");
        assert_eq!(status_code(&r), Some(402), "caller {i}:\n{}", text(&r));
        assert_eq!(top_branch(&r), Some(dry.branch.clone()), "caller {i}");
        switch.expect_nothing(Duration::from_millis(100));
    }
    switch.expect_nothing(QUIET);
}

// ---------------------------------------------------------------------------------------------
// Configuration on the command line

/// `check-config` and `run` both refuse a config with a misspelt key, naming `sip.upstrem` with
/// the same message; the shipped example config passes `check-config`.
#[test]
fn misspelt_key_is_refused_by_check_config_and_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Neither command binds anything here: the ports are only text in the file.
    let upstream = SocketAddr::new(SWITCH_IP, 5080);
    let config = test_config(0, upstream, "60s").replacen("upstream = ", "upstrem = ", 1);
    assert!(config.contains("upstrem = "));
    let path = dir.path().join("creditgate.toml");
    std::fs::write(&path, &config).expect("write config");
    std::fs::write(dir.path().join("accounts.toml"), ACCOUNTS).expect("write accounts");
    let path = path.to_str().expect("utf-8 path");

    let check = run_cli(&["check-config", "--config", path], Duration::from_secs(10));
    assert!(
        !check.status.success(),
        "check-config accepted a misspelt key:\n{}",
        check.stdout
    );
    let line = check
        .stderr
        .lines()
        .find(|l| l.contains("sip.upstrem"))
        .unwrap_or_else(|| {
            panic!(
                "check-config's error does not name sip.upstrem:\n{}",
                check.stderr
            )
        })
        .to_owned();

    let run = run_cli(&["run", "--config", path], Duration::from_secs(10));
    assert!(!run.status.success(), "run started with a misspelt key");
    assert!(
        run.stderr.lines().any(|l| l == line),
        "run's error should carry the same line as check-config ({line:?}):\n{}",
        run.stderr
    );
    assert_eq!(
        run.status.code(),
        check.status.code(),
        "same exit code for an invalid config"
    );
}

/// The shipped example config is valid.
#[test]
fn shipped_config_passes_check_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/creditgate.toml");
    let check = run_cli(&["check-config", "--config", path], Duration::from_secs(10));
    assert!(
        check.status.success(),
        "check-config on {path} failed:\n{}",
        check.stderr
    );
    assert!(
        check.stdout.contains("[sip]"),
        "effective config printed:\n{}",
        check.stdout
    );
}
