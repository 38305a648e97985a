//! Issue 9, relay and routing holes, over real UDP against the real binary: responses go only
//! where their request came from (item 1), customers reach only upstream `IP:port`s (item 2) or
//! the trusted node of their dialog (item 3), a To-tag is no free pass (item 4), Route tokens
//! expire (item 5), and an IPv6 caller to an IPv4 switch is double record-routed (item 10).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::harness::*;

/// A daemon on port 0 in front of a fresh fake switch, with `extra` appended to `[sip]`.
fn start(extra_sip: &str) -> (Daemon, Switch) {
    let switch = Switch::bind();
    let cfg = test_config(0, switch.addr(), "60s").replacen(
        "workers = 2\n",
        &format!("workers = 2\n{extra_sip}"),
        1,
    );
    (Daemon::start(&cfg, ACCOUNTS), switch)
}

/// `response(...)` with `;received=..;rport=..` appended to the second Via line.
fn with_second_via_edited(msg: &[u8], append: &str) -> Vec<u8> {
    let t = text(msg);
    let mut seen = 0;
    let mut out = Vec::new();
    for line in t.split("\r\n") {
        if line.starts_with("Via:") {
            seen += 1;
            if seen == 2 {
                out.push(format!("{line}{append}"));
                continue;
            }
        }
        out.push(line.to_owned());
    }
    out.join("\r\n").into_bytes()
}

/// Item 1, customer side: a customer that receives a switch-originated INVITE edits the
/// switch's Via in its response; creditgate must not send it to the address it names.
#[test]
fn a_response_with_an_edited_via_is_not_relayed_to_a_third_address() {
    let (daemon, switch) = start("");
    let d = daemon.sip_addr();
    let caller = Caller::bind();
    let victim = Endpoint::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)));
    let inv = Request::invite(switch.addr(), caller.addr(), &new_call_id(), "gw").with_rport(false);
    switch.send(&inv.build(), d);
    let (at_caller, _) = caller.recv_or_fail(WAIT, "the switch's INVITE at the customer");
    let vias = all_headers(&at_caller, "Via");
    assert_eq!(
        param(&vias[1], "received").as_deref(),
        Some("127.0.0.2"),
        "received is always written: {}",
        vias[1]
    );
    let ringing = response(&at_caller, 180, "Ringing", Some(&new_tag()), &[]);
    let forged = with_second_via_edited(
        &ringing,
        &format!(";received=127.0.0.3;rport={}", victim.addr().port()),
    );
    for _ in 0..3 {
        caller.send(&forged, d);
    }
    caller.send(&ringing, d);
    let (got, _) = switch.recv_or_fail(WAIT, "the untouched 180 at the switch");
    assert_eq!(status_code(&got), Some(180));
    victim.expect_nothing(QUIET);
    switch.expect_nothing(Duration::from_millis(100));
}

/// Item 1, caller side: a caller's own `received=` (sent-by = source, no rport) is overwritten,
/// so the switch's 180 goes back to the caller, not to the address it named.
#[test]
fn a_callers_own_received_is_overwritten() {
    let (daemon, switch) = start("");
    let d = daemon.sip_addr();
    // A caller and a victim on the same port of 127.0.0.1 and 127.0.0.3.
    let (caller, victim) = (0..50)
        .find_map(|_| {
            let c = Caller::bind();
            let v = UdpSocket::bind(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
                c.addr().port(),
            ))
            .ok()?;
            v.set_read_timeout(Some(QUIET)).ok()?;
            Some((c, v))
        })
        .expect("a port free on 127.0.0.1 and 127.0.0.3");
    let inv = Request::invite(caller.addr(), d, &new_call_id(), "alice")
        .with_rport(false)
        .with_branch(&format!("{};received=127.0.0.3", new_branch()));
    caller.send(&inv.build(), d);
    let (fwd, src) = switch.recv_or_fail(WAIT, "the INVITE at the switch");
    let vias = all_headers(&fwd, "Via");
    assert_eq!(
        param(&vias[1], "received").as_deref(),
        Some("127.0.0.1"),
        "{}",
        vias[1]
    );
    switch.send(&response(&fwd, 180, "Ringing", Some(&new_tag()), &[]), src);
    let (got, _) = caller.recv_or_fail(WAIT, "the 180 at the caller");
    assert_eq!(status_code(&got), Some(180));
    let mut buf = [0u8; 4096];
    if let Ok((n, from)) = victim.recv_from(&mut buf) {
        panic!("the third address got from {from}:\n{}", text(&buf[..n]));
    }
}

/// Item 2: an INVITE naming another port of the switch host goes to the configured upstream.
#[test]
fn a_customer_cannot_reach_another_port_of_the_switch_host() {
    let (daemon, switch) = start("");
    let d = daemon.sip_addr();
    let other = Endpoint::bind(SWITCH_IP);
    let caller = Caller::bind();
    let inv = Request::invite(caller.addr(), other.addr(), &new_call_id(), "alice");
    caller.send(&inv.build(), d);
    let (fwd, _) = switch.recv_or_fail(WAIT, "the INVITE at the configured upstream");
    assert_eq!(method(&fwd).as_deref(), Some("INVITE"));
    other.expect_nothing(QUIET);
}

/// Item 3: a trusted node (not an upstream) calls a customer; the customer's ACK and BYE go
/// back to that node, not to the switch.
#[test]
fn a_trusted_nodes_call_gets_its_ack_and_bye() {
    let (daemon, switch) = start("trusted = [\"127.0.0.4/32\"]\n");
    let d = daemon.sip_addr();
    let node = Endpoint::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)));
    let customer = Caller::bind();
    let inv = Request::new(
        "INVITE",
        &format!("sip:bob@{}", customer.addr()),
        node.addr(),
        &new_call_id(),
        "gw",
    )
    .sdp();
    node.send(&inv.build(), d);
    let (at_customer, _) = customer.recv_or_fail(WAIT, "the node's INVITE at the customer");
    let rr = all_headers(&at_customer, "Record-Route");
    assert_eq!(rr.len(), 1, "{}", text(&at_customer));
    let bob_tag = new_tag();
    let contact = format!("<sip:bob@{}>", customer.addr());
    let ok = response(
        &at_customer,
        200,
        "OK",
        Some(&bob_tag),
        &[("Contact", &contact)],
    );
    customer.send(&ok, d);
    let (got, _) = node.recv_or_fail(WAIT, "the 200 at the node");
    assert_eq!(status_code(&got), Some(200));
    // The customer, as UAS, uses the Record-Route in order and the node's Contact.
    for (m, cseq) in [("ACK", 1), ("BYE", 2)] {
        let mut r = Request::new(
            m,
            &format!("sip:gw@{}", node.addr()),
            customer.addr(),
            &inv.call_id,
            "bob",
        )
        .with_from_tag(&bob_tag)
        .with_to_tag(Some(&inv.from_tag))
        .with_cseq(cseq);
        r.routes = rr.iter().map(|v| format!("<{}>", uri_of(v))).collect();
        customer.send(&r.build(), d);
        let (got, _) = node.recv_or_fail(WAIT, &format!("the customer's {m} at the node"));
        assert_eq!(method(&got).as_deref(), Some(m), "{}", text(&got));
        assert!(all_headers(&got, "Route").is_empty(), "{}", text(&got));
    }
    switch.expect_nothing(QUIET);
}

/// Item 4: with `forward_other_methods = false` a MESSAGE with a made-up To-tag gets 403.
#[test]
fn forward_other_methods_false_is_not_bypassed_by_a_made_up_to_tag() {
    let (daemon, switch) = start("forward_other_methods = false\n");
    let d = daemon.sip_addr();
    let caller = Caller::bind();
    let msg = Request::new(
        "MESSAGE",
        &format!("sip:4930123456@{}", switch.addr()),
        caller.addr(),
        &new_call_id(),
        "nobody",
    )
    .with_to_tag(Some("madeup"));
    caller.send(&msg.build(), d);
    let (r, _) = caller.recv_or_fail(WAIT, "a 403");
    assert_eq!(status_code(&r), Some(403), "{}", text(&r));
    switch.expect_nothing(QUIET);
}

/// The Route token as docs/sip-handling.md describes it, computed here from the test secret:
/// `MINUTES-hex(HMAC-SHA256(secret, "r" | len-prefixed Call-ID, tag, minutes u64 BE, node))[..10]`.
pub(crate) fn mint(call_id: &str, tag: &str, minutes: u64) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(b"r");
    for p in [
        call_id.as_bytes(),
        tag.as_bytes(),
        &minutes.to_be_bytes(),
        b"",
    ] {
        m.update(&u32::try_from(p.len()).unwrap().to_be_bytes());
        m.update(p);
    }
    let d = m.finalize().into_bytes();
    let hex: String = d[..10].iter().map(|b| format!("{b:02x}")).collect();
    format!("{minutes}-{hex}")
}

/// The token format of creditgate before issue 9 (no issue time): it must not pass any more.
fn mint_undated(call_id: &str, tag: &str) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    m.update(b"r");
    for p in [call_id.as_bytes(), tag.as_bytes()] {
        m.update(&u32::try_from(p.len()).unwrap().to_be_bytes());
        m.update(p);
    }
    let d = m.finalize().into_bytes();
    d[..10].iter().map(|b| format!("{b:02x}")).collect()
}

/// Item 5: a dry account replays a (Call-ID, tag, token) as an in-dialog INVITE: accepted only
/// while the token is younger than `[live] call_expiry` (4 h by default).
#[test]
fn route_tokens_expire() {
    let (daemon, switch) = start("");
    let d = daemon.sip_addr();
    let caller = Caller::bind();
    // A real token: MINUTES-MAC with the current minute.
    let inv = Request::invite(caller.addr(), d, &new_call_id(), "alice");
    caller.send(&inv.build(), d);
    let (fwd, src) = switch.recv_or_fail(WAIT, "the INVITE at the switch");
    let rr = header(&fwd, "Record-Route").expect("a Record-Route");
    let now_min = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60;
    let cgt = param(&rr, "cgt").expect("cgt");
    let minutes: u64 = cgt.split_once('-').expect("MINUTES-MAC").0.parse().unwrap();
    assert!(minutes.abs_diff(now_min) <= 1, "{rr}");
    switch.send(&response(&fwd, 200, "OK", Some(&new_tag()), &[]), src);
    caller.recv_or_fail(WAIT, "the 200");

    let call_id = new_call_id();
    let from_tag = new_tag();
    let cases = [
        (mint(&call_id, &from_tag, now_min), true),
        (mint(&call_id, &from_tag, now_min - 5 * 60), false),
        (mint(&call_id, &from_tag, now_min + 60), false),
        (mint_undated(&call_id, &from_tag), false),
    ];
    for (token, valid) in cases {
        let r = Request::invite(caller.addr(), switch.addr(), &call_id, "bob")
            .with_from_tag(&from_tag)
            .with_to_tag(Some("made-up"))
            .with_route(&format!("<sip:{d};lr;cgt={token}>"));
        caller.send(&r.build(), d);
        if valid {
            let (got, _) = switch.recv_or_fail(WAIT, &format!("the INVITE with {token}"));
            assert_eq!(method(&got).as_deref(), Some("INVITE"));
            caller.drain();
        } else {
            let (got, _) = caller.recv_or_fail(WAIT, &format!("a 402 for {token}"));
            assert_eq!(status_code(&got), Some(402), "{token}: {}", text(&got));
            switch.expect_nothing(Duration::from_millis(200));
        }
    }
}

/// Item 10: an IPv6 caller (::1) through creditgate to an IPv4 switch gets two Record-Routes
/// (RFC 5658): the top one IPv4 for the switch, the next IPv6 for the caller; in-dialog requests
/// in both directions pop both.
#[test]
fn ipv6_caller_to_ipv4_switch_is_double_record_routed() {
    let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    if let Err(e) = UdpSocket::bind(SocketAddr::new(loopback6, 0)) {
        assert!(std::env::var_os("CI").is_none(), "no IPv6 loopback: {e}");
        println!("skipped: no IPv6 loopback ({e})");
        return;
    }
    let switch = Switch::bind();
    let cfg = test_config(0, switch.addr(), "60s").replacen(
        &format!("listen = [\"{DAEMON_IP}:0\"]"),
        &format!("listen = [\"{DAEMON_IP}:0\", \"[::1]:0\"]"),
        1,
    );
    assert!(cfg.contains("[::1]:0"));
    let daemon = Daemon::start(&cfg, ACCOUNTS);
    let d4 = daemon.sip_addr();
    let d6: SocketAddr = daemon
        .log()
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bound="))
        .find_map(|a| a.parse::<SocketAddr>().ok().filter(SocketAddr::is_ipv6))
        .expect("the IPv6 listener in the log");
    let caller = Endpoint::bind(loopback6);
    let inv = Request::invite(caller.addr(), d6, &new_call_id(), "alice");
    caller.send(&inv.build(), d6);
    let (fwd, src) = switch.recv_or_fail(WAIT, "the INVITE at the switch");
    assert_eq!(src, d4);
    let rr = all_headers(&fwd, "Record-Route");
    assert_eq!(rr.len(), 2, "{}", text(&fwd));
    assert!(
        rr[0].starts_with(&format!("<sip:{d4};lr;cgt=")),
        "{}",
        rr[0]
    );
    assert!(
        rr[1].starts_with(&format!("<sip:{d6};lr;cgt=")),
        "{}",
        rr[1]
    );
    let sw_tag = new_tag();
    let contact = format!("<sip:4930123456@{}>", switch.addr());
    let ok = response(&fwd, 200, "OK", Some(&sw_tag), &[("Contact", &contact)]);
    switch.send(&ok, src);
    let (ok, _) = caller.recv_or_fail(WAIT, "the 200 at the caller");
    // The caller's ACK and BYE (Route set reversed: IPv6 first) reach the switch, our Routes gone.
    for (m, cseq) in [("ACK", 1), ("BYE", 2)] {
        let r = inv.in_dialog(m, &ok, cseq);
        assert!(r.routes[0].contains("[::1]"), "{:?}", r.routes);
        caller.send(&r.build(), d6);
        let (got, from) = switch.recv_or_fail(WAIT, &format!("the caller's {m} at the switch"));
        assert_eq!(from, d4);
        assert_eq!(method(&got).as_deref(), Some(m), "{}", text(&got));
        assert!(all_headers(&got, "Route").is_empty(), "{}", text(&got));
    }
    // The switch's BYE (Route set in order: IPv4 first) reaches the caller over IPv6.
    let mut bye = Request::new(
        "BYE",
        &format!("sip:alice@{}", caller.addr()),
        switch.addr(),
        &inv.call_id,
        "4930123456",
    )
    .with_from_tag(&sw_tag)
    .with_to_tag(Some(&inv.from_tag))
    .with_cseq(7);
    bye.routes = rr.iter().map(|v| format!("<{}>", uri_of(v))).collect();
    switch.send(&bye.build(), d4);
    let (got, from) = caller.recv_or_fail(WAIT, "the switch's BYE at the caller");
    assert_eq!(from, d6);
    assert_eq!(method(&got).as_deref(), Some("BYE"), "{}", text(&got));
    assert!(all_headers(&got, "Route").is_empty(), "{}", text(&got));
}
