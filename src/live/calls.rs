//! The call table and the shared live state: every admitted call from its INVITE to its end,
//! and the per-account ledgers it feeds (SPEC section 7, "Calls in progress").
//!
//! [`LiveState`] is shared by the packet workers (`&self` everywhere). Calls live in a
//! `DashMap` keyed by [`CallKey`] (a keyed 128-bit hash of the Call-ID and the dialog
//! initiator's tag); each account has a [`Ledger`] behind its own mutex. The admission check
//! and the hold are one step under the account's mutex, so two workers can never both spend
//! the same credit. Lock order: an account's mutex, then (briefly) a call-table shard; no
//! call-table guard is ever held while taking an account's mutex.
//!
//! States: ringing (INVITE forwarded) → answered (2xx) → ended (BYE or its 200 from either
//! side, a non-2xx final or 487 before the answer, `ring_timeout`, `call_expiry`). An ended call
//! leaves the table at once. Repeated events (retransmissions, forked 2xx, a re-INVITE's 2xx
//! or failure on an answered call) change nothing.
//!
//! Expiry: every admitted call enters a FIFO with its ring deadline; [`LiveState::tick`] pops
//! the due entries (bounded work per call: one pop, one lookup), ends ringing calls and moves
//! answered ones to a second FIFO with their expiry deadline. Entries of calls that already
//! ended are skipped when they come due; the expiry FIFO is compacted off the packet path
//! (in `tick`) when stale entries outnumber live calls.
//!
//! Boundary: no clock, no I/O. `now` (an `Instant`) and the wall time (Unix seconds, for the
//! UTC day) are arguments; the caller supplies the account's snapshot figures and the tariff
//! entry of the dialled number.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rust_decimal::Decimal;
use rustc_hash::FxBuildHasher;

use super::ledger::{reserve_cost, Check, Figures, Ledger, Linear, Now, Phase, Refusal};
use super::tariff::TariffEntry;

/// A call's identity: a keyed 128-bit hash of (Call-ID, tag of the dialog's initiator). Keyed
/// with per-process random keys, so a customer cannot craft a collision with another's call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(u64, u64);

/// Builds [`CallKey`]s: two independently keyed SipHash-1-3 (std `RandomState`) halves.
#[derive(Debug, Clone)]
pub struct CallKeyHasher {
    a: RandomState,
    b: RandomState,
}

impl Default for CallKeyHasher {
    fn default() -> Self {
        CallKeyHasher {
            a: RandomState::new(),
            b: RandomState::new(),
        }
    }
}

impl CallKeyHasher {
    /// The key of a call. `initiator_tag` is the From-tag of the INVITE (for requests and
    /// responses of the callee side, the To-tag: the dialog initiator's tag either way).
    pub fn key(&self, call_id: &[u8], initiator_tag: &[u8]) -> CallKey {
        CallKey(
            self.a.hash_one((call_id, initiator_tag)),
            self.b.hash_one((call_id, initiator_tag)),
        )
    }
}

/// `[live]` settings the table needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveConfig {
    /// A new call must be covered for this long (whole seconds; 0 = no reserve).
    pub reserve_secs: u32,
    pub credit_scaled_channels: bool,
    pub max_tracked_calls: usize,
    pub ring_timeout: Duration,
    pub call_expiry: Duration,
}

impl Default for LiveConfig {
    /// SPEC 7 defaults.
    fn default() -> Self {
        LiveConfig {
            reserve_secs: 0,
            credit_scaled_channels: false,
            max_tracked_calls: 1_000_000,
            ring_timeout: Duration::from_secs(180),
            call_expiry: Duration::from_secs(4 * 3600),
        }
    }
}

/// What the caller knows of the account from the snapshot, for one admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountFigures {
    /// Snapshot available credit (`balance + debit_limit`).
    pub available: Decimal,
    /// When the snapshot these figures come from was read (the start of the read): calls
    /// that ended before it are in the figures already.
    pub read_at: Instant,
    pub max_channels: Option<u32>,
    pub max_cps: Option<u32>,
    pub daily_spend_limit: Option<Decimal>,
    /// `spent_today` (0 when absent).
    pub spent_today: Decimal,
}

impl AccountFigures {
    /// Figures with no limits.
    pub fn new(available: Decimal, read_at: Instant) -> Self {
        AccountFigures {
            available,
            read_at,
            max_channels: None,
            max_cps: None,
            daily_spend_limit: None,
            spent_today: Decimal::ZERO,
        }
    }
}

/// An admitted call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The INVITE is a retransmission of a call already admitted: nothing new was held.
    pub retransmission: bool,
    /// Dry run ([`LiveState::admit_dry_run`]): the check refused the call for this reason, and
    /// it was tracked (and holds its reserve) anyway, because it is forwarded anyway.
    pub would_refuse: Option<Refusal>,
    /// What the call holds while ringing.
    pub reserve: Decimal,
    /// Live available credit after the hold (for a retransmission, not computed: the
    /// snapshot figure).
    pub live_available: Decimal,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndCause {
    /// BYE or its 200, from either side.
    Bye,
    /// A non-2xx final response to the INVITE before an answer (other than 487).
    Failed,
    /// 487 Request Terminated (after a CANCEL) before an answer.
    Cancelled,
    /// Never answered within `ring_timeout`.
    RingTimeout,
    /// Still tracked after `call_expiry`.
    Expired,
}

/// What a call event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEvent {
    /// Unknown call, or an event that changes nothing in its state (retransmission, fork,
    /// re-INVITE).
    Ignored,
    Answered,
    Ended {
        cause: EndCause,
        cost: Decimal,
    },
}

/// State of a tracked call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    Ringing,
    Answered,
}

/// A tracked call, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    pub account: Arc<str>,
    pub state: CallState,
    /// Seconds since the live state's epoch when admitted.
    pub started_secs: u32,
    /// What it holds now (reserve while ringing; `K` while answered and before the linear
    /// phase, see [`super::ledger`]).
    pub hold: Decimal,
    pub rate_per_min: Decimal,
}

/// Work done by one [`LiveState::tick`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TickStats {
    pub ring_timeouts: usize,
    pub expired: usize,
    /// Due queue entries examined (including stale ones).
    pub examined: usize,
    /// Whether due entries remain (the budget ran out).
    pub more: bool,
}

/// A low-credit crossing, for the daemon to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowCredit {
    pub account: Arc<str>,
    pub live_available: Decimal,
    pub threshold: Decimal,
    pub calls_in_progress: u32,
}

const RINGING: u8 = 0;
const ANSWERED_CONST: u8 = 1;
const ANSWERED_LINEAR: u8 = 2;

/// One call-table entry, kept small (48 bytes; 64 with its key) because a million may be live.
#[derive(Debug)]
struct Call {
    account: Arc<AccountSlot>,
    entry: Arc<TariffEntry>,
    /// Ringing: its reserve cost. Answered: its `K`.
    hold: Decimal,
    /// Answer time, ns since the epoch (exact: the cost rounds the duration up once).
    answer_ns: u64,
    start_secs: u32,
    state: u8,
}

/// An account's ledger and its id.
#[derive(Debug)]
struct AccountSlot {
    id: Arc<str>,
    ledger: Mutex<Ledger>,
}

impl AccountSlot {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A poisoned mutex means a panic elsewhere; the ledger's sums are still consistent
        // (every update is a few assignments), so carry on rather than take every call down.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The shared live state: call table, ledgers, expiry queues.
#[derive(Debug)]
pub struct LiveState {
    cfg: LiveConfig,
    epoch: Instant,
    keys: CallKeyHasher,
    calls: DashMap<CallKey, Call, FxBuildHasher>,
    accounts: DashMap<Arc<str>, Arc<AccountSlot>, FxBuildHasher>,
    tracked: AtomicUsize,
    /// (ring deadline secs, call), in admission order.
    ring_fifo: Mutex<VecDeque<(u32, CallKey)>>,
    /// (expiry deadline secs, call), answered calls past their ring deadline.
    expiry_fifo: Mutex<VecDeque<(u32, CallKey)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn day_of(wall_secs: u64) -> u32 {
    u32::try_from(wall_secs / 86_400).unwrap_or(u32::MAX)
}

fn secs_u32(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl LiveState {
    /// An empty state. `epoch` is any instant not after the first `now` passed in.
    pub fn new(cfg: LiveConfig, epoch: Instant) -> Self {
        LiveState {
            cfg,
            epoch,
            keys: CallKeyHasher::default(),
            calls: DashMap::with_hasher(FxBuildHasher),
            accounts: DashMap::with_hasher(FxBuildHasher),
            tracked: AtomicUsize::new(0),
            ring_fifo: Mutex::new(VecDeque::new()),
            expiry_fifo: Mutex::new(VecDeque::new()),
        }
    }

    pub fn config(&self) -> &LiveConfig {
        &self.cfg
    }

    /// The key of a call (see [`CallKeyHasher::key`]).
    pub fn call_key(&self, call_id: &[u8], initiator_tag: &[u8]) -> CallKey {
        self.keys.key(call_id, initiator_tag)
    }

    /// Calls tracked now.
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Relaxed)
    }

    fn now(&self, t: Instant) -> Now {
        let ns = t.saturating_duration_since(self.epoch).as_nanos();
        Now {
            ns: u64::try_from(ns).unwrap_or(u64::MAX),
        }
    }

    fn slot(&self, account: &str) -> Arc<AccountSlot> {
        if let Some(s) = self.accounts.get(account) {
            return Arc::clone(&s);
        }
        let id: Arc<str> = Arc::from(account);
        let s = self.accounts.entry(Arc::clone(&id)).or_insert_with(|| {
            Arc::new(AccountSlot {
                id,
                ledger: Mutex::new(Ledger::default()),
            })
        });
        Arc::clone(&s)
    }

    /// Brings `slot`'s ledger to `now`, switching due answered calls to their linear phase.
    fn sync(
        &self,
        slot: &Arc<AccountSlot>,
        l: &mut Ledger,
        now: Now,
        read_ms: Option<u64>,
        wall: u64,
    ) {
        l.sync(now, read_ms, day_of(wall), |key| {
            let mut c = self.calls.get_mut(&key)?;
            if !Arc::ptr_eq(&c.account, slot) || c.state != ANSWERED_CONST {
                return None;
            }
            let t0 = Now { ns: c.answer_ns }.secs_floor();
            let lin = Linear::new(&c.entry, t0);
            // A reused key's newer call may not be due yet: its own heap entry comes later.
            if lin.switch_at(c.hold).is_none_or(|at| at > now.secs_ceil()) {
                return None;
            }
            c.state = ANSWERED_LINEAR;
            Some((c.hold, lin))
        });
    }

    /// The admission check and hold, one atomic step per account: the INVITE of a new call
    /// (`key`) of `account` to a number priced by `entry` (the tariff entry of the dialled
    /// number, the account's `rate_per_min`, or [`TariffEntry::free`] for an unrated number
    /// admitted on snapshot credit). O(1) in the account's calls in progress.
    ///
    /// Order of the checks: table full, `max_channels`, CPS, credit (live available must be
    /// above zero and cover the reserve), credit-scaled channels, daily spend. The CPS bucket
    /// is charged only by admitted calls. An INVITE whose key is tracked for the same account
    /// is a retransmission: admitted, nothing new held.
    ///
    /// Rules (exact decimals): credit: live available `> 0` and `>= reserve`; credit-scaled
    /// channels (with a reserve above zero): `(in progress + 1) × reserve <= live available +
    /// Σ ringing reserves` (credit net of what answered calls hold, shared out one reserve per
    /// call, counting ringing calls' reserves once); daily spend: refused when `spent_today +
    /// today's ended-since-snapshot cost + Σ held + reserve >= daily_spend_limit` (calls in
    /// progress count at what they hold, the new call at its reserve). `max_channels = 0` and
    /// `max_cps = 0` refuse every call.
    pub fn admit(
        &self,
        account: &str,
        key: CallKey,
        entry: &Arc<TariffEntry>,
        figures: &AccountFigures,
        now: Instant,
        wall_secs: u64,
    ) -> Result<Admitted, Refusal> {
        self.admit_mode(account, key, entry, figures, now, wall_secs, false)
    }

    /// [`LiveState::admit`] for a dry run (`[credit] enforce = false`): the checks are made and
    /// their verdict returned in [`Admitted::would_refuse`], but the call is tracked and holds
    /// its reserve whatever they say, because it is forwarded and will spend. Only a full
    /// table (`TableFull`) or a key of another account (`KeyInUse`) still return `Err`: such a
    /// call cannot be tracked.
    pub fn admit_dry_run(
        &self,
        account: &str,
        key: CallKey,
        entry: &Arc<TariffEntry>,
        figures: &AccountFigures,
        now: Instant,
        wall_secs: u64,
    ) -> Result<Admitted, Refusal> {
        self.admit_mode(account, key, entry, figures, now, wall_secs, true)
    }

    /// What [`LiveState::admit`] would answer for a new call now, without holding anything or
    /// charging the CPS bucket (the admin API's `?to=`): the live available credit after the
    /// call's reserve, or the refusal.
    pub fn probe(
        &self,
        account: &str,
        entry: &TariffEntry,
        figures: &AccountFigures,
        now: Instant,
        wall_secs: u64,
    ) -> Result<Decimal, Refusal> {
        if self.tracked() >= self.cfg.max_tracked_calls {
            return Err(Refusal::TableFull);
        }
        let now = self.now(now);
        let read_ms = self.now(figures.read_at).ms();
        let reserve = reserve_cost(entry, self.cfg.reserve_secs);
        let check = Check {
            available: figures.available,
            max_channels: figures.max_channels,
            max_cps: figures.max_cps,
            daily_spend_limit: figures.daily_spend_limit,
            spent_today: figures.spent_today,
            credit_scaled: self.cfg.credit_scaled_channels,
            reserve,
        };
        let Some(slot) = self.accounts.get(account).map(|s| Arc::clone(&s)) else {
            return Ledger::default()
                .check(now, &check)
                .map(|(_, live)| live.saturating_sub(reserve));
        };
        let mut l = slot.lock();
        self.sync(&slot, &mut l, now, Some(read_ms), wall_secs);
        l.check(now, &check)
            .map(|(_, live)| live.saturating_sub(reserve))
    }

    #[allow(clippy::too_many_arguments)]
    fn admit_mode(
        &self,
        account: &str,
        key: CallKey,
        entry: &Arc<TariffEntry>,
        figures: &AccountFigures,
        now: Instant,
        wall_secs: u64,
        dry_run: bool,
    ) -> Result<Admitted, Refusal> {
        let now = self.now(now);
        let read_ms = self.now(figures.read_at).ms();
        if let Some(c) = self.calls.get(&key) {
            return if *c.account.id == *account {
                Ok(Admitted {
                    retransmission: true,
                    would_refuse: None,
                    reserve: Decimal::ZERO,
                    live_available: figures.available,
                })
            } else {
                Err(Refusal::KeyInUse)
            };
        }
        let max = self.cfg.max_tracked_calls;
        if self
            .tracked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Refusal::TableFull);
        }
        let slot = self.slot(account);
        let reserve = reserve_cost(entry, self.cfg.reserve_secs);
        let result = {
            let mut l = slot.lock();
            // The same INVITE may have been admitted by another worker since the look above;
            // under the account's lock this answer is final (its inserts are serialised here).
            let mine = self.calls.get(&key).map(|c| Arc::ptr_eq(&c.account, &slot));
            self.sync(&slot, &mut l, now, Some(read_ms), wall_secs);
            let check = Check {
                available: figures.available,
                max_channels: figures.max_channels,
                max_cps: figures.max_cps,
                daily_spend_limit: figures.daily_spend_limit,
                spent_today: figures.spent_today,
                credit_scaled: self.cfg.credit_scaled_channels,
                reserve,
            };
            let mut would_refuse = None;
            let checked =
                match mine.map_or_else(|| l.check(now, &check), |_| Ok((0, Decimal::ZERO))) {
                    Err(r) if dry_run => {
                        would_refuse = Some(r);
                        let live = l.figures(now).live_available(figures.available);
                        Ok((l.tat(), live))
                    }
                    other => other,
                };
            match checked {
                Err(r) => Err(r),
                Ok(_) if mine == Some(true) => Ok(Admitted {
                    retransmission: true,
                    would_refuse: None,
                    reserve: Decimal::ZERO,
                    live_available: figures.available,
                }),
                Ok(_) if mine == Some(false) => Err(Refusal::KeyInUse),
                Ok((tat, live)) => match self.calls.entry(key) {
                    dashmap::Entry::Occupied(_) => Err(Refusal::KeyInUse),
                    dashmap::Entry::Vacant(v) => {
                        v.insert(Call {
                            account: Arc::clone(&slot),
                            entry: Arc::clone(entry),
                            hold: reserve,
                            answer_ns: 0,
                            start_secs: now.secs_floor(),
                            state: RINGING,
                        });
                        l.hold(reserve, tat);
                        Ok(Admitted {
                            retransmission: false,
                            would_refuse,
                            reserve,
                            live_available: live.saturating_sub(reserve),
                        })
                    }
                },
            }
        };
        match result {
            Ok(a) if !a.retransmission => {
                let deadline = now
                    .secs_floor()
                    .saturating_add(secs_u32(self.cfg.ring_timeout));
                lock(&self.ring_fifo).push_back((deadline, key));
            }
            _ => {
                self.tracked.fetch_sub(1, Ordering::AcqRel);
            }
        }
        result
    }

    /// A 2xx to the INVITE of `key` passed: a ringing call is answered and starts accruing.
    /// Retransmitted or forked 2xx, and a re-INVITE's 2xx, change nothing.
    pub fn answered(&self, key: CallKey, now: Instant, wall_secs: u64) -> CallEvent {
        self.event(key, now, wall_secs, Ev::Answer)
    }

    /// A non-2xx final response (487 after CANCEL included) to the INVITE of `key` passed:
    /// a ringing call ends at no cost. On an answered call (a re-INVITE failed) nothing changes.
    pub fn failed(&self, key: CallKey, now: Instant, wall_secs: u64) -> CallEvent {
        self.event(key, now, wall_secs, Ev::Fail(EndCause::Failed))
    }

    /// A 487 Request Terminated (the INVITE was cancelled) passed: like [`LiveState::failed`],
    /// with the cause [`EndCause::Cancelled`].
    pub fn cancelled(&self, key: CallKey, now: Instant, wall_secs: u64) -> CallEvent {
        self.event(key, now, wall_secs, Ev::Fail(EndCause::Cancelled))
    }

    /// A BYE (or its 200) of `key` passed, from either side: the call ends; if it was
    /// answered, its exact cost counts as ended since the snapshot.
    pub fn bye(&self, key: CallKey, now: Instant, wall_secs: u64) -> CallEvent {
        self.event(key, now, wall_secs, Ev::End(EndCause::Bye))
    }

    fn event(&self, key: CallKey, now: Instant, wall_secs: u64, ev: Ev) -> CallEvent {
        let now = self.now(now);
        let Some(slot) = self.calls.get(&key).map(|c| Arc::clone(&c.account)) else {
            return CallEvent::Ignored;
        };
        let mut l = slot.lock();
        self.sync(&slot, &mut l, now, None, wall_secs);
        self.event_locked(&slot, &mut l, key, now, ev)
    }

    /// Applies `ev` to call `key` under its account's lock.
    fn event_locked(
        &self,
        slot: &Arc<AccountSlot>,
        l: &mut Ledger,
        key: CallKey,
        now: Now,
        ev: Ev,
    ) -> CallEvent {
        let outcome = {
            let Some(mut c) = self.calls.get_mut(&key) else {
                return CallEvent::Ignored;
            };
            if !Arc::ptr_eq(&c.account, slot) {
                return CallEvent::Ignored;
            }
            // Timeouts were decided from a look at the call before this lock: re-check that it
            // is still the same call (a reused key is a newer one) in the same state.
            let ev = match ev {
                Ev::RingTimeout(start) if start == c.start_secs && c.state == RINGING => {
                    Ev::End(EndCause::RingTimeout)
                }
                Ev::Expire(start) if start == c.start_secs => Ev::End(EndCause::Expired),
                Ev::RingTimeout(_) | Ev::Expire(_) => return CallEvent::Ignored,
                ev => ev,
            };
            match (ev, c.state) {
                (Ev::RingTimeout(_) | Ev::Expire(_), _) => return CallEvent::Ignored,
                (Ev::Answer, RINGING) => {
                    let t0 = now.secs_floor();
                    let (k, phase) = l.answer(key, c.hold, &c.entry, t0, now);
                    c.hold = k;
                    c.answer_ns = now.ns;
                    c.state = match phase {
                        Phase::Const => ANSWERED_CONST,
                        Phase::Linear => ANSWERED_LINEAR,
                    };
                    return CallEvent::Answered;
                }
                (Ev::Answer, _) | (Ev::Fail(_), ANSWERED_CONST | ANSWERED_LINEAR) => {
                    return CallEvent::Ignored
                }
                (Ev::Fail(cause), _) => {
                    l.release_ringing(c.hold);
                    CallEvent::Ended {
                        cause,
                        cost: Decimal::ZERO,
                    }
                }
                (Ev::End(cause), RINGING) => {
                    l.release_ringing(c.hold);
                    CallEvent::Ended {
                        cause,
                        cost: Decimal::ZERO,
                    }
                }
                (Ev::End(cause), state) => {
                    let elapsed_ns = now.ns.saturating_sub(c.answer_ns);
                    let cost = c.entry.cost(elapsed_ns.div_ceil(1_000_000_000));
                    let t0 = Now { ns: c.answer_ns }.secs_floor();
                    let lin = Linear::new(&c.entry, t0);
                    let phase = if state == ANSWERED_CONST {
                        Phase::Const
                    } else {
                        Phase::Linear
                    };
                    l.end_answered(phase, c.hold, &lin, cost, now.ms());
                    CallEvent::Ended { cause, cost }
                }
            }
        };
        if self.calls.remove(&key).is_some() {
            self.tracked.fetch_sub(1, Ordering::AcqRel);
        }
        outcome
    }

    /// Ends calls that rang past `ring_timeout` or lived past `call_expiry`. Examines at most
    /// `budget` due queue entries (one lookup each); call again while `more` is set. The daemon
    /// calls it from a timer (once a second is plenty), off the packet path.
    pub fn tick(&self, now: Instant, wall_secs: u64, budget: usize) -> TickStats {
        let n = self.now(now);
        let t = n.secs_floor();
        let mut st = TickStats::default();
        let ring = secs_u32(self.cfg.ring_timeout);
        let expiry = secs_u32(self.cfg.call_expiry);
        while st.examined < budget {
            let Some((deadline, key)) = pop_due(&self.ring_fifo, t) else {
                break;
            };
            st.examined += 1;
            let Some((slot, start, state)) = self
                .calls
                .get(&key)
                .map(|c| (Arc::clone(&c.account), c.start_secs, c.state))
            else {
                continue;
            };
            if start.saturating_add(ring) != deadline {
                continue; // a newer call reusing the key: its own entry comes later
            }
            if state == RINGING {
                let mut l = slot.lock();
                self.sync(&slot, &mut l, n, None, wall_secs);
                if let CallEvent::Ended { .. } =
                    self.event_locked(&slot, &mut l, key, n, Ev::RingTimeout(start))
                {
                    st.ring_timeouts += 1;
                }
            } else {
                lock(&self.expiry_fifo).push_back((start.saturating_add(expiry), key));
            }
        }
        while st.examined < budget {
            let Some((deadline, key)) = pop_due(&self.expiry_fifo, t) else {
                break;
            };
            st.examined += 1;
            let Some((slot, start)) = self
                .calls
                .get(&key)
                .map(|c| (Arc::clone(&c.account), c.start_secs))
            else {
                continue;
            };
            if start.saturating_add(expiry) != deadline {
                continue;
            }
            let mut l = slot.lock();
            self.sync(&slot, &mut l, n, None, wall_secs);
            if let CallEvent::Ended { .. } =
                self.event_locked(&slot, &mut l, key, n, Ev::Expire(start))
            {
                st.expired += 1;
            }
        }
        st.more = st.examined >= budget;
        self.compact_expiry();
        st
    }

    /// Drops stale expiry entries once they outnumber the tracked calls (amortised O(1) per
    /// entry; runs in `tick`, not on the packet path).
    fn compact_expiry(&self) {
        let mut q = lock(&self.expiry_fifo);
        if q.len() > 2 * self.tracked() + 4096 {
            q.retain(|(_, key)| self.calls.contains_key(key));
            q.shrink_to_fit();
        }
    }

    /// The account's live figures at `now` (zero when it has no ledger yet).
    pub fn figures(
        &self,
        account: &str,
        figures: &AccountFigures,
        now: Instant,
        wall_secs: u64,
    ) -> Figures {
        let Some(slot) = self.accounts.get(account).map(|s| Arc::clone(&s)) else {
            return Figures::default();
        };
        let now = self.now(now);
        let read_ms = self.now(figures.read_at).ms();
        let mut l = slot.lock();
        self.sync(&slot, &mut l, now, Some(read_ms), wall_secs);
        l.figures(now)
    }

    /// Low-credit check: `Some` exactly once each time the account's live available credit
    /// falls below `threshold` (money; a duration threshold is converted by the caller at the
    /// account's rate), re-armed once it has risen above it.
    pub fn low_credit(
        &self,
        account: &Arc<str>,
        figures: &AccountFigures,
        threshold: Decimal,
        now: Instant,
        wall_secs: u64,
    ) -> Option<LowCredit> {
        let slot = self.slot(account);
        let now = self.now(now);
        let read_ms = self.now(figures.read_at).ms();
        let mut l = slot.lock();
        self.sync(&slot, &mut l, now, Some(read_ms), wall_secs);
        let f = l.figures(now);
        let live = f.live_available(figures.available);
        l.low_credit.observe(live, threshold).then(|| LowCredit {
            account: Arc::clone(account),
            live_available: live,
            threshold,
            calls_in_progress: f.in_progress(),
        })
    }

    /// Whether `key` is a tracked call (in-dialog requests of a customer must belong to one).
    pub fn is_tracked(&self, key: CallKey) -> bool {
        self.calls.contains_key(&key)
    }

    /// A tracked call, for the admin API.
    pub fn call(&self, key: CallKey) -> Option<CallInfo> {
        self.calls.get(&key).map(|c| CallInfo {
            account: Arc::clone(&c.account.id),
            state: if c.state == RINGING {
                CallState::Ringing
            } else {
                CallState::Answered
            },
            started_secs: c.start_secs,
            hold: c.hold,
            rate_per_min: c.entry.rate_per_min,
        })
    }

    /// The accounts with calls in progress, for a periodic low-credit sweep (answered calls
    /// accrue with no packet passing). O(accounts with a ledger); off the packet path.
    pub fn busy_accounts(&self) -> Vec<Arc<str>> {
        self.accounts
            .iter()
            .filter(|s| Arc::strong_count(s.value()) > 1)
            .map(|s| Arc::clone(s.key()))
            .collect()
    }

    /// Forgets the ledgers that hold nothing (accounts without calls, nothing ended since the
    /// snapshot) and whose low-credit event is armed: a ledger that fired its event stays, so
    /// the account does not get a second event without rising above the threshold first. The
    /// daemon calls it now and then. O(accounts with a ledger).
    pub fn forget_idle_accounts(&self) {
        self.accounts.retain(|_, s| {
            Arc::strong_count(s) > 1
                || !s
                    .ledger
                    .try_lock()
                    .is_ok_and(|l| l.is_idle() && l.low_credit.is_armed())
        });
    }

    /// The accounts the low-credit sweep must look at ([`Ledger::take_sweep_mark`]: answered
    /// calls, a call admitted since the last sweep, an event fired). One pass over the
    /// accounts with a ledger taking each lock briefly (a busy one is included); the costly
    /// part of a sweep (a snapshot read and a live estimate) is paid only for these. Off the
    /// packet path.
    pub fn sweep_accounts(&self) -> Vec<Arc<str>> {
        self.accounts
            .iter()
            .filter(|s| {
                s.value()
                    .ledger
                    .try_lock()
                    .map_or(true, |mut l| l.take_sweep_mark())
            })
            .map(|s| Arc::clone(s.key()))
            .collect()
    }

    /// Approximate heap bytes of the call table and queues, for the memory figure and a gauge.
    pub fn approx_bytes(&self) -> usize {
        let entry = std::mem::size_of::<(CallKey, Call)>() + 1;
        let q = std::mem::size_of::<(u32, CallKey)>();
        self.calls.capacity() * entry
            + (lock(&self.ring_fifo).capacity() + lock(&self.expiry_fifo).capacity()) * q
    }

    /// The instant `CallInfo::started_secs` counts from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// At most `limit` tracked calls of `account`, oldest first, for the admin API
    /// (`GET /accounts/{id}/calls`). Scans the whole call table: O(tracked calls), admin-only,
    /// never on the packet path (it holds one call-table shard's read lock at a time).
    pub fn calls_of(&self, account: &str, limit: usize) -> Vec<(CallKey, CallInfo)> {
        let mut out: Vec<(CallKey, CallInfo)> = self
            .calls
            .iter()
            .filter(|c| &*c.account.id == account)
            .take(limit)
            .map(|c| {
                let info = CallInfo {
                    account: Arc::clone(&c.account.id),
                    state: if c.state == RINGING {
                        CallState::Ringing
                    } else {
                        CallState::Answered
                    },
                    started_secs: c.start_secs,
                    hold: c.hold,
                    rate_per_min: c.entry.rate_per_min,
                };
                (*c.key(), info)
            })
            .collect();
        out.sort_unstable_by_key(|(k, c)| (c.started_secs, *k));
        out
    }
}

impl CallKey {
    /// The key as 32 lowercase hex digits (the admin API's call id; not the Call-ID, which the
    /// key hashes with a per-process secret).
    pub fn to_hex(&self) -> String {
        format!("{:016x}{:016x}", self.0, self.1)
    }
}

/// Internal call events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Answer,
    /// A final non-2xx: `Failed` or `Cancelled`.
    Fail(EndCause),
    End(EndCause),
    /// Ring timeout of the call admitted at this second.
    RingTimeout(u32),
    /// Expiry of the call admitted at this second.
    Expire(u32),
}

fn pop_due(q: &Mutex<VecDeque<(u32, CallKey)>>, t: u32) -> Option<(u32, CallKey)> {
    let mut q = lock(q);
    match q.front() {
        Some((d, _)) if *d <= t => q.pop_front(),
        _ => None,
    }
}

#[cfg(test)]
#[path = "calls_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "calls_model_tests.rs"]
mod model_tests;
