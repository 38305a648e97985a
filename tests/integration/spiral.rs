//! Spirals over real UDP (issue 9 item 13; RFC 3261 16.3 step 4, 16.6 step 8): a call from one
//! customer to another that the switch routes back through creditgate,
//! alice -> creditgate -> switch -> creditgate -> erin. Every request of that dialog reaches
//! creditgate twice with creditgate's own Via already in it; the second pass is a spiral (the
//! Route set changed), not a loop, and must be processed: INVITE, 200, ACK, re-INVITEs and BYE in
//! both directions. A true loop (the switch sends back the very request it got) still gets 482.
//!
//! The fake switch here is a minimal stateless proxy driven step by step by the test: it adds its
//! Via, record-routes the initial INVITE, consumes its own Route and sends every request back to
//! creditgate; on responses it removes its Via and sends them back to creditgate too.

use std::net::SocketAddr;

use crate::harness::*;

/// What the switch does to a request it routes back through creditgate: its Via on top,
/// `ruri` as the new Request-URI (initial INVITE), `record_route` its Record-Route on top, and
/// `pop` its own Route (the first Route line, which must name it) removed.
fn switch_relays(
    msg: &[u8],
    sw: SocketAddr,
    ruri: Option<&str>,
    record_route: bool,
    pop: bool,
) -> Vec<u8> {
    let t = text(msg);
    let (head, body) = t.split_once("\r\n\r\n").expect("a SIP message");
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or_default();
    let mut out = match ruri {
        Some(u) => {
            let mut p = start.splitn(3, ' ');
            let (m, _, v) = (p.next().unwrap(), p.next(), p.next().unwrap());
            format!("{m} {u} {v}\r\n")
        }
        None => format!("{start}\r\n"),
    };
    out += &format!("Via: SIP/2.0/UDP {sw};branch={}\r\n", new_branch());
    if record_route {
        out += &format!("Record-Route: <sip:{sw};lr>\r\n");
    }
    let mut popped = !pop;
    for line in lines {
        if !popped && line.starts_with("Route:") {
            assert!(
                line.contains(&sw.to_string()),
                "top Route must be ours: {line}"
            );
            popped = true;
            continue;
        }
        out += line;
        out += "\r\n";
    }
    assert!(popped, "no Route to pop in\n{t}");
    out += "\r\n";
    out += body;
    out.into_bytes()
}

/// A response as the switch passes it on: its own (top) Via removed.
fn switch_relays_response(msg: &[u8], sw: SocketAddr) -> Vec<u8> {
    let t = text(msg);
    let first = t
        .split("\r\n")
        .find(|l| l.starts_with("Via:"))
        .expect("a Via")
        .to_owned();
    assert!(
        first.contains(&sw.to_string()),
        "top Via is the switch's: {first}"
    );
    t.replacen(&format!("{first}\r\n"), "", 1).into_bytes()
}

/// Route set from the Record-Route values of `msg`, in order (`reverse` for the caller side).
fn route_set(msg: &[u8], reverse: bool) -> Vec<String> {
    let mut rr: Vec<String> = all_headers(msg, "Record-Route")
        .iter()
        .flat_map(|v| {
            v.split(',')
                .map(|s| format!("<{}>", uri_of(s.trim())))
                .collect::<Vec<_>>()
        })
        .collect();
    if reverse {
        rr.reverse();
    }
    rr
}

struct World {
    daemon: Daemon,
    switch: Switch,
    alice: Caller,
    erin: Caller,
}

impl World {
    fn new() -> World {
        let switch = Switch::bind();
        let daemon = Daemon::start(&test_config(0, switch.addr(), "60s"), ACCOUNTS);
        World {
            daemon,
            switch,
            alice: Caller::bind(),
            erin: Caller::bind(),
        }
    }

    fn d(&self) -> SocketAddr {
        self.daemon.sip_addr()
    }

    /// The switch receives the next datagram from creditgate: a request `method`.
    fn switch_gets(&self, method_name: &str, what: &str) -> Vec<u8> {
        let (m, src) = self.switch.recv_or_fail(WAIT, what);
        assert_eq!(src, self.d(), "{what}");
        assert_eq!(
            method(&m).as_deref(),
            Some(method_name),
            "{what}: {}",
            text(&m)
        );
        m
    }

    /// Sends `req` from `from` to creditgate; it goes to the switch, which routes it back
    /// (consuming its Route); returns it as `to` receives it from creditgate.
    fn through(&self, from: &Endpoint, req: &[u8], to: &Endpoint, what: &str) -> Vec<u8> {
        let name = method(req).unwrap();
        from.send(req, self.d());
        let first = self.switch_gets(&name, &format!("{what}, first pass at the switch"));
        self.switch.send(
            &switch_relays(&first, self.switch.addr(), None, false, true),
            self.d(),
        );
        let (m, src) = to.recv_or_fail(WAIT, &format!("{what}, after the second pass"));
        assert_eq!(src, self.d());
        assert_eq!(method(&m).as_deref(), Some(name.as_str()), "{}", text(&m));
        assert!(all_headers(&m, "Route").is_empty(), "{}", text(&m));
        m
    }

    /// `at_uas` (a request as its recipient got it) answered 200 by `uas`; the response goes
    /// back through creditgate, the switch and creditgate to `uac`, which receives it.
    fn answer_200(&self, uas: &Endpoint, at_uas: &[u8], uac: &Endpoint, what: &str) -> Vec<u8> {
        let contact = format!("<sip:ua@{}>", uas.addr());
        uas.send(
            &response(at_uas, 200, "OK", None, &[("Contact", &contact)]),
            self.d(),
        );
        let (r, src) = self
            .switch
            .recv_or_fail(WAIT, &format!("the 200 to {what} at the switch"));
        assert_eq!(src, self.d());
        assert_eq!(status_code(&r), Some(200), "{}", text(&r));
        self.switch
            .send(&switch_relays_response(&r, self.switch.addr()), self.d());
        let (r, src) = uac.recv_or_fail(WAIT, &format!("the 200 to {what}"));
        assert_eq!(src, self.d());
        assert_eq!(status_code(&r), Some(200), "{}", text(&r));
        r
    }
}

/// The dialog as both ends see it.
struct Dialog {
    /// alice's INVITE.
    invite: Request,
    /// The 200 as alice got it (Record-Route: creditgate, switch, creditgate).
    ok: Vec<u8>,
    /// The INVITE as erin got it.
    at_erin: Vec<u8>,
    erin_tag: String,
}

/// alice calls erin; the switch routes the INVITE back through creditgate to erin.
fn set_up(w: &World) -> Dialog {
    let d = w.d();
    let invite = Request::invite(w.alice.addr(), d, &new_call_id(), "alice");
    w.alice.send(&invite.build(), d);
    let at_switch = w.switch_gets("INVITE", "alice's INVITE at the switch");
    let erin_uri = format!("sip:erin@{}", w.erin.addr());
    w.switch.send(
        &switch_relays(&at_switch, w.switch.addr(), Some(&erin_uri), true, false),
        d,
    );
    let (at_erin, src) = w.erin.recv_or_fail(WAIT, "the INVITE at erin");
    assert_eq!(src, d);
    assert_eq!(
        start_line(&at_erin),
        format!("INVITE {erin_uri} SIP/2.0"),
        "{}",
        text(&at_erin)
    );
    assert_eq!(route_set(&at_erin, false).len(), 3, "{}", text(&at_erin));
    let erin_tag = new_tag();
    let contact = format!("<{erin_uri}>");
    w.erin.send(
        &response(
            &at_erin,
            200,
            "OK",
            Some(&erin_tag),
            &[("Contact", &contact)],
        ),
        d,
    );
    let (r, _) = w.switch.recv_or_fail(WAIT, "erin's 200 at the switch");
    assert_eq!(status_code(&r), Some(200), "{}", text(&r));
    w.switch
        .send(&switch_relays_response(&r, w.switch.addr()), d);
    let (ok, src) = w.alice.recv_or_fail(WAIT, "erin's 200 at alice");
    assert_eq!(src, d);
    assert_eq!(status_code(&ok), Some(200), "{}", text(&ok));
    // alice's ACK: Route set creditgate, switch, creditgate.
    let ack = invite.in_dialog("ACK", &ok, 1);
    assert_eq!(ack.routes.len(), 3);
    w.through(&w.alice, &ack.build(), &w.erin, "alice's ACK");
    Dialog {
        invite,
        ok,
        at_erin,
        erin_tag,
    }
}

/// A request of erin's in the dialog (she is the UAS of the INVITE: Route set = Record-Route in
/// order, Request-URI = alice's Contact).
fn from_erin(w: &World, dl: &Dialog, method: &str, cseq: u32) -> Request {
    let alice_contact = uri_of(&header(&dl.at_erin, "Contact").unwrap());
    let mut r = Request::new(
        method,
        &alice_contact,
        w.erin.addr(),
        &dl.invite.call_id,
        "erin",
    );
    r.from_tag = dl.erin_tag.clone();
    r.to_user = "alice".to_owned();
    r.to_host = dl.invite.from_host.clone();
    r.to_tag = Some(dl.invite.from_tag.clone());
    r.routes = route_set(&dl.at_erin, false);
    r.cseq = cseq;
    r
}

/// re-INVITE, 200 and ACK in both directions, then a BYE from `bye_from_erin`'s side.
fn spiral_call(bye_from_erin: bool) {
    let w = World::new();
    let dl = set_up(&w);

    // alice re-INVITEs (hold), erin answers, alice ACKs.
    let reinvite = dl.invite.in_dialog("INVITE", &dl.ok, 2).sdp();
    let at = w.through(&w.alice, &reinvite.build(), &w.erin, "alice's re-INVITE");
    let ok = w.answer_200(&w.erin, &at, &w.alice, "alice's re-INVITE");
    let ack = dl.invite.in_dialog("ACK", &dl.ok, 2);
    let _ = ok;
    w.through(
        &w.alice,
        &ack.build(),
        &w.erin,
        "the ACK of alice's re-INVITE",
    );

    // erin re-INVITEs, alice answers, erin ACKs.
    let reinvite = from_erin(&w, &dl, "INVITE", 1).sdp();
    let at = w.through(&w.erin, &reinvite.build(), &w.alice, "erin's re-INVITE");
    w.answer_200(&w.alice, &at, &w.erin, "erin's re-INVITE");
    let ack = from_erin(&w, &dl, "ACK", 1);
    w.through(
        &w.erin,
        &ack.build(),
        &w.alice,
        "the ACK of erin's re-INVITE",
    );

    // A true loop: the switch sends alice's BYE straight back, its Route not consumed, so the
    // request is the one creditgate forwarded a moment ago: 482 to the switch, nothing to erin.
    let bye = dl.invite.in_dialog("BYE", &dl.ok, 3);
    w.alice.send(&bye.build(), w.d());
    let first = w.switch_gets("BYE", "the looping BYE at the switch");
    w.switch.send(
        &switch_relays(&first, w.switch.addr(), None, false, false),
        w.d(),
    );
    let (r, src) = w.switch.recv_or_fail(WAIT, "the 482 to the looping BYE");
    assert_eq!(src, w.d());
    assert_eq!(start_line(&r), "SIP/2.0 482 Loop Detected", "{}", text(&r));
    w.erin.expect_nothing(QUIET);
    w.alice.expect_nothing(QUIET);

    // The BYE, from either side.
    if bye_from_erin {
        let bye = from_erin(&w, &dl, "BYE", 2);
        let at = w.through(&w.erin, &bye.build(), &w.alice, "erin's BYE");
        w.answer_200(&w.alice, &at, &w.erin, "erin's BYE");
    } else {
        let bye = dl.invite.in_dialog("BYE", &dl.ok, 4);
        let at = w.through(&w.alice, &bye.build(), &w.erin, "alice's BYE");
        w.answer_200(&w.erin, &at, &w.alice, "alice's BYE");
    }
    w.switch.expect_nothing(QUIET);
}

#[test]
fn spiral_call_alice_hangs_up() {
    spiral_call(false);
}

#[test]
fn spiral_call_erin_hangs_up() {
    spiral_call(true);
}

/// A new call whose INVITE the switch sends straight back unchanged (its Via on top): 482 to the
/// switch; its ACK coming back the same way is dropped.
#[test]
fn looping_invite_gets_482() {
    let w = World::new();
    let d = w.d();
    let invite = Request::new(
        "INVITE",
        &format!("sip:4930123456@{}", w.switch.addr()),
        w.alice.addr(),
        &new_call_id(),
        "alice",
    )
    .sdp();
    w.alice.send(&invite.build(), d);
    let first = w.switch_gets("INVITE", "the INVITE at the switch");
    let back = text(&first).replacen(
        "Via: ",
        &format!(
            "Via: SIP/2.0/UDP {};branch={}\r\nVia: ",
            w.switch.addr(),
            new_branch()
        ),
        1,
    );
    w.switch.send(back.as_bytes(), d);
    let (r, src) = w.switch.recv_or_fail(WAIT, "the 482 to the looping INVITE");
    assert_eq!(src, d);
    assert_eq!(start_line(&r), "SIP/2.0 482 Loop Detected", "{}", text(&r));
    w.alice.expect_nothing(QUIET);
}
