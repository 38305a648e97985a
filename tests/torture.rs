//! The RFC 4475 / RFC 5118 torture messages and the PROTOS c07-sip cases (`../shared/corpus`),
//! twice: through `creditgate::core::handle` directly, against a table of expected outcomes, and
//! over real UDP against the real daemon binary, inside a network namespace of its own.
//!
//! * [`rfc4475_core_outcomes`] — every message of `rfc4475/` (+ `rfc5118/*.dat` wire forms, +
//!   `variants/`) with the outcome creditgate should have as a stateless proxy, and checks of
//!   what it forwards or answers.
//! * [`protos_core_survival`] — the 2000 PROTOS cases: no panic, nothing forwarded that does not
//!   re-scan cleanly or that the core itself would call malformed, no caller identity but the
//!   real one credit-checked, and per-group rules where the RFC leaves no room.
//! * [`fuzz_regressions`] — inputs the fuzzer (`fuzz/`, targets `core` and `dialog`) flagged;
//!   [`forwarded_header_count_stays_scannable`] and
//!   [`forwarded_route_set_is_valid_all_the_way_down`] — the two that were core findings
//!   (fixed: room kept for creditgate's own header lines, every Route value validated).
//! * [`torture_over_udp`] — both suites sent to the daemon over UDP, each datagram fenced by an
//!   OPTIONS ping from the same socket, so what arrives before the ping's 200 is the answer to
//!   that datagram. Every reply and every forwarded datagram must be byte for byte what the core
//!   computes for it, and after the suite (and every 100 PROTOS cases) a normal INVITE is still
//!   admitted and forwarded to the switch. The corpus names outside addresses and fixed reply
//!   ports (5060, 5050, 5070, 6050, 19823 on 127.0.0.1), so the test re-runs itself under
//!   `unshare -n` (or `-rn`) with only `lo` up: nothing it binds or sends can touch the host's
//!   network or another test. Where no namespace can be made it prints "skipped: no network
//!   namespace".
//!
//! Without `../shared/corpus` every test prints "skipped: corpus not found" and passes — except
//! under CI (`CI` set, as `.ci/run` has it), where a skipped suite would prove nothing and fails
//! instead; likewise a missing network namespace.
//!
//! Outcome decisions that differ from the suggestions in `rfc4475/INDEX.tsv` are commented in
//! [`RFC4475`]; the others follow the INDEX.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "integration/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

use creditgate::config::Config;
use creditgate::core::keys::Keys;
use creditgate::core::scan::{self, Hdr, Start};
use creditgate::core::{
    handle, Action, Answer, DropReason, Event, Listener, Outcome, Packet, PassKind, Policy,
};
use creditgate::credit::{parse_ips, Account};
use creditgate::snapshot::Snapshot;
use rust_decimal::Decimal;

// ---------------------------------------------------------------------------------------------
// Expected outcomes

/// What creditgate should do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A new call (or a dialog-creating request without creditgate's Route token): credit
    /// check, admitted (the test account has credit), forwarded to the switch.
    Admit,
    /// Forwarded without a credit check.
    Pass(PassKind),
    /// Answered by creditgate itself with this status code, sent back to the sender.
    Answer(u16),
    /// Nothing sent.
    Drop(DropReason),
}

use PassKind::OtherMethod;
use Want::{Admit, Answer as A, Drop, Pass};

/// RFC 4475 (and RFC 5118) messages: file (without `.dat`) and expected outcome.
///
/// The test account is identified by source address, so every new INVITE is admitted; the
/// refusal path is covered by the unit and integration tests.
const RFC4475: &[(&str, Want)] = &[
    // 3.1.1 valid messages.
    //
    // wsinv: the INDEX says "forward without credit check" because the To has a tag. SPEC
    // section 6 makes that free pass conditional: an in-dialog request from a customer without
    // creditgate's Route token (wsinv has no Route at all) is treated as a new call, else any
    // customer could bypass the credit check by inventing a To-tag. So: credit check, admitted.
    ("wsinv", Admit),
    // intmeth: unknown method, so no credit check; forwarded (proxies do not reject unknown
    // methods, RFC 3261 16.3 / RFC 4475 3.1.1.2). Needs '?' accepted in the Request-URI user
    // part (RFC 3261 25.1 user-unreserved).
    ("intmeth", Pass(OtherMethod)),
    ("esc01", Admit),
    ("escnull", Pass(OtherMethod)),
    // esc02: RE%47IST%45R is not REGISTER (no unescaping in the method): an unknown method.
    ("esc02", Pass(OtherMethod)),
    ("lwsdisp", Pass(OtherMethod)),
    ("longreq", Admit),
    // dblreq: the REGISTER only; the INVITE octets after Content-Length are discarded
    // (checked below: not in the forwarded datagram).
    ("dblreq", Pass(OtherMethod)),
    ("semiuri", Pass(OtherMethod)),
    ("transports", Pass(OtherMethod)),
    ("mpart01", Pass(OtherMethod)),
    // Responses whose top Via is not creditgate's: dropped (RFC 3261 16.11, SPEC 6).
    ("unreason", Drop(DropReason::NotOurVia)),
    ("noreason", Drop(DropReason::NotOurVia)),
    // 3.1.2 invalid messages.
    //
    // badinv01: the top Via is garbage, so the 400 goes to the datagram's source address and
    // port (RFC 3261 18.2.2 cannot be applied; the INDEX allows this or a drop).
    ("badinv01", A(400)),
    ("clerr", A(400)),
    ("ncl", A(400)),
    ("scalar02", A(400)),
    ("scalarlg", Drop(DropReason::NotOurVia)),
    ("quotbal", A(400)),
    // ltgtruri, lwsruri, lwsstart, trws: the RFC allows a liberal element to repair these; an
    // admission filter that splices bytes would have to rewrite the request line, so it takes
    // the strict option the RFC calls reasonable: 400.
    ("ltgtruri", A(400)),
    ("lwsruri", A(400)),
    ("lwsstart", A(400)),
    ("trws", A(400)),
    // escruri: 400 rather than forwarding with the ?headers stripped (both allowed).
    ("escruri", A(400)),
    // baddate: Date does not matter to admission; a normal new INVITE.
    ("baddate", Admit),
    // regbadct: the Contact of a REGISTER is the registrar's business; a stateless proxy that
    // does not parse Contact forwards it unchanged (the INDEX allows 400 or forward).
    ("regbadct", Pass(OtherMethod)),
    // badaspec: the To is what a reply copies and what identifies the callee: 400 (allowed).
    ("badaspec", A(400)),
    // baddn: the archive bytes have no empty line ending the header section (a known bug of
    // the RFC's archive). INDEX: 400. Without that line the datagram is not a complete SIP
    // message (RFC 3261 7 / 18.3: the empty line is mandatory), so the scanner cannot say where
    // the headers end and creditgate drops it as unparseable (counted); SPEC 6 answers 400 only
    // to requests it can frame. The fixed form (variants/) gets the 400 the RFC means.
    ("baddn", Drop(DropReason::Unparseable)),
    ("badvers", A(505)),
    ("mismatch01", A(400)),
    // mismatch02: the RFC prefers 501 but accepts 400; the CSeq/method mismatch is checked first
    // and a proxy does not answer 501 for methods it merely forwards.
    ("mismatch02", A(400)),
    ("bigcode", Drop(DropReason::Unparseable)),
    // 3.2 transaction layer. badbranch: "z9hG4bK" alone is not an RFC 3261 branch; creditgate
    // computes its own branch as for an RFC 2543 request (RFC 3261 16.11) and forwards.
    ("badbranch", Pass(OtherMethod)),
    // 3.3 application layer.
    ("insuf", A(400)),
    ("unkscm", A(416)),
    ("novelsc", A(416)),
    ("unksm2", Pass(OtherMethod)),
    // bext01: Unsupported lists the Proxy-Require tags only (checked below).
    ("bext01", A(420)),
    ("invut", Admit),
    ("regaut01", Pass(OtherMethod)),
    ("multi01", A(400)),
    ("mcl01", A(400)),
    ("bcast", Drop(DropReason::NotOurVia)),
    ("zeromf", A(483)),
    ("cparam01", Pass(OtherMethod)),
    ("cparam02", Pass(OtherMethod)),
    ("regescrt", Pass(OtherMethod)),
    ("sdp01", Admit),
    // inv2543: no Max-Forwards (70 assumed, 69 inserted), no branch (own branch from a hash).
    ("inv2543", Admit),
    // test.dat (archive only): no SIP-Version and no Via, so no reply can be addressed.
    ("test", Drop(DropReason::Malformed)),
    ("variants/baddn.crlf-terminated", A(400)),
    // RFC 5118 (wire forms).
    ("rfc5118/ipv6-good", Pass(OtherMethod)),
    ("rfc5118/ipv6-bad", A(400)),
    ("rfc5118/port-ambiguous", Pass(OtherMethod)),
    ("rfc5118/port-unambiguous", Pass(OtherMethod)),
    // A BYE with a To-tag but no dialog token of creditgate's: treated as out of dialog (issue 9
    // item 4; it passed as in-dialog before); BYE is not a credit-checked method, so it passes.
    ("rfc5118/via-received-param-with-delim", Pass(OtherMethod)),
    // via-received-param-no-delim: OPTIONS sip:[2001:db8::10], no user part, no To-tag. INDEX:
    // forward. SPEC 6 defines an out-of-dialog OPTIONS without a user part as addressed to
    // creditgate itself and answers it 200 (the keep-alive ping of customers and balancers);
    // customers cannot send a request anywhere but the switch anyway.
    ("rfc5118/via-received-param-no-delim", A(200)),
    ("rfc5118/ipv6-in-sdp", Admit),
    // Likewise a To-tag without a token (issue 9 item 4).
    ("rfc5118/mult-ip-in-header", Pass(OtherMethod)),
    ("rfc5118/mult-ip-in-sdp", Admit),
    ("rfc5118/ipv4-mapped-ipv6", Admit),
    // RFC 5118 4.10: the three-colon IPv6 form must be tolerated like the two-colon one.
    ("rfc5118/ipv6-bug-abnf-3-colons", Pass(OtherMethod)),
    ("rfc5118/ipv6-correct-abnf-2-colons", Pass(OtherMethod)),
];

// ---------------------------------------------------------------------------------------------
// The world the core runs in (mirrors the daemon of `torture_over_udp`)

const SWITCH: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 5080);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The daemon's port in the core-only tests (over UDP: the port the daemon bound).
const CORE_ONLY_PORT: u16 = 5090;
/// Accounts of the daemon: one, identified by source address 127.0.0.1, with credit.
const ACCOUNTS: &str = r#"
[[account]]
id = "torture"
balance = "100"
debit_limit = "0"
ips = ["127.0.0.1"]
"#;

fn corpus() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    if p.join("rfc4475/INDEX.tsv").is_file() {
        return Some(p);
    }
    skip("corpus not found");
    None
}

/// Says why a suite did not run; under CI (`CI` set) that is a failure, not a pass.
fn skip(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{why}: under CI (CI is set) this suite must run, not skip"
    );
    eprintln!("skipped: {why}");
}

struct World {
    snap: Snapshot,
    policy: Policy,
    /// The same deployment under another key: a replayed forward does not see creditgate's
    /// own Via as a loop.
    other: Policy,
    now: Instant,
}

impl World {
    /// The daemon at 127.0.0.1:`port` (harness `test_config`: its secret) with upstream
    /// `switch`, and the accounts of [`ACCOUNTS`].
    fn new(port: u16, switch: SocketAddr) -> World {
        let me = SocketAddr::new(LOCALHOST, port);
        let mut c = Config::default();
        c.sip.listen = vec![me];
        c.sip.upstream = vec![switch];
        let l = Listener {
            bound: me,
            advertised_host: me.ip().to_string(),
            advertised_port: port,
        };
        let policy = Policy::new(&c, Keys::new(harness::SECRET.as_bytes()), vec![l.clone()])
            .expect("policy");
        let other = Policy::new(&c, Keys::new(b"another key entirely"), vec![l]).expect("policy");
        let t0 = Instant::now();
        let snap = Snapshot::new(t0);
        let mut a = Account::new("torture", Decimal::from_str("100").unwrap(), Decimal::ZERO);
        a.ips = parse_ips("127.0.0.1").unwrap();
        snap.apply_full(vec![a], t0, 0.5, false).unwrap();
        World {
            snap,
            policy,
            other,
            now: t0 + Duration::from_secs(1),
        }
    }

    fn local(&self) -> SocketAddr {
        self.policy.listeners[0].bound
    }

    fn run<'a>(&self, data: &'a [u8], source: SocketAddr) -> Outcome<'a> {
        self.run_with(&self.policy, data, source)
    }

    /// [`World::run`] at the wall clock `wall_secs`.
    fn run_at<'a>(&self, data: &'a [u8], source: SocketAddr, wall_secs: u64) -> Outcome<'a> {
        handle(
            Packet {
                data,
                source,
                local: self.local(),
                now: self.now,
                wall_secs,
            },
            &self.snap,
            &self.policy,
        )
    }

    fn run_with<'a>(&self, p: &Policy, data: &'a [u8], source: SocketAddr) -> Outcome<'a> {
        handle(
            Packet {
                data,
                source,
                local: self.local(),
                now: self.now,
                wall_secs: 1_800_000_000,
            },
            &self.snap,
            p,
        )
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The outcome class of an event.
fn got(o: &Outcome<'_>) -> Want {
    match (&o.action, &o.event) {
        (Action::Forward { .. }, Event::Admitted { .. }) => Admit,
        (Action::Forward { .. }, Event::Passed(k)) => Pass(*k),
        (Action::Reply { bytes, .. }, _) => A(status(bytes).unwrap_or(0)),
        (Action::Drop, Event::Dropped(r)) => Drop(*r),
        (a, e) => panic!("unexpected combination {a:?} / {e:?}"),
    }
}

fn status(b: &[u8]) -> Option<u16> {
    match scan::scan(b).ok()?.start {
        Start::Response { code } => Some(code),
        Start::Request { .. } => None,
    }
}

/// The checks every forward and every reply of the core must pass, whatever the input:
/// forwarded bytes re-scan without defect; a forwarded request handed back to the core (as the
/// switch would send it on) is not malformed in the core's own eyes; replies scan as responses;
/// nothing goes to a non-unicast address. Returns a description of the first violation.
fn invariants(w: &World, input: &[u8], o: &Outcome<'_>) -> Result<(), String> {
    let (to, bytes, fwd) = match &o.action {
        Action::Forward { to, bytes, .. } => (*to, bytes, true),
        Action::Reply { to, bytes, .. } => (*to, bytes, false),
        Action::Drop => return Ok(()),
    };
    let unicast = match to.ip() {
        IpAddr::V4(a) => !(a.is_broadcast() || a.is_multicast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    };
    if !unicast || to.port() == 0 {
        return Err(format!("sends to {to}"));
    }
    let m = scan::scan(bytes).map_err(|e| format!("output does not scan: {e:?}"))?;
    if !fwd {
        if !matches!(m.start, Start::Response { .. }) {
            return Err("reply is not a response".into());
        }
        // Copied Via lines may carry the request's own bare LFs / sheer number.
        let tolerated = matches!(
            m.defect,
            None | Some(scan::Defect::BareLineFeed | scan::Defect::TooManyHeaders)
        );
        return if tolerated {
            Ok(())
        } else {
            Err(format!("reply has defect {:?}", m.defect))
        };
    }
    if let Some(d) = m.defect {
        return Err(format!("forwarded bytes have defect {d:?}"));
    }
    if let Start::Request { .. } = m.start {
        let again = w.run_with(&w.other, bytes, SWITCH);
        let malformed = matches!(
            again.event,
            Event::Answered(Answer::BadRequest(_) | Answer::VersionNotSupported)
                | Event::Dropped(DropReason::Malformed | DropReason::Unparseable)
        );
        if malformed {
            return Err(format!(
                "forwarded a request the core calls malformed: {:?}",
                again.event
            ));
        }
        // The body travels unchanged.
        let inp = scan::scan(input).map_err(|e| format!("input no longer scans: {e:?}"))?;
        if input.get(inp.body.clone()) != bytes.get(m.body.clone()) {
            return Err("body changed".into());
        }
    }
    Ok(())
}

/// Header lines of `input` that creditgate does not edit must reappear byte for byte and in
/// order in `out` (STYLE rule 2: forward by splicing).
fn untouched_lines_kept(input: &[u8], out: &[u8]) -> Result<(), String> {
    let i = scan::scan(input).map_err(|e| format!("{e:?}"))?;
    let o = scan::scan(out).map_err(|e| format!("{e:?}"))?;
    let mut outs = o.headers.iter().map(|h| &out[h.line.clone()]);
    for h in &i.headers {
        if matches!(
            h.kind,
            Hdr::Via | Hdr::MaxForwards | Hdr::Route | Hdr::RecordRoute
        ) {
            continue;
        }
        let want = &input[h.line.clone()];
        if !outs.any(|l| l == want) {
            return Err(format!("header line {:?} lost or moved", text(want)));
        }
    }
    let vias = |m: &scan::Message<'_>| m.headers.iter().filter(|h| h.kind == Hdr::Via).count();
    if vias(&o) != vias(&i) + 1 {
        return Err(format!("{} Via lines in, {} out", vias(&i), vias(&o)));
    }
    Ok(())
}

/// The RFC 4475 reply port of a message (INDEX.tsv `rfc3261_reply_port`; `-` = 5060): the
/// test sends from 127.0.0.1 on that port, where creditgate's replies go.
fn reply_ports(corpus: &Path) -> BTreeMap<String, u16> {
    let idx = std::fs::read_to_string(corpus.join("rfc4475/INDEX.tsv")).unwrap();
    idx.lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            let port = cols.last()?.parse().unwrap_or(5060);
            Some((cols.first()?.to_string(), port))
        })
        .collect()
}

fn rfc_messages(corpus: &Path) -> Vec<(&'static str, Want, Vec<u8>, SocketAddr)> {
    let ports = reply_ports(corpus);
    // Every INDEX row has a table entry (and so does the variant).
    for name in ports.keys() {
        assert!(
            RFC4475.iter().any(|(n, _)| n == name),
            "INDEX.tsv lists {name}, the table does not"
        );
    }
    RFC4475
        .iter()
        .map(|(name, want)| {
            let path = corpus.join("rfc4475").join(format!("{name}.dat"));
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let base = name.strip_prefix("variants/").unwrap_or(name);
            let base = base.strip_suffix(".crlf-terminated").unwrap_or(base);
            let port = ports.get(base).copied().unwrap_or(5060);
            (*name, *want, data, SocketAddr::new(LOCALHOST, port))
        })
        .collect()
}

/// Message-specific checks beyond the outcome class.
fn specific(name: &str, input: &[u8], out: &[u8]) -> Result<(), String> {
    let t = text(out);
    let has = |s: &str| {
        if t.contains(s) {
            Ok(())
        } else {
            Err(format!("{name}: output lacks {s:?}"))
        }
    };
    match name {
        // Leading zeros read, decremented (RFC 4475 3.1.1.1); unknown header passed opaque.
        "wsinv" => {
            has("MaX-fOrWaRdS: 67\r\n")?;
            has("UnknownHeaderWithUnusualValue:")?;
        }
        "dblreq" if t.contains("INVITE") || !t.ends_with("\r\n\r\n") => {
            return Err("dblreq: the trailing INVITE octets were forwarded".into());
        }
        "inv2543" => has("Max-Forwards: 69\r\n")?,
        "bext01" => has("Unsupported: noProxiesSupportThis, norDoAnyProxiesSupportThis\r\n")?,
        "esc02" => has("RE%47IST%45R sip:registrar.example.com SIP/2.0\r\n")?,
        _ => {}
    }
    if status(out).is_none() {
        untouched_lines_kept(input, out).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

#[test]
fn rfc4475_core_outcomes() {
    let Some(corpus) = corpus() else {
        return;
    };
    let w = World::new(CORE_ONLY_PORT, SWITCH);
    let mut failures = Vec::new();
    for (name, want, data, source) in rfc_messages(&corpus) {
        let o = w.run(&data, source);
        let g = got(&o);
        if g != want {
            failures.push(format!("{name}: want {want:?}, got {g:?} ({:?})", o.event));
            continue;
        }
        if let Err(e) = invariants(&w, &data, &o) {
            failures.push(format!("{name}: {e}"));
        }
        match &o.action {
            Action::Forward { to, bytes, .. } => {
                if *to != SWITCH {
                    failures.push(format!("{name}: forwarded to {to}, not the switch"));
                }
                if let Err(e) = specific(name, &data, bytes) {
                    failures.push(e);
                }
            }
            Action::Reply { to, bytes, .. } => {
                // To the sender (RFC 3261 18.2.2: source IP, Via port, which is the port the
                // test sends from; or the source port itself for an unusable Via).
                if *to != source {
                    failures.push(format!("{name}: reply to {to}, not {source}"));
                }
                if let Err(e) = specific(name, &data, bytes) {
                    failures.push(e);
                }
            }
            Action::Drop => {}
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// PROTOS c07-sip

fn protos_cases(corpus: &Path) -> Vec<(String, String, Vec<u8>)> {
    let dir = corpus.join("protos-c07-sip");
    let idx = std::fs::read_to_string(dir.join("INDEX.tsv")).unwrap();
    idx.lines()
        .skip(1)
        .map(|l| {
            let mut cols = l.split('\t');
            let case = cols.next().unwrap().to_string();
            let group = cols.next().unwrap().to_string();
            let data = std::fs::read(dir.join("rendered").join(format!("{case}.sip"))).unwrap();
            (case, group, data)
        })
        .collect()
}

/// PROTOS sends every case from the Via's 127.0.0.1:5070.
const PROTOS_SOURCE: SocketAddr = SocketAddr::new(LOCALHOST, 5070);

/// Groups whose every case must be refused or dropped, never forwarded, because each case
/// breaks the RFC 3261 grammar of something a proxy must read or pass on (GROUPS.tsv): a method
/// that is not a token, a request line or header section not ended by CRLF, another SIP
/// version (505/400), a broken To, the From's scheme separator, the Via sent-by or Via
/// parameters, a CSeq method that is not the request's (RFC 4475 mismatch01).
///
/// Not listed, because some of their cases are still valid SIP and are admitted: the Via
/// protocol name/version (any token is grammatical), the From URI (creditgate checks only its
/// `scheme:` shape; the caller identity comes from the source address here and a From user is
/// only used after a full SIP-URI parse), Max-Forwards above 255 (counted as 255), CSeq numbers
/// below 2^31, a Content-Length shorter than the body (RFC 3261 18.3: the rest is discarded),
/// and the SDP groups (the body is the UAS's business).
const NEVER_FORWARDED: &[&str] = &[
    "sip-method",
    "sip-request-crlf",
    "crlf-request",
    "sip-version",
    "sip-to",
    "sip-to-left-paranthesis",
    "sip-to-right-paranthesis",
    "sip-from-colon",
    "sip-via-hostcolon",
    "sip-via-tag",
    "sip-cseq-string",
];

/// Checks one PROTOS case's outcome; returns the violation, if any.
fn protos_check(w: &World, group: &str, data: &[u8], o: &Outcome<'_>) -> Result<(), String> {
    invariants(w, data, o)?;
    if let Action::Forward { to, .. } = &o.action {
        if NEVER_FORWARDED.contains(&group) {
            return Err(format!("forwarded a case of group {group}"));
        }
        if *to != w.policy.upstreams[0] {
            return Err(format!("forwarded to {to}, not the switch"));
        }
    }
    // Only the account the source address names is ever credit-checked.
    if let Event::Admitted { account, .. } | Event::Refused { account, .. } = &o.event {
        if account.as_ref().map(|a| a.as_str()) != Some("torture") {
            return Err(format!("credit-checked as {account:?}"));
        }
    }
    Ok(())
}

#[test]
fn protos_core_survival() {
    let Some(corpus) = corpus() else {
        return;
    };
    let w = World::new(CORE_ONLY_PORT, SWITCH);
    let cases = protos_cases(&corpus);
    assert_eq!(cases.len(), 2000);
    let mut failures = Vec::new();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for (case, group, data) in &cases {
        let o = w.run(data, PROTOS_SOURCE);
        if let Err(e) = protos_check(&w, group, data, &o) {
            failures.push(format!("{case} ({group}): {e}"));
        }
        *tally.entry(format!("{group} {:?}", got(&o))).or_default() += 1;
        if case == "0000000" {
            assert_eq!(got(&o), Admit, "the valid PROTOS case is not admitted");
        }
    }
    println!("PROTOS outcomes per group:");
    for (k, n) in &tally {
        println!("  {k}: {n}");
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Fuzzer findings (fuzz/fuzz_targets/core.rs). None was a core crash; each showed a harness
// invariant stated too strictly, and is kept so the behaviour stays as understood.

#[test]
fn fuzz_regressions() {
    let w = World::new(CORE_ONLY_PORT, SWITCH);
    let caller = SocketAddr::new(LOCALHOST, 40000);
    // 1. A request written with bare LFs gets its 400; the reply copies the Via/From/To lines
    //    with their bare LFs (pjsip seed tel_uri_basic.sip, shortened).
    let bare = b"INVITE tel:+1-212-555-0100 SIP/2.0\nVia: SIP/2.0/UDP host.example.com;branch=z9hG4bKx\nFrom: <sip:a@example.com>;tag=1\nTo: <tel:+1-212-555-0100>\nCall-ID: c1\nCSeq: 1 INVITE\nContent-Length: 0\n\n";
    let o = w.run(bare, caller);
    assert_eq!(
        o.event,
        Event::Answered(Answer::BadRequest("Bare LF in header section"))
    );
    invariants(&w, bare, &o).unwrap();
    // 2. Datagrams from sources the kernel never delivers (multicast; IPv4-mapped broadcast,
    //    crash-5b331c01) are answered to that source like any other: the core does not filter
    //    the source (defence in depth suggested to the lead); the fuzz harness no longer
    //    generates such sources. Here: handled without panic.
    let m = b"INVITE sip:callee@127.0.0.1 SIP/2.0 x\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: c2\r\nCSeq: 1 INVITE\r\n\r\n";
    for src in [
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from([0xff; 16])), 5070),
        SocketAddr::new(IpAddr::V6(Ipv4Addr::BROADCAST.to_ipv6_mapped()), u16::MAX),
    ] {
        assert!(matches!(w.run(m, src).action, Action::Reply { .. }));
    }
    // 3. A request with 250 Via lines and garbage: its 400 carries all 250 Vias back, more
    //    header lines than creditgate keeps (scan::MAX_HEADERS) — RFC 3261 8.2.6.2 asks for
    //    every Via. Shape of crash-49044ed7 (a mangled RFC 5118 BYE).
    let mut big = b"BYE sip:user@example.net SIP/2.0\r\n".to_vec();
    for i in 0..250 {
        big.extend_from_slice(
            format!("Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{i}\r\n").as_bytes(),
        );
    }
    big.extend_from_slice(
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: c3\r\nCSeq: 1 BYE\r\nX: \x00\x01\r\nY\r\n\r\n",
    );
    let o = w.run(&big, caller);
    assert!(
        matches!(o.event, Event::Answered(Answer::BadRequest(_))),
        "{:?}",
        o.event
    );
    invariants(&w, &big, &o).unwrap();
    // 4. (dialog, crash-dbf72f4a) A BYE whose Route token was altered still passes as
    //    in-dialog: BYE is never credit-checked, with or without a token (SPEC 6), so only a
    //    re-INVITE shows the token at work: valid, it passes; altered, it is a new call.
    let invite = b"INVITE sip:callee@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK533\r\nFrom: <sip:caller@127.0.0.1>;tag=533\r\nTo: <sip:callee@127.0.0.1>\r\nCall-ID: c5\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let o = w.run(invite, SocketAddr::new(LOCALHOST, 5070));
    assert!(matches!(o.event, Event::Admitted { .. }), "{:?}", o.event);
    let Action::Forward { bytes, .. } = &o.action else {
        panic!("not forwarded")
    };
    let fwd = text(bytes);
    let rr = fwd
        .lines()
        .find_map(|l| l.strip_prefix("Record-Route: "))
        .unwrap()
        .to_owned();
    let p = rr.find(";cgt=").unwrap() + 5;
    let mut forged = rr.clone();
    let flip = if &rr[p..p + 1] == "0" { "1" } else { "0" };
    forged.replace_range(p..p + 1, flip);
    let req = |method: &str, route: &str| {
        format!(
            "{method} sip:callee@127.0.0.2:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK{method}{}\r\n\
             Route: {route}\r\nFrom: <sip:caller@127.0.0.1>;tag=533\r\nTo: <sip:callee@127.0.0.1>;tag=sw1\r\n\
             Call-ID: c5\r\nCSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n",
            route.len()
        )
    };
    for (method, route, want_in_dialog) in [
        ("BYE", &rr, true),
        // A forged token is no token: the BYE is out of dialog (issue 9 item 4; it passed as an
        // in-dialog request before), still forwarded as BYE needs no credit.
        ("BYE", &forged, false),
        ("INVITE", &rr, true),
        ("INVITE", &forged, false),
    ] {
        let m = req(method, route);
        let o = w.run(m.as_bytes(), caller);
        assert_eq!(
            o.event == Event::Passed(PassKind::InDialog),
            want_in_dialog,
            "{method} with Route {route}: {:?}",
            o.event
        );
    }
}

/// Fuzzer finding (src/core/proxy.rs, crash-303288d6), fixed: a request of exactly
/// `scan::MAX_HEADERS` header lines scans without defect, and forwarding it with creditgate's
/// Via (and Max-Forwards / Record-Route) added would give the next hop more header lines than
/// creditgate's own scanner keeps. The core now answers such a request "400 Too many header
/// lines" instead of forwarding it.
#[test]
fn forwarded_header_count_stays_scannable() {
    let w = World::new(CORE_ONLY_PORT, SWITCH);
    let caller = SocketAddr::new(LOCALHOST, 40000);
    let mut m = b"BYE sip:user@example.net SIP/2.0\r\n".to_vec();
    for i in 0..scan::MAX_HEADERS - 6 {
        m.extend_from_slice(format!("Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK{i}\r\n").as_bytes());
    }
    m.extend_from_slice(
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: c4\r\nCSeq: 1 BYE\r\n\
          Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(scan::scan(&m).unwrap().headers.len(), scan::MAX_HEADERS);
    let o = w.run(&m, caller);
    invariants(&w, &m, &o).unwrap();
}

/// Fuzzer finding (src/core/proxy.rs `RouteInfo::read`, crash-16e5c33f), fixed: only the
/// first two Route values were parsed as URIs (ours and the next hop), so a request whose third
/// value the grammar rejects was forwarded, and a hop applying the same rules after popping its
/// own Route answered "400 Malformed Route". Now every Route value is validated, and IPv4 octets
/// with leading zeros (`063.0.0.1`: RFC 3261 25.1 allows 1*3DIGIT, Rust's `Ipv4Addr` does not)
/// parse, so that request is forwarded and one with a really bad third value is refused.
#[test]
fn forwarded_route_set_is_valid_all_the_way_down() {
    let w = World::new(CORE_ONLY_PORT, SWITCH);
    let me = w.local();
    let m = format!(
        "MESSAGE sip:kumi@example.org SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-r\r\n\
         Route: <sip:{me};lr>\r\nRoute: <sip:{me};lr>\r\nRoute: <sip:063.0.0.1:5060;lr>\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:kumi@example.org>\r\n\
         Call-ID: r1\r\nCSeq: 1 MESSAGE\r\nContent-Length: 0\r\n\r\n"
    );
    let o = w.run(m.as_bytes(), SocketAddr::new(LOCALHOST, 40000));
    assert!(matches!(o.event, Event::Passed(_)), "{:?}", o.event);
    invariants(&w, m.as_bytes(), &o).unwrap();

    let bad = m.replace("063.0.0.1", "999.0.0.1");
    let o = w.run(bad.as_bytes(), SocketAddr::new(LOCALHOST, 40000));
    assert_eq!(
        o.event,
        Event::Answered(Answer::BadRequest("Malformed Route")),
        "a Route value below the next hop's is validated too"
    );
}

// ---------------------------------------------------------------------------------------------
// Over UDP, in a network namespace

const NETNS_ENV: &str = "CREDITGATE_TORTURE_IN_NETNS";

/// Re-runs this test binary, filtered to `test`, in a new network namespace with `lo` up:
/// `unshare -n` as root, else `unshare -rn` (an unprivileged user namespace, where the kernel
/// allows it). `None` when neither works here (no `unshare` or `ip`, not permitted).
fn rerun_in_netns(test: &str) -> Option<std::process::ExitStatus> {
    let flags = ["-n", "-rn"].into_iter().find(|f| {
        Command::new("unshare")
            .args([f, "--", "ip", "link", "set", "lo", "up"])
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let exe = std::env::current_exe().ok()?;
    Command::new("unshare")
        .args([
            flags,
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(NETNS_ENV, "1")
        .status()
        .ok()
}

/// The reply ports of the corpus, bound on 127.0.0.1 (only inside the namespace).
struct Peers {
    socks: BTreeMap<u16, UdpSocket>,
    daemon: SocketAddr,
    /// Datagrams sent (each followed by a fence ping), replies and forwards seen.
    seq: u64,
    replies: usize,
    forwards: usize,
}

/// What came back for one datagram.
#[derive(Debug, Default)]
struct Seen {
    /// (receiving port, bytes) of every datagram that reached a sender port, except the fence.
    replies: Vec<(u16, Vec<u8>)>,
    forwards: Vec<Vec<u8>>,
}

impl Peers {
    fn bind(ports: impl IntoIterator<Item = u16>) -> Peers {
        let socks = ports
            .into_iter()
            .map(|p| {
                let s = UdpSocket::bind(SocketAddr::new(LOCALHOST, p))
                    .unwrap_or_else(|e| panic!("bind 127.0.0.1:{p}: {e}"));
                (p, s)
            })
            .collect();
        Peers {
            socks,
            daemon: SocketAddr::new(LOCALHOST, 0),
            seq: 0,
            replies: 0,
            forwards: 0,
        }
    }

    /// Sends `data` from 127.0.0.1:`port`, then an OPTIONS ping from the same socket, and
    /// collects what arrives before the ping's 200. The daemon runs one worker, so it handles
    /// the two datagrams in order, and sends whatever the first one causes before it answers
    /// the second; an expected forward is waited for in addition.
    fn exchange(
        &mut self,
        port: u16,
        data: &[u8],
        switch: &harness::Switch,
        predicted: &Action,
    ) -> Seen {
        let forward_expected = matches!(predicted, Action::Forward { .. });
        let reply_to = match predicted {
            Action::Reply { to, .. } => Some(to.port()),
            _ => None,
        };
        self.seq += 1;
        let fence_id = format!("fence-{}-{port}", self.seq);
        let fence = format!(
            "OPTIONS sip:{d} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{fence_id}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:fence@127.0.0.1>;tag={fence_id}\r\nTo: <sip:{d}>\r\n\
             Call-ID: {fence_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            d = self.daemon
        );
        let sock = &self.socks[&port];
        sock.send_to(data, self.daemon).unwrap();
        sock.send_to(fence.as_bytes(), self.daemon).unwrap();
        let mut seen = Seen::default();
        let deadline = Instant::now() + harness::WAIT;
        let mut buf = vec![0u8; 65_535];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no answer to the fence ping within {:?}: is the daemon alive?",
                harness::WAIT
            );
            sock.set_read_timeout(Some(left)).unwrap();
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let m = buf[..n].to_vec();
            if text(&m).contains(&format!("Call-ID: {fence_id}\r\n")) {
                assert_eq!(status(&m), Some(200), "fence ping: {}", text(&m));
                break;
            }
            seen.replies.push((port, m));
        }
        // What the core predicts is waited for (it cannot then arrive late and be taken for
        // the next datagram's); anything else is collected from what is already queued.
        if forward_expected {
            if let Some((m, _)) = switch.recv_timeout(harness::WAIT) {
                seen.forwards.push(m);
            }
        }
        if let Some(p) = reply_to.filter(|p| !seen.replies.iter().any(|r| r.0 == *p)) {
            if let Some(s) = self.socks.get(&p) {
                s.set_read_timeout(Some(harness::WAIT)).unwrap();
                if let Ok((n, _)) = s.recv_from(&mut buf) {
                    seen.replies.push((p, buf[..n].to_vec()));
                }
            }
        }
        while let Some((m, _)) = switch.recv_timeout(Duration::from_millis(1)) {
            seen.forwards.push(m);
        }
        for (p, s) in &self.socks {
            s.set_nonblocking(true).unwrap();
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                seen.replies.push((*p, buf[..n].to_vec()));
            }
            s.set_nonblocking(false).unwrap();
        }
        self.replies += seen.replies.len();
        self.forwards += seen.forwards.len();
        seen
    }
}

/// Compares what the daemon did with what the core computes for the same datagram, at the
/// daemon's wall clock (Route tokens carry the minute they were issued): now, or a minute ago
/// when the minute turned between the daemon's send and this comparison.
fn compare(w: &World, data: &[u8], source: SocketAddr, seen: &Seen) -> Result<(), String> {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    compare_at(w, data, source, seen, wall)
        .or_else(|_| compare_at(w, data, source, seen, wall - 60))
}

fn compare_at(
    w: &World,
    data: &[u8],
    source: SocketAddr,
    seen: &Seen,
    wall_secs: u64,
) -> Result<(), String> {
    let o = w.run_at(data, source, wall_secs);
    type Sent<'b> = (Vec<(u16, &'b [u8])>, Vec<&'b [u8]>);
    let (want_replies, want_forwards): Sent<'_> = match &o.action {
        Action::Forward { to, bytes, .. } => {
            assert_eq!(to.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
            (vec![], vec![bytes.as_slice()])
        }
        Action::Reply { to, bytes, .. } => (vec![(to.port(), bytes.as_slice())], vec![]),
        Action::Drop => (vec![], vec![]),
    };
    let got_replies: Vec<(u16, &[u8])> = seen
        .replies
        .iter()
        .map(|(p, m)| (*p, m.as_slice()))
        .collect();
    let got_forwards: Vec<&[u8]> = seen.forwards.iter().map(Vec::as_slice).collect();
    if got_replies != want_replies || got_forwards != want_forwards {
        return Err(format!(
            "core says {:?} ({:?}); the daemon sent replies {:?} and forwards {:?}",
            got(&o),
            o.event,
            seen.replies
                .iter()
                .map(|(p, m)| format!("{p}: {}", harness::start_line(m)))
                .collect::<Vec<_>>(),
            seen.forwards
                .iter()
                .map(|m| harness::start_line(m))
                .collect::<Vec<_>>()
        ));
    }
    Ok(())
}

#[test]
fn torture_over_udp() {
    let Some(corpus) = corpus() else {
        return;
    };
    if std::env::var_os(NETNS_ENV).is_none() {
        match rerun_in_netns("torture_over_udp") {
            None => skip("no network namespace"),
            Some(status) => assert!(status.success(), "the run inside the namespace failed"),
        }
        return;
    }

    // Inside the namespace: only lo, nobody else's sockets.
    let rfc = rfc_messages(&corpus);
    let mut ports: Vec<u16> = rfc.iter().map(|m| m.3.port()).collect();
    ports.push(PROTOS_SOURCE.port());
    ports.sort_unstable();
    ports.dedup();
    let mut peers = Peers::bind(ports);
    let switch = harness::Switch::bind();
    // Every case is fenced by a ping from one source, far above a customer's rate: no flood
    // guard (its default would drop some).
    let config = harness::test_config(0, switch.addr(), "60s").replace(
        "workers = 2",
        "workers = 1
source_pps_limit = 0",
    );
    let mut daemon = harness::Daemon::start(&config, ACCOUNTS);
    peers.daemon = daemon.sip_addr();
    let port = daemon.sip_addr().port();
    let w = World::new(port, switch.addr());
    let mut failures = Vec::new();

    // A normal INVITE is admitted and reaches the switch: PROTOS case 0 from 127.0.0.1:5070.
    let valid = std::fs::read(corpus.join("protos-c07-sip/rendered/0000000.sip")).unwrap();
    let valid_action = w.run(&valid, PROTOS_SOURCE).action;
    let alive = |peers: &mut Peers, when: &str, failures: &mut Vec<String>| {
        let seen = peers.exchange(PROTOS_SOURCE.port(), &valid, &switch, &valid_action);
        if seen.forwards.len() != 1 || !seen.replies.is_empty() {
            failures.push(format!(
                "{when}: the valid INVITE was not forwarded: {seen:?}"
            ));
        }
        assert_eq!(got(&w.run(&valid, PROTOS_SOURCE)), Admit);
    };
    alive(&mut peers, "before the suite", &mut failures);

    for (name, want, data, source) in &rfc {
        let seen = peers.exchange(source.port(), data, &switch, &w.run(data, *source).action);
        if let Err(e) = compare(&w, data, *source, &seen) {
            failures.push(format!("{name} (want {want:?}): {e}"));
        }
    }
    alive(&mut peers, "after RFC 4475", &mut failures);

    for (i, (case, group, data)) in protos_cases(&corpus).iter().enumerate() {
        let o = w.run(data, PROTOS_SOURCE);
        let seen = peers.exchange(PROTOS_SOURCE.port(), data, &switch, &o.action);
        if let Err(e) = compare(&w, data, PROTOS_SOURCE, &seen) {
            failures.push(format!("PROTOS {case} ({group}): {e}"));
        }
        for m in &seen.forwards {
            if let Err(e) = invariants(&w, data, &o) {
                failures.push(format!(
                    "PROTOS {case} ({group}) forwarded {}: {e}",
                    m.len()
                ));
            }
        }
        if i % 100 == 99 {
            alive(
                &mut peers,
                &format!("after PROTOS case {case}"),
                &mut failures,
            );
        }
    }
    alive(&mut peers, "after PROTOS", &mut failures);
    println!(
        "over UDP: {} datagrams, {} replies, {} forwards, the rest dropped",
        peers.seq, peers.replies, peers.forwards
    );
    assert!(daemon.is_running(), "the daemon died");
    if !failures.is_empty() {
        daemon.fail(&failures.join("\n"));
    }
}
