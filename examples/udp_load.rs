//! A small UDP load generator for benchmarks (`scripts/bench-redis.sh`): sends new-call INVITEs
//! to a creditgate at a fixed rate, plays the switch on another address, and reports the
//! admission latency (INVITE sent by the caller → INVITE received at the switch, or → creditgate's
//! refusal received at the caller) as p50/p90/p99/max.
//!
//! ```text
//! cargo run --release --example udp_load -- --target 127.0.0.1:5060 --switch 127.0.0.2:5080 \
//!     --rate 2000 --duration 5 --accounts 1000000 [--prefix acct-] [--label outside]
//! ```
//!
//! Bounded by design: it sends `rate * duration` requests and waits at most one second for the
//! last answers. Loopback only. Not a test: it asserts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per request: send time.
type Sent = Arc<Vec<Mutex<Option<Instant>>>>;
/// Per request: latency and outcome (0 = admitted, else the refusal status).
type Done = Arc<Vec<Mutex<Option<(Duration, u16)>>>>;

struct Args {
    target: SocketAddr,
    switch: SocketAddr,
    rate: u64,
    duration: f64,
    accounts: u64,
    prefix: String,
    label: String,
}

fn parse_args() -> Args {
    let mut a = Args {
        target: "127.0.0.1:5060".parse().unwrap(),
        switch: "127.0.0.2:5080".parse().unwrap(),
        rate: 1000,
        duration: 5.0,
        accounts: 1000,
        prefix: "acct-".into(),
        label: "run".into(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let v = it
            .next()
            .unwrap_or_else(|| panic!("{k} needs a value"))
            .clone();
        match k.as_str() {
            "--target" => a.target = v.parse().expect("--target ADDR"),
            "--switch" => a.switch = v.parse().expect("--switch ADDR"),
            "--rate" => a.rate = v.parse().expect("--rate N"),
            "--duration" => a.duration = v.parse().expect("--duration SECONDS"),
            "--accounts" => a.accounts = v.parse().expect("--accounts N"),
            "--prefix" => a.prefix = v,
            "--label" => a.label = v,
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(a.rate > 0 && a.accounts > 0 && a.duration > 0.0);
    a
}

fn invite(local: SocketAddr, target: SocketAddr, n: u64, user: &str) -> Vec<u8> {
    let body = format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8\r\n",
        ip = local.ip()
    );
    format!(
        "INVITE sip:4930123456@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bKload{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.com>;tag=l{n}\r\n\
         To: <sip:4930123456@{target}>\r\n\
         Call-ID: cgload-{n}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:{user}@{local}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {len}\r\n\r\n{body}",
        len = body.len()
    )
    .into_bytes()
}

/// The request number of a message, from its `Call-ID: cgload-N`.
fn call_number(msg: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(msg).ok()?;
    let at = text.find("Call-ID: cgload-")? + "Call-ID: cgload-".len();
    let rest = &text[at..];
    let end = rest.find('\r')?;
    rest[..end].parse().ok()
}

fn status(msg: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(msg.get(8..12)?).ok()?;
    msg.starts_with(b"SIP/2.0 ")
        .then(|| s.trim().parse().ok())
        .flatten()
}

/// Receives on `sock` until `stop`, recording the arrival time of each request number.
fn receiver(
    sock: UdpSocket,
    sent: Sent,
    done: Done,
    stop: Arc<AtomicBool>,
    is_switch: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = vec![0u8; 65535];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let now = Instant::now();
            let msg = &buf[..n];
            let code = if is_switch {
                if !msg.starts_with(b"INVITE ") {
                    continue;
                }
                0 // admitted
            } else {
                match status(msg) {
                    Some(c) if c >= 200 => c,
                    _ => continue,
                }
            };
            let Some(i) = call_number(msg) else { continue };
            let Some(t0) = sent.get(i).and_then(|m| *m.lock().unwrap()) else {
                continue;
            };
            if let Some(slot) = done.get(i) {
                let mut g = slot.lock().unwrap();
                if g.is_none() {
                    *g = Some((now - t0, code));
                }
            }
        }
    })
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn main() {
    let a = parse_args();
    let total = (a.rate as f64 * a.duration) as usize;
    let caller = UdpSocket::bind("127.0.0.1:0").expect("bind the caller");
    let switch = UdpSocket::bind(a.switch).expect("bind the switch address");
    let local = caller.local_addr().unwrap();
    let sent: Sent = Arc::new((0..total).map(|_| Mutex::new(None)).collect());
    let done: Done = Arc::new((0..total).map(|_| Mutex::new(None)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let r1 = receiver(
        caller.try_clone().unwrap(),
        sent.clone(),
        done.clone(),
        stop.clone(),
        false,
    );
    let r2 = receiver(switch, sent.clone(), done.clone(), stop.clone(), true);

    // Spread the account ids over the whole set (a multiplicative hash of the request number).
    let pick = |n: u64| (n.wrapping_mul(2_654_435_761)) % a.accounts;
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / a.rate as f64);
    for n in 0..total {
        let due = start + interval * n as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let user = format!("{}{}", a.prefix, pick(n as u64));
        let msg = invite(local, a.target, n as u64, &user);
        *sent[n].lock().unwrap() = Some(Instant::now());
        let _ = caller.send_to(&msg, a.target);
    }
    let send_time = start.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    r1.join().unwrap();
    r2.join().unwrap();

    let mut lat = Vec::with_capacity(total);
    let (mut admitted, mut refused, mut lost) = (0u64, 0u64, 0u64);
    for slot in done.iter() {
        match *slot.lock().unwrap() {
            Some((d, 0)) => {
                admitted += 1;
                lat.push(d);
            }
            Some((d, _)) => {
                refused += 1;
                lat.push(d);
            }
            None => lost += 1,
        }
    }
    lat.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{label}: sent={total} in {secs:.2}s admitted={admitted} refused={refused} lost={lost} \
         p50={p50:.0}us p90={p90:.0}us p99={p99:.0}us max={max:.0}us",
        label = a.label,
        secs = send_time.as_secs_f64(),
        p50 = us(pct(&lat, 0.50)),
        p90 = us(pct(&lat, 0.90)),
        p99 = us(pct(&lat, 0.99)),
        max = us(lat.last().copied().unwrap_or_default()),
    );
}
