//! Fuzz target `relay`: creditgate never sends a datagram where it should not (SPEC section 6,
//! "Responses", "Where a customer's request may go"; issue 9).
//!
//! Input: a sequence of up to [`MAX_STEPS`] steps, each one datagram through
//! `creditgate::core::handle`, on one snapshot and policy (upstream 127.0.0.2:5080, trusted node
//! network 127.0.0.4/32). A step is chosen by its first byte:
//!
//! * raw: a datagram of the input's bytes from one of several sources (customers on 127.0.0.1
//!   at two ports, 127.0.0.3, an account identified by IP, ::1, the switch at its own and at
//!   another port, the trusted node, or any IPv4 address:port taken from the input);
//! * request: a request built from a template whose pieces the input picks: method, a
//!   Request-URI naming the switch at any port, creditgate, a customer, the trusted node or any
//!   address (with or without `maddr`), a top Via with or without `rport`/`received=` and with
//!   any sent-by, a To-tag or none, Call-IDs and branches that repeat across steps, and up to
//!   three Routes among creditgate's own Record-Route as an earlier step got it (a valid token),
//!   creditgate without token, and arbitrary hosts and ports;
//! * response: a response to one of the requests creditgate forwarded in an earlier step, built
//!   as its recipient would (Vias, From, To with a tag, Call-ID, CSeq, Record-Route copied), with
//!   the Via below creditgate's optionally edited (`received=`, `rport=`, sent-by, an inserted
//!   Via), sent by that recipient or by any other source.
//!
//! Invariant, checked on every step's [`Action`]:
//!
//! 1. creditgate's own reply to a request goes to the request's source address, or (top Via
//!    without `rport`) to the source IP at the Via's port (RFC 3261 18.2.2);
//! 2. a request from a customer (any source outside the upstream and trusted addresses) is
//!    forwarded only to an upstream's exact `IP:port` or to the exact `IP:port` a trusted node
//!    sent from (or named as its Via sent-by) earlier in the sequence;
//! 3. a relayed response goes where the request it answers came from: the target keys every
//!    request creditgate forwarded by creditgate's branch and the CSeq method, and the relayed
//!    response's destination must be one of those requests' source addresses (or source IP at
//!    the Via port when that Via had no `rport`, as in 1). A response whose key no forwarded
//!    request has is never relayed.
//!
//! Requests from the switch or the trusted node may go anywhere their Route/Request-URI says
//! (they are trusted); only unicast destinations are checked for them.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use creditgate::config::Config;
use creditgate::core::grammar::{first_via, parse_cseq, Host};
use creditgate::core::keys::Keys;
use creditgate::core::scan::{scan, Hdr, Start};
use creditgate::core::{handle_live, Action, Listener, Packet, Policy};
use creditgate::credit::{parse_ips, Account, Limits};
use creditgate::live::calls::{LiveConfig, LiveState};
use creditgate::snapshot::Snapshot;
use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;

const fn v4(a: u8, b: u8, c: u8, d: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), port)
}

const CG: SocketAddr = v4(127, 0, 0, 1, 5060);
const SWITCH: SocketAddr = v4(127, 0, 0, 2, 5080);
const SWITCH_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const TRUSTED_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
/// Steps per input: enough for request, answer, in-dialog request, its answer, and forgeries.
const MAX_STEPS: usize = 12;
/// Forwarded requests remembered for later responses.
const MAX_SENT: usize = 16;

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
        c.sip.trusted = vec!["127.0.0.4/32"
            .parse()
            .unwrap_or_else(|e| panic!("trusted: {e:?}"))];
        let l = Listener {
            bound: CG,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 5060,
        };
        let policy = Policy::new(&c, Keys::new(b"fuzz-secret-fuzz-secret-fuzz"), vec![l])
            .unwrap_or_else(|e| panic!("policy: {e}"));
        let t0 = Instant::now();
        let snap = Snapshot::new(t0);
        let mut pbx = acct("pbx", "10", "0");
        pbx.ips = parse_ips("192.0.2.0/24").unwrap_or_default();
        let mut rated = acct("rated", "1", "0");
        rated.limits = Some(Box::new(Limits {
            rate_per_min: Decimal::from_str("1.00").ok(),
            max_channels: Some(2),
            ..Limits::default()
        }));
        let accounts = vec![
            rated,
            acct("alice", "25", "0"),
            acct("bob", "0", "0"),
            acct("carol", "-42", "100"),
            pbx,
        ];
        if let Err(e) = snap.apply_full(accounts, t0, 0.5, false) {
            panic!("snapshot: {e:?}");
        }
        World { snap, policy, t0 }
    })
}

/// The fuzzer's bytes, read front to back; reads past the end give zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn done(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[usize::from(self.u8()) % from.len()]
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.data.split_at(n.min(self.data.len()));
        self.data = b;
        a
    }
    /// A length-prefixed (2 bytes) chunk.
    fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.u16());
        self.take(n)
    }
    fn ipv4(&mut self) -> Ipv4Addr {
        Ipv4Addr::new(self.u8(), self.u8(), self.u8(), self.u8())
    }
}

fn normalise(a: SocketAddr) -> SocketAddr {
    let ip = match a.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    SocketAddr::new(ip, a.port())
}

fn unicast(to: SocketAddr) -> bool {
    let ok = match to.ip() {
        IpAddr::V4(a) => !(a.is_broadcast() || a.is_multicast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    };
    ok && to.port() != 0
}

fn trusted(a: SocketAddr) -> bool {
    let ip = normalise(a).ip();
    ip == SWITCH_IP || ip == TRUSTED_IP
}

/// Sources a step can send from.
fn source(inp: &mut Input<'_>) -> SocketAddr {
    match inp.u8() % 9 {
        0 => v4(127, 0, 0, 1, 40000),
        1 => v4(127, 0, 0, 1, 40001),
        2 => v4(127, 0, 0, 3, 5060),
        3 => v4(192, 0, 2, 7, 5060),
        4 => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 5070),
        5 => SWITCH,
        6 => v4(127, 0, 0, 2, 6000),
        7 => v4(127, 0, 0, 4, 5070),
        _ => SocketAddr::new(IpAddr::V4(inp.ipv4()), inp.u16()),
    }
}

/// A `host[:port]` for a URI or Via sent-by.
fn host(inp: &mut Input<'_>) -> String {
    match inp.u8() % 12 {
        0 => "127.0.0.2:5080".into(),
        1 => format!("127.0.0.2:{}", inp.u16()),
        2 => "127.0.0.2".into(),
        3 => "127.0.0.1:5060".into(),
        4 => format!("127.0.0.3:{}", inp.u16()),
        5 => "127.0.0.4:5070".into(),
        6 => format!("127.0.0.4:{}", inp.u16()),
        7 => format!("{}:{}", inp.ipv4(), inp.u16()),
        8 => format!("[::1]:{}", inp.u16()),
        9 => format!("[::ffff:127.0.0.2]:{}", inp.u16()),
        10 => "127.0.0.1:40000".into(),
        _ => "example.com".into(),
    }
}

/// An IP address as a `received=` or `maddr=` value.
fn ip_text(inp: &mut Input<'_>) -> String {
    match inp.u8() % 6 {
        0 => "127.0.0.3".into(),
        1 => "127.0.0.2".into(),
        2 => "::1".into(),
        3 => "[::1]".into(),
        4 => "127.0.0.4".into(),
        _ => inp.ipv4().to_string(),
    }
}

const METHODS: [&str; 10] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "MESSAGE",
    "REGISTER",
    "OPTIONS",
    "SUBSCRIBE",
    "NOTIFY",
    "INFO",
];
const USERS: [&str; 6] = ["alice", "bob", "carol", "pbx", "nobody", "4930123456"];
const CODES: [u16; 9] = [100, 180, 183, 200, 202, 401, 407, 486, 503];

/// What the target knows from earlier steps.
#[derive(Default)]
struct Seen {
    /// (creditgate's branch, CSeq method) of every forwarded request -> where a response may go.
    allowed: HashMap<(Vec<u8>, Vec<u8>), Vec<SocketAddr>>,
    /// Requests creditgate forwarded: (bytes, destination).
    sent: Vec<(Vec<u8>, SocketAddr)>,
    /// Exact addresses of trusted nodes seen sending (source, Via sent-by).
    nodes: Vec<SocketAddr>,
    /// creditgate's Record-Route value with a token, as last seen.
    record_route: Option<String>,
}

/// The top Via's branch and sent-by (IP:port, if an IP) and the CSeq method.
struct ReqInfo {
    branch: Vec<u8>,
    sent_by: Option<SocketAddr>,
    method: Vec<u8>,
}

fn info(b: &[u8]) -> Option<ReqInfo> {
    let m = scan(b).ok()?;
    let via = m.headers.iter().find(|h| h.kind == Hdr::Via)?;
    let v = first_via(b, via.value.clone()).ok()?;
    let cseq = m.headers.iter().find(|h| h.kind == Hdr::CSeq)?;
    let (_, meth) = parse_cseq(b, cseq.value.clone()).ok()?;
    Some(ReqInfo {
        branch: v.branch.and_then(|r| b.get(r)).unwrap_or_default().to_vec(),
        sent_by: match v.host {
            Host::Ip(ip) => Some(normalise(SocketAddr::new(ip, v.port.unwrap_or(5060)))),
            Host::Name => None,
        },
        method: b.get(meth)?.to_vec(),
    })
}

/// Where an answer to a request from `src` may go (RFC 3261 18.2.2, RFC 3581).
fn reply_targets(req: &[u8], src: SocketAddr) -> Vec<SocketAddr> {
    let src = normalise(src);
    let mut out = vec![src];
    // The top Via alone decides (a request with, say, a bad CSeq is answered the same way).
    let top = scan(req).ok().and_then(|m| {
        let via = m.headers.iter().find(|h| h.kind == Hdr::Via)?;
        first_via(req, via.value.clone()).ok()
    });
    if let Some(v) = top {
        if v.rport.is_none() {
            out.push(SocketAddr::new(src.ip(), v.port.unwrap_or(5060)));
        }
    }
    out
}

/// A request from a template.
fn request(inp: &mut Input<'_>, src: SocketAddr, seen: &Seen) -> Vec<u8> {
    let method = inp.pick(&METHODS);
    let flags = inp.u8();
    let user = inp.pick(&USERS);
    let ruri_host = host(inp);
    let maddr = if flags & 1 != 0 {
        format!(";maddr={}", ip_text(inp))
    } else {
        String::new()
    };
    let sent_by = if flags & 2 != 0 {
        host(inp)
    } else {
        match src {
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            a => a.to_string(),
        }
    };
    let mut via_params = String::new();
    if flags & 4 != 0 {
        via_params.push_str(";rport");
        if inp.u8() & 1 != 0 {
            via_params.push_str(&format!("={}", inp.u16()));
        }
    }
    if flags & 8 != 0 {
        via_params.push_str(&format!(";received={}", ip_text(inp)));
    }
    let branch = inp.u8() % 8;
    let call = inp.u8() % 4;
    let cseq = inp.u8() % 4 + 1;
    let to_tag = match inp.u8() % 3 {
        0 => String::new(),
        1 => ";tag=sw1".into(),
        _ => format!(";tag=t{}", inp.u8() % 4),
    };
    let mut routes = String::new();
    for _ in 0..(flags >> 4) % 4 {
        let r = match inp.u8() % 5 {
            0 => seen
                .record_route
                .clone()
                .unwrap_or_else(|| "<sip:127.0.0.1:5060;lr>".into()),
            1 => "<sip:127.0.0.1:5060;lr>".into(),
            2 => format!("<sip:{};lr>", host(inp)),
            3 => format!("<sip:x@{};lr;maddr={}>", host(inp), ip_text(inp)),
            _ => {
                // creditgate's Route with its token moved to another host/port.
                let t = seen.record_route.clone().unwrap_or_default();
                let h = host(inp);
                t.replacen("127.0.0.1:5060", &h, 1)
            }
        };
        routes.push_str(&format!("Route: {r}\r\n"));
    }
    let ftag = inp.u8() % 3;
    format!(
        "{method} sip:{user}@{ruri_host}{maddr} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {sent_by}{via_params};branch=z9hG4bKf{branch}\r\n\
         Max-Forwards: 70\r\n\
         {routes}\
         From: <sip:{user}@example.com>;tag=f{ftag}\r\n\
         To: <sip:4930123456@example.com>{to_tag}\r\n\
         Call-ID: c{call}@fuzz\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:{user}@{sent_by}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Sets `;name=value` on the first via-parm of a Via header line (replacing a present value).
fn set_param(line: &[u8], name: &str, value: &str) -> Vec<u8> {
    let s = String::from_utf8_lossy(line).into_owned();
    let body_end = s.find('\r').unwrap_or(s.len());
    let parm_end = s[..body_end].find(',').unwrap_or(body_end);
    let key = format!(";{name}");
    if let Some(p) = s[..parm_end].find(&key) {
        let after = p + key.len();
        let end = s[after..parm_end].find(';').map_or(parm_end, |q| after + q);
        format!("{}{key}={value}{}", &s[..p], &s[end..]).into_bytes()
    } else {
        format!("{}{key}={value}{}", &s[..parm_end], &s[parm_end..]).into_bytes()
    }
}

/// A response to the forwarded request `fwd`, as its recipient builds it, with the Via below
/// creditgate's edited as the input says.
fn response(inp: &mut Input<'_>, fwd: &[u8]) -> Option<Vec<u8>> {
    let m = scan(fwd).ok()?;
    let code = inp.pick(&CODES);
    let edits = inp.u8();
    let mut out = format!("SIP/2.0 {code} Fuzz\r\n").into_bytes();
    let mut via_no = 0;
    for h in &m.headers {
        let line = fwd.get(h.line.clone())?;
        match h.kind {
            Hdr::Via => {
                if via_no == 1 && edits != 0 {
                    let mut l = line.to_vec();
                    if edits & 1 != 0 {
                        l = set_param(&l, "received", &ip_text(inp));
                    }
                    if edits & 2 != 0 {
                        l = set_param(&l, "rport", &inp.u16().to_string());
                    }
                    if edits & 4 != 0 {
                        l = format!("Via: SIP/2.0/UDP {};branch=z9hG4bKx\r\n", host(inp))
                            .into_bytes();
                    }
                    if edits & 8 != 0 {
                        out.extend_from_slice(
                            format!(
                                "Via: SIP/2.0/UDP {};rport={};received={};branch=z9hG4bKins\r\n",
                                host(inp),
                                inp.u16(),
                                ip_text(inp)
                            )
                            .as_bytes(),
                        );
                    }
                    out.extend_from_slice(&l);
                } else {
                    out.extend_from_slice(line);
                }
                via_no += 1;
            }
            Hdr::From | Hdr::CallId | Hdr::CSeq | Hdr::RecordRoute => out.extend_from_slice(line),
            Hdr::To => {
                out.extend_from_slice(line.strip_suffix(b"\r\n").unwrap_or(line));
                if !line.windows(5).any(|w| w == b";tag=") {
                    out.extend_from_slice(b";tag=r1");
                }
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    Some(out)
}

fn record_route_of(b: &[u8]) -> Option<String> {
    let m = scan(b).ok()?;
    m.headers
        .iter()
        .filter(|h| h.kind == Hdr::RecordRoute)
        .filter_map(|h| b.get(h.value.clone()))
        .flat_map(|v| v.split(|c| *c == b','))
        .find(|v| v.windows(5).any(|x| x == b";cgt="))
        .map(|v| String::from_utf8_lossy(v).trim().to_owned())
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs one datagram and checks where its output goes.
fn step(w: &World, live: &LiveState, seen: &mut Seen, data: &[u8], src: SocketAddr) {
    let src_n = normalise(src);
    if !unicast(src_n) || src_n.ip() == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return;
    }
    let is_response = matches!(scan(data).map(|m| m.start), Ok(Start::Response { .. }));
    // A trusted node's own address, as it sends and as it names itself.
    if src_n.ip() == TRUSTED_IP && !is_response {
        seen.nodes.push(src_n);
        if let Some(s) = info(data).and_then(|i| i.sent_by) {
            seen.nodes.push(s);
        }
    }
    let out = handle_live(
        Packet {
            data,
            source: src,
            local: CG,
            now: w.t0 + Duration::from_secs(1),
            wall_secs: 1_800_000_000,
        },
        &w.snap,
        &w.policy,
        Some(live),
    );
    match &out.action {
        Action::Drop => {}
        Action::Reply { to, bytes, .. } => {
            assert!(!is_response, "a reply to a response: {}", show(bytes));
            let ok = reply_targets(data, src);
            assert!(
                ok.contains(&normalise(*to)),
                "creditgate's {} sent to {to}, not to the sender {src} ({ok:?}) of\n{}",
                show(bytes.split(|b| *b == b'\r').next().unwrap_or_default()),
                show(data)
            );
        }
        Action::Forward { to, bytes, .. } => {
            let to = normalise(*to);
            assert!(unicast(to), "sent to {to}");
            if is_response {
                let key = info(data).map(|i| (i.branch, i.method));
                let ok = key.as_ref().and_then(|k| seen.allowed.get(k));
                match ok {
                    Some(ok) if ok.contains(&to) => {}
                    _ => panic!(
                        "response relayed to {to}; the request it answers came from {ok:?}.\n\
                         response (from {src}):\n{}",
                        show(data)
                    ),
                }
                if let Some(rr) = record_route_of(bytes) {
                    seen.record_route = Some(rr);
                }
                return;
            }
            if !trusted(src_n) {
                assert!(
                    to == SWITCH || seen.nodes.contains(&to),
                    "a customer's request (from {src}) forwarded to {to}, which is neither an \
                     upstream nor a trusted node's address:\n{}",
                    show(data)
                );
            }
            // Remember where answers to it may go, and the request for later responses.
            if let Some(i) = info(bytes) {
                let targets = reply_targets(data, src);
                seen.allowed
                    .entry((i.branch, i.method))
                    .or_default()
                    .extend(targets);
            }
            if let Some(rr) = record_route_of(bytes) {
                seen.record_route = Some(rr);
            }
            if seen.sent.len() == MAX_SENT {
                seen.sent.remove(0);
            }
            seen.sent.push((bytes.clone(), to));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    // Call tracking on (SPEC 7), fresh per input so a crash reproduces from its input alone.
    let live = LiveState::new(
        LiveConfig {
            reserve_secs: 30,
            max_tracked_calls: 64,
            ..LiveConfig::default()
        },
        w.t0,
    );
    let mut seen = Seen::default();
    let mut inp = Input { data };
    for _ in 0..MAX_STEPS {
        if inp.done() {
            break;
        }
        match inp.u8() % 4 {
            // Raw bytes from any source.
            0 => {
                let src = source(&mut inp);
                let d = inp.chunk().to_vec();
                step(w, &live, &mut seen, &d, src);
            }
            // A templated request.
            1 | 2 => {
                let src = source(&mut inp);
                let d = request(&mut inp, src, &seen);
                step(w, &live, &mut seen, &d, src);
            }
            // A response to an earlier forwarded request, from its recipient or anyone.
            _ => {
                if seen.sent.is_empty() {
                    continue;
                }
                let k = usize::from(inp.u8()) % seen.sent.len();
                let (fwd, dest) = seen.sent[k].clone();
                let src = if inp.u8().is_multiple_of(3) {
                    source(&mut inp)
                } else {
                    dest
                };
                if let Some(r) = response(&mut inp, &fwd) {
                    step(w, &live, &mut seen, &r, src);
                }
            }
        }
    }
});
