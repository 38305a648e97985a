#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use super::*;
use crate::live::ledger::Refusal;
use crate::live::tariff::TariffEntry;

/// Midnight UTC, 2025-12-02.
pub(super) const WALL0: u64 = 20_424 * 86_400;

pub(super) fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub(super) struct T {
    pub(super) live: LiveState,
    pub(super) epoch: Instant,
    pub(super) acct: Arc<str>,
}

impl T {
    pub(super) fn new(cfg: LiveConfig) -> T {
        let epoch = Instant::now();
        T {
            live: LiveState::new(cfg, epoch),
            epoch,
            acct: Arc::from("acme"),
        }
    }
    pub(super) fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }
    pub(super) fn key(&self, n: u64) -> CallKey {
        self.live.call_key(format!("call-{n}@h").as_bytes(), b"tag")
    }
    pub(super) fn figs(&self, available: &str, read_ms: u64) -> AccountFigures {
        AccountFigures::new(d(available), self.at(read_ms))
    }
    pub(super) fn admit(
        &self,
        n: u64,
        e: &Arc<TariffEntry>,
        f: &AccountFigures,
        ms: u64,
    ) -> Result<Admitted, Refusal> {
        self.live.admit(
            &self.acct,
            self.key(n),
            e,
            f,
            self.at(ms),
            WALL0 + ms / 1000,
        )
    }
    pub(super) fn answer(&self, n: u64, ms: u64) -> CallEvent {
        self.live
            .answered(self.key(n), self.at(ms), WALL0 + ms / 1000)
    }
    pub(super) fn bye(&self, n: u64, ms: u64) -> CallEvent {
        self.live.bye(self.key(n), self.at(ms), WALL0 + ms / 1000)
    }
    pub(super) fn fail(&self, n: u64, ms: u64) -> CallEvent {
        self.live
            .failed(self.key(n), self.at(ms), WALL0 + ms / 1000)
    }
    pub(super) fn figures(&self, f: &AccountFigures, ms: u64) -> Figures {
        self.live
            .figures(&self.acct, f, self.at(ms), WALL0 + ms / 1000)
    }
    pub(super) fn live_available(&self, f: &AccountFigures, ms: u64) -> Decimal {
        self.figures(f, ms).live_available(f.available)
    }
}

pub(super) fn entry(s: &str) -> Arc<TariffEntry> {
    Arc::new(TariffEntry::parse(s).unwrap())
}

pub(super) fn reserve(secs: u32) -> LiveConfig {
    LiveConfig {
        reserve_secs: secs,
        ..LiveConfig::default()
    }
}

#[test]
fn reserve_admits_only_what_credit_covers() {
    let t = T::new(reserve(60));
    let e = entry("1.00"); // reserve cost 1.00
    let f = t.figs("3.00", 0);
    for (n, left) in [(1, "2.00"), (2, "1.00"), (3, "0.00")] {
        let a = t.admit(n, &e, &f, 0).unwrap();
        assert_eq!((a.reserve, a.live_available), (d("1.00"), d(left)));
    }
    assert_eq!(t.admit(4, &e, &f, 0), Err(Refusal::InsufficientCredit));
    assert_eq!(t.live.tracked(), 3);
    // A failed call releases its hold.
    assert_eq!(
        t.fail(1, 1000),
        CallEvent::Ended {
            cause: EndCause::Failed,
            cost: d("0")
        }
    );
    assert!(t.admit(4, &e, &f, 1000).is_ok());
}

#[test]
fn no_reserve_needs_credit_above_zero() {
    let t = T::new(reserve(0));
    let e = entry("1.00");
    assert!(t.admit(1, &e, &t.figs("0.01", 0), 0).is_ok());
    assert_eq!(
        t.admit(2, &e, &t.figs("0", 0), 0),
        Err(Refusal::InsufficientCredit)
    );
    assert_eq!(
        t.admit(3, &e, &t.figs("-5", 0), 0),
        Err(Refusal::InsufficientCredit)
    );
}

#[test]
fn twenty_simultaneous_admissions_on_two_threads_admit_exactly_three() {
    for _round in 0..20 {
        let t = T::new(reserve(60));
        let e = entry("0.60 0.10"); // reserve cost 0.70
        let f = t.figs("2.10", 0);
        let barrier = Barrier::new(2);
        let admitted: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2u64)
                .map(|w| {
                    let (t, e, f, barrier) = (&t, &e, &f, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        (0..10u64)
                            .filter(|i| t.admit(w * 100 + i, e, f, 5).is_ok())
                            .count()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 3);
        assert_eq!(t.live.tracked(), 3);
        assert_eq!(t.live_available(&f, 5), d("0"));
    }
}

#[test]
fn answered_call_accrues_exactly_and_its_bye_records_the_cost() {
    let t = T::new(reserve(60));
    let e = entry("0.60"); // 0.01 per second
    let f = t.figs("10.00", 0);
    t.admit(1, &e, &f, 0).unwrap();
    assert_eq!(t.live_available(&f, 0), d("9.40"));
    assert_eq!(t.answer(1, 10_000), CallEvent::Answered);
    // Holds its reserve (0.60) until its cost passes it, then its cost so far.
    assert_eq!(t.live_available(&f, 40_000), d("9.40"));
    assert_eq!(t.live_available(&f, 70_000), d("9.40"));
    assert_eq!(t.live_available(&f, 100_000), d("9.10"));
    // A started second counts as a whole one.
    assert_eq!(t.live_available(&f, 100_001), d("9.09"));
    assert_eq!(
        t.bye(1, 100_000),
        CallEvent::Ended {
            cause: EndCause::Bye,
            cost: d("0.90")
        }
    );
    let fig = t.figures(&f, 100_000);
    assert_eq!(fig.in_progress(), 0);
    assert_eq!(fig.held(), d("0"));
    assert_eq!(fig.ended_since_snapshot, d("0.90"));
    assert_eq!(t.live_available(&f, 100_000), d("9.10"));
    // The next snapshot (read after the end) has it: billing charged 0.90.
    let f2 = t.figs("9.10", 110_000);
    assert_eq!(t.live_available(&f2, 120_000), d("9.10"));
    assert_eq!(t.live.tracked(), 0);
}

#[test]
fn calls_spanning_a_snapshot_refresh_keep_holding() {
    let t = T::new(reserve(0));
    let e = entry("0.60");
    let f0 = t.figs("10.00", 0);
    t.admit(1, &e, &f0, 0).unwrap();
    t.answer(1, 0);
    t.admit(2, &e, &f0, 0).unwrap();
    t.answer(2, 0);
    // Call 1 ends at 40 s (0.40); call 2 runs on.
    assert_eq!(
        t.bye(1, 40_000),
        CallEvent::Ended {
            cause: EndCause::Bye,
            cost: d("0.40")
        }
    );
    assert_eq!(t.live_available(&f0, 50_000), d("9.10")); // 10 - 0.40 - 0.50
                                                          // A snapshot read at 60 s: billing has call 1 (ended before), not call 2 (in progress).
    let f1 = t.figs("9.60", 60_000);
    assert_eq!(t.live_available(&f1, 60_000), d("9.00")); // 9.60 - 0.60
                                                          // Call 2 ends at 90 s, after that read: counted until a later read covers it.
    t.bye(2, 90_000);
    assert_eq!(t.live_available(&f1, 95_000), d("8.70"));
    let f2 = t.figs("8.70", 120_000);
    assert_eq!(t.live_available(&f2, 120_000), d("8.70"));
    // An older snapshot's figures (another worker still on it) cannot bring back what the
    // newer read dropped.
    assert_eq!(t.figures(&f1, 120_000).ended_since_snapshot, d("0"));
}

#[test]
fn increments_60_60_with_fee_hold_an_upper_bound_never_less() {
    for (spec, reserve_secs) in [
        ("1.20 0.10 60/60", 0),
        ("0.60 0 30/6", 0),
        ("0.60 0 30/6", 90),
        ("0.0125 0.05 60/6", 60),
        ("0.60", 10),
        ("0.90 0.02 0/60", 0),
    ] {
        let t = T::new(reserve(reserve_secs));
        let e = entry(spec);
        let f = t.figs("1000", 0);
        t.admit(1, &e, &f, 0).unwrap();
        let k = crate::live::ledger::reserve_cost(&e, reserve_secs);
        assert_eq!(t.figures(&f, 0).held(), k, "{spec}");
        t.answer(1, 5_000);
        for s in 5..400u64 {
            let held = t.figures(&f, s * 1000).held();
            let cost = e.cost(s - 5);
            let exact = k.max(cost);
            let slack = e.rate_per_min * Decimal::from(e.increment) / d("60");
            assert!(held >= exact, "{spec} at {s}s: {held} < {exact}");
            assert!(
                held <= exact + slack,
                "{spec} at {s}s: {held} > {exact} + {slack}"
            );
        }
        // The end records the exact cost, not the bound.
        assert_eq!(
            t.bye(1, 400_000),
            CallEvent::Ended {
                cause: EndCause::Bye,
                cost: e.cost(395)
            }
        );
    }
}

#[test]
fn increments_1_1_are_held_exactly_at_whole_seconds() {
    let t = T::new(reserve(0));
    let e = entry("0.60 0.05");
    let f = t.figs("100", 0);
    t.admit(1, &e, &f, 0).unwrap();
    t.answer(1, 3_000);
    for s in 3..200u64 {
        assert_eq!(t.figures(&f, s * 1000).held(), e.cost(s - 3), "{s}");
    }
}

#[test]
fn channel_limit_counts_calls_in_progress() {
    let t = T::new(reserve(0));
    let e = entry("0.01");
    let mut f = t.figs("100", 0);
    f.max_channels = Some(2);
    t.admit(1, &e, &f, 0).unwrap();
    t.admit(2, &e, &f, 0).unwrap();
    t.answer(2, 0);
    assert_eq!(t.admit(3, &e, &f, 0), Err(Refusal::ChannelLimit));
    t.bye(2, 1000);
    assert!(t.admit(3, &e, &f, 1000).is_ok());
    f.max_channels = Some(0);
    assert_eq!(t.admit(4, &e, &f, 1000), Err(Refusal::ChannelLimit));
}

#[test]
fn credit_scaled_channels_need_a_reserve_per_call() {
    let cfg = LiveConfig {
        credit_scaled_channels: true,
        ..reserve(60)
    };
    let t = T::new(cfg);
    let e = entry("1.00"); // reserve 1.00
    let f = t.figs("10.00", 0);
    t.admit(1, &e, &f, 0).unwrap();
    t.answer(1, 0);
    // At 9 min call 1 has cost 9.00: 1.00 left, one reserve: room for one call in all.
    assert_eq!(
        t.admit(2, &e, &f, 540_000),
        Err(Refusal::CreditScaledChannels)
    );
    // The reserve rule alone would admit it.
    let plain = T::new(reserve(60));
    plain.admit(1, &e, &f, 0).unwrap();
    plain.answer(1, 0);
    assert!(plain.admit(2, &e, &f, 540_000).is_ok());
    // Ringing calls' reserves are not counted twice: 10.00 covers ten ringing calls.
    let t = T::new(cfg);
    for n in 0..10 {
        assert!(t.admit(n, &e, &f, 0).is_ok(), "{n}");
    }
    assert_eq!(t.admit(10, &e, &f, 0), Err(Refusal::InsufficientCredit));
}

#[test]
fn cps_limit_is_a_bucket_of_max_cps() {
    let t = T::new(reserve(0));
    let e = entry("0.01");
    let mut f = t.figs("100", 0);
    f.max_cps = Some(2);
    assert!(t.admit(1, &e, &f, 0).is_ok());
    assert!(t.admit(2, &e, &f, 0).is_ok());
    assert_eq!(t.admit(3, &e, &f, 0), Err(Refusal::CpsLimit));
    assert_eq!(t.admit(3, &e, &f, 499), Err(Refusal::CpsLimit));
    assert!(t.admit(3, &e, &f, 500).is_ok());
    assert_eq!(t.admit(4, &e, &f, 500), Err(Refusal::CpsLimit));
    // After a quiet second the whole burst is back, not more.
    assert!(t.admit(5, &e, &f, 3_000).is_ok());
    assert!(t.admit(6, &e, &f, 3_000).is_ok());
    assert_eq!(t.admit(7, &e, &f, 3_000), Err(Refusal::CpsLimit));
    // A call refused for credit does not use a token.
    let t = T::new(reserve(0));
    let mut poor = t.figs("0", 0);
    poor.max_cps = Some(1);
    assert_eq!(t.admit(1, &e, &poor, 0), Err(Refusal::InsufficientCredit));
    poor.available = d("1");
    assert!(t.admit(1, &e, &poor, 0).is_ok());
    f.max_cps = Some(0);
    assert_eq!(t.admit(9, &e, &f, 10_000), Err(Refusal::CpsLimit));
}

#[test]
fn daily_spend_limit_counts_billing_ended_and_held() {
    let t = T::new(reserve(60));
    let e = entry("1.00"); // reserve 1.00
    let mut f = t.figs("100", 0);
    f.daily_spend_limit = Some(d("5.00"));
    f.spent_today = d("3.00");
    t.admit(1, &e, &f, 0).unwrap(); // 3 + 1 held + ... = 4 < 5
    assert_eq!(t.admit(2, &e, &f, 0), Err(Refusal::SpendLimit)); // 3 + 1 + 1 = 5
    t.answer(1, 0);
    assert_eq!(
        t.bye(1, 90_000),
        CallEvent::Ended {
            cause: EndCause::Bye,
            cost: d("1.50")
        }
    );
    // 3 + 1.50 ended today + 1 reserve >= 5.
    assert_eq!(t.admit(2, &e, &f, 90_000), Err(Refusal::SpendLimit));
    // Next UTC day: billing's spent_today starts again, today's ended sum too.
    f.spent_today = d("0");
    let tomorrow = 86_400_000;
    assert!(t
        .live
        .admit(&t.acct, t.key(2), &e, &f, t.at(tomorrow), WALL0 + 86_400)
        .is_ok());
    let fig = t.live.figures(&t.acct, &f, t.at(tomorrow), WALL0 + 86_400);
    assert_eq!(
        (fig.ended_today, fig.ended_since_snapshot),
        (d("0"), d("1.50"))
    );
}

#[test]
fn table_full_refuses_and_never_untracks() {
    let cfg = LiveConfig {
        max_tracked_calls: 2,
        ..reserve(0)
    };
    let t = T::new(cfg);
    let e = entry("0.01");
    let f = t.figs("100", 0);
    t.admit(1, &e, &f, 0).unwrap();
    t.admit(2, &e, &f, 0).unwrap();
    assert_eq!(t.admit(3, &e, &f, 0), Err(Refusal::TableFull));
    assert_eq!(t.live.tracked(), 2);
    assert!(t.live.call(t.key(1)).is_some() && t.live.call(t.key(2)).is_some());
    t.bye(1, 0);
    assert!(t.admit(3, &e, &f, 0).is_ok());
    // Refusals for other causes give the slot back.
    assert_eq!(t.admit(4, &e, &t.figs("0", 0), 0), Err(Refusal::TableFull));
    t.bye(2, 0);
    assert_eq!(
        t.admit(4, &e, &t.figs("0", 0), 0),
        Err(Refusal::InsufficientCredit)
    );
    assert_eq!(t.live.tracked(), 1);
}

#[test]
fn retransmissions_and_repeated_events_change_nothing() {
    let t = T::new(reserve(60));
    let e = entry("1.00");
    let f = t.figs("1.00", 0);
    t.admit(1, &e, &f, 0).unwrap();
    // The INVITE again: admitted (the credit it holds is its own), nothing new held.
    let again = t.admit(1, &e, &f, 100).unwrap();
    assert!(again.retransmission);
    assert_eq!(t.live.tracked(), 1);
    assert_eq!(t.live_available(&f, 100), d("0"));
    // Another account cannot use the same key.
    let other: Arc<str> = Arc::from("other");
    assert_eq!(
        t.live.admit(&other, t.key(1), &e, &f, t.at(100), WALL0),
        Err(Refusal::KeyInUse)
    );
    assert_eq!(t.answer(1, 1000), CallEvent::Answered);
    assert_eq!(t.answer(1, 1100), CallEvent::Ignored); // retransmitted or forked 2xx
    assert_eq!(t.fail(1, 1200), CallEvent::Ignored); // a re-INVITE's 491
    assert_eq!(t.admit(1, &e, &f, 1300).map(|a| a.retransmission), Ok(true));
    assert_eq!(
        t.live.call(t.key(1)).map(|c| c.state),
        Some(CallState::Answered)
    );
    assert!(matches!(
        t.bye(1, 31_000),
        CallEvent::Ended {
            cause: EndCause::Bye,
            ..
        }
    ));
    assert_eq!(t.bye(1, 31_100), CallEvent::Ignored); // the 200 to the BYE
    assert_eq!(t.answer(1, 31_200), CallEvent::Ignored);
    assert_eq!(t.fail(9, 0), CallEvent::Ignored); // unknown call
    assert_eq!(t.live.tracked(), 0);
}

#[test]
fn bye_or_cancel_before_the_answer_costs_nothing() {
    let t = T::new(reserve(60));
    let e = entry("1.00 0.50");
    let f = t.figs("10", 0);
    t.admit(1, &e, &f, 0).unwrap();
    t.admit(2, &e, &f, 0).unwrap();
    assert_eq!(
        t.bye(1, 5000),
        CallEvent::Ended {
            cause: EndCause::Bye,
            cost: d("0")
        }
    );
    // 487 after CANCEL is a non-2xx final.
    assert_eq!(
        t.fail(2, 5000),
        CallEvent::Ended {
            cause: EndCause::Failed,
            cost: d("0")
        }
    );
    assert_eq!(t.live_available(&f, 5000), d("10"));
}

#[test]
fn ring_timeout_and_call_expiry_end_calls_in_tick() {
    let cfg = LiveConfig {
        ring_timeout: Duration::from_secs(180),
        call_expiry: Duration::from_secs(3600),
        ..reserve(60)
    };
    let t = T::new(cfg);
    let e = entry("0.60");
    let f = t.figs("100", 0);
    t.admit(1, &e, &f, 0).unwrap();
    t.admit(2, &e, &f, 0).unwrap();
    t.answer(2, 10_000);
    let tick = |ms: u64| t.live.tick(t.at(ms), WALL0 + ms / 1000, 100);
    assert_eq!(tick(179_999).examined, 0);
    let st = tick(180_000);
    assert_eq!((st.ring_timeouts, st.expired, st.examined), (1, 0, 2));
    assert!(t.live.call(t.key(1)).is_none());
    assert_eq!(t.live.tracked(), 1);
    assert_eq!(tick(3_599_999).expired, 0);
    let st = tick(3_600_000);
    assert_eq!(st.expired, 1);
    assert_eq!(t.live.tracked(), 0);
    // The expired call's cost (3590 s) counts until a snapshot covers it.
    assert_eq!(t.figures(&f, 3_600_000).ended_since_snapshot, d("35.90"));
    assert_eq!(t.live_available(&f, 3_600_000), d("64.10"));
}

#[test]
fn tick_work_is_bounded_and_skips_ended_calls() {
    let t = T::new(reserve(0));
    let e = entry("0.60");
    let f = t.figs("100", 0);
    for n in 0..10 {
        t.admit(n, &e, &f, 0).unwrap();
    }
    for n in 0..5 {
        t.bye(n, 1000);
    }
    let st = t.live.tick(t.at(200_000), WALL0 + 200, 3);
    assert_eq!((st.examined, st.ring_timeouts, st.more), (3, 0, true));
    let st = t.live.tick(t.at(200_000), WALL0 + 200, 100);
    assert_eq!((st.examined, st.ring_timeouts, st.more), (7, 5, false));
    assert_eq!(t.live.tracked(), 0);
}

#[test]
fn a_reused_key_is_a_new_call_after_the_end() {
    let t = T::new(reserve(0));
    let e = entry("0.60");
    let f = t.figs("100", 0);
    t.admit(1, &e, &f, 0).unwrap();
    t.bye(1, 1000);
    t.admit(1, &e, &f, 100_000).unwrap(); // a replayed INVITE later: a new call
                                          // The first call's ring deadline (180 s) must not end the second one (280 s).
    assert_eq!(
        t.live.tick(t.at(180_000), WALL0 + 180, 100).ring_timeouts,
        0
    );
    assert!(t.live.call(t.key(1)).is_some());
    assert_eq!(
        t.live.tick(t.at(280_000), WALL0 + 280, 100).ring_timeouts,
        1
    );
}

#[test]
fn ten_thousand_calls_in_progress_sum_like_a_scan() {
    let t = T::new(reserve(30));
    let entries = [
        entry("0.60"),
        entry("1.20 0.10 60/60"),
        entry("0.0125 0.05 30/6"),
    ];
    let f = t.figs("1000000", 0);
    for n in 0..10_000u64 {
        let e = &entries[(n % 3) as usize];
        t.admit(n, e, &f, n).unwrap();
        if n % 2 == 0 {
            t.answer(n, 1000 * (n % 300) + n);
        }
    }
    let fig = t.figures(&f, 400_000);
    assert_eq!((fig.ringing, fig.answered), (5000, 5000));
    // Brute force: each answered call holds max(K, L(t)); compare within the documented slack.
    let mut exact = Decimal::ZERO;
    let mut slack = Decimal::ZERO;
    for n in 0..10_000u64 {
        let e = &entries[(n % 3) as usize];
        let k = crate::live::ledger::reserve_cost(e, 30);
        if n % 2 == 0 {
            let t0_ms = 1000 * (n % 300) + n;
            let elapsed = (400_000 - t0_ms).div_ceil(1000);
            exact += k
                .max(crate::live::ledger::round_up(e.cost(0)))
                .max(e.cost(elapsed));
            slack += e.rate_per_min * Decimal::from(e.increment + 1) / d("60");
        } else {
            exact += k;
        }
    }
    assert!(fig.held() >= exact, "{} < {exact}", fig.held());
    assert!(
        fig.held() <= exact + slack,
        "{} > {exact} + {slack}",
        fig.held()
    );
    // Ending all of them leaves exactly nothing held.
    for n in 0..10_000u64 {
        t.bye(n, 400_000);
    }
    let fig = t.figures(&f, 400_000);
    assert_eq!((fig.in_progress(), fig.held()), (0, d("0")));
}

#[test]
fn low_credit_fires_once_per_crossing() {
    let t = T::new(reserve(0));
    let e = entry("0.60");
    let th = d("5");
    let f = t.figs("10", 0);
    let low = |f: &AccountFigures, ms: u64| {
        t.live
            .low_credit(&t.acct, f, th, t.at(ms), WALL0 + ms / 1000)
    };
    assert_eq!(low(&f, 0), None);
    t.admit(1, &e, &f, 0).unwrap();
    t.answer(1, 0);
    assert_eq!(low(&f, 400_000), None); // 6.00 left
    let ev = low(&f, 600_000).unwrap(); // 4.00 left
    assert_eq!((ev.live_available, ev.calls_in_progress), (d("4.00"), 1));
    assert_eq!(low(&f, 700_000), None);
    // Topped up above the threshold, then falling below again.
    let topped = t.figs("20", 700_000);
    assert_eq!(low(&topped, 700_000), None); // 13.00
    assert!(low(&topped, 1_600_000).is_some()); // 4.00
}

#[test]
fn figures_of_an_unknown_account_are_zero() {
    let t = T::new(reserve(0));
    let f = t.figs("10", 0);
    assert_eq!(
        t.live.figures("nobody", &f, t.at(0), WALL0),
        Figures::default()
    );
}

#[test]
fn forget_idle_accounts_keeps_the_busy_ones() {
    let t = T::new(reserve(0));
    let e = entry("0.60");
    let f = t.figs("10", 0);
    t.admit(1, &e, &f, 0).unwrap();
    t.live.forget_idle_accounts();
    assert_eq!(t.live.accounts.len(), 1);
    t.fail(1, 0);
    t.live.forget_idle_accounts();
    assert_eq!(t.live.accounts.len(), 0);
}

#[test]
fn a_call_entry_stays_small() {
    assert!(std::mem::size_of::<(CallKey, Call)>() <= 64);
}

#[test]
fn the_same_invite_on_two_workers_at_once_is_admitted_twice_and_held_once() {
    for round in 0..300u64 {
        let t = T::new(reserve(60));
        let e = entry("1.00");
        let f = t.figs("5", 0);
        let barrier = Barrier::new(2);
        let results: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let (t, e, f, barrier) = (&t, &e, &f, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        t.admit(round, e, f, 0)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            results.iter().all(Result::is_ok),
            "round {round}: {results:?}"
        );
        assert_eq!(
            results
                .iter()
                .filter(|r| r.is_ok_and(|a| a.retransmission))
                .count(),
            1
        );
        assert_eq!(t.live.tracked(), 1);
        assert_eq!(t.live_available(&f, 0), d("4"));
    }
}

#[test]
fn a_timeout_seen_before_an_answer_does_not_end_the_answered_call() {
    // tick reads the state, then takes the account's lock: an answer may come in between.
    let t = T::new(reserve(0));
    let e = entry("0.60");
    let f = t.figs("100", 0);
    t.admit(1, &e, &f, 0).unwrap();
    t.answer(1, 1000);
    let slot = t.live.slot(&t.acct);
    let mut l = slot.lock();
    let now = t.live.now(t.at(180_000));
    let ev = t
        .live
        .event_locked(&slot, &mut l, t.key(1), now, Ev::RingTimeout(0));
    assert_eq!(ev, CallEvent::Ignored);
    // An expiry deadline of an older call with the same key is not this call's either.
    let ev = t
        .live
        .event_locked(&slot, &mut l, t.key(1), now, Ev::Expire(7));
    assert_eq!(ev, CallEvent::Ignored);
    drop(l);
    assert!(t.live.call(t.key(1)).is_some());
}

#[test]
fn the_cost_rounds_the_true_duration_up_once() {
    // Answered at 10.0001 s, ended at 100.0009 s: 90.0008 s, billed 91 s.
    let t = T::new(reserve(0));
    let e = entry("0.60");
    let f = t.figs("100", 0);
    t.admit(1, &e, &f, 0).unwrap();
    t.live
        .answered(t.key(1), t.epoch + Duration::from_micros(10_000_100), WALL0);
    let ev = t.live.bye(
        t.key(1),
        t.epoch + Duration::from_micros(100_000_900),
        WALL0,
    );
    assert_eq!(
        ev,
        CallEvent::Ended {
            cause: EndCause::Bye,
            cost: d("0.91")
        }
    );
}

#[test]
fn is_tracked_follows_the_call() {
    let t = T::new(reserve(0));
    let e = entry("0.60");
    let f = t.figs("100", 0);
    assert!(!t.live.is_tracked(t.key(1)));
    t.admit(1, &e, &f, 0).unwrap();
    assert!(t.live.is_tracked(t.key(1)));
    t.bye(1, 0);
    assert!(!t.live.is_tracked(t.key(1)));
}

#[test]
fn live_state_is_shared_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<LiveState>();
}

#[test]
fn busy_accounts_are_those_with_calls() {
    let t = T::new(reserve(0));
    let e = entry("0.60");
    let f = t.figs("10", 0);
    assert!(t.live.busy_accounts().is_empty());
    t.admit(1, &e, &f, 0).unwrap();
    assert_eq!(t.live.busy_accounts(), vec![Arc::clone(&t.acct)]);
    t.fail(1, 0);
    assert!(t.live.busy_accounts().is_empty());
}

/// The low-credit sweep looks at an account after an admission (once), while it has answered
/// calls, and while its event is fired; an account with only ended or no calls costs it nothing.
#[test]
fn the_sweep_looks_only_where_the_live_figure_can_have_fallen() {
    let t = T::new(reserve(0));
    let e = entry("0.60");
    let f = t.figs("10", 0);
    assert!(t.live.sweep_accounts().is_empty());
    t.admit(1, &e, &f, 0).unwrap();
    assert_eq!(t.live.sweep_accounts(), vec![Arc::clone(&t.acct)]);
    assert!(
        t.live.sweep_accounts().is_empty(),
        "ringing: looked at once"
    );
    t.answer(1, 1);
    assert_eq!(t.live.sweep_accounts().len(), 1);
    assert_eq!(t.live.sweep_accounts().len(), 1, "answered: every sweep");
    t.bye(1, 30);
    assert!(t.live.sweep_accounts().is_empty());
    // A fired event keeps the account in view until the figure rises again.
    t.admit(2, &e, &f, 31).unwrap();
    let hit = t
        .live
        .low_credit(&t.acct, &f, Decimal::from(100), t.at(31), 0);
    assert!(hit.is_some());
    t.fail(2, 32);
    assert_eq!(t.live.sweep_accounts().len(), 1);
    assert_eq!(t.live.sweep_accounts().len(), 1);
}
