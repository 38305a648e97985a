//! Fuzz target `core`: bytes -> `creditgate::core::handle` -> Action, the daemon's whole input
//! path minus the socket.
//!
//! Input layout: byte 0 picks the source address (a customer, an account identified by IP, the
//! switch, IPv6, or an address read from the following bytes), the rest is the datagram.
//! `scripts/fuzz.sh` seeds the corpus with the SIP corpus files prefixed with selector bytes.
//!
//! Invariants checked on every input:
//! 1. no panic (libFuzzer reports it);
//! 2. a `Forward` carries bytes that re-scan with `creditgate::core::scan::scan` with no defect;
//! 3. a forwarded request is not one the core itself would call malformed: handed back to the
//!    core (as the switch sending it on, under another key so creditgate's own Via is not seen as
//!    a loop) it is never answered 400/505 nor dropped as malformed or unparseable;
//! 4. creditgate's own replies scan as responses (see below for bare LF);
//! 5. creditgate never sends to a broadcast, multicast, unspecified address or port 0.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use creditgate::config::Config;
use creditgate::core::keys::Keys;
use creditgate::core::scan::{scan, Defect, Start, MAX_HEADERS};
use creditgate::core::{
    handle, Action, Answer, DropReason, Event, Listener, Outcome, Packet, Policy,
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
    /// Same deployment under another key: replays see creditgate's Via as foreign.
    other: Policy,
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
        let other = Policy::new(&c, Keys::new(b"another-key-for-replays"), vec![l])
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
        World {
            snap,
            policy,
            other,
            t0,
        }
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

fuzz_target!(|data: &[u8]| {
    let Some((source, datagram)) = split(data) else {
        return;
    };
    // The kernel drops datagrams from multicast, broadcast or unspecified sources (martians;
    // IPv6 RFC 4291 2.7), and a reply to source port 0 fails in send_to: not inputs the core sees.
    // (IPv4-mapped IPv6 sources are the IPv4 address they map: ::ffff:255.255.255.255 is a
    // broadcast source too.)
    let ip = match source.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if !unicast(SocketAddr::new(ip, source.port())) || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return;
    }
    let w = world();
    let out = run(w, &w.policy, datagram, source);
    let (to, bytes, forwarded) = match &out.action {
        Action::Forward { to, bytes, .. } => (*to, bytes, true),
        Action::Reply { to, bytes, .. } => (*to, bytes, false),
        Action::Drop => return,
    };
    assert!(unicast(to), "sends to {to}: {:?}", out.event);
    if !forwarded {
        // creditgate's own replies must be well-formed responses too.
        // The reply copies Via/From/To/Call-ID/CSeq lines byte for byte, so a request written
        // with bare LFs gets them back (reported to the lead; harmless to that sender). Any other
        // defect is creditgate's own.
        let r = scan(bytes).unwrap_or_else(|e| panic!("own reply does not scan: {e:?}"));
        let bare_lf_in = datagram.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r')
            || datagram.first() == Some(&b'\n');
        // A request with (nearly) MAX_HEADERS Via lines gets them all back (RFC 3261 8.2.6.2):
        // the reply then holds more header lines than creditgate itself would keep.
        let many = scan(datagram).is_ok_and(|q| q.headers.len() + 8 >= MAX_HEADERS);
        assert!(
            r.defect.is_none()
                || bare_lf_in && r.defect == Some(Defect::BareLineFeed)
                || many && r.defect == Some(Defect::TooManyHeaders),
            "own reply has defect {:?}",
            r.defect
        );
        assert!(matches!(r.start, Start::Response { .. }));
        return;
    }
    let m = scan(bytes).unwrap_or_else(|e| panic!("forwarded bytes do not scan: {e:?}"));
    // The core keeps room for its own header lines (tests/torture.rs
    // `forwarded_header_count_stays_scannable`): what it forwards re-scans without defect.
    assert!(
        m.defect.is_none(),
        "forwarded bytes have defect {:?} ({:?})",
        m.defect,
        out.event
    );
    if let Start::Request { .. } = m.start {
        // Replay as the switch would send it on, under another key.
        let again = run(w, &w.other, bytes, SWITCH);
        // Every Route value is validated before forwarding (tests/torture.rs
        // `forwarded_route_set_is_valid_all_the_way_down`), so the next hop finds none malformed.
        let malformed = match again.event {
            Event::Answered(Answer::BadRequest(r)) => Some(r),
            Event::Answered(Answer::VersionNotSupported) => Some("505"),
            Event::Dropped(DropReason::Malformed) => Some("dropped as malformed"),
            Event::Dropped(DropReason::Unparseable) => Some("dropped as unparseable"),
            _ => None,
        };
        if let Some(why) = malformed {
            panic!(
                "forwarded a request the core calls malformed ({why}); first event {:?}",
                out.event
            );
        }
    }
});
