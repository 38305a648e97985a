//! systemd integration (`Type=notify`): READY=1, RELOADING=1, STOPPING=1, STATUS= and the
//! watchdog keep-alive, through `sd-notify`. Every call is a no-op when `NOTIFY_SOCKET` is unset
//! (not started by systemd), and a failed notification is logged, never fatal.
//!
//! The watchdog task runs on the same tokio runtime as the packet workers and sends WATCHDOG=1
//! only when the packet path made progress since the last keep-alive: either real traffic was
//! handled, or, on an idle daemon, a CRLF keep-alive datagram the task sends to its own listen
//! sockets was (it is counted as `creditgate_drops_total{reason="keepalive"}`). A wedged runtime
//! or a packet path that stopped handling datagrams therefore stops the keep-alives, and systemd
//! restarts the service after `WatchdogSec=`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::OpsCounters;
use super::Shared;

/// Poll step while waiting for a probe datagram to be counted.
const PROBE_POLL: Duration = Duration::from_millis(10);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// READY=1 with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// RELOADING=1 (with the MONOTONIC_USEC that `Type=notify-reload` expects).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(_) => send(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading the configuration"),
        ]),
    }
}

/// STOPPING=1.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Where the watchdog probe is sent for a bound listen address: unspecified addresses are
/// reached on loopback.
fn probe_target(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port())
        }
        IpAddr::V6(v6) if v6.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), bound.port())
        }
        _ => bound,
    }
}

/// Sends one CRLF keep-alive to every listen socket, each from a fresh ephemeral port so that
/// over time the kernel's `SO_REUSEPORT` hash spreads the probes across the workers.
async fn probe(targets: &[SocketAddr]) {
    for t in targets {
        let any: SocketAddr = if t.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        match tokio::net::UdpSocket::bind(any).await {
            Ok(s) => {
                if let Err(e) = s.send_to(b"\r\n\r\n", t).await {
                    tracing::debug!(to = %t, error = %e, "watchdog probe not sent");
                }
            }
            Err(e) => tracing::debug!(error = %e, "watchdog probe socket"),
        }
    }
}

/// Starts the watchdog task when systemd asked for one (`WATCHDOG_USEC`); keep-alives every half
/// interval, as `sd_watchdog_enabled(3)` recommends.
pub fn spawn_watchdog(
    shared: Arc<Shared>,
    ops: Arc<OpsCounters>,
    shutdown: CancellationToken,
) -> Option<JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(Duration::from_millis(50));
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(watchdog_loop(
        period,
        shared,
        ops,
        shutdown,
        || send(&[NotifyState::Watchdog]),
    )))
}

/// Every `period`: `keep_alive()` if the packet path handled a datagram since the last round
/// (real traffic, or the probe sent when idle); otherwise count and log a withheld keep-alive.
async fn watchdog_loop(
    period: Duration,
    shared: Arc<Shared>,
    ops: Arc<OpsCounters>,
    shutdown: CancellationToken,
    keep_alive: impl Fn(),
) {
    let targets: Vec<SocketAddr> = shared
        .policy
        .load()
        .listeners
        .iter()
        .map(|l| probe_target(l.bound))
        .collect();
    let counters = &shared.counters;
    let mut last = counters.latency_count.get();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let mut progressed = counters.latency_count.get() != last;
        if !progressed {
            probe(&targets).await;
            // A worker counts the probe within microseconds; allow a quarter period, which
            // keeps the next keep-alive well inside the watchdog interval.
            let deadline = tokio::time::Instant::now() + period / 4;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(PROBE_POLL).await;
                if counters.latency_count.get() != last {
                    progressed = true;
                    break;
                }
            }
        }
        last = counters.latency_count.get();
        if progressed {
            keep_alive();
        } else {
            ops.watchdog_withheld.inc();
            tracing::warn!("the packet workers handled nothing, not even the watchdog probe: withholding the systemd keep-alive");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use arc_swap::ArcSwap;

    use crate::config::Config;
    use crate::core::keys::Keys;
    use crate::core::{Listener, Policy};
    use crate::daemon::events::Counters;
    use crate::snapshot::Snapshot;

    fn shared_on(bound: SocketAddr) -> Arc<Shared> {
        let cfg = Config::from_toml_str(
            "[sip]\nupstream = [\"127.0.0.2:5080\"]\n",
            std::path::Path::new(""),
        )
        .unwrap();
        let listener = Listener {
            bound,
            advertised_host: bound.ip().to_string(),
            advertised_port: bound.port(),
        };
        let policy =
            Policy::new(&cfg, Keys::new(b"0123456789abcdef-test"), vec![listener]).unwrap();
        let started = Instant::now();
        Arc::new(Shared {
            snapshot: Arc::new(Snapshot::new(started)),
            policy: ArcSwap::from_pointee(policy),
            counters: Counters::default(),
            started,
        })
    }

    /// Polls `cond` every 10 ms for at most 10 s.
    async fn eventually(cond: impl Fn() -> bool) -> bool {
        for _ in 0..1000 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[test]
    fn probe_targets_use_loopback_for_wildcards() {
        let t = |s: &str| probe_target(s.parse().unwrap()).to_string();
        assert_eq!(t("0.0.0.0:5060"), "127.0.0.1:5060");
        assert_eq!(t("[::]:5060"), "[::1]:5060");
        assert_eq!(t("192.0.2.1:5060"), "192.0.2.1:5060");
    }

    /// No keep-alive while nothing handles the probes; keep-alives as soon as a "worker" does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_alives_follow_packet_progress() {
        let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let shared = shared_on(sock.local_addr().unwrap());
        let ops = Arc::new(OpsCounters::default());
        let pings = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let p = Arc::clone(&pings);
        let task = tokio::spawn(watchdog_loop(
            Duration::from_millis(40),
            Arc::clone(&shared),
            Arc::clone(&ops),
            shutdown.clone(),
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
        ));
        // Wedged packet path: the socket is never read.
        assert!(eventually(|| ops.watchdog_withheld.get() >= 2).await);
        assert_eq!(pings.load(Ordering::SeqCst), 0);

        // A worker that handles (counts) every datagram, like the real ones do.
        let worker_shared = Arc::clone(&shared);
        let worker_sock = Arc::clone(&sock);
        let worker = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while worker_sock.recv_from(&mut buf).await.is_ok() {
                worker_shared.counters.latency_count.inc();
            }
        });
        assert!(eventually(|| pings.load(Ordering::SeqCst) >= 2).await);
        shutdown.cancel();
        task.await.unwrap();
        worker.abort();
    }
}
