//! systemd integration (`Type=notify`): READY=1, RELOADING=1, STOPPING=1, STATUS= and the
//! watchdog keep-alive, through `sd-notify`. Every call is a no-op when `NOTIFY_SOCKET` is unset
//! (not started by systemd), and a failed notification is logged, never fatal.
//!
//! The watchdog task runs on the control runtime and sends WATCHDOG=1 only when every receive
//! task (one per worker and listen address, on the packet runtime) beat since the previous
//! round: each beats for every datagram it receives and on a tick of its own receive loop
//! (`worker.rs`, [`Heartbeat`]), so idle tasks keep the keep-alives coming without any probe
//! traffic. One task stuck in its handler (a busy loop, a deadlock) or ended by a panic, or a
//! wedged packet runtime, stops them even while the other workers carry traffic (a wedged
//! control runtime sends none at all): the round is withheld,
//! counted (`creditgate_watchdog_withheld_total`) and logged naming the silent tasks, and
//! systemd restarts the service after `WatchdogSec=`.
//!
//! An earlier design judged progress globally and, when idle, sent a CRLF probe to each listen
//! address; with several `SO_REUSEPORT` sockets per address the kernel hashed each probe to one
//! of them, so a wedged worker went unnoticed while others had traffic. The per-task heartbeat
//! replaces both.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::metrics::OpsCounters;
use super::worker::Heartbeat;

/// Heartbeat ticks per keep-alive round. Four leaves an idle task three spare ticks: it is only
/// reported when it missed a whole round, a scheduling delay of three quarters of a round (3/8
/// of `WatchdogSec=`, over 11 s for the shipped 30 s) that is a wedge, not jitter. Each tick is
/// one timer wake-up per receive task, every 3.75 s with the shipped unit: nothing.
const TICKS_PER_ROUND: u32 = 4;

/// While keep-alives stay withheld, the warning naming the silent tasks repeats at most this
/// often (the first withheld round always logs). systemd acts within one `WatchdogSec=`, so
/// repeats only matter when nothing restarts the daemon; a minute keeps that log readable.
const WITHHELD_LOG_EVERY: Duration = Duration::from_secs(60);

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

/// The systemd watchdog as the environment configures it (`WATCHDOG_USEC`, `WATCHDOG_PID`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watchdog {
    /// `WatchdogSec=`: systemd acts when no keep-alive arrived for this long.
    pub interval: Duration,
    /// How often a round runs (and, if every task beat, WATCHDOG=1 goes out): half the interval,
    /// as `sd_watchdog_enabled(3)` recommends, at least 50 ms.
    pub period: Duration,
    /// The heartbeat tick of every receive loop: [`TICKS_PER_ROUND`] per round.
    pub tick: Duration,
}

impl Watchdog {
    /// `None` when systemd asked for no watchdog (or asked another process).
    pub fn from_env() -> Option<Self> {
        sd_notify::watchdog_enabled().map(Self::new)
    }

    pub fn new(interval: Duration) -> Self {
        let period = (interval / 2).max(Duration::from_millis(50));
        Watchdog {
            interval,
            period,
            tick: period / TICKS_PER_ROUND,
        }
    }

    /// Starts the watchdog task over the receive tasks' `heartbeats`.
    pub fn spawn(
        self,
        heartbeats: Vec<Arc<Heartbeat>>,
        ops: Arc<OpsCounters>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        tracing::info!(
            interval_ms = self.interval.as_millis() as u64,
            tick_ms = self.tick.as_millis() as u64,
            receive_tasks = heartbeats.len(),
            "systemd watchdog enabled"
        );
        tokio::spawn(watchdog_loop(
            self.period,
            heartbeats,
            ops,
            shutdown,
            || send(&[NotifyState::Watchdog]),
        ))
    }
}

/// The heartbeat counts seen at the previous round.
struct Rounds {
    last: Vec<u64>,
}

impl Rounds {
    fn new(heartbeats: &[Arc<Heartbeat>]) -> Self {
        Rounds {
            last: heartbeats.iter().map(|h| h.beats()).collect(),
        }
    }

    /// The heartbeats that did not beat since the previous call (or [`Rounds::new`]).
    fn silent<'a>(&mut self, heartbeats: &'a [Arc<Heartbeat>]) -> Vec<&'a Heartbeat> {
        heartbeats
            .iter()
            .zip(self.last.iter_mut())
            .filter_map(|(h, last)| {
                let now = h.beats();
                let silent = now == *last;
                *last = now;
                silent.then_some(&**h)
            })
            .collect()
    }
}

/// Every `period`: `keep_alive()` if every heartbeat moved since the previous round; otherwise
/// count the withheld keep-alive and warn (rate-limited) naming the silent receive tasks.
async fn watchdog_loop(
    period: Duration,
    heartbeats: Vec<Arc<Heartbeat>>,
    ops: Arc<OpsCounters>,
    shutdown: CancellationToken,
    keep_alive: impl Fn(),
) {
    let mut rounds = Rounds::new(&heartbeats);
    // While withholding: how many rounds so far, and when the warning was last logged.
    let mut withholding: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let silent = rounds.silent(&heartbeats);
        if shutdown.is_cancelled() {
            // The receive tasks stop on shutdown; that is not a wedge.
            return;
        }
        let Some(first) = silent.first() else {
            keep_alive();
            if let Some((streak, _)) = withholding.take() {
                tracing::info!(
                    withheld = streak,
                    "every packet worker beats again: systemd keep-alives resume"
                );
            }
            continue;
        };
        ops.watchdog_withheld.inc();
        let now = Instant::now();
        let log = match &mut withholding {
            None => {
                withholding = Some((1, now));
                true
            }
            Some((streak, logged)) => {
                *streak += 1;
                let due = now.duration_since(*logged) >= WITHHELD_LOG_EVERY;
                if due {
                    *logged = now;
                }
                due
            }
        };
        if log {
            let all = silent
                .iter()
                .map(|h| format!("{}@{}", h.worker(), h.listen()))
                .collect::<Vec<_>>()
                .join(", ");
            tracing::warn!(
                worker = first.worker(),
                listen = %first.listen(),
                silent = silent.len(),
                receive_tasks = %all,
                "a packet worker stopped beating (stuck in its handler or dead): withholding the systemd keep-alive"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::daemon::{eventually, test_shared, worker};

    #[test]
    fn ticks_fit_in_a_round_and_rounds_in_the_interval() {
        let wd = Watchdog::new(Duration::from_secs(30));
        assert_eq!(wd.period, Duration::from_secs(15));
        assert_eq!(wd.tick, Duration::from_millis(3750));
        assert_eq!(
            Watchdog::new(Duration::ZERO).period,
            Duration::from_millis(50)
        );
    }

    #[test]
    fn a_round_names_the_heartbeats_that_did_not_move() {
        let addr: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let beats: Vec<_> = (0..3).map(|w| Arc::new(Heartbeat::new(w, addr))).collect();
        let mut rounds = Rounds::new(&beats);
        let workers = |r: &mut Rounds| -> Vec<usize> {
            r.silent(&beats).iter().map(|h| h.worker()).collect()
        };
        assert_eq!(workers(&mut rounds), [0, 1, 2]);
        beats.iter().for_each(|h| h.beat());
        assert!(workers(&mut rounds).is_empty());
        beats[0].beat();
        beats[2].beat();
        assert_eq!(workers(&mut rounds), [1]);
        // Beats from an earlier round do not count for the next one.
        beats[1].beat();
        assert_eq!(workers(&mut rounds), [0, 2]);
    }

    /// Two workers. Worker 1 is the real receive loop without a tick, kept beating by traffic.
    /// Worker 0 stands in for an idle receive loop that beats on its tick, but whose "handler"
    /// takes a lock the test can hold: a deadlock. Keep-alives flow while both beat, are
    /// withheld and counted while worker 0 hangs (worker 1 still handling traffic), and resume
    /// when it recovers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keep_alives_need_every_worker_to_beat() {
        const TICK: Duration = Duration::from_millis(10);
        let shutdown = CancellationToken::new();

        let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let shared = test_shared(&[addr]);
        let (busy_task, busy) = worker::spawn_group(
            &tokio::runtime::Handle::current(),
            vec![sock],
            1,
            Arc::clone(&shared),
            0,
            None,
            shutdown.clone(),
        )
        .pop()
        .unwrap();
        let traffic = tokio::spawn(async move {
            let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            loop {
                let _ = client.send_to(b"\r\n\r\n", addr).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });

        let stuck = Heartbeat::new(0, addr);
        let stuck = Arc::new(stuck);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let (beat, handler_lock) = (Arc::clone(&stuck), Arc::clone(&lock));
        let stand_in = tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                let _handling = handler_lock.lock().await;
                beat.beat();
            }
        });

        let ops = Arc::new(OpsCounters::default());
        let pings = Arc::new(AtomicUsize::new(0));
        let p = Arc::clone(&pings);
        let task = tokio::spawn(watchdog_loop(
            TICK * 4,
            vec![Arc::clone(&stuck), Arc::clone(&busy)],
            Arc::clone(&ops),
            shutdown.clone(),
            move || {
                p.fetch_add(1, Ordering::SeqCst);
            },
        ));
        let pings = || pings.load(Ordering::SeqCst);

        // Both beat: keep-alives.
        assert!(eventually(|| pings() >= 3).await, "no keep-alives");

        // Worker 0 hangs. From here on it cannot beat, so once a round was withheld after this
        // point, every later one is too.
        let hang = lock.lock().await;
        let withheld = ops.watchdog_withheld.get();
        assert!(
            eventually(|| ops.watchdog_withheld.get() > withheld).await,
            "no keep-alive withheld while worker 0 hangs"
        );
        let (sent, traffic_beats) = (pings(), busy.beats());
        assert!(eventually(|| ops.watchdog_withheld.get() >= withheld + 3).await);
        assert_eq!(pings(), sent, "a keep-alive while worker 0 hangs");
        assert!(
            busy.beats() > traffic_beats,
            "worker 1 kept handling traffic"
        );

        // It recovers: keep-alives resume.
        drop(hang);
        assert!(
            eventually(|| pings() >= sent + 2).await,
            "no keep-alives after recovery"
        );

        shutdown.cancel();
        task.await.unwrap();
        busy_task.await.unwrap();
        traffic.abort();
        stand_in.abort();
    }
}
