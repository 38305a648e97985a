//! Property tests of the packet path (STYLE rule 12):
//! 1. any admitted INVITE is forwarded equal to its input except creditgate's own edits
//!    (its Via and Record-Route lines, `received`/`rport` on the top Via, Max-Forwards − 1);
//! 2. where rsip (the reference parser) parses a message, the scanner and grammar find the same
//!    Call-ID, CSeq, From-tag and top Via branch;
//! 3. arbitrary bytes never panic the core.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Instant;

use creditgate::config::Config;
use creditgate::core::grammar::{first_via, parse_cseq, single_name_addr};
use creditgate::core::keys::Keys;
use creditgate::core::scan::{scan, Hdr};
use creditgate::core::{handle, Action, Event, Listener, Packet, Policy};
use creditgate::credit::Account;
use creditgate::snapshot::Snapshot;
use proptest::prelude::*;

fn setup() -> (Snapshot, Policy, Instant) {
    let mut cfg = Config::default();
    cfg.sip.listen = vec!["127.0.0.1:5060".parse().unwrap()];
    cfg.sip.upstream = vec!["127.0.0.2:5080".parse().unwrap()];
    let l = Listener {
        bound: "127.0.0.1:5060".parse().unwrap(),
        advertised_host: "127.0.0.1".into(),
        advertised_port: 5060,
    };
    let policy = Policy::new(&cfg, Keys::new(b"property-test-secret-0123456789"), vec![l]).unwrap();
    let t0 = Instant::now();
    let snap = Snapshot::new(t0);
    snap.apply_full(
        vec![Account::new("alice", 10.into(), 0.into())],
        t0,
        0.5,
        false,
    )
    .unwrap();
    (snap, policy, t0)
}

fn name_case(name: &str, flip: u32) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if flip & (1 << (i % 32)) != 0 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// An extra header line: a token name (never one the proxy edits) and a value of printable
/// ASCII and Latin-1 bytes, sometimes folded.
fn extra_header() -> impl Strategy<Value = Vec<u8>> {
    (
        "[A-Za-z][A-Za-z0-9-]{0,12}",
        proptest::collection::vec(prop_oneof![0x20u8..0x7f, 0xa0u8..=0xff], 0..60),
        any::<bool>(),
        0usize..3,
    )
        .prop_filter("not a header the proxy interprets", |(n, _, _, _)| {
            let l = n.to_ascii_lowercase();
            ![
                "via",
                "v",
                "from",
                "f",
                "to",
                "t",
                "call-id",
                "i",
                "cseq",
                "max-forwards",
                "route",
                "record-route",
                "content-length",
                "l",
                "proxy-require",
            ]
            .contains(&l.as_str())
        })
        .prop_map(|(name, mut value, fold, ws)| {
            while value.first() == Some(&b' ') {
                value.remove(0);
            }
            while value.last() == Some(&b' ') {
                value.pop();
            }
            let mut line = name.into_bytes();
            line.extend_from_slice(&b"  "[..ws.min(2)]);
            line.extend_from_slice(b": ");
            line.extend_from_slice(&value);
            if fold && !value.is_empty() {
                line.extend_from_slice(b"\r\n\tcontinued");
            }
            line.extend_from_slice(b"\r\n");
            line
        })
}

fn invite(compact: bool, flip: u32, extras: &[Vec<u8>], body: &[u8], mf: u8) -> Vec<u8> {
    let h = |long: &str, short: &str| {
        if compact {
            short.to_string()
        } else {
            name_case(long, flip)
        }
    };
    let mut m = b"INVITE sip:+4930123@127.0.0.1 SIP/2.0\r\n".to_vec();
    m.extend_from_slice(
        format!(
            "{}: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK-prop\r\n",
            h("Via", "v")
        )
        .as_bytes(),
    );
    m.extend_from_slice(format!("{}: {mf}\r\n", name_case("Max-Forwards", flip)).as_bytes());
    for (i, e) in extras.iter().enumerate() {
        m.extend_from_slice(e);
        if i == 0 {
            m.extend_from_slice(
                format!(
                    "{}: \"A\" <sip:alice@example.com>;tag=ft1\r\n",
                    h("From", "f")
                )
                .as_bytes(),
            );
        }
    }
    if extras.is_empty() {
        m.extend_from_slice(
            format!("{}: <sip:alice@example.com>;tag=ft1\r\n", h("From", "f")).as_bytes(),
        );
    }
    m.extend_from_slice(format!("{}: <sip:+4930123@example.com>\r\n", h("To", "t")).as_bytes());
    m.extend_from_slice(format!("{}: prop-{flip}@example.com\r\n", h("Call-ID", "i")).as_bytes());
    m.extend_from_slice(format!("{}: 1 INVITE\r\n", name_case("CSeq", flip)).as_bytes());
    m.extend_from_slice(format!("{}: {}\r\n\r\n", h("Content-Length", "l"), body.len()).as_bytes());
    m.extend_from_slice(body);
    m
}

fn remove_lines_starting(buf: &[u8], prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = buf;
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(buf.len(), |p| p + 4);
    let (head, body) = buf.split_at(head_end);
    rest = if rest.is_empty() { rest } else { head };
    for line in rest.split_inclusive(|b| *b == b'\n') {
        if !line.starts_with(prefix) {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

fn replace_once(buf: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    match buf.windows(from.len()).position(|w| w == from) {
        Some(p) => [&buf[..p], to, &buf[p + from.len()..]].concat(),
        None => buf.to_vec(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn forwarded_equals_input_except_our_edits(
        compact in any::<bool>(),
        flip in any::<u32>(),
        extras in proptest::collection::vec(extra_header(), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        mf in 1u8..=255,
    ) {
        let (snap, policy, t0) = setup();
        let input = invite(compact, flip, &extras, &body, mf);
        let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let o = handle(Packet { data: &input, source: src, local: "127.0.0.1:5060".parse().unwrap(), now: t0, wall_secs: 1_800_000_000 }, &snap, &policy);
        prop_assert!(matches!(o.event, Event::Admitted { .. }), "{:?}", o.event);
        let Action::Forward { bytes, .. } = o.action else { panic!("not forwarded") };
        let mut back = remove_lines_starting(&bytes, b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcg");
        back = remove_lines_starting(&back, b"Record-Route: <sip:127.0.0.1:5060;lr;cgt=");
        back = replace_once(&back, b";rport=40000;branch=z9hG4bK-prop;received=127.0.0.1", b";rport;branch=z9hG4bK-prop");
        let mf_name = name_case("Max-Forwards", flip);
        back = replace_once(&back, format!("{mf_name}: {}\r\n", mf - 1).as_bytes(), format!("{mf_name}: {mf}\r\n").as_bytes());
        prop_assert_eq!(back, input);
    }

    #[test]
    fn scanner_agrees_with_rsip_where_rsip_parses(
        flip in any::<u32>(),
        extras in proptest::collection::vec(extra_header(), 0..5),
        body in "[a-z=0-9 \r\n]{0,100}",
        mf in 1u8..=255,
    ) {
        // Long header names only: rsip does not know compact forms.
        let input = invite(false, flip, &extras, body.as_bytes(), mf);
        let Ok(text) = std::str::from_utf8(&input) else { return Ok(()) };
        let Ok(rsip::SipMessage::Request(req)) = rsip::SipMessage::try_from(text) else { return Ok(()) };
        use rsip::prelude::*;
        let m = scan(&input).unwrap();
        let get = |k: Hdr| m.headers.iter().find(|h| h.kind == k).map(|h| h.value.clone()).unwrap();
        let call_id = &input[get(Hdr::CallId)];
        prop_assert_eq!(std::str::from_utf8(call_id).unwrap(), req.call_id_header().unwrap().value());
        let (n, meth) = parse_cseq(&input, get(Hdr::CSeq)).unwrap();
        let cseq = req.cseq_header().unwrap().typed().unwrap();
        prop_assert_eq!(n, cseq.seq);
        prop_assert_eq!(std::str::from_utf8(&input[meth]).unwrap(), cseq.method.to_string());
        let from = single_name_addr(&input, get(Hdr::From)).unwrap();
        let rs_tag = req.from_header().unwrap().tag().unwrap().map(|t| t.value().to_string());
        prop_assert_eq!(from.tag.map(|t| String::from_utf8_lossy(&input[t]).into_owned()), rs_tag);
        let via = first_via(&input, get(Hdr::Via)).unwrap();
        let rs_branch = req.via_header().unwrap().typed().unwrap().branch().map(|b| b.to_string());
        prop_assert_eq!(via.branch.map(|b| String::from_utf8_lossy(&input[b]).into_owned()), rs_branch);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let (snap, policy, t0) = setup();
        let _ = handle(Packet { data: &data, source: "127.0.0.1:40000".parse().unwrap(), local: "127.0.0.1:5060".parse().unwrap(), now: t0, wall_secs: 1_800_000_000 }, &snap, &policy);
    }

    #[test]
    fn mutated_invites_never_panic_and_forward_only_what_rescans(
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let (snap, policy, t0) = setup();
        let mut input = invite(false, 0, &[], b"v=0\r\n", 70);
        let p = pos.index(input.len());
        input[p] = byte;
        input.truncate(cut.index(input.len()) + 1);
        let o = handle(Packet { data: &input, source: "127.0.0.1:40000".parse().unwrap(), local: "127.0.0.1:5060".parse().unwrap(), now: t0, wall_secs: 1_800_000_000 }, &snap, &policy);
        if let Action::Forward { bytes, .. } = &o.action {
            let again = scan(bytes).unwrap();
            prop_assert!(again.defect.is_none());
        }
    }
}

/// The rsip comparison above is not vacuous: rsip parses the base message.
#[test]
fn rsip_parses_the_base_message() {
    let input = invite(false, 0, &[b"X-Test: a b c\r\n".to_vec()], b"v=0\r\n", 70);
    assert!(rsip::SipMessage::try_from(std::str::from_utf8(&input).unwrap()).is_ok());
}
