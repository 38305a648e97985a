//! The in-memory credit snapshot shared by every worker (SPEC section 5).
//!
//! Accounts live in a `DashMap` (sharded locks, reads never wait for a whole-map lock); the
//! source-IP lookup structure is rebuilt off the packet path and swapped in atomically with
//! `ArcSwap`. Sources (file, Redis) produce whole account sets or single accounts and hand them to
//! [`Snapshot::apply_full`] / [`Snapshot::upsert`] / [`Snapshot::remove`]; the SIP core only reads.
//!
//! Update order keeps every known account visible at every instant: new and changed entries are
//! written first, then the IP index is swapped, then vanished accounts are removed.
//!
//! Time is an input: the snapshot stores when it was last loaded as an `Instant` given by the
//! caller, and age questions take `now` as an argument.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Account entries stored inline (no second allocation per account), keyed with FxHash:
    /// ids come from the operator's credit store, and lookups never insert, so hash flooding
    /// is not a concern and the faster hash halves refresh time for a million accounts.
    accounts: DashMap<Arc<str>, Account, FxBuildHasher>,
    ip_index: ArcSwap<IpIndex>,
    /// Reference point for `loaded_at_ns`.
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last successful full load; meaningful once `loaded`.
    loaded_at_ns: AtomicU64,
    loaded: AtomicBool,
    /// Generation counter: bumped by every applied full load and single update.
    generation: AtomicU64,
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
        self.accounts.get(id).map(|a| CreditView {
            enabled: a.enabled,
            balance: a.balance,
            debit_limit: a.debit_limit,
        })
    }

    /// The whole entry (admin API, tooling).
    pub fn account(&self, id: &str) -> Option<Account> {
        self.accounts.get(id).map(|a| a.value().clone())
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

    /// Applies a complete account set (a full refresh). Unless `force`, a set that would remove
    /// more than `max_shrink` of the known accounts is refused with [`ShrinkHeld`] and nothing
    /// changes. Admissions continue throughout.
    pub fn apply_full(
        &self,
        accounts: Vec<Account>,
        now: Instant,
        max_shrink: f64,
        force: bool,
    ) -> Result<ApplyStats, ShrinkHeld> {
        // Pass 1: classify every incoming account against the current entry (one lookup each,
        // nothing written), which also counts how many known accounts the new set keeps.
        let known = self.accounts.len();
        let mut status: Vec<Status> = Vec::with_capacity(accounts.len());
        let mut kept = 0usize;
        for acct in &accounts {
            let st = match self.accounts.get(&*acct.id) {
                None => Status::New,
                Some(prev) => {
                    kept += 1;
                    if *prev == *acct {
                        Status::Same
                    } else {
                        Status::Changed {
                            routing: prev.ips != acct.ips || prev.tech_prefix != acct.tech_prefix,
                        }
                    }
                }
            };
            status.push(st);
        }
        let would_remove = known.saturating_sub(kept);
        if !force
            && self.is_loaded()
            && known > 0
            && (would_remove as f64) > max_shrink * (known as f64)
        {
            return Err(ShrinkHeld {
                would_remove,
                known,
                max_shrink,
            });
        }
        // The new set's ids are only needed when something is to be removed.
        let incoming: Option<HashSet<Arc<str>, FxBuildHasher>> =
            (would_remove > 0).then(|| accounts.iter().map(|a| Arc::clone(&a.id)).collect());
        // Pass 2: write new and changed entries.
        let mut added = 0;
        let mut changed = 0;
        let mut index_dirty = would_remove > 0;
        for (acct, st) in accounts.into_iter().zip(status) {
            match st {
                Status::Same => {}
                Status::New => {
                    added += 1;
                    index_dirty |= !acct.ips.is_empty();
                    self.accounts.insert(Arc::clone(&acct.id), acct);
                }
                Status::Changed { routing } => {
                    changed += 1;
                    index_dirty |= routing;
                    self.accounts.insert(Arc::clone(&acct.id), acct);
                }
            }
        }
        if index_dirty {
            match &incoming {
                Some(set) => self.rebuild_index_excluding(Some(&|k: &str| set.contains(k))),
                None => self.rebuild_index_excluding(None),
            }
        }
        let mut removed = 0;
        if let Some(incoming) = &incoming {
            self.accounts.retain(|k, _| {
                let keep = incoming.contains(k);
                if !keep {
                    removed += 1;
                }
                keep
            });
        }
        self.touch(now);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(ApplyStats {
            total: self.accounts.len(),
            added,
            changed,
            removed,
        })
    }

    /// Inserts or replaces one account (a push update).
    pub fn upsert(&self, acct: Account) {
        let routing_changed = match self.accounts.get(&acct.id) {
            Some(prev) => prev.ips != acct.ips || prev.tech_prefix != acct.tech_prefix,
            None => !acct.ips.is_empty(),
        };
        self.accounts.insert(Arc::clone(&acct.id), acct);
        if routing_changed {
            self.rebuild_index_excluding(None);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Removes one account (a push update for a deleted record). Returns whether it existed.
    pub fn remove(&self, id: &str) -> bool {
        let had_ips = self.accounts.get(id).map(|a| !a.ips.is_empty());
        let Some(had_ips) = had_ips else { return false };
        if had_ips {
            self.rebuild_index_excluding(Some(&|k: &str| k != id));
        }
        self.accounts.remove(id);
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Rebuilds the IP index from the map, keeping only ids for which `keep` says so when given.
    fn rebuild_index_excluding(&self, keep: Option<&dyn Fn(&str) -> bool>) {
        let mut builder = IpIndexBuilder::default();
        for entry in self.accounts.iter() {
            if keep.is_some_and(|k| !k(entry.key())) {
                continue;
            }
            let a = entry.value();
            for net in &a.ips {
                builder.add(*net, Arc::clone(&a.id), a.tech_prefix.clone());
            }
        }
        self.ip_index.store(Arc::new(builder.build()));
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
}
