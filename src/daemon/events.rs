//! Named outcomes (STYLE rule 11): every [`Event`] the core returns is logged and counted here,
//! in one place. Counters are plain atomics (no lock, no allocation per packet).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::core::{Answer, DropReason, Event, MethodClass, PassKind};
use crate::credit::RefusalCause;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Decision latency buckets, upper bounds in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 12] = [
    5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 50_000,
];

/// All packet-path counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub admitted: Counter,
    pub refused: [Counter; 7],
    pub would_refuse: [Counter; 7],
    pub passed: [Counter; 6],
    pub answered: [Counter; 9],
    pub dropped: [Counter; 10],
    pub send_errors: Counter,
    /// Datagrams by method (rows, [`MethodClass::ALL`] order) and outcome (columns,
    /// [`OUTCOMES`] order).
    pub by_method: [[Counter; 6]; 9],
    /// Datagrams dropped by the per-source rate limit (`[sip] source_pps_limit`, `flood.rs`).
    pub flood_dropped: Counter,
    /// Histogram of decision time: counts per bucket (cumulative is computed on export), then
    /// the overflow bucket, plus the sum in nanoseconds.
    pub latency_buckets: [Counter; 13],
    pub latency_sum_ns: Counter,
    pub latency_count: Counter,
}

fn answer_index(a: Answer) -> usize {
    match a {
        Answer::BadRequest(_) => 0,
        Answer::UnsupportedUriScheme => 1,
        Answer::BadExtension => 2,
        Answer::LoopDetected => 3,
        Answer::TooManyHops => 4,
        Answer::Unresolvable => 5,
        Answer::VersionNotSupported => 6,
        Answer::MethodNotAllowed => 7,
        Answer::OptionsPing => 8,
    }
}

fn pass_index(p: PassKind) -> usize {
    PassKind::ALL.iter().position(|x| *x == p).unwrap_or(0)
}

fn drop_index(d: DropReason) -> usize {
    DropReason::ALL.iter().position(|x| *x == d).unwrap_or(0)
}

fn idx<T>(arr: &[T], i: usize) -> Option<&T> {
    arr.get(i)
}

/// The outcome classes of `creditgate_requests_total{method, outcome}`.
pub const OUTCOMES: [&str; 6] = [
    "admitted",
    "refused",
    "would_refuse",
    "passed",
    "answered",
    "dropped",
];

fn outcome_index(ev: &Event<'_>) -> usize {
    match ev {
        Event::Admitted { .. } => 0,
        Event::Refused { .. } => 1,
        Event::WouldRefuse { .. } => 2,
        Event::Passed(_) => 3,
        Event::Answered(_) => 4,
        Event::Dropped(_) => 5,
    }
}

/// Records one outcome: counters always, a log line where SPEC section 8 asks for one.
pub fn record(
    c: &Counters,
    method: MethodClass,
    ev: &Event<'_>,
    source: SocketAddr,
    took: Duration,
) {
    if let Some(x) = c
        .by_method
        .get(method.index())
        .and_then(|row| row.get(outcome_index(ev)))
    {
        x.inc();
    }
    match ev {
        Event::Admitted { account, call_id } => {
            c.admitted.inc();
            tracing::debug!(
                account = account.as_ref().map_or("-", |a| a.as_str()),
                call_id = %String::from_utf8_lossy(call_id),
                %source,
                "admitted"
            );
        }
        Event::Refused {
            cause,
            account,
            call_id,
        } => {
            if let Some(x) = idx(&c.refused, cause.index()) {
                x.inc();
            }
            tracing::info!(
                account = account.as_ref().map_or("-", |a| a.as_str()),
                cause = cause.as_str(),
                call_id = %String::from_utf8_lossy(call_id),
                %source,
                "refused"
            );
        }
        Event::WouldRefuse {
            cause,
            account,
            call_id,
        } => {
            if let Some(x) = idx(&c.would_refuse, cause.index()) {
                x.inc();
            }
            tracing::info!(
                account = account.as_ref().map_or("-", |a| a.as_str()),
                cause = cause.as_str(),
                call_id = %String::from_utf8_lossy(call_id),
                %source,
                "would refuse (dry run: forwarded)"
            );
        }
        Event::Passed(p) => {
            if let Some(x) = idx(&c.passed, pass_index(*p)) {
                x.inc();
            }
        }
        Event::Answered(a) => {
            if let Some(x) = idx(&c.answered, answer_index(*a)) {
                x.inc();
            }
            if let Answer::BadRequest(reason) = a {
                tracing::debug!(%source, reason, "400 Bad Request");
            }
        }
        Event::Dropped(d) => {
            if let Some(x) = idx(&c.dropped, drop_index(*d)) {
                x.inc();
            }
            if !matches!(d, DropReason::KeepAlive | DropReason::AckAbsorbed) {
                tracing::debug!(%source, reason = d.as_str(), "dropped");
            }
        }
    }
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let b = LATENCY_BUCKETS_US
        .iter()
        .position(|ub| us <= *ub)
        .unwrap_or(LATENCY_BUCKETS_US.len());
    if let Some(x) = idx(&c.latency_buckets, b) {
        x.inc();
    }
    c.latency_sum_ns
        .add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
    c.latency_count.inc();
}

/// Index helpers for exporters.
pub fn refusal_counter(c: &Counters, cause: RefusalCause) -> u64 {
    c.refused.get(cause.index()).map_or(0, Counter::get)
}
