//! Logs cannot be used against the daemon (issue 9 item 6, SPEC section 6 "Values from the
//! network"): a header value from the network is logged as a short escaped prefix, refusal log
//! lines are rate-limited with a counter of what was suppressed, and a log reader that stops
//! reading (a stalled journal) never stalls the packet workers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    config_with_admin, metric, scrape, status_code, test_config, text, unique, Caller, Daemon,
    Request, Switch, ACCOUNTS, BIN, WAIT,
};

/// The longest log line a refusal may produce, whatever the request carried: the fields creditgate
/// writes itself plus short prefixes of the values from the network.
const MAX_LINE: usize = 1_000;

/// A 60,000-byte Call-ID refused as unknown_account gives one short log line: the Call-ID is
/// quoted as an escaped prefix, never whole (a Call-ID may hold `"` and `\`, RFC 3261 `word`:
/// they come out escaped, so a value cannot fake the end of a field).
#[test]
fn huge_call_id_gives_a_short_log_line() {
    let switch = Switch::bind();
    let mut daemon = Daemon::start(&test_config(0, switch.addr(), "60s"), ACCOUNTS);
    let caller = Caller::bind();
    let marker = unique();
    let call_id = format!("{marker}\"q\\{}", "x".repeat(60_000));
    let invite = Request::invite(caller.addr(), daemon.sip_addr(), &call_id, "nobody").build();
    assert!(invite.len() > 60_000 && invite.len() < 65_000);
    caller.send(&invite, daemon.sip_addr());
    let (reply, _) = caller.recv_or_fail(WAIT, "the refusal of the unknown caller");
    assert_eq!(status_code(&reply), Some(403), "{}", text(&reply));
    if !daemon.wait_for_log(&marker, 1, WAIT) {
        daemon.fail("no log line quotes the refused Call-ID");
    }
    let log = daemon.log();
    let line = log.lines().find(|l| l.contains(&marker)).unwrap();
    assert!(
        line.len() <= MAX_LINE,
        "a {}-byte log line for one refusal: {}...",
        line.len(),
        &line[..200]
    );
    assert!(line.contains("refused"), "{line}");
    assert!(
        line.contains(&format!("{marker}\\\"q\\\\x")),
        "the quote and backslash of the Call-ID are not shown escaped: {line}"
    );
}

/// A burst of refusals gives at most `[log] refusal_lines_per_second` lines per second; every
/// refusal is either logged or counted in `creditgate_log_lines_suppressed_total`, and each is
/// still counted as a refusal.
#[test]
fn refusal_burst_is_rate_limited_and_counted() {
    const BURST: usize = 300;
    const PER_SECOND: usize = 5;
    let switch = Switch::bind();
    let config = config_with_admin("60s", switch.addr());
    let config = config.replace(
        "[log]\nlevel = \"info\"",
        &format!("[log]\nlevel = \"info\"\nrefusal_lines_per_second = {PER_SECOND}"),
    );
    let mut daemon = Daemon::start(&config, ACCOUNTS);
    let admin = daemon.admin_addr();
    let caller = Caller::bind();
    let to = daemon.sip_addr();
    let marker = unique();
    let started = Instant::now();
    for i in 0..BURST {
        // bob has no credit: 402 insufficient_credit.
        let call_id = format!("burst-{marker}-{i}");
        caller.send(
            &Request::invite(caller.addr(), to, &call_id, "bob").build(),
            to,
        );
        let (reply, _) = caller.recv_or_fail(WAIT, "a refusal of the burst");
        assert_eq!(status_code(&reply), Some(402), "{}", text(&reply));
    }
    // Every refusal has been handled (its reply came back): the windows the burst touched are
    // at most the whole seconds it lasted, plus the one it started in and the one it ended in.
    let windows = started.elapsed().as_secs() as usize + 2;
    let m = scrape(admin);
    let suppressed = metric(&m, "creditgate_log_lines_suppressed_total", &[]) as usize;
    let refused = metric(
        &m,
        "creditgate_refusals_total",
        &[("cause", "insufficient_credit")],
    ) as usize;
    assert_eq!(refused, BURST);
    assert!(suppressed > 0, "no refusal log line was suppressed");
    let logged = BURST - suppressed;
    if !daemon.wait_for_log(&format!("burst-{marker}-"), logged, WAIT) {
        daemon.fail(&format!(
            "{logged} refusal lines expected ({suppressed} suppressed)"
        ));
    }
    let lines = daemon.log().matches(&format!("burst-{marker}-")).count();
    assert_eq!(lines, logged, "logged + suppressed != refusals");
    assert!(
        lines <= PER_SECOND * windows,
        "{lines} refusal lines in at most {windows} one-second windows"
    );
}

/// A log reader that stops reading (stderr a pipe nobody drains, like a stalled journal) does
/// not stall the packet workers: with every admission logged at debug, thousands of calls still
/// reach the switch after the pipe is full (the lossy writer drops lines instead).
#[test]
fn stalled_log_reader_does_not_stall_packets() {
    const CALLS: usize = 3_000;
    const BATCH: usize = 100;
    let switch = Switch::bind();
    let dir = tempfile::tempdir().unwrap();
    // The one caller sends far above a customer's rate: the flood guard would drop some of its
    // INVITEs, and this test is about the log writer.
    let config = test_config(0, switch.addr(), "60s")
        .replace("[log]\nlevel = \"info\"", "[log]\nlevel = \"debug\"")
        .replace("workers = 2\n", "workers = 2\nsource_pps_limit = 0\n");
    std::fs::write(dir.path().join("creditgate.toml"), config).unwrap();
    std::fs::write(dir.path().join("accounts.toml"), ACCOUNTS).unwrap();
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(dir.path().join("creditgate.toml"))
        .current_dir(dir.path())
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read the log only until the SIP address shows, then never again: the pipe (64 KiB) fills.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut sip: Option<SocketAddr> = None;
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sip.is_none() && Instant::now() < deadline {
        line.clear();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.contains("creditgate running") {
            break;
        }
        if line.contains("listening") {
            sip = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bound="))
                .and_then(|a| a.parse().ok());
        }
    }
    let Some(sip) = sip else {
        let _ = child.kill();
        panic!("no `listening bound=` line from the daemon");
    };
    let caller = Caller::bind();
    let mut forwarded = 0;
    let mut stalled = false;
    for batch in 0..CALLS / BATCH {
        for i in 0..BATCH {
            let call_id = format!("stall-{batch}-{i}-{}", unique());
            let invite = Request::invite(caller.addr(), sip, &call_id, "alice").build();
            caller.send(&invite, sip);
        }
        for _ in 0..BATCH {
            if switch.recv_timeout(WAIT).is_none() {
                stalled = true;
                break;
            }
            forwarded += 1;
        }
        if stalled {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(stderr);
    assert!(
        !stalled,
        "the switch stopped receiving after {forwarded} of {CALLS} calls: a full log pipe stalls the workers"
    );
    assert_eq!(forwarded, CALLS);
}
