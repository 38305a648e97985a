//! The refresh task: loads the credit source every `refresh_interval`, on demand (SIGHUP), and
//! applies the result to the snapshot. A failed load keeps the last snapshot; a load that would
//! shrink the account set beyond `max_shrink` is held back until confirmed (SIGHUP = force).
//! Refreshes never stack: one runs at a time, triggers during a run coalesce into one more.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::{Config, SourceKind};
use crate::source::file::FileSource;
use crate::source::{LoadReport, SourceError};

/// The configured source.
#[derive(Debug, Clone)]
pub enum Source {
    File(FileSource),
    /// Redis is a later addition; until then the daemon reports it as unavailable.
    Unavailable(String),
}

impl Source {
    async fn load(&self) -> Result<LoadReport, SourceError> {
        match self {
            Source::File(f) => f.load().await,
            Source::Unavailable(why) => Err(SourceError::Store(why.clone())),
        }
    }
}

/// Handle to the refresh task.
#[derive(Clone)]
pub struct Refresher {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    source: Source,
    interval: Duration,
    max_shrink: f64,
    notify: Notify,
    force_next: AtomicBool,
    running: tokio::sync::Mutex<()>,
}

impl Refresher {
    pub fn new(cfg: &Config, shared: Arc<Shared>) -> Self {
        let source = match cfg.credit.source {
            SourceKind::File => Source::File(FileSource::new(cfg.credit.file.clone())),
            SourceKind::Redis => {
                Source::Unavailable("the redis source is not built into this version".into())
            }
        };
        Refresher {
            inner: Arc::new(Inner {
                shared,
                source,
                interval: cfg.credit.refresh_interval,
                max_shrink: cfg.credit.max_shrink,
                notify: Notify::new(),
                force_next: AtomicBool::new(false),
                running: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Asks for a refresh now; `force` also applies a refresh the shrink guard would hold.
    pub fn trigger(&self, force: bool) {
        if force {
            self.inner.force_next.store(true, Ordering::Release);
        }
        self.inner.notify.notify_one();
    }

    /// One refresh; returns whether it applied.
    pub async fn refresh_once(&self, force: bool) -> bool {
        let _guard = self.inner.running.lock().await;
        let t0 = Instant::now();
        let report = match self.inner.source.load().await {
            Ok(r) => r,
            Err(e) => {
                let snap = &self.inner.shared.snapshot;
                tracing::warn!(error = %e, loaded = snap.is_loaded(), accounts = snap.len(), "refresh failed; keeping the last snapshot");
                return false;
            }
        };
        for bad in &report.bad {
            tracing::warn!(account = %bad.id, field = %bad.field, reason = %bad.reason, "skipping bad account record");
        }
        let n_bad = report.bad.len();
        let snap = &self.inner.shared.snapshot;
        match snap.apply_full(
            report.accounts,
            Instant::now(),
            self.inner.max_shrink,
            force,
        ) {
            Ok(st) => {
                tracing::info!(
                    accounts = st.total,
                    added = st.added,
                    changed = st.changed,
                    removed = st.removed,
                    bad = n_bad,
                    took_ms = t0.elapsed().as_millis() as u64,
                    "snapshot refreshed"
                );
                true
            }
            Err(held) => {
                tracing::error!(
                    would_remove = held.would_remove,
                    known = held.known,
                    max_shrink = held.max_shrink,
                    "ALARM: refresh held back by the max_shrink guard; send SIGHUP to confirm"
                );
                false
            }
        }
    }

    /// Runs until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.inner.interval) => {}
                _ = self.inner.notify.notified() => {}
            }
            let force = self.inner.force_next.swap(false, Ordering::AcqRel);
            self.refresh_once(force).await;
        }
    }
}
