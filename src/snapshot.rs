//! The in-memory credit snapshot shared by every worker (SPEC section 5).
//!
//! Accounts live in a `DashMap` (sharded locks, reads never wait for a whole-map lock); the
//! source-IP lookup structure is rebuilt off the packet path and swapped in atomically with
//! `ArcSwap`. Sources (file, Redis) produce whole account sets or single accounts and hand them to
//! [`Snapshot::apply_full`] / [`Snapshot::upsert`] / [`Snapshot::remove`]; the SIP core only reads.
//!
//! A full refresh is applied as it is read ([`Snapshot::begin_full`], [`FullRefresh::feed`] per
//! account, [`FullRefresh::finish`]), so memory stays at the snapshot plus one read batch however
//! large the account set: new and changed entries are written as they arrive, every entry the
//! refresh meets is marked, and at the end the IP index is swapped and the unmarked entries
//! (vanished accounts) are removed. Every known account stays visible at every instant. The
//! `max_shrink` guard holds back only the removals: a record that is present is the credit
//! store's current truth (a push update would apply it at once too), while a record that is
//! missing may be missing because the store was emptied or half-loaded.
//!
//! Time is an input: the snapshot stores when it was last loaded as an `Instant` given by the
//! caller, and age questions take `now` as an argument.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use ipnet::IpNet;
use rust_decimal::Decimal;
use rustc_hash::FxBuildHasher;
use smallvec::SmallVec;

use crate::credit::Account;

/// What the core needs to decide a call, copied out of the map in one statement (no `Ref` is
/// ever held across other work, see CRATES.md on dashmap deadlocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditView {
    pub enabled: bool,
    pub balance: Decimal,
    pub debit_limit: Decimal,
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
    ip_index: ArcSwap<IpIndex>,
    /// Reference point for `loaded_at_ns`.
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last successful full load; meaningful once `loaded`.
    loaded_at_ns: AtomicU64,
    loaded: AtomicBool,
    /// Generation counter: bumped by every applied full load and single update.
    generation: AtomicU64,
}

/// One map entry. The account is boxed: a hash table has room for up to twice as many
/// entries as it holds (it grows by doubling), so inline 120-byte accounts would leave up to
/// half of a large table's memory empty; boxed, an empty bucket costs 32 bytes.
struct Slot {
    acct: Box<Account>,
    /// The mark of the last full refresh that met this account (see [`Snapshot::mark`]).
    mark: AtomicU32,
}

impl Slot {
    fn new(acct: Account, mark: u32) -> Self {
        Slot {
            acct: Box::new(acct),
            mark: AtomicU32::new(mark),
        }
    }
}

/// How an incoming account compares with the snapshot's entry.
#[derive(Debug, Clone, Copy)]
enum Status {
    New,
    Same,
    Changed { routing: bool },
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
            ip_index: ArcSwap::from_pointee(IpIndex::default()),
            epoch,
            loaded_at_ns: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            generation: AtomicU64::new(0),
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

    /// The whole entry (admin API, tooling).
    pub fn account(&self, id: &str) -> Option<Account> {
        self.accounts.get(id).map(|s| Account::clone(&s.acct))
    }

    /// Source-IP identification: longest-prefix match, tech prefix disambiguation.
    pub fn lookup_ip(&self, ip: IpAddr, ruri_user: &[u8]) -> Option<Arc<str>> {
        self.ip_index.load().lookup(ip, ruri_user)
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
        FullRefresh {
            snap: self,
            mark,
            known: self.accounts.len(),
            added: 0,
            changed: 0,
            index_dirty: false,
        }
    }

    /// Inserts or replaces one account (a push update).
    pub fn upsert(&self, acct: Account) {
        let routing_changed = match self.accounts.get(&acct.id) {
            Some(prev) => routing_differs(&prev.acct, &acct),
            None => !acct.ips.is_empty(),
        };
        // A full refresh in progress counts it as met: the store has it now.
        let mark = self.mark.load(Ordering::Acquire);
        self.accounts
            .insert(Arc::clone(&acct.id), Slot::new(acct, mark));
        if routing_changed {
            self.rebuild_index_excluding(None);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes one account (a push update for a deleted record). Returns whether it existed.
    pub fn remove(&self, id: &str) -> bool {
        let had_ips = self.accounts.get(id).map(|s| !s.acct.ips.is_empty());
        let Some(had_ips) = had_ips else { return false };
        if had_ips {
            self.rebuild_index_excluding(Some(&|k: &str, _: &Slot| k != id));
        }
        self.accounts.remove(id);
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Rebuilds the IP index from the map, keeping only entries for which `keep` says so when
    /// given (it must not touch the map: the iteration holds a shard lock).
    fn rebuild_index_excluding(&self, keep: Option<&KeepFn<'_>>) {
        let mut builder = IpIndexBuilder::default();
        for entry in self.accounts.iter() {
            if keep.is_some_and(|k| !k(entry.key(), entry.value())) {
                continue;
            }
            let a = &entry.value().acct;
            for net in &a.ips {
                builder.add(*net, Arc::clone(&a.id), a.tech_prefix.clone());
            }
        }
        self.ip_index.store(Arc::new(builder.build()));
    }
}

/// Which entries an IP index rebuild keeps.
type KeepFn<'a> = dyn Fn(&str, &Slot) -> bool + 'a;

fn routing_differs(a: &Account, b: &Account) -> bool {
    a.ips != b.ips || a.tech_prefix != b.tech_prefix
}

/// A full refresh being applied (see the module header). Borrowing the snapshot, it is driven
/// by the source that reads the accounts.
pub struct FullRefresh<'s> {
    snap: &'s Snapshot,
    mark: u32,
    /// Accounts in the snapshot when the refresh began.
    known: usize,
    added: usize,
    changed: usize,
    /// Whether the IP index must be rebuilt (an account's `ips` or tech prefix changed).
    index_dirty: bool,
}

impl FullRefresh<'_> {
    /// Applies one account of the new set: new and changed entries are written at once, an
    /// unchanged one is only marked. An id met twice (SCAN may repeat keys) is harmless.
    pub fn feed(&mut self, acct: Account) {
        let st = match self.snap.accounts.get(&*acct.id) {
            None => Status::New,
            Some(prev) => {
                prev.mark.store(self.mark, Ordering::Release);
                if *prev.acct == acct {
                    Status::Same
                } else {
                    Status::Changed {
                        routing: routing_differs(&prev.acct, &acct),
                    }
                }
            }
        };
        match st {
            Status::Same => {}
            Status::New => {
                self.added += 1;
                self.index_dirty |= !acct.ips.is_empty();
                self.snap
                    .accounts
                    .insert(Arc::clone(&acct.id), Slot::new(acct, self.mark));
            }
            Status::Changed { routing } => {
                self.changed += 1;
                self.index_dirty |= routing;
                self.snap
                    .accounts
                    .insert(Arc::clone(&acct.id), Slot::new(acct, self.mark));
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
            if self.index_dirty {
                snap.rebuild_index_excluding(None);
            }
            snap.generation.fetch_add(1, Ordering::AcqRel);
            if held {
                return Err(ShrinkHeld {
                    would_remove,
                    known,
                    max_shrink,
                });
            }
        } else {
            // Index first (without the vanished accounts), then the entries themselves.
            snap.rebuild_index_excluding(Some(&|_: &str, s: &Slot| met(s)));
            snap.accounts.retain(|_, s| met(s));
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

/// Longest-prefix-match table: one hash map per prefix length present, probed from the longest
/// length down. At most 33 (IPv4) or 129 (IPv6) probes, in practice a handful, since real account
/// sets use few distinct lengths; built once per refresh.
#[derive(Debug, Default)]
pub struct IpIndex {
    v4: Vec<(u8, HashMap<u32, Candidates>)>,
    v6: Vec<(u8, HashMap<u128, Candidates>)>,
}

#[derive(Default)]
struct IpIndexBuilder {
    v4: HashMap<u8, HashMap<u32, Candidates>>,
    v6: HashMap<u8, HashMap<u128, Candidates>>,
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

impl IpIndexBuilder {
    fn add(&mut self, net: IpNet, id: Arc<str>, tech_prefix: Option<Box<str>>) {
        let entry = IpEntry { id, tech_prefix };
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let key = mask4(u32::from(n.network()), len);
                let c = self.v4.entry(len).or_default().entry(key).or_default();
                if !c.iter().any(|e| e.id == entry.id) {
                    c.push(entry);
                }
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let key = mask6(u128::from(n.network()), len);
                let c = self.v6.entry(len).or_default().entry(key).or_default();
                if !c.iter().any(|e| e.id == entry.id) {
                    c.push(entry);
                }
            }
        }
    }

    fn build(self) -> IpIndex {
        let mut v4: Vec<_> = self.v4.into_iter().collect();
        v4.sort_by_key(|e| std::cmp::Reverse(e.0));
        let mut v6: Vec<_> = self.v6.into_iter().collect();
        v6.sort_by_key(|e| std::cmp::Reverse(e.0));
        IpIndex { v4, v6 }
    }
}

impl IpIndex {
    /// Builds an index from accounts (tests, tools).
    pub fn from_accounts<'a>(accounts: impl IntoIterator<Item = &'a Account>) -> IpIndex {
        let mut b = IpIndexBuilder::default();
        for a in accounts {
            for net in &a.ips {
                b.add(*net, Arc::clone(&a.id), a.tech_prefix.clone());
            }
        }
        b.build()
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
        let cands = match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                self.v4
                    .iter()
                    .find_map(|(len, m)| m.get(&mask4(bits, *len)))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                self.v6
                    .iter()
                    .find_map(|(len, m)| m.get(&mask6(bits, *len)))
            }
        }?;
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
