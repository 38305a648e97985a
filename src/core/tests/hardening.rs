//! Issue 9, relay and routing holes (items 1 to 5 and 10): responses go only where their
//! request came from, customers reach only upstream `IP:port`s or the trusted node of their
//! dialog, a To-tag is no free pass, Route tokens expire, and an IPv6 caller to an IPv4 switch
//! is double record-routed (RFC 5658).

use super::*;

fn run_at<'a>(
    w: &World,
    p: &Policy,
    data: &'a [u8],
    from: &str,
    local: &str,
    wall: u64,
) -> Outcome<'a> {
    handle(
        Packet {
            data,
            source: sa(from),
            local: sa(local),
            now: w.t0 + Duration::from_secs(1),
            wall_secs: wall,
        },
        &w.snap,
        p,
    )
}

/// The switch calls `bob` (dry) at the caller's address: the INVITE as the customer gets it.
fn switch_invite_to_customer(w: &World, p: &Policy, call: &str, from: &str) -> String {
    let m = format!(
        "INVITE sip:bob@127.0.0.1:40000 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bKsw-{call}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+4930111@switch.example>;tag=node-{call}\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: {call}@switch\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:gw@{from}>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    let o = run(w, p, m.as_bytes(), from);
    assert_eq!(o.event, Event::Passed(PassKind::FromUpstream));
    let (to, f) = fwd(&o);
    assert_eq!(to, sa(CALLER));
    f
}

// --- Item 1: responses go only where their request came from ---------------------------------

#[test]
fn a_response_whose_next_via_was_edited_is_dropped() {
    let w = world();
    let p = policy();
    // Customer side: the switch's INVITE reaches the customer, whose 180 edits the switch's Via.
    let f = switch_invite_to_customer(&w, &p, "e1", SWITCH);
    let vias = hdr(&f, "via");
    assert_eq!(
        param(vias[1], "received"),
        Some("127.0.0.2"),
        "received is always written: {}",
        vias[1]
    );
    let good = text(&switch_response(&f, 180, Some("bob")));
    let o = run(&w, &p, good.as_bytes(), CALLER);
    assert_eq!(
        fwd(&o).0,
        sa(SWITCH),
        "the untouched 180 goes to the switch"
    );
    let sw_via = vias[1];
    for edited in [
        format!("{sw_via};rport=9999"),
        sw_via.replace("received=127.0.0.2", "received=203.0.113.5"),
        format!(
            "{};rport=9999",
            sw_via.replace("received=127.0.0.2", "received=203.0.113.5")
        ),
        format!("{sw_via};received=127.0.0.3"),
        sw_via.replace("127.0.0.2:5080;", "127.0.0.2:5081;"),
    ] {
        let forged = good.replace(sw_via, &edited);
        assert_ne!(forged, good);
        let o = run(&w, &p, forged.as_bytes(), CALLER);
        assert_eq!(o.event, Event::Dropped(DropReason::NotOurVia), "{edited}");
        assert_eq!(o.action, Action::Drop, "{edited}");
    }
    // Caller side: a received= of the caller's own, with a sent-by equal to the source and no
    // rport, is overwritten; the switch's 180 goes back to the source.
    let m = text(&invite("alice", "e2", "")).replace(
        "127.0.0.1:40000;rport;branch",
        "127.0.0.1:40000;received=127.0.0.3;branch",
    );
    let (_, f) = fwd(&run(&w, &p, m.as_bytes(), CALLER));
    assert_eq!(
        param(hdr(&f, "via")[1], "received"),
        Some("127.0.0.1"),
        "{f}"
    );
    let r = switch_response(&f, 180, Some("sw"));
    assert_eq!(fwd(&run(&w, &p, &r, SWITCH)).0, sa(CALLER));
    // Its retransmission, CANCEL and the ACK of a non-2xx from the same source keep the branch.
    let (_, f2) = fwd(&run(&w, &p, m.as_bytes(), CALLER));
    let b = |f: &str| param(hdr(f, "via")[0], "branch").unwrap().to_string();
    assert_eq!(b(&f), b(&f2));
    let cancel = text(&as_method(m.as_bytes(), "CANCEL"));
    assert_eq!(b(&fwd(&run(&w, &p, cancel.as_bytes(), CALLER)).1), b(&f));
    // With rport, the same request from another source port has another response target, so
    // another branch.
    let m = invite("alice", "e3", "");
    let (_, f3) = fwd(&run(&w, &p, &m, CALLER));
    let (_, f4) = fwd(&run(&w, &p, &m, "127.0.0.1:40001"));
    assert_ne!(b(&f3), b(&f4));
}

// --- Item 2: customers reach only upstream IP:ports ------------------------------------------

#[test]
fn customers_never_reach_another_port_of_a_switch_host() {
    let w = world();
    let p = policy();
    let m = text(&invite("alice", "p1", "")).replace(
        "INVITE sip:+4915112345@127.0.0.1 SIP/2.0",
        "INVITE sip:+4915112345@127.0.0.2:15099 SIP/2.0",
    );
    assert_eq!(fwd(&run(&w, &p, m.as_bytes(), CALLER)).0, sa(SWITCH));
    let bye = in_dialog(
        "BYE",
        "p2",
        "alice",
        "Route: <sip:127.0.0.2:15099;lr>\r\n",
        2,
    );
    assert_eq!(fwd(&run(&w, &p, &bye, CALLER)).0, sa(SWITCH));
    // Several upstreams: one named exactly is honoured, another port of its host is not.
    let mut c = config();
    c.sip.upstream = vec![sa("127.0.0.2:5080"), sa("127.0.0.3:5080")];
    let p = policy_from(&c);
    for call in ["p3", "p4", "p5", "p6"] {
        let hashed = p
            .upstream_for(format!("{call}@example.com").as_bytes())
            .unwrap();
        let other = if hashed == sa("127.0.0.2:5080") {
            "127.0.0.3"
        } else {
            "127.0.0.2"
        };
        let exact = text(&invite("alice", call, "")).replace(
            "INVITE sip:+4915112345@127.0.0.1 SIP/2.0",
            &format!("INVITE sip:+4915112345@{other}:5080 SIP/2.0"),
        );
        assert_eq!(
            fwd(&run(&w, &p, exact.as_bytes(), CALLER)).0,
            sa(&format!("{other}:5080"))
        );
        let wrong_port = exact.replacen(":5080 SIP/2.0", ":5090 SIP/2.0", 1);
        assert_eq!(fwd(&run(&w, &p, wrong_port.as_bytes(), CALLER)).0, hashed);
    }
}

// --- Item 3: in-dialog requests of a trusted node's call go back to that node ----------------

fn node_policy() -> Policy {
    let mut c = config();
    c.sip.trusted = vec!["198.51.100.0/24".parse().unwrap()];
    policy_from(&c)
}

/// bob's request in the dialog the node at `node` started: To carries the node's tag.
fn from_customer(method: &str, call: &str, ruri_host: &str, route: &str, cseq: u32) -> Vec<u8> {
    format!(
        "{method} sip:gw@{ruri_host} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK-{call}-{method}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         {route}\
         From: <sip:bob@example.com>;tag=bob-{call}\r\n\
         To: <sip:+4930111@switch.example>;tag=node-{call}\r\n\
         Call-ID: {call}@switch\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn in_dialog_requests_of_a_trusted_nodes_call_go_back_to_that_node() {
    let w = world();
    let p = node_policy();
    let node = "198.51.100.7:5060";
    let f = switch_invite_to_customer(&w, &p, "n1", node);
    let ok = switch_response(&f, 200, Some("bob-n1"));
    let o = run(&w, &p, &ok, CALLER);
    let (to, ok) = fwd(&o);
    assert_eq!(to, sa(node));
    let rr = hdr(&ok, "record-route")[0].to_string();
    let route = format!("Route: {rr}\r\n");
    for (method, cseq) in [("ACK", 1), ("INVITE", 2), ("BYE", 3)] {
        let m = from_customer(method, "n1", node, &route, cseq);
        let o = run(&w, &p, &m, CALLER);
        let (to, f) = fwd(&o);
        assert_eq!(to, sa(node), "{method}: {:?}", o.event);
        assert!(hdr(&f, "route").is_empty(), "{method}");
        // Whatever the Request-URI names, the dialog's node is where it goes.
        let m = from_customer(method, "n1", "198.51.100.8:5060", &route, cseq);
        assert_eq!(fwd(&run(&w, &p, &m, CALLER)).0, sa(node), "{method}");
    }
    // Without the token, or with the node in the token changed, the node is not reachable.
    let m = from_customer("BYE", "n1", node, "", 4);
    assert_eq!(fwd(&run(&w, &p, &m, CALLER)).0, sa(SWITCH));
    let node_hex = param(&rr, "cgn")
        .expect("the node is in the Route URI")
        .to_string();
    let other = rr.replace(&node_hex, &node_hex.replace("07", "08"));
    assert_ne!(other, rr);
    let m = from_customer(
        "BYE",
        "n1",
        "198.51.100.8:5060",
        &format!("Route: {other}\r\n"),
        4,
    );
    assert_eq!(fwd(&run(&w, &p, &m, CALLER)).0, sa(SWITCH));
    // A customer's own call carries no node.
    let (_, ok) = established(&w, &p, "alice", "n2");
    assert_eq!(param(hdr(&ok, "record-route")[0], "cgn"), None);
}

// --- Item 4: a To-tag is no free pass --------------------------------------------------------

#[test]
fn forward_other_methods_false_is_not_bypassed_by_a_to_tag() {
    let w = world();
    let mut c = config();
    c.sip.forward_other_methods = false;
    let p = policy_from(&c);
    let message = |call: &str, route: &str| in_dialog("MESSAGE", call, "nobody", route, 2);
    let m = message("t1", "");
    let o = run(&w, &p, &m, CALLER);
    assert_eq!(o.event, Event::Answered(Answer::MethodNotAllowed));
    assert_eq!(status(&reply(&o).1), 403);
    // A made-up token does not help either.
    let m = message(
        "t1",
        "Route: <sip:127.0.0.1:5060;lr;cgt=29000000-0123456789abcdef0123>\r\n",
    );
    let o = run(&w, &p, &m, CALLER);
    assert_eq!(o.event, Event::Answered(Answer::MethodNotAllowed));
    // A dialog's own token does.
    let (_, ok) = established(&w, &p, "alice", "t2");
    let route = format!("Route: {}\r\n", hdr(&ok, "record-route")[0]);
    for method in ["MESSAGE", "BYE", "INFO"] {
        let m = in_dialog(method, "t2", "alice", &route, 2);
        let o = run(&w, &p, &m, CALLER);
        assert_eq!(o.event, Event::Passed(PassKind::InDialog), "{method}");
    }
    // By default such requests without a token are forwarded as out-of-dialog ones.
    let m = message("t3", "");
    let o = run(&w, &policy(), &m, CALLER);
    assert_eq!(o.event, Event::Passed(PassKind::OtherMethod));
    // With record_route = false there is no token: a To-tag is all there is (docs say so).
    c.sip.record_route = false;
    let m = message("t4", "");
    let o = run(&w, &policy_from(&c), &m, CALLER);
    assert_eq!(o.event, Event::Passed(PassKind::InDialog));
}

// --- Item 5: Route tokens expire ---------------------------------------------------------------

#[test]
fn route_tokens_carry_their_issue_time_and_expire_after_call_expiry() {
    let w = world();
    let p = policy();
    let (_, ok) = established(&w, &p, "alice", "x1");
    let rr = hdr(&ok, "record-route")[0].to_string();
    let token = param(&rr, "cgt").unwrap().to_string();
    let (minutes, _) = token.split_once('-').expect("cgt = MINUTES-MAC");
    assert_eq!(minutes, (WALL / 60).to_string());
    w.snap.upsert(acct("alice", "0", "0"));
    let route = format!("Route: {rr}\r\n");
    let reinvite = in_dialog("INVITE", "x1", "alice", &route, 2);
    let at = |p: &Policy, wall: u64| run_at(&w, p, &reinvite, CALLER, CG, wall).event;
    assert_eq!(
        at(&p, WALL + 4 * 3600 - 60),
        Event::Passed(PassKind::InDialog)
    );
    assert!(
        matches!(at(&p, WALL + 4 * 3600 + 120), Event::Refused { .. }),
        "an expired token makes a re-INVITE a new call"
    );
    // A restart with the same secret keeps tokens valid; call_expiry sets the life.
    let mut c = config();
    c.live.call_expiry = Duration::from_secs(3600);
    let short = policy_from(&c);
    assert_eq!(at(&short, WALL + 1800), Event::Passed(PassKind::InDialog));
    assert!(matches!(
        at(&short, WALL + 3600 + 120),
        Event::Refused { .. }
    ));
    // A token dated later (or re-dated by the customer) is refused.
    assert!(matches!(at(&p, WALL - 600), Event::Refused { .. }));
    let redated = rr.replace(
        &format!("cgt={minutes}-"),
        &format!("cgt={}-", WALL / 60 + 200),
    );
    let m = in_dialog("INVITE", "x1", "alice", &format!("Route: {redated}\r\n"), 3);
    assert!(matches!(
        run_at(&w, &p, &m, CALLER, CG, WALL + 4 * 3600 + 120).event,
        Event::Refused { .. }
    ));
}

// --- Item 10: RFC 5658 double Record-Route --------------------------------------------------

#[test]
fn ipv6_caller_to_ipv4_switch_is_double_record_routed() {
    let w = world();
    let mut c = config();
    c.sip.listen = vec![sa(CG), sa("[::1]:5060")];
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
    let caller6 = "[2001:db8::77]:40000";
    let m = text(&invite("alice", "d6", ""))
        .replace("127.0.0.1:40000;rport", "[2001:db8::77]:40000;rport");
    let o = run_at(&w, &p, m.as_bytes(), caller6, "[::1]:5060", WALL);
    let Action::Forward { from, to, bytes } = &o.action else {
        panic!("{:?}", o.event)
    };
    assert_eq!((*from, *to), (sa(CG), sa(SWITCH)));
    let f = text(bytes);
    let rr = hdr(&f, "record-route");
    assert_eq!(rr.len(), 2, "{f}");
    // RFC 5658 4: the top one faces the switch (egress), the next the caller (ingress).
    assert!(
        rr[0].starts_with("<sip:127.0.0.1:5060;lr;cgt="),
        "{}",
        rr[0]
    );
    assert!(rr[1].starts_with("<sip:[::1]:5060;lr;cgt="), "{}", rr[1]);
    assert_eq!(param(rr[0], "cgt"), param(rr[1], "cgt"));
    // The switch's BYE (Route set in Record-Route order) pops both and reaches the caller.
    let sw_bye = format!(
        "BYE sip:alice@[2001:db8::77]:40000 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.2:5080;branch=z9hG4bKsw-bye-d6\r\n\
         Max-Forwards: 70\r\n\
         Route: {}, {}\r\n\
         From: <sip:+4915112345@example.com>;tag=sw-tag\r\n\
         To: \"Caller\" <sip:alice@example.com>;tag=ft-d6\r\n\
         Call-ID: d6@example.com\r\n\
         CSeq: 5 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        rr[0], rr[1]
    );
    let o = run_at(&w, &p, sw_bye.as_bytes(), SWITCH, CG, WALL);
    let Action::Forward { from, to, bytes } = &o.action else {
        panic!("{:?}", o.event)
    };
    assert_eq!((*from, *to), (sa("[::1]:5060"), sa(caller6)));
    assert!(hdr(&text(bytes), "route").is_empty(), "{}", text(bytes));
    // The caller's BYE (Route set reversed, on two lines) pops both and reaches the switch.
    let route = format!("Route: {}\r\nRoute: {}\r\n", rr[1], rr[0]);
    let bye = text(&in_dialog("BYE", "d6", "alice", &route, 2))
        .replace("127.0.0.1:40000;rport", "[2001:db8::77]:40000;rport");
    let o = run_at(&w, &p, bye.as_bytes(), caller6, "[::1]:5060", WALL);
    assert_eq!(o.event, Event::Passed(PassKind::InDialog));
    let Action::Forward { from, to, bytes } = &o.action else {
        panic!("{:?}", o.event)
    };
    assert_eq!((*from, *to), (sa(CG), sa(SWITCH)));
    assert!(hdr(&text(bytes), "route").is_empty(), "{}", text(bytes));
    // The pair and a Route after it on one line: only the pair is removed.
    let route = format!("Route: {}, {}, <sip:127.0.0.2:5080;lr>\r\n", rr[1], rr[0]);
    let bye = text(&in_dialog("BYE", "d6", "alice", &route, 3))
        .replace("127.0.0.1:40000;rport", "[2001:db8::77]:40000;rport");
    let o = run_at(&w, &p, bye.as_bytes(), caller6, "[::1]:5060", WALL);
    assert_eq!(o.event, Event::Passed(PassKind::InDialog));
    assert_eq!(hdr(&fwd(&o).1, "route"), ["<sip:127.0.0.2:5080;lr>"]);
    // Two of our Routes with different tokens are not a pair: the second stays.
    let other = rr[0].replace("cgt=", "cgt=1");
    let route = format!("Route: {}\r\nRoute: {other}\r\n", rr[1]);
    let bye = text(&in_dialog("BYE", "d6", "alice", &route, 4))
        .replace("127.0.0.1:40000;rport", "[2001:db8::77]:40000;rport");
    let o = run_at(&w, &p, bye.as_bytes(), caller6, "[::1]:5060", WALL);
    assert_eq!(hdr(&fwd(&o).1, "route"), [other.as_str()]);
    // A caller on the switch's family gets one Record-Route.
    let (_, f) = fwd(&run(&w, &p, &invite("alice", "d4", ""), CALLER));
    assert_eq!(hdr(&f, "record-route").len(), 1);
}
