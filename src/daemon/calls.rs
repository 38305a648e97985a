//! The live state's clock (SPEC 7): the one-second timer that ends calls past `ring_timeout`
//! or `call_expiry`, forgets idle ledgers, and sweeps for low-credit crossings.
//!
//! Runs on the control runtime, never on a packet thread: [`LiveState::tick`] does bounded
//! work per call and the sweep visits only the accounts with a ledger. Answered calls accrue
//! with no packet passing, so crossings are found here, at most one sweep period (1 s) after
//! they happen; the publishing itself is the caller's sink (a bounded queue, see `live.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::config::Threshold;
use crate::core::admission;
use crate::live::calls::{LiveState, LowCredit, TickStats};

/// How often the timer runs: ring timeouts and expiries are whole seconds, and a low-credit
/// event a second late is on time for a billing system.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Queue entries one tick examines before yielding (each is one lookup): a million calls
/// expiring in the same second are ended over a few ticks without holding a core for long.
const TICK_BUDGET: usize = 50_000;
/// Idle ledgers are dropped this often (a pass over the accounts with a ledger).
const FORGET_EVERY: u32 = 60;

/// The money figure a threshold stands for, for one account: a money threshold as it is, a
/// time threshold at the account's `rate_per_min` (`None` for an account without one: no
/// events for it, the README says so).
pub fn threshold_money(t: Threshold, rate_per_min: Option<Decimal>) -> Option<Decimal> {
    match t {
        Threshold::Money(m) => Some(m),
        Threshold::Time(d) => {
            let rate = rate_per_min?;
            let secs = Decimal::from(d.as_secs());
            Some(rate.saturating_mul(secs) / Decimal::from(60))
        }
    }
}

/// One sweep: the crossings of every account with a ledger, at `now`.
pub fn sweep(
    shared: &Shared,
    live: &LiveState,
    threshold: Threshold,
    now: Instant,
    wall_secs: u64,
) -> Vec<LowCredit> {
    let mut out = Vec::new();
    for account in live.ledger_accounts() {
        let Some(inputs) = admission::live_inputs(&shared.snapshot, &account, b"") else {
            continue;
        };
        let Some(money) = threshold_money(threshold, inputs.view.rate_per_min) else {
            continue;
        };
        if let Some(ev) = live.low_credit(&account, &inputs.figures, money, now, wall_secs) {
            out.push(ev);
        }
    }
    out
}

fn wall_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Spawns the timer on the current (control) runtime. `on_tick` gets each tick's stats (for
/// the metrics), `on_low_credit` each crossing found.
pub fn spawn_timer(
    shared: Arc<Shared>,
    threshold: Option<Threshold>,
    on_tick: impl Fn(&TickStats) + Send + 'static,
    on_low_credit: impl Fn(LowCredit, u64) + Send + 'static,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let live = shared.live.clone()?;
    Some(tokio::spawn(async move {
        let mut every = tokio::time::interval(PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u32 = 0;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            let (now, wall) = (Instant::now(), wall_now());
            loop {
                let st = live.tick(now, wall, TICK_BUDGET);
                on_tick(&st);
                if !st.more {
                    break;
                }
                tokio::task::yield_now().await;
            }
            if let Some(t) = threshold {
                for ev in sweep(&shared, &live, t, now, wall) {
                    on_low_credit(ev, wall);
                }
            }
            n = n.wrapping_add(1);
            if n % FORGET_EVERY == 0 {
                live.forget_idle_accounts();
            }
        }
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn time_thresholds_are_priced_at_the_accounts_rate() {
        let d = |s| Decimal::from_str(s).unwrap();
        assert_eq!(
            threshold_money(Threshold::Money(d("2.50")), None),
            Some(d("2.50"))
        );
        assert_eq!(
            threshold_money(Threshold::Time(Duration::from_secs(300)), Some(d("0.12"))),
            Some(d("0.60"))
        );
        assert_eq!(
            threshold_money(Threshold::Time(Duration::from_secs(300)), None),
            None
        );
    }
}
