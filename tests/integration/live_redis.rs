//! Issue 11, acceptance 2 and 4, and the Redis side of the tariffs: live credit on a real
//! `redis-server` (each test its own, on a Unix socket), with a one-hour refresh, so that only
//! the calls (and, where a test says so, a push update) move the figures.
//!
//! | test | what |
//! | --- | --- |
//! | [`sipp_a_long_call_eats_the_credit_of_a_second_call_and_its_bye_releases_the_hold`] | acceptance 2: SIPp `uac-allowed.xml` / `uas.xml` |
//! | [`low_credit_events_arrive_once_per_crossing_and_again_after_a_top_up`] | acceptance 4: a `SUBSCRIBE` on `{prefix}events` |
//! | [`a_time_threshold_is_talk_time_at_the_accounts_rate`] | a duration threshold at `rate_per_min` |
//! | [`a_push_update_covers_the_calls_that_ended_before_it`] | a pushed re-read is a newer snapshot of the account |
//! | [`a_redis_tariff_prices_calls_by_prefix`] | `{prefix}tariff:{name}` HASHes |
//!
//! Waits poll for evidence with a deadline; where a test depends on elapsed time, its doc
//! comment says how much slack it has.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::harness::*;
use crate::live::*;
use crate::redis::{RedisServer, PREFIX};
use crate::sipp::{sipp_available, sipp_dir, uac, uas};

/// `cfg` (a `test_config`) switched to the Redis source at `redis` with [`PREFIX`].
fn redis_source(cfg: &str, redis: &RedisServer) -> String {
    let out = cfg.replacen(
        "source = \"file\"",
        &format!(
            "source = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{PREFIX}\"",
            redis.url()
        ),
        1,
    );
    assert_ne!(out, cfg, "test_config no longer has `source = \"file\"`");
    out
}

/// Waits until the daemon's snapshot has account `id` with `balance` (first load, or a push).
fn wait_balance(admin: SocketAddr, id: &str, balance: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let r = get(admin, &format!("/accounts/{id}"));
        if r.status == 200 && money(&r.json()["balance"]) == dec(balance) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "account {id} never showed balance {balance} within {limit:?}: {}",
            r.body
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Acceptance 2: SIPp, a long call

/// Acceptance 2. Account `longcall`: balance 1.50 at 1.00/min (credit for 90 s), reserve
/// 30 s (0.50), no Redis refresh (`1h`). SIPp places one call (`uac-allowed.xml -d 95000`:
/// answered, held 95 s, then BYE) to a SIPp UAS (`uas.xml`).
///
/// 1. Answered: one call in progress, and live credit still covers a new call's reserve.
/// 2. Once the call's accrued spend has brought live credit below the reserve (the daemon's
///    own figure, polled: from 60 s into the call), a second call of the account is refused
///    402 while the first is still up.
/// 3. The first call's BYE passes (SIPp counts a successful call), and its hold is released:
///    no call in progress, nothing held; its cost (at least 95 s = 1.58) counts as ended, so
///    live credit is below zero and a new call is still refused.
///
/// Slack: the probe of step 2 must leave between 60 s and 95 s after the answer (35 s): the
/// test fails with a message saying so if the machine was slower than that.
#[test]
fn sipp_a_long_call_eats_the_credit_of_a_second_call_and_its_bye_releases_the_hold() {
    if !sipp_available() {
        return;
    }
    let redis = RedisServer::start();
    redis.hset(
        "longcall",
        &[
            ("balance", "1.50"),
            ("debit_limit", "0"),
            ("rate_per_min", "1.00"),
        ],
    );
    let work = sipp_dir();
    let dir = work.path().to_path_buf();
    let uas = uas(&dir, "uas", "uas.xml", 1)
        .timeout("300s")
        .traced()
        .start();
    let cfg = with_live(
        &redis_source(
            &test_config(0, SocketAddr::new(SWITCH_IP, uas.port), "60s"),
            &redis,
        ),
        "reserve = \"30s\"\n",
    );
    let mut daemon = Daemon::start(&cfg, "");
    let admin = daemon.admin_addr();
    wait_balance(admin, "longcall", "1.50", STARTUP_TIMEOUT);

    let uac = uac(&dir, "uac", daemon.sip_addr(), "uac-allowed.xml", 1, 1)
        .set("account", "longcall")
        .args(&["-s", NUMBER, "-d", "95000"])
        .timeout("300s")
        .start();

    // 1. Answered (the ACK of the 200 is at the UAS).
    if !uas.wait_for_message(Duration::from_secs(30), |t| {
        t.received && t.is_request("ACK")
    }) {
        daemon.fail("the long call was not answered and ACKed within 30 s");
    }
    let answered_seen = Instant::now();
    let l = live_json(admin, "longcall");
    assert_eq!(count(&l["calls_in_progress"]), 1, "{l:#}");
    assert_eq!(count(&l["answered"]), 1, "{l:#}");
    assert!(
        money(&l["live_available"]) >= dec("0.50"),
        "at the start of the call a new call's reserve is still covered: {l:#}"
    );

    // 2. Wait for the accrued spend to eat the reserve, then a second call: 402.
    let l = wait_live(
        admin,
        "longcall",
        Duration::from_secs(85),
        "live credit below the 0.50 reserve",
        |l| money(&l["live_available"]) < dec("0.50"),
    );
    let eaten_after = answered_seen.elapsed();
    assert_eq!(
        count(&l["calls_in_progress"]),
        1,
        "the long call ended before its spend ate the reserve: {l:#}"
    );
    let caller = Caller::bind();
    let probe = |what: &str| {
        let inv = Request::new(
            "INVITE",
            &format!("sip:{NUMBER}@{}", daemon.sip_addr()),
            caller.addr(),
            &new_call_id(),
            "longcall",
        )
        .with_to_user(NUMBER)
        .sdp();
        caller.send(&inv.build(), daemon.sip_addr());
        let (r, _) = caller
            .recv_matching(WAIT, |m| status_code(m).is_some_and(|c| c >= 200))
            .unwrap_or_else(|| panic!("{what}: no final reply"));
        caller.send(&inv.ack_for(&r).build(), daemon.sip_addr());
        r
    };
    let r = probe("the second call");
    assert_eq!(
        status_code(&r),
        Some(402),
        "a second call once the first call's spend ate the credit ({eaten_after:?} into the \
         call):\n{}",
        text(&r)
    );
    let l = live_json(admin, "longcall");
    assert_eq!(
        count(&l["calls_in_progress"]),
        1,
        "the long call must still be up at the probe ({:?} after its answer; SIPp hangs up \
         at 95 s): {l:#}",
        answered_seen.elapsed()
    );

    // 3. The BYE passes; the hold is released.
    let uac = uac.wait(Duration::from_secs(200));
    uac.assert_all_succeeded(1);
    let uas = uas.wait(Duration::from_secs(30));
    uas.assert_all_succeeded(1);
    let l = wait_live(
        admin,
        "longcall",
        WAIT,
        "the hold released after the BYE",
        |l| count(&l["calls_in_progress"]) == 0,
    );
    assert_eq!(money(&l["held"]), dec("0"), "{l:#}");
    assert_eq!(money(&l["snapshot_available"]), dec("1.50"), "{l:#}");
    assert!(
        money(&l["live_available"]) < dec("0"),
        "the ended call cost at least 95 s = 1.58: {l:#}"
    );
    let r = probe("a call after the BYE");
    assert_eq!(status_code(&r), Some(402), "{}", text(&r));
    let m = scrape(admin);
    assert_eq!(
        metric(&m, "creditgate_calls_ended_total", &[("cause", "bye")]),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "creditgate_refusals_total",
            &[("cause", "insufficient_credit")]
        ),
        2.0
    );
    assert_eq!(metric(&m, "creditgate_calls_tracked", &[]), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Acceptance 4: low-credit events

/// A `redis-cli SUBSCRIBE` child; its messages arrive on a channel. Killed on drop.
struct Subscriber {
    child: Child,
    rx: mpsc::Receiver<String>,
}

impl Subscriber {
    /// Subscribes to `channel` and returns once Redis confirmed the subscription.
    fn start(redis: &RedisServer, channel: &str) -> Subscriber {
        let mut child = Command::new("redis-cli")
            .arg("-s")
            .arg(redis.socket())
            .args(["SUBSCRIBE", channel])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-cli SUBSCRIBE");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // redis-cli prints each reply's elements on lines of their own: `subscribe`,
            // CHANNEL, 1 once, then `message`, CHANNEL, PAYLOAD per message.
            let mut lines = BufReader::new(out).lines().map_while(Result::ok);
            while let Some(kind) = lines.next() {
                let (Some(_channel), Some(third)) = (lines.next(), lines.next()) else {
                    return;
                };
                let item = match kind.as_str() {
                    "subscribe" => "<subscribed>".to_owned(),
                    "message" => third,
                    _ => continue,
                };
                if tx.send(item).is_err() {
                    return;
                }
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("redis-cli confirms the SUBSCRIBE");
        assert_eq!(first, "<subscribed>");
        Subscriber { child, rx }
    }

    /// The next message, parsed as JSON, or a panic after `limit`.
    fn next(&self, limit: Duration, what: &str) -> Json {
        let m = self
            .rx
            .recv_timeout(limit)
            .unwrap_or_else(|e| panic!("{what}: no event within {limit:?} ({e})"));
        serde_json::from_str(&m).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {m}"))
    }

    /// Panics if a message arrives within `limit`.
    fn expect_none(&self, limit: Duration, what: &str) {
        if let Ok(m) = self.rx.recv_timeout(limit) {
            panic!("{what}: unexpected event {m}");
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks one low-credit event of account `low` with threshold 2.00.
#[track_caller]
fn assert_low_credit(e: &Json, what: &str) {
    assert_eq!(e["event"], "low_credit", "{what}: {e}");
    assert_eq!(e["account"], "low", "{what}: {e}");
    assert_eq!(money(&e["threshold"]), dec("2.00"), "{what}: {e}");
    assert!(
        money(&e["live_available"]) < dec("2.00"),
        "{what}: below the threshold: {e}"
    );
    assert_eq!(count(&e["calls_in_progress"]), 1, "{what}: {e}");
    assert!(
        e["time"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: a time: {e}"
    );
}

/// Acceptance 4. Account `low`: balance 3.00 at 600/min (10.00 a second), threshold
/// "2.00", events on `{prefix}events`, watched by a real `SUBSCRIBE`.
///
/// 1. A call is answered; within a few sweeps its spend takes live credit below 2.00: one
///    event. The call goes on for 3 s more, far below the threshold (sweeps every second):
///    no second event. It hangs up: none either.
/// 2. Top-up: `HSET balance 100.00` and `PUBLISH low` on `{prefix}updates`: live credit
///    rises above the threshold (no event for a rise).
/// 3. A second call falls below 2.00 again (after at most ~10 s): exactly one more event.
#[test]
fn low_credit_events_arrive_once_per_crossing_and_again_after_a_top_up() {
    let redis = RedisServer::start();
    redis.hset(
        "low",
        &[
            ("balance", "3.00"),
            ("debit_limit", "0"),
            ("rate_per_min", "600"),
        ],
    );
    let switch = Switch::bind();
    let cfg = with_live(
        &redis_source(&test_config(0, switch.addr(), "60s"), &redis),
        "low_credit_threshold = \"2.00\"\n",
    );
    let live = Live::start(switch, &cfg, "");
    wait_balance(live.admin, "low", "3.00", STARTUP_TIMEOUT);
    let sub = Subscriber::start(&redis, &format!("{PREFIX}events"));

    // 1. The first crossing.
    let mut one = live.place("low", NUMBER).admitted("call 1");
    sub.expect_none(Duration::from_millis(300), "a ringing call costs nothing");
    one.answer(&live);
    let e = sub.next(Duration::from_secs(10), "the first crossing");
    assert_low_credit(&e, "the first crossing");
    sub.expect_none(
        Duration::from_secs(3),
        "the call goes on below the threshold: no second event",
    );
    one.bye(&live);
    sub.expect_none(
        Duration::from_millis(1500),
        "the call ended below the threshold",
    );

    // 2. Top-up above the threshold.
    redis.hset("low", &[("balance", "100.00")]);
    redis.publish("low");
    wait_balance(live.admin, "low", "100.00", Duration::from_secs(10));
    // Live credit is 100.00 less what the ended call cost if the re-read does not cover it
    // (see `a_push_update_covers_the_calls_that_ended_before_it`): above 2.00 either way.
    live.wait_live(
        "low",
        Duration::from_secs(10),
        "above the threshold again",
        |l| money(&l["live_available"]) > dec("2.00"),
    );
    sub.expect_none(Duration::from_millis(1500), "a rise is no event");

    // 3. The second crossing.
    let mut two = live
        .place("low", NUMBER)
        .admitted("call 2 after the top-up");
    two.answer(&live);
    let e = sub.next(Duration::from_secs(30), "the crossing after the top-up");
    assert_low_credit(&e, "the crossing after the top-up");
    sub.expect_none(Duration::from_secs(2), "still below: no third event");
    two.bye(&live);
    sub.expect_none(Duration::from_millis(1500), "the second call ended below");
}

/// `low_credit_threshold = "6s"`: talk time at the account's `rate_per_min` (600/min, so
/// 60.00). Balance 65.00: an answered call crosses 60.00 after half a second: one event,
/// whose threshold is the money figure.
#[test]
fn a_time_threshold_is_talk_time_at_the_accounts_rate() {
    let redis = RedisServer::start();
    redis.hset(
        "lowt",
        &[
            ("balance", "65.00"),
            ("debit_limit", "0"),
            ("rate_per_min", "600"),
        ],
    );
    let switch = Switch::bind();
    let cfg = with_live(
        &redis_source(&test_config(0, switch.addr(), "60s"), &redis),
        "low_credit_threshold = \"6s\"\n",
    );
    let live = Live::start(switch, &cfg, "");
    wait_balance(live.admin, "lowt", "65.00", STARTUP_TIMEOUT);
    let sub = Subscriber::start(&redis, &format!("{PREFIX}events"));
    let mut call = live.place("lowt", NUMBER).admitted("the call");
    call.answer(&live);
    let e = sub.next(Duration::from_secs(10), "the crossing of 6 s of talk time");
    assert_eq!(e["account"], "lowt", "{e}");
    assert_eq!(money(&e["threshold"]), dec("60"), "6 s at 600/min: {e}");
    assert!(money(&e["live_available"]) < dec("60"), "{e}");
    sub.expect_none(Duration::from_secs(2), "once per crossing");
    call.bye(&live);
}

/// SPEC 7: "A new snapshot drops the part of ended calls that ended before that snapshot was
/// read (billing has them)"; SPEC 5: a `PUBLISH` of an account id on `{prefix}updates` makes
/// creditgate re-read that account at once. A call of `pushed` (10.00 at 60/min) is answered,
/// lasts about two seconds and ends; the billing system then writes the balance that already
/// charges it (here simply 20.00) and publishes the id. The re-read record of the account
/// was read after the call ended, so the call's cost no longer counts against it: live credit
/// is the new balance, 20.00, not 20.00 less the call's cost until the next full refresh
/// (one hour here).
#[test]
fn a_push_update_covers_the_calls_that_ended_before_it() {
    let redis = RedisServer::start();
    redis.hset(
        "pushed",
        &[
            ("balance", "10.00"),
            ("debit_limit", "0"),
            ("rate_per_min", "60"),
        ],
    );
    let switch = Switch::bind();
    let cfg = with_live(
        &redis_source(&test_config(0, switch.addr(), "60s"), &redis),
        "",
    );
    let live = Live::start(switch, &cfg, "");
    wait_balance(live.admin, "pushed", "10.00", STARTUP_TIMEOUT);
    let mut call = live.place("pushed", NUMBER).admitted("the call");
    call.answer(&live);
    std::thread::sleep(Duration::from_secs(2));
    call.bye(&live);
    let l = live.wait_live("pushed", WAIT, "the call ended", |l| {
        count(&l["calls_in_progress"]) == 0
    });
    assert!(
        money(&l["ended_since_snapshot"]) >= dec("2"),
        "about two seconds at 1.00 a second: {l:#}"
    );
    redis.hset("pushed", &[("balance", "20.00")]);
    redis.publish("pushed");
    wait_balance(live.admin, "pushed", "20.00", Duration::from_secs(10));
    live.wait_live(
        "pushed",
        Duration::from_secs(10),
        "the account re-read after the call ended covers the call",
        |l| {
            money(&l["live_available"]) == dec("20.00")
                && money(&l["ended_since_snapshot"]) == dec("0")
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Tariffs from Redis

/// A tariff in Redis (`{prefix}tariff:intl`, field = prefix, value = entry) prices calls like
/// the accounts file's: with 0.50 of credit and a 30 s reserve, prefix 44 (1.30) is refused
/// 402, prefix 4420 (0.005) admitted; the Request-URI carries the tech prefix and a `+`.
#[test]
fn a_redis_tariff_prices_calls_by_prefix() {
    let redis = RedisServer::start();
    redis.cli(&[
        "HSET",
        &format!("{PREFIX}tariff:intl"),
        "44",
        "1.20 0.10 60/6",
        "4420",
        "0.0100",
    ]);
    redis.hset(
        "tarred",
        &[
            ("balance", "0.50"),
            ("debit_limit", "0"),
            ("tariff", "intl"),
            ("tech_prefix", "99"),
        ],
    );
    let switch = Switch::bind();
    let cfg = with_live(
        &redis_source(&test_config(0, switch.addr(), "60s"), &redis),
        "reserve = \"30s\"\n",
    );
    let live = Live::start(switch, &cfg, "");
    wait_balance(live.admin, "tarred", "0.50", STARTUP_TIMEOUT);
    live.place("tarred", &format!("99{DEAR}")).refused(
        INSUFFICIENT,
        "insufficient_credit",
        "a call to prefix 44",
    );
    let _c = live
        .place("tarred", &format!("99{CHEAP}"))
        .admitted("a call to prefix 4420 on the same credit");
    let l = live.live_of("tarred");
    assert_eq!(money(&l["held"]), dec("0.005"), "{l:#}");
}
