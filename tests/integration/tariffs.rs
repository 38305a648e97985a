//! Tariffs from Redis (issue 11, SPEC 7 "Rates"): `creditgate accounts import --tariff` writes
//! a tariff into a real `redis-server`, the daemon prices calls by it (reserve on, so the price
//! decides), and a push of `tariff:NAME` on `{prefix}updates` changes it at once. A bad tariff
//! keeps its previous version.

use std::fs;
use std::time::{Duration, Instant};

use crate::harness::*;
use crate::redis::{redis_config, RedisServer, PREFIX, PUSH_WAIT};

/// Sends a new INVITE of `from_user` to Request-URI user `number`; `true` if it reached the
/// switch, `false` if creditgate refused it.
fn call(
    d: &Daemon,
    switch: &Switch,
    caller: &Caller,
    from_user: &str,
    number: &str,
) -> (bool, u16) {
    let to = d.sip_addr();
    let call_id = new_call_id();
    let invite = Request::new(
        "INVITE",
        &format!("sip:{number}@{to}"),
        caller.addr(),
        &call_id,
        from_user,
    )
    .sdp();
    caller.send(&invite.build(), to);
    let ours = |m: &[u8]| header(m, "Call-ID").as_deref() == Some(call_id.as_str());
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some((m, _)) = switch.recv_timeout(Duration::from_millis(20)) {
            if ours(&m) && method(&m).as_deref() == Some("INVITE") {
                return (true, 0);
            }
        }
        if let Some((m, _)) = caller.recv_timeout(Duration::from_millis(20)) {
            if let Some(code) = status_code(&m).filter(|c| *c >= 200) {
                if ours(&m) {
                    return (false, code);
                }
            }
        }
    }
    panic!("INVITE to {number}: no outcome\n{}", d.log())
}

#[test]
fn a_tariff_imported_into_redis_prices_calls_and_a_push_changes_it() {
    let redis = RedisServer::start();
    // 1.00 of credit, a 60 s reserve: a number whose rate is above 1.00/min is refused.
    redis.hset(
        "tina",
        &[
            ("balance", "1.00"),
            ("debit_limit", "0"),
            ("tariff", "intl"),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("intl.csv");
    fs::write(
        &csv,
        "prefix,rate,connect_fee,increments\n44,0.50,,\n4420,2.00,0.10,60/6\n",
    )
    .unwrap();
    let switch = Switch::bind();
    let cfg = redis_config(0, &switch, "60s", &redis)
        + "\n[live]\nreserve = \"60s\"\nunrated = \"refuse\"\n";
    let cfg_path = dir.path().join("cg.toml");
    fs::write(&cfg_path, &cfg).unwrap();
    let r = run_cli(
        &[
            "accounts",
            "import",
            "--tariff",
            "intl",
            csv.to_str().unwrap(),
            "--config",
            cfg_path.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(r.status.code(), Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("2 prefixes written"), "{}", r.stdout);
    assert_eq!(
        redis.cli(&["HGET", &format!("{PREFIX}tariff:intl"), "4420"]),
        "2.00 0.10 60/6"
    );
    // A CSV with one bad row writes nothing.
    fs::write(&csv, "prefix,rate\n44,0.01\n4x,0.01\n").unwrap();
    let bad = run_cli(
        &[
            "accounts",
            "import",
            "--tariff",
            "intl",
            csv.to_str().unwrap(),
            "--config",
            cfg_path.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(bad.status.code(), Some(1), "{}\n{}", bad.stdout, bad.stderr);
    assert!(bad.stderr.contains("line 3"), "{}", bad.stderr);
    assert_eq!(
        redis.cli(&["HGET", &format!("{PREFIX}tariff:intl"), "44"]),
        "0.50",
        "the refused import left the tariff as it was"
    );

    let d = Daemon::start(
        &cfg.replace(
            "[admin]\nlisten = \"\"",
            &format!("[admin]\nlisten = \"{DAEMON_IP}:0\""),
        ),
        "",
    );
    let caller = Caller::bind();
    // 44: 0.50/min, reserve 0.50 <= 1.00: admitted. 4420: 0.10 + 2.00 = 2.10 > 1.00: refused
    // 402. 33: no entry, no rate_per_min, unrated = refuse: 403 no_rate.
    assert_eq!(call(&d, &switch, &caller, "tina", "+4471234"), (true, 0));
    assert_eq!(call(&d, &switch, &caller, "tina", "4420555"), (false, 402));
    assert_eq!(call(&d, &switch, &caller, "tina", "33123"), (false, 403));

    // A push makes 4420 cheap at once (refresh_interval is 60 s).
    redis.cli(&["HSET", &format!("{PREFIX}tariff:intl"), "4420", "0.20"]);
    redis.cli(&["PUBLISH", &format!("{PREFIX}updates"), "tariff:intl"]);
    let deadline = Instant::now() + PUSH_WAIT;
    loop {
        if call(&d, &switch, &caller, "tina", "4420555").0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "push of tariff:intl not applied\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A bad field in the hash: the push is refused and the last good version stays.
    redis.cli(&["HSET", &format!("{PREFIX}tariff:intl"), "4420", "lots"]);
    redis.cli(&["PUBLISH", &format!("{PREFIX}updates"), "tariff:intl"]);
    assert!(
        d.wait_for_log("tariff push update: bad tariff", 1, PUSH_WAIT),
        "{}",
        d.log()
    );
    assert!(call(&d, &switch, &caller, "tina", "4420555").0);
    let m = get(d.admin_addr(), "/metrics");
    assert!(m.body.contains("creditgate_tariffs 1"), "{}", m.body);
    assert!(
        m.body.contains("creditgate_tariff_prefixes 2"),
        "{}",
        m.body
    );
}
