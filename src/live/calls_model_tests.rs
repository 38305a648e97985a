//! The running sums against a brute-force model over random call events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;

use super::tests::{d, entry, reserve, T, WALL0};
use super::*;
use crate::live::tariff::TariffEntry;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Admit(usize),
    Answer(usize),
    Bye(usize),
    Fail(usize),
    Wait(u64),
    Refresh,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize).prop_map(Op::Admit),
        3 => (0..40usize).prop_map(Op::Answer),
        2 => (0..40usize).prop_map(Op::Bye),
        1 => (0..40usize).prop_map(Op::Fail),
        3 => (0..90_000u64).prop_map(Op::Wait),
        1 => Just(Op::Refresh),
    ]
}

struct M {
    entry: Arc<TariffEntry>,
    k: Decimal,
    answered_ns: Option<u64>,
    live: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn sums_match_a_scan(ops in proptest::collection::vec(op(), 1..120), reserve_secs in 0..120u32) {
        let t = T::new(reserve(reserve_secs));
        let entries = [entry("0.60"), entry("1.20 0.10 60/60"), entry("0.0125 0.05 30/6")];
        let mut f = t.figs("1000000", 0);
        let mut now_us = 0u64;
        let mut calls: Vec<M> = Vec::new();
        let mut ended: Vec<(u64, Decimal)> = Vec::new();
        for op in ops {
            let now = t.epoch + Duration::from_micros(now_us);
            match op {
                Op::Admit(i) => {
                    let n = calls.len() as u64;
                    let e = &entries[i];
                    t.live.admit(&t.acct, t.key(n), e, &f, now, WALL0).unwrap();
                    let k = crate::live::ledger::reserve_cost(e, reserve_secs);
                    calls.push(M { entry: Arc::clone(e), k, answered_ns: None, live: true });
                }
                Op::Answer(i) => if let Some(c) = calls.get_mut(i) {
                    let ev = t.live.answered(t.key(i as u64), now, WALL0);
                    if c.live && c.answered_ns.is_none() {
                        prop_assert_eq!(ev, CallEvent::Answered);
                        c.answered_ns = Some(now_us * 1000);
                    } else {
                        prop_assert_eq!(ev, CallEvent::Ignored);
                    }
                },
                Op::Bye(i) | Op::Fail(i) => if let Some(c) = calls.get_mut(i) {
                    let bye = matches!(op, Op::Bye(_));
                    let ev = if bye {
                        t.live.bye(t.key(i as u64), now, WALL0)
                    } else {
                        t.live.failed(t.key(i as u64), now, WALL0)
                    };
                    match (c.live, c.answered_ns, bye) {
                        (true, Some(a), true) => {
                            let cost = c.entry.cost((now_us * 1000 - a).div_ceil(1_000_000_000));
                            prop_assert_eq!(ev, CallEvent::Ended { cause: EndCause::Bye, cost });
                            ended.push((now_us / 1000, crate::live::ledger::round_up(cost)));
                            c.live = false;
                        }
                        (true, None, _) => {
                            let is_end = matches!(ev, CallEvent::Ended { .. });
                            prop_assert!(is_end);
                            c.live = false;
                        }
                        _ => prop_assert_eq!(ev, CallEvent::Ignored),
                    }
                },
                Op::Wait(us) => now_us += us * 100,
                Op::Refresh => {
                    f = t.figs("1000000", now_us / 1000);
                    ended.retain(|(end_ms, _)| *end_ms >= now_us / 1000);
                }
            }
            let now = t.epoch + Duration::from_micros(now_us);
            let fig = t.live.figures(&t.acct, &f, now, WALL0);
            let (mut exact, mut slack) = (Decimal::ZERO, Decimal::ZERO);
            for c in calls.iter().filter(|c| c.live) {
                match c.answered_ns {
                    None => exact += c.k,
                    Some(a) => {
                        let secs = (now_us * 1000 - a).div_ceil(1_000_000_000);
                        let kk = c.k.max(crate::live::ledger::round_up(c.entry.cost(0)));
                        exact += kk.max(c.entry.cost(secs));
                        slack += c.entry.rate_per_min * Decimal::from(c.entry.increment + 1) / d("60")
                            + d("0.000000000001");
                    }
                }
            }
            prop_assert!(fig.held() >= exact, "held {} < {}", fig.held(), exact);
            prop_assert!(fig.held() <= exact + slack, "held {} > {} + {}", fig.held(), exact, slack);
            let model_ended: Decimal = ended.iter().map(|(_, c)| *c).sum();
            prop_assert!(fig.ended_since_snapshot >= model_ended);
            prop_assert_eq!(fig.in_progress() as usize, calls.iter().filter(|c| c.live).count());
        }
    }
}
