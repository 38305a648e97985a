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
use std::time::Duration;

use crate::harness::*;
use crate::redis::{
    cli_config, decide, redis_config, wait_for, Outcome, RedisServer, PREFIX, PUSH_WAIT,
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
    let accounts = r#"
[[account]]
id = "alice"
balance = "25.00"

[[account]]
id = "postpay"
balance = "-10"
debit_limit = "100"

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
    let daemon = Daemon::start(&test_config(0, switch.addr(), "60s"), accounts);
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
