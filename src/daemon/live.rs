//! The daemon side of live credit (SPEC section 7): the counters of the call table's outcomes
//! and the low-credit event publisher.
//!
//! * [`LiveCounters`]: lock-free counters (plain relaxed atomics, like [`super::events`]) of
//!   calls answered, calls ended by cause, live refusals by reason and low-credit events by
//!   outcome; `GET /metrics` reads them ([`super::metrics`]).
//! * The publisher: [`low_credit_channel`] makes a bounded queue ([`LOW_CREDIT_QUEUE`] events)
//!   whose [`LowCreditSender::send`] never blocks and never allocates beyond the event itself (a
//!   full queue drops the event and counts it), usable from a packet thread or a tokio task;
//!   [`spawn_publisher`] starts the task that `PUBLISH`es each event as one JSON object on
//!   `{prefix}events`. Redis down: the task reconnects with capped exponential back-off, and the
//!   events it cannot publish meanwhile are counted as failed, not retried (an event is about
//!   the account's figure at one moment; a late copy would only mislead).
//!
//! Boundary: no decision is made here. [`crate::live::calls::LiveState`] decides, the packet
//! workers and the daemon's tick call the counter methods with what it returned, and the
//! low-credit sweep hands its [`LowCredit`] values to the sender.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::events::Counter;
use crate::core::{LiveNote, LiveRefusal};
use crate::live::calls::{CallEvent, EndCause, LowCredit, TickStats};
use crate::live::ledger::Refusal;
use crate::source::redis::{BACKOFF_MAX, BACKOFF_MIN, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// Capacity of the low-credit queue. An event is emitted once per crossing of an account, so
/// even a mass top-down (a tariff change making thousands of accounts cross at once) fills it
/// only while Redis is slow or down; 1024 events are ~100 KB, and what does not fit is
/// counted (`creditgate_low_credit_events_total{outcome="dropped"}`).
pub const LOW_CREDIT_QUEUE: usize = 1024;

/// Labels of `creditgate_calls_ended_total{cause}`, in [`EndLabel`] order.
pub const END_LABELS: [&str; 5] = ["bye", "failed", "cancelled", "ring_timeout", "expired"];

/// Labels of `creditgate_live_refusals_total{reason}`: [`Refusal::label`] of each live refusal,
/// then `no_rate` (refused by the proxy itself for `unrated = "refuse"`).
pub const REFUSAL_LABELS: [&str; 8] = [
    "insufficient_credit",
    "channel_limit",
    "credit_scaled_channels",
    "cps_limit",
    "spend_limit",
    "table_full",
    "key_in_use",
    "no_rate",
];

/// Labels of `creditgate_low_credit_events_total{outcome}`.
pub const EVENT_OUTCOMES: [&str; 3] = ["published", "dropped", "failed"];

/// Why a tracked call ended, as a metric label (finer than [`EndCause`]: a 487 after CANCEL is
/// `cancelled`, other non-2xx finals `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndLabel {
    Bye,
    Failed,
    Cancelled,
    RingTimeout,
    Expired,
}

impl EndLabel {
    pub const ALL: [EndLabel; 5] = [
        EndLabel::Bye,
        EndLabel::Failed,
        EndLabel::Cancelled,
        EndLabel::RingTimeout,
        EndLabel::Expired,
    ];

    /// Index into [`END_LABELS`].
    pub fn index(self) -> usize {
        match self {
            EndLabel::Bye => 0,
            EndLabel::Failed => 1,
            EndLabel::Cancelled => 2,
            EndLabel::RingTimeout => 3,
            EndLabel::Expired => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        END_LABELS.get(self.index()).copied().unwrap_or("failed")
    }

    /// The label of an [`EndCause`]; `final_status` is the status code of the final response
    /// that ended a call with [`EndCause::Failed`] (487 = cancelled), `None` otherwise.
    pub fn of(cause: EndCause, final_status: Option<u16>) -> EndLabel {
        match cause {
            EndCause::Bye => EndLabel::Bye,
            EndCause::Failed if final_status == Some(487) => EndLabel::Cancelled,
            EndCause::Failed => EndLabel::Failed,
            EndCause::Cancelled => EndLabel::Cancelled,
            EndCause::RingTimeout => EndLabel::RingTimeout,
            EndCause::Expired => EndLabel::Expired,
        }
    }
}

/// Index of a live refusal in [`REFUSAL_LABELS`].
fn refusal_index(r: Refusal) -> usize {
    match r {
        Refusal::InsufficientCredit => 0,
        Refusal::ChannelLimit => 1,
        Refusal::CreditScaledChannels => 2,
        Refusal::CpsLimit => 3,
        Refusal::SpendLimit => 4,
        Refusal::TableFull => 5,
        Refusal::KeyInUse => 6,
    }
}

/// Index of `no_rate` in [`REFUSAL_LABELS`].
const NO_RATE: usize = 7;

/// Counters of live credit, shared by the packet workers, the tick task and the publisher.
/// Every method is one relaxed atomic add.
#[derive(Debug, Default)]
pub struct LiveCounters {
    /// Tracked calls answered (a 2xx moved them from ringing to answered).
    pub answered: Counter,
    /// Tracked calls ended, by [`END_LABELS`].
    pub ended: [Counter; 5],
    /// Live refusals (in dry-run mode too: the decision is counted either way), by
    /// [`REFUSAL_LABELS`].
    pub refusals: [Counter; 8],
    /// Low-credit events published on `{prefix}events`.
    pub events_published: Counter,
    /// Low-credit events dropped because the queue was full (or the publisher had stopped).
    pub events_dropped: Counter,
    /// Low-credit events the publisher could not publish (Redis down or erroring).
    pub events_failed: Counter,
    /// Customers' in-dialog requests with a valid Route token of a call that is not tracked
    /// (ended, expired, from before a restart): handled as out of dialog.
    pub untracked: Counter,
}

impl LiveCounters {
    /// Counts what the core's [`LiveNote`] for one datagram says (the packet path: one match,
    /// at most one relaxed add).
    pub fn note(&self, note: LiveNote) {
        match note {
            LiveNote::None | LiveNote::Tracked { .. } => {}
            LiveNote::Refused(LiveRefusal::Ledger(r)) => self.refused(r),
            LiveNote::Refused(LiveRefusal::NoRate) => self.refused_no_rate(),
            LiveNote::Refused(LiveRefusal::Vanished) => {}
            LiveNote::Answered => self.answered(),
            LiveNote::Ended(cause) => self.ended(EndLabel::of(cause, None)),
            LiveNote::Untracked => self.untracked.inc(),
        }
    }

    /// A tracked call was answered ([`CallEvent::Answered`]).
    pub fn answered(&self) {
        self.answered.inc();
    }

    /// A tracked call ended.
    pub fn ended(&self, label: EndLabel) {
        self.add_ended(label, 1);
    }

    /// `n` tracked calls ended for the same reason (a tick's ring timeouts or expiries).
    pub fn add_ended(&self, label: EndLabel, n: u64) {
        if let Some(c) = self.ended.get(label.index()) {
            c.add(n);
        }
    }

    /// Counts what a call event of [`crate::live::calls::LiveState`] did: `Answered` and
    /// `Ended` are counted, `Ignored` is not. `final_status`: see [`EndLabel::of`].
    pub fn call_event(&self, ev: &CallEvent, final_status: Option<u16>) {
        match ev {
            CallEvent::Ignored => {}
            CallEvent::Answered => self.answered(),
            CallEvent::Ended { cause, .. } => self.ended(EndLabel::of(*cause, final_status)),
        }
    }

    /// Counts the calls a [`crate::live::calls::LiveState::tick`] ended.
    pub fn tick(&self, st: &TickStats) {
        self.add_ended(EndLabel::RingTimeout, st.ring_timeouts as u64);
        self.add_ended(EndLabel::Expired, st.expired as u64);
    }

    /// A new call refused by the live check ([`crate::live::calls::LiveState::admit`]'s `Err`).
    pub fn refused(&self, r: Refusal) {
        if let Some(c) = self.refusals.get(refusal_index(r)) {
            c.inc();
        }
    }

    /// A new call refused with `no_rate` (`[live] unrated = "refuse"`).
    pub fn refused_no_rate(&self) {
        if let Some(c) = self.refusals.get(NO_RATE) {
            c.inc();
        }
    }

    /// `(label, count)` of every end cause, in [`END_LABELS`] order.
    pub fn ended_counts(&self) -> [(&'static str, u64); 5] {
        std::array::from_fn(|i| {
            (
                END_LABELS.get(i).copied().unwrap_or_default(),
                self.ended.get(i).map_or(0, Counter::get),
            )
        })
    }

    /// `(label, count)` of every live refusal reason, in [`REFUSAL_LABELS`] order.
    pub fn refusal_counts(&self) -> [(&'static str, u64); 8] {
        std::array::from_fn(|i| {
            (
                REFUSAL_LABELS.get(i).copied().unwrap_or_default(),
                self.refusals.get(i).map_or(0, Counter::get),
            )
        })
    }

    /// `(outcome, count)` of low-credit events, in [`EVENT_OUTCOMES`] order.
    pub fn event_counts(&self) -> [(&'static str, u64); 3] {
        [
            ("published", self.events_published.get()),
            ("dropped", self.events_dropped.get()),
            ("failed", self.events_failed.get()),
        ]
    }
}

/// One queued event: the crossing and the wall time it was seen at (Unix seconds).
#[derive(Debug)]
struct Queued {
    event: LowCredit,
    wall_secs: u64,
}

/// The sending half of the low-credit queue. Cheap to clone; `send` never blocks and needs no
/// runtime (callable from a packet thread, a tokio task or a plain thread).
#[derive(Debug, Clone)]
pub struct LowCreditSender {
    tx: mpsc::Sender<Queued>,
    counters: Arc<LiveCounters>,
}

/// The receiving half, for [`spawn_publisher`].
#[derive(Debug)]
pub struct LowCreditReceiver {
    rx: mpsc::Receiver<Queued>,
}

/// A bounded low-credit queue of [`LOW_CREDIT_QUEUE`] events; drops are counted in `counters`.
pub fn low_credit_channel(counters: Arc<LiveCounters>) -> (LowCreditSender, LowCreditReceiver) {
    low_credit_channel_with(LOW_CREDIT_QUEUE, counters)
}

/// [`low_credit_channel`] with another capacity (at least 1; tests).
pub fn low_credit_channel_with(
    capacity: usize,
    counters: Arc<LiveCounters>,
) -> (LowCreditSender, LowCreditReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (LowCreditSender { tx, counters }, LowCreditReceiver { rx })
}

impl LowCreditSender {
    /// Queues one event seen at `wall_secs` (Unix seconds). Never blocks: when the queue is full
    /// (or the publisher has stopped) the event is dropped and counted. Returns whether it was
    /// queued.
    pub fn send(&self, event: LowCredit, wall_secs: u64) -> bool {
        match self.tx.try_send(Queued { event, wall_secs }) {
            Ok(()) => true,
            Err(_) => {
                self.counters.events_dropped.inc();
                false
            }
        }
    }
}

/// `{prefix}events`.
pub fn events_channel(prefix: &str) -> String {
    format!("{prefix}events")
}

/// The published JSON, field order as documented.
#[derive(Serialize)]
struct EventJson<'a> {
    event: &'static str,
    account: &'a str,
    live_available: String,
    threshold: String,
    calls_in_progress: u32,
    time: String,
}

/// The JSON of one event: `{"event":"low_credit","account":"ID","live_available":"1.2300",
/// "threshold":"2.50","calls_in_progress":3,"time":"2026-12-02T17:05:00Z"}`. Money as exact
/// decimal strings (scale kept), the time in RFC 3339 UTC to the second.
pub fn event_json(event: &LowCredit, wall_secs: u64) -> String {
    let time = UNIX_EPOCH
        .checked_add(Duration::from_secs(wall_secs))
        .unwrap_or(UNIX_EPOCH);
    let j = EventJson {
        event: "low_credit",
        account: &event.account,
        live_available: event.live_available.to_string(),
        threshold: event.threshold.to_string(),
        calls_in_progress: event.calls_in_progress,
        time: humantime::format_rfc3339_seconds(time).to_string(),
    };
    // Serialising strings and an integer cannot fail; the fallback keeps this panic-free.
    serde_json::to_string(&j).unwrap_or_default()
}

/// The wall clock as Unix seconds, for [`LowCreditSender::send`].
pub fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Starts the publisher task on the current tokio runtime: it takes the events of `receiver`
/// in order and `PUBLISH`es each on `{key_prefix}events` ([`event_json`]), until `shutdown` or
/// until every sender is dropped. `redis_url` is `[credit] redis_url` (`redis://`,
/// `redis+unix://`...); only its syntax is checked here (the connection is made by the task,
/// so the daemon starts while Redis is down).
///
/// Redis down or erroring: the event in hand is counted in `events_failed`; the task reconnects
/// before the next event, waiting [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`] between failed
/// attempts (events arriving meanwhile are counted failed at once, so the queue keeps moving).
pub fn spawn_publisher(
    redis_url: &str,
    key_prefix: &str,
    receiver: LowCreditReceiver,
    counters: Arc<LiveCounters>,
    shutdown: CancellationToken,
) -> redis::RedisResult<JoinHandle<()>> {
    let client = crate::source::redis::open_client(redis_url)?;
    let channel = events_channel(key_prefix);
    Ok(tokio::spawn(publish_loop(
        client, channel, receiver, counters, shutdown,
    )))
}

/// The connection of the publisher, with its reconnect schedule.
struct Link {
    client: Client,
    conn: Option<MultiplexedConnection>,
    /// No connection attempt before this.
    retry_at: Instant,
    backoff: Duration,
    /// Failures since the last success (for the log).
    failures: u64,
}

impl Link {
    /// A connection, making one attempt when none is open and the back-off allows it.
    async fn get(&mut self, channel: &str) -> Option<&mut MultiplexedConnection> {
        if self.conn.is_none() && Instant::now() >= self.retry_at {
            let cfg = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT));
            let attempt = tokio::time::timeout(
                CONNECT_TIMEOUT,
                self.client
                    .get_multiplexed_async_connection_with_config(&cfg),
            )
            .await;
            match attempt {
                Ok(Ok(c)) => {
                    if self.failures > 0 {
                        tracing::info!(
                            channel,
                            failures = self.failures,
                            "low-credit events: connected to Redis again"
                        );
                    }
                    self.conn = Some(c);
                    self.backoff = BACKOFF_MIN;
                    self.failures = 0;
                }
                Ok(Err(e)) => self.failed(channel, &e.to_string()),
                Err(_) => self.failed(channel, "connect timed out"),
            }
        }
        self.conn.as_mut()
    }

    /// A failed connection attempt: the next one after the back-off, which doubles.
    fn failed(&mut self, channel: &str, error: &str) {
        self.log(channel, error);
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// The open connection failed a publish: drop it and reconnect at the next event.
    fn lost(&mut self, channel: &str, error: &str) {
        self.log(channel, error);
        self.retry_at = Instant::now();
    }

    fn log(&mut self, channel: &str, error: &str) {
        self.conn = None;
        self.failures += 1;
        // The first failure of a streak, then every 64th: a Redis down for an hour is a few
        // dozen lines, not one per event.
        if self.failures == 1 || self.failures % 64 == 0 {
            tracing::warn!(
                channel,
                error,
                failures = self.failures,
                retry_in_ms = self.backoff.as_millis() as u64,
                "cannot publish low-credit events on Redis; events meanwhile are counted as failed"
            );
        }
    }
}

async fn publish_loop(
    client: Client,
    channel: String,
    mut receiver: LowCreditReceiver,
    counters: Arc<LiveCounters>,
    shutdown: CancellationToken,
) {
    let mut link = Link {
        client,
        conn: None,
        retry_at: Instant::now(),
        backoff: BACKOFF_MIN,
        failures: 0,
    };
    loop {
        let q = tokio::select! {
            _ = shutdown.cancelled() => return,
            q = receiver.rx.recv() => q,
        };
        let Some(q) = q else {
            return;
        };
        let payload = event_json(&q.event, q.wall_secs);
        let published = match link.get(&channel).await {
            None => Err("no connection to Redis".to_owned()),
            Some(conn) => redis::cmd("PUBLISH")
                .arg(&channel)
                .arg(&payload)
                .query_async::<i64>(conn)
                .await
                .map_err(|e| e.to_string()),
        };
        match published {
            Ok(_) => counters.events_published.inc(),
            Err(e) => {
                counters.events_failed.inc();
                // A failure of the open connection: reconnect before the next event (the
                // back-off starts with the next failed attempt). No connection: already
                // scheduled.
                if link.conn.is_some() {
                    link.lost(&channel, &e);
                }
            }
        }
    }
}

/// [`super::test_shared`] with `live` as its live state, for unit tests of the admin API and
/// the metrics.
#[cfg(test)]
pub(crate) fn test_shared_live(
    live: Option<Arc<crate::live::calls::LiveState>>,
) -> Arc<super::Shared> {
    let bound: std::net::SocketAddr = ([127, 0, 0, 1], 5060).into();
    let shared = super::test_shared(&[bound]);
    let Some(mut s) = Arc::into_inner(shared) else {
        unreachable!("a fresh Shared has one owner")
    };
    s.live = live;
    Arc::new(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rust_decimal::Decimal;
    use std::str::FromStr;

    fn event(id: &str, live: &str, threshold: &str, calls: u32) -> LowCredit {
        LowCredit {
            account: Arc::from(id),
            live_available: Decimal::from_str_exact(live).unwrap(),
            threshold: Decimal::from_str_exact(threshold).unwrap(),
            calls_in_progress: calls,
        }
    }

    #[test]
    fn event_json_is_exact() {
        // 2026-12-02T17:05:00Z
        let wall = 1_796_231_100;
        assert_eq!(
            event_json(&event("acme-1", "1.2300", "2.50", 3), wall),
            r#"{"event":"low_credit","account":"acme-1","live_available":"1.2300","threshold":"2.50","calls_in_progress":3,"time":"2026-12-02T17:05:00Z"}"#
        );
        // Negative figures and an id needing escapes stay exact and valid JSON.
        let j = event_json(&event("a\"b", "-0.000001", "5", 0), 0);
        let v = serde_json::Value::from_str(&j).unwrap();
        assert_eq!(v["account"], "a\"b");
        assert_eq!(v["live_available"], "-0.000001");
        assert_eq!(v["threshold"], "5");
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let counters = Arc::new(LiveCounters::default());
        let (tx, mut rx) = low_credit_channel_with(3, Arc::clone(&counters));
        let sent: Vec<bool> = (0..5)
            .map(|i| tx.send(event(&format!("a{i}"), "1", "2", 1), 0))
            .collect();
        assert_eq!(sent, [true, true, true, false, false]);
        assert_eq!(counters.events_dropped.get(), 2);
        // From another (non-tokio) thread too.
        let tx2 = tx.clone();
        let ok = std::thread::spawn(move || tx2.send(event("t", "1", "2", 1), 0))
            .join()
            .unwrap();
        assert!(!ok);
        assert_eq!(counters.events_dropped.get(), 3);
        // Room again once the publisher took one; the order is kept.
        assert_eq!(&*rx.rx.try_recv().unwrap().event.account, "a0");
        assert!(tx.send(event("a5", "1", "2", 1), 0));
        let rest: Vec<String> = std::iter::from_fn(|| rx.rx.try_recv().ok())
            .map(|q| q.event.account.to_string())
            .collect();
        assert_eq!(rest, ["a1", "a2", "a5"]);
        // A stopped publisher: dropped and counted, never a panic.
        drop(rx);
        assert!(!tx.send(event("late", "1", "2", 1), 0));
        assert_eq!(counters.events_dropped.get(), 4);
        assert_eq!(LOW_CREDIT_QUEUE, 1024);
    }

    #[test]
    fn counters_by_label() {
        let c = LiveCounters::default();
        c.call_event(&CallEvent::Answered, None);
        c.call_event(&CallEvent::Ignored, None);
        let ended = |cause| CallEvent::Ended {
            cause,
            cost: Decimal::ZERO,
        };
        c.call_event(&ended(EndCause::Bye), None);
        c.call_event(&ended(EndCause::Failed), Some(486));
        c.call_event(&ended(EndCause::Failed), Some(487));
        c.tick(&TickStats {
            ring_timeouts: 2,
            expired: 3,
            ..TickStats::default()
        });
        assert_eq!(c.answered.get(), 1);
        assert_eq!(
            c.ended_counts(),
            [
                ("bye", 1),
                ("failed", 1),
                ("cancelled", 1),
                ("ring_timeout", 2),
                ("expired", 3)
            ]
        );
        for r in [
            Refusal::InsufficientCredit,
            Refusal::ChannelLimit,
            Refusal::CreditScaledChannels,
            Refusal::CpsLimit,
            Refusal::SpendLimit,
            Refusal::TableFull,
            Refusal::KeyInUse,
        ] {
            c.refused(r);
            // The label table follows the core's own labels.
            assert_eq!(REFUSAL_LABELS[refusal_index(r)], r.label());
        }
        c.refused(Refusal::TableFull);
        c.refused_no_rate();
        let counts = c.refusal_counts();
        assert_eq!(counts[5], ("table_full", 2));
        assert_eq!(counts[7], ("no_rate", 1));
        assert_eq!(counts.iter().map(|x| x.1).sum::<u64>(), 9);
        for l in EndLabel::ALL {
            assert_eq!(END_LABELS[l.index()], l.as_str());
        }
    }

    /// Unreachable Redis: events are counted failed, the queue keeps moving, nothing blocks.
    #[tokio::test]
    async fn redis_down_counts_failures() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("redis+unix://{}", dir.path().join("none.sock").display());
        let counters = Arc::new(LiveCounters::default());
        let (tx, rx) = low_credit_channel(Arc::clone(&counters));
        let shutdown = CancellationToken::new();
        let task =
            spawn_publisher(&url, "cg:", rx, Arc::clone(&counters), shutdown.clone()).unwrap();
        for i in 0..10 {
            assert!(tx.send(event(&format!("a{i}"), "1", "2", 1), 0));
        }
        assert!(super::super::eventually(|| counters.events_failed.get() == 10).await);
        assert_eq!(counters.events_published.get(), 0);
        shutdown.cancel();
        task.await.unwrap();
        assert!(spawn_publisher(
            "nonsense",
            "cg:",
            low_credit_channel(Arc::clone(&counters)).1,
            counters,
            shutdown
        )
        .is_err());
    }
}
