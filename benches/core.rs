//! Packet-path micro-benchmarks: creditgate's scanner and whole `handle()` against rsip 0.4
//! parsing the same 1.3 KB INVITE, plus heap allocations per operation (counted by a wrapping
//! global allocator). Run: `cargo bench --bench core`. Results: BENCHMARKS.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use creditgate::config::Config;
use creditgate::core::keys::Keys;
use creditgate::core::{handle, scan, Listener, Packet, Policy};
use creditgate::credit::Account;
use creditgate::snapshot::Snapshot;
use criterion::{criterion_group, criterion_main, Criterion};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A realistic 1.3 KB INVITE from a PBX: SDP body, Allow/Supported, P-Asserted-Identity.
pub fn invite() -> Vec<u8> {
    let body = "v=0\r\no=- 3912345678 3912345678 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 8 0 18 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
    format!(
        "INVITE sip:+4930123456789@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;rport;branch=z9hG4bK-524287-1---77a2b5e4c1d3f8a0\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:alice@192.0.2.10:5060;transport=udp>\r\n\
To: <sip:+4930123456789@127.0.0.1>\r\n\
From: \"Alice Example\" <sip:alice@example.com>;tag=9fa3c2b1\r\n\
Call-ID: 3c26700b-2d4f-4a1c-9b1e-5f0e8c7d6a5b@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE, UPDATE\r\n\
Supported: replaces, norefersub, timer, 100rel\r\n\
Session-Expires: 1800;refresher=uac\r\n\
Min-SE: 90\r\n\
User-Agent: Example PBX 16.4.1 build 1234 (Linux x86_64)\r\n\
P-Asserted-Identity: \"Alice Example\" <sip:+4930999999@example.com>\r\n\
Privacy: none\r\n\
X-Billing-Ref: 8c1f2e3d-4b5a-6978-8a9b-0c1d2e3f4a5b\r\n\
Allow-Events: talk, hold, conference, refer, check-sync\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .into_bytes()
}

fn setup() -> (Snapshot, Policy, Instant) {
    let mut cfg = Config::default();
    cfg.sip.listen = vec!["127.0.0.1:5060".parse().unwrap()];
    cfg.sip.upstream = vec!["127.0.0.2:5080".parse().unwrap()];
    let l = Listener {
        bound: "127.0.0.1:5060".parse().unwrap(),
        advertised_host: "127.0.0.1".into(),
        advertised_port: 5060,
    };
    let policy = Policy::new(
        &cfg,
        Keys::new(b"bench-secret-bench-secret-bench!"),
        vec![l],
    )
    .unwrap();
    let t0 = Instant::now();
    let snap = Snapshot::new(t0);
    let accts = (0..10_000)
        .map(|i| Account::new(&format!("acct{i}"), 10.into(), 0.into()))
        .chain([Account::new("alice", 25.into(), 0.into())])
        .collect();
    snap.apply_full(accts, t0, 0.5, false).unwrap();
    (snap, policy, t0)
}

fn allocs_per_op(f: impl Fn()) -> f64 {
    const N: u64 = 1000;
    let before = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..N {
        f();
    }
    (ALLOCS.load(Ordering::Relaxed) - before) as f64 / N as f64
}

fn bench(c: &mut Criterion) {
    let msg = invite();
    let (snap, policy, t0) = setup();
    let src: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
    let text = String::from_utf8(msg.clone()).unwrap();
    assert!(
        rsip::SipMessage::try_from(text.as_str()).is_ok(),
        "rsip must parse the sample"
    );
    let run = || {
        let o = handle(
            Packet {
                data: &msg,
                source: src,
                local,
                now: t0,
                wall_secs: 1_800_000_000,
            },
            &snap,
            &policy,
        );
        assert!(matches!(o.action, creditgate::core::Action::Forward { .. }));
        black_box(o);
    };
    eprintln!(
        "message {} bytes; allocations per op: creditgate scan {:.1}, creditgate handle (admit+forward) {:.1}, rsip parse {:.1}",
        msg.len(),
        allocs_per_op(|| {
            black_box(scan::scan(black_box(&msg)).unwrap());
        }),
        allocs_per_op(run),
        allocs_per_op(|| {
            black_box(rsip::SipMessage::try_from(black_box(text.as_str())).unwrap());
        }),
    );
    let mut g = c.benchmark_group("invite_1300B");
    g.bench_function("creditgate_scan", |b| {
        b.iter(|| black_box(scan::scan(black_box(&msg)).unwrap()))
    });
    g.bench_function("creditgate_handle_admit_forward", |b| b.iter(run));
    g.bench_function("rsip_parse", |b| {
        b.iter(|| black_box(rsip::SipMessage::try_from(black_box(text.as_str())).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
