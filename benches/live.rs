//! Live-credit micro-benchmarks (SPEC 7): one admission (check + hold, then the release of a
//! ringing call, so the count stays put) with 1, 100 and 10,000 calls of the same account in
//! progress (it must be flat: O(1) in the account's calls), a tariff lookup, and the memory of
//! 1,000,000 tracked calls (bytes per call, counted by a wrapping global allocator; printed
//! once). Run: `cargo bench --bench live`.
//!
//! Rough figures (one short run, `--warm-up-time 1 --measurement-time 2`, on a 2-core machine
//! shared with three compiling sessions, load ≈ 6; before the admission stopped computing the
//! figures twice): admit+release 1.02 µs / 0.76 µs / 0.82 µs with 1 / 100 / 10,000 calls in
//! progress (flat); normalise + lookup in a 10,000-prefix tariff 92 ns; 1,000,000 answered
//! calls = 186.6 bytes per call (allocator-counted).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use creditgate::live::calls::{AccountFigures, LiveConfig, LiveState};
use creditgate::live::tariff::{dialled_number, Tariff, TariffEntry};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rust_decimal::Decimal;

struct Counting;
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(l.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE_BYTES.fetch_sub(l.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(n as i64 - l.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WALL: u64 = 20_424 * 86_400;

fn cfg() -> LiveConfig {
    LiveConfig {
        reserve_secs: 60,
        credit_scaled_channels: true,
        max_tracked_calls: 2_000_000,
        ..LiveConfig::default()
    }
}

/// A state with `n` calls of one account in progress, half of them answered at spread times.
fn populated(n: u64, epoch: Instant) -> (LiveState, Arc<str>, Arc<TariffEntry>, AccountFigures) {
    let live = LiveState::new(cfg(), epoch);
    let acct: Arc<str> = Arc::from("acme");
    let entry = Arc::new(TariffEntry::parse("0.0125 0.05 60/6").unwrap());
    let mut figs = AccountFigures::new(Decimal::from_str("1000000000").unwrap(), epoch);
    figs.max_channels = Some(u32::MAX);
    figs.max_cps = Some(1_000_000_000);
    figs.daily_spend_limit = Some(Decimal::from_str("1000000000000").unwrap());
    for i in 0..n {
        let key = live.call_key(format!("setup-{i}@bench").as_bytes(), b"tag");
        let at = epoch + Duration::from_millis(i % 600_000);
        live.admit(&acct, key, &entry, &figs, at, WALL).unwrap();
        if i % 2 == 0 {
            live.answered(key, at, WALL);
        }
    }
    (live, acct, entry, figs)
}

fn admission(c: &mut Criterion) {
    let mut g = c.benchmark_group("live_admit_release");
    for n in [1u64, 100, 10_000] {
        let epoch = Instant::now();
        let (live, acct, entry, figs) = populated(n, epoch);
        let key = live.call_key(b"the-new-call@bench", b"tag");
        let now = epoch + Duration::from_secs(700);
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                let a = live.admit(&acct, key, &entry, &figs, now, WALL);
                black_box(a.unwrap());
                black_box(live.failed(key, now, WALL));
            })
        });
    }
    g.finish();
}

fn tariff(c: &mut Criterion) {
    // 10,000 prefixes of 1 to 8 digits.
    let mut t = Tariff::new();
    let mut x: u64 = 12345;
    while t.len() < 10_000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 1 + (x >> 60) as usize % 8;
        let prefix: String = format!("{:08}", x % 100_000_000)[..len].to_string();
        let _ = t.insert_str(&prefix, "0.0120 0.05 60/6");
    }
    let mut g = c.benchmark_group("tariff_10k_prefixes");
    g.bench_function("normalise_and_lookup", |b| {
        b.iter(|| {
            let n = dialled_number(black_box(b"4711#+4930123456789"), Some(b"4711#")).unwrap();
            black_box(t.lookup(&n));
        })
    });
    g.finish();
}

fn memory(_c: &mut Criterion) {
    const N: u64 = 1_000_000;
    let epoch = Instant::now();
    // Keys built first (outside the count), then the state.
    let keys_state = LiveState::new(cfg(), epoch);
    let keys: Vec<_> = (0..N)
        .map(|i| keys_state.call_key(format!("mem-{i}@bench").as_bytes(), b"tag"))
        .collect();
    let acct: Arc<str> = Arc::from("acme");
    let entry = Arc::new(TariffEntry::parse("0.0125 0.05 60/6").unwrap());
    let figs = AccountFigures::new(Decimal::from_str("1000000000000").unwrap(), epoch);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let live = LiveState::new(cfg(), epoch);
    let t0 = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        let at = epoch + Duration::from_millis(i as u64 % 100_000);
        live.admit(&acct, *key, &entry, &figs, at, WALL).unwrap();
        // All answered: each also waits in the account's switch heap (the worst case).
        live.answered(*key, at, WALL);
    }
    let took = t0.elapsed();
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - before;
    println!(
        "memory: {N} tracked calls (answered) = {bytes} bytes, {:.1} bytes per call \
         (admit+answer {:.0} ns per call, single thread); approx_bytes() says {}",
        bytes as f64 / N as f64,
        took.as_nanos() as f64 / N as f64,
        live.approx_bytes()
    );
    assert_eq!(live.tracked(), N as usize);
    drop(live);
}

criterion_group!(benches, memory, admission, tariff);
criterion_main!(benches);
