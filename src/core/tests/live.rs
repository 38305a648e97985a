//! Issue 11, live credit through the core (SPEC 7): the live check and hold of a new INVITE,
//! the call events the passing messages make, the tracked-call rule for in-dialog requests,
//! `unrated`, and the dry run.

use super::*;
use crate::credit::Limits;
use crate::live::calls::{EndCause, LiveConfig, LiveState};
use crate::live::ledger::Refusal;

struct LiveWorld {
    w: World,
    live: LiveState,
}

fn limits(rate: &str) -> Limits {
    Limits {
        rate_per_min: Some(Decimal::from_str(rate).unwrap()),
        ..Limits::default()
    }
}

/// `alice`: 1.00 of credit at 1.00/min. `free`: 10.00, no rate. `chan`: max_channels 1.
fn live_world(reserve_secs: u32) -> LiveWorld {
    let t0 = Instant::now();
    let snap = Snapshot::new(t0);
    let mut alice = acct("alice", "1.00", "0");
    alice.limits = Some(Box::new(limits("1.00")));
    let mut chan = acct("chan", "100", "0");
    chan.limits = Some(Box::new(Limits {
        max_channels: Some(1),
        ..limits("0.10")
    }));
    snap.apply_full(
        vec![alice, chan, acct("free", "10", "0"), acct("bob", "0", "0")],
        t0,
        0.5,
        false,
    )
    .unwrap();
    let live = LiveState::new(
        LiveConfig {
            reserve_secs,
            ..LiveConfig::default()
        },
        t0,
    );
    LiveWorld {
        w: World { snap, t0 },
        live,
    }
}

/// One datagram through the core (leaked: tests keep outcomes across later calls).
fn run_live(lw: &LiveWorld, p: &Policy, data: &[u8], from: &str, secs: u64) -> Outcome<'static> {
    let data: &'static [u8] = Box::leak(data.to_vec().into_boxed_slice());
    handle_live(
        Packet {
            data,
            source: sa(from),
            local: sa(CG),
            now: lw.w.t0 + Duration::from_secs(secs),
            wall_secs: WALL + secs,
        },
        &lw.w.snap,
        p,
        Some(&lw.live),
    )
}

fn policy_with(f: impl FnOnce(&mut Config)) -> Policy {
    let mut c = config();
    c.live.track_calls = true;
    f(&mut c);
    policy_from(&c)
}

/// The switch's BYE to the customer, inside the dialog (Route = the Record-Route).
fn switch_bye(call: &str, rr: &str) -> Vec<u8> {
    format!(
        "BYE sip:alice@127.0.0.1:40000 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKsw-bye-{call}\r\n\
         Max-Forwards: 70\r\n\
         Route: {rr}\r\n\
         From: <sip:+4915112345@example.com>;tag=sw-tag\r\n\
         To: <sip:alice@example.com>;tag=ft-{call}\r\n\
         Call-ID: {call}@example.com\r\n\
         CSeq: 9 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn a_call_is_tracked_from_invite_to_the_switchs_ok_to_bye() {
    let lw = live_world(30);
    let p = policy_with(|_| {});
    let inv = invite("alice", "c1", "");
    let o = run_live(&lw, &p, &inv, CALLER, 1);
    assert_eq!(
        o.live,
        LiveNote::Tracked {
            retransmission: false
        }
    );
    let (_, f) = fwd(&o);
    assert_eq!(lw.live.tracked(), 1);
    // A retransmission holds nothing more.
    let o = run_live(&lw, &p, &inv, CALLER, 1);
    assert_eq!(
        o.live,
        LiveNote::Tracked {
            retransmission: true
        }
    );
    // 180 changes nothing; 200 answers; a retransmitted 200 changes nothing.
    let o = run_live(
        &lw,
        &p,
        &switch_response(&f, 180, Some("sw-tag")),
        SWITCH,
        2,
    );
    assert_eq!(o.live, LiveNote::None);
    let ok = switch_response(&f, 200, Some("sw-tag"));
    let o = run_live(&lw, &p, &ok, SWITCH, 2);
    assert_eq!(o.live, LiveNote::Answered);
    let (_, ok_fwd) = fwd(&o);
    assert_eq!(run_live(&lw, &p, &ok, SWITCH, 3).live, LiveNote::None);
    // The customer's BYE passes but does not end the call: the switch's 200 to it does.
    let rr = hdr(&ok_fwd, "record-route")[0].to_string();
    let bye = in_dialog("BYE", "c1", "alice", &format!("Route: {rr}\r\n"), 2);
    let o = run_live(&lw, &p, &bye, CALLER, 20);
    assert_eq!(o.event, Event::Passed(PassKind::InDialog));
    assert_eq!(o.live, LiveNote::None);
    assert_eq!(lw.live.tracked(), 1);
    let (_, bye_fwd) = fwd(&o);
    let o = run_live(&lw, &p, &switch_response(&bye_fwd, 200, None), SWITCH, 20);
    assert_eq!(o.live, LiveNote::Ended(EndCause::Bye));
    assert_eq!(lw.live.tracked(), 0);
}

#[test]
fn a_bye_the_switch_refuses_leaves_the_call_counted() {
    let lw = live_world(0);
    let p = policy_with(|_| {});
    let (_, f) = fwd(&run_live(&lw, &p, &invite("alice", "c2", ""), CALLER, 1));
    let (_, ok) = fwd(&run_live(
        &lw,
        &p,
        &switch_response(&f, 200, Some("sw-tag")),
        SWITCH,
        2,
    ));
    let rr = hdr(&ok, "record-route")[0].to_string();
    let bye = in_dialog("BYE", "c2", "alice", &format!("Route: {rr}\r\n"), 2);
    let (_, bye_fwd) = fwd(&run_live(&lw, &p, &bye, CALLER, 5));
    let o = run_live(&lw, &p, &switch_response(&bye_fwd, 481, None), SWITCH, 5);
    assert_eq!(o.live, LiveNote::None);
    assert_eq!(lw.live.tracked(), 1, "481 to the BYE: the call goes on");
}

#[test]
fn the_switchs_bye_ends_the_call_at_once() {
    let lw = live_world(0);
    let p = policy_with(|_| {});
    let (_, f) = fwd(&run_live(&lw, &p, &invite("alice", "c3", ""), CALLER, 1));
    let (_, ok) = fwd(&run_live(
        &lw,
        &p,
        &switch_response(&f, 200, Some("sw-tag")),
        SWITCH,
        2,
    ));
    let rr = hdr(&ok, "record-route")[0].to_string();
    let o = run_live(&lw, &p, &switch_bye("c3", &rr), SWITCH, 30);
    assert_eq!(o.event, Event::Passed(PassKind::FromUpstream));
    assert_eq!(o.live, LiveNote::Ended(EndCause::Bye));
    assert_eq!(lw.live.tracked(), 0);
}

#[test]
fn a_reserve_refuses_the_call_credit_cannot_cover_and_a_failure_releases_it() {
    // alice: 1.00 at 1.00/min, reserve 60 s: one call holds all of it.
    let lw = live_world(60);
    let p = policy_with(|_| {});
    let (_, f) = fwd(&run_live(&lw, &p, &invite("alice", "r1", ""), CALLER, 1));
    let o = run_live(&lw, &p, &invite("alice", "r2", ""), CALLER, 1);
    assert_eq!(
        o.live,
        LiveNote::Refused(LiveRefusal::Ledger(Refusal::InsufficientCredit))
    );
    assert_eq!(
        o.event,
        Event::Refused {
            cause: RefusalCause::InsufficientCredit,
            account: Some(AccountId::Borrowed("alice")),
            call_id: b"r2@example.com",
        }
    );
    assert_eq!(status(&reply(&o).1), 402);
    // 487 after a CANCEL ends the first call and releases its hold.
    let o = run_live(
        &lw,
        &p,
        &switch_response(&f, 487, Some("sw-tag")),
        SWITCH,
        2,
    );
    assert_eq!(o.live, LiveNote::Ended(EndCause::Cancelled));
    let o = run_live(&lw, &p, &invite("alice", "r3", ""), CALLER, 3);
    assert!(matches!(o.live, LiveNote::Tracked { .. }), "{:?}", o.live);
    let (_, f3) = fwd(&o);
    let o = run_live(
        &lw,
        &p,
        &switch_response(&f3, 486, Some("sw-tag")),
        SWITCH,
        4,
    );
    assert_eq!(o.live, LiveNote::Ended(EndCause::Failed));
}

#[test]
fn the_channel_limit_and_its_reply() {
    let lw = live_world(0);
    let p = policy_with(|_| {});
    assert!(matches!(
        run_live(&lw, &p, &invite("chan", "h1", ""), CALLER, 1).live,
        LiveNote::Tracked { .. }
    ));
    let o = run_live(&lw, &p, &invite("chan", "h2", ""), CALLER, 1);
    assert_eq!(
        o.live,
        LiveNote::Refused(LiveRefusal::Ledger(Refusal::ChannelLimit))
    );
    assert_eq!(status(&reply(&o).1), 503);
}

#[test]
fn unrated_numbers_are_admitted_free_or_refused_with_no_rate() {
    let lw = live_world(60);
    let admit = policy_with(|_| {});
    let o = run_live(&lw, &admit, &invite("free", "u1", ""), CALLER, 1);
    assert!(matches!(o.live, LiveNote::Tracked { .. }), "{:?}", o.live);
    let refuse = policy_with(|c| c.live.unrated = crate::config::Unrated::Refuse);
    let o = run_live(&lw, &refuse, &invite("free", "u2", ""), CALLER, 1);
    assert_eq!(o.live, LiveNote::Refused(LiveRefusal::NoRate));
    let (_, r) = reply(&o);
    assert_eq!(status(&r), 403);
    assert!(r.contains("no_rate"), "{r}");
    // A rated account is not affected.
    let o = run_live(&lw, &refuse, &invite("alice", "u3", ""), CALLER, 1);
    assert!(matches!(o.live, LiveNote::Tracked { .. }), "{:?}", o.live);
}

#[test]
fn a_token_of_an_ended_call_is_no_pass() {
    let lw = live_world(0);
    let p = policy_with(|_| {});
    let (_, f) = fwd(&run_live(&lw, &p, &invite("alice", "t1", ""), CALLER, 1));
    let (_, ok) = fwd(&run_live(
        &lw,
        &p,
        &switch_response(&f, 200, Some("sw-tag")),
        SWITCH,
        2,
    ));
    let rr = hdr(&ok, "record-route")[0].to_string();
    let route = format!("Route: {rr}\r\n");
    // In progress: a re-INVITE passes unchecked.
    let o = run_live(
        &lw,
        &p,
        &in_dialog("INVITE", "t1", "alice", &route, 2),
        CALLER,
        3,
    );
    assert_eq!(o.event, Event::Passed(PassKind::InDialog));
    // The switch hangs up; alice runs dry.
    run_live(&lw, &p, &switch_bye("t1", &rr), SWITCH, 10);
    lw.w.snap.upsert(acct("alice", "0", "0"));
    // The replayed token: a re-INVITE is a new call (refused), a BYE is out of dialog.
    let o = run_live(
        &lw,
        &p,
        &in_dialog("INVITE", "t1", "alice", &route, 3),
        CALLER,
        11,
    );
    assert_eq!(status(&reply(&o).1), 402);
    assert_eq!(o.live, LiveNote::None);
    let o = run_live(
        &lw,
        &p,
        &in_dialog("BYE", "t1", "alice", &route, 4),
        CALLER,
        11,
    );
    assert_eq!(o.event, Event::Passed(PassKind::OtherMethod));
    assert_eq!(o.live, LiveNote::Untracked);
    // With forward_other_methods = false it is refused.
    let strict = policy_with(|c| c.sip.forward_other_methods = false);
    let o = run_live(
        &lw,
        &strict,
        &in_dialog("BYE", "t1", "alice", &route, 5),
        CALLER,
        11,
    );
    assert_eq!(o.event, Event::Answered(Answer::MethodNotAllowed));
    // In a dry run it passes, noted.
    let dry = policy_with(|c| c.credit.enforce = false);
    let o = run_live(
        &lw,
        &dry,
        &in_dialog("BYE", "t1", "alice", &route, 6),
        CALLER,
        11,
    );
    assert_eq!(o.event, Event::Passed(PassKind::InDialog));
    assert_eq!(o.live, LiveNote::Untracked);
}

#[test]
fn the_called_customers_requests_need_no_tracked_call() {
    // The switch calls the customer: not a call creditgate admitted, never tracked; the
    // customer's in-dialog requests (its BYE) pass on the token as before.
    let lw = live_world(0);
    let p = policy_with(|_| {});
    let m = "INVITE sip:alice@127.0.0.1:40000 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKsw-in1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+4930111@switch.example>;tag=node-in1\r\n\
         To: <sip:alice@example.com>\r\n\
         Call-ID: in1@switch\r\n\
         CSeq: 1 INVITE\r\n\
         Content-Length: 0\r\n\r\n";
    let o = run_live(&lw, &p, m.as_bytes(), SWITCH, 1);
    let (_, f) = fwd(&o);
    let rr = hdr(&f, "record-route")[0].to_string();
    let bye = format!(
        "BYE sip:gw@127.0.0.2:5080 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-cust-bye\r\n\
         Max-Forwards: 70\r\n\
         Route: {rr}\r\n\
         From: <sip:alice@example.com>;tag=cust-tag\r\n\
         To: <sip:+4930111@switch.example>;tag=node-in1\r\n\
         Call-ID: in1@switch\r\n\
         CSeq: 1 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let o = run_live(&lw, &p, bye.as_bytes(), CALLER, 5);
    assert_eq!(o.event, Event::Passed(PassKind::InDialog));
    assert_eq!(o.live, LiveNote::None);
}

#[test]
fn a_dry_run_forwards_and_tracks_the_call_over_a_limit() {
    let lw = live_world(0);
    let p = policy_with(|c| c.credit.enforce = false);
    run_live(&lw, &p, &invite("chan", "d1", ""), CALLER, 1);
    let o = run_live(&lw, &p, &invite("chan", "d2", ""), CALLER, 1);
    assert!(matches!(o.action, Action::Forward { .. }));
    assert_eq!(
        o.event,
        Event::WouldRefuse {
            cause: RefusalCause::ChannelLimit,
            account: Some(AccountId::Borrowed("chan")),
            call_id: b"d2@example.com",
        }
    );
    assert_eq!(
        o.live,
        LiveNote::Refused(LiveRefusal::Ledger(Refusal::ChannelLimit))
    );
    assert_eq!(lw.live.tracked(), 2, "forwarded, so tracked");
    // Even a call the snapshot refuses (bob has nothing) is tracked in a dry run.
    let o = run_live(&lw, &p, &invite("bob", "d3", ""), CALLER, 1);
    assert!(matches!(o.event, Event::WouldRefuse { .. }));
    assert_eq!(lw.live.tracked(), 3);
}

#[test]
fn a_forged_ok_changes_nothing() {
    let lw = live_world(0);
    let p = policy_with(|_| {});
    let (_, f) = fwd(&run_live(&lw, &p, &invite("alice", "f1", ""), CALLER, 1));
    let forged = text(&switch_response(&f, 200, Some("sw-tag"))).replace("z9hG4bKcg", "z9hG4bKcx");
    let o = run_live(&lw, &p, forged.as_bytes(), SWITCH, 2);
    assert_eq!(o.event, Event::Dropped(DropReason::NotOurVia));
    assert_eq!(o.live, LiveNote::None);
    let info = lw
        .live
        .call(lw.live.call_key(b"f1@example.com", b"ft-f1"))
        .unwrap();
    assert_eq!(info.state, crate::live::calls::CallState::Ringing);
}
