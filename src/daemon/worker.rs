//! Packet workers: each owns one socket per listen address, receives, calls the core, and sends
//! what the core decided. No lock on this path beyond the snapshot map's sharded reads.
//!
//! Every receive task (one per worker and listen address) also proves its own liveness to the
//! systemd watchdog (`systemd.rs`) through its [`Heartbeat`]: it beats for every datagram it
//! receives and, when the watchdog is on, on a tick of its own receive loop, so an idle task
//! keeps beating while one stuck in its handler (a busy loop, a deadlock) or ended by a panic
//! stops.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::ban;
use super::flood::{self, Verdict};
use super::net::SocketGroup;
use super::{events, Shared};
use crate::core::{self, Action, Event, Packet, PassKind};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// One receive task's proof of liveness: a count of beats, read by the systemd watchdog, and
/// which task it is (worker index and listen address) for the warning when it stops.
///
/// Aligned to 128 bytes (two cache lines, the adjacent-line prefetch unit) so that one task's
/// per-datagram store never contends with another's.
#[derive(Debug)]
#[repr(align(128))]
pub struct Heartbeat {
    worker: usize,
    listen: SocketAddr,
    beats: AtomicU64,
}

impl Heartbeat {
    pub fn new(worker: usize, listen: SocketAddr) -> Self {
        Heartbeat {
            worker,
            listen,
            beats: AtomicU64::new(0),
        }
    }

    /// One beat. Only the owning receive task writes the count, so a relaxed load and store do
    /// (no read-modify-write, no lock, no allocation): the reader only asks whether it changed.
    pub fn beat(&self) {
        let n = self.beats.load(Ordering::Relaxed);
        self.beats.store(n.wrapping_add(1), Ordering::Relaxed);
    }

    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// The worker index (`0..workers`).
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The listen address of the task's socket.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
}

/// Spawns one receive task per socket of worker `worker`'s group on `runtime` (the packet
/// runtime, whose reactor the sockets are registered with) and returns each task with its
/// [`Heartbeat`].
///
/// `source_pps_limit` is `[sip] source_pps_limit` (0 = off): each task gets its own
/// [`flood::Limiter`]. `tick` is the heartbeat tick when the systemd watchdog is on; `None`
/// leaves the receive loop without a timer (it then beats per datagram only, which nobody
/// reads).
pub fn spawn_group(
    runtime: &tokio::runtime::Handle,
    group: SocketGroup,
    worker: usize,
    shared: Arc<Shared>,
    source_pps_limit: u32,
    tick: Option<Duration>,
    shutdown: CancellationToken,
) -> Vec<(JoinHandle<()>, Arc<Heartbeat>)> {
    let group = Arc::new(group);
    (0..group.len())
        .map(|i| {
            let listen = group
                .get(i)
                .and_then(|s| s.local_addr().ok())
                .unwrap_or((Ipv4Addr::UNSPECIFIED, 0).into());
            let heartbeat = Arc::new(Heartbeat::new(worker, listen));
            let task = Task {
                index: i,
                group: Arc::clone(&group),
                shared: Arc::clone(&shared),
                limiter: flood::Limiter::new(source_pps_limit),
                heartbeat: Arc::clone(&heartbeat),
                tick,
            };
            (runtime.spawn(serve(task, shutdown.clone())), heartbeat)
        })
        .collect()
}

/// What one receive task owns.
struct Task {
    /// Its socket's index in `group` (the listen address index).
    index: usize,
    group: Arc<SocketGroup>,
    shared: Arc<Shared>,
    limiter: Option<flood::Limiter>,
    heartbeat: Arc<Heartbeat>,
    tick: Option<Duration>,
}

async fn serve(task: Task, shutdown: CancellationToken) {
    let Task {
        index,
        group,
        shared,
        mut limiter,
        heartbeat,
        tick,
    } = task;
    let Some(sock) = group.get(index).cloned() else {
        return;
    };
    let Ok(local) = sock.local_addr() else { return };
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Without a watchdog the tick branch is disabled and this timer is never polled or
    // registered: the loop costs what it did without one.
    let ticking = tick.is_some();
    let every = tick.unwrap_or(Duration::MAX);
    let ticker = tokio::time::sleep(every);
    tokio::pin!(ticker);
    // One shutdown future for the task's life, on a token of its own: polling it (every
    // datagram) takes that token's mutex, and a fresh `cancelled()` per datagram on the shared
    // token would take (and register with) the one mutex every receive task shares.
    let own = shutdown.child_token();
    let cancelled = own.cancelled();
    tokio::pin!(cancelled);
    loop {
        let received = tokio::select! {
            // In this order: a pending datagram wins over the tick (it beats anyway), so under
            // traffic the timer is only polled when the socket has drained.
            biased;
            () = &mut cancelled => return,
            r = sock.recv_from(&mut buf) => r,
            () = &mut ticker, if ticking => {
                heartbeat.beat();
                ticker.as_mut().reset(tokio::time::Instant::now() + every);
                continue;
            }
        };
        heartbeat.beat();
        let (len, source) = match received {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors surface here on some systems (ECONNREFUSED); keep serving.
                tracing::trace!(error = %e, "recv_from");
                continue;
            }
        };
        let start = Instant::now();
        // A banned source (`ban.rs`): one atomic load while no ban is active.
        if shared.bans.is_banned(source.ip(), start) {
            shared.bans.dropped.inc();
            continue;
        }
        // The wall clock the core dates and checks Route tokens with (SPEC 6); read here, never
        // in the core.
        let wall_secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(Verdict::Refuse { first_in_window }) =
            limiter.as_mut().map(|l| l.check(source.ip(), start))
        {
            if !shared.policy.load().is_trusted(source.ip()) {
                shared.counters.flood_dropped.inc();
                if first_in_window {
                    tracing::warn!(%source, "flood guard: source over [sip] source_pps_limit, dropping its datagrams for the rest of this second");
                }
                continue;
            }
        }
        let data = buf.get(..len).unwrap_or_default();
        let policy = shared.policy.load();
        let outcome = core::handle_live(
            Packet {
                data,
                source,
                local,
                now: start,
                wall_secs,
            },
            &shared.snapshot,
            &policy,
            shared.live.as_deref(),
        );
        events::record(
            &shared.counters,
            outcome.method,
            &outcome.event,
            source,
            start,
        );
        shared.live_counters.note(outcome.live);
        if let (Event::Passed(PassKind::Response), Action::Forward { to, bytes, .. }) =
            (&outcome.event, &outcome.action)
        {
            let banned = ban::observe_response(&shared.bans, &policy, *to, bytes, start);
            if let Some(b) = banned.filter(|_| shared.bans.log_allowed(start)) {
                tracing::warn!(
                    address = %b.address,
                    failures = b.failures,
                    ban_s = b.until.saturating_duration_since(b.since).as_secs(),
                    "banned: authentication failures from this source ([abuse] ban_after_auth_failures); lift with DELETE /bans/{{ip}}"
                );
            }
        }
        match outcome.action {
            Action::Forward { from, to, bytes } | Action::Reply { from, to, bytes } => {
                let out = if from == local {
                    &sock
                } else {
                    group
                        .iter()
                        .find(|s| s.local_addr().ok() == Some(from))
                        .unwrap_or(&sock)
                };
                let to = map_for_socket(out, to);
                if let Err(e) = out.send_to(&bytes, to).await {
                    shared.counters.send_errors.inc();
                    tracing::debug!(%to, error = %e, "send_to failed");
                }
            }
            Action::Drop => {}
        }
    }
}

/// An IPv4 destination sent from an IPv6 socket needs the mapped form.
fn map_for_socket(sock: &UdpSocket, to: SocketAddr) -> SocketAddr {
    match (sock.local_addr(), to.ip()) {
        (Ok(SocketAddr::V6(_)), IpAddr::V4(v4)) => {
            SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), to.port())
        }
        _ => to,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::daemon::eventually;

    /// The real receive loop beats on its own tick while idle, and once per datagram without
    /// a tick; each heartbeat names its worker and listen address.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receive_tasks_beat_on_their_tick_and_per_datagram() {
        let idle_sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let busy_sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (idle_addr, busy_addr) = (
            idle_sock.local_addr().unwrap(),
            busy_sock.local_addr().unwrap(),
        );
        let shared = super::super::test_shared(&[idle_addr, busy_addr]);
        let shutdown = CancellationToken::new();
        let spawn = |sock, worker, tick| {
            spawn_group(
                &tokio::runtime::Handle::current(),
                vec![sock],
                worker,
                Arc::clone(&shared),
                0,
                tick,
                shutdown.clone(),
            )
            .pop()
            .unwrap()
        };
        let (idle_task, idle) = spawn(idle_sock, 0, Some(Duration::from_millis(5)));
        let (busy_task, busy) = spawn(busy_sock, 1, None);
        assert_eq!((idle.worker(), idle.listen()), (0, idle_addr));
        assert_eq!((busy.worker(), busy.listen()), (1, busy_addr));

        // No datagram reaches the idle task: only its tick can move its heartbeat.
        assert!(eventually(|| idle.beats() >= 3).await, "no tick beats");

        // No tick: only datagrams can move this one (CRLF keep-alives, dropped by the core).
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..3 {
            client.send_to(b"\r\n\r\n", busy_addr).await.unwrap();
        }
        assert!(
            eventually(|| busy.beats() >= 3).await,
            "no per-datagram beats"
        );
        assert!(eventually(|| shared.counters.latency_count.get() >= 3).await);

        shutdown.cancel();
        idle_task.await.unwrap();
        busy_task.await.unwrap();
    }
}
