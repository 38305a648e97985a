//! The live ledger of one account: what its calls in progress hold, what its calls ended since
//! the snapshot cost, its CPS bucket and its low-credit hysteresis (SPEC section 7).
//!
//! Every figure is a running sum, so the admission check is O(1) in the number of the
//! account's calls in progress:
//!
//! * a ringing call holds its reserve cost `k` (Σ kept in `ringing_held`);
//! * an answered call holds `max(K, L(t))` where `K = max(k, cost(0))` and
//!   `L(t) = fee + rate/60 × (t − t0 + increment − 1)`, `t` = now rounded up and `t0` = the
//!   answer time rounded down, in whole seconds since the live state's epoch. `L` is linear in
//!   `t`, so Σ L over many calls is `(F + R·t − P)/60` with `F = Σ (60·fee + rate·(inc − 1))`,
//!   `R = Σ rate`, `P = Σ rate·t0`. A call holds `K` until its switch time (the first whole
//!   second with `L ≥ K`, computed once at the answer), then `L`. Calls waiting for their
//!   switch sit in a min-heap; [`Ledger::sync`] moves the due ones (each call moves once:
//!   amortised O(log n) per call, nothing per admission). A call's switch comes at most
//!   `max(reserve, initial) + increment` seconds after its answer, so entries of calls that
//!   ended earlier leave the heap within that time too.
//!
//! `L(t)` is an upper bound of the call's true cost: `billed(d) ≤ d + increment − 1` for
//! `d > initial`, and `t − t0 ≥ ceil(elapsed)`. It over-holds by at most
//! `rate/60 × (increment − 1 + 1)` per answered call (one block plus the second lost by
//! rounding the answer time down and now up); it never under-holds. When a call ends, its
//! exact cost (`cost(ceil(elapsed))`) replaces its hold.
//!
//! Money amounts that involve a division (a reserve cost, the linear sum at `t`, an ended
//! call's cost) are rounded UP to 12 decimal places ([`HOLD_DP`], far below any currency
//! unit), which keeps every running sum exact under addition and subtraction; sums are reset
//! to exactly zero whenever their set of calls empties.
//!
//! Boundary: a plain struct, no locking, no clock: the caller ([`super::calls`]) holds the
//! account's mutex around every use and passes time as [`Now`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

use super::calls::CallKey;
use super::tariff::TariffEntry;

/// Decimal places of the ledger's money amounts (rounded up): exact sums, 1e-12 resolution.
pub const HOLD_DP: u32 = 12;
/// Ended-call records kept per account between snapshot reads. Beyond it neighbouring records
/// are merged pairwise (a merged record is kept until its later end is covered: over-counts
/// for a while, never under-counts), so an account's memory stays bounded when the snapshot
/// stops refreshing.
pub const ENDED_CAP: usize = 64;
/// The linear sum's time base is moved forward after this many seconds, so `rate × (t0 −
/// base)` stays small and exact whatever the uptime.
const REBASE_SECS: u32 = 86_400;

/// Time, as nanoseconds since the live state's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Now {
    pub ns: u64,
}

impl Now {
    pub fn ms(self) -> u64 {
        self.ns / 1_000_000
    }
    /// Whole seconds, rounded down (saturating at `u32::MAX`, 136 years).
    pub fn secs_floor(self) -> u32 {
        u32::try_from(self.ns / 1_000_000_000).unwrap_or(u32::MAX)
    }
    /// Whole seconds, rounded up.
    pub fn secs_ceil(self) -> u32 {
        u32::try_from(self.ns.div_ceil(1_000_000_000)).unwrap_or(u32::MAX)
    }
}

/// Rounds a money amount up to [`HOLD_DP`] places.
pub fn round_up(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(HOLD_DP, RoundingStrategy::ToPositiveInfinity)
}

/// The reserve cost of a new call: `cost(reserve)` at its entry, or 0 without a reserve.
pub fn reserve_cost(entry: &TariffEntry, reserve_secs: u32) -> Decimal {
    if reserve_secs == 0 {
        Decimal::ZERO
    } else {
        round_up(entry.cost(u64::from(reserve_secs)))
    }
}

/// An answered call's linear terms (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Linear {
    /// `60·fee + rate·(increment − 1)`.
    pub f: Decimal,
    /// `rate`.
    pub r: Decimal,
    /// Answer time, whole seconds rounded down.
    pub t0: u32,
}

impl Linear {
    pub fn new(entry: &TariffEntry, t0: u32) -> Self {
        let inc = Decimal::from(entry.increment.saturating_sub(1));
        let f = entry
            .connect_fee
            .saturating_mul(Decimal::from(60u32))
            .saturating_add(entry.rate_per_min.saturating_mul(inc));
        Linear {
            f,
            r: entry.rate_per_min,
            t0,
        }
    }

    /// `60 × L(t)`.
    fn sixty_l(&self, t: u32) -> Decimal {
        let dt = Decimal::from(t.saturating_sub(self.t0));
        self.f.saturating_add(self.r.saturating_mul(dt))
    }

    /// The first whole second `t ≥ t0` with `L(t) ≥ k`; `None` when `L` never exceeds `k`.
    pub fn switch_at(&self, k: Decimal) -> Option<u32> {
        let target = k.saturating_mul(Decimal::from(60u32));
        if self.sixty_l(self.t0) >= target {
            return Some(self.t0);
        }
        if self.r <= Decimal::ZERO {
            return None;
        }
        let x = target.saturating_sub(self.f).checked_div(self.r)?.ceil();
        let dt = x.to_u32().unwrap_or(u32::MAX);
        let mut t = self.t0.saturating_add(dt);
        // The division may round; settle on the exact first second.
        if self.sixty_l(t) < target {
            t = t.saturating_add(1);
        }
        while t > self.t0 && self.sixty_l(t - 1) >= target {
            t -= 1;
        }
        Some(t)
    }
}

/// Phase of an answered call in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Holds its constant `K` until its switch time.
    Const,
    /// Holds `L(t)`.
    Linear,
}

/// The account's snapshot figures and limits, as the ledger needs them for one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Check {
    /// Snapshot available credit (`balance + debit_limit`).
    pub available: Decimal,
    pub max_channels: Option<u32>,
    pub max_cps: Option<u32>,
    pub daily_spend_limit: Option<Decimal>,
    pub spent_today: Decimal,
    /// `[live] credit_scaled_channels`.
    pub credit_scaled: bool,
    /// Reserve cost of the new call.
    pub reserve: Decimal,
}

/// Why the live ledger refused a new call. `ChannelLimit`, `CreditScaledChannels` and
/// `TableFull` all answer with the `channel_limit` cause; they are distinct for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Refusal {
    /// Live available credit is not above zero, or does not cover the reserve.
    #[error("insufficient credit")]
    InsufficientCredit,
    /// `max_channels` calls are in progress.
    #[error("channel limit")]
    ChannelLimit,
    /// More calls in progress than live credit covers for the reserve each.
    #[error("credit-scaled channel limit")]
    CreditScaledChannels,
    /// The account's CPS bucket is empty.
    #[error("cps limit")]
    CpsLimit,
    /// `spent_today` + today's live cost (+ the reserve) reaches `daily_spend_limit`.
    #[error("daily spend limit")]
    SpendLimit,
    /// The call table holds `max_tracked_calls` calls.
    #[error("call table full")]
    TableFull,
    /// The call's key (Call-ID, initiator tag) is tracked for another account.
    #[error("call key in use by another account")]
    KeyInUse,
}

impl Refusal {
    /// The `[reply]` cause this refusal answers with (SPEC 3 and 7).
    pub fn reply_cause(self) -> &'static str {
        match self {
            Refusal::InsufficientCredit => "insufficient_credit",
            Refusal::ChannelLimit
            | Refusal::CreditScaledChannels
            | Refusal::TableFull
            | Refusal::KeyInUse => "channel_limit",
            Refusal::CpsLimit => "cps_limit",
            Refusal::SpendLimit => "spend_limit",
        }
    }

    /// A finer label for metrics and logs (`TableFull` is the capacity refusal to count).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::InsufficientCredit => "insufficient_credit",
            Refusal::ChannelLimit => "channel_limit",
            Refusal::CreditScaledChannels => "credit_scaled_channels",
            Refusal::CpsLimit => "cps_limit",
            Refusal::SpendLimit => "spend_limit",
            Refusal::TableFull => "table_full",
            Refusal::KeyInUse => "key_in_use",
        }
    }
}

/// One ended call (or several merged), kept until a snapshot read after its end covers it.
#[derive(Debug, Clone, Copy)]
struct Ended {
    end_ms: u64,
    /// UTC day (days since 1970) the cost counts for in `ended_today`.
    day: u32,
    cost: Decimal,
}

/// Hysteresis for the low-credit event: fires once when the figure falls below the threshold,
/// re-armed only once it has risen above it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    armed: bool,
}

impl Default for Hysteresis {
    fn default() -> Self {
        Hysteresis { armed: true }
    }
}

impl Hysteresis {
    /// Whether the next fall below the threshold fires (no event fired since the figure was
    /// last above it).
    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Feeds the current figure; `true` exactly once per crossing below `threshold`.
    pub fn observe(&mut self, value: Decimal, threshold: Decimal) -> bool {
        if self.armed && value < threshold {
            self.armed = false;
            true
        } else {
            if !self.armed && value > threshold {
                self.armed = true;
            }
            false
        }
    }
}

/// An account's live figures at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Figures {
    pub ringing: u32,
    pub answered: u32,
    /// Held by ringing calls (their reserves).
    pub held_ringing: Decimal,
    /// Held by answered calls (`max(K, L(t))` each).
    pub held_answered: Decimal,
    /// Cost of calls ended since the snapshot read (not yet covered by it).
    pub ended_since_snapshot: Decimal,
    /// Of those, the ones that count for the current UTC day.
    pub ended_today: Decimal,
}

impl Figures {
    pub fn in_progress(&self) -> u32 {
        self.ringing.saturating_add(self.answered)
    }
    pub fn held(&self) -> Decimal {
        self.held_ringing.saturating_add(self.held_answered)
    }
    /// `available − held − ended since snapshot`.
    pub fn live_available(&self, snapshot_available: Decimal) -> Decimal {
        snapshot_available
            .saturating_sub(self.held())
            .saturating_sub(self.ended_since_snapshot)
    }
}

/// The per-account ledger.
#[derive(Debug, Default)]
pub struct Ledger {
    ringing: u32,
    ringing_held: Decimal,
    answered_const: u32,
    const_held: Decimal,
    /// (switch second, call) of answered calls in the `Const` phase; entries of calls that
    /// ended or moved are skipped when popped.
    switches: BinaryHeap<Reverse<(u32, CallKey)>>,
    answered_linear: u32,
    lin_f: Decimal,
    lin_r: Decimal,
    /// Σ rate·(t0 − base).
    lin_p: Decimal,
    base: u32,
    ended: VecDeque<Ended>,
    ended_sum: Decimal,
    ended_today: Decimal,
    day: u32,
    /// Latest snapshot read time applied (ms since epoch).
    read_ms: u64,
    /// GCRA theoretical arrival time (ns since epoch).
    tat_ns: u64,
    pub low_credit: Hysteresis,
    /// A call was admitted since the low-credit sweep last looked (its reserve lowered the
    /// live figure with no call answered).
    admitted_since_sweep: bool,
}

impl Ledger {
    /// Brings the ledger to `now`: drops the ended calls a snapshot read at `read_ms` covers
    /// (when given), starts a new UTC `day`, and moves answered calls whose switch time has
    /// come to the linear sum. `switch(key)` must return the call's `K` and linear terms if it
    /// is still answered in the `Const` phase in this account, and mark it `Linear`.
    pub fn sync(
        &mut self,
        now: Now,
        read_ms: Option<u64>,
        day: u32,
        mut switch: impl FnMut(CallKey) -> Option<(Decimal, Linear)>,
    ) {
        if let Some(read) = read_ms.filter(|r| *r > self.read_ms) {
            self.read_ms = read;
            while let Some(e) = self.ended.front().copied().filter(|e| e.end_ms < read) {
                self.ended.pop_front();
                self.ended_sum = self.ended_sum.saturating_sub(e.cost);
                if e.day == self.day {
                    self.ended_today = self.ended_today.saturating_sub(e.cost);
                }
            }
            if self.ended.is_empty() {
                self.ended_sum = Decimal::ZERO;
                self.ended_today = Decimal::ZERO;
            }
        }
        if day > self.day {
            self.day = day;
            self.ended_today = Decimal::ZERO;
        }
        let t = now.secs_ceil();
        while let Some(Reverse((at, key))) = self.switches.peek().copied() {
            if at > t {
                break;
            }
            self.switches.pop();
            if let Some((k, lin)) = switch(key) {
                self.answered_const = self.answered_const.saturating_sub(1);
                self.const_held = self.const_held.saturating_sub(k);
                if self.answered_const == 0 {
                    self.const_held = Decimal::ZERO;
                }
                self.add_linear(&lin);
            }
        }
        if self.answered_linear == 0 {
            self.base = t;
            (self.lin_f, self.lin_r, self.lin_p) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
        } else if t.saturating_sub(self.base) > REBASE_SECS {
            let shift = Decimal::from(t - self.base);
            self.lin_p = self.lin_p.saturating_sub(self.lin_r.saturating_mul(shift));
            self.base = t;
        }
    }

    fn add_linear(&mut self, lin: &Linear) {
        self.answered_linear = self.answered_linear.saturating_add(1);
        self.lin_f = self.lin_f.saturating_add(lin.f);
        self.lin_r = self.lin_r.saturating_add(lin.r);
        let rel = Decimal::from(i64::from(lin.t0) - i64::from(self.base));
        self.lin_p = self.lin_p.saturating_add(lin.r.saturating_mul(rel));
    }

    fn remove_linear(&mut self, lin: &Linear) {
        self.answered_linear = self.answered_linear.saturating_sub(1);
        if self.answered_linear == 0 {
            (self.lin_f, self.lin_r, self.lin_p) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
            return;
        }
        self.lin_f = self.lin_f.saturating_sub(lin.f);
        self.lin_r = self.lin_r.saturating_sub(lin.r);
        let rel = Decimal::from(i64::from(lin.t0) - i64::from(self.base));
        self.lin_p = self.lin_p.saturating_sub(lin.r.saturating_mul(rel));
    }

    /// The figures at `now` (call [`Ledger::sync`] first).
    pub fn figures(&self, now: Now) -> Figures {
        // Never before the base: a worker's slightly older `now` must not shrink the sum.
        let t = now.secs_ceil().max(self.base);
        let lin = if self.answered_linear == 0 {
            Decimal::ZERO
        } else {
            let dt = Decimal::from(i64::from(t) - i64::from(self.base));
            let sixty = self
                .lin_f
                .saturating_add(self.lin_r.saturating_mul(dt))
                .saturating_sub(self.lin_p);
            round_up(
                sixty
                    .checked_div(Decimal::from(60u32))
                    .unwrap_or(Decimal::MAX),
            )
        };
        Figures {
            ringing: self.ringing,
            answered: self.answered_const.saturating_add(self.answered_linear),
            held_ringing: self.ringing_held,
            held_answered: self.const_held.saturating_add(lin),
            ended_since_snapshot: self.ended_sum,
            ended_today: self.ended_today,
        }
    }

    /// The admission check for a new call at `now` (after [`Ledger::sync`]). On success
    /// returns the GCRA state to commit with [`Ledger::hold`] and the live available credit
    /// before the hold; nothing is changed either way.
    pub fn check(&self, now: Now, c: &Check) -> Result<(u64, Decimal), Refusal> {
        let f = self.figures(now);
        let n = f.in_progress();
        if c.max_channels.is_some_and(|max| n >= max) {
            return Err(Refusal::ChannelLimit);
        }
        let tat = match c.max_cps {
            None => self.tat_ns,
            Some(0) => return Err(Refusal::CpsLimit),
            Some(cps) => {
                let t = 1_000_000_000u64.div_ceil(u64::from(cps));
                let tau = t.saturating_mul(u64::from(cps) - 1);
                let tat = self.tat_ns.max(now.ns);
                if tat - now.ns > tau {
                    return Err(Refusal::CpsLimit);
                }
                tat.saturating_add(t)
            }
        };
        let live = f.live_available(c.available);
        if live <= Decimal::ZERO || live < c.reserve {
            return Err(Refusal::InsufficientCredit);
        }
        if c.credit_scaled && c.reserve > Decimal::ZERO {
            // Credit before the ringing calls' reserves, shared out at one reserve per call.
            let pool = live.saturating_add(f.held_ringing);
            let need = c.reserve.saturating_mul(Decimal::from(n.saturating_add(1)));
            if need > pool {
                return Err(Refusal::CreditScaledChannels);
            }
        }
        if let Some(limit) = c.daily_spend_limit {
            let today = c
                .spent_today
                .saturating_add(f.ended_today)
                .saturating_add(f.held())
                .saturating_add(c.reserve);
            if today >= limit {
                return Err(Refusal::SpendLimit);
            }
        }
        Ok((tat, live))
    }

    /// The CPS bucket's theoretical arrival time as it stands (what a dry-run admission that the
    /// check refused keeps).
    pub fn tat(&self) -> u64 {
        self.tat_ns
    }

    /// Records an admitted call: it rings and holds `reserve`; `tat` is [`Ledger::check`]'s.
    pub fn hold(&mut self, reserve: Decimal, tat: u64) {
        self.admitted_since_sweep = true;
        self.ringing = self.ringing.saturating_add(1);
        self.ringing_held = self.ringing_held.saturating_add(reserve);
        self.tat_ns = tat;
    }

    /// Whether the low-credit sweep must look at this account now: answered calls accrue with
    /// no packet passing, a call admitted since the last sweep holds its reserve, and an event
    /// fired waits for the figure to rise again. Clears the admitted mark. An account with
    /// none of these cannot have crossed since the sweep last looked, whatever its snapshot
    /// (a lower balance alone shows at its next call).
    pub fn take_sweep_mark(&mut self) -> bool {
        let due = self.answered_const > 0
            || self.answered_linear > 0
            || self.admitted_since_sweep
            || !self.low_credit.is_armed();
        self.admitted_since_sweep = false;
        due
    }

    /// Releases a ringing call's hold (failed, cancelled, ring timeout).
    pub fn release_ringing(&mut self, reserve: Decimal) {
        self.ringing = self.ringing.saturating_sub(1);
        self.ringing_held = if self.ringing == 0 {
            Decimal::ZERO
        } else {
            self.ringing_held.saturating_sub(reserve)
        };
    }

    /// A ringing call holding `reserve` was answered at `t0` (whole seconds, rounded down).
    /// Returns the call's `K` and phase; `key` identifies it in the switch heap.
    pub fn answer(
        &mut self,
        key: CallKey,
        reserve: Decimal,
        entry: &TariffEntry,
        t0: u32,
        now: Now,
    ) -> (Decimal, Phase) {
        self.release_ringing(reserve);
        let k = reserve.max(round_up(entry.cost(0)));
        let lin = Linear::new(entry, t0);
        match lin.switch_at(k) {
            Some(at) if at <= now.secs_ceil() => {
                self.add_linear(&lin);
                (k, Phase::Linear)
            }
            at => {
                self.answered_const = self.answered_const.saturating_add(1);
                self.const_held = self.const_held.saturating_add(k);
                if let Some(at) = at {
                    self.switches.push(Reverse((at, key)));
                }
                (k, Phase::Const)
            }
        }
    }

    /// An answered call ended: its hold is released and its exact `cost` recorded as ended
    /// at `end_ms` on UTC `day`.
    pub fn end_answered(
        &mut self,
        phase: Phase,
        k: Decimal,
        lin: &Linear,
        cost: Decimal,
        end_ms: u64,
    ) {
        match phase {
            Phase::Const => {
                self.answered_const = self.answered_const.saturating_sub(1);
                self.const_held = if self.answered_const == 0 {
                    Decimal::ZERO
                } else {
                    self.const_held.saturating_sub(k)
                };
            }
            Phase::Linear => self.remove_linear(lin),
        }
        self.record_ended(round_up(cost), end_ms);
    }

    fn record_ended(&mut self, cost: Decimal, end_ms: u64) {
        if cost.is_zero() {
            return;
        }
        let day = self.day;
        self.ended_sum = self.ended_sum.saturating_add(cost);
        self.ended_today = self.ended_today.saturating_add(cost);
        match self.ended.back_mut() {
            // Same or earlier end (workers' clocks interleave): merge into the newest.
            Some(b) if b.end_ms >= end_ms && b.day == day => b.cost = b.cost.saturating_add(cost),
            _ => {
                let end_ms = self.ended.back().map_or(end_ms, |b| b.end_ms.max(end_ms));
                self.ended.push_back(Ended { end_ms, day, cost });
            }
        }
        if self.ended.len() > ENDED_CAP {
            self.halve_ended();
        }
    }

    /// Merges neighbouring ended records pairwise (the oldest one alone when the count is
    /// odd): time resolution halves evenly over the whole span, and the work, O(ENDED_CAP)
    /// every ENDED_CAP/2 records, is O(1) per record. No allocation (rotates in place).
    fn halve_ended(&mut self) {
        let n = self.ended.len();
        if n % 2 == 1 {
            if let Some(a) = self.ended.pop_front() {
                self.ended.push_back(a);
            }
        }
        for _ in 0..n / 2 {
            if let (Some(a), Some(b)) = (self.ended.pop_front(), self.ended.pop_front()) {
                self.ended.push_back(Ended {
                    end_ms: b.end_ms.max(a.end_ms),
                    day: a.day.min(b.day),
                    cost: a.cost.saturating_add(b.cost),
                });
            }
        }
    }

    /// Whether the ledger holds nothing (no call, no ended record): it may be forgotten.
    pub fn is_idle(&self) -> bool {
        self.ringing == 0
            && self.answered_const == 0
            && self.answered_linear == 0
            && self.ended.is_empty()
    }

    /// Heap entries (for memory accounting).
    pub fn pending_switches(&self) -> usize {
        self.switches.len()
    }
}

#[cfg(test)]
#[path = "ledger_tests.rs"]
mod tests;
