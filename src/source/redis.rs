//! The `redis` credit source (SPEC section 5), the production way to feed creditgate.
//!
//! Schema: one HASH per account at `{prefix}account:{id}` whose fields are those of
//! [`Account::from_fields`] (`balance`, `debit_limit`, `enabled`, `ips`, ...), money as decimal
//! strings. A billing system changes a hash and `PUBLISH`es the account id on `{prefix}updates`.
//!
//! * [`RedisSource::refresh`]: a full refresh, `SCAN MATCH {prefix}account:* COUNT 5000` plus
//!   pipelined `HGETALL` in batches, several batches in flight, each batch applied to the
//!   snapshot as it is parsed ([`Snapshot::begin_full`]: memory stays at the snapshot plus a few
//!   batches). A bad record is reported in [`Refreshed::bad`] and left out; the rest loads. A
//!   Redis error fails the refresh ([`SourceError::Store`]): what was read stays applied,
//!   nothing is removed and the snapshot's age is not reset. Each batch takes a
//!   [`crate::snapshot::ReadTicket`] before it is sent, so a record it read before a push of
//!   the same account was applied never overwrites that push, on any path (applied, held back,
//!   failed).
//! * [`RedisSource::load_one`]: one account (push updates, tooling).
//! * [`RedisSource::spawn_updates`]: the push-update task. It subscribes to `{prefix}updates`,
//!   re-reads each published account at once and applies it to the snapshot, and resubscribes by
//!   itself with capped exponential back-off when the connection drops.
//!
//! All Redis I/O and reply parsing runs on a small runtime of the source's own (threads named
//! `creditgate-redis`), not on the runtime threads that serve SIP: a full load of a million
//! accounts is seconds of CPU, and packets must not queue behind it.
//!
//! Boundary: this module talks to Redis and builds accounts; it never decides a call. The
//! refresh policy (interval, shrink guard, forced refresh) is the daemon's
//! (`daemon::refresh`). Data commands go through one [`ConnectionManager`] (multiplexed, it
//! reconnects in the background); the subscription has a connection of its own, as pub/sub
//! requires.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult, Value};
use smallvec::SmallVec;
use tokio_util::sync::CancellationToken;

use super::{apply_tariffs, BadRecord, BadTariff, Refreshed, SourceError};
use crate::credit::{valid_account_id, valid_tariff_name, Account, TARIFF_NAME_RULE};
use crate::live::tariff::Tariff;
use crate::snapshot::{FullRefresh, Snapshot};

/// `COUNT` hint of each `SCAN` step. The SCAN walk is the one sequential part of a full load
/// (each step waits for the previous cursor), so it must stay ahead of the pipelined reads:
/// with 1000 it was the bottleneck (1M accounts: 4.2-5.8 s against 3.8-4.5 s with 5000,
/// BENCHMARKS.md), while one step of 5000 still costs Redis only a millisecond or two.
pub const SCAN_COUNT: usize = 5000;
/// Accounts read per pipelined `HGETALL` batch: ~50-100 KB of replies, one round trip per batch.
pub const READ_BATCH: usize = 1000;
/// Read batches in flight during a full load (under 1 MB of replies buffered at most).
const READ_AHEAD: usize = 8;
/// Time allowed to open a TCP connection to Redis (and for a subscription to be confirmed). A
/// local or same-datacentre Redis answers in milliseconds; past this it counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for one reply (one SCAN step or one pipelined batch of 1000 reads). Generous
/// for a busy Redis, short enough that a hung Redis fails the refresh instead of stalling it.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay (data connection and subscription).
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Reconnect delays double up to this cap: a restarted Redis is picked up within 10 s.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Reconnect attempts the connection manager makes inside one command before giving up on that
/// command (a refresh then fails and the next one tries again): 100 + 200 ms.
const MANAGER_RETRIES: usize = 2;
/// A failed load or push read is retried once after this pause: after Redis restarts, the first
/// command on a `ConnectionManager` fails before it reconnects (redis-rs #1415), and a refresh
/// should not wait a whole interval for that.
const LOAD_RETRY_DELAY: Duration = Duration::from_millis(250);
/// At most one log line per this period for repeated failures of the same kind.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Counters of the Redis source, for logs and the metrics exporter.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Full loads that failed (Redis unreachable, timed out, or answered an error).
    pub load_failures: AtomicU64,
    /// Push updates applied (upserts and removals).
    pub push_applied: AtomicU64,
    /// Push updates whose account could not be read (Redis error); the full refresh catches up.
    pub push_failures: AtomicU64,
    /// Failed attempts to (re)subscribe to `{prefix}updates`.
    pub subscribe_failures: AtomicU64,
    /// Bad records met by push updates (the account is taken out of the snapshot).
    pub push_bad_records: AtomicU64,
}

/// The Redis credit source. Cheap to share behind an `Arc`.
pub struct RedisSource {
    /// The source's own runtime (`creditgate-redis` threads): every Redis command, the
    /// connection driver, reply parsing and the push task run there, never on the runtime
    /// threads that serve SIP, so a full load of a million accounts cannot delay a packet by
    /// more than the OS scheduler does.
    runtime: OwnRuntime,
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    pub stats: RedisStats,
}

/// A runtime of its own (threads named `name`), kept alive by a dedicated OS thread, stopped
/// when dropped.
struct OwnRuntime {
    handle: tokio::runtime::Handle,
    stop: CancellationToken,
}

impl OwnRuntime {
    fn start(name: &str) -> std::io::Result<OwnRuntime> {
        // Two threads: the connection driver decodes replies on one while the load parses
        // accounts on the other.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(name)
            .on_thread_start(crate::sched::lower_thread_priority)
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || rt.block_on(stopped.cancelled()))?;
        Ok(OwnRuntime { handle, stop })
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl std::fmt::Debug for RedisSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("RedisSource")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// A Redis error as a source error (the text never contains the URL's password).
fn store_err(context: &str, e: &RedisError) -> SourceError {
    SourceError::Store(format!("redis {context}: {e}"))
}

/// Opens a client (no I/O yet; the URL is checked).
pub fn open_client(url: &str) -> RedisResult<Client> {
    Client::open(url)
}

/// A connection manager with explicit timeouts and capped back-off; connects lazily, so it can
/// be built while Redis is down. Must be called inside a tokio runtime.
pub fn connection_manager(client: &Client) -> RedisResult<ConnectionManager> {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_min_delay(BACKOFF_MIN)
        .set_max_delay(BACKOFF_MAX)
        .set_number_of_retries(MANAGER_RETRIES);
    client.get_connection_manager_lazy(cfg)
}

/// `{prefix}account:{id}`.
pub fn account_key(prefix: &str, id: &str) -> String {
    format!("{prefix}account:{id}")
}

/// `{prefix}updates`.
pub fn updates_channel(prefix: &str) -> String {
    format!("{prefix}updates")
}

/// What `HGETALL` gave for one account.
#[derive(Debug)]
pub enum Record {
    /// The key does not exist (any more).
    Missing,
    /// A usable account.
    Good(Account),
    /// A record that cannot be used.
    Bad(BadRecord),
}

/// The hash fields creditgate reads (SPEC section 5), in display order; others are ignored.
pub const ACCOUNT_FIELDS: [&str; 12] = [
    "balance",
    "debit_limit",
    "enabled",
    "ips",
    "tech_prefix",
    "currency",
    "max_channels",
    "max_cps",
    "rate_per_min",
    "daily_spend_limit",
    "spent_today",
    "tariff",
];

/// Turns one `HGETALL` reply into a [`Record`]: string fields as [`Account::from_fields`] takes
/// them. Non-UTF-8 field names or values make the record bad.
/// One `SCAN cursor MATCH pattern COUNT SCAN_COUNT`: the next cursor and the keys.
async fn scan_page(
    conn: &mut ConnectionManager,
    cursor: u64,
    pattern: &str,
) -> Result<(u64, Vec<Vec<u8>>), SourceError> {
    redis::cmd("SCAN")
        .arg(cursor)
        .arg("MATCH")
        .arg(pattern)
        .arg("COUNT")
        .arg(SCAN_COUNT)
        .query_async(conn)
        .await
        .map_err(|e| store_err("SCAN", &e))
}

/// Parses a `{prefix}tariff:{name}` hash (field = prefix, value = entry): `Ok(None)` when the
/// key is gone, `Err` naming the first bad field.
pub fn parse_tariff(name: &str, reply: RedisResult<Value>) -> Result<Option<Tariff>, BadTariff> {
    let bad = |field: &str, reason: String| BadTariff {
        name: name.to_owned(),
        field: field.to_owned(),
        reason,
    };
    if !valid_tariff_name(name) {
        return Err(bad("-", TARIFF_NAME_RULE.into()));
    }
    let value = reply.map_err(|e| bad("-", format!("cannot read the hash: {e}")))?;
    let pairs: Vec<(&Value, &Value)> = match &value {
        Value::Nil => return Ok(None),
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((k, v)),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items.iter().map(|(k, v)| (k, v)).collect(),
        other => return Err(bad("-", format!("not a hash (got {other:?})"))),
    };
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut t = Tariff::new();
    for (k, v) in pairs {
        let (Some(prefix), Some(entry)) = (value_str(k), value_str(v)) else {
            return Err(bad("-", "a field or value is not UTF-8 text".into()));
        };
        t.insert_str(prefix, entry)
            .map_err(|e| bad(prefix, e.to_string()))?;
    }
    Ok(Some(t))
}

pub fn parse_record(id: &str, reply: RedisResult<Value>) -> Record {
    let bad = |field: &str, reason: String| {
        Record::Bad(BadRecord {
            id: id.to_owned(),
            field: field.to_owned(),
            reason,
        })
    };
    let value = match reply {
        Ok(v) => v,
        Err(e) => return bad("-", format!("cannot read the hash: {e}")),
    };
    // On the stack for any record of the known fields (a million records per full load).
    let pairs: SmallVec<[(&Value, &Value); 12]> = match &value {
        Value::Nil => return Record::Missing,
        Value::Array(items) => {
            if items.is_empty() {
                return Record::Missing;
            }
            items
                .chunks(2)
                .filter_map(|c| match c {
                    [k, v] => Some((k, v)),
                    _ => None,
                })
                .collect()
        }
        Value::Map(items) => {
            if items.is_empty() {
                return Record::Missing;
            }
            items.iter().map(|(k, v)| (k, v)).collect()
        }
        other => return bad("-", format!("not a hash (got {other:?})")),
    };
    let mut fields: SmallVec<[(&str, &str); 12]> = SmallVec::new();
    for (k, v) in pairs {
        let Some(name) = value_str(k) else {
            return bad("-", "a field name is not UTF-8 text".into());
        };
        let Some(val) = value_str(v) else {
            return bad(name, "value is not UTF-8 text".into());
        };
        fields.push((name, val));
    }
    match Account::from_fields(id, fields) {
        Ok(a) => Record::Good(a),
        Err(e) => bad(e.field, e.reason),
    }
}

fn value_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

impl RedisSource {
    /// Builds the source and starts its threads; connects lazily (Redis may be down at start).
    pub fn new(url: &str, prefix: &str) -> Result<Self, SourceError> {
        let client = open_client(url).map_err(|e| store_err("URL", &e))?;
        let runtime = OwnRuntime::start("creditgate-redis")
            .map_err(|e| SourceError::Store(format!("cannot start the redis thread: {e}")))?;
        // Created inside the source's runtime, so its background tasks live there.
        let conn = {
            let _inside = runtime.handle.enter();
            connection_manager(&client).map_err(|e| store_err("connection", &e))?
        };
        Ok(RedisSource {
            runtime,
            client,
            conn,
            prefix: prefix.to_owned(),
            stats: RedisStats::default(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A full refresh of `snapshot` (see the module header and [`FullRefresh::finish`] for
    /// `max_shrink` and `force`). Retried once after a short pause when the first attempt fails
    /// (a reconnecting connection manager fails its first command).
    pub async fn refresh(
        self: &Arc<Self>,
        snapshot: &Arc<Snapshot>,
        max_shrink: f64,
        force: bool,
    ) -> Result<Refreshed, SourceError> {
        let me = Arc::clone(self);
        let snapshot = Arc::clone(snapshot);
        self.runtime
            .handle
            .spawn(async move { me.refresh_here(&snapshot, max_shrink, force).await })
            .await
            .map_err(|e| SourceError::Store(format!("redis load task: {e}")))?
    }

    /// [`RedisSource::refresh`] on the calling runtime.
    async fn refresh_here(
        &self,
        snapshot: &Snapshot,
        max_shrink: f64,
        force: bool,
    ) -> Result<Refreshed, SourceError> {
        let mut result = self.load_attempt(snapshot.begin_full()).await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, "redis full load failed; retrying once");
            tokio::time::sleep(LOAD_RETRY_DELAY).await;
            result = self.load_attempt(snapshot.begin_full()).await;
        }
        // Tariffs are few and small: read whole after the accounts, applied per tariff.
        let tariffs = match &result {
            Ok(_) => Some(self.load_tariffs().await),
            Err(_) => None,
        };
        match (result, tariffs) {
            (Ok(_), Some(Err(e))) => {
                self.stats.load_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            (Ok((full, bad)), tariffs) => {
                let (read, bad_tariffs) = tariffs.and_then(Result::ok).unwrap_or_default();
                let tariffs = apply_tariffs(snapshot, read, &bad_tariffs);
                Ok(Refreshed {
                    applied: full.finish(Instant::now(), max_shrink, force),
                    bad,
                    bad_tariffs,
                    tariffs,
                })
            }
            (Err(e), _) => {
                self.stats.load_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Reads every tariff: `SCAN MATCH {prefix}tariff:*`, one pipelined `HGETALL` per key.
    /// A tariff with a bad field is reported whole (its previous version stays).
    pub async fn load_tariffs(
        &self,
    ) -> Result<(Vec<(String, Tariff)>, Vec<BadTariff>), SourceError> {
        let mut conn = self.conn.clone();
        let head = format!("{}tariff:", self.prefix);
        let pattern = format!("{head}*");
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch) = scan_page(&mut conn, cursor, &pattern).await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for chunk in keys.chunks(READ_BATCH) {
            let replies = self.fetch_batch(&mut conn, chunk).await?;
            for (key, reply) in chunk.iter().zip(replies) {
                let name =
                    String::from_utf8_lossy(key.get(head.len()..).unwrap_or_default()).into_owned();
                match parse_tariff(&name, reply) {
                    Ok(Some(t)) => good.push((name, t)),
                    Ok(None) => {} // deleted between SCAN and HGETALL
                    Err(b) => bad.push(b),
                }
            }
        }
        Ok((good, bad))
    }

    /// Re-reads one tariff (a push of `tariff:NAME`): set, removed when gone, kept as it was
    /// when bad or unreadable.
    pub async fn apply_tariff(&self, snapshot: &Snapshot, name: &str) {
        let mut conn = self.conn.clone();
        let reply: RedisResult<Value> = redis::cmd("HGETALL")
            .arg(format!("{}tariff:{name}", self.prefix))
            .query_async(&mut conn)
            .await;
        if let Err(e) = &reply {
            if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                self.stats.push_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tariff = %name, error = %e, "tariff push update could not be read; the next full refresh catches up");
                return;
            }
        }
        match parse_tariff(name, reply) {
            Ok(Some(t)) => {
                tracing::info!(tariff = %name, prefixes = t.len(), "tariff push update applied");
                snapshot.set_tariff(name, t);
                self.stats.push_applied.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => {
                let had = snapshot.remove_tariff(name);
                tracing::info!(tariff = %name, existed = had, "tariff push update: tariff gone");
                self.stats.push_applied.fetch_add(1, Ordering::Relaxed);
            }
            Err(b) => {
                self.stats.push_bad_records.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(tariff = %b.name, field = %b.field, reason = %b.reason, "tariff push update: bad tariff; its previous version stays");
            }
        }
    }

    /// Reads every account into `full`; returns it (to be finished) with the bad records.
    async fn load_attempt<'s>(
        &self,
        mut full: FullRefresh<'s>,
    ) -> Result<(FullRefresh<'s>, Vec<BadRecord>), SourceError> {
        let t0 = Instant::now();
        // The SCAN walk and the read batches overlap: up to READ_AHEAD batches are in flight
        // while earlier replies are parsed and applied, so Redis and this task work at the
        // same time.
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Vec<u8>>>(READ_AHEAD);
        let head_len = self.prefix.len() + "account:".len();
        let scanner = self.scan_ids(tx);
        let snapshot = full.snapshot();
        let full_ref = &mut full;
        let reader = async move {
            let mut bad = Vec::new();
            let mut accounts = 0usize;
            let batches = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (b, rx))
            });
            let mut replies = std::pin::pin!(batches
                .map(|ids| {
                    let mut conn = self.conn.clone();
                    async move {
                        // Before the batch is sent: a push applied after this point is newer
                        // than what the batch reads.
                        let ticket = snapshot.read_ticket();
                        let r = self.fetch_batch(&mut conn, &ids).await;
                        (ids, ticket, r)
                    }
                })
                .buffered(READ_AHEAD));
            while let Some((keys, ticket, replies)) = replies.next().await {
                for (key, reply) in keys.iter().zip(replies?) {
                    // scan_ids only passes keys with the head and a valid (ASCII) id.
                    let id = key
                        .get(head_len..)
                        .and_then(|b| std::str::from_utf8(b).ok())
                        .unwrap_or_default();
                    match parse_record(id, reply) {
                        Record::Missing => {} // deleted between SCAN and HGETALL
                        Record::Good(a) => {
                            accounts += 1;
                            full_ref.feed_read_at(a, ticket);
                        }
                        Record::Bad(b) => bad.push(b),
                    }
                }
            }
            Ok::<_, SourceError>((accounts, bad))
        };
        let (scanned, read) = tokio::join!(scanner, reader);
        // A SCAN error ends the batches early: check it first, the read part is then incomplete.
        let bad_ids = scanned?;
        let (accounts, mut bad) = read?;
        bad.extend(bad_ids);
        // SCAN may return a key more than once (while Redis rehashes). A repeated account is
        // harmless to `FullRefresh::feed` (same id, same data); a repeated bad record would be
        // logged twice.
        bad.sort_by(|a, b| a.id.cmp(&b.id));
        bad.dedup_by(|a, b| a.id == b.id);
        tracing::debug!(
            accounts,
            bad = bad.len(),
            took_ms = t0.elapsed().as_millis() as u64,
            "redis full load read"
        );
        Ok((full, bad))
    }

    /// Walks `SCAN MATCH {prefix}account:*` and sends the ids in batches of [`READ_BATCH`];
    /// returns the keys whose id is unusable. Stops early when the reader is gone (it failed).
    async fn scan_ids(
        &self,
        tx: tokio::sync::mpsc::Sender<Vec<Vec<u8>>>,
    ) -> Result<Vec<BadRecord>, SourceError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}account:*", self.prefix);
        let key_head = format!("{}account:", self.prefix);
        let mut bad = Vec::new();
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(READ_BATCH);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys) = scan_page(&mut conn, cursor, &pattern).await?;
            for key in keys {
                let Some(rest) = key.strip_prefix(key_head.as_bytes()) else {
                    continue;
                };
                let id = std::str::from_utf8(rest)
                    .ok()
                    .filter(|id| valid_account_id(id));
                if id.is_none() {
                    bad.push(BadRecord {
                        id: String::from_utf8_lossy(rest).into_owned(),
                        field: "id".into(),
                        reason: "must be 1-128 printable characters without spaces".into(),
                    });
                    continue;
                }
                batch.push(key);
                if batch.len() >= READ_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(READ_BATCH));
                    if tx.send(full).await.is_err() {
                        return Ok(bad);
                    }
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        if !batch.is_empty() {
            let _ = tx.send(batch).await;
        }
        Ok(bad)
    }

    /// One pipelined `HGETALL` per key; per-command errors (WRONGTYPE) stay per record.
    async fn fetch_batch(
        &self,
        conn: &mut ConnectionManager,
        keys: &[Vec<u8>],
    ) -> Result<Vec<RedisResult<Value>>, SourceError> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGETALL").arg(key);
        }
        let replies: Vec<RedisResult<Value>> = pipe
            .ignore_errors()
            .query_async(conn)
            .await
            .map_err(|e| store_err("HGETALL", &e))?;
        if replies.len() != keys.len() {
            return Err(SourceError::Store(format!(
                "redis HGETALL: {} replies for {} commands",
                replies.len(),
                keys.len()
            )));
        }
        Ok(replies)
    }

    /// Reads one account.
    pub async fn load_one(&self, id: &str) -> Result<Record, SourceError> {
        if !valid_account_id(id) {
            return Ok(Record::Bad(BadRecord {
                id: id.to_owned(),
                field: "id".into(),
                reason: "must be 1-128 printable characters without spaces".into(),
            }));
        }
        let mut conn = self.conn.clone();
        let reply: RedisResult<Value> = redis::cmd("HGETALL")
            .arg(account_key(&self.prefix, id))
            .query_async(&mut conn)
            .await;
        match reply {
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                Err(store_err("HGETALL", &e))
            }
            other => Ok(parse_record(id, other)),
        }
    }

    /// Re-reads one account and applies it to the snapshot: upsert, or remove when the key is
    /// gone or the record is bad (a bad record is never admitted). A Redis error leaves the
    /// snapshot as it was; the next full refresh catches up. A full refresh in flight that read
    /// the account before this is applied does not overwrite it ([`Snapshot::upsert`]). Called
    /// by the push task only, one account at a time, so two reads of one account never race.
    pub async fn apply_one(&self, snapshot: &Snapshot, id: &str) {
        if !valid_account_id(id) {
            // Not an account id (a stray message on the channel): nothing to re-read.
            let head: String = id.chars().take(64).collect();
            tracing::debug!(payload = %head.escape_debug(), "push update with an invalid account id ignored");
            return;
        }
        // When the read began: live credit drops the calls that ended before it (SPEC 7).
        let mut read_at = Instant::now();
        let mut read = self.load_one(id).await;
        if read.is_err() {
            // Once more after a pause: the first command after a reconnect fails (#1415).
            tokio::time::sleep(LOAD_RETRY_DELAY).await;
            read_at = Instant::now();
            read = self.load_one(id).await;
        }
        match read {
            Ok(Record::Good(acct)) => {
                tracing::debug!(account = %id, balance = %acct.balance, "push update applied");
                snapshot.upsert_read_at(acct, read_at);
                self.stats.push_applied.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Record::Missing) => {
                let had = snapshot.remove(id);
                tracing::debug!(account = %id, existed = had, "push update: account gone");
                self.stats.push_applied.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Record::Bad(bad)) => {
                tracing::warn!(account = %bad.id, field = %bad.field, reason = %bad.reason, "push update: bad account record; the account is refused until fixed");
                snapshot.remove(id);
                self.stats.push_bad_records.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.push_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(account = %id, error = %e, "push update could not be read; the next full refresh catches up");
            }
        }
    }

    /// The push-update task: subscribes to `{prefix}updates` and applies each published account
    /// id at once, until `shutdown`. Reconnects by itself with exponential back-off from
    /// [`BACKOFF_MIN`] to [`BACKOFF_MAX`]; failures are counted and logged at most once a minute.
    /// `on_resubscribed` runs after every subscription but the first (updates published while
    /// unsubscribed were missed: the daemon triggers a full refresh); `on_applied` after every
    /// published update handled (metrics).
    pub fn spawn_updates<F, G>(
        self: &Arc<Self>,
        snapshot: Arc<Snapshot>,
        shutdown: CancellationToken,
        on_resubscribed: F,
        on_applied: G,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn() + Send + 'static,
        G: Fn() + Send + 'static,
    {
        let me = Arc::clone(self);
        self.runtime
            .handle
            .spawn(me.run_updates(snapshot, shutdown, on_resubscribed, on_applied))
    }

    /// The body of [`RedisSource::spawn_updates`], on the calling runtime.
    async fn run_updates<F, G>(
        self: Arc<Self>,
        snapshot: Arc<Snapshot>,
        shutdown: CancellationToken,
        on_resubscribed: F,
        on_applied: G,
    ) where
        F: Fn() + Send,
        G: Fn() + Send,
    {
        let channel = updates_channel(&self.prefix);
        let mut backoff = BACKOFF_MIN;
        let mut subscribed_before = false;
        let mut failures_in_row: u64 = 0;
        let mut limiter = LogLimiter::default();
        loop {
            let attempt = async {
                let mut ps = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
                    .await
                    .map_err(|_| "connect timed out".to_owned())?
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(CONNECT_TIMEOUT, ps.subscribe(&channel))
                    .await
                    .map_err(|_| "SUBSCRIBE timed out".to_owned())?
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(ps)
            };
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = attempt => r,
            };
            let mut pubsub = match pubsub {
                Ok(p) => p,
                Err(e) => {
                    failures_in_row += 1;
                    self.stats
                        .subscribe_failures
                        .fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = limiter.allow(Instant::now()) {
                        tracing::warn!(error = %e, failures_in_row, suppressed, retry_in_ms = backoff.as_millis() as u64, channel = %channel, "cannot subscribe to push updates; retrying with back-off");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            if subscribed_before {
                tracing::info!(channel = %channel, failures_in_row, "push updates resubscribed; refreshing to catch up on missed updates");
                on_resubscribed();
            } else {
                tracing::info!(channel = %channel, "subscribed to push updates");
            }
            subscribed_before = true;
            failures_in_row = 0;
            backoff = BACKOFF_MIN;
            limiter = LogLimiter::default();
            let mut stream = pubsub.on_message();
            loop {
                let msg = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    m = stream.next() => m,
                };
                let Some(msg) = msg else {
                    tracing::warn!(channel = %channel, "push-update subscription lost; reconnecting");
                    break;
                };
                match std::str::from_utf8(msg.get_payload_bytes()) {
                    Ok(id) => {
                        // `tariff:NAME` re-reads a tariff (an account id of that form is only
                        // re-read by the full refresh; docs/redis.md).
                        match id.trim().strip_prefix("tariff:") {
                            Some(name) => self.apply_tariff(&snapshot, name).await,
                            None => self.apply_one(&snapshot, id.trim()).await,
                        }
                        on_applied();
                    }
                    Err(_) => {
                        tracing::debug!("push update with a non-UTF-8 payload ignored");
                    }
                }
            }
        }
    }
}

/// Rate limit for repeated failure logs: the first one, then at most one per [`LOG_EVERY`].
#[derive(Debug, Default)]
struct LogLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// `Some(number suppressed since the last line)` when a line may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {

    /// Issue 11: a tariff hash parses into prefixes; a bad field names the tariff and field;
    /// an empty or missing key is gone.
    #[test]
    fn tariff_hashes_parse_and_bad_fields_are_named() {
        let hash = |pairs: &[(&str, &str)]| {
            Ok(Value::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| {
                        [
                            Value::BulkString(k.as_bytes().to_vec()),
                            Value::BulkString(v.as_bytes().to_vec()),
                        ]
                    })
                    .collect(),
            ))
        };
        let t = parse_tariff("intl", hash(&[("44", "0.05"), ("4420", "0.01 0.05 60/6")]))
            .unwrap()
            .unwrap();
        assert_eq!(t.len(), 2);
        let e = parse_tariff("intl", hash(&[("44", "0.05"), ("44", "abc")])).unwrap_err();
        assert_eq!((e.name.as_str(), e.field.as_str()), ("intl", "44"));
        let e = parse_tariff("intl", hash(&[("4x", "0.05")])).unwrap_err();
        assert_eq!(e.field, "4x");
        assert!(parse_tariff("intl", Ok(Value::Nil)).unwrap().is_none());
        assert!(parse_tariff("intl", hash(&[])).unwrap().is_none());
        assert!(parse_tariff("bad name", hash(&[("1", "1")])).is_err());
    }
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn records_parse_like_the_file_source() {
        let flat = Value::Array(vec![
            bulk("balance"),
            bulk("12.5000"),
            bulk("debit_limit"),
            bulk("0"),
            bulk("enabled"),
            bulk("1"),
            bulk("ips"),
            bulk("10.0.0.1, 10.1.0.0/16"),
            bulk("extra"),
            bulk("ignored"),
        ]);
        let Record::Good(a) = parse_record("acme", Ok(flat)) else {
            panic!("expected a good record")
        };
        assert_eq!(a.balance.to_string(), "12.5000");
        assert_eq!(a.ips.len(), 2);
        let map = Value::Map(vec![(bulk("balance"), bulk("1"))]);
        assert!(matches!(parse_record("m", Ok(map)), Record::Good(_)));
        assert!(matches!(
            parse_record("x", Ok(Value::Array(vec![]))),
            Record::Missing
        ));
        let bad = Value::Array(vec![bulk("balance"), bulk("12,50")]);
        match parse_record("b", Ok(bad)) {
            Record::Bad(b) => assert_eq!((b.id.as_str(), b.field.as_str()), ("b", "balance")),
            other => panic!("{other:?}"),
        }
        let latin1 = Value::Array(vec![
            bulk("balance"),
            bulk("1"),
            bulk("currency"),
            Value::BulkString(vec![0xe9]),
        ]);
        match parse_record("c", Ok(latin1)) {
            Record::Bad(b) => assert_eq!(b.field, "currency"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_record("n", Ok(Value::Int(3))),
            Record::Bad(_)
        ));
    }

    /// SPEC 4: negative money/rate fields and counts make the record bad, naming the field;
    /// a negative balance or debit_limit is a valid post-pay account.
    #[test]
    fn negative_money_and_counts_are_bad_records() {
        for (field, value) in [
            ("rate_per_min", "-0.0100"),
            ("daily_spend_limit", "-5"),
            ("spent_today", "-0.5"),
            ("max_cps", "-1"),
            ("max_channels", "-3"),
        ] {
            let reply = Value::Array(vec![bulk("balance"), bulk("1"), bulk(field), bulk(value)]);
            match parse_record("neg", Ok(reply)) {
                Record::Bad(b) => assert_eq!((b.id.as_str(), b.field.as_str()), ("neg", field)),
                other => panic!("{field} = {value}: {other:?}"),
            }
        }
        let postpay = Value::Array(vec![
            bulk("balance"),
            bulk("-42.17"),
            bulk("debit_limit"),
            bulk("-5"),
        ]);
        assert!(matches!(parse_record("p", Ok(postpay)), Record::Good(_)));
    }

    #[test]
    fn log_limiter_allows_one_line_a_minute() {
        let t0 = Instant::now();
        let mut l = LogLimiter::default();
        assert_eq!(l.allow(t0), Some(0));
        assert_eq!(l.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(l.allow(t0 + LOG_EVERY), Some(2));
    }

    #[test]
    fn keys() {
        assert_eq!(account_key("cg:", "a1"), "cg:account:a1");
        assert_eq!(updates_channel("cg:"), "cg:updates");
    }
}
