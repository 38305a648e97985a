//! Scanners and password guessers (issue 9 item 15): a source the switch keeps answering
//! 401/407 is banned (nothing it sends is handled any more), the ban is listed and lifted
//! through the admin API behind its token, and it moves the metrics; a request with a known
//! scanner User-Agent is dropped outright.
//!
//! The fake switch answers `401 Unauthorized` to every REGISTER, as a registrar does to wrong
//! credentials (svcrack's guesses).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::harness::{
    http, metric, parse_metrics, response, status_code, test_config, text, unique, Caller, Daemon,
    Request, Switch, ACCOUNTS, DAEMON_IP, WAIT,
};

/// Failures before a ban in these tests.
const FAILURES: usize = 5;
const TOKEN: &str = "ban-test-admin-token";

/// A daemon with the admin API on `admin` behind [`TOKEN`] and `abuse` appended.
fn start(switch: &Switch, abuse: &str) -> (Daemon, SocketAddr, tempfile::TempDir) {
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let config = test_config(0, switch.addr(), "60s").replace(
        "[admin]\nlisten = \"\"",
        &format!(
            "[admin]\nlisten = \"{DAEMON_IP}:0\"\ntoken_file = \"{}\"",
            token_file.display()
        ),
    );
    let config = format!("{config}\n[abuse]\n{abuse}\n");
    let daemon = Daemon::start(&config, ACCOUNTS);
    let admin = daemon.admin_addr();
    (daemon, admin, token_dir)
}

fn scrape(admin: SocketAddr) -> prometheus_parse::Scrape {
    let r = http("GET", admin, "/metrics", Some(TOKEN));
    assert_eq!(r.status, 200, "{}", r.body);
    parse_metrics(&r.body)
}

/// Polls `/metrics` until `name` reaches `at_least`; false after [`WAIT`].
fn wait_metric(admin: SocketAddr, name: &str, at_least: f64) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if metric(&scrape(admin), name, &[]) >= at_least {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One REGISTER from `caller`; the switch, if it gets it, answers 401. Returns whether the
/// switch got it (and then the 401 came back to the caller).
fn register(daemon: &Daemon, caller: &Caller, switch: &Switch) -> bool {
    let to = daemon.sip_addr();
    let reg = Request::new(
        "REGISTER",
        &format!("sip:{}", switch.addr()),
        caller.addr(),
        &format!("reg-{}", unique()),
        "alice",
    )
    .with_to_user("alice")
    .build();
    caller.send(&reg, to);
    let Some((fwd, from)) = switch.recv_timeout(Duration::from_millis(300)) else {
        return false;
    };
    let challenge = response(
        &fwd,
        401,
        "Unauthorized",
        Some("sw"),
        &[("WWW-Authenticate", "Digest realm=\"sw\", nonce=\"abc\"")],
    );
    switch.send(&challenge, from);
    let (got, _) = caller.recv_or_fail(WAIT, "the 401 relayed to the caller");
    assert_eq!(status_code(&got), Some(401), "{}", text(&got));
    true
}

#[test]
fn auth_failures_ban_the_source_until_lifted() {
    let switch = Switch::bind();
    let (mut daemon, admin, _token) = start(
        &switch,
        &format!("ban_after_auth_failures = {FAILURES}\nban_window = \"10m\"\nban_time = \"1h\""),
    );
    let caller = Caller::bind();
    for i in 0..FAILURES {
        if !register(&daemon, &caller, &switch) {
            daemon.fail(&format!(
                "REGISTER {i} did not reach the switch before any ban"
            ));
        }
    }
    let m = scrape(admin);
    assert_eq!(metric(&m, "creditgate_bans_issued_total", &[]), 1.0);
    assert_eq!(metric(&m, "creditgate_bans_active", &[]), 1.0);

    // Banned: the next REGISTER is dropped on arrival and counted.
    let before = metric(&m, "creditgate_ban_drops_total", &[]);
    let reg = Request::new(
        "REGISTER",
        &format!("sip:{}", switch.addr()),
        caller.addr(),
        &format!("reg-{}", unique()),
        "alice",
    )
    .build();
    caller.send(&reg, daemon.sip_addr());
    if !wait_metric(admin, "creditgate_ban_drops_total", before + 1.0) {
        daemon.fail("the banned source's REGISTER was not counted as dropped");
    }
    assert!(switch.recv_timeout(Duration::from_millis(1)).is_none());
    assert!(caller.recv_timeout(Duration::from_millis(1)).is_none());

    // Listed behind the token.
    assert_eq!(http("GET", admin, "/bans", None).status, 401);
    let list = http("GET", admin, "/bans", Some(TOKEN));
    assert_eq!(list.status, 200, "{}", list.body);
    let bans = list.json();
    let bans = bans["bans"].as_array().unwrap();
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["address"], "127.0.0.1");
    assert_eq!(bans[0]["failures"], FAILURES);
    assert!(bans[0]["expires_in_s"].as_u64().unwrap() > 3000, "{bans:?}");

    // Lifted: the source is served again.
    assert_eq!(http("DELETE", admin, "/bans/127.0.0.1", None).status, 401);
    assert_eq!(
        http("DELETE", admin, "/bans/127.0.0.2", Some(TOKEN)).status,
        404
    );
    assert_eq!(
        http("DELETE", admin, "/bans/not-an-ip", Some(TOKEN)).status,
        400
    );
    let lifted = http("DELETE", admin, "/bans/127.0.0.1", Some(TOKEN));
    assert_eq!(lifted.status, 200, "{}", lifted.body);
    assert_eq!(metric(&scrape(admin), "creditgate_bans_active", &[]), 0.0);
    if !register(&daemon, &caller, &switch) {
        daemon.fail("the REGISTER after the ban was lifted did not reach the switch");
    }
    let list = http("GET", admin, "/bans", Some(TOKEN)).json();
    assert_eq!(list["bans"].as_array().unwrap().len(), 0, "{list}");
}

/// A 2xx to a REGISTER (the credentials were right) clears the failures: a PBX whose every
/// registration and call is first challenged is never banned.
#[test]
fn challenges_followed_by_success_never_ban() {
    let switch = Switch::bind();
    let (mut daemon, admin, _token) = start(
        &switch,
        &format!("ban_after_auth_failures = {FAILURES}\nban_window = \"10m\""),
    );
    let caller = Caller::bind();
    for round in 0..3 * FAILURES {
        if !register(&daemon, &caller, &switch) {
            daemon.fail(&format!("REGISTER {round} was dropped: the PBX was banned"));
        }
        // The retry with credentials: 200.
        let reg = Request::new(
            "REGISTER",
            &format!("sip:{}", switch.addr()),
            caller.addr(),
            &format!("reg-ok-{}", unique()),
            "alice",
        )
        .with_header(
            "Authorization",
            "Digest username=\"alice\", response=\"ok\"",
        )
        .build();
        caller.send(&reg, daemon.sip_addr());
        let (fwd, from) = switch.recv_or_fail(WAIT, "the authenticated REGISTER");
        switch.send(&response(&fwd, 200, "OK", Some("sw"), &[]), from);
        let (ok, _) = caller.recv_or_fail(WAIT, "the 200 to the REGISTER");
        assert_eq!(status_code(&ok), Some(200));
    }
    assert_eq!(
        metric(&scrape(admin), "creditgate_bans_issued_total", &[]),
        0.0
    );
}

/// Known scanner User-Agents are dropped outright (no reply, nothing forwarded), counted as
/// `creditgate_drops_total{reason="scanner"}`; other User-Agents pass.
#[test]
fn scanner_user_agents_are_dropped() {
    let switch = Switch::bind();
    let (mut daemon, admin, _token) = start(&switch, "");
    let caller = Caller::bind();
    let to = daemon.sip_addr();
    for (i, ua) in ["friendly-scanner", "SIPVicious 0.3.4", "sipcli/v1.8"]
        .iter()
        .enumerate()
    {
        let invite = Request::invite(caller.addr(), to, &format!("scan-{}", unique()), "nobody")
            .with_header("User-Agent", ua)
            .build();
        caller.send(&invite, to);
        let deadline = Instant::now() + WAIT;
        loop {
            let m = scrape(admin);
            if metric(&m, "creditgate_drops_total", &[("reason", "scanner")]) >= (i + 1) as f64 {
                break;
            }
            if Instant::now() >= deadline {
                daemon.fail(&format!(
                    "the INVITE of {ua:?} was not dropped as a scanner"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            caller.recv_timeout(Duration::from_millis(1)).is_none(),
            "{ua}: answered"
        );
        assert!(switch.recv_timeout(Duration::from_millis(1)).is_none());
    }
    // A real phone's User-Agent: refused as usual (nobody is no account).
    let invite = Request::invite(caller.addr(), to, &format!("ua-{}", unique()), "nobody")
        .with_header("User-Agent", "Yealink SIP-T46S 66.86.0.15")
        .build();
    caller.send(&invite, to);
    let (reply, _) = caller.recv_or_fail(WAIT, "the refusal of a normal UA");
    assert_eq!(status_code(&reply), Some(403));
}

/// With `drop_scanners = false` a scanner's User-Agent is served like any other.
#[test]
fn scanner_drop_can_be_turned_off() {
    let switch = Switch::bind();
    let (daemon, _admin, _token) = start(&switch, "drop_scanners = false");
    let caller = Caller::bind();
    let to = daemon.sip_addr();
    let invite = Request::invite(caller.addr(), to, &format!("scan-{}", unique()), "nobody")
        .with_header("User-Agent", "friendly-scanner")
        .build();
    caller.send(&invite, to);
    let (reply, _) = caller.recv_or_fail(WAIT, "the refusal of the scanner");
    assert_eq!(status_code(&reply), Some(403));
}

/// A source in `[sip] trusted` (here the caller's own address) collects any number of 401s and
/// is never banned.
#[test]
fn trusted_sources_are_never_banned() {
    let switch = Switch::bind();
    let (mut daemon, admin, _token) = {
        let token_dir = tempfile::tempdir().unwrap();
        let token_file = token_dir.path().join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let config = test_config(0, switch.addr(), "60s")
            .replace(
                "[admin]\nlisten = \"\"",
                &format!(
                    "[admin]\nlisten = \"{DAEMON_IP}:0\"\ntoken_file = \"{}\"",
                    token_file.display()
                ),
            )
            .replace("workers = 2\n", "workers = 2\ntrusted = [\"127.0.0.1\"]\n");
        let config = format!("{config}\n[abuse]\nban_after_auth_failures = {FAILURES}\n");
        let daemon = Daemon::start(&config, ACCOUNTS);
        let admin = daemon.admin_addr();
        (daemon, admin, token_dir)
    };
    let caller = Caller::bind();
    for i in 0..3 * FAILURES {
        if !register(&daemon, &caller, &switch) {
            daemon.fail(&format!("REGISTER {i} of the trusted source was dropped"));
        }
    }
    let m = scrape(admin);
    assert_eq!(metric(&m, "creditgate_bans_issued_total", &[]), 0.0);
    assert_eq!(metric(&m, "creditgate_bans_active", &[]), 0.0);
}
