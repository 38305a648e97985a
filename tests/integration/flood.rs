//! Flood guard (`[sip] source_pps_limit`, `src/daemon/flood.rs`) end to end: one customer
//! floods far beyond its limit while a second, well-behaved customer keeps placing calls, and
//! every one of those calls is admitted and reaches the switch (issue 5, acceptance 4); the
//! flood's datagrams are counted as dropped by the limiter (`creditgate_flood_drops_total`).
//!
//! The noisy source is 127.0.0.1 on one socket (so one worker sees it all); the well-behaved
//! one is 127.0.0.3, identified by source address as account `good`. The flood is bounded
//! (20 bursts of 1000 INVITEs), and the well-behaved caller acts like a UA: it retransmits its
//! INVITE until the switch has it, because under a flood the kernel's socket buffer may drop a
//! datagram before creditgate ever sees it (docs/overload.md). No timing is asserted.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::harness::{
    config_with_admin, metric, scrape, text, unique, Caller, Daemon, Endpoint, Request, Switch,
    ACCOUNTS, WAIT,
};

/// The well-behaved customer's address (on loopback, distinct from the noisy 127.0.0.1).
const GOOD_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// Datagrams per second allowed per source in this test.
const LIMIT: u32 = 100;
const BURSTS: usize = 20;
const BURST: usize = 1000;
/// A UA's INVITE retransmissions before the test gives up on a call (RFC 3261 Timer A
/// doubles from 500 ms; a constant interval keeps the test short).
const ATTEMPTS: usize = 10;
const RETRANSMIT: Duration = Duration::from_millis(500);

#[test]
fn noisy_source_is_limited_and_others_keep_calling() {
    let switch = Switch::bind();
    let config = config_with_admin("60s", switch.addr());
    let config = config.replace(
        "workers = 2\n",
        &format!("workers = 2\nsource_pps_limit = {LIMIT}\n"),
    );
    let accounts = format!(
        "{ACCOUNTS}\n[[account]]\nid = \"good\"\nbalance = \"50\"\ndebit_limit = \"0\"\nips = [\"{GOOD_IP}\"]\n"
    );
    let mut daemon = Daemon::start(&config, &accounts);
    let admin = daemon.admin_addr();
    let to = daemon.sip_addr();
    let noisy = Caller::bind();
    let good = Endpoint::bind(GOOD_IP);
    // alice has credit: below the limit her INVITEs would all be admitted and forwarded.
    let flood = Request::invite(noisy.addr(), to, &format!("flood-{}", unique()), "alice").build();

    let started = std::time::Instant::now();
    for round in 0..BURSTS {
        for _ in 0..BURST {
            noisy.send(&flood, to);
        }
        let call_id = format!("good-{round}-{}", unique());
        let invite = Request::invite(good.addr(), to, &call_id, "good").build();
        let needle = format!("Call-ID: {call_id}\r\n");
        let forwarded = (0..ATTEMPTS).any(|_| {
            good.send(&invite, to);
            switch
                .recv_matching(RETRANSMIT, |m| text(m).contains(&needle))
                .is_some()
        });
        if !forwarded {
            daemon.fail(&format!(
                "call {round} of the well-behaved source never reached the switch during the flood"
            ));
        }
        // Admitted, not refused: nothing came back to the caller but possibly nothing at all.
        if let Some((m, _)) = good.recv_timeout(Duration::from_millis(1)) {
            daemon.fail(&format!(
                "the well-behaved source got an answer:\n{}",
                text(&m)
            ));
        }
    }
    assert!(
        daemon.wait_for_log("flood guard: source over", 1, WAIT),
        "the noisy source was never limited"
    );
    // Counted: everything of the flood that creditgate read, less what the limiter may pass
    // (LIMIT per second of the test, plus a bucket's worth), is counted as dropped by the
    // limiter. What the kernel dropped at the daemon's socket before creditgate read it (a
    // loaded machine drains the socket more slowly) is read from /proc/net/udp, so the bound
    // holds however fast the daemon ran. Polled until the queued datagrams are read (bounded).
    let sent = (BURSTS * BURST) as f64;
    let allowed = f64::from(LIMIT) * (started.elapsed().as_secs_f64() + 2.0);
    let deadline = std::time::Instant::now() + WAIT;
    let (dropped, kernel_dropped) = loop {
        let dropped = metric(&scrape(admin), "creditgate_flood_drops_total", &[]);
        let kernel_dropped = socket_drops(to) as f64;
        if dropped + kernel_dropped + allowed >= sent || std::time::Instant::now() >= deadline {
            break (dropped, kernel_dropped);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        dropped + kernel_dropped + allowed >= sent && dropped <= sent,
        "{dropped} of {sent} flood datagrams dropped by the limiter, {kernel_dropped} by the \
         kernel, at most {allowed} let through"
    );
    assert!(
        !daemon.log().contains(&format!("source={GOOD_IP}")),
        "the well-behaved source was limited"
    );
    assert!(daemon.is_running(), "the daemon died under the flood");
}

/// Datagrams the kernel dropped at the sockets bound to `addr` (every `SO_REUSEPORT` worker
/// socket of the daemon shares it): the `drops` column of /proc/net/udp, where the kernel prints
/// an IPv4 address as its in-memory u32 in hex.
fn socket_drops(addr: std::net::SocketAddr) -> u64 {
    let IpAddr::V4(ip) = addr.ip() else {
        return 0;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        addr.port()
    );
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&want.as_str()))
                .then(|| f.get(12)?.parse::<u64>().ok())
                .flatten()
        })
        .sum()
}
