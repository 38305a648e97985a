//! Fuzz target `dialog`: the paths a fuzzer cannot reach from single datagrams because they
//! need creditgate's own keyed values. Input: like `core` (byte 0 picks the source, the rest is
//! a request). When creditgate forwards the request to the switch, the target plays the switch
//! and answers it (status from byte 0's high bits: 100/180/200/486/503, To-tag added, Vias,
//! From, Call-ID, CSeq and Record-Route copied), and, for an admitted INVITE answered 200, the
//! caller then sends a BYE and a re-INVITE along the Record-Route.
//!
//! Invariants:
//! 1. no panic;
//! 2. the switch's genuine response is never dropped as forged (`NotOurVia`) or malformed, and
//!    what creditgate relays re-scans cleanly with exactly one Via fewer;
//! 3. a BYE and a re-INVITE with creditgate's Route token pass as in-dialog (the token
//!    verifies); the re-INVITE with the token altered is credit-checked as a new call.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use creditgate::config::Config;
use creditgate::core::grammar::single_name_addr;
use creditgate::core::keys::Keys;
use creditgate::core::scan::{scan, Hdr, Start};
use creditgate::core::{
    handle, Action, DropReason, Event, Listener, Outcome, Packet, PassKind, Policy,
};
use creditgate::credit::{parse_ips, Account};
use creditgate::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;

const CG: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 5060);
const SWITCH: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 5080);

struct World {
    snap: Snapshot,
    policy: Policy,
    t0: Instant,
}

fn acct(id: &str, bal: &str, lim: &str) -> Account {
    Account::new(
        id,
        Decimal::from_str(bal).unwrap_or_default(),
        Decimal::from_str(lim).unwrap_or_default(),
    )
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let mut c = Config::default();
        c.sip.listen = vec![CG];
        c.sip.upstream = vec![SWITCH];
        let l = Listener {
            bound: CG,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 5060,
        };
        let policy = Policy::new(
            &c,
            Keys::new(b"fuzz-secret-fuzz-secret-fuzz"),
            vec![l.clone()],
        )
        .unwrap_or_else(|e| panic!("policy: {e}"));
        let t0 = Instant::now();
        let snap = Snapshot::new(t0);
        let mut pbx = acct("pbx", "10", "0");
        pbx.ips = parse_ips("192.0.2.0/24").unwrap_or_default();
        let mut off = acct("off", "100", "0");
        off.enabled = false;
        let accounts = vec![
            acct("alice", "25", "0"),
            acct("bob", "0", "0"),
            acct("carol", "-42", "100"),
            acct("caller", "5", "0"),
            off,
            pbx,
        ];
        if let Err(e) = snap.apply_full(accounts, t0, 0.5, false) {
            panic!("snapshot: {e:?}");
        }
        World { snap, policy, t0 }
    })
}

/// Byte 0 selects the source; returns it and the datagram.
fn split(data: &[u8]) -> Option<(SocketAddr, &[u8])> {
    let (&sel, rest) = data.split_first()?;
    let v4 = |a, b, c, d, p| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), p);
    Some(match sel % 8 {
        0 => (v4(127, 0, 0, 1, 40000), rest),
        1 => (v4(192, 0, 2, 7, 5060), rest),
        2 => (SWITCH, rest),
        3 => (v4(127, 0, 0, 1, 5060), rest),
        4 => (SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 5070), rest),
        5 => (
            SocketAddr::new(
                IpAddr::V6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped()),
                5080,
            ),
            rest,
        ),
        6 => {
            let (a, rest) = rest.split_at_checked(6)?;
            let port = u16::from_be_bytes([a[4], a[5]]);
            (v4(a[0], a[1], a[2], a[3], port), rest)
        }
        _ => {
            let (a, rest) = rest.split_at_checked(18)?;
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[16], a[17]]);
            (SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port), rest)
        }
    })
}

fn run<'a>(w: &World, policy: &Policy, data: &'a [u8], source: SocketAddr) -> Outcome<'a> {
    handle(
        Packet {
            data,
            source,
            local: CG,
            now: w.t0 + Duration::from_secs(1),
            wall_secs: 1_800_000_000,
        },
        &w.snap,
        policy,
    )
}

fn unicast(to: SocketAddr) -> bool {
    let ok = match to.ip() {
        IpAddr::V4(a) => !(a.is_broadcast() || a.is_multicast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    };
    ok && to.port() != 0
}

const CODES: [u16; 5] = [100, 180, 200, 486, 503];

/// The switch's response to a forwarded request (RFC 3261 8.2.6.2: Vias, From, To with a tag,
/// Call-ID, CSeq copied; Record-Route copied as a UAS does for a dialog-creating request).
fn switch_response(fwd: &[u8], code: u16) -> Option<Vec<u8>> {
    let m = scan(fwd).ok()?;
    let mut out = format!("SIP/2.0 {code} Fuzz\r\n").into_bytes();
    for h in &m.headers {
        let line = fwd.get(h.line.clone())?;
        match h.kind {
            Hdr::Via | Hdr::From | Hdr::CallId | Hdr::CSeq | Hdr::RecordRoute => {
                out.extend_from_slice(line)
            }
            Hdr::To => {
                let v = fwd.get(h.value.clone())?;
                out.extend_from_slice(b"To: ");
                out.extend_from_slice(v);
                out.extend_from_slice(b";tag=sw1\r\n");
            }
            _ => {}
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Some(out)
}

fn vias(b: &[u8]) -> usize {
    scan(b).map_or(0, |m| {
        m.headers.iter().filter(|h| h.kind == Hdr::Via).count()
    })
}

/// The caller's BYE in the dialog: Route = creditgate's Record-Route value, From/Call-ID as in
/// the INVITE, To with the switch's tag.
/// Whether the request's To header carries a tag (as creditgate's grammar reads it).
fn has_to_tag(datagram: &[u8]) -> bool {
    let Ok(m) = scan(datagram) else { return false };
    m.headers
        .iter()
        .find(|h| h.kind == Hdr::To)
        .and_then(|h| single_name_addr(datagram, h.value.clone()).ok())
        .is_some_and(|na| na.tag.is_some())
}

fn in_dialog(method: &str, orig: &[u8], route: &[u8]) -> Option<Vec<u8>> {
    let m = scan(orig).ok()?;
    let get = |k: Hdr| {
        m.headers
            .iter()
            .find(|h| h.kind == k)
            .and_then(|h| orig.get(h.value.clone()))
    };
    let mut out = format!("{method} sip:callee@127.0.0.2:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bKfuzz{method}\r\nMax-Forwards: 70\r\nRoute: ").into_bytes();
    out.extend_from_slice(route);
    out.extend_from_slice(b"\r\nFrom: ");
    out.extend_from_slice(get(Hdr::From)?);
    out.extend_from_slice(b"\r\nTo: ");
    out.extend_from_slice(get(Hdr::To)?);
    out.extend_from_slice(b";tag=sw1\r\nCall-ID: ");
    out.extend_from_slice(get(Hdr::CallId)?);
    out.extend_from_slice(format!("\r\nCSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n").as_bytes());
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((source, datagram)) = split(data) else {
        return;
    };
    // (IPv4-mapped IPv6 sources are the IPv4 address they map: ::ffff:255.255.255.255 is a
    // broadcast source too.)
    let ip = match source.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if !unicast(SocketAddr::new(ip, source.port())) || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return;
    }
    let code = CODES[usize::from(data[0] >> 3) % CODES.len()];
    let w = world();
    let out = run(w, &w.policy, datagram, source);
    let Action::Forward { to, bytes: fwd, .. } = &out.action else {
        return;
    };
    if *to != SWITCH || !matches!(scan(fwd).map(|m| m.start), Ok(Start::Request { .. })) {
        return;
    }
    let Some(resp) = switch_response(fwd, code) else {
        return;
    };
    let back = run(w, &w.policy, &resp, SWITCH);
    match (&back.action, &back.event) {
        (_, Event::Dropped(r @ (DropReason::NotOurVia | DropReason::MalformedResponse))) => {
            panic!(
                "the switch's genuine {code} was dropped as {r:?}; request event {:?}",
                out.event
            )
        }
        (
            Action::Forward {
                bytes, to: dest, ..
            },
            _,
        ) => {
            assert!(unicast(*dest), "response relayed to {dest}");
            let m = scan(bytes).unwrap_or_else(|e| panic!("relayed response does not scan: {e:?}"));
            assert!(
                m.defect.is_none(),
                "relayed response has defect {:?}",
                m.defect
            );
            assert_eq!(
                vias(bytes) + 1,
                vias(&resp),
                "exactly creditgate's Via is removed"
            );
        }
        _ => {}
    }
    // The dialog: an admitted INVITE, answered 200, record-routed by creditgate. An INVITE with
    // a To-tag but no valid Route token is admitted as a new call yet not record-routed (the
    // dialog's route set exists already): no dialog of creditgate's to follow then.
    if code != 200 || !matches!(out.event, Event::Admitted { .. }) || has_to_tag(datagram) {
        return;
    }
    let Some(rr) = scan(fwd).ok().and_then(|m| {
        m.headers
            .iter()
            .filter(|h| h.kind == Hdr::RecordRoute)
            .filter_map(|h| fwd.get(h.value.clone()))
            .find(|v| v.windows(5).any(|x| x == b";cgt="))
    }) else {
        panic!("admitted INVITE without creditgate's Record-Route");
    };
    let caller = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 40000);
    for method in ["BYE", "INVITE"] {
        let Some(b) = in_dialog(method, datagram, rr) else {
            return;
        };
        let o = run(w, &w.policy, &b, caller);
        assert_eq!(
            o.event,
            Event::Passed(PassKind::InDialog),
            "{method} with a valid token: {}",
            String::from_utf8_lossy(&b)
        );
    }
    // A re-INVITE with one hex digit of the token altered is a new call again (credit check);
    // a BYE would pass anyway (BYE is never credit-checked), so it proves nothing.
    let Some(mut forged) = in_dialog("INVITE", datagram, rr) else {
        return;
    };
    if let Some(p) = forged.windows(5).position(|x| x == b";cgt=") {
        if let Some(c) = forged.get_mut(p + 5) {
            *c = if *c == b'0' { b'1' } else { b'0' };
        }
        let o = run(w, &w.policy, &forged, caller);
        assert_ne!(
            o.event,
            Event::Passed(PassKind::InDialog),
            "forged token accepted"
        );
    }
});
