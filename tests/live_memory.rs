//! Issue 11, acceptance 5: the call table's memory is bounded.
//!
//! * [`million_tracked_calls_stay_under_256_bytes_each`] (`#[ignore]`d: it builds a million
//!   calls, ~10 s and ~250 MB in a debug build) drives [`LiveState`] directly, no daemon, and
//!   MEASURES what the live state holds with a counting global allocator: every allocation and
//!   free of this process passes through [`Counting`], which keeps two running sums, the bytes
//!   asked for (`Layout::size`) and the bytes the C allocator really handed out
//!   (`malloc_usable_size`, so size-class rounding and mmap page rounding count too). It asserts
//!   the larger one, per call, below 256 bytes at the worst steady point of the calls' life
//!   (every call answered, each waiting in its account's switch heap, then moved by `tick` to
//!   the expiry queue while the ring queue keeps its capacity). It prints the figures, and the
//!   transient peak (a hash table that grows holds its old and new arrays for a moment).
//! * [`a_full_table_refuses_new_calls_as_table_full_and_nothing_panics`]. At
//!   `max_tracked_calls` every new call is refused with [`Refusal::TableFull`], from eight
//!   threads at once, while retransmissions and the calls in the table go on; a slot freed by
//!   a BYE, a failure or a ring timeout is taken again.
//!
//! Run: `cargo test --test live_memory -- --include-ignored --nocapture`.
//!
//! The counting allocator sees every thread of the process, so the tests of this file take
//! [`SERIAL`] (the test harness runs tests on parallel threads; `cargo nextest` runs each in a
//! process of its own anyway).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use creditgate::live::calls::{AccountFigures, CallEvent, CallKey, LiveConfig, LiveState};
use creditgate::live::ledger::Refusal;
use creditgate::live::tariff::TariffEntry;
use nix::libc;
use rust_decimal::Decimal;

// ---------------------------------------------------------------------------------------------
// The counting allocator

/// Bytes asked for by live allocations (`Layout::size`).
static ASKED: AtomicI64 = AtomicI64::new(0);
/// Bytes handed out for live allocations (`malloc_usable_size` of each block).
static USABLE: AtomicI64 = AtomicI64::new(0);
/// Highest `USABLE` seen since the last [`reset_peak`].
static PEAK: AtomicI64 = AtomicI64::new(0);

/// `System`, counting. `System` on Linux allocates with `malloc` (or `posix_memalign` for
/// alignments above 16), whose blocks `malloc_usable_size` measures.
struct Counting;

fn usable(p: *mut u8) -> i64 {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` is a live block of the C allocator (System allocated it and has not freed it).
    unsafe { libc::malloc_usable_size(p.cast()) as i64 }
}

fn add(asked: i64, got: i64) {
    ASKED.fetch_add(asked, Ordering::Relaxed);
    let now = USABLE.fetch_add(got, Ordering::Relaxed) + got;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the same arguments; the counting around it
// only reads the block's size.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            add(l.size() as i64, usable(p));
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            add(l.size() as i64, usable(p));
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        add(-(l.size() as i64), -usable(p));
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        let old = usable(p);
        let q = unsafe { System.realloc(p, l, n) };
        if !q.is_null() {
            // The old block is gone (or is the new one): swap its size for the new block's.
            add(n as i64 - l.size() as i64, usable(q) - old);
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// What the live state holds, from a [`mark`] on.
#[derive(Debug, Clone, Copy)]
struct Held {
    asked: i64,
    usable: i64,
}

fn mark() -> Held {
    Held {
        asked: ASKED.load(Ordering::Relaxed),
        usable: USABLE.load(Ordering::Relaxed),
    }
}

fn since(m: Held) -> Held {
    let now = mark();
    Held {
        asked: now.asked - m.asked,
        usable: now.usable - m.usable,
    }
}

fn reset_peak() -> i64 {
    let now = USABLE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

/// One test at a time in this binary: the allocator counts every thread.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// Midnight UTC, 2025-12-02 (any day: the wall time only picks the UTC day).
const WALL: u64 = 20_424 * 86_400;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// Figures with plenty of credit and every limit on but far away (so each admission runs
/// every check, and the CPS bucket of each account is in use).
fn rich(epoch: Instant) -> AccountFigures {
    let mut f = AccountFigures::new(d("1000000000"), epoch);
    f.max_channels = Some(u32::MAX);
    f.max_cps = Some(1_000_000_000);
    f.daily_spend_limit = Some(d("1000000000000"));
    f
}

// ---------------------------------------------------------------------------------------------
// A million calls

const CALLS: usize = 1_000_000;
/// The acceptance bound (issue 11, point 5).
const BOUND: f64 = 256.0;

/// One measured run: `CALLS` calls spread over `accounts` accounts.
#[derive(Debug)]
struct Run {
    accounts: usize,
    /// After admitting every call (all ringing).
    ringing: Held,
    /// After answering every call (each in its account's switch heap).
    answered: Held,
    /// After a `tick` past `ring_timeout` moved every call to the expiry queue.
    ticked: Held,
    /// Highest usable bytes at any moment of the run.
    peak: i64,
    /// `LiveState::approx_bytes` at the end (its own estimate of the table and queues).
    approx: usize,
}

impl Run {
    fn per_call(h: Held) -> (f64, f64) {
        (
            h.asked as f64 / CALLS as f64,
            h.usable as f64 / CALLS as f64,
        )
    }

    /// The worst steady figure per call (usable bytes; they are never below the asked ones).
    fn worst(&self) -> f64 {
        [self.ringing, self.answered, self.ticked]
            .iter()
            .map(|h| h.usable.max(h.asked) as f64 / CALLS as f64)
            .fold(0.0, f64::max)
    }

    fn print(&self) {
        for (what, h) in [
            ("all ringing", self.ringing),
            ("all answered", self.answered),
            ("after the ring-timeout tick", self.ticked),
        ] {
            let (a, u) = Run::per_call(h);
            println!(
                "memory: {CALLS} calls of {} account(s), {what}: {:.1} B/call asked, {:.1} B/call usable ({} MB)",
                self.accounts,
                a,
                u,
                h.usable / 1_000_000
            );
        }
        println!(
            "memory: {} account(s): transient peak {:.1} B/call usable; approx_bytes() {:.1} B/call",
            self.accounts,
            self.peak as f64 / CALLS as f64,
            self.approx as f64 / CALLS as f64
        );
    }
}

/// Builds `CALLS` calls of `accounts` accounts on a fresh state and measures it. With
/// `entry_per_call`, each admission gets an `Arc<TariffEntry>` of its own, allocated after
/// the mark (what the admission did for a `rate_per_min` account before the snapshot kept a
/// precomputed rate entry per account, 625c93f: it shows why the entry must be shared);
/// otherwise all calls share one entry (a tariff's or the account's, made at refresh time).
fn measure(accounts: usize, entry_per_call: bool) -> Run {
    let epoch = Instant::now();
    let cfg = LiveConfig {
        reserve_secs: 60,
        credit_scaled_channels: true,
        max_tracked_calls: CALLS,
        ring_timeout: Duration::from_secs(180),
        call_expiry: Duration::from_secs(4 * 3600),
    };
    // Everything the daemon would own anyway (the snapshot's account ids, the tariff's
    // entries, the packets' Call-IDs) is made before the mark.
    let key_source = LiveState::new(cfg, epoch);
    let keys: Vec<CallKey> = (0..CALLS)
        .map(|i| key_source.call_key(format!("mem-{i}@bench").as_bytes(), b"tag"))
        .collect();
    drop(key_source);
    let ids: Vec<Arc<str>> = (0..accounts)
        .map(|i| Arc::from(format!("acct-{i}")))
        .collect();
    let entry = Arc::new(TariffEntry::parse("0.0125 0.05 60/6").unwrap());
    let figs = rich(epoch);

    let start = mark();
    let base_peak = reset_peak();
    let live = LiveState::new(cfg, epoch);
    // Every call within the first 10 s: none reaches its switch time (60 s) before the
    // measurements, so every answered call waits in its account's switch heap.
    let at = |i: usize| epoch + Duration::from_micros((i as u64 * 10) % 10_000_000);
    for (i, key) in keys.iter().enumerate() {
        let own;
        let e = if entry_per_call {
            own = Arc::new(TariffEntry::clone(&entry));
            &own
        } else {
            &entry
        };
        let r = live.admit(&ids[i % accounts], *key, e, &figs, at(i), WALL);
        assert!(matches!(r, Ok(a) if !a.retransmission), "call {i}: {r:?}");
    }
    assert_eq!(live.tracked(), CALLS);
    let ringing = since(start);
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(live.answered(*key, at(i), WALL), CallEvent::Answered);
    }
    let answered = since(start);
    // Past every ring deadline: the answered calls move to the expiry queue (none ends).
    let later = epoch + Duration::from_secs(200);
    let mut moved = 0;
    loop {
        let st = live.tick(later, WALL + 200, 100_000);
        assert_eq!((st.ring_timeouts, st.expired), (0, 0));
        moved += st.examined;
        if !st.more {
            break;
        }
    }
    assert_eq!(moved, CALLS);
    assert_eq!(live.tracked(), CALLS);
    let ticked = since(start);
    let peak = PEAK.load(Ordering::Relaxed) - base_peak;
    let approx = live.approx_bytes();
    drop(live);
    Run {
        accounts,
        ringing,
        answered,
        ticked,
        peak,
        approx,
    }
}

/// Acceptance 5: a million tracked calls stay under 256 bytes per call, measured. Asserted
/// with one account (the benchmark's case) and with 1,000 accounts of 1,000 calls each, all
/// calls sharing their tariff entry; printed for the record: a million accounts of one call
/// each (each call also brings its account's ledger), and an entry allocated per call.
#[test]
#[ignore = "a million calls: ~250 MB; run with --include-ignored --nocapture"]
fn million_tracked_calls_stay_under_256_bytes_each() {
    let _serial = serial();
    let mut worst = Vec::new();
    for accounts in [1, 1_000] {
        let run = measure(accounts, false);
        run.print();
        worst.push((accounts, run.worst()));
    }
    let spread = measure(CALLS, false);
    spread.print();
    println!(
        "memory: with one call per account the worst steady figure is {:.1} B/call (not asserted: it counts {CALLS} ledgers)",
        spread.worst()
    );
    let own = measure(1_000, true);
    own.print();
    println!(
        "memory: with an Arc<TariffEntry> allocated per call the worst steady figure is {:.1} B/call (not asserted: the daemon shares the entry since 625c93f)",
        own.worst()
    );
    for (accounts, w) in worst {
        assert!(
            w < BOUND,
            "{CALLS} calls of {accounts} account(s): {w:.1} bytes per call, not under {BOUND}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A full table

/// At `max_tracked_calls` new calls get `TableFull`, from eight threads at once; the table
/// never holds more; retransmissions of tracked calls still pass; every way a call ends frees
/// its slot for a new call. No panic anywhere (the threads are joined).
#[test]
fn a_full_table_refuses_new_calls_as_table_full_and_nothing_panics() {
    let _serial = serial();
    const MAX: usize = 100;
    let epoch = Instant::now();
    let cfg = LiveConfig {
        reserve_secs: 30,
        max_tracked_calls: MAX,
        ring_timeout: Duration::from_secs(5),
        ..LiveConfig::default()
    };
    let live = Arc::new(LiveState::new(cfg, epoch));
    let entry = Arc::new(TariffEntry::parse("0.10").unwrap());
    let ids: Vec<Arc<str>> = (0..4).map(|i| Arc::from(format!("acct-{i}"))).collect();
    let figs = rich(epoch);
    let key = |i: usize| live.call_key(format!("full-{i}@t").as_bytes(), b"tag");

    // Eight threads, 50 new calls each, all at once: exactly MAX admitted.
    let admitted = Arc::new(AtomicUsize::new(0));
    let full = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (live, ids, entry, admitted, full, barrier) = (
                Arc::clone(&live),
                ids.clone(),
                Arc::clone(&entry),
                Arc::clone(&admitted),
                Arc::clone(&full),
                Arc::clone(&barrier),
            );
            std::thread::spawn(move || {
                barrier.wait();
                for j in 0..50 {
                    let i = t * 50 + j;
                    let k = live.call_key(format!("full-{i}@t").as_bytes(), b"tag");
                    match live.admit(&ids[i % 4], k, &entry, &figs, epoch, WALL) {
                        Ok(a) => {
                            assert!(!a.retransmission);
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Refusal::TableFull) => {
                            full.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(other) => panic!("call {i}: refused {other:?}, not TableFull"),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("an admitting thread panicked");
    }
    assert_eq!(admitted.load(Ordering::Relaxed), MAX);
    assert_eq!(full.load(Ordering::Relaxed), 400 - MAX);
    assert_eq!(live.tracked(), MAX);

    let tracked: Vec<usize> = (0..400).filter(|i| live.is_tracked(key(*i))).collect();
    let untracked: Vec<usize> = (0..400).filter(|i| !live.is_tracked(key(*i))).collect();
    assert_eq!(tracked.len(), MAX);
    let acct_of = |i: usize| &ids[i % 4];

    // A retransmission of a tracked INVITE at a full table: admitted, nothing new held.
    let i = tracked[0];
    let r = live.admit(acct_of(i), key(i), &entry, &figs, epoch, WALL);
    assert!(matches!(r, Ok(a) if a.retransmission), "{r:?}");
    // A refused INVITE retransmitted is refused again.
    let n = untracked[0];
    assert_eq!(
        live.admit(acct_of(n), key(n), &entry, &figs, epoch, WALL),
        Err(Refusal::TableFull)
    );
    assert_eq!(live.tracked(), MAX);

    // Calls in the table go on: answered, ended.
    let t1 = epoch + Duration::from_secs(1);
    assert_eq!(
        live.answered(key(tracked[0]), t1, WALL),
        CallEvent::Answered
    );
    assert_eq!(
        live.answered(key(tracked[1]), t1, WALL),
        CallEvent::Answered
    );
    // A BYE frees a slot: one new call fits, the next does not.
    let t2 = epoch + Duration::from_secs(2);
    assert!(matches!(
        live.bye(key(tracked[0]), t2, WALL),
        CallEvent::Ended { .. }
    ));
    let (a, b) = (untracked[1], untracked[2]);
    assert!(live
        .admit(acct_of(a), key(a), &entry, &figs, t2, WALL)
        .is_ok());
    assert_eq!(
        live.admit(acct_of(b), key(b), &entry, &figs, t2, WALL),
        Err(Refusal::TableFull)
    );
    // A failure (486, 487 after CANCEL) frees one too.
    assert!(matches!(
        live.failed(key(tracked[2]), t2, WALL),
        CallEvent::Ended { .. }
    ));
    assert!(live
        .admit(acct_of(b), key(b), &entry, &figs, t2, WALL)
        .is_ok());
    assert_eq!(live.tracked(), MAX);

    // The figures of a full table read fine.
    for id in &ids {
        let f = live.figures(id, &figs, t2, WALL);
        assert!(f.in_progress() > 0);
    }

    // Past the ring timeout every ringing call ends; the one still answered stays.
    let t10 = epoch + Duration::from_secs(10);
    let mut ended = 0;
    loop {
        let st = live.tick(t10, WALL + 10, 7);
        ended += st.ring_timeouts;
        if !st.more {
            break;
        }
    }
    assert_eq!(ended, MAX - 1);
    assert_eq!(live.tracked(), 1);
    assert!(live.is_tracked(key(tracked[1])));
    // Room again for MAX - 1 new calls, and no more.
    for i in 1000..1000 + MAX - 1 {
        assert!(live
            .admit(acct_of(i), key(i), &entry, &figs, t10, WALL)
            .is_ok());
    }
    assert_eq!(
        live.admit(acct_of(2000), key(2000), &entry, &figs, t10, WALL),
        Err(Refusal::TableFull)
    );
    assert_eq!(Refusal::TableFull.reply_cause(), "channel_limit");
    assert_eq!(Refusal::TableFull.label(), "table_full");
}
