//! Request-URI forms over real UDP (SPEC section 6, "Malformed input"): a bare IPv6 address in
//! a SIP URI (RFC 5118 4.2, which requires the bracketed form) gets 400 and never reaches the
//! switch; so does a `maddr` parameter naming a bare IPv6 address.

use crate::harness::*;

#[test]
fn bare_ipv6_request_uri_gets_400_and_is_not_forwarded() {
    let switch = Switch::bind();
    let daemon = Daemon::start(&test_config(0, switch.addr(), "60s"), ACCOUNTS);
    let caller = Caller::bind();
    let d = daemon.sip_addr();
    for (method, ruri) in [
        ("REGISTER", "sip:2001:db8::10"),
        ("REGISTER", "sip:alice@2001:db8::10"),
        ("OPTIONS", "sip:2001:db8::10"),
        ("INVITE", "sip:4930123456@2001:db8::10"),
        ("MESSAGE", "sip:4930123456@::ffff:127.0.0.2"),
        // maddr-param = "maddr=" host: the same rule for the address it names.
        ("REGISTER", "sip:example.com;maddr=2001:db8::10"),
        (
            "OPTIONS",
            "sip:4930123456@example.com;maddr=::ffff:127.0.0.2",
        ),
    ] {
        let mut req = Request::new(method, ruri, caller.addr(), &new_call_id(), "alice");
        // The To names the same (bad) host as the Request-URI would; keep it well-formed so
        // that only the Request-URI is at fault.
        req.to_host = "example.com".to_owned();
        caller.send(&req.build(), d);
        let (r, src) = caller.recv_or_fail(WAIT, &format!("the answer to {method} {ruri}"));
        assert_eq!(src, d);
        assert_eq!(
            start_line(&r),
            "SIP/2.0 400 Malformed Request-URI",
            "{method} {ruri}: {}",
            text(&r)
        );
        switch.expect_nothing(QUIET);
    }
    // The bracketed form is well-formed and reaches the switch.
    let mut req = Request::new(
        "REGISTER",
        "sip:[2001:db8::10]",
        caller.addr(),
        &new_call_id(),
        "alice",
    );
    req.to_host = "example.com".to_owned();
    caller.send(&req.build(), d);
    let (fwd, _) = switch.recv_or_fail(WAIT, "the REGISTER with a bracketed IPv6 Request-URI");
    assert_eq!(method(&fwd).as_deref(), Some("REGISTER"), "{}", text(&fwd));
}
