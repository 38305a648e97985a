//! The in-memory credit snapshot shared by every worker (SPEC section 5).
//!
//! Accounts live in a `DashMap` (sharded locks, reads never wait for a whole-map lock); the
//! source-IP lookup structure ([`IpIndex`]) is updated per account, in place, alongside the
//! account's map entry. Sources (file, Redis) produce whole account sets or single accounts and
//! hand them to [`Snapshot::apply_full`] / [`Snapshot::upsert`] / [`Snapshot::remove`]; the SIP
//! core only reads.
//!
//! One writer per account: every change of an account, and of the index entries of its
//! addresses, is made while holding that account's map entry (its shard's write lock), so two
//! writers (a push update and a full refresh on another thread) can never interleave their
//! changes of one account, and the index always says what the map says. An update moves only
//! the changed account's addresses (new ones added first, then the old ones removed, so the
//! account stays findable throughout); nothing walks the whole map but the end of a full
//! refresh, which visits it once to remove the vanished accounts.
//!
//! A full refresh is applied as it is read ([`Snapshot::begin_full`], [`FullRefresh::feed`] per
//! account, [`FullRefresh::finish`]), so memory stays at the snapshot plus one read batch however
//! large the account set: new and changed entries are written as they arrive, every entry the
//! refresh meets is marked, and at the end the unmarked entries (vanished accounts) are removed.
//! Every known account stays visible at every instant. The `max_shrink` guard holds back only
//! the removals: a record that is present is the credit store's current truth (a push update
//! would apply it at once too), while a record that is missing may be missing because the
//! store was emptied or half-loaded.
//!
//! A push is never overtaken by older data: a full refresh reads for seconds, and a push update
//! of an account can be applied after the refresh read that account's record but before it
//! feeds it. Every push carries a stamp from the snapshot's update clock, and every record a
//! full refresh feeds carries the [`ReadTicket`] taken before it was read
//! ([`FullRefresh::feed_read_at`]); a record read before a push of its account was applied is
//! left out (the account still counts as met). A push that deleted an account leaves a stamp
//! of its own (a tombstone, dropped at the next refresh's start), so an older read cannot bring
//! the account back. This holds whatever the refresh's end: applied, held by the shrink guard,
//! or abandoned half-way.
//!
//! Time is an input: the snapshot stores when it was last loaded as an `Instant` given by the
//! caller, and age questions take `now` as an argument.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use ipnet::IpNet;
use rust_decimal::Decimal;
use rustc_hash::FxBuildHasher;
use smallvec::SmallVec;

use crate::credit::Account;
use crate::live::tariff::{dialled_number, Tariff, TariffEntry};

/// What the core needs to decide a call, copied out of the map in one statement (no `Ref` is
/// ever held across other work, see CRATES.md on dashmap deadlocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditView {
    pub enabled: bool,
    pub balance: Decimal,
    pub debit_limit: Decimal,
}

/// What the live check (SPEC 7) needs of an account for one call, copied out of the map in
/// one read: no allocation beyond `Arc` clones.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveView {
    pub enabled: bool,
    /// `balance + debit_limit`.
    pub available: Decimal,
    /// When the read of this record began: calls ended before it are in the balance.
    pub read_at: Instant,
    pub max_channels: Option<u32>,
    pub max_cps: Option<u32>,
    pub daily_spend_limit: Option<Decimal>,
    /// `spent_today`, 0 when absent.
    pub spent_today: Decimal,
    /// The price of the dialled number: the longest prefix of the account's tariff, else its
    /// `rate_per_min`; `None` when neither covers it.
    pub entry: Option<Arc<TariffEntry>>,
    /// The account's `rate_per_min` (time thresholds of low-credit events use it).
    pub rate_per_min: Option<Decimal>,
    /// The tariff the account names, and whether it is loaded.
    pub tariff: Option<(Arc<str>, bool)>,
}

/// The shared snapshot.
pub struct Snapshot {
    /// Account entries keyed with FxHash: ids come from the operator's credit store, and
    /// lookups never insert, so hash flooding is not a concern and the faster hash halves
    /// refresh time for a million accounts.
    accounts: DashMap<Arc<str>, Slot, FxBuildHasher>,
    /// The mark of the full refresh in progress (or of the last one): entries a refresh meets
    /// carry it, the others are the vanished accounts it removes.
    mark: AtomicU32,
    /// Source-IP index, updated per account under the account's map entry.
    ip_index: IpIndex,
    /// Reference point for `loaded_at_ns`.
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last successful full load; meaningful once `loaded`.
    loaded_at_ns: AtomicU64,
    loaded: AtomicBool,
    /// Generation counter: bumped by every applied full load and single update.
    generation: AtomicU64,
    /// The update clock: every push takes the next value as its stamp, a [`ReadTicket`] is its
    /// current value. 32 bits, compared by serial-number arithmetic (see [`pushed_after`]).
    clock: AtomicU32,
    /// Stamps of push updates that deleted an account (tombstones), so that a full refresh
    /// that read the account before the deletion does not bring it back. Pruned when a refresh
    /// begins (its reads all come after the stamps there).
    pushed_gone: DashMap<Arc<str>, u32, FxBuildHasher>,
    /// Tariffs by name (SPEC 7 "Rates"), replaced whole per tariff.
    tariffs: DashMap<Arc<str>, Arc<Tariff>, FxBuildHasher>,
}

/// A point in the snapshot's update order, taken before reading records from the credit store:
/// a record fed with it is not applied over a push of the same account applied after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadTicket(u32, u64);

/// Whether push stamp `stamp` was taken after `ticket` (0: no push). Wrapping comparison: valid
/// while fewer than 2^31 pushes separate the two, and stamps never grow that old: a refresh
/// that meets an account clears its stamp, and tombstones live one refresh.
fn pushed_after(stamp: u32, ticket: ReadTicket) -> bool {
    stamp != 0 && (stamp.wrapping_sub(ticket.0) as i32) > 0
}

impl ReadTicket {
    /// When the ticket was taken, ns after the snapshot's epoch: when the read of the records
    /// fed with it began (live credit drops the ended calls it covers, SPEC 7).
    fn read_ns(self) -> u64 {
        self.1
    }
}

/// One map entry. The account is boxed: a hash table has room for up to twice as many
/// entries as it holds (it grows by doubling), so inline 120-byte accounts would leave up to
/// half of a large table's memory empty; boxed, an empty bucket costs 32 bytes.
struct Slot {
    acct: Box<Account>,
    /// The mark of the last full refresh that met this account (see [`Snapshot::mark`]).
    mark: AtomicU32,
    /// Stamp of the push update that wrote this entry, 0 when a full refresh wrote it or met
    /// it since (see [`pushed_after`]).
    pushed: u32,
    /// When the latest read that wrote or confirmed this record began, ns after the epoch
    /// (SPEC 7: calls that ended before it are in the balance).
    read_ns: AtomicU64,
}

impl Slot {
    fn new(acct: Account, mark: u32, pushed: u32, read_ns: u64) -> Self {
        Slot {
            acct: Box::new(acct),
            mark: AtomicU32::new(mark),
            pushed,
            read_ns: AtomicU64::new(read_ns),
        }
    }

    /// Records a newer read of the same record.
    fn confirm(&self, read_ns: u64) {
        self.read_ns.fetch_max(read_ns, Ordering::AcqRel);
    }
}

/// Result of applying a full account set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub total: usize,
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

/// A full refresh that was not applied because it would drop too many known accounts.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("refresh held back: it would remove {would_remove} of {known} known accounts (more than max_shrink {max_shrink})")]
pub struct ShrinkHeld {
    pub would_remove: usize,
    pub known: usize,
    pub max_shrink: f64,
}

impl Snapshot {
    /// An empty snapshot that has never been loaded. `epoch` is any instant not after the first
    /// load (the daemon passes its start time).
    pub fn new(epoch: Instant) -> Self {
        Snapshot {
            accounts: DashMap::with_hasher(FxBuildHasher),
            mark: AtomicU32::new(0),
            ip_index: IpIndex::default(),
            epoch,
            loaded_at_ns: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            clock: AtomicU32::new(0),
            pushed_gone: DashMap::with_hasher(FxBuildHasher),
            tariffs: DashMap::with_hasher(FxBuildHasher),
        }
    }

    /// A ticket to take before reading records from the credit store (see the module header).
    /// It also dates the read: the records fed with it count as read now (the one clock read
    /// of this module: the read's start is what live credit needs, and only the source knows
    /// when that is, so it takes the ticket right before sending the read).
    pub fn read_ticket(&self) -> ReadTicket {
        let stamp = self.clock.load(Ordering::SeqCst);
        ReadTicket(stamp, self.ns_since_epoch(Instant::now()))
    }

    fn ns_since_epoch(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The stamp of a push update being applied: after every ticket taken so far.
    fn push_stamp(&self) -> u32 {
        loop {
            let stamp = self.clock.fetch_add(1, Ordering::SeqCst).wrapping_add(1);
            if stamp != 0 {
                return stamp;
            }
        }
    }

    /// Whether any full load ever succeeded.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Age of the data at `now`, `None` before the first load.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        if !self.is_loaded() {
            return None;
        }
        let at = self.epoch + Duration::from_nanos(self.loaded_at_ns.load(Ordering::Acquire));
        Some(now.saturating_duration_since(at))
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The credit fields of an account, copied out.
    pub fn credit(&self, id: &str) -> Option<CreditView> {
        self.accounts.get(id).map(|s| CreditView {
            enabled: s.acct.enabled,
            balance: s.acct.balance,
            debit_limit: s.acct.debit_limit,
        })
    }

    /// The live check's view of account `id` for a call to Request-URI user `ruri_user`
    /// (SPEC 7): one map read, the tariff lookup under it (a tariff is looked up in its own
    /// map; no account entry is held while another map is locked but that one, read-only).
    pub fn live_view(&self, id: &str, ruri_user: &[u8]) -> Option<LiveView> {
        let slot = self.accounts.get(id)?;
        let a = &slot.acct;
        let l = a.limits.as_deref();
        let rate_per_min = l.and_then(|l| l.rate_per_min);
        let rate_entry = || {
            l.and_then(|l| l.rate_entry.clone())
                .or_else(|| rate_per_min.map(|r| Arc::new(TariffEntry::per_minute(r))))
        };
        let (entry, tariff) = match l.and_then(|l| l.tariff.as_ref()) {
            Some(name) => match self.tariffs.get(&**name) {
                Some(t) => {
                    let hit =
                        dialled_number(ruri_user, a.tech_prefix.as_deref().map(str::as_bytes))
                            .and_then(|d| t.lookup(&d).cloned());
                    (hit.or_else(rate_entry), Some((Arc::clone(name), true)))
                }
                None => (rate_entry(), Some((Arc::clone(name), false))),
            },
            None => (rate_entry(), None),
        };
        Some(LiveView {
            enabled: a.enabled,
            available: a.balance.saturating_add(a.debit_limit),
            read_at: self.epoch + Duration::from_nanos(slot.read_ns.load(Ordering::Acquire)),
            max_channels: l.and_then(|l| l.max_channels),
            max_cps: l.and_then(|l| l.max_cps),
            daily_spend_limit: l.and_then(|l| l.daily_spend_limit),
            spent_today: l.and_then(|l| l.spent_today).unwrap_or_default(),
            entry,
            rate_per_min,
            tariff,
        })
    }

    /// A tariff by name.
    pub fn tariff(&self, name: &str) -> Option<Arc<Tariff>> {
        self.tariffs.get(name).map(|t| Arc::clone(&t))
    }

    /// Sets (adds or replaces) one tariff.
    pub fn set_tariff(&self, name: &str, tariff: Tariff) {
        self.tariffs.insert(Arc::from(name), Arc::new(tariff));
    }

    /// Removes one tariff; whether it was there.
    pub fn remove_tariff(&self, name: &str) -> bool {
        self.tariffs.remove(name).is_some()
    }

    /// A full refresh's tariff set: the tariffs read are set, those the source no longer has
    /// are removed, and those named in `keep` (read but bad: the previous version stays) are
    /// left as they are. Returns how many were removed.
    pub fn replace_tariffs(&self, read: Vec<(String, Tariff)>, keep: &[String]) -> usize {
        let names: std::collections::HashSet<&str> = read
            .iter()
            .map(|(n, _)| n.as_str())
            .chain(keep.iter().map(String::as_str))
            .collect();
        let before = self.tariffs.len();
        self.tariffs.retain(|k, _| names.contains(&**k));
        let removed = before - self.tariffs.len();
        for (name, t) in read {
            self.set_tariff(&name, t);
        }
        removed
    }

    /// Tariffs loaded, and their prefixes in all.
    pub fn tariff_counts(&self) -> (usize, usize) {
        let prefixes = self.tariffs.iter().map(|t| t.len()).sum();
        (self.tariffs.len(), prefixes)
    }

    /// The whole entry (admin API, tooling).
    pub fn account(&self, id: &str) -> Option<Account> {
        self.accounts.get(id).map(|s| Account::clone(&s.acct))
    }

    /// Source-IP identification: longest-prefix match, tech prefix disambiguation.
    pub fn lookup_ip(&self, ip: IpAddr, ruri_user: &[u8]) -> Option<Arc<str>> {
        self.ip_index.lookup(ip, ruri_user)
    }

    /// Marks the data as fresh at `now` without changing it (a source that confirmed the set
    /// unchanged).
    pub fn touch(&self, now: Instant) {
        let ns = now.saturating_duration_since(self.epoch).as_nanos();
        self.loaded_at_ns
            .store(u64::try_from(ns).unwrap_or(u64::MAX), Ordering::Release);
        self.loaded.store(true, Ordering::Release);
    }

    /// Applies a complete account set (a full refresh) in one call: [`Snapshot::begin_full`],
    /// [`FullRefresh::feed`] for each account, [`FullRefresh::finish`].
    pub fn apply_full(
        &self,
        accounts: Vec<Account>,
        now: Instant,
        max_shrink: f64,
        force: bool,
    ) -> Result<ApplyStats, ShrinkHeld> {
        let mut full = self.begin_full();
        for acct in accounts {
            full.feed(acct);
        }
        full.finish(now, max_shrink, force)
    }

    /// Starts a full refresh. One runs at a time (the daemon's refresh task serialises them); a
    /// refresh dropped without [`FullRefresh::finish`] (the source failed half-way) leaves what
    /// it wrote, removes nothing and does not count as a load.
    pub fn begin_full(&self) -> FullRefresh<'_> {
        let mark = self.mark.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        let ticket = self.read_ticket();
        // Tombstones older than this refresh's first read can no longer matter.
        self.pushed_gone
            .retain(|_, stamp| pushed_after(*stamp, ticket));
        FullRefresh {
            snap: self,
            mark,
            ticket,
            known: self.accounts.len(),
            added: 0,
            changed: 0,
        }
    }

    /// Inserts or replaces one account (a push update). A full refresh in flight that read
    /// this account before now will not overwrite it. The record counts as read now.
    pub fn upsert(&self, acct: Account) {
        self.upsert_read_at(acct, Instant::now());
    }

    /// [`Snapshot::upsert`] of a record whose read began at `read_at`.
    pub fn upsert_read_at(&self, acct: Account, read_at: Instant) {
        let read_ns = self.ns_since_epoch(read_at);
        // A full refresh in progress counts it as met: the store has it now.
        let mark = self.mark.load(Ordering::Acquire);
        match self.accounts.entry(Arc::clone(&acct.id)) {
            Entry::Occupied(mut e) => {
                let stamp = self.push_stamp();
                self.ip_index.update(Some(&e.get().acct), Some(&acct));
                e.insert(Slot::new(acct, mark, stamp, read_ns));
            }
            Entry::Vacant(e) => {
                let stamp = self.push_stamp();
                self.pushed_gone.remove(&*acct.id);
                self.ip_index.update(None, Some(&acct));
                e.insert(Slot::new(acct, mark, stamp, read_ns));
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes one account (a push update for a deleted or bad record). Returns whether it
    /// existed. Either way, a full refresh in flight that read the record before now will not
    /// bring it back.
    pub fn remove(&self, id: &str) -> bool {
        match self.accounts.entry(Arc::from(id)) {
            Entry::Occupied(e) => {
                let stamp = self.push_stamp();
                // The index entries go first, under the map entry's lock.
                self.ip_index.update(Some(&e.get().acct), None);
                let (key, _) = e.remove_entry();
                self.pushed_gone.insert(key, stamp);
                self.generation.fetch_add(1, Ordering::AcqRel);
                true
            }
            Entry::Vacant(e) => {
                let stamp = self.push_stamp();
                self.pushed_gone.insert(e.into_key(), stamp);
                false
            }
        }
    }
}

fn routing_differs(a: &Account, b: &Account) -> bool {
    a.ips != b.ips || a.tech_prefix != b.tech_prefix
}

/// A full refresh being applied (see the module header). Borrowing the snapshot, it is driven
/// by the source that reads the accounts.
pub struct FullRefresh<'s> {
    snap: &'s Snapshot,
    mark: u32,
    /// Taken when the refresh began: the ticket of records fed with [`FullRefresh::feed`].
    ticket: ReadTicket,
    /// Accounts in the snapshot when the refresh began.
    known: usize,
    added: usize,
    changed: usize,
}

impl<'s> FullRefresh<'s> {
    /// The snapshot this refresh applies to (for [`Snapshot::read_ticket`]).
    pub fn snapshot(&self) -> &'s Snapshot {
        self.snap
    }

    /// [`FullRefresh::feed_read_at`] for a record read after the refresh began (a source read
    /// whole before [`Snapshot::begin_full`], like the accounts file, has no push updates).
    pub fn feed(&mut self, acct: Account) {
        self.feed_read_at(acct, self.ticket);
    }

    /// Applies one account of the new set, read after `ticket` was taken: new and changed
    /// entries are written at once, an unchanged one is only marked. A record read before a
    /// push of its account was applied is left out (the push is newer; the account counts as
    /// met). An id met twice (SCAN may repeat keys) is harmless.
    pub fn feed_read_at(&mut self, acct: Account, ticket: ReadTicket) {
        let snap = self.snap;
        // Fast path under the shard's read lock only: an unchanged record (nearly all of a
        // refresh) or one a push superseded is only marked, so packet workers reading the same
        // shard never wait behind it. Anything else is decided again under the write lock.
        {
            if let Some(slot) = snap.accounts.get(&*acct.id) {
                if slot.pushed == 0 && *slot.acct == acct {
                    slot.mark.store(self.mark, Ordering::Release);
                    slot.confirm(ticket.read_ns());
                    return;
                }
                if pushed_after(slot.pushed, ticket) {
                    slot.mark.store(self.mark, Ordering::Release);
                    return;
                }
            }
        } // the read guard is gone before the entry below takes the write lock
        match snap.accounts.entry(Arc::clone(&acct.id)) {
            Entry::Occupied(mut e) => {
                e.get().mark.store(self.mark, Ordering::Release);
                let pushed = e.get().pushed;
                if pushed_after(pushed, ticket) {
                    return;
                }
                if pushed != 0 {
                    // Read after the push: from now on the store's record is the reference.
                    e.get_mut().pushed = 0;
                }
                if *e.get().acct == acct {
                    e.get().confirm(ticket.read_ns());
                    return;
                }
                self.changed += 1;
                snap.ip_index.update(Some(&e.get().acct), Some(&acct));
                e.insert(Slot::new(acct, self.mark, 0, ticket.read_ns()));
            }
            Entry::Vacant(e) => {
                let gone = snap.pushed_gone.get(&*acct.id).map(|g| *g);
                if let Some(stamp) = gone {
                    if pushed_after(stamp, ticket) {
                        return; // deleted by a push after this record was read
                    }
                    snap.pushed_gone.remove(&*acct.id);
                }
                self.added += 1;
                snap.ip_index.update(None, Some(&acct));
                e.insert(Slot::new(acct, self.mark, 0, ticket.read_ns()));
            }
        }
    }

    /// Ends the refresh: swaps in the IP index and removes the accounts the refresh did not
    /// meet. Unless `force`, removing more than `max_shrink` of the accounts known when it
    /// began is refused with [`ShrinkHeld`]: the written entries stay, nothing is removed, and
    /// the snapshot's age is not reset (the operator confirms with a forced refresh).
    pub fn finish(
        self,
        now: Instant,
        max_shrink: f64,
        force: bool,
    ) -> Result<ApplyStats, ShrinkHeld> {
        let snap = self.snap;
        let mark = self.mark;
        let met = |s: &Slot| s.mark.load(Ordering::Acquire) == mark;
        let would_remove = snap.accounts.iter().filter(|e| !met(e.value())).count();
        let known = self.known;
        let held = !force
            && snap.is_loaded()
            && known > 0
            && (would_remove as f64) > max_shrink * (known as f64);
        if held || would_remove == 0 {
            snap.generation.fetch_add(1, Ordering::AcqRel);
            if held {
                return Err(ShrinkHeld {
                    would_remove,
                    known,
                    max_shrink,
                });
            }
        } else {
            // Each vanished account leaves the index, then the map, under its entry's lock (a
            // push of it meanwhile re-marks it as met and keeps it).
            snap.accounts.retain(|_, s| {
                let keep = met(s);
                if !keep {
                    snap.ip_index.update(Some(&s.acct), None);
                }
                keep
            });
            snap.generation.fetch_add(1, Ordering::AcqRel);
        }
        snap.touch(now);
        Ok(ApplyStats {
            total: snap.accounts.len(),
            added: self.added,
            changed: self.changed,
            removed: would_remove,
        })
    }
}

/// One account reachable under a prefix.
#[derive(Debug, Clone)]
struct IpEntry {
    id: Arc<str>,
    tech_prefix: Option<Box<str>>,
}

type Candidates = SmallVec<[IpEntry; 1]>;

/// Longest-prefix-match table, updated per account in place: one concurrent hash table per
/// address family keyed by (prefix length, masked address), probed from the longest length
/// present down. The set of lengths present is a bit set read with one atomic load per family
/// (at most 33 or 129 probes, in practice a handful: real account sets use few distinct
/// lengths). Lookups take only the read lock of one shard per probe, never a global lock.
pub struct IpIndex {
    /// Key: prefix length << 32 | masked IPv4 address.
    v4: DashMap<u64, Candidates, FxBuildHasher>,
    v6: DashMap<(u8, u128), Candidates, FxBuildHasher>,
    lens: Lengths,
}

impl Default for IpIndex {
    fn default() -> Self {
        IpIndex {
            v4: DashMap::with_hasher(FxBuildHasher),
            v6: DashMap::with_hasher(FxBuildHasher),
            lens: Lengths::default(),
        }
    }
}

impl std::fmt::Debug for IpIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpIndex")
            .field("v4_prefixes", &self.v4.len())
            .field("v6_prefixes", &self.v6.len())
            .finish()
    }
}

/// Slots of [`Lengths::count`]: IPv4 lengths 0..=32, then IPv6 lengths 0..=128.
const V6_BASE: usize = 33;

/// Which prefix lengths have keys. A bit is set after its first key is inserted and cleared
/// after its last key is removed; writers recompute it from the count under `sync`, so the last
/// writer to touch a length leaves the bit right, whatever the interleaving.
struct Lengths {
    count: [AtomicU32; V6_BASE + 129],
    v4: AtomicU64,
    v6: [AtomicU64; 3],
    sync: Mutex<()>,
}

impl Default for Lengths {
    fn default() -> Self {
        Lengths {
            count: std::array::from_fn(|_| AtomicU32::new(0)),
            v4: AtomicU64::new(0),
            v6: std::array::from_fn(|_| AtomicU64::new(0)),
            sync: Mutex::new(()),
        }
    }
}

impl Lengths {
    fn counter(&self, slot: usize) -> Option<&AtomicU32> {
        self.count.get(slot)
    }

    /// A key of length slot `slot` was created (`up`) or removed.
    fn changed(&self, slot: usize, up: bool) {
        let Some(c) = self.counter(slot) else { return };
        let transition = if up {
            c.fetch_add(1, Ordering::AcqRel) == 0
        } else {
            c.fetch_sub(1, Ordering::AcqRel) == 1
        };
        if !transition {
            return;
        }
        let _g = self.sync.lock().unwrap_or_else(|e| e.into_inner());
        let present = c.load(Ordering::Acquire) > 0;
        let (word, bit) = if slot < V6_BASE {
            (&self.v4, slot)
        } else {
            let l = slot - V6_BASE;
            match self.v6.get(l / 64) {
                Some(w) => (w, l % 64),
                None => return,
            }
        };
        if present {
            word.fetch_or(1u64 << bit, Ordering::AcqRel);
        } else {
            word.fetch_and(!(1u64 << bit), Ordering::AcqRel);
        }
    }
}

fn mask4(ip: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        ip & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(ip: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        ip & (u128::MAX << (128 - u32::from(len)))
    }
}

fn key4(ip: u32, len: u8) -> u64 {
    (u64::from(len) << 32) | u64::from(mask4(ip, len))
}

/// Puts `id` (with its tech prefix) into a candidate list; an id already there gets the new
/// tech prefix.
fn put_candidate(c: &mut Candidates, id: &Arc<str>, tech_prefix: &Option<Box<str>>) {
    match c.iter_mut().find(|e| e.id == *id) {
        Some(e) => e.tech_prefix.clone_from(tech_prefix),
        None => c.push(IpEntry {
            id: Arc::clone(id),
            tech_prefix: tech_prefix.clone(),
        }),
    }
}

impl IpIndex {
    /// Builds an index from accounts (tests, tools).
    pub fn from_accounts<'a>(accounts: impl IntoIterator<Item = &'a Account>) -> IpIndex {
        let idx = IpIndex::default();
        for a in accounts {
            idx.update(None, Some(a));
        }
        idx
    }

    /// Moves one account's entries from `old` to `new` (either may be absent: an account
    /// added or removed). The caller holds the account's map entry, so no other writer changes
    /// this account's entries meanwhile. New addresses are added before the dropped ones are
    /// removed: the account is findable at every instant.
    fn update(&self, old: Option<&Account>, new: Option<&Account>) {
        if let (Some(o), Some(n)) = (old, new) {
            if !routing_differs(o, n) {
                return;
            }
        }
        if let Some(n) = new {
            for net in &n.ips {
                self.add(*net, &n.id, &n.tech_prefix);
            }
        }
        if let Some(o) = old {
            for net in &o.ips {
                if !new.is_some_and(|n| n.ips.contains(net)) {
                    self.del(*net, &o.id);
                }
            }
        }
    }

    fn add(&self, net: IpNet, id: &Arc<str>, tech_prefix: &Option<Box<str>>) {
        let mut created = false;
        let slot = match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let mut c = self
                    .v4
                    .entry(key4(u32::from(n.network()), len))
                    .or_insert_with(|| {
                        created = true;
                        Candidates::new()
                    });
                put_candidate(&mut c, id, tech_prefix);
                usize::from(len)
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let mut c = self
                    .v6
                    .entry((len, mask6(u128::from(n.network()), len)))
                    .or_insert_with(|| {
                        created = true;
                        Candidates::new()
                    });
                put_candidate(&mut c, id, tech_prefix);
                V6_BASE + usize::from(len)
            }
        };
        if created {
            self.lens.changed(slot, true);
        }
    }

    fn del(&self, net: IpNet, id: &str) {
        let (emptied, slot) = match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let emptied =
                    remove_candidate(self.v4.entry(key4(u32::from(n.network()), len)), id);
                (emptied, usize::from(len))
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let key = (len, mask6(u128::from(n.network()), len));
                let emptied = remove_candidate(self.v6.entry(key), id);
                (emptied, V6_BASE + usize::from(len))
            }
        };
        if emptied {
            self.lens.changed(slot, false);
        }
    }

    /// The account sending from `ip`: the longest matching prefix; when several accounts share
    /// it, the one whose tech prefix starts the Request-URI user (the longest such prefix if
    /// several do); still ambiguous → `None`.
    pub fn lookup(&self, ip: IpAddr, ruri_user: &[u8]) -> Option<Arc<str>> {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mut lens = self.lens.v4.load(Ordering::Acquire);
                while lens != 0 {
                    let len = 63 - lens.leading_zeros();
                    lens &= !(1u64 << len);
                    let len = u8::try_from(len).ok()?;
                    if let Some(c) = self.v4.get(&key4(bits, len)) {
                        return pick(&c, ruri_user);
                    }
                }
                None
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                for (w, word) in self.lens.v6.iter().enumerate().rev() {
                    let mut lens = word.load(Ordering::Acquire);
                    while lens != 0 {
                        let bit = 63 - lens.leading_zeros();
                        lens &= !(1u64 << bit);
                        let len = u8::try_from(w * 64 + bit as usize).ok()?;
                        if let Some(c) = self.v6.get(&(len, mask6(bits, len))) {
                            return pick(&c, ruri_user);
                        }
                    }
                }
                None
            }
        }
    }
}

/// The account among the candidates of one prefix (see [`IpIndex::lookup`]).
fn pick(cands: &Candidates, ruri_user: &[u8]) -> Option<Arc<str>> {
    if let [only] = cands.as_slice() {
        return Some(Arc::clone(&only.id));
    }
    let mut best: Option<&IpEntry> = None;
    let mut tie = false;
    for e in cands {
        let Some(tp) = e.tech_prefix.as_deref() else {
            continue;
        };
        if !ruri_user.starts_with(tp.as_bytes()) {
            continue;
        }
        match best {
            Some(b) if b.tech_prefix.as_deref().map_or(0, str::len) > tp.len() => {}
            Some(b) if b.tech_prefix.as_deref().map_or(0, str::len) == tp.len() => tie = true,
            _ => {
                best = Some(e);
                tie = false;
            }
        }
    }
    if tie {
        None
    } else {
        best.map(|e| Arc::clone(&e.id))
    }
}

/// Removes account `id` from one index slot; true when the slot became empty (and was removed).
fn remove_candidate<K: Eq + std::hash::Hash>(entry: Entry<'_, K, Candidates>, id: &str) -> bool {
    match entry {
        Entry::Occupied(mut e) => {
            e.get_mut().retain(|c| &*c.id != id);
            let empty = e.get().is_empty();
            if empty {
                e.remove();
            }
            empty
        }
        Entry::Vacant(_) => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::credit::parse_ips;

    fn acct(id: &str, bal: &str, ips: &str, tp: Option<&str>) -> Account {
        let mut a = Account::new(id, bal.parse().unwrap(), Decimal::ZERO);
        a.ips = parse_ips(ips).unwrap();
        a.tech_prefix = tp.map(Into::into);
        a
    }

    /// Issue 11: the live view prices the dialled number by the account's tariff (longest
    /// prefix, tech prefix and `+` removed), falls back to `rate_per_min`, says when the tariff
    /// is missing, and dates the record by the start of the read that last confirmed it.
    #[test]
    fn live_view_prices_by_tariff_and_dates_the_read() {
        let t0 = Instant::now();
        let s = Snapshot::new(t0);
        let mut a = Account::from_fields(
            "a",
            [
                ("balance", "2.50"),
                ("debit_limit", "0.50"),
                ("rate_per_min", "0.10"),
                ("tariff", "intl"),
                ("tech_prefix", "99#"),
                ("max_channels", "3"),
            ],
        )
        .unwrap();
        a.ips = Vec::new();
        s.apply_full(vec![a.clone()], t0, 0.5, false).unwrap();
        let rate = |v: &LiveView| v.entry.as_ref().map(|e| e.rate_per_min.to_string());
        // No tariff loaded yet: the account's rate, and the view says so.
        let v = s.live_view("a", b"99#+4420").unwrap();
        assert_eq!(rate(&v).as_deref(), Some("0.10"));
        assert_eq!(v.tariff, Some((Arc::from("intl"), false)));
        assert_eq!(v.available, "3.00".parse::<Decimal>().unwrap());
        assert_eq!(v.max_channels, Some(3));
        let mut t = Tariff::new();
        t.insert_str("44", "0.0500").unwrap();
        t.insert_str("4420", "0.0100 0.05 60/6").unwrap();
        s.set_tariff("intl", t);
        let v = s.live_view("a", b"99#+4420123").unwrap();
        assert_eq!(rate(&v).as_deref(), Some("0.0100"));
        assert_eq!(v.tariff, Some((Arc::from("intl"), true)));
        assert_eq!(
            rate(&s.live_view("a", b"99#4471").unwrap()).as_deref(),
            Some("0.0500")
        );
        // Not covered by the tariff: the account's rate.
        assert_eq!(
            rate(&s.live_view("a", b"99#33").unwrap()).as_deref(),
            Some("0.10")
        );
        assert_eq!(s.tariff_counts(), (1, 2));
        // An unchanged record read again moves the read time on.
        let first = s.live_view("a", b"").unwrap().read_at;
        std::thread::sleep(Duration::from_millis(2));
        s.apply_full(vec![a], t0, 0.5, false).unwrap();
        assert!(s.live_view("a", b"").unwrap().read_at > first);
        // A full tariff set without "intl" removes it; one naming it as kept does not.
        assert_eq!(s.replace_tariffs(Vec::new(), &["intl".to_owned()]), 0);
        assert_eq!(s.replace_tariffs(Vec::new(), &[]), 1);
        assert!(s.tariff("intl").is_none());
    }

    #[test]
    fn longest_prefix_and_tech_prefix() {
        let accts = [
            acct("wide", "1", "10.0.0.0/8", None),
            acct("narrow", "1", "10.1.0.0/16", None),
            acct("host", "1", "10.1.2.3", None),
            acct("shared-a", "1", "192.0.2.10", Some("4711#")),
            acct("shared-b", "1", "192.0.2.10", Some("4712#")),
            acct("shared-c", "1", "192.0.2.10", Some("4711#9")),
            acct("v6", "1", "2001:db8::/32", None),
        ];
        let idx = IpIndex::from_accounts(accts.iter());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases: [(&str, &str, Option<&str>); 11] = [
            ("10.9.9.9", "", Some("wide")),
            ("10.1.9.9", "", Some("narrow")),
            ("10.1.2.3", "", Some("host")),
            ("11.0.0.1", "", None),
            ("192.0.2.10", "4712#123", Some("shared-b")),
            ("192.0.2.10", "4711#123", Some("shared-a")),
            ("192.0.2.10", "4711#900", Some("shared-c")),
            ("192.0.2.10", "999", None),
            ("2001:db8::1", "", Some("v6")),
            ("::ffff:10.1.2.3", "", Some("host")),
            ("2001:db9::1", "", None),
        ];
        for (src, user, want) in cases {
            assert_eq!(
                idx.lookup(ip(src), user.as_bytes()).as_deref(),
                want,
                "{src} {user}"
            );
        }
    }

    /// The index follows each account's changes in place: a narrower prefix removed uncovers
    /// the wider one, a tech prefix change re-decides a shared address, an account moved to
    /// another family leaves the old one, a removal leaves the other accounts of a prefix.
    #[test]
    fn ip_index_is_updated_per_account() {
        let t0 = Instant::now();
        let s = Snapshot::new(t0);
        let ip = |x: &str| x.parse::<IpAddr>().unwrap();
        s.apply_full(
            vec![
                acct("wide", "1", "10.0.0.0/8", None),
                acct("narrow", "1", "10.1.0.0/16", None),
                acct("sa", "1", "192.0.2.10", Some("1#")),
                acct("sb", "1", "192.0.2.10", Some("2#")),
                acct("mover", "1", "198.51.100.7, 198.51.100.8", None),
            ],
            t0,
            0.5,
            false,
        )
        .unwrap();
        assert_eq!(s.lookup_ip(ip("10.1.2.3"), b"").as_deref(), Some("narrow"));
        assert!(s.remove("narrow"));
        assert_eq!(s.lookup_ip(ip("10.1.2.3"), b"").as_deref(), Some("wide"));
        s.upsert(acct("narrow", "1", "10.1.2.0/24", None));
        assert_eq!(s.lookup_ip(ip("10.1.2.3"), b"").as_deref(), Some("narrow"));
        assert_eq!(s.lookup_ip(ip("10.1.3.3"), b"").as_deref(), Some("wide"));

        assert_eq!(
            s.lookup_ip(ip("192.0.2.10"), b"2#55").as_deref(),
            Some("sb")
        );
        s.upsert(acct("sb", "1", "192.0.2.10", Some("3#")));
        assert_eq!(s.lookup_ip(ip("192.0.2.10"), b"2#55"), None);
        assert_eq!(
            s.lookup_ip(ip("192.0.2.10"), b"3#55").as_deref(),
            Some("sb")
        );
        assert!(s.remove("sb"));
        // The only one left at that address: no tech prefix needed.
        assert_eq!(s.lookup_ip(ip("192.0.2.10"), b"9").as_deref(), Some("sa"));

        s.upsert(acct("mover", "1", "198.51.100.8, 2001:db8::/48", None));
        assert_eq!(s.lookup_ip(ip("198.51.100.7"), b""), None);
        assert_eq!(
            s.lookup_ip(ip("198.51.100.8"), b"").as_deref(),
            Some("mover")
        );
        assert_eq!(
            s.lookup_ip(ip("2001:db8::5"), b"").as_deref(),
            Some("mover")
        );
        // A full refresh that drops it removes its addresses too.
        let mut full = s.begin_full();
        for id in ["wide", "narrow", "sa"] {
            let a = s.account(id).unwrap();
            full.feed(a);
        }
        full.finish(t0, 0.5, false).unwrap();
        assert_eq!(s.lookup_ip(ip("198.51.100.8"), b""), None);
        assert_eq!(s.lookup_ip(ip("2001:db8::5"), b""), None);
        assert_eq!(s.lookup_ip(ip("10.1.2.3"), b"").as_deref(), Some("narrow"));
    }

    #[test]
    fn shrink_guard_and_updates() {
        let t0 = Instant::now();
        let s = Snapshot::new(t0);
        assert!(!s.is_loaded());
        assert_eq!(s.age(t0), None);
        let set: Vec<Account> = (0..10)
            .map(|i| acct(&format!("a{i}"), "5", &format!("10.0.0.{i}"), None))
            .collect();
        let st = s.apply_full(set.clone(), t0, 0.5, false).unwrap();
        assert_eq!(st.added, 10);
        assert_eq!(
            s.age(t0 + Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            s.lookup_ip("10.0.0.3".parse().unwrap(), b"").as_deref(),
            Some("a3")
        );
        // Emptied source: held back, nothing changes.
        let held = s.apply_full(Vec::new(), t0, 0.5, false).unwrap_err();
        assert_eq!(held.would_remove, 10);
        assert_eq!(s.len(), 10);
        // Dropping 5 of 10 is exactly the limit: applied.
        let st = s.apply_full(set[..5].to_vec(), t0, 0.5, false).unwrap();
        assert_eq!(st.removed, 5);
        assert_eq!(s.lookup_ip("10.0.0.7".parse().unwrap(), b""), None);
        assert!(s.credit("a7").is_none());
        // Forced empty.
        s.apply_full(Vec::new(), t0, 0.5, true).unwrap();
        assert!(s.is_empty());
        // Push updates.
        s.upsert(acct("p", "0", "172.16.0.1", None));
        assert_eq!(s.credit("p").unwrap().balance, Decimal::ZERO);
        assert_eq!(
            s.lookup_ip("172.16.0.1".parse().unwrap(), b"").as_deref(),
            Some("p")
        );
        assert!(s.remove("p"));
        assert_eq!(s.lookup_ip("172.16.0.1".parse().unwrap(), b""), None);
        assert!(!s.remove("p"));
    }

    /// Item 7 (issue 9): push updates that move accounts' addresses and full refreshes (with
    /// changed and vanished accounts, so they touch the IP index too) run at the same time on
    /// several threads, and checker threads look every pushed account up by its current
    /// address whenever no push of it is in progress: it must always be found. A push and the
    /// refresh's read of the same account are serialised by a per-account "store" lock, as a
    /// Redis read and a write of one key are; every third refresh feeds what it read after
    /// releasing that lock, with the read ticket taken before (item 8), so pushes land between
    /// a read and its feed.
    #[test]
    fn concurrent_pushes_and_full_refreshes_keep_every_account_findable() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::Mutex;

        const PUSHED: usize = 48;
        const STATIC: usize = 3000;
        const ROUNDS: u32 = 40;
        fn pushed(i: usize, gen: u32) -> Account {
            let mut a = Account::new(&format!("p{i}"), Decimal::ONE, Decimal::ZERO);
            a.ips = vec![pushed_net(i, gen)];
            a
        }
        fn pushed_net(i: usize, gen: u32) -> IpNet {
            let ip = std::net::Ipv4Addr::new(10, 200, i as u8, (gen % 250) as u8);
            IpNet::from(IpAddr::V4(ip))
        }
        fn stat(i: usize, round: u32) -> Account {
            let mut a = Account::new(&format!("s{i}"), Decimal::ONE, Decimal::ZERO);
            // A few accounts move at every refresh, so each one changes the index.
            let moved = if i % 100 == 0 { round % 7 } else { 0 };
            let ip = std::net::Ipv4Addr::new(10, 1 + moved as u8, (i / 250) as u8, (i % 250) as u8);
            a.ips = vec![IpNet::from(IpAddr::V4(ip))];
            a
        }

        let t0 = Instant::now();
        let snap = Snapshot::new(t0);
        let initial: Vec<Account> = (0..STATIC)
            .map(|i| stat(i, 0))
            .chain((0..PUSHED).map(|i| pushed(i, 0)))
            .collect();
        snap.apply_full(initial, t0, 0.5, false).unwrap();
        // The credit store: each pushed account's current generation, behind its own lock.
        let store: Vec<Mutex<u32>> = (0..PUSHED).map(|_| Mutex::new(0)).collect();
        // Seqlock per pushed account: odd while a push of it is in progress.
        let seq: Vec<AtomicU64> = (0..PUSHED).map(|_| AtomicU64::new(0)).collect();
        let current: Vec<AtomicU32> = (0..PUSHED).map(|_| AtomicU32::new(0)).collect();
        let done = AtomicBool::new(false);
        let refreshes = AtomicUsize::new(0);
        let lost: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let last_round = AtomicU32::new(0);

        std::thread::scope(|sc| {
            // Full refreshes, back to back, some with vanished accounts.
            sc.spawn(|| {
                let mut round = 0u32;
                while !done.load(Ordering::Acquire) {
                    round += 1;
                    let mut full = snap.begin_full();
                    for i in 0..STATIC {
                        full.feed(stat(i, round));
                    }
                    if round % 2 == 0 {
                        for k in 0..20 {
                            full.feed(acct(&format!("v{k}"), "1", &format!("10.9.0.{k}"), None));
                        }
                    }
                    for (i, cell) in store.iter().enumerate() {
                        if round % 3 == 0 {
                            // Read and fed apart, as a Redis batch is: pushes may come between
                            // (item 8: the read ticket keeps the older read from winning).
                            let ticket = snap.read_ticket();
                            let gen = *cell.lock().unwrap();
                            std::thread::yield_now();
                            full.feed_read_at(pushed(i, gen), ticket);
                        } else {
                            let gen = cell.lock().unwrap();
                            full.feed(pushed(i, *gen));
                        }
                    }
                    let _ = full.finish(t0, 0.5, false);
                    refreshes.fetch_add(1, Ordering::Relaxed);
                }
            });
            // Checkers.
            for _ in 0..2 {
                sc.spawn(|| {
                    while !done.load(Ordering::Acquire) {
                        for i in 0..PUSHED {
                            let before = seq[i].load(Ordering::Acquire);
                            if before % 2 == 1 {
                                continue;
                            }
                            let gen = current[i].load(Ordering::Acquire);
                            let IpNet::V4(net) = pushed_net(i, gen) else {
                                continue;
                            };
                            let got = snap.lookup_ip(IpAddr::V4(net.addr()), b"");
                            std::sync::atomic::fence(Ordering::Acquire);
                            if seq[i].load(Ordering::Relaxed) != before {
                                continue; // pushed meanwhile: the answer may be stale
                            }
                            if got.as_deref() != Some(format!("p{i}").as_str()) {
                                lost.lock().unwrap().push(format!(
                                    "p{i} at {} (generation {gen}) -> {got:?}",
                                    net.addr()
                                ));
                            }
                        }
                    }
                });
            }
            // Pushes.
            sc.spawn(|| {
                // At least ROUNDS rounds, and on until a good number of refreshes overlapped.
                let mut round = 0;
                while round < ROUNDS || refreshes.load(Ordering::Relaxed) < 20 {
                    round += 1;
                    for i in 0..PUSHED {
                        let mut gen = store[i].lock().unwrap();
                        seq[i].fetch_add(1, Ordering::AcqRel);
                        *gen = round;
                        snap.upsert(pushed(i, round));
                        current[i].store(round, Ordering::Release);
                        seq[i].fetch_add(1, Ordering::AcqRel);
                    }
                }
                last_round.store(round, Ordering::Release);
                // Let at least one more refresh overlap the checkers after the last push.
                let seen = refreshes.load(Ordering::Relaxed);
                while refreshes.load(Ordering::Relaxed) < seen + 2 {
                    std::thread::yield_now();
                }
                done.store(true, Ordering::Release);
            });
        });
        let lost = lost.into_inner().unwrap();
        assert!(
            lost.is_empty(),
            "{} lookups missed an account ({} refreshes): {:?}",
            lost.len(),
            refreshes.load(Ordering::Relaxed),
            &lost[..lost.len().min(10)]
        );
        // And at rest: every account where the store says, and not where it was before.
        let last = last_round.load(Ordering::Acquire);
        for i in 0..PUSHED {
            let IpNet::V4(net) = pushed_net(i, last) else {
                unreachable!()
            };
            assert_eq!(
                snap.lookup_ip(IpAddr::V4(net.addr()), b"").as_deref(),
                Some(format!("p{i}").as_str())
            );
            assert_eq!(snap.lookup_ip(pushed_net(i, last - 1).network(), b""), None);
        }
        for i in (0..STATIC).step_by(7) {
            let a = stat(i, 0);
            if i % 100 != 0 {
                assert_eq!(
                    snap.lookup_ip(a.ips[0].network(), b"").as_deref(),
                    Some(&*a.id)
                );
            }
        }
    }

    /// How a full refresh ended, for the item 8 tests.
    #[derive(Debug, Clone, Copy)]
    enum Ending {
        Applied,
        HeldByShrinkGuard,
        LoadFailed,
    }

    /// Item 8 (issue 9): accounts pushed while a full refresh is in flight, whose records the
    /// refresh read before the push was applied, keep the pushed data on every path: the
    /// refresh applies, is held back by the shrink guard, or fails half-way. A suspension stays
    /// suspended, a deleted account stays deleted (and unfindable by address), a new account
    /// stays; accounts not pushed take the refresh's data.
    #[test]
    fn a_push_is_never_overtaken_by_an_older_full_refresh_read() {
        for ending in [
            Ending::Applied,
            Ending::HeldByShrinkGuard,
            Ending::LoadFailed,
        ] {
            let t0 = Instant::now();
            let s = Snapshot::new(t0);
            let set: Vec<Account> = (0..10)
                .map(|i| acct(&format!("a{i}"), "5", &format!("10.0.0.{i}"), None))
                .collect();
            s.apply_full(set.clone(), t0, 0.5, false).unwrap();

            let mut full = s.begin_full();
            // The refresh has read every record (as they were before the pushes below)...
            let mut read = set.clone();
            read[1].balance = Decimal::from(9); // a change nobody pushed
            let mut gone_then_back = acct("late", "5", "10.0.9.1", None);
            gone_then_back.enabled = true;
            read.push(gone_then_back);
            // ...then pushes apply: a suspension moved to a new address, a deletion, a new
            // account, and one created and deleted at once.
            let mut suspended = acct("a3", "0", "10.0.3.3", None);
            suspended.enabled = false;
            s.upsert(suspended.clone());
            assert!(s.remove("a4"));
            s.upsert(acct("new", "1", "10.0.8.8", None));
            assert!(!s.remove("late"));
            // ...and the refresh applies what it read.
            let max_shrink = match ending {
                Ending::HeldByShrinkGuard => {
                    read.truncate(5); // a0..a4 only: 5 of 10 would go, more than 0.3
                    0.3
                }
                _ => 0.5,
            };
            for a in read {
                full.feed(a);
            }
            match ending {
                Ending::Applied => {
                    full.finish(t0, max_shrink, false).unwrap();
                }
                Ending::HeldByShrinkGuard => {
                    full.finish(t0, max_shrink, false).unwrap_err();
                }
                Ending::LoadFailed => {
                    let _abandoned = full; // the source failed half-way
                }
            }

            let ip = |x: &str| x.parse::<IpAddr>().unwrap();
            assert_eq!(
                s.account("a3"),
                Some(suspended),
                "{ending:?}: push of a3 undone"
            );
            assert_eq!(
                s.lookup_ip(ip("10.0.3.3"), b"").as_deref(),
                Some("a3"),
                "{ending:?}"
            );
            assert_eq!(s.lookup_ip(ip("10.0.0.3"), b""), None, "{ending:?}");
            assert!(s.credit("a4").is_none(), "{ending:?}: deleted a4 is back");
            assert_eq!(s.lookup_ip(ip("10.0.0.4"), b""), None, "{ending:?}");
            assert!(
                s.credit("late").is_none(),
                "{ending:?}: deleted `late` is back"
            );
            assert_eq!(s.lookup_ip(ip("10.0.9.1"), b""), None, "{ending:?}");
            assert_eq!(
                s.credit("new").map(|c| c.balance),
                Some(Decimal::ONE),
                "{ending:?}"
            );
            assert_eq!(
                s.credit("a1").unwrap().balance,
                Decimal::from(9),
                "{ending:?}: the refresh's own change applies"
            );

            // A later refresh that read after the pushes applies normally, deletions included.
            let mut later = set.clone();
            later[3].balance = Decimal::from(7);
            later.retain(|a| &*a.id != "a4");
            let st = s.apply_full(later, t0, 0.5, false).unwrap();
            assert_eq!(
                s.credit("a3").unwrap().balance,
                Decimal::from(7),
                "{ending:?}"
            );
            assert!(s.credit("a3").unwrap().enabled, "{ending:?}");
            assert!(s.credit("new").is_none(), "{ending:?}");
            assert_eq!(st.total, 9, "{ending:?}");
            // And a record re-created after its deletion comes back with the next read.
            s.apply_full(set.clone(), t0, 0.5, false).unwrap();
            assert_eq!(s.lookup_ip(ip("10.0.0.4"), b"").as_deref(), Some("a4"));
        }
    }

    /// Per-batch read tickets: a record read after a push applies over it, one read before
    /// does not; the comparison survives the clock wrapping; the entry stays 24 bytes (the
    /// boxed account, the mark, the push stamp and the read time of live credit).
    #[test]
    fn read_tickets_order_records_and_pushes() {
        assert!(
            std::mem::size_of::<Slot>() <= 24,
            "{}",
            std::mem::size_of::<Slot>()
        );
        let t0 = Instant::now();
        let s = Snapshot::new(t0);
        // Start just below the wrap: pushes get stamps u32::MAX, (0 skipped), 1, 2...
        s.clock.store(u32::MAX - 1, Ordering::SeqCst);
        s.apply_full(vec![acct("x", "5", "10.0.0.1", None)], t0, 0.5, false)
            .unwrap();
        let mut full = s.begin_full();
        let before = s.read_ticket();
        s.upsert(acct("x", "1", "10.0.0.1", None));
        s.upsert(acct("x", "2", "10.0.0.1", None));
        full.feed_read_at(acct("x", "9", "10.0.0.1", None), before);
        assert_eq!(s.credit("x").unwrap().balance, Decimal::from(2));
        let after = full.snapshot().read_ticket();
        full.feed_read_at(acct("x", "3", "10.0.0.2", None), after);
        assert_eq!(s.credit("x").unwrap().balance, Decimal::from(3));
        assert_eq!(
            s.lookup_ip("10.0.0.2".parse().unwrap(), b"").as_deref(),
            Some("x")
        );
        // Deleted by a push after `after`, read before: stays deleted; read after: back.
        assert!(s.remove("x"));
        full.feed_read_at(acct("x", "3", "10.0.0.2", None), after);
        assert!(s.credit("x").is_none());
        let later = s.read_ticket();
        full.feed_read_at(acct("x", "4", "10.0.0.2", None), later);
        assert_eq!(s.credit("x").unwrap().balance, Decimal::from(4));
        full.finish(t0, 0.5, false).unwrap();
        assert!(s.pushed_gone.is_empty());
    }

    #[test]
    fn changed_balance_applies() {
        let t0 = Instant::now();
        let s = Snapshot::new(t0);
        s.apply_full(vec![acct("x", "5", "", None)], t0, 0.5, false)
            .unwrap();
        let st = s
            .apply_full(vec![acct("x", "0", "", None)], t0, 0.5, false)
            .unwrap();
        assert_eq!(st.changed, 1);
        assert_eq!(s.credit("x").unwrap().balance, Decimal::ZERO);
    }

    #[test]
    fn full_refresh_streams_and_the_guard_holds_only_removals() {
        let t0 = Instant::now();
        let s = Snapshot::new(t0);
        let set: Vec<Account> = (0..10)
            .map(|i| acct(&format!("a{i}"), "5", &format!("10.0.0.{i}"), None))
            .collect();
        s.apply_full(set.clone(), t0, 0.5, false).unwrap();
        let later = t0 + Duration::from_secs(60);

        // A refresh abandoned half-way (the source failed): what it wrote stays, nothing is
        // removed, the age is not reset.
        let mut full = s.begin_full();
        full.feed(acct("a0", "0", "10.0.0.0", None));
        full.feed(acct("new", "1", "10.9.9.9", None));
        let _abandoned = full;
        assert_eq!(s.credit("a0").unwrap().balance, Decimal::ZERO);
        assert_eq!(s.len(), 11);
        assert_eq!(s.age(later), Some(Duration::from_secs(60)));

        // Only 3 of 11 met: the 8 removals are held, the changes of the 3 apply (and the new
        // account's address is found), the age is not reset.
        let mut full = s.begin_full();
        full.feed(acct("a1", "7", "10.0.0.1", None));
        full.feed(acct("a2", "5", "10.0.0.2", None));
        full.feed(acct("b", "2", "10.0.1.1", None));
        let held = full.finish(later, 0.5, false).unwrap_err();
        assert_eq!((held.would_remove, held.known), (9, 11));
        assert_eq!(s.len(), 12);
        assert_eq!(s.credit("a1").unwrap().balance, Decimal::from(7));
        assert_eq!(
            s.lookup_ip("10.0.1.1".parse().unwrap(), b"").as_deref(),
            Some("b")
        );
        assert_eq!(s.age(later), Some(Duration::from_secs(60)));

        // A push update during a refresh counts as met; the unmet rest is removed when within
        // max_shrink, from the map and from the IP index.
        let mut full = s.begin_full();
        for a in &set[..8] {
            full.feed(a.clone());
        }
        s.upsert(acct("b", "3", "10.0.1.1", None));
        full.feed(acct("a0", "5", "10.0.0.0", None)); // fed twice (SCAN repeats keys)
        let st = full.finish(later, 0.5, false).unwrap();
        assert_eq!((st.total, st.removed), (9, 3));
        assert!(s.credit("new").is_none() && s.credit("a9").is_none());
        assert_eq!(s.credit("b").unwrap().balance, Decimal::from(3));
        assert_eq!(s.lookup_ip("10.9.9.9".parse().unwrap(), b""), None);
        assert_eq!(s.lookup_ip("10.0.0.9".parse().unwrap(), b""), None);
        assert_eq!(s.age(later), Some(Duration::ZERO));
    }
}
