#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;

use super::*;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn e(s: &str) -> TariffEntry {
    TariffEntry::parse(s).unwrap()
}

#[test]
fn parse_defaults_and_full_form() {
    assert_eq!(
        e("0.0120"),
        TariffEntry {
            rate_per_min: d("0.0120"),
            connect_fee: d("0"),
            initial: 1,
            increment: 1
        }
    );
    assert_eq!(
        e("0.0120 0.05 60/6"),
        TariffEntry {
            rate_per_min: d("0.0120"),
            connect_fee: d("0.05"),
            initial: 60,
            increment: 6
        }
    );
    assert_eq!(e(" 1.5\t0.10 ").connect_fee, d("0.10"));
    assert_eq!(e("0 0 0/60").initial, 0);
    assert_eq!(e("-0").rate_per_min, d("0"));
}

#[test]
fn parse_errors_name_the_field() {
    use TariffError::*;
    let err = |s: &str| TariffEntry::parse(s).unwrap_err();
    assert_eq!(err(""), Empty);
    assert_eq!(err("   "), Empty);
    assert_eq!(err("1 2 3/4 5"), TooManyFields(4));
    assert!(matches!(err("abc"), BadAmount { field: "rate", .. }));
    assert!(matches!(err("1e3"), BadAmount { field: "rate", .. }));
    assert!(matches!(err("1."), BadAmount { field: "rate", .. }));
    assert!(matches!(err(".5"), BadAmount { field: "rate", .. }));
    assert!(matches!(err("+1"), BadAmount { field: "rate", .. }));
    assert!(matches!(err("-0.01"), Negative { field: "rate", .. }));
    assert!(matches!(
        err("1 -0.05"),
        Negative {
            field: "connect_fee",
            ..
        }
    ));
    assert!(matches!(
        err("1 x"),
        BadAmount {
            field: "connect_fee",
            ..
        }
    ));
    assert!(matches!(
        err("1000000000000000"),
        OutOfRange { field: "rate", .. }
    ));
    assert!(matches!(err("1 0 60"), BadIncrements { .. }));
    assert!(matches!(err("1 0 60/"), BadIncrements { .. }));
    assert!(matches!(err("1 0 /6"), BadIncrements { .. }));
    assert!(matches!(err("1 0 -1/6"), BadIncrements { .. }));
    assert!(matches!(err("1 0 1/6/7"), BadIncrements { .. }));
    assert!(matches!(err("1 0 99999999999/1"), BadIncrements { .. }));
    assert!(matches!(err("1 0 60/0"), ZeroIncrement { .. }));
    assert!(matches!(err("1 0 86401/1"), IncrementTooLong { .. }));
    assert!(err("1 -0.05").to_string().contains("connect_fee"));
    assert!(err("1 0 60/0").to_string().contains("60/0"));
}

#[test]
fn parse_never_panics_on_junk() {
    for s in [
        "\u{0}",
        "٣",
        "1 ٣",
        "1 1 ٣/1",
        "99999999999999999999999999999999999",
        "0.00000000000000000000000000000000001",
        "1 1 4294967296/1",
        "--1",
        "-",
        "1 1 1/1\u{a0}",
    ] {
        let _ = TariffEntry::parse(s);
    }
}

#[test]
fn billed_and_cost_increments_1_1() {
    let t = e("0.60"); // 0.01 per second
    assert_eq!(t.billed(0), 1);
    assert_eq!(t.billed(1), 1);
    assert_eq!(t.billed(2), 2);
    assert_eq!(t.cost(0), d("0.01"));
    assert_eq!(t.cost(1), d("0.01"));
    assert_eq!(t.cost(90), d("0.90"));
}

#[test]
fn billed_and_cost_increments_60_60() {
    let t = e("1.20 0 60/60");
    assert_eq!(t.billed(0), 60);
    assert_eq!(t.billed(60), 60);
    assert_eq!(t.billed(61), 120);
    assert_eq!(t.billed(120), 120);
    assert_eq!(t.billed(121), 180);
    assert_eq!(t.cost(0), d("1.20"));
    assert_eq!(t.cost(60), d("1.20"));
    assert_eq!(t.cost(61), d("2.40"));
}

#[test]
fn billed_and_cost_increments_30_6() {
    let t = e("0.60 0 30/6");
    assert_eq!(t.billed(0), 30);
    assert_eq!(t.billed(30), 30);
    assert_eq!(t.billed(31), 36);
    assert_eq!(t.billed(36), 36);
    assert_eq!(t.billed(37), 42);
    assert_eq!(t.cost(29), d("0.30"));
    assert_eq!(t.cost(31), d("0.36"));
    assert_eq!(t.cost(37), d("0.42"));
}

#[test]
fn connect_fee_is_added_once() {
    let t = e("0.0120 0.05 60/6");
    assert_eq!(t.cost(0), d("0.05") + d("0.0120")); // 60 s billed at 0.012/min
    assert_eq!(t.cost(60), d("0.062"));
    assert_eq!(t.cost(61), d("0.0632")); // 66 s: 0.0132 + 0.05
    let fee_only = e("0 0.25");
    assert_eq!(fee_only.cost(3600), d("0.25"));
}

#[test]
fn zero_initial_bills_from_the_first_second() {
    let t = e("0.60 0 0/60");
    assert_eq!(t.billed(0), 0);
    assert_eq!(t.cost(0), d("0"));
    assert_eq!(t.billed(1), 60);
    assert_eq!(t.cost(1), d("0.60"));
}

#[test]
fn fractions_of_a_second_round_up() {
    let t = e("0.60");
    assert_eq!(t.cost_of(Duration::from_millis(90_000)), d("0.90"));
    assert_eq!(t.cost_of(Duration::from_millis(90_001)), d("0.91"));
    assert_eq!(whole_secs_up(Duration::from_nanos(1)), 1);
    assert_eq!(whole_secs_up(Duration::ZERO), 0);
}

#[test]
fn non_terminating_rates_are_exact_to_28_digits() {
    // 0.0125/min for 7 s = 0.0875/60.
    let t = e("0.0125");
    assert_eq!(t.cost(7), d("0.0875") / d("60"));
}

#[test]
fn huge_durations_saturate_instead_of_panicking() {
    let t = e("999999999999999 999999999999999 86400/86400");
    assert!(t.cost(u64::MAX) > d("0"));
    assert_eq!(t.billed(u64::MAX), t.billed(u64::MAX));
}

#[test]
fn dialled_number_normalises() {
    let n = |u: &str, tp: Option<&str>| {
        dialled_number(u.as_bytes(), tp.map(str::as_bytes))
            .map(|x| String::from_utf8(x.as_bytes().to_vec()).unwrap())
    };
    assert_eq!(n("+4930123", None).as_deref(), Some("4930123"));
    assert_eq!(
        n("4711#+4930123", Some("4711#")).as_deref(),
        Some("4930123")
    );
    assert_eq!(n("4711#0049301", Some("4711#")).as_deref(), Some("0049301"));
    assert_eq!(n("+1-555-(010).99", None).as_deref(), Some("155501099"));
    assert_eq!(n("alice", None), None);
    assert_eq!(n("+", None), None);
    assert_eq!(n("", None), None);
    assert_eq!(n("*21#", None), None);
    assert_eq!(n("%2B4930", None), None);
    // Tech prefix absent from the user: the user is taken as it is.
    assert_eq!(n("4930", Some("99#")).as_deref(), Some("4930"));
    let long = "1".repeat(40);
    assert_eq!(n(&long, None).unwrap().len(), MAX_DIALLED_DIGITS);
}

fn tariff() -> Tariff {
    let mut t = Tariff::new();
    t.insert_str("49", "0.02").unwrap();
    t.insert_str("4930", "0.01").unwrap();
    t.insert_str("491", "0.20 0.05 60/60").unwrap();
    t.insert_str("+1", "0.005").unwrap();
    t.insert_str("0", "9.99").unwrap();
    t.insert_str("00", "1.00").unwrap();
    t
}

fn rate_of(t: &Tariff, number: &str) -> Option<Decimal> {
    let n = dialled_number(number.as_bytes(), None)?;
    t.lookup(&n).map(|e| e.rate_per_min)
}

#[test]
fn longest_prefix_wins() {
    let t = tariff();
    assert_eq!(t.len(), 6);
    assert_eq!(rate_of(&t, "+4930123456"), Some(d("0.01")));
    assert_eq!(rate_of(&t, "+4940123456"), Some(d("0.02")));
    assert_eq!(rate_of(&t, "+491701234"), Some(d("0.20")));
    assert_eq!(rate_of(&t, "12125550100"), Some(d("0.005")));
    assert_eq!(rate_of(&t, "0049"), Some(d("1.00")));
    assert_eq!(rate_of(&t, "0149"), Some(d("9.99")));
    // A number equal to the prefix matches it; shorter than every prefix falls back.
    assert_eq!(rate_of(&t, "4930"), Some(d("0.01")));
    assert_eq!(rate_of(&t, "4"), None);
}

#[test]
fn unknown_number_is_none() {
    let t = tariff();
    assert_eq!(rate_of(&t, "33123456"), None);
    assert_eq!(rate_of(&Tariff::new(), "4930"), None);
}

#[test]
fn nineteen_digit_prefixes_work_and_twenty_are_refused() {
    let mut t = Tariff::new();
    t.insert_str("9999999999999999999", "1").unwrap();
    assert_eq!(rate_of(&t, "99999999999999999999999"), Some(d("1")));
    assert!(matches!(
        t.insert_str("12345678901234567890", "1"),
        Err(TariffError::BadPrefix { .. })
    ));
}

#[test]
fn bad_and_duplicate_prefixes_are_refused() {
    let mut t = tariff();
    for p in ["", "+", "49a", "4 9", "-1", "٣"] {
        assert!(
            matches!(t.insert_str(p, "1"), Err(TariffError::BadPrefix { .. })),
            "{p:?}"
        );
    }
    assert!(matches!(
        t.insert_str("4930", "1"),
        Err(TariffError::DuplicatePrefix { .. })
    ));
    assert!(matches!(
        t.insert_str("33", "x"),
        Err(TariffError::BadAmount { .. })
    ));
    assert_eq!(t.len(), 6);
}
