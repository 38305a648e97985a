//! The refresh task: loads the credit source every `refresh_interval`, on demand (SIGHUP), and
//! applies the result to the snapshot. A failed load keeps the last snapshot; a load that would
//! shrink the account set beyond `max_shrink` is held back until confirmed (SIGHUP = force).
//! Refreshes never stack: one runs at a time, triggers during a run coalesce into one more.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::events::Counter;
use super::Shared;
use crate::config::{Config, SourceKind};
use crate::snapshot::{ShrinkHeld, Snapshot};
use crate::source::file::FileSource;
use crate::source::redis::RedisSource;
use crate::source::{Refreshed, SourceError};

/// First retry delay after a failed load (then doubling up to `refresh_interval`).
const RETRY_MIN: Duration = Duration::from_secs(1);

/// The configured source.
#[derive(Debug, Clone)]
pub enum Source {
    File(FileSource),
    /// Redis hashes plus push updates (`source/redis.rs`).
    Redis(Arc<RedisSource>),
    /// Redis is a later addition; until then the daemon reports it as unavailable.
    Unavailable(String),
}

impl Source {
    /// Reads the whole source and applies it to `snapshot`.
    async fn refresh(
        &self,
        snapshot: &Arc<Snapshot>,
        max_shrink: f64,
        force: bool,
    ) -> Result<Refreshed, SourceError> {
        match self {
            Source::File(f) => {
                let report = f.load().await?;
                // Applying a large file takes a while: do it off the runtime threads that serve
                // SIP (a long synchronous call there stalls packets queued behind it), on a
                // short-lived thread at background priority.
                let bad_tariffs = report.bad_tariffs;
                let tariffs = crate::source::apply_tariffs(snapshot, report.tariffs, &bad_tariffs);
                let snap = Arc::clone(snapshot);
                let accounts = report.accounts;
                let (tx, rx) = tokio::sync::oneshot::channel();
                std::thread::Builder::new()
                    .name("creditgate-apply".into())
                    .spawn(move || {
                        crate::sched::lower_thread_priority();
                        let _ =
                            tx.send(snap.apply_full(accounts, Instant::now(), max_shrink, force));
                    })
                    .map_err(|e| {
                        SourceError::Store(format!("cannot start the snapshot update thread: {e}"))
                    })?;
                let applied = rx
                    .await
                    .map_err(|_| SourceError::Store("the snapshot update thread failed".into()))?;
                Ok(Refreshed {
                    applied,
                    bad: report.bad,
                    bad_tariffs,
                    tariffs,
                })
            }
            Source::Redis(r) => r.refresh(snapshot, max_shrink, force).await,
            Source::Unavailable(why) => Err(SourceError::Store(why.clone())),
        }
    }
}

/// What the admin API and the metrics need to know about refreshes (all lock-free but the held
/// alarm, which changes only on refreshes). Written by [`Refresher::refresh_once`]; a push-update
/// source bumps `push_updates`.
#[derive(Debug, Default)]
pub struct RefreshStats {
    /// Full refreshes applied to the snapshot.
    pub applied: Counter,
    /// Full refreshes whose load failed (source unreachable, unreadable, invalid): the last
    /// snapshot stayed.
    pub failed: Counter,
    /// Full refreshes held back by the `max_shrink` guard.
    pub held: Counter,
    /// Account records skipped for a bad field, summed over refreshes.
    pub bad_records: Counter,
    /// Single-account push updates applied (the Redis source's `{prefix}updates` channel).
    pub push_updates: Counter,
    /// Duration of the last refresh attempt, whatever its result, in nanoseconds.
    pub last_duration_ns: AtomicU64,
    /// The pending shrink-guard alarm: set when a refresh is held back, cleared by the next
    /// refresh that applies. `/ready` reports it.
    pending_hold: std::sync::Mutex<Option<ShrinkHeld>>,
    /// The error of the last failed refresh, cleared by the next applied one.
    last_error: std::sync::Mutex<Option<String>>,
}

impl RefreshStats {
    /// The shrink-guard hold waiting for confirmation, if any.
    pub fn pending_hold(&self) -> Option<ShrinkHeld> {
        self.pending_hold.lock().map_or(None, |g| *g)
    }

    /// The error of the last refresh if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().map_or(None, |g| g.clone())
    }

    /// Duration of the last refresh attempt.
    pub fn last_duration(&self) -> Duration {
        Duration::from_nanos(self.last_duration_ns.load(Ordering::Relaxed))
    }

    fn set_hold(&self, hold: Option<ShrinkHeld>) {
        if let Ok(mut g) = self.pending_hold.lock() {
            *g = hold;
        }
    }

    fn set_error(&self, error: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = error;
        }
    }

    fn took(&self, t0: Instant) {
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_duration_ns.store(ns, Ordering::Relaxed);
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
    stats: RefreshStats,
}

impl Refresher {
    pub fn new(cfg: &Config, shared: Arc<Shared>) -> Self {
        let source = match cfg.credit.source {
            SourceKind::File => Source::File(FileSource::new(cfg.credit.file.clone())),
            SourceKind::Redis => {
                match RedisSource::new(&cfg.credit.redis_url, &cfg.credit.key_prefix) {
                    Ok(r) => Source::Redis(Arc::new(r)),
                    Err(e) => Source::Unavailable(format!("credit.redis_url: {e}")),
                }
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
                stats: RefreshStats::default(),
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

    /// Refresh bookkeeping for the admin API and metrics.
    pub fn stats(&self) -> &RefreshStats {
        &self.inner.stats
    }

    /// The Redis source's own counters (load, push and subscription failures), when the source
    /// is Redis.
    pub fn redis_stats(&self) -> Option<&crate::source::redis::RedisStats> {
        match &self.inner.source {
            Source::Redis(r) => Some(&r.stats),
            _ => None,
        }
    }

    /// One refresh; returns whether it applied.
    pub async fn refresh_once(&self, force: bool) -> bool {
        let _guard = self.inner.running.lock().await;
        let t0 = Instant::now();
        let snap = &self.inner.shared.snapshot;
        let refreshed = self
            .inner
            .source
            .refresh(snap, self.inner.max_shrink, force)
            .await;
        let Refreshed {
            applied,
            bad,
            bad_tariffs,
            tariffs,
        } = match refreshed {
            Ok(r) => r,
            Err(e) => {
                let stats = &self.inner.stats;
                stats.took(t0);
                stats.failed.inc();
                stats.set_error(Some(e.to_string()));
                tracing::warn!(error = %e, loaded = snap.is_loaded(), accounts = snap.len(), "refresh failed; keeping the last snapshot");
                return false;
            }
        };
        for bad in &bad {
            tracing::warn!(account = %bad.id, field = %bad.field, reason = %bad.reason, "skipping bad account record");
        }
        for bad in &bad_tariffs {
            tracing::warn!(tariff = %bad.name, field = %bad.field, reason = %bad.reason, "skipping bad tariff; its previous version, if any, stays");
        }
        let n_bad = bad.len() + bad_tariffs.len();
        self.inner.stats.bad_records.add(n_bad as u64);
        match applied {
            Ok(st) => {
                let stats = &self.inner.stats;
                stats.took(t0);
                stats.applied.inc();
                stats.set_hold(None);
                stats.set_error(None);
                tracing::info!(
                    accounts = st.total,
                    added = st.added,
                    changed = st.changed,
                    removed = st.removed,
                    bad = n_bad,
                    tariffs,
                    took_ms = t0.elapsed().as_millis() as u64,
                    "snapshot refreshed"
                );
                true
            }
            Err(held) => {
                let stats = &self.inner.stats;
                stats.took(t0);
                stats.held.inc();
                stats.set_hold(Some(held));
                stats.set_error(None);
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

    /// Starts the push-update task of a source that has one (Redis): each published account is
    /// re-read at once; after a lost subscription comes back, a full refresh catches up.
    pub fn spawn_push_updates(
        &self,
        shutdown: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let Source::Redis(r) = &self.inner.source else {
            return None;
        };
        let snapshot = Arc::clone(&self.inner.shared.snapshot);
        let on_resubscribed = self.clone();
        let on_applied = self.clone();
        Some(r.spawn_updates(
            snapshot,
            shutdown,
            move || on_resubscribed.trigger(false),
            move || on_applied.inner.stats.push_updates.inc(),
        ))
    }

    /// Runs until shutdown.
    /// After a failed load the next attempt comes sooner: [`RETRY_MIN`], doubling, capped at
    /// `refresh_interval` (a source back up is picked up quickly, a source down is not hammered).
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = self.inner.interval;
        let failed = |r: &Self| r.inner.stats.last_error().is_some();
        let mut retry = failed(&self).then_some(RETRY_MIN.min(interval));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry.unwrap_or(interval)) => {}
                _ = self.inner.notify.notified() => {}
            }
            let force = self.inner.force_next.swap(false, Ordering::AcqRel);
            let applied = self.refresh_once(force).await;
            retry = if !applied && failed(&self) {
                Some(retry.map_or(RETRY_MIN, |d| d * 2).min(interval))
            } else {
                None
            };
        }
    }
}
