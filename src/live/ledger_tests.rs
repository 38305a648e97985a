#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;

use rust_decimal::Decimal;

use super::*;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn secs(s: u64) -> Now {
    Now {
        ns: s * 1_000_000_000,
    }
}

#[test]
fn now_rounds_both_ways() {
    let n = Now { ns: 1_500_000_000 };
    assert_eq!((n.secs_floor(), n.secs_ceil(), n.ms()), (1, 2, 1500));
    assert_eq!((secs(3).secs_floor(), secs(3).secs_ceil()), (3, 3));
}

#[test]
fn hysteresis_fires_once_per_crossing() {
    let mut h = Hysteresis::default();
    let th = d("5");
    assert!(!h.observe(d("10"), th));
    assert!(h.observe(d("4.99"), th));
    assert!(!h.observe(d("3"), th));
    assert!(!h.observe(d("5"), th), "equal is not above: still disarmed");
    assert!(!h.observe(d("4"), th));
    assert!(
        !h.observe(d("5.01"), th),
        "rising above re-arms, does not fire"
    );
    assert!(h.observe(d("4"), th));
}

#[test]
fn reserve_cost_is_cost_of_the_reserve_or_zero() {
    let e = TariffEntry::parse("1.20 0.10 60/60").unwrap();
    assert_eq!(reserve_cost(&e, 0), d("0"));
    assert_eq!(reserve_cost(&e, 30), d("1.30"));
    assert_eq!(reserve_cost(&e, 61), d("2.50"));
    // Rounded up at 12 places.
    let odd = TariffEntry::parse("0.0125").unwrap();
    assert_eq!(reserve_cost(&odd, 7), d("0.001458333334"));
}

#[test]
fn switch_at_is_the_first_second_where_l_reaches_k() {
    for (entry, k) in [
        ("0.60", "0.60"),
        ("0.0125", "0.0125"),
        ("0.0125 0.05 60/6", "0.07"),
        ("1.20 0.10 60/60", "1.30"),
        ("0.7 0 30/7", "3.333333333334"),
        ("0.03", "0.000000000001"),
    ] {
        let e = TariffEntry::parse(entry).unwrap();
        let k = d(k);
        let lin = Linear::new(&e, 100);
        let at = lin.switch_at(k).unwrap();
        assert!(lin.sixty_l(at) >= k * d("60"), "{entry}");
        assert!(
            at == 100 || lin.sixty_l(at - 1) < k * d("60"),
            "{entry}: {at} is not the first"
        );
    }
    let free = Linear::new(&TariffEntry::free(), 0);
    assert_eq!(free.switch_at(d("1")), None);
    assert_eq!(free.switch_at(d("0")), Some(0));
}

#[test]
fn ended_records_stay_bounded_and_exact() {
    let mut l = Ledger::default();
    l.sync(secs(0), None, 7, |_| None);
    for i in 0..1000u64 {
        l.record_ended(d("0.01"), i * 1000);
    }
    assert!(l.ended.len() <= ENDED_CAP);
    let f = l.figures(secs(1000));
    assert_eq!(f.ended_since_snapshot, d("10.00"));
    assert_eq!(f.ended_today, d("10.00"));
    // A snapshot read in the middle drops only records wholly before it (merged records are
    // kept until their latest end is covered: over-counting, never under-counting).
    l.sync(secs(1000), Some(500_000), 7, |_| None);
    let mid = l.figures(secs(1000)).ended_since_snapshot;
    assert!(mid >= d("5.00") && mid < d("10.00"), "{mid}");
    l.sync(secs(1000), Some(1_000_000), 7, |_| None);
    assert_eq!(l.figures(secs(1000)).ended_since_snapshot, d("0"));
    assert!(l.is_idle());
}

#[test]
fn an_older_snapshot_read_restores_nothing() {
    let mut l = Ledger::default();
    l.record_ended(d("1"), 10_000);
    l.record_ended(d("2"), 20_000);
    l.sync(secs(30), Some(15_000), 0, |_| None);
    assert_eq!(l.figures(secs(30)).ended_since_snapshot, d("2"));
    l.sync(secs(30), Some(5_000), 0, |_| None);
    assert_eq!(l.figures(secs(30)).ended_since_snapshot, d("2"));
}

#[test]
fn out_of_order_ends_are_kept_until_the_later_is_covered() {
    let mut l = Ledger::default();
    l.record_ended(d("1"), 20_000);
    l.record_ended(d("2"), 19_000); // another worker's slightly older clock
    l.sync(secs(30), Some(19_500), 0, |_| None);
    assert_eq!(l.figures(secs(30)).ended_since_snapshot, d("3"));
    l.sync(secs(30), Some(20_001), 0, |_| None);
    assert_eq!(l.figures(secs(30)).ended_since_snapshot, d("0"));
}

#[test]
fn day_roll_clears_today_but_not_the_ended_sum() {
    let mut l = Ledger::default();
    l.sync(secs(0), None, 100, |_| None);
    l.record_ended(d("1.5"), 1_000);
    assert_eq!(l.figures(secs(2)).ended_today, d("1.5"));
    l.sync(secs(3), None, 101, |_| None);
    let f = l.figures(secs(3));
    assert_eq!((f.ended_today, f.ended_since_snapshot), (d("0"), d("1.5")));
    // Dropping yesterday's record later does not push today's figure below zero.
    l.record_ended(d("0.5"), 4_000);
    l.sync(secs(5), Some(2_000), 101, |_| None);
    let f = l.figures(secs(5));
    assert_eq!(
        (f.ended_today, f.ended_since_snapshot),
        (d("0.5"), d("0.5"))
    );
}

#[test]
fn refusals_answer_with_their_configured_cause() {
    use Refusal::*;
    let causes: Vec<_> = [
        InsufficientCredit,
        ChannelLimit,
        CreditScaledChannels,
        CpsLimit,
        SpendLimit,
        TableFull,
        KeyInUse,
    ]
    .iter()
    .map(|r| (r.reply_cause(), r.label()))
    .collect();
    assert_eq!(
        causes,
        [
            ("insufficient_credit", "insufficient_credit"),
            ("channel_limit", "channel_limit"),
            ("channel_limit", "credit_scaled_channels"),
            ("cps_limit", "cps_limit"),
            ("spend_limit", "spend_limit"),
            ("channel_limit", "table_full"),
            ("channel_limit", "key_in_use"),
        ]
    );
}
