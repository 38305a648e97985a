//! The snapshot under concurrent updates and the validation of account records (issue 9,
//! items 7, 8 and 11; SPEC sections 4 and 5), end to end on the real daemon and a real
//! `redis-server` (started per test by [`crate::redis::RedisServer`]):
//!
//! * a negative money/rate field or count is a bad record in the Redis source, the accounts
//!   file and `accounts import`;
//! * push updates that move accounts' addresses while full refreshes run leave every account
//!   findable by its source address.
//!
//! Every wait is a bounded poll; nothing asserts on timing.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::redis::{
    cli_config, decide, redis_config, sighup, wait_for, Outcome, RedisServer, PREFIX, PUSH_WAIT,
    REFRESH_WAIT,
};

/// The daemon on `redis` with the SIP listener on port 0 (the harness reads the bound port).
fn start_on_redis(refresh_interval: &str, redis: &RedisServer) -> (Daemon, Switch, Caller) {
    let switch = Switch::bind();
    let daemon = Daemon::start(&redis_config(0, &switch, refresh_interval, redis), "");
    (daemon, switch, Caller::bind())
}

fn logged_bad(log: &str, account: &str, field: &str) -> bool {
    log.lines()
        .any(|l| (l.contains("bad account record")) && l.contains(account) && l.contains(field))
}

/// Item 11, Redis source: records with a negative rate, spend limit, spent amount or count are
/// skipped (refused as unknown), each logged with its account and field, by the full refresh
/// and by a push update; a negative balance / debit_limit stays a valid post-pay account.
#[test]
fn redis_negative_money_and_count_fields_are_bad_records() {
    let redis = RedisServer::start();
    redis.hset("alice", &[("balance", "25.00")]);
    redis.hset("postpay", &[("balance", "-10"), ("debit_limit", "100")]);
    let bad = [
        ("negrate", "rate_per_min", "-0.0100"),
        ("negdaily", "daily_spend_limit", "-5"),
        ("negspent", "spent_today", "-1.50"),
        ("negcps", "max_cps", "-1"),
    ];
    for (id, field, value) in bad {
        redis.hset(id, &[("balance", "25.00"), (field, value)]);
    }
    let (daemon, switch, caller) = start_on_redis("60s", &redis);
    assert_eq!(
        decide(&daemon, &switch, &caller, "alice"),
        Outcome::Admitted
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "postpay"),
        Outcome::Admitted
    );
    for (id, field, value) in bad {
        assert_eq!(
            decide(&daemon, &switch, &caller, id),
            Outcome::Refused(403),
            "{id} with {field} = {value} must be refused as a bad record"
        );
        let log = daemon.log();
        assert!(
            logged_bad(&log, id, field),
            "{id}: bad record not logged with its field {field}:\n{log}"
        );
    }

    // A push that makes a good account's spent_today negative takes it out.
    assert!(
        daemon.wait_for_log("subscribed to push updates", 1, PUSH_WAIT),
        "no subscription:\n{}",
        daemon.log()
    );
    redis.hset("alice", &[("spent_today", "-0.01")]);
    redis.publish("alice");
    wait_for(
        &daemon,
        &switch,
        &caller,
        "alice",
        Outcome::Refused(403),
        PUSH_WAIT,
        "negative spent_today by push",
    );
    assert!(
        daemon.wait_for_log("push update: bad account record", 1, PUSH_WAIT),
        "push bad record not logged:\n{}",
        daemon.log()
    );
}

/// Item 11, file source: the same records in the accounts file are skipped and logged.
#[test]
fn file_negative_money_and_count_fields_are_bad_records() {
    let switch = Switch::bind();
    let good = r#"
[[account]]
id = "alice"
balance = "25.00"

[[account]]
id = "postpay"
balance = "-10"
debit_limit = "100"
"#;
    let bad = r#"
[[account]]
id = "negrate"
balance = "25.00"
rate_per_min = "-0.01"

[[account]]
id = "negspent"
balance = "25.00"
spent_today = -2

[[account]]
id = "negchan"
balance = "25.00"
max_channels = -1
"#;
    // At start-up a bad record is a configuration fault (check-config and run refuse the file,
    // exit 2: tests/integration/cli.rs); a bad record met by a later refresh is skipped, counted
    // and logged while the others keep serving. So the daemon starts on the good records and the
    // bad ones arrive with a refresh.
    let daemon = Daemon::start(&test_config(0, switch.addr(), "60s"), good);
    daemon.rewrite_accounts(&format!("{good}{bad}"));
    let pid = daemon.pid().expect("daemon pid").to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("run kill -HUP");
    assert!(hup.success(), "kill -HUP {pid} failed");
    assert!(
        daemon.wait_for_log("is negative", 3, crate::harness::WAIT),
        "the refresh did not report three bad records:\n{}",
        daemon.log()
    );
    let caller = Caller::bind();
    assert_eq!(
        decide(&daemon, &switch, &caller, "alice"),
        Outcome::Admitted
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "postpay"),
        Outcome::Admitted
    );
    for (id, field) in [
        ("negrate", "rate_per_min"),
        ("negspent", "spent_today"),
        ("negchan", "max_channels"),
    ] {
        assert_eq!(
            decide(&daemon, &switch, &caller, id),
            Outcome::Refused(403),
            "{id}: negative {field} must make the record bad"
        );
        let log = daemon.log();
        assert!(
            logged_bad(&log, id, field),
            "{id}: not logged with {field}:\n{log}"
        );
    }
}

/// Item 11, `accounts import`: a row with a negative money/rate field or count is refused with
/// its line and field and writes nothing; negative balance and debit_limit are written.
#[test]
fn accounts_import_refuses_negative_money_and_count_rows() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = cli_config(dir.path(), &redis);
    let csv = dir.path().join("accounts.csv");
    fs::write(
        &csv,
        "id,balance,debit_limit,rate_per_min,daily_spend_limit,spent_today,max_cps\n\
         good,-42.17,100,0.02,10,1.5,5\n\
         rate,1,0,-0.02,,,\n\
         daily,1,0,,-10,,\n\
         spent,1,0,,,-1.5,\n\
         cps,1,0,,,,-5\n",
    )
    .expect("write the CSV");
    let run = run_cli(
        &[
            "accounts",
            "import",
            csv.to_str().expect("utf-8 path"),
            "--config",
            cfg.to_str().expect("utf-8 path"),
        ],
        Duration::from_secs(30),
    );
    let all = format!("{}\n{}", run.stdout, run.stderr);
    assert!(!run.status.success(), "refused rows: non-zero exit:\n{all}");
    assert!(
        run.stdout.contains("1 written, 4 refused, 5 rows"),
        "summary:\n{all}"
    );
    for (line, id, field) in [
        (3, "rate", "rate_per_min"),
        (4, "daily", "daily_spend_limit"),
        (5, "spent", "spent_today"),
        (6, "cps", "max_cps"),
    ] {
        assert!(
            run.stderr.lines().any(|l| l
                .starts_with(&format!("line {line}: account {id}: refused"))
                && l.contains(field)
                && l.contains("negative")),
            "line {line} ({id}, {field}) not refused as negative:\n{all}"
        );
        assert_eq!(
            redis.cli(&["EXISTS", &format!("{PREFIX}account:{id}")]),
            "0",
            "{id} must not be written"
        );
    }
    assert_eq!(
        redis.cli(&["HGET", &format!("{PREFIX}account:good"), "balance"]),
        "-42.17"
    );
}

// ---------------------------------------------------------------------------------------------
// Items 7 and 8: pushes and full refreshes at the same time

/// Sends a fresh INVITE from `from` (a caller bound on its own loopback address, so that
/// `source_ip` identification decides) and reports what became of it.
fn decide_from(daemon: &Daemon, switch: &Switch, from: &Endpoint) -> Outcome {
    let d = daemon.sip_addr();
    let call_id = new_call_id();
    // The From user is no account: only the source address can identify the caller.
    let invite = Request::invite(from.addr(), d, &call_id, "no-such-account");
    from.send(&invite.build(), d);
    let ours = |m: &[u8]| header(m, "Call-ID").as_deref() == Some(call_id.as_str());
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some((m, _)) = switch.recv_timeout(Duration::from_millis(20)) {
            if ours(&m) && method(&m).as_deref() == Some("INVITE") {
                return Outcome::Admitted;
            }
        }
        if let Some((m, _)) = from.recv_timeout(Duration::from_millis(20)) {
            if let Some(code) = status_code(&m).filter(|c| *c >= 200) {
                if ours(&m) {
                    return Outcome::Refused(code);
                }
            }
        }
    }
    panic!(
        "INVITE from {}: neither forwarded nor answered within {WAIT:?}\n----- daemon log -----\n{}",
        from.addr(),
        daemon.log()
    )
}

/// Address of moving account `i` in round `round` (127.77.i.round: a loopback address the
/// test can send from).
fn mover_ip(i: u8, round: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 77, i, round))
}

/// Items 7 and 8 over real Redis and UDP: while full refreshes run back to back (SIGHUP in a
/// loop, a 1 s interval, 20,000 accounts, some changing addresses without a PUBLISH so that
/// every refresh changes the IP index too), pushed accounts move to new addresses round after
/// round, until at least three refreshes overlapped the moves. Each move must show (admitted from the new address, refused from the old one),
/// and every moved account must still be found at its address after every later round and once
/// everything is quiet: a push is never lost to a refresh that ran at the same time.
#[test]
fn redis_pushes_during_full_refreshes_keep_every_account_findable() {
    const FIRST_LOAD_WAIT: Duration = Duration::from_secs(120);
    const MOVERS: u8 = 12;
    const ROUNDS: u8 = 6;
    const BULK: u32 = 20_000;
    let redis = RedisServer::start();
    // Bulk accounts, each on an address of its own (127.78.x.y), in one server-side loop.
    redis.cli(&[
        "EVAL",
        "for i = 0, tonumber(ARGV[1]) - 1 do \
           redis.call('HSET', KEYS[1] .. i, 'balance', '5', 'ips', \
             '127.78.' .. math.floor(i / 250) .. '.' .. (i % 250 + 1)) \
         end",
        "1",
        &format!("{PREFIX}account:bulk"),
        &BULK.to_string(),
    ]);
    for i in 0..MOVERS {
        redis.hset(
            &format!("m{i}"),
            &[("balance", "5"), ("ips", &mover_ip(i, 1).to_string())],
        );
    }
    let (daemon, switch, _caller) = start_on_redis("1s", &redis);
    assert!(
        daemon.wait_for_log("subscribed to push updates", 1, PUSH_WAIT),
        "no subscription:\n{}",
        daemon.log()
    );
    // The first load of 20,000 accounts runs on SCHED_IDLE threads: on a busy machine it may
    // time out and be retried before it lands (until then new calls get 503, as they should).
    // The bound only limits a failure.
    assert!(
        daemon.wait_for_log("snapshot refreshed", 1, FIRST_LOAD_WAIT),
        "the first snapshot never loaded:\n{}",
        daemon.log()
    );
    let from = |i: u8, round: u8| Endpoint::bind(mover_ip(i, round));
    for i in 0..MOVERS {
        assert_eq!(
            decide_from(&daemon, &switch, &from(i, 1)),
            Outcome::Admitted,
            "m{i} before the moves"
        );
    }

    let stop = AtomicBool::new(false);
    let mut last_round = 0;
    std::thread::scope(|sc| {
        // Full refreshes back to back, each changing the addresses of a few bulk accounts.
        sc.spawn(|| {
            let mut n = 0u32;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let k = n % 50;
                redis.hset(
                    &format!("bulk{k}"),
                    &[("ips", &format!("127.79.{}.{}", k, n % 250 + 1))],
                );
                sighup(&daemon);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // At least ROUNDS rounds, and on until three full refreshes overlapped the moves.
            let refreshed_before = daemon.log().matches("snapshot refreshed").count();
            let mut round = 1;
            while round < ROUNDS
                || (daemon.log().matches("snapshot refreshed").count() < refreshed_before + 3
                    && round < 200)
            {
                round += 1;
                for i in 0..MOVERS {
                    redis.hset(
                        &format!("m{i}"),
                        &[("ips", &mover_ip(i, round).to_string())],
                    );
                    redis.publish(&format!("m{i}"));
                }
                for i in 0..MOVERS {
                    let ep = from(i, round);
                    let deadline = Instant::now() + PUSH_WAIT;
                    loop {
                        let got = decide_from(&daemon, &switch, &ep);
                        if got == Outcome::Admitted {
                            break;
                        }
                        assert!(
                            Instant::now() < deadline,
                            "round {round}: m{i} not found at {} within {PUSH_WAIT:?} ({got:?})\n{}",
                            ep.addr(),
                            daemon.log()
                        );
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    // The old address goes in the same update, just after the new one came:
                    // poll (the update runs on a background-priority thread).
                    let old = from(i, round - 1);
                    loop {
                        let got = decide_from(&daemon, &switch, &old);
                        if got == Outcome::Refused(403) {
                            break;
                        }
                        assert!(
                            Instant::now() < deadline,
                            "round {round}: m{i} still found at its old address {} ({got:?})",
                            old.addr()
                        );
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                // Moved accounts stay found while the refreshes go on.
                for i in 0..MOVERS {
                    assert_eq!(
                        decide_from(&daemon, &switch, &from(i, round)),
                        Outcome::Admitted,
                        "round {round}: m{i} lost at {} after its move was seen",
                        mover_ip(i, round)
                    );
                }
            }
            round
        }));
        stop.store(true, Ordering::Release);
        match outcome {
            Ok(round) => last_round = round,
            Err(p) => std::panic::resume_unwind(p),
        }
    });

    // Quiet: two more refreshes (no index change any more), then every account where Redis
    // says.
    let done = daemon.log().matches("snapshot refreshed").count();
    assert!(
        daemon.wait_for_log("snapshot refreshed", done + 2, REFRESH_WAIT),
        "no refresh after the moves:\n{}",
        daemon.log()
    );
    for i in 0..MOVERS {
        assert_eq!(
            decide_from(&daemon, &switch, &from(i, last_round)),
            Outcome::Admitted,
            "m{i} at rest"
        );
    }
    for k in [60u32, 777, 12_345, BULK - 1] {
        let ip = Ipv4Addr::new(127, 78, (k / 250) as u8, (k % 250 + 1) as u8);
        assert_eq!(
            decide_from(&daemon, &switch, &Endpoint::bind(IpAddr::V4(ip))),
            Outcome::Admitted,
            "bulk{k} at {ip}"
        );
    }
}
