//! The Redis credit source end to end (issue 3, SPEC section 5): the real daemon on a real
//! `redis-server` that each test starts on its own Unix socket, decisions observed over
//! real UDP. Also the `accounts` operator commands against that Redis.
//!
//! Every wait for a change is a bounded poll (no timing assertion): "after the next refresh"
//! polls with `refresh_interval = "1s"`; "without waiting for the refresh" polls for at most
//! [`PUSH_WAIT`] with `refresh_interval = "60s"`, so only the push update can explain a change.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::harness::*;

/// Key prefix of the test configs (not the default, to show the prefix is honoured).
pub(crate) const PREFIX: &str = "cgt:";
/// Upper bound for a change to show through a 1 s refresh (a few refreshes plus reconnect back-off).
pub(crate) const REFRESH_WAIT: Duration = Duration::from_secs(15);
/// Upper bound for a push update with a 60 s refresh interval: far below the interval, so a
/// change within it cannot come from a full refresh.
pub(crate) const PUSH_WAIT: Duration = Duration::from_secs(10);

/// The accounts of [`harness::ACCOUNTS`] as Redis hashes (field, value).
const REDIS_ACCOUNTS: [(&str, &[(&str, &str)]); 5] = [
    (
        "alice",
        &[
            ("balance", "25.00"),
            ("debit_limit", "0"),
            ("currency", "EUR"),
        ],
    ),
    (
        "bob",
        &[
            ("balance", "0.00"),
            ("debit_limit", "0"),
            ("currency", "EUR"),
        ],
    ),
    (
        "carol",
        &[
            ("balance", "-42.17"),
            ("debit_limit", "100"),
            ("currency", "USD"),
        ],
    ),
    (
        "dave",
        &[
            ("balance", "7.50"),
            ("debit_limit", "-5"),
            ("currency", "EUR"),
        ],
    ),
    (
        "mallory",
        &[("balance", "1000"), ("debit_limit", "0"), ("enabled", "0")],
    ),
];

// ---------------------------------------------------------------------------------------------
// A redis-server of our own

/// A `redis-server` process on a Unix socket in its own temp directory (no TCP port, so no
/// port race with parallel tests, and a restart finds its address free), without persistence
/// (a restart comes back empty). Killed on drop.
pub struct RedisServer {
    dir: TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a fresh port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut r = RedisServer::reserve();
        r.restart();
        r
    }

    /// Picks a socket path but starts nothing (a Redis that is down); [`RedisServer::restart`]
    /// starts it.
    pub fn reserve() -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("creditgate-redis-")
            .tempdir()
            .expect("create a temp dir");
        RedisServer { dir, child: None }
    }

    /// The server's Unix socket.
    pub(crate) fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn url(&self) -> String {
        format!("redis+unix://{}?db=0", self.socket().display())
    }

    /// (Re)starts the server on the same socket, empty, and waits until it answers PING.
    pub fn restart(&mut self) {
        self.kill();
        let log = fs::File::create(self.dir.path().join("redis.log")).expect("create redis.log");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (install the redis-server package): {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_cli(&["PING"]).as_deref() != Some("PONG") {
            if Instant::now() >= deadline {
                let log = fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                panic!(
                    "redis-server on {} did not answer PING within 10s:\n{log}",
                    self.socket().display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (SIGKILL, as a crash) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        // Only the final newline goes: an empty last value must stay visible.
        let text = String::from_utf8_lossy(&out.stdout);
        out.status
            .success()
            .then(|| text.strip_suffix('\n').unwrap_or(&text).to_owned())
    }

    /// Runs one command with `redis-cli` and returns its output (without the final newline).
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// `HSET {PREFIX}account:{id} field value ...`.
    pub fn hset(&self, id: &str, fields: &[(&str, &str)]) {
        let key = format!("{PREFIX}account:{id}");
        let mut args = vec!["HSET", key.as_str()];
        for (k, v) in fields {
            args.push(k);
            args.push(v);
        }
        self.cli(&args);
    }

    /// `PUBLISH {PREFIX}updates id`.
    pub fn publish(&self, id: &str) {
        self.cli(&["PUBLISH", &format!("{PREFIX}updates"), id]);
    }

    /// `DEL {PREFIX}account:{id}`.
    pub fn del(&self, id: &str) {
        self.cli(&["DEL", &format!("{PREFIX}account:{id}")]);
    }

    /// `HGETALL` as sorted (field, value) pairs.
    pub fn hgetall(&self, id: &str) -> Vec<(String, String)> {
        let out = self.cli(&["HGETALL", &format!("{PREFIX}account:{id}")]);
        if out.is_empty() {
            return Vec::new();
        }
        let lines: Vec<&str> = out.split('\n').collect();
        let mut pairs: Vec<(String, String)> = lines
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => Some((k.to_string(), v.to_string())),
                _ => None,
            })
            .collect();
        pairs.sort();
        pairs
    }

    /// Writes [`REDIS_ACCOUNTS`].
    pub fn load_test_accounts(&self) {
        for (id, fields) in REDIS_ACCOUNTS {
            self.hset(id, fields);
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Daemon on Redis, and decisions

/// [`test_config`] switched to the Redis source at `redis`.
pub(crate) fn redis_config(
    listen_port: u16,
    switch: &Switch,
    refresh_interval: &str,
    redis: &RedisServer,
) -> String {
    let cfg = test_config(listen_port, switch.addr(), refresh_interval);
    let replaced = cfg.replacen(
        "source = \"file\"",
        &format!(
            "source = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{PREFIX}\"",
            redis.url()
        ),
        1,
    );
    assert_ne!(
        replaced, cfg,
        "test_config no longer has `source = \"file\"`"
    );
    replaced
}

fn start_daemon(refresh_interval: &str, redis: &RedisServer) -> (Daemon, Switch, Caller) {
    let switch = Switch::bind();
    let port = 0;
    let daemon = Daemon::start(&redis_config(port, &switch, refresh_interval, redis), "");
    (daemon, switch, Caller::bind())
}

/// What became of one new call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The INVITE reached the switch.
    Admitted,
    /// creditgate answered with this final status.
    Refused(u16),
}

/// Sends a fresh INVITE from `from_user` and reports whether it reached the switch or which
/// final reply creditgate sent. Panics if neither happens within [`WAIT`].
pub(crate) fn decide(
    daemon: &Daemon,
    switch: &Switch,
    caller: &Caller,
    from_user: &str,
) -> Outcome {
    let d = daemon.sip_addr();
    let call_id = new_call_id();
    let invite = Request::invite(caller.addr(), d, &call_id, from_user);
    caller.send(&invite.build(), d);
    let ours = |m: &[u8]| header(m, "Call-ID").as_deref() == Some(call_id.as_str());
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Some((m, _)) = switch.recv_timeout(Duration::from_millis(20)) {
            if ours(&m) && method(&m).as_deref() == Some("INVITE") {
                return Outcome::Admitted;
            }
        }
        if let Some((m, _)) = caller.recv_timeout(Duration::from_millis(20)) {
            if let Some(code) = status_code(&m).filter(|c| *c >= 200) {
                if ours(&m) {
                    return Outcome::Refused(code);
                }
            }
        }
    }
    panic!("INVITE from {from_user}: neither forwarded nor answered within {WAIT:?}\n----- daemon log -----\n{}", daemon.log())
}

/// Polls [`decide`] until it gives `want`; panics with the last outcome and the log after `timeout`.
pub(crate) fn wait_for(
    daemon: &Daemon,
    switch: &Switch,
    caller: &Caller,
    from_user: &str,
    want: Outcome,
    timeout: Duration,
    why: &str,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = decide(daemon, switch, caller, from_user);
        if got == want {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{why}: {from_user} still {got:?} after {timeout:?}, expected {want:?}\n----- daemon log -----\n{}", daemon.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The decisions for the five test accounts plus an unknown one, as loaded from [`REDIS_ACCOUNTS`].
const INITIAL_DECISIONS: [(&str, Outcome); 6] = [
    ("alice", Outcome::Admitted),
    ("bob", Outcome::Refused(402)),
    ("carol", Outcome::Admitted),
    ("dave", Outcome::Admitted),
    ("mallory", Outcome::Refused(403)),
    ("nobody", Outcome::Refused(403)),
];

/// Asserts [`INITIAL_DECISIONS`] now.
fn assert_initial_decisions(daemon: &Daemon, switch: &Switch, caller: &Caller, when: &str) {
    for (user, want) in INITIAL_DECISIONS {
        assert_eq!(decide(daemon, switch, caller, user), want, "{when}: {user}");
    }
}

/// Waits until every one of [`INITIAL_DECISIONS`] holds (a refresh may have caught Redis while
/// the accounts were still being written, and the next one completes the set).
fn wait_for_initial_decisions(daemon: &Daemon, switch: &Switch, caller: &Caller, why: &str) {
    for (user, want) in INITIAL_DECISIONS {
        wait_for(daemon, switch, caller, user, want, REFRESH_WAIT, why);
    }
}

pub(crate) fn sighup(daemon: &Daemon) {
    let pid = daemon.pid().expect("the daemon's pid");
    let st = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill -HUP");
    assert!(st.success(), "kill -HUP {pid} failed");
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Initial load from Redis; a balance change without PUBLISH applies at the next full refresh;
/// an account deleted from Redis becomes unknown (403) at the next full refresh.
#[test]
fn redis_initial_load_then_refresh_applies_changes_and_deletions() {
    let redis = RedisServer::start();
    redis.load_test_accounts();
    let (daemon, switch, caller) = start_daemon("1s", &redis);
    assert_initial_decisions(&daemon, &switch, &caller, "initial load");

    redis.hset("bob", &[("balance", "5.00")]);
    wait_for(
        &daemon,
        &switch,
        &caller,
        "bob",
        Outcome::Admitted,
        REFRESH_WAIT,
        "balance top-up via refresh",
    );
    redis.hset("alice", &[("balance", "0")]);
    wait_for(
        &daemon,
        &switch,
        &caller,
        "alice",
        Outcome::Refused(402),
        REFRESH_WAIT,
        "balance used up via refresh",
    );

    redis.del("dave");
    wait_for(
        &daemon,
        &switch,
        &caller,
        "dave",
        Outcome::Refused(403),
        REFRESH_WAIT,
        "deleted account",
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "carol"),
        Outcome::Admitted,
        "others unaffected"
    );
}

/// With a 60 s refresh interval, a PUBLISH on {prefix}updates applies at once: a top-up, a
/// suspension, and a deletion.
#[test]
fn redis_publish_applies_without_waiting_for_the_refresh() {
    let redis = RedisServer::start();
    redis.load_test_accounts();
    let (daemon, switch, caller) = start_daemon("60s", &redis);
    assert_eq!(
        decide(&daemon, &switch, &caller, "bob"),
        Outcome::Refused(402)
    );
    // The subscription is made concurrently with the first load: wait for it to be confirmed.
    assert!(
        daemon.wait_for_log("subscribed to push updates", 1, PUSH_WAIT),
        "no subscription:\n{}",
        daemon.log()
    );

    redis.hset("bob", &[("balance", "5.00")]);
    redis.publish("bob");
    wait_for(
        &daemon,
        &switch,
        &caller,
        "bob",
        Outcome::Admitted,
        PUSH_WAIT,
        "published top-up",
    );

    redis.hset("alice", &[("enabled", "0")]);
    redis.publish("alice");
    wait_for(
        &daemon,
        &switch,
        &caller,
        "alice",
        Outcome::Refused(403),
        PUSH_WAIT,
        "published suspension",
    );

    redis.del("carol");
    redis.publish("carol");
    wait_for(
        &daemon,
        &switch,
        &caller,
        "carol",
        Outcome::Refused(403),
        PUSH_WAIT,
        "published deletion",
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "dave"),
        Outcome::Admitted,
        "others unaffected"
    );
}

/// The push subscription comes back by itself after Redis restarts: a PUBLISH after the restart
/// still applies at once (60 s refresh interval). `max_shrink = 0.0` holds any refresh that
/// catches Redis half-refilled, so the snapshot stays whole meanwhile.
#[test]
fn redis_push_subscription_survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    redis.load_test_accounts();
    let switch = Switch::bind();
    let port = 0;
    let cfg = redis_config(port, &switch, "60s", &redis).replacen(
        "refresh_interval = \"60s\"",
        "refresh_interval = \"60s\"\nmax_shrink = 0.0",
        1,
    );
    let daemon = Daemon::start(&cfg, "");
    let caller = Caller::bind();
    assert!(
        daemon.wait_for_log("subscribed to push updates", 1, PUSH_WAIT),
        "no subscription:\n{}",
        daemon.log()
    );

    redis.restart();
    redis.load_test_accounts();
    assert!(
        daemon.wait_for_log("push updates resubscribed", 1, REFRESH_WAIT),
        "no resubscription:\n{}",
        daemon.log()
    );
    redis.hset("bob", &[("balance", "5.00")]);
    redis.publish("bob");
    wait_for(
        &daemon,
        &switch,
        &caller,
        "bob",
        Outcome::Admitted,
        PUSH_WAIT,
        "PUBLISH after a Redis restart",
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "alice"),
        Outcome::Admitted
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "mallory"),
        Outcome::Refused(403)
    );
}

/// Killing Redis keeps admissions and refusals as they were; Redis restarted with new data
/// applies at the next refresh.
#[test]
fn redis_down_keeps_the_snapshot_and_restart_with_new_data_applies() {
    let mut redis = RedisServer::start();
    redis.load_test_accounts();
    let (mut daemon, switch, caller) = start_daemon("1s", &redis);
    assert_initial_decisions(&daemon, &switch, &caller, "before the outage");

    redis.kill();
    assert!(
        daemon.wait_for_log("refresh failed", 2, REFRESH_WAIT),
        "no failed refresh logged:\n{}",
        daemon.log()
    );
    assert_initial_decisions(&daemon, &switch, &caller, "Redis down");
    assert!(
        daemon.is_running(),
        "the daemon must survive a Redis outage"
    );

    redis.restart();
    redis.load_test_accounts();
    redis.hset("bob", &[("balance", "3.00")]);
    redis.hset("alice", &[("balance", "-1")]);
    wait_for(
        &daemon,
        &switch,
        &caller,
        "bob",
        Outcome::Admitted,
        REFRESH_WAIT,
        "new data after restart",
    );
    wait_for(
        &daemon,
        &switch,
        &caller,
        "alice",
        Outcome::Refused(402),
        REFRESH_WAIT,
        "alice after restart",
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "mallory"),
        Outcome::Refused(403),
        "mallory after restart"
    );
}

/// Redis restarted empty would remove every account: the max_shrink guard holds the old
/// snapshot (with an alarm) until an operator confirms with SIGHUP.
#[test]
fn redis_restarted_empty_is_held_back_until_sighup() {
    let mut redis = RedisServer::start();
    redis.load_test_accounts();
    let (daemon, switch, caller) = start_daemon("1s", &redis);
    assert_eq!(
        decide(&daemon, &switch, &caller, "alice"),
        Outcome::Admitted
    );

    redis.restart(); // empty: no persistence
    assert!(
        daemon.wait_for_log("ALARM", 2, REFRESH_WAIT),
        "no shrink alarm:\n{}",
        daemon.log()
    );
    assert_initial_decisions(&daemon, &switch, &caller, "held back");

    sighup(&daemon);
    wait_for(
        &daemon,
        &switch,
        &caller,
        "alice",
        Outcome::Refused(403),
        REFRESH_WAIT,
        "confirmed by SIGHUP",
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "bob"),
        Outcome::Refused(403),
        "bob gone too"
    );
}

/// A record with a bad field is refused (as unknown) and logged with its account and field;
/// the others load. A bad record arriving by PUBLISH takes the account out as well.
#[test]
fn redis_bad_record_is_refused_and_the_others_still_work() {
    let redis = RedisServer::start();
    redis.load_test_accounts();
    redis.hset("broken", &[("balance", "12,50")]);
    // Not a hash at all (WRONGTYPE for HGETALL): refused the same way, the rest still loads.
    redis.cli(&["SET", &format!("{PREFIX}account:stringy"), "12"]);
    let (daemon, switch, caller) = start_daemon("60s", &redis);
    assert_eq!(
        decide(&daemon, &switch, &caller, "stringy"),
        Outcome::Refused(403)
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "broken"),
        Outcome::Refused(403)
    );
    assert_initial_decisions(&daemon, &switch, &caller, "next to a bad record");
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("skipping bad account record")
                && l.contains("broken")
                && l.contains("balance")),
        "bad record not logged with account and field:\n{log}"
    );

    assert!(
        daemon.wait_for_log("subscribed to push updates", 1, PUSH_WAIT),
        "no subscription:\n{}",
        daemon.log()
    );
    redis.hset("dave", &[("max_channels", "lots")]);
    redis.publish("dave");
    wait_for(
        &daemon,
        &switch,
        &caller,
        "dave",
        Outcome::Refused(403),
        PUSH_WAIT,
        "bad record by push",
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "alice"),
        Outcome::Admitted
    );
}

/// Started while Redis is down: no snapshot, so 503 (on_no_snapshot = "reject"); once Redis is
/// up with data, calls are decided normally.
#[test]
fn redis_down_at_start_answers_503_then_admits_once_redis_is_up() {
    let mut redis = RedisServer::reserve();
    let (daemon, switch, caller) = start_daemon("1s", &redis);
    assert_eq!(
        decide(&daemon, &switch, &caller, "alice"),
        Outcome::Refused(503)
    );
    assert_eq!(
        decide(&daemon, &switch, &caller, "bob"),
        Outcome::Refused(503)
    );

    redis.restart();
    redis.load_test_accounts();
    wait_for_initial_decisions(&daemon, &switch, &caller, "Redis came up");
}

// ---------------------------------------------------------------------------------------------
// Operator commands

/// A config file for the `accounts` commands (any valid daemon config pointing at `redis`).
pub(crate) fn cli_config(dir: &Path, redis: &RedisServer) -> PathBuf {
    let switch_addr = std::net::SocketAddr::new(SWITCH_IP, 5080);
    let cfg = test_config(5060, switch_addr, "60s").replacen(
        "source = \"file\"",
        &format!(
            "source = \"redis\"\nredis_url = \"{}\"\nkey_prefix = \"{PREFIX}\"",
            redis.url()
        ),
        1,
    );
    let path = dir.join("creditgate.toml");
    fs::write(&path, cfg).expect("write the config");
    path
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = p
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

/// `accounts import`: good rows land in Redis exactly; bad rows are reported with their line and
/// reason and write nothing; the summary counts both; the exit status says some were refused.
#[test]
fn accounts_import_writes_good_rows_and_reports_bad_ones_by_line() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = cli_config(dir.path(), &redis);
    let csv = dir.path().join("accounts.csv");
    fs::write(
        &csv,
        "id,balance,debit_limit,enabled,ips,currency\n\
         alice,25.0000,0,1,,EUR\n\
         carol,-42.17,100,1,\"10.0.0.1,10.9.0.0/16\",USD\n\
         broken,\"12,50\",0,1,,EUR\n\
         erin,3,0,maybe,,EUR\n\
         frank,1,0,1,10.0.0.999,EUR\n\
         alice,99,0,1,,EUR\n\
         short,1\n\
         grace,0.5,-0.25,0,,\n",
    )
    .expect("write the CSV");
    let cfg_s = cfg.to_str().expect("utf-8 path");
    let run = run_cli(
        &[
            "accounts",
            "import",
            csv.to_str().expect("utf-8 path"),
            "--config",
            cfg_s,
        ],
        Duration::from_secs(30),
    );
    let all = format!("{}\n{}", run.stdout, run.stderr);
    assert!(
        !run.status.success(),
        "refused rows must give a non-zero exit:\n{all}"
    );
    assert!(
        run.stdout.contains("3 written, 5 refused, 8 rows"),
        "summary:\n{all}"
    );
    for (line, id, reason) in [
        (4, "broken", "balance"),
        (5, "erin", "enabled"),
        (6, "frank", "ips"),
        (7, "alice", "duplicate id (first on line 2)"),
        (8, "short", "2 fields, the header has 6"),
    ] {
        assert!(
            run.stderr.lines().any(|l| l
                .starts_with(&format!("line {line}: account {id}: refused"))
                && l.contains(reason)),
            "line {line} ({id}, {reason}) not reported:\n{all}"
        );
    }
    assert_eq!(
        redis.hgetall("alice"),
        pairs(&[
            ("balance", "25.0000"),
            ("debit_limit", "0"),
            ("enabled", "1"),
            ("ips", ""),
            ("currency", "EUR")
        ])
    );
    assert_eq!(
        redis.hgetall("carol"),
        pairs(&[
            ("balance", "-42.17"),
            ("debit_limit", "100"),
            ("enabled", "1"),
            ("ips", "10.0.0.1,10.9.0.0/16"),
            ("currency", "USD")
        ])
    );
    assert_eq!(
        redis.hgetall("grace"),
        pairs(&[
            ("balance", "0.5"),
            ("debit_limit", "-0.25"),
            ("enabled", "0"),
            ("ips", ""),
            ("currency", "")
        ])
    );
    for id in ["broken", "erin", "frank", "short"] {
        assert_eq!(
            redis.cli(&["EXISTS", &format!("{PREFIX}account:{id}")]),
            "0",
            "{id} must not be written"
        );
    }

    // The shipped accounts file of the `file` source imports too, every field written.
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/accounts.toml");
    let run = run_cli(
        &["accounts", "import", shipped, "--config", cfg_s],
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("0 refused"), "{}", run.stdout);
    let alice = redis.hgetall("alice");
    for want in [
        ("balance", "25.00"),
        ("debit_limit", "0"),
        ("currency", "EUR"),
        ("enabled", "1"),
    ] {
        assert!(
            alice.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} in {alice:?}"
        );
    }

    // A header with an unknown column writes nothing at all.
    let typo = dir.path().join("typo.csv");
    fs::write(&typo, "id,balanse\nzed,1\n").expect("write the CSV");
    let run = run_cli(
        &[
            "accounts",
            "import",
            typo.to_str().expect("utf-8 path"),
            "--config",
            cfg_s,
        ],
        Duration::from_secs(30),
    );
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("unknown column \"balanse\""),
        "{}",
        run.stderr
    );
    assert_eq!(redis.cli(&["EXISTS", &format!("{PREFIX}account:zed")]), "0");
}

/// `accounts set` writes and publishes (a running daemon with a 60 s refresh applies it at
/// once), refuses an invalid value without writing; `show` and `list` print what is stored.
#[test]
fn accounts_set_show_list() {
    let redis = RedisServer::start();
    redis.load_test_accounts();
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = cli_config(dir.path(), &redis);
    let cfg_s = cfg.to_str().expect("utf-8 path");
    let (daemon, switch, caller) = start_daemon("60s", &redis);
    assert_eq!(
        decide(&daemon, &switch, &caller, "bob"),
        Outcome::Refused(402)
    );
    assert!(
        daemon.wait_for_log("subscribed to push updates", 1, PUSH_WAIT),
        "no subscription:\n{}",
        daemon.log()
    );

    let run = run_cli(
        &[
            "accounts",
            "set",
            "bob",
            "--balance",
            "12.50",
            "--debit-limit",
            "-2",
            "--config",
            cfg_s,
        ],
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("published"), "{}", run.stdout);
    let stored = redis.hgetall("bob");
    assert!(
        stored.contains(&("balance".into(), "12.50".into()))
            && stored.contains(&("debit_limit".into(), "-2".into())),
        "{stored:?}"
    );
    wait_for(
        &daemon,
        &switch,
        &caller,
        "bob",
        Outcome::Admitted,
        PUSH_WAIT,
        "accounts set + publish",
    );

    let run = run_cli(
        &[
            "accounts",
            "set",
            "bob",
            "--balance",
            "1e3",
            "--config",
            cfg_s,
        ],
        Duration::from_secs(30),
    );
    assert!(!run.status.success(), "an invalid balance must be refused");
    assert!(run.stderr.contains("balance"), "{}", run.stderr);
    assert!(
        redis
            .hgetall("bob")
            .contains(&("balance".into(), "12.50".into())),
        "nothing written"
    );

    let run = run_cli(
        &["accounts", "show", "carol", "--config", cfg_s],
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{}", run.stderr);
    assert!(
        run.stdout.contains("balance = \"-42.17\"")
            && run.stdout.contains("available credit 57.83"),
        "{}",
        run.stdout
    );
    let run = run_cli(
        &["accounts", "show", "nobody", "--config", cfg_s],
        Duration::from_secs(30),
    );
    assert!(!run.status.success(), "unknown account: non-zero exit");

    let run = run_cli(
        &["accounts", "list", "--config", cfg_s],
        Duration::from_secs(30),
    );
    assert!(run.status.success(), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("id\tbalance\tdebit_limit\tenabled")
    );
    assert!(lines.contains(&"bob\t12.50\t-2\t1"), "{}", run.stdout);
    assert!(lines.contains(&"mallory\t1000\t0\t0"), "{}", run.stdout);
    assert_eq!(lines.len(), 1 + REDIS_ACCOUNTS.len(), "{}", run.stdout);
}
