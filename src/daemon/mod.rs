//! The thin tokio shell around the core: sockets, workers, the refresh task, signals, logging.
//!
//! `main` loads the configuration and calls [`run`]; everything the shell needs is built here
//! and passed down explicitly (STYLE rule 4): bound sockets, the snapshot, the policy handle
//! and a shutdown token.

pub mod events;
pub mod logging;
pub mod net;
pub mod refresh;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::core::keys::Keys;
use crate::core::Policy;
use crate::snapshot::Snapshot;

/// Errors that stop the daemon before it serves.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address could not be bound (in use, no permission for ports < 1024).
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The secret file could not be read.
    #[error("cannot read sip.secret_file {path}: {source}")]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] crate::core::PolicyError),
}

/// Reads the HMAC key: inline secret, secret file, or a random key with a warning.
pub fn load_keys(cfg: &Config) -> Result<Keys, StartError> {
    if !cfg.sip.secret.is_empty() {
        return Ok(Keys::new(cfg.sip.secret.as_bytes()));
    }
    if let Some(path) = &cfg.sip.secret_file {
        let bytes = std::fs::read(path).map_err(|source| StartError::Secret {
            path: path.clone(),
            source,
        })?;
        let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        return Ok(Keys::new(trimmed));
    }
    let mut key = [0u8; 32];
    if getrandom::fill(&mut key).is_err() {
        // Extremely unlikely; fall back to time-derived entropy rather than refuse to start.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        key[..16].copy_from_slice(&t.to_le_bytes());
        key[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    tracing::warn!(
        "no sip.secret or sip.secret_file: using a random key for this run; Record-Route tokens of calls in progress will not survive a restart"
    );
    Ok(Keys::new(&key))
}

/// Shared state handed to every task.
pub struct Shared {
    pub snapshot: Arc<Snapshot>,
    pub policy: ArcSwap<Policy>,
    pub counters: events::Counters,
    pub started: Instant,
}

/// Runs the daemon until SIGTERM/SIGINT. Must be called inside a tokio runtime.
pub async fn run(cfg: Config, config_path: PathBuf) -> anyhow::Result<()> {
    let started = Instant::now();
    let workers = net::worker_count(cfg.sip.workers);
    let sockets = net::bind_all(&cfg, workers).context("binding the SIP sockets")?;
    let listeners = net::listeners(&cfg, &sockets);
    for l in &listeners {
        tracing::info!(bound = %l.bound, advertised = %format!("{}:{}", l.advertised_host, l.advertised_port), workers, "listening");
    }
    let keys = load_keys(&cfg)?;
    let policy = Policy::new(&cfg, keys, listeners)?;
    let shared = Arc::new(Shared {
        snapshot: Arc::new(Snapshot::new(started)),
        policy: ArcSwap::from_pointee(policy),
        counters: events::Counters::default(),
        started,
    });
    let shutdown = CancellationToken::new();
    let refresher = refresh::Refresher::new(&cfg, Arc::clone(&shared));
    // The first snapshot attempt completes before packets are served.
    refresher.refresh_once(false).await;

    let mut tasks = Vec::new();
    for group in sockets.into_iter() {
        tasks.extend(worker::spawn_group(
            group,
            Arc::clone(&shared),
            shutdown.clone(),
        ));
    }
    let refresh_task = tokio::spawn(refresher.clone().run(shutdown.clone()));
    tracing::info!(config = %config_path.display(), accounts = shared.snapshot.len(), "creditgate running");

    wait_for_signals(&refresher, &shutdown).await;
    shutdown.cancel();
    for t in tasks {
        let _ = t.await;
    }
    let _ = refresh_task.await;
    tracing::info!("creditgate stopped");
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signals(refresher: &refresh::Refresher, shutdown: &CancellationToken) {
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
                tracing::info!("SIGHUP: refreshing the snapshot (confirms a held-back refresh)");
                refresher.trigger(true);
            }
            _ = shutdown.cancelled() => break,
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_refresher: &refresh::Refresher, _shutdown: &CancellationToken) {
    let _ = tokio::signal::ctrl_c().await;
}
