//! The thin tokio shell around the core: sockets, workers, the refresh task, signals, logging.
//!
//! `main` loads the configuration and calls [`run`]; everything the shell needs is built here
//! and passed down explicitly (STYLE rule 4): bound sockets, the snapshot, the policy handle
//! and a shutdown token.

pub mod admin;
pub mod ban;
pub mod calls;
pub mod events;
pub mod flood;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod preflight;
pub mod refresh;
pub mod systemd;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::Policy;
use crate::snapshot::Snapshot;

/// Errors that stop the daemon before it serves.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another creditgate holds this listen address (one daemon per SIP address).
    #[error(
        "cannot bind {addr}: another creditgate is listening there (one daemon per SIP address)"
    )]
    Locked { addr: std::net::SocketAddr },
    /// A socket of another process holds the address (or the wildcard address of its port).
    #[error("cannot bind {addr}: the address is in use by another socket")]
    InUse {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// A listen address could not be bound (in use, no permission for ports < 1024).
    #[error("cannot bind {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] crate::core::PolicyError),
}

/// Shared state handed to every task.
pub struct Shared {
    pub snapshot: Arc<Snapshot>,
    pub policy: ArcSwap<Policy>,
    pub counters: events::Counters,
    pub started: Instant,
    /// Bans after authentication failures (`[abuse]`, `ban.rs`).
    pub bans: ban::Bans,
    /// The live-credit state (SPEC 7: call table, ledgers), when `[live] track_calls` is on.
    /// Fixed at start (a SIGHUP that turns tracking on or off needs a restart).
    pub live: Option<Arc<crate::live::calls::LiveState>>,
    /// Counters of live credit (calls answered and ended, live refusals, low-credit events).
    pub live_counters: Arc<live::LiveCounters>,
}

/// Name of the packet runtime's threads (`top -H`, `ps -L`; at most 15 bytes on Linux).
pub const PACKET_THREAD_NAME: &str = "creditgate-sip";
/// Name of the control runtime's threads.
pub const CONTROL_THREAD_NAME: &str = "creditgate-ctl";
/// Threads of the control runtime: one can serve an admin request while the other sends a
/// watchdog keep-alive or schedules a refresh; none of it is busy.
const CONTROL_THREADS: usize = 2;

/// The runtime of the packet workers: `workers` threads named [`PACKET_THREAD_NAME`], under
/// `SCHED_FIFO` at `realtime_priority` when that is not 0 ([`crate::sched::raise_to_realtime`];
/// refused, they stay at normal priority with a warning). Only the receive tasks run on it: the
/// admin API, signals, the refresh schedule and the watchdog run on the [`control_runtime`] at
/// normal priority, and the refresh work itself on the credit source's `SCHED_IDLE` threads.
pub fn packet_runtime(
    workers: usize,
    realtime_priority: u8,
) -> std::io::Result<tokio::runtime::Runtime> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // One log line per outcome, not one per thread.
    let told_ok = Arc::new(AtomicBool::new(false));
    let told_err = Arc::new(AtomicBool::new(false));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(PACKET_THREAD_NAME)
        .on_thread_start(move || {
            if realtime_priority == 0 {
                return;
            }
            match crate::sched::raise_to_realtime(realtime_priority) {
                Ok(()) => {
                    if !told_ok.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            priority = realtime_priority,
                            "packet worker threads run under SCHED_FIFO"
                        );
                    }
                }
                Err(error) => {
                    if !told_err.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            priority = realtime_priority,
                            %error,
                            "sip.realtime_priority: cannot put the packet worker threads under \
                             SCHED_FIFO (needs CAP_SYS_NICE or LimitRTPRIO); they run at normal \
                             priority"
                        );
                    }
                }
            }
        })
        .enable_all()
        .build()
}

/// The runtime [`run`] is driven on: the admin API, signals, the refresh schedule and the
/// watchdog, at normal priority.
pub fn control_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CONTROL_THREADS)
        .thread_name(CONTROL_THREAD_NAME)
        .enable_all()
        .build()
}

/// Runs the daemon until SIGTERM/SIGINT. Must be called inside a tokio runtime (the
/// [`control_runtime`]); `packet` is the [`packet_runtime`], which gets the SIP sockets and
/// their receive tasks.
pub async fn run(
    cfg: Config,
    prepared: preflight::Prepared,
    config_path: PathBuf,
    packet: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let workers = net::worker_count(cfg.sip.workers);
    // The locks keep other creditgate processes off these addresses until `run` returns.
    let (sockets, _address_locks) = {
        // The sockets register with the reactor of the runtime they are made in.
        let _packet = packet.enter();
        net::bind_all(&cfg, workers).context("binding the SIP sockets")?
    };
    let listeners = net::listeners(&cfg, &sockets);
    for l in &listeners {
        tracing::info!(bound = %l.bound, advertised = %format!("{}:{}", l.advertised_host, l.advertised_port), workers, "listening");
    }
    let live = live_not_enforced(&cfg.live);
    if !live.is_empty() {
        tracing::warn!(
            keys = %live.join(","),
            "[live] shared state is accepted but not implemented yet: each instance keeps its \
             own live state (docs/contract.md section 9)"
        );
    }
    if prepared.key_source == preflight::KeySource::Random {
        tracing::warn!(
            "no sip.secret or sip.secret_file: using a random key for this run; Record-Route tokens of calls in progress will not survive a restart"
        );
    }
    let policy = Policy::new(&cfg, prepared.keys, listeners)?;
    let shared = Arc::new(Shared {
        snapshot: Arc::new(Snapshot::new(started)),
        policy: ArcSwap::from_pointee(policy),
        counters: events::Counters::default(),
        started,
        bans: ban::Bans::new(ban::BanSettings::from(&cfg.abuse)),
        live: live_state(&cfg.live, started),
        live_counters: Arc::default(),
    });
    shared
        .counters
        .refusal_lines
        .set_rate(cfg.log.refusal_lines_per_second);
    let shutdown = CancellationToken::new();
    let refresher = refresh::Refresher::new(&cfg, Arc::clone(&shared));
    // Started before the first load: updates arriving during it apply at once, and the load does
    // not overwrite them with what it read before (see `snapshot`).
    let push_task = refresher.spawn_push_updates(shutdown.clone());
    // The first snapshot attempt completes before packets are served.
    refresher.refresh_once(false).await;

    let ops = Arc::new(metrics::OpsCounters::default());
    let admin_task = match admin::start(
        &cfg.admin,
        Arc::clone(&shared),
        refresher.clone(),
        Arc::clone(&ops),
        shutdown.clone(),
    )
    .await?
    {
        Some((addr, task)) => {
            tracing::info!(%addr, "admin API listening");
            Some(task)
        }
        None => None,
    };

    // Read before the workers start: their heartbeat tick derives from the watchdog interval.
    let watchdog = systemd::Watchdog::from_env();
    let mut tasks = Vec::new();
    let mut heartbeats = Vec::new();
    for (w, group) in sockets.into_iter().enumerate() {
        for (task, heartbeat) in worker::spawn_group(
            &packet,
            group,
            w,
            Arc::clone(&shared),
            cfg.sip.source_pps_limit,
            watchdog.map(|wd| wd.tick),
            shutdown.clone(),
        ) {
            tasks.push(task);
            heartbeats.push(heartbeat);
        }
    }
    let refresh_task = tokio::spawn(refresher.clone().run(shutdown.clone()));
    // Low-credit events (SPEC 7) go to Redis pub/sub through a bounded queue; the publisher
    // connects on its own, so the daemon starts while Redis is down.
    let (low_tx, publish_task) = match (
        cfg.live.low_credit_threshold.is_some() && shared.live.is_some(),
        cfg.credit.source,
    ) {
        (true, crate::config::SourceKind::Redis) => {
            let (tx, rx) = live::low_credit_channel(Arc::clone(&shared.live_counters));
            let task = live::spawn_publisher(
                &cfg.credit.redis_url,
                &cfg.credit.key_prefix,
                rx,
                Arc::clone(&shared.live_counters),
                shutdown.clone(),
            )
            .context("live.low_credit_threshold: cannot publish events to credit.redis_url")?;
            (Some(tx), Some(task))
        }
        _ => (None, None),
    };
    let tick_counters = Arc::clone(&shared.live_counters);
    let calls_task = calls::spawn_timer(
        Arc::clone(&shared),
        cfg.live.low_credit_threshold,
        move |st| tick_counters.tick(st),
        move |ev, wall| {
            tracing::info!(account = %ev.account, live_available = %ev.live_available, threshold = %ev.threshold, calls = ev.calls_in_progress, "low credit");
            if let Some(tx) = &low_tx {
                tx.send(ev, wall);
            }
        },
        shutdown.clone(),
    );
    tracing::info!(config = %config_path.display(), accounts = shared.snapshot.len(), "creditgate running");

    let watchdog = watchdog.map(|wd| wd.spawn(heartbeats, Arc::clone(&ops), shutdown.clone()));
    systemd::ready(&ready_status(&shared));
    let mut reloader = Reloader {
        path: config_path,
        running: cfg,
        shared: Arc::clone(&shared),
        refresher: refresher.clone(),
        ops,
    };

    wait_for_signals(&refresher, &shutdown, &mut reloader).await;
    systemd::stopping();
    shutdown.cancel();
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    if let Some(t) = watchdog {
        let _ = t.await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let _ = refresh_task.await;
    if let Some(t) = calls_task {
        let _ = t.await;
    }
    if let Some(t) = publish_task {
        let _ = t.await;
    }
    if let Some(t) = push_task {
        let _ = t.await;
    }
    tracing::info!("creditgate stopped");
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signals(
    _refresher: &refresh::Refresher,
    shutdown: &CancellationToken,
    reloader: &mut Reloader,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = hup.recv() => {
                reloader.reload();
            }
            _ = shutdown.cancelled() => break,
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(
    _refresher: &refresh::Refresher,
    _shutdown: &CancellationToken,
    _reloader: &mut Reloader,
) {
    let _ = tokio::signal::ctrl_c().await;
}

/// The STATUS= line sent with READY=1.
fn ready_status(shared: &Shared) -> String {
    if shared.snapshot.is_loaded() {
        format!("serving; {} accounts", shared.snapshot.len())
    } else {
        "serving; no credit snapshot loaded yet".to_owned()
    }
}

/// SIGHUP: re-reads the configuration file and swaps in a new [`Policy`] built on the sockets
/// and keys already in use; then forces a snapshot refresh (which also confirms a refresh the
/// shrink guard held back). An invalid file is refused, key by key, and the running
/// configuration stays. Settings bound at start (sockets, workers, keys, the credit source, the
/// admin listener, logging) are reported as needing a restart and keep their running values.
pub struct Reloader {
    path: PathBuf,
    /// The configuration the daemon started with: what the restart-only settings still are.
    running: Config,
    shared: Arc<Shared>,
    refresher: refresh::Refresher,
    ops: Arc<metrics::OpsCounters>,
}

impl Reloader {
    pub fn reload(&mut self) {
        systemd::reloading();
        tracing::info!(config = %self.path.display(), "SIGHUP: reloading the configuration and refreshing the snapshot");
        match Config::load(&self.path) {
            Err(e) => {
                self.ops.reloads_refused.inc();
                if e.problems().is_empty() {
                    tracing::error!(error = %e, "SIGHUP: new configuration refused; the running configuration stays");
                }
                for p in e.problems() {
                    tracing::error!(key = %p.key, problem = %p.message, "SIGHUP: new configuration refused; the running configuration stays");
                }
            }
            Ok(new) => {
                let old = self.shared.policy.load();
                match Policy::new(&new, old.keys.clone(), old.listeners.clone()) {
                    Ok(policy) => {
                        self.shared.policy.store(Arc::new(policy));
                        self.shared
                            .bans
                            .configure(ban::BanSettings::from(&new.abuse));
                        self.ops.reloads_applied.inc();
                        for key in restart_needed(&self.running, &new) {
                            tracing::warn!(key, "SIGHUP: this setting changed but needs a restart; the running value stays");
                        }
                        tracing::info!("SIGHUP: configuration reloaded");
                    }
                    Err(e) => {
                        self.ops.reloads_refused.inc();
                        tracing::error!(error = %e, "SIGHUP: new configuration refused; the running configuration stays");
                    }
                }
            }
        }
        self.refresher.trigger(true);
        systemd::ready(&ready_status(&self.shared));
    }
}

/// The live state (SPEC 7) when `[live]` turns call tracking on: `track_calls`, or an option
/// that needs it (a reserve, credit-scaled channels, a low-credit threshold).
pub fn live_state(
    live: &crate::config::LiveConfig,
    epoch: Instant,
) -> Option<Arc<crate::live::calls::LiveState>> {
    live.tracking().then(|| {
        Arc::new(crate::live::calls::LiveState::new(
            crate::live::calls::LiveConfig {
                reserve_secs: u32::try_from(live.reserve.as_secs_f64().ceil() as u64)
                    .unwrap_or(u32::MAX),
                credit_scaled_channels: live.credit_scaled_channels,
                max_tracked_calls: live.max_tracked_calls,
                ring_timeout: live.ring_timeout,
                call_expiry: live.call_expiry,
            },
            epoch,
        ))
    })
}

/// The `[live]` keys of SPEC section 9 (several instances sharing live state), set to
/// something other than their default. Nothing implements them yet, so the daemon warns at
/// start rather than let an operator believe limits are shared. Remove a key here once it is
/// enforced.
pub fn live_not_enforced(live: &crate::config::LiveConfig) -> Vec<&'static str> {
    let d = crate::config::LiveConfig::default();
    let checks: [(&'static str, bool); 2] = [
        ("live.shared", live.shared != d.shared),
        ("live.lease_ttl", live.lease_ttl != d.lease_ttl),
    ];
    checks.into_iter().filter(|c| c.1).map(|c| c.0).collect()
}

/// The settings that differ between `running` and `new` but only take effect on a restart.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    let (r, n) = (running, new);
    let checks: [(&'static str, bool); 18] = [
        ("sip.listen", r.sip.listen != n.sip.listen),
        ("sip.advertise", r.sip.advertise != n.sip.advertise),
        ("sip.workers", r.sip.workers != n.sip.workers),
        ("sip.recv_buffer", r.sip.recv_buffer != n.sip.recv_buffer),
        ("sip.secret", r.sip.secret != n.sip.secret),
        ("sip.secret_file", r.sip.secret_file != n.sip.secret_file),
        (
            "sip.source_pps_limit",
            r.sip.source_pps_limit != n.sip.source_pps_limit,
        ),
        (
            "sip.realtime_priority",
            r.sip.realtime_priority != n.sip.realtime_priority,
        ),
        ("credit.source", r.credit.source != n.credit.source),
        ("credit.file", r.credit.file != n.credit.file),
        ("credit.redis_url", r.credit.redis_url != n.credit.redis_url),
        (
            "credit.key_prefix",
            r.credit.key_prefix != n.credit.key_prefix,
        ),
        (
            "credit.refresh_interval",
            r.credit.refresh_interval != n.credit.refresh_interval,
        ),
        (
            "credit.max_shrink",
            r.credit.max_shrink != n.credit.max_shrink,
        ),
        ("live", r.live != n.live),
        ("admin.listen", r.admin.listen != n.admin.listen),
        ("admin.token_file", r.admin.token_file != n.admin.token_file),
        ("log", r.log != n.log),
    ];
    checks.into_iter().filter(|c| c.1).map(|c| c.0).collect()
}

/// Polls `cond` every 5 ms for at most 10 s (unit tests of the shell: a bounded wait, not a
/// timing assertion).
#[cfg(test)]
pub(crate) async fn eventually(cond: impl Fn() -> bool) -> bool {
    for _ in 0..2000 {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    false
}

/// A [`Shared`] for unit tests of the shell: a minimal valid config, an empty snapshot, and a
/// policy whose listeners are `bound`.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) fn test_shared(bound: &[std::net::SocketAddr]) -> Arc<Shared> {
    let cfg = Config::from_toml_str(
        "[sip]\nupstream = [\"127.0.0.2:5080\"]\n",
        std::path::Path::new(""),
    )
    .unwrap();
    let listeners = bound
        .iter()
        .map(|b| crate::core::Listener {
            bound: *b,
            advertised_host: b.ip().to_string(),
            advertised_port: b.port(),
        })
        .collect();
    let policy = Policy::new(
        &cfg,
        crate::core::keys::Keys::new(b"0123456789abcdef-test"),
        listeners,
    )
    .unwrap();
    let started = Instant::now();
    Arc::new(Shared {
        snapshot: Arc::new(Snapshot::new(started)),
        policy: ArcSwap::from_pointee(policy),
        counters: events::Counters::default(),
        started,
        bans: ban::Bans::new(ban::BanSettings::from(&cfg.abuse)),
        live: None,
        live_counters: Arc::default(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod reload_tests {
    use super::*;

    #[test]
    fn restart_only_changes_are_named() {
        let base =
            "[sip]\nlisten = [\"127.0.0.1:5060\"]\nupstream = [\"127.0.0.2:5080\"]\nworkers = 2\n";
        let load = |extra: &str| {
            Config::from_toml_str(&format!("{base}{extra}"), std::path::Path::new("")).unwrap()
        };
        let running = load("");
        assert!(restart_needed(&running, &running).is_empty());
        // Live-applicable settings are not reported.
        let live = load("[reply]\ninsufficient_credit = { code = 403, reason = \"Blocked\" }\n[credit]\nenforce = false\n");
        assert!(restart_needed(&running, &live).is_empty());
        let moved = Config::from_toml_str(
            &base
                .replace("127.0.0.1:5060", "127.0.0.1:5070")
                .replace("workers = 2", "workers = 4"),
            std::path::Path::new(""),
        )
        .unwrap();
        assert_eq!(
            restart_needed(&running, &moved),
            ["sip.listen", "sip.workers"]
        );
        let other = load("[credit]\nrefresh_interval = \"30s\"\n[log]\nformat = \"json\"\n");
        assert_eq!(
            restart_needed(&running, &other),
            ["credit.refresh_interval", "log"]
        );
    }
}
