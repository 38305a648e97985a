//! Named outcomes (STYLE rule 11): every [`Event`] the core returns is logged and counted here,
//! in one place. Counters are plain atomics (no lock, no allocation per packet).
//!
//! What the log may cost (SPEC section 6, "Values from the network"): a value from the network
//! (the Call-ID) is logged through [`Quoted`], at most [`MAX_QUOTED`] bytes, escaped (an account
//! id is only ever one of the snapshot's, at most 128 printable bytes, checked at load);
//! refusal lines pass the [`LineLimiter`] (`[log] refusal_lines_per_second`), and what it holds
//! back is counted and summed up once a second. The lines go to a non-blocking writer
//! (`logging.rs`), so none of this ever waits for stderr.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// Bytes of a value from the network quoted in a log line. A Call-ID of a real UA is 20 to 60
/// bytes; 64 keeps it whole and bounds what a hostile 60 000-byte one costs.
pub const MAX_QUOTED: usize = 64;

/// A value from the network as a log field: its first [`MAX_QUOTED`] bytes, non-printable bytes,
/// `"`, `'` and `\` escaped (`\x1b`, `\"`), and `...(N bytes)` when it was longer. Formatting
/// it allocates nothing.
#[derive(Clone, Copy)]
pub struct Quoted<'a>(pub &'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = self.0.get(..MAX_QUOTED).unwrap_or(self.0);
        fmt::Display::fmt(&head.escape_ascii(), f)?;
        if head.len() < self.0.len() {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Default of [`LineLimiter`]'s rate, as `[log] refusal_lines_per_second`.
const DEFAULT_LINES_PER_SECOND: u32 = 20;

/// A log-line budget per one-second window shared by every worker: lock-free (three relaxed
/// atomics per refusal), no allocation. Lines over the budget are counted ([`suppressed`]) and
/// the count of a window is reported by the first line allowed in a later one.
///
/// [`suppressed`]: LineLimiter::suppressed
#[derive(Debug)]
pub struct LineLimiter {
    per_second: AtomicU32,
    /// Origin of the window numbers: the first `now` seen.
    base: OnceLock<Instant>,
    /// Current window: whole seconds since `base`.
    window: AtomicU64,
    /// Lines allowed or refused in the current window.
    used: AtomicU32,
    /// Suppressed since the last summary line.
    pending: AtomicU64,
    /// Suppressed in total (`creditgate_log_lines_suppressed_total`).
    pub suppressed: Counter,
}

impl Default for LineLimiter {
    fn default() -> Self {
        LineLimiter {
            per_second: AtomicU32::new(DEFAULT_LINES_PER_SECOND),
            base: OnceLock::new(),
            window: AtomicU64::new(0),
            used: AtomicU32::new(0),
            pending: AtomicU64::new(0),
            suppressed: Counter::default(),
        }
    }
}

/// What [`LineLimiter::allow`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineVerdict {
    /// Write the line; `suppressed_before` lines were held back since the last summary (write a
    /// summary first when it is not 0).
    Write { suppressed_before: u64 },
    /// Over the budget: counted, write nothing.
    Suppress,
}

impl LineLimiter {
    /// Sets the budget (`[log] refusal_lines_per_second`; at least 1).
    pub fn set_rate(&self, per_second: u32) {
        self.per_second.store(per_second.max(1), Ordering::Relaxed);
    }

    /// One line at `now`. Windows only move forward: a thread whose `now` is a little behind
    /// another's counts in the newer window.
    pub fn allow(&self, now: Instant) -> LineVerdict {
        let base = *self.base.get_or_init(|| now);
        let sec = now.saturating_duration_since(base).as_secs();
        let current = self.window.load(Ordering::Relaxed);
        if sec > current
            && self
                .window
                .compare_exchange(current, sec, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        let limit = self.per_second.load(Ordering::Relaxed);
        let n = self.used.fetch_add(1, Ordering::Relaxed);
        if n < limit {
            LineVerdict::Write {
                suppressed_before: self.pending.swap(0, Ordering::Relaxed),
            }
        } else {
            // Held at the limit, so that the count cannot wrap to 0 within a window however
            // many lines are refused.
            self.used.store(limit, Ordering::Relaxed);
            self.suppressed.inc();
            self.pending.fetch_add(1, Ordering::Relaxed);
            LineVerdict::Suppress
        }
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
    pub refused: [Counter; RefusalCause::ALL.len()],
    pub would_refuse: [Counter; RefusalCause::ALL.len()],
    pub passed: [Counter; 6],
    pub answered: [Counter; 9],
    pub dropped: [Counter; DropReason::ALL.len()],
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
    /// Budget of refusal log lines (`[log] refusal_lines_per_second`).
    pub refusal_lines: LineLimiter,
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

/// Whether a refusal line may be written at `now`; writes the summary of what was held back
/// before it first.
fn refusal_line_allowed(c: &Counters, now: Instant) -> bool {
    match c.refusal_lines.allow(now) {
        LineVerdict::Write { suppressed_before } => {
            if suppressed_before > 0 {
                tracing::info!(
                    suppressed = suppressed_before,
                    "refusal log lines suppressed since the last one ([log] refusal_lines_per_second); every refusal is counted in the metrics"
                );
            }
            true
        }
        LineVerdict::Suppress => false,
    }
}

/// Records one outcome: counters always, a log line where SPEC section 8 asks for one. `start`
/// is when the datagram was received (the decision took `start.elapsed()`).
pub fn record(
    c: &Counters,
    method: MethodClass,
    ev: &Event<'_>,
    source: SocketAddr,
    start: Instant,
) {
    let took = start.elapsed();
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
                call_id = %Quoted(call_id),
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
            if !refusal_line_allowed(c, start) {
                return finish(c, took);
            }
            tracing::info!(
                account = account.as_ref().map_or("-", |a| a.as_str()),
                cause = cause.as_str(),
                call_id = %Quoted(call_id),
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
            if !refusal_line_allowed(c, start) {
                return finish(c, took);
            }
            tracing::info!(
                account = account.as_ref().map_or("-", |a| a.as_str()),
                cause = cause.as_str(),
                call_id = %Quoted(call_id),
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
    finish(c, took);
}

/// Counts the decision time in the latency histogram.
fn finish(c: &Counters, took: Duration) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_short_and_escaped() {
        assert_eq!(Quoted(b"abc@host").to_string(), "abc@host");
        assert_eq!(
            Quoted(b"a\"b\\c\x1b[31m\n\xff").to_string(),
            "a\\\"b\\\\c\\x1b[31m\\n\\xff"
        );
        let long = vec![b'x'; 60_000];
        let q = Quoted(&long).to_string();
        assert_eq!(q, format!("{}...(60000 bytes)", "x".repeat(MAX_QUOTED)));
        assert_eq!(Quoted(&long[..MAX_QUOTED]).to_string(), "x".repeat(64));
    }

    #[test]
    fn refusal_lines_are_limited_per_second_and_counted() {
        let l = LineLimiter::default();
        l.set_rate(3);
        let t0 = Instant::now();
        let verdicts: Vec<LineVerdict> = (0..10).map(|_| l.allow(t0)).collect();
        let written = verdicts
            .iter()
            .filter(|v| matches!(v, LineVerdict::Write { .. }))
            .count();
        assert_eq!(written, 3);
        assert_eq!(l.suppressed.get(), 7);
        // Still the same window just before its end.
        assert_eq!(
            l.allow(t0 + Duration::from_millis(999)),
            LineVerdict::Suppress
        );
        // The next window: the first line carries the count held back since the last one.
        assert_eq!(
            l.allow(t0 + Duration::from_secs(1)),
            LineVerdict::Write {
                suppressed_before: 8
            }
        );
        assert_eq!(
            l.allow(t0 + Duration::from_secs(1)),
            LineVerdict::Write {
                suppressed_before: 0
            }
        );
        // A late thread's `now` (an older window) does not reset the budget.
        assert_eq!(
            l.allow(t0 + Duration::from_millis(500)),
            LineVerdict::Write {
                suppressed_before: 0
            }
        );
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), LineVerdict::Suppress);
        assert_eq!(l.suppressed.get(), 9);
    }
}
