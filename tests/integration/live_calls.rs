//! Issue 11, SPEC 7 "Calls in progress", end to end: how tracked calls end (CANCEL and 487,
//! the switch's BYE, the customer's BYE and its 2xx, ring timeout), what changes nothing
//! (a retransmitted INVITE or 2xx, a BYE the switch refuses), and which in-dialog requests
//! pass: those of tracked calls and of calls the switch started, not those of calls
//! creditgate does not track. Real UDP against the real binary, a fake switch on
//! [`SWITCH_IP`] (see [`crate::live`] for the helpers).
//!
//! | test | what |
//! | --- | --- |
//! | [`every_way_a_call_ends_releases_its_slot_once`] | CANCEL/487, switch BYE, customer BYE (481 then 200), retransmissions |
//! | [`a_call_never_answered_is_forgotten_after_ring_timeout`] | `ring_timeout` |
//! | [`in_dialog_requests_of_a_call_the_switch_started_pass`] | `sender_started` exemption |
//! | [`in_dialog_requests_of_untracked_calls_are_not_passed_as_in_dialog`] | "must belong to a tracked call" |
//! | [`a_refresh_drops_the_ended_calls_it_covers_and_calls_in_progress_keep_holding`] | a new snapshot and the ledger |
//! | [`an_answered_call_whose_bye_never_comes_is_forgotten_after_call_expiry`] | `call_expiry` (takes a minute) |

use std::time::Duration;

use crate::harness::*;
use crate::live::*;

/// `GET /accounts/{id}` until its calls in progress are `n`.
fn wait_in_progress(live: &Live, id: &str, n: u64, what: &str) {
    live.wait_live(id, WAIT, what, |l| count(&l["calls_in_progress"]) == n);
}

/// A request the switch sends into the dialog of `call` (the caller's INVITE, the switch's
/// tag), through creditgate's Route: Request-URI the caller's Contact.
fn from_switch(live: &Live, call: &Call, method: &str, cseq: u32) -> Vec<u8> {
    let rr = header(&call.at_switch, "Record-Route").expect("a Record-Route on the INVITE");
    let inv = &call.invite;
    format!(
        "{method} sip:{user}@{caller} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {sw};branch={br};rport\r\n\
         Max-Forwards: 70\r\n\
         Route: {rr}\r\n\
         From: <sip:{to}@{d}>;tag={tag}\r\n\
         To: <sip:{user}@{host}>;tag={ftag}\r\n\
         Call-ID: {cid}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        user = inv.from_user,
        caller = inv.via,
        sw = live.switch.addr(),
        br = new_branch(),
        to = inv.to_user,
        d = live.d(),
        tag = call.tag,
        host = inv.from_host,
        ftag = inv.from_tag,
        cid = inv.call_id,
    )
    .into_bytes()
}

/// `max_channels = 1`, so each admission after an end proves the slot came back (once).
///
/// 1. A retransmitted INVITE reaches the switch again but is the same call (no
///    `channel_limit`); CANCEL, the switch's 200 and 487: ended `cancelled`.
/// 2. Answered; the switch retransmits its 200, and a fork answers too: still one call (a
///    new call: 480). The switch hangs up (its BYE through creditgate to the caller): ended
///    `bye` at once.
/// 3. Answered; a re-INVITE refused 488 and a BYE refused 481 by the switch end nothing: the
///    call still counts. The next BYE gets 200: ended `bye`.
#[test]
fn every_way_a_call_ends_releases_its_slot_once() {
    let accounts = account(
        "life",
        &[
            ("balance", "100"),
            ("rate_per_min", "0.60"),
            ("max_channels", "1"),
        ],
    );
    let live = Live::file("", &accounts);
    let d = live.d();

    // 1. Retransmission, then CANCEL.
    let a = live.place("life", NUMBER).admitted("call A");
    live.caller.send(&a.invite.build(), d);
    let (again, _) = live
        .switch
        .recv_or_fail(WAIT, "the retransmitted INVITE at the switch");
    assert_eq!(
        method(&again).as_deref(),
        Some("INVITE"),
        "{}",
        text(&again)
    );
    assert_eq!(
        header(&again, "Call-ID").as_deref(),
        Some(a.invite.call_id.as_str())
    );
    live.caller.expect_nothing(QUIET);
    let l = live.live_of("life");
    assert_eq!(count(&l["calls_in_progress"]), 1, "{l:#}");
    live.caller.send(&a.invite.cancel().build(), d);
    let (cancel, from) = live
        .switch
        .recv_matching(WAIT, |m| method(m).as_deref() == Some("CANCEL"))
        .expect("the CANCEL at the switch");
    live.switch
        .send(&response(&cancel, 200, "OK", Some(&a.tag), &[]), from);
    live.switch.send(
        &response(&a.at_switch, 487, "Request Terminated", Some(&a.tag), &[]),
        a.from,
    );
    let (r487, _) = live
        .caller
        .recv_matching(WAIT, |m| status_code(m) == Some(487))
        .expect("the 487 at the caller");
    live.caller.send(&a.invite.ack_for(&r487).build(), d);
    live.switch
        .recv_matching(WAIT, |m| method(m).as_deref() == Some("ACK"))
        .expect("the ACK of the 487 at the switch");
    wait_in_progress(&live, "life", 0, "call A cancelled");
    live.assert_metric(
        "creditgate_calls_ended_total",
        &[("cause", "cancelled")],
        1.0,
    );

    // 2. Answered, 200 retransmitted, the switch hangs up.
    let mut b = live.place("life", NUMBER).admitted("call B after A's 487");
    b.answer(&live);
    let ok = response(
        &b.at_switch,
        200,
        "OK",
        Some(&b.tag),
        &[("Contact", &format!("<sip:{NUMBER}@{}>", live.switch.addr()))],
    );
    live.switch.send(&ok, b.from);
    live.caller
        .recv_matching(WAIT, |m| status_code(m) == Some(200))
        .expect("the retransmitted 200 at the caller");
    // A forked 2xx (another To-tag): the same call.
    let forked = response(
        &b.at_switch,
        200,
        "OK",
        Some(&new_tag()),
        &[("Contact", &format!("<sip:{NUMBER}@{}>", live.switch.addr()))],
    );
    live.switch.send(&forked, b.from);
    live.caller
        .recv_matching(WAIT, |m| status_code(m) == Some(200))
        .expect("the forked 200 at the caller");
    let l = live.live_of("life");
    assert_eq!(
        (count(&l["calls_in_progress"]), count(&l["answered"])),
        (1, 1),
        "{l:#}"
    );
    live.place("life", NUMBER)
        .refused(CHANNEL_LIMIT, "channel_limit", "a new call while B is up");
    live.switch.send(&from_switch(&live, &b, "BYE", 1), d);
    let (bye, _) = live
        .caller
        .recv_matching(WAIT, |m| method(m).as_deref() == Some("BYE"))
        .expect("the switch's BYE at the caller");
    wait_in_progress(&live, "life", 0, "the switch's BYE ends call B");
    live.caller.send(&response(&bye, 200, "OK", None, &[]), d);
    live.switch
        .recv_matching(WAIT, |m| status_code(m) == Some(200))
        .expect("the caller's 200 of the BYE at the switch");
    live.assert_metric("creditgate_calls_ended_total", &[("cause", "bye")], 1.0);

    // 3. A re-INVITE the switch refuses (488) leaves the call up; the switch refuses the
    //    first BYE.
    let mut c = live.place("life", NUMBER).admitted("call C after B's BYE");
    c.answer(&live);
    let ok = c.ok.clone().expect("answered");
    let reinvite = c.invite.in_dialog("INVITE", &ok, 2).sdp();
    live.caller.send(&reinvite.build(), d);
    let (re, from) = live
        .switch
        .recv_matching(WAIT, |m| method(m).as_deref() == Some("INVITE"))
        .expect("call C's re-INVITE at the switch");
    live.switch
        .send(&response(&re, 488, "Not Acceptable Here", None, &[]), from);
    let (r488, _) = live
        .caller
        .recv_matching(WAIT, |m| status_code(m) == Some(488))
        .expect("the 488 of the re-INVITE at the caller");
    live.caller.send(&reinvite.ack_for(&r488).build(), d);
    let l = live.live_of("life");
    assert_eq!(
        (count(&l["calls_in_progress"]), count(&l["answered"])),
        (1, 1),
        "a failed re-INVITE ends nothing: {l:#}"
    );
    live.caller
        .send(&c.invite.in_dialog("BYE", &ok, 3).build(), d);
    let (bye, from) = live
        .switch
        .recv_matching(WAIT, |m| method(m).as_deref() == Some("BYE"))
        .expect("call C's BYE at the switch");
    live.switch.send(
        &response(&bye, 481, "Call/Transaction Does Not Exist", None, &[]),
        from,
    );
    live.caller
        .recv_matching(WAIT, |m| status_code(m) == Some(481))
        .expect("the 481 at the caller");
    let l = live.live_of("life");
    assert_eq!(
        count(&l["calls_in_progress"]),
        1,
        "a refused BYE ends nothing: {l:#}"
    );
    live.place("life", NUMBER)
        .refused(CHANNEL_LIMIT, "channel_limit", "a new call while C is up");
    live.caller
        .send(&c.invite.in_dialog("BYE", &ok, 4).build(), d);
    let (bye, from) = live
        .switch
        .recv_matching(WAIT, |m| method(m).as_deref() == Some("BYE"))
        .expect("call C's second BYE at the switch");
    live.switch
        .send(&response(&bye, 200, "OK", None, &[]), from);
    live.caller
        .recv_matching(WAIT, |m| status_code(m) == Some(200))
        .expect("the 200 of the BYE at the caller");
    wait_in_progress(&live, "life", 0, "call C's BYE answered 200");
    live.assert_metric("creditgate_calls_ended_total", &[("cause", "bye")], 2.0);
    let _d = live.place("life", NUMBER).admitted("call D after C's BYE");
    live.assert_metric("creditgate_calls_tracked", &[], 1.0);
    live.assert_metric(
        "creditgate_refusals_total",
        &[("cause", "channel_limit")],
        2.0,
    );
}

/// `ring_timeout = "3s"`: a call that only rings is forgotten (counted `ring_timeout`, its
/// slot back), while a call answered at once stays. No timing assumption beyond "answered
/// within 2 s of its INVITE" (the timeout is whole seconds: at least 2 s, at most 3 s).
#[test]
fn a_call_never_answered_is_forgotten_after_ring_timeout() {
    let accounts = account(
        "ring",
        &[
            ("balance", "100"),
            ("rate_per_min", "0.60"),
            ("max_channels", "2"),
        ],
    );
    let live = Live::file("ring_timeout = \"3s\"\n", &accounts);
    let one = live
        .place("ring", NUMBER)
        .admitted("call 1 (rings forever)");
    one.ring(&live);
    let mut two = live.place("ring", NUMBER).admitted("call 2");
    two.answer(&live);
    live.wait_live("ring", Duration::from_secs(15), "call 1 timed out", |l| {
        count(&l["ringing"]) == 0
    });
    let l = live.live_of("ring");
    assert_eq!(
        (count(&l["calls_in_progress"]), count(&l["answered"])),
        (1, 1),
        "the answered call stays: {l:#}"
    );
    live.assert_metric(
        "creditgate_calls_ended_total",
        &[("cause", "ring_timeout")],
        1.0,
    );
    let _three = live
        .place("ring", NUMBER)
        .admitted("call 3 in call 1's slot");
    live.place("ring", NUMBER)
        .refused(CHANNEL_LIMIT, "channel_limit", "call 4 (calls 2 and 3 up)");
}

/// A call the switch starts towards a customer is not one creditgate admitted, so it is not
/// tracked; the customer's in-dialog requests in it (re-INVITE, BYE) still pass in-dialog
/// (SPEC 1: calls in progress keep flowing). The customer's From user is no account: had
/// creditgate treated the re-INVITE as a new call it would have answered 403.
#[test]
fn in_dialog_requests_of_a_call_the_switch_started_pass() {
    let switch = Switch::bind();
    let cfg = with_live(&test_config(0, switch.addr(), "60s"), "").replacen(
        "workers = 2\n",
        "workers = 2\nforward_other_methods = false\n",
        1,
    );
    let live = Live::start(switch, &cfg, ACCOUNTS);
    let d = live.d();
    let sw = live.switch.addr();
    let cust = live.caller.addr();
    let inv = Request::invite(sw, cust, &new_call_id(), "gw");
    live.switch.send(&inv.build(), d);
    let (at_cust, _) = live
        .caller
        .recv_or_fail(WAIT, "the switch's INVITE at the customer");
    let rr = header(&at_cust, "Record-Route").expect("creditgate record-routes the call");
    let cust_tag = new_tag();
    let contact = format!("<sip:4930123456@{cust}>");
    live.caller.send(
        &response(
            &at_cust,
            200,
            "OK",
            Some(&cust_tag),
            &[("Contact", &contact)],
        ),
        d,
    );
    live.switch
        .recv_matching(WAIT, |m| status_code(m) == Some(200))
        .expect("the customer's 200 at the switch");

    // The customer's requests in the dialog: Route = the Record-Route set as is (callee
    // side), Request-URI = the switch's Contact, From = its own tag, To = the switch's.
    let request = |method: &str, cseq: u32| -> Vec<u8> {
        format!(
            "{method} sip:gw@{sw} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {cust};branch={br};rport\r\n\
             Max-Forwards: 70\r\n\
             Route: {rr}\r\n\
             From: <sip:4930123456@{cust}>;tag={cust_tag}\r\n\
             To: <sip:gw@example.com>;tag={sw_tag}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: {contact}\r\n\
             Content-Length: 0\r\n\r\n",
            br = new_branch(),
            sw_tag = inv.from_tag,
            cid = inv.call_id,
        )
        .into_bytes()
    };
    for (m, cseq) in [("INVITE", 1), ("BYE", 2)] {
        live.caller.send(&request(m, cseq), d);
        let (got, _) = live.switch.recv_matching(WAIT, |x| method(x).is_some()).unwrap_or_else(|| {
            panic!(
                "the customer's in-dialog {m} of a switch-started call never reached the switch\n----- daemon log -----\n{}",
                live.daemon.log()
            )
        });
        assert_eq!(method(&got).as_deref(), Some(m), "{}", text(&got));
    }
}

// ---------------------------------------------------------------------------------------------
// In-dialog requests must belong to a tracked call

/// Nothing reaches the switch after the caller's last request, and any reply is an error.
#[track_caller]
fn assert_not_passed(live: &Live, what: &str) {
    live.switch.expect_nothing(QUIET);
    if let Some((r, _)) = live.caller.recv_timeout(Duration::from_millis(100)) {
        assert!(
            status_code(&r).is_some_and(|c| c >= 400),
            "{what}: not passed, so any reply is an error:\n{}",
            text(&r)
        );
    }
}

/// SPEC 7: with tracking on, an in-dialog request of a customer must belong to a tracked
/// call ("a replayed Route token of an ended call is treated as a new call"). Four requests
/// carry a valid Route token (genuine, or minted with the test secret as creditgate mints
/// them) for a dialog creditgate does not track: a second BYE of a call that has ended, a BYE
/// of a made-up call, a re-INVITE of the made-up call from an account without credit, and a
/// re-INVITE of the ended call. None is passed as an in-dialog request: with
/// `forward_other_methods = false` the BYEs never reach the switch (any reply is an error);
/// the re-INVITEs are new calls (bob's refused 402, alice's admitted and tracked). The
/// tracked call's own BYE passes, and is the only in-dialog forward counted.
#[test]
fn in_dialog_requests_of_untracked_calls_are_not_passed_as_in_dialog() {
    let switch = Switch::bind();
    let cfg = with_live(&test_config(0, switch.addr(), "60s"), "").replacen(
        "workers = 2\n",
        "workers = 2\nforward_other_methods = false\n",
        1,
    );
    let live = Live::start(switch, &cfg, ACCOUNTS);
    let d = live.d();

    // A tracked call of alice: answered, its BYE passes as in-dialog.
    let mut call = live.place("alice", NUMBER).admitted("alice's call");
    call.answer(&live);
    let in_dialog_before = live.metric("creditgate_forwards_total", &[("kind", "in_dialog")]);
    call.bye(&live);
    live.assert_metric(
        "creditgate_forwards_total",
        &[("kind", "in_dialog")],
        in_dialog_before + 1.0,
    );
    live.wait_live("alice", WAIT, "alice's call ended", |l| {
        count(&l["calls_in_progress"]) == 0
    });
    let ok = call.ok.clone().expect("answered");

    // 1. A second BYE of the ended call (new transaction, same valid token): not in-dialog.
    let bye2 = call.invite.in_dialog("BYE", &ok, 3);
    assert!(
        !bye2.routes.is_empty(),
        "the 200 carried creditgate's Record-Route"
    );
    live.caller.send(&bye2.build(), d);
    assert_not_passed(&live, "a BYE of an ended call");

    // 2. A BYE of a made-up call with a token minted as creditgate mints them.
    let call_id = new_call_id();
    let from_tag = new_tag();
    let minutes = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    let token = crate::hardening::mint(&call_id, &from_tag, minutes);
    let made_up = |method: &str, user: &str| {
        Request::new(
            method,
            &format!("sip:{NUMBER}@{}", live.switch.addr()),
            live.caller.addr(),
            &call_id,
            user,
        )
        .with_from_tag(&from_tag)
        .with_to_tag(Some("made-up"))
        .with_cseq(2)
        .with_route(&format!("<sip:{d};lr;cgt={token}>"))
    };
    live.caller.send(&made_up("BYE", "alice").build(), d);
    assert_not_passed(&live, "a BYE of a made-up call with a valid token");

    // 3. A re-INVITE of the made-up call from bob (no credit): a new call, 402.
    live.caller.send(&made_up("INVITE", "bob").sdp().build(), d);
    let (r, _) = live
        .caller
        .recv_or_fail(WAIT, "a reply to bob's untracked re-INVITE");
    assert_eq!(status_code(&r), Some(402), "{}", text(&r));
    live.switch.expect_nothing(QUIET);

    // 4. A re-INVITE of alice's ended call: a new call (alice has credit): credit-checked,
    //    admitted and tracked, not passed in-dialog.
    let admitted_before = live.metric("creditgate_new_calls_total", &[("outcome", "admitted")]);
    let reinvite = call.invite.in_dialog("INVITE", &ok, 4).sdp();
    live.caller.send(&reinvite.build(), d);
    let (fwd, _) = live
        .switch
        .recv_or_fail(WAIT, "alice's re-INVITE of an ended call, as a new call");
    assert_eq!(method(&fwd).as_deref(), Some("INVITE"), "{}", text(&fwd));
    live.assert_metric(
        "creditgate_new_calls_total",
        &[("outcome", "admitted")],
        admitted_before + 1.0,
    );
    let l = live.live_of("alice");
    assert_eq!(
        count(&l["calls_in_progress"]),
        1,
        "tracked as a new call: {l:#}"
    );
    // Only the tracked call's BYE was passed in-dialog.
    live.assert_metric(
        "creditgate_forwards_total",
        &[("kind", "in_dialog")],
        in_dialog_before + 1.0,
    );
}

// ---------------------------------------------------------------------------------------------
// Snapshots and expiry

/// SPEC 7: "A new snapshot drops the part of ended calls that ended before that snapshot was
/// read (billing has them); calls in progress keep holding." File source, refreshed every
/// second. Call A (60/min) is answered, lasts about two seconds and ends; call B is answered
/// and stays up. Billing then writes the balance that charges call A (100.00 → 97.00); once
/// a refresh has read it, call A's cost is no longer counted (ended since snapshot 0), and
/// call B still holds what it held (it is still in progress).
#[test]
fn a_refresh_drops_the_ended_calls_it_covers_and_calls_in_progress_keep_holding() {
    let accounts = |balance: &str| account("refr", &[("balance", balance), ("rate_per_min", "60")]);
    let switch = Switch::bind();
    let cfg = with_live(&test_config(0, switch.addr(), "60s"), "").replacen(
        "refresh_interval = \"1h\"\nmax_staleness = \"2h\"",
        "refresh_interval = \"1s\"",
        1,
    );
    assert!(cfg.contains("refresh_interval = \"1s\""), "{cfg}");
    let live = Live::start(switch, &cfg, &accounts("100.00"));
    let mut a = live.place("refr", NUMBER).admitted("call A");
    a.answer(&live);
    let mut b = live.place("refr", NUMBER).admitted("call B");
    b.answer(&live);
    std::thread::sleep(Duration::from_secs(2));
    a.bye(&live);
    let l = live.wait_live("refr", WAIT, "call A ended", |l| {
        count(&l["calls_in_progress"]) == 1
    });
    assert!(money(&l["ended_since_snapshot"]) >= dec("2"), "{l:#}");

    live.daemon.rewrite_accounts(&accounts("97.00"));
    let l = live.wait_live(
        "refr",
        Duration::from_secs(15),
        "a refresh read after call A's end covers it",
        |l| {
            money(&l["snapshot_available"]) == dec("97.00")
                && money(&l["ended_since_snapshot"]) == dec("0")
        },
    );
    assert_eq!(
        count(&l["calls_in_progress"]),
        1,
        "call B is still up: {l:#}"
    );
    assert_eq!(count(&l["answered"]), 1, "{l:#}");
    assert!(
        money(&l["held"]) >= dec("2"),
        "call B (answered before A's two seconds) still holds its accrued cost: {l:#}"
    );
    assert_eq!(
        money(&l["live_available"]),
        dec("97.00") - money(&l["held"]),
        "{l:#}"
    );
    b.bye(&live);
}

/// `call_expiry = "1m"`: an answered call whose BYE never comes is forgotten after a minute
/// (counted `expired`), and what it cost counts as ended (at least 60 s at 0.60/min).
/// Takes a little over a minute; polls, with 60 s of slack.
#[test]
fn an_answered_call_whose_bye_never_comes_is_forgotten_after_call_expiry() {
    let accounts = account("exp", &[("balance", "100"), ("rate_per_min", "0.60")]);
    let live = Live::file("call_expiry = \"1m\"\nring_timeout = \"3s\"\n", &accounts);
    let mut call = live.place("exp", NUMBER).admitted("the call");
    call.answer(&live);
    let l = live.wait_live(
        "exp",
        Duration::from_secs(120),
        "the call forgotten after call_expiry",
        |l| count(&l["calls_in_progress"]) == 0,
    );
    assert!(
        money(&l["ended_since_snapshot"]) >= dec("0.60"),
        "60 s at 0.60/min counted as ended: {l:#}"
    );
    live.assert_metric("creditgate_calls_ended_total", &[("cause", "expired")], 1.0);
    live.assert_metric("creditgate_calls_tracked", &[], 0.0);
}
