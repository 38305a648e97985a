//! Operating creditgate (issue 4, SPEC sections 2 and 8) against the real binary: the admin
//! HTTP API (`/metrics` parsed with a Prometheus text parser, `/ready`, `/accounts/{id}`,
//! `/refresh`, the bearer token), SIGHUP reloads (valid and invalid), JSON logs, and the systemd
//! notification protocol (READY=1, WATCHDOG=1, RELOADING=1, STOPPING=1) on a Unix datagram
//! socket standing in for systemd.
//!
//! Every wait is a bounded poll; nothing asserts on timing.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prometheus_parse::Value;
use serde_json::Value as Json;

use crate::harness::{
    accounts_with_balance, config_with_admin, get, http, metric, scrape, start_line, status_code,
    test_config, Caller, Daemon, Http, Request, Switch, ACCOUNTS, BIN, WAIT,
};

/// Upper bound for a state change driven by refreshes or signals (a few refresh intervals of
/// one second, on a loaded CI machine).
const SLOW: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Helpers: config, HTTP, signals

/// Adds `line` under the `[credit]` table of a [`test_config`] text.
fn with_credit(cfg: &str, line: &str) -> String {
    cfg.replace("[credit]\n", &format!("[credit]\n{line}\n"))
}

/// Polls `GET path` until `want(answer)`; panics with the last answer and the log after `limit`.
fn poll_until(
    d: &mut Daemon,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
    what: &str,
    want: impl Fn(&Http) -> bool,
) -> Http {
    let deadline = Instant::now() + limit;
    loop {
        let r = get(addr, path);
        if want(&r) {
            return r;
        }
        if Instant::now() >= deadline {
            d.fail(&format!(
                "GET {path}: no {what} within {limit:?}; last answer {} {:?}",
                r.status, r.body
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} {pid} failed");
}

/// Writes a new config file atomically (sibling file + rename), as an operator's deploy tool would.
fn rewrite_config(d: &Daemon, text: &str) {
    let tmp = d.dir().join("creditgate.toml.tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, d.config_path()).unwrap();
}

// ---------------------------------------------------------------------------------------------
// SIP helpers

/// Sends a new INVITE from `user` and returns the reply the caller got (a refusal), or `None`
/// when the switch got the INVITE instead (admitted).
fn call(caller: &Caller, switch: &Switch, daemon: SocketAddr, user: &str) -> Option<Vec<u8>> {
    let invite = Request::invite(caller.addr(), daemon, &crate::harness::new_call_id(), user);
    caller.send(&invite.build(), daemon);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some((m, _)) = caller.recv_timeout(Duration::from_millis(20)) {
            return Some(m);
        }
        if switch.recv_timeout(Duration::from_millis(20)).is_some() {
            return None;
        }
    }
    panic!("INVITE from {user}: neither a reply nor a forward within {WAIT:?}");
}

// ---------------------------------------------------------------------------------------------
// Tests: admin API

/// `/metrics` parses as Prometheus text, and its counters move by exactly the calls made:
/// 2 admitted, 3 refused for credit, 1 disabled, 1 unknown.
#[test]
fn metrics_move_by_exactly_the_calls_made() {
    let switch = Switch::bind();
    let cfg = config_with_admin("60s", switch.addr());
    let mut d = Daemon::start(&cfg, ACCOUNTS);
    let admin = d.admin_addr();
    let caller = Caller::bind();

    let before = scrape(admin);
    let mut replies = Vec::new();
    for user in ["alice", "bob", "carol", "bob", "mallory", "nobody", "bob"] {
        replies.push((
            user,
            call(&caller, &switch, d.sip_addr(), user).map(|m| status_code(&m)),
        ));
    }
    let want = [
        ("alice", None),
        ("bob", Some(Some(402))),
        ("carol", None),
        ("bob", Some(Some(402))),
        ("mallory", Some(Some(403))),
        ("nobody", Some(Some(403))),
        ("bob", Some(Some(402))),
    ];
    assert_eq!(replies, want);
    let after = scrape(admin);

    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&after, name, labels) - metric(&before, name, labels)
    };
    if delta(
        "creditgate_refusals_total",
        &[("cause", "insufficient_credit")],
    ) != 3.0
    {
        d.fail("refusals for insufficient credit did not move by 3");
    }
    assert_eq!(
        delta(
            "creditgate_refusals_total",
            &[("cause", "account_disabled")]
        ),
        1.0
    );
    assert_eq!(
        delta("creditgate_refusals_total", &[("cause", "unknown_account")]),
        1.0
    );
    assert_eq!(
        delta("creditgate_refusals_total", &[("cause", "no_snapshot")]),
        0.0
    );
    assert_eq!(
        delta("creditgate_new_calls_total", &[("outcome", "admitted")]),
        2.0
    );
    assert_eq!(
        delta("creditgate_new_calls_total", &[("outcome", "refused")]),
        5.0
    );
    assert_eq!(
        delta("creditgate_messages_total", &[("outcome", "admitted")]),
        2.0
    );
    assert_eq!(
        delta("creditgate_messages_total", &[("outcome", "refused")]),
        5.0
    );
    assert_eq!(
        delta("creditgate_forwards_total", &[("kind", "new_call")]),
        2.0
    );
    assert_eq!(
        delta(
            "creditgate_requests_total",
            &[("method", "INVITE"), ("outcome", "admitted")]
        ),
        2.0
    );
    assert_eq!(
        delta(
            "creditgate_requests_total",
            &[("method", "INVITE"), ("outcome", "refused")]
        ),
        5.0
    );
    assert_eq!(
        delta(
            "creditgate_dry_run_refusals_total",
            &[("cause", "insufficient_credit")]
        ),
        0.0
    );
    assert_eq!(delta("creditgate_parse_errors_total", &[]), 0.0);
    // The histogram counted those seven decisions (at least: a late retransmission of the
    // harness's startup OPTIONS ping would count too, so this one is not exact).
    assert!(delta("creditgate_decision_latency_seconds_count", &[]) >= 7.0);
    let hist = after
        .samples
        .iter()
        .find(|s| s.metric == "creditgate_decision_latency_seconds")
        .expect("the latency histogram");
    match &hist.value {
        Value::Histogram(b) => {
            assert!(
                b.windows(2)
                    .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count),
                "buckets not cumulative: {b:?}"
            );
            let inf = b.last().unwrap();
            assert!(inf.less_than.is_infinite());
            assert_eq!(
                inf.count,
                metric(&after, "creditgate_decision_latency_seconds_count", &[])
            );
        }
        other => panic!("not a histogram: {other:?}"),
    }

    // The snapshot and refresh figures.
    assert_eq!(metric(&after, "creditgate_snapshot_accounts", &[]), 5.0);
    assert_eq!(metric(&after, "creditgate_snapshot_loaded", &[]), 1.0);
    assert_eq!(metric(&after, "creditgate_snapshot_stale", &[]), 0.0);
    assert!(metric(&after, "creditgate_snapshot_age_seconds", &[]) >= 0.0);
    assert!(
        metric(
            &after,
            "creditgate_refreshes_total",
            &[("result", "applied")]
        ) >= 1.0
    );
    assert_eq!(
        metric(&after, "creditgate_refresh_failures_total", &[]),
        0.0
    );
    assert_eq!(metric(&after, "creditgate_push_updates_total", &[]), 0.0);
    assert_eq!(metric(&after, "creditgate_calls_in_progress", &[]), 0.0);
    assert!(metric(&after, "creditgate_refresh_last_duration_seconds", &[]) >= 0.0);

    // Bounded labels only: never an account id, an address or a Call-ID.
    let allowed = [
        "method", "outcome", "cause", "kind", "reason", "result", "version",
    ];
    for s in &after.samples {
        for (k, v) in s.labels.iter() {
            assert!(
                allowed.contains(&k.as_str()),
                "unexpected label {k}={v} on {}",
                s.metric
            );
            assert!(
                !["alice", "bob", "carol", "mallory", "nobody"].contains(&v.as_str()),
                "account id as a label on {}",
                s.metric
            );
            assert!(
                !v.contains('@') && !v.contains("127.0.0."),
                "address or Call-ID as a label on {}",
                s.metric
            );
        }
    }

    // OpenMetrics on request.
    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\nConnection: close\r\n\r\n").unwrap();
    let mut om = String::new();
    s.read_to_string(&mut om).unwrap();
    assert!(om.contains("application/openmetrics-text"), "{om}");
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
}

/// `/ready` is 200 once loaded, 503 once the snapshot is older than `max_staleness` because
/// refreshes fail, and 200 after a good refresh. (Before any snapshot: with the `file` source a
/// broken accounts file now stops the start, exit 2, see `startup`; the no-snapshot 503 is
/// `redis::redis_down_at_start_answers_503_then_admits_once_redis_is_up`.)
#[test]
fn ready_follows_the_snapshot_state() {
    let switch = Switch::bind();
    let cfg = config_with_admin("1s", switch.addr());
    let cfg = with_credit(&cfg, "max_staleness = \"2s\"");
    let mut d = Daemon::start(&cfg, ACCOUNTS);
    let admin = d.admin_addr();

    assert_eq!(get(admin, "/health").status, 200);
    let r = poll_until(
        &mut d,
        admin,
        "/ready",
        SLOW,
        "200 with the accounts file loaded",
        |r| r.status == 200,
    );
    assert!(r.body.contains("5 accounts"), "{}", r.body);
    assert_eq!(
        metric(&scrape(admin), "creditgate_snapshot_loaded", &[]),
        1.0
    );

    // Refreshes start failing: the snapshot ages past max_staleness (2s).
    let failures_before = metric(&scrape(admin), "creditgate_refresh_failures_total", &[]);
    d.rewrite_accounts("[[account]]\nid = \"broken\"\nbalance = ");
    let r = http("POST", admin, "/refresh", None);
    assert_eq!(r.status, 502, "{}", r.body);
    let j = r.json();
    assert_eq!(j["result"], "failed");
    assert!(
        j["error"]
            .as_str()
            .is_some_and(|e| e.contains("accounts.toml")),
        "{j}"
    );
    let r = poll_until(
        &mut d,
        admin,
        "/ready",
        SLOW,
        "503 once the snapshot is stale",
        |r| r.status == 503,
    );
    assert!(r.body.contains("stale"), "{}", r.body);
    assert!(r.body.contains("last refresh failed"), "{}", r.body);
    let m = scrape(admin);
    assert!(metric(&m, "creditgate_refresh_failures_total", &[]) > failures_before);
    assert_eq!(metric(&m, "creditgate_snapshot_stale", &[]), 1.0);
    assert!(metric(&m, "creditgate_snapshot_age_seconds", &[]) > 2.0);
    // /health stays 200 throughout: the process is alive.
    assert_eq!(get(admin, "/health").status, 200);

    d.rewrite_accounts(ACCOUNTS);
    poll_until(
        &mut d,
        admin,
        "/ready",
        SLOW,
        "200 after a good refresh",
        |r| r.status == 200,
    );
    assert_eq!(
        metric(&scrape(admin), "creditgate_snapshot_stale", &[]),
        0.0
    );
}

/// `/accounts/{id}`: the documented JSON for an admitted, a refused, a disabled and an unknown
/// account; the decision follows a balance change after `POST /refresh`.
#[test]
fn accounts_endpoint_returns_the_documented_json() {
    let switch = Switch::bind();
    let cfg = config_with_admin("60s", switch.addr());
    let mut d = Daemon::start(&cfg, ACCOUNTS);
    let admin = d.admin_addr();

    let r = get(admin, "/accounts/alice");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .headers
        .get("content-type")
        .is_some_and(|c| c.starts_with("application/json")));
    let j = r.json();
    assert_eq!(j["id"], "alice");
    assert_eq!(j["found"], true);
    assert_eq!(j["balance"], "25.00");
    assert_eq!(j["debit_limit"], "0");
    assert_eq!(j["available"], "25.00");
    assert_eq!(j["live_available"], "25.00");
    assert_eq!(j["calls_in_progress"], 0);
    assert_eq!(j["enabled"], true);
    assert_eq!(j["currency"], "EUR");
    assert_eq!(j["ips"], serde_json::json!([]));
    assert_eq!(j["tech_prefix"], Json::Null);
    assert_eq!(j["decision"]["result"], "admit");
    assert_eq!(j["snapshot"]["loaded"], true);
    assert_eq!(j["snapshot"]["stale"], false);
    assert_eq!(j["snapshot"]["accounts"], 5);

    let j = get(admin, "/accounts/carol").json();
    assert_eq!(j["available"], "57.83", "balance -42.17 + debit limit 100");
    assert_eq!(j["decision"]["result"], "admit");

    let j = get(admin, "/accounts/bob").json();
    assert_eq!(j["balance"], "0.00");
    assert_eq!(j["decision"]["result"], "refuse");
    assert_eq!(j["decision"]["cause"], "insufficient_credit");
    assert_eq!(j["decision"]["sip_code"], 402);
    assert_eq!(j["decision"]["sip_reason"], "Payment Required");

    let j = get(admin, "/accounts/mallory").json();
    assert_eq!(j["enabled"], false);
    assert_eq!(j["decision"]["cause"], "account_disabled");
    assert_eq!(j["decision"]["sip_code"], 403);

    let r = get(admin, "/accounts/nobody");
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["found"], false);
    assert_eq!(j["decision"]["cause"], "unknown_account");

    // A top-up, applied by POST /refresh, changes the decision.
    d.rewrite_accounts(&accounts_with_balance("bob", "3.50"));
    let r = http("POST", admin, "/refresh", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["result"], "applied");
    let j = get(admin, "/accounts/bob").json();
    assert_eq!(j["balance"], "3.50");
    assert_eq!(j["decision"]["result"], "admit");
    if !d.is_running() {
        d.fail("the daemon died");
    }
}

/// The shrink guard: a refresh that would drop 4 of 5 accounts is held (409, `/ready` 503
/// naming max_shrink), and `POST /refresh?force=1` applies it.
#[test]
fn refresh_held_by_shrink_guard_until_forced() {
    let switch = Switch::bind();
    let cfg = config_with_admin("60s", switch.addr());
    let mut d = Daemon::start(&cfg, ACCOUNTS);
    let admin = d.admin_addr();
    poll_until(&mut d, admin, "/ready", SLOW, "ready", |r| r.status == 200);

    d.rewrite_accounts("[[account]]\nid = \"alice\"\nbalance = \"1\"\n");
    let r = http("POST", admin, "/refresh", None);
    assert_eq!(r.status, 409, "{}", r.body);
    let j = r.json();
    assert_eq!(j["result"], "held");
    assert_eq!(j["would_remove"], 4);
    assert_eq!(j["known"], 5);
    let r = get(admin, "/ready");
    assert_eq!(r.status, 503);
    assert!(r.body.contains("max_shrink"), "{}", r.body);
    let m = scrape(admin);
    assert_eq!(metric(&m, "creditgate_refresh_held", &[]), 1.0);
    assert_eq!(metric(&m, "creditgate_snapshot_accounts", &[]), 5.0);

    let r = http("POST", admin, "/refresh?force=1", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["accounts"], 1);
    assert_eq!(get(admin, "/ready").status, 200);
    assert_eq!(metric(&scrape(admin), "creditgate_refresh_held", &[]), 0.0);

    // SIGHUP confirms a hold too (SPEC section 5): the last account goes.
    d.rewrite_accounts("");
    assert_eq!(http("POST", admin, "/refresh", None).status, 409);
    assert_eq!(get(admin, "/ready").status, 503);
    signal(d.pid().unwrap(), "-HUP");
    let r = poll_until(
        &mut d,
        admin,
        "/ready",
        SLOW,
        "200 after SIGHUP confirmed the hold",
        |r| r.status == 200,
    );
    assert!(r.body.contains("0 accounts"), "{}", r.body);
}

/// With `admin.token_file`, every route but /health and /ready needs the bearer token.
#[test]
fn admin_token_is_required() {
    let switch = Switch::bind();
    let cfg = config_with_admin("60s", switch.addr());
    let cfg = cfg.replace("[admin]\n", "[admin]\ntoken_file = \"admin.token\"\n");
    // The token file must exist before the daemon starts: write it next to the config by
    // starting from a directory we control.
    let mut d = start_with_files(&cfg, ACCOUNTS, &[("admin.token", "s3cr3t-token\n")]);
    let admin = d.admin_addr();
    assert_eq!(get(admin, "/health").status, 200);
    assert_eq!(get(admin, "/ready").status, 200);
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/accounts/alice"),
        ("POST", "/refresh"),
    ] {
        let r = http(method, admin, path, None);
        assert_eq!(r.status, 401, "{method} {path} without a token");
        assert_eq!(
            r.headers.get("www-authenticate").map(String::as_str),
            Some("Bearer")
        );
        assert_eq!(
            http(method, admin, path, Some("wrong")).status,
            401,
            "{method} {path} with a wrong token"
        );
        assert_eq!(
            http(method, admin, path, Some("s3cr3t-token")).status,
            200,
            "{method} {path} with the token"
        );
    }
    d.kill();
}

// ---------------------------------------------------------------------------------------------
// Tests: signals and logs

/// SIGHUP with a new `[reply] insufficient_credit` switches the refusal to 403 "Blocked".
#[test]
fn sighup_applies_a_new_reply_code() {
    let switch = Switch::bind();
    let cfg = test_config(0, switch.addr(), "60s");
    let mut d = Daemon::start(&cfg, ACCOUNTS);
    let caller = Caller::bind();
    let r = call(&caller, &switch, d.sip_addr(), "bob").expect("a refusal");
    assert_eq!(start_line(&r), "SIP/2.0 402 Payment Required");

    rewrite_config(
        &d,
        &format!("{cfg}\n[reply]\ninsufficient_credit = {{ code = 403, reason = \"Blocked\" }}\n"),
    );
    signal(d.pid().unwrap(), "-HUP");
    if !d.wait_for_log("configuration reloaded", 1, SLOW) {
        d.fail("no reload log line after SIGHUP");
    }
    let r = call(&caller, &switch, d.sip_addr(), "bob").expect("a refusal");
    assert_eq!(start_line(&r), "SIP/2.0 403 Blocked");
    // Admissions are unchanged.
    assert!(call(&caller, &switch, d.sip_addr(), "alice").is_none());
}

/// SIGHUP with an invalid config: refused with a log line naming the key, the old config keeps
/// running; a restart-only change is reported as such.
#[test]
fn sighup_with_an_invalid_config_keeps_the_old_one() {
    let switch = Switch::bind();
    let cfg = test_config(0, switch.addr(), "60s");
    let mut d = Daemon::start(&cfg, ACCOUNTS);
    let caller = Caller::bind();

    rewrite_config(
        &d,
        &format!("{cfg}\n[reply]\ninsufficient_credit = {{ code = 99, reason = \"Blocked\" }}\n"),
    );
    signal(d.pid().unwrap(), "-HUP");
    if !d.wait_for_log("new configuration refused", 1, SLOW) {
        d.fail("no refusal log line after SIGHUP with an invalid config");
    }
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("new configuration refused"))
        .unwrap();
    assert!(
        line.contains("reply.insufficient_credit.code"),
        "the log line does not name the key: {line}"
    );
    assert!(d.is_running(), "the daemon stopped on an invalid config");
    let r = call(&caller, &switch, d.sip_addr(), "bob").expect("a refusal");
    assert_eq!(
        start_line(&r),
        "SIP/2.0 402 Payment Required",
        "the old [reply] must stay"
    );

    // A valid file that changes a restart-only setting: applied, with a "needs a restart" line.
    rewrite_config(&d, &cfg.replace("workers = 2", "workers = 3"));
    signal(d.pid().unwrap(), "-HUP");
    if !d.wait_for_log("configuration reloaded", 1, SLOW) {
        d.fail("no reload log line after the second SIGHUP");
    }
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("needs a restart") && l.contains("sip.workers")),
        "{log}"
    );
    assert!(call(&caller, &switch, d.sip_addr(), "alice").is_none());
}

/// `[log] format = "json"`: every line is one JSON object; the refusal line carries account,
/// cause, Call-ID and source; the refresh summary is there.
#[test]
fn json_logs_are_one_valid_object_per_line() {
    let switch = Switch::bind();
    let cfg = test_config(0, switch.addr(), "60s")
        .replace("level = \"info\"", "level = \"info\"\nformat = \"json\"");
    let mut d = Daemon::start(&cfg, ACCOUNTS);
    let caller = Caller::bind();
    let invite = Request::invite(
        caller.addr(),
        d.sip_addr(),
        "json-log-call@127.0.0.1",
        "bob",
    );
    caller.send(&invite.build(), d.sip_addr());
    caller.recv_or_fail(WAIT, "the refusal");
    if !d.wait_for_log("\"refused\"", 1, SLOW) {
        d.fail("no refusal line in the JSON log");
    }
    let log = d.log();
    let objs: Vec<Json> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str::<Json>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
        })
        .collect();
    assert!(objs.iter().all(Json::is_object));
    let refused = objs
        .iter()
        .find(|o| o["message"] == "refused")
        .expect("a refusal line");
    assert_eq!(refused["level"], "INFO");
    assert_eq!(refused["account"], "bob");
    assert_eq!(refused["cause"], "insufficient_credit");
    assert_eq!(refused["call_id"], "json-log-call@127.0.0.1");
    assert_eq!(refused["source"], caller.addr().to_string());
    let summary = objs
        .iter()
        .find(|o| o["message"] == "snapshot refreshed")
        .expect("a refresh summary line");
    assert_eq!(summary["accounts"], 5);
}

// ---------------------------------------------------------------------------------------------
// systemd notifications

/// A daemon started by this module, for cases the harness's `Daemon::start` cannot express
/// (extra files next to the config, extra environment). Killed on drop.
struct Spawned {
    _dir: tempfile::TempDir,
    child: Child,
    log: std::path::PathBuf,
}

impl Spawned {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log until `needle` occurs `count` times; false after `timeout`.
    fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.log().matches(needle).count() < count {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- daemon log -----\n{}\n----- end -----", self.log());
        }
    }
}

fn spawn_in(dir: tempfile::TempDir, env: &[(&str, String)]) -> Spawned {
    let log = dir.path().join("daemon.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("--config")
        .arg(dir.path().join("creditgate.toml"))
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn creditgate");
    Spawned {
        _dir: dir,
        child,
        log,
    }
}

fn write_files(dir: &Path, config: &str, accounts: &str, extra: &[(&str, &str)]) {
    fs::write(dir.join("creditgate.toml"), config).unwrap();
    fs::write(dir.join("accounts.toml"), accounts).unwrap();
    for (name, text) in extra {
        fs::write(dir.join(name), text).unwrap();
    }
}

/// Starts the daemon through the harness after writing `extra` files: the harness writes the
/// config and accounts itself, so the extra files go into a directory the config points to.
fn start_with_files(config: &str, accounts: &str, extra: &[(&str, &str)]) -> Daemon {
    let side = tempfile::Builder::new()
        .prefix("creditgate-ops-")
        .tempdir()
        .unwrap();
    let mut cfg = config.to_owned();
    for (name, text) in extra {
        let p = side.path().join(name);
        fs::write(&p, text).unwrap();
        cfg = cfg.replace(&format!("\"{name}\""), &format!("\"{}\"", p.display()));
    }
    let d = Daemon::start(&cfg, accounts);
    // The daemon has read its files by the time it answers SIP; the side directory can go.
    drop(side);
    d
}

/// The next datagram on the fake systemd socket, or `None` after `limit`.
fn notify_recv(sock: &UnixDatagram, limit: Duration) -> Option<String> {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => None,
    }
}

/// Waits (bounded) for a notification containing the line `want`, returning every message seen.
fn notify_wait(sock: &UnixDatagram, want: &str, limit: Duration, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(m) = notify_recv(
            sock,
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ) {
            let hit = m.lines().any(|l| l == want);
            seen.push(m);
            if hit {
                return true;
            }
        }
    }
    false
}

/// `NOTIFY_SOCKET` and `WATCHDOG_USEC` set: READY=1 first, then periodic WATCHDOG=1 keep-alives;
/// RELOADING=1 then READY=1 around SIGHUP; STOPPING=1 on SIGTERM, and a clean exit.
#[test]
fn systemd_notify_ready_watchdog_reload_stop() {
    let dir = tempfile::Builder::new().prefix("cg-sd-").tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the fake systemd socket");
    let switch = Switch::bind();
    let cfg = test_config(0, switch.addr(), "60s");
    write_files(dir.path(), &cfg, ACCOUNTS, &[]);
    let mut d = spawn_in(
        dir,
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            // 2 s: keep-alives every second.
            ("WATCHDOG_USEC", "2000000".to_owned()),
        ],
    );

    let mut seen = Vec::new();
    assert!(
        notify_wait(&sock, "READY=1", SLOW, &mut seen),
        "no READY=1; got {seen:?}"
    );
    let ready_at = std::time::SystemTime::now();
    assert!(
        !seen.iter().any(|m| m.contains("WATCHDOG=1")),
        "WATCHDOG=1 before READY=1: {seen:?}"
    );
    assert!(
        seen.last()
            .unwrap()
            .lines()
            .any(|l| l.starts_with("STATUS=serving")),
        "{seen:?}"
    );
    // READY=1 means the sockets are bound and the first snapshot attempt is done. The log is
    // written by a thread of its own, a moment later: wait for the line, then compare its
    // timestamp (taken when the refresh logged it) with the arrival of READY=1.
    assert!(
        d.wait_for_log("snapshot refreshed", 1, SLOW),
        "no snapshot refresh logged"
    );
    let refreshed_at = d
        .log()
        .lines()
        .find(|l| l.contains("snapshot refreshed"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .expect("a timestamped refresh line");
    assert!(
        refreshed_at <= ready_at,
        "READY=1 before the first snapshot attempt"
    );

    // Periodic keep-alives on an idle daemon (the receive loops' heartbeat ticks keep them
    // coming, on both workers).
    for i in 0..3 {
        let mut s = Vec::new();
        assert!(
            notify_wait(&sock, "WATCHDOG=1", SLOW, &mut s),
            "keep-alive {i} missing; got {s:?}"
        );
    }

    let pid = d.child.id();
    signal(pid, "-HUP");
    let mut s = Vec::new();
    assert!(
        notify_wait(&sock, "RELOADING=1", SLOW, &mut s),
        "no RELOADING=1; got {s:?}"
    );
    assert!(
        s.last()
            .unwrap()
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{s:?}"
    );
    let mut s = Vec::new();
    assert!(
        notify_wait(&sock, "READY=1", SLOW, &mut s),
        "no READY=1 after the reload; got {s:?}"
    );

    signal(pid, "-TERM");
    let mut s = Vec::new();
    assert!(
        notify_wait(&sock, "STOPPING=1", SLOW, &mut s),
        "no STOPPING=1; got {s:?}"
    );
    let deadline = Instant::now() + SLOW;
    let status = loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert!(d.log().contains("creditgate stopped"));
}
