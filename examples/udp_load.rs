//! A small UDP load generator for benchmarks (`scripts/bench-redis.sh`): sends new-call INVITEs
//! to a creditgate at a fixed rate, plays the switch on another address, and reports the
//! admission latency (INVITE leaving the caller → INVITE arriving at the switch, or → creditgate's
//! refusal arriving back at the caller) as p50/p90/p99/max.
//!
//! Two measures, both reported:
//! * `p50=... max=...`: by the kernel's own timestamps at both ends: when the INVITE left the
//!   caller's socket (`SO_TIMESTAMPING`, software TX timestamp, read back from the socket's
//!   error queue) and when the answer reached the switch's or the caller's socket
//!   (`SO_TIMESTAMPNS`). This is the daemon's latency alone: the time the request spent between
//!   the two sockets, however late this tool's own threads got a CPU.
//! * `user: p50=... max=...`: this tool's clock before `send_to` to the moment its receiving
//!   thread read the answer. On a machine whose cores are busy (a refresh, redis-server) this adds
//!   the tool's own waits for a CPU, which are not the daemon's doing (BENCHMARKS.md).
//!
//! ```text
//! cargo run --release --example udp_load -- --target 127.0.0.1:5060 --switch 127.0.0.2:5080 \
//!     --rate 2000 --duration 5 --accounts 1000000 [--prefix acct-] [--label outside] \
//!     [--refresh 127.0.0.1:9060] [--dump FILE]
//! ```
//!
//! `--refresh ADMIN_ADDR` measures latency *during a refresh*: as the first INVITE goes out, it
//! asks the daemon's admin API for a full refresh (`POST /refresh`, which answers when the
//! refresh is done) and reports only the requests sent between that request and its answer,
//! with the refresh's duration. Without it every request counts.
//!
//! Bounded by design: it sends `rate * duration` requests and waits at most one second for the
//! last answers. Loopback only. Not a test: it asserts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, TimestampingFlag,
};
use nix::sys::time::TimeSpec;

/// Per request, when it was sent: this tool's clock before `send_to`, the wall clock then, and
/// the kernel's TX timestamp (wall clock) when it could be read.
#[derive(Clone, Copy)]
struct Departure {
    user: Instant,
    wall: SystemTime,
    kernel: Option<SystemTime>,
}

/// Per request, its answer: the kernel's RX timestamp (wall clock), when this tool read it, and
/// the outcome (0 = admitted, else the refusal status).
#[derive(Clone, Copy)]
struct Arrival {
    kernel: Option<SystemTime>,
    user: Instant,
    code: u16,
}

type Slots<T> = Arc<Vec<Mutex<Option<T>>>>;

struct Args {
    target: SocketAddr,
    switch: SocketAddr,
    rate: u64,
    duration: f64,
    accounts: u64,
    prefix: String,
    label: String,
    /// `--refresh ADDR`: the admin API to ask for a refresh at the start; only requests sent
    /// while it runs are reported.
    refresh: Option<SocketAddr>,
    /// `--dump FILE`: one line per request (send time since start, kernel and user latency in
    /// µs, outcome), for finding when the slow ones happened.
    dump: Option<String>,
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
        refresh: None,
        dump: None,
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
            "--refresh" => a.refresh = Some(v.parse().expect("--refresh ADMIN_ADDR")),
            "--dump" => a.dump = Some(v),
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

fn wall(ts: &TimeSpec) -> Option<SystemTime> {
    let d = Duration::new(u64::try_from(ts.tv_sec()).ok()?, ts.tv_nsec() as u32);
    (!d.is_zero()).then(|| SystemTime::UNIX_EPOCH + d)
}

/// Receives one datagram into `buf` (or, with `MSG_ERRQUEUE`, one message of the socket's error
/// queue): its length and the kernel's timestamp, if it gave one.
fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
    flags: MsgFlags,
) -> Option<(usize, Option<SystemTime>)> {
    // Room for every control message either queue carries here: SCM_TIMESTAMPNS, SCM_TIMESTAMPING
    // and, on the error queue, IP_RECVERR (with its offender address); too small a buffer
    // truncates the lot (MSG_CTRUNC).
    let mut cmsg = nix::cmsg_space!(TimeSpec, [TimeSpec; 3], [u8; 64]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(sock.as_fd().as_raw_fd(), &mut iov, Some(&mut cmsg), flags).ok()?;
    let stamp = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => wall(&ts),
            ControlMessageOwned::ScmTimestampsns(ts) => wall(&ts.system),
            _ => None,
        })
    });
    Some((msg.bytes, stamp))
}

/// The TX timestamp of the datagram just sent on `sock`. On loopback the kernel takes it inside
/// `send_to` (`loopback_xmit`), so it is in the error queue when `send_to` returns.
fn tx_stamp(sock: &UdpSocket) -> Option<SystemTime> {
    let mut buf = [0u8; 64];
    let mut stamp = None;
    // Drain: normally exactly one; a leftover from an earlier send would be older.
    while let Some((_, s)) = recv_stamped(
        sock,
        &mut buf,
        MsgFlags::MSG_ERRQUEUE | MsgFlags::MSG_DONTWAIT,
    ) {
        stamp = s.or(stamp);
    }
    stamp
}

/// Receives on `sock` until `stop`, recording the arrival of each request number's answer.
fn receiver(
    sock: UdpSocket,
    done: Slots<Arrival>,
    stop: Arc<AtomicBool>,
    is_switch: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        setsockopt(&sock, sockopt::ReceiveTimestampns, &true).expect("SO_TIMESTAMPNS");
        let mut buf = vec![0u8; 65535];
        while !stop.load(Ordering::Relaxed) {
            let Some((n, kernel)) = recv_stamped(&sock, &mut buf, MsgFlags::empty()) else {
                continue;
            };
            let user = Instant::now();
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
            if let Some(slot) = done.get(i) {
                let mut g = slot.lock().unwrap();
                if g.is_none() {
                    *g = Some(Arrival { kernel, user, code });
                }
            }
        }
    })
}

/// What `POST /refresh` did: when it was asked, when the answer came, and its status line.
struct RefreshRun {
    asked: Instant,
    answered: Instant,
    status: String,
    took_ms: String,
}

/// Asks `admin` for a full refresh on a thread of its own; the handle gives its timing.
fn refresh_in_background(admin: SocketAddr) -> std::thread::JoinHandle<RefreshRun> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(admin).expect("connect to the admin API");
    conn.set_nodelay(true).unwrap();
    std::thread::spawn(move || {
        let asked = Instant::now();
        conn.write_all(
            b"POST /refresh HTTP/1.1\r\nHost: creditgate\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .expect("send POST /refresh");
        let mut first = [0u8; 1];
        conn.read_exact(&mut first)
            .expect("the answer to POST /refresh");
        let answered = Instant::now();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        let text = String::from_utf8_lossy(&[&first[..], &rest].concat()).into_owned();
        let status = text.lines().next().unwrap_or_default().to_owned();
        let took_ms = text
            .split("\"took_ms\":")
            .nth(1)
            .map(|t| {
                t.chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect()
            })
            .unwrap_or_default();
        RefreshRun {
            asked,
            answered,
            status,
            took_ms,
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
    setsockopt(
        &caller,
        sockopt::Timestamping,
        &(TimestampingFlag::SOF_TIMESTAMPING_TX_SOFTWARE
            | TimestampingFlag::SOF_TIMESTAMPING_SOFTWARE
            | TimestampingFlag::SOF_TIMESTAMPING_OPT_TSONLY),
    )
    .expect("SO_TIMESTAMPING");
    let sent: Slots<Departure> = Arc::new((0..total).map(|_| Mutex::new(None)).collect());
    let done: Slots<Arrival> = Arc::new((0..total).map(|_| Mutex::new(None)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let r1 = receiver(
        caller.try_clone().unwrap(),
        done.clone(),
        stop.clone(),
        false,
    );
    let r2 = receiver(switch, done.clone(), stop.clone(), true);

    // Spread the account ids over the whole set (a multiplicative hash of the request number).
    let pick = |n: u64| (n.wrapping_mul(2_654_435_761)) % a.accounts;
    let start = Instant::now();
    let refresh = a.refresh.map(refresh_in_background);
    let interval = Duration::from_secs_f64(1.0 / a.rate as f64);
    for n in 0..total {
        let due = start + interval * n as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let user = format!("{}{}", a.prefix, pick(n as u64));
        let msg = invite(local, a.target, n as u64, &user);
        let (user, wall) = (Instant::now(), SystemTime::now());
        let _ = caller.send_to(&msg, a.target);
        let kernel = tx_stamp(&caller);
        *sent[n].lock().unwrap() = Some(Departure { user, wall, kernel });
    }
    let send_time = start.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    r1.join().unwrap();
    r2.join().unwrap();
    let refresh = refresh.map(|h| h.join().unwrap());

    // With --refresh, only the requests sent while the refresh ran count.
    let window = refresh.as_ref().map(|r| (r.asked, r.answered));
    let mut lat = Vec::with_capacity(total);
    let mut user = Vec::with_capacity(total);
    let (mut admitted, mut refused, mut lost, mut no_tx_stamp) = (0u64, 0u64, 0u64, 0u64);
    let mut n_counted = 0usize;
    let mut dump = Vec::new();
    for (s, d) in sent.iter().zip(done.iter()) {
        let Some(dep) = *s.lock().unwrap() else {
            continue;
        };
        if window.is_some_and(|(from, to)| dep.user < from || dep.user > to) {
            continue;
        }
        n_counted += 1;
        let Some(arr) = *d.lock().unwrap() else {
            lost += 1;
            continue;
        };
        if arr.code == 0 {
            admitted += 1;
        } else {
            refused += 1;
        }
        let by_user = arr.user - dep.user;
        no_tx_stamp += u64::from(dep.kernel.is_none());
        // Without a kernel timestamp (not seen on Linux) the wall clock around send_to stands in.
        let from = dep.kernel.unwrap_or(dep.wall);
        let by_kernel = arr
            .kernel
            .and_then(|t| t.duration_since(from).ok())
            .unwrap_or(by_user);
        lat.push(by_kernel);
        user.push(by_user);
        dump.push((dep.user - start, by_kernel, by_user, arr.code));
    }
    if let Some(path) = &a.dump {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("--dump FILE"));
        // CLOCK_MONOTONIC at the start, to line the dump up with `perf record -k CLOCK_MONOTONIC`.
        let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
        let mono_start = Duration::new(mono.tv_sec() as u64, mono.tv_nsec() as u32)
            .saturating_sub(start.elapsed());
        writeln!(f, "# start_monotonic_us {}", mono_start.as_micros()).unwrap();
        for (at, k, u, code) in dump {
            writeln!(
                f,
                "{} {} {} {code}",
                at.as_micros(),
                k.as_micros(),
                u.as_micros()
            )
            .unwrap();
        }
    }
    lat.sort_unstable();
    user.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let stats = |v: &[Duration]| {
        format!(
            "p50={:.0}us p90={:.0}us p99={:.0}us max={:.0}us",
            us(pct(v, 0.50)),
            us(pct(v, 0.90)),
            us(pct(v, 0.99)),
            us(v.last().copied().unwrap_or_default()),
        )
    };
    let scope = match &refresh {
        None => format!("sent={total} in {:.2}s", send_time.as_secs_f64()),
        Some(r) => {
            let ran = r.answered - r.asked;
            let cut = if r.answered > start + send_time {
                " (still running when sending ended: longer than --duration)"
            } else {
                ""
            };
            format!(
                "refresh {:.0} ms ({}, took_ms {}){cut}: sent during it={n_counted}",
                ran.as_secs_f64() * 1e3,
                r.status.trim(),
                r.took_ms,
            )
        }
    };
    let missing = if no_tx_stamp > 0 {
        format!(" (no TX timestamp for {no_tx_stamp})")
    } else {
        String::new()
    };
    println!(
        "{label}: {scope} admitted={admitted} refused={refused} lost={lost} \
         {kernel}{missing} | user: {user}",
        label = a.label,
        kernel = stats(&lat),
        user = stats(&user),
    );
}
