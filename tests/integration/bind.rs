//! One daemon per SIP address: the workers of one daemon share their port (`SO_REUSEPORT`), but a
//! second `creditgate run` on an address in use, or on one another program holds, must not
//! start (the kernel would split the traffic between two daemons with different keys).

use std::fs;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::harness::{run_cli, test_config, CliRun, Daemon, Switch, ACCOUNTS, DAEMON_IP};

/// Runs `creditgate run` on `config` (with the harness accounts) to completion.
fn run_second(config: &str) -> CliRun {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("creditgate.toml");
    fs::write(&path, config).unwrap();
    fs::write(dir.path().join("accounts.toml"), ACCOUNTS).unwrap();
    run_cli(
        &["run", "--config", path.to_str().unwrap()],
        Duration::from_secs(20),
    )
}

fn assert_refused_naming(r: &CliRun, addr: SocketAddr) {
    assert!(
        !r.status.success() && r.status.code().is_some(),
        "the second daemon should exit with an error; status {:?}\n{}",
        r.status,
        r.stderr
    );
    assert_ne!(r.status.code(), Some(2), "not a configuration fault");
    assert!(
        r.stderr.contains(&addr.to_string()),
        "the error should name {addr}:\n{}",
        r.stderr
    );
    // The cause appears once, not once per layer of the error.
    let in_use = "Address already in use";
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(&addr.to_string()))
        .unwrap_or_default();
    assert!(
        line.matches(in_use).count() <= 1,
        "the cause is repeated: {line}"
    );
}

#[test]
fn second_daemon_on_the_same_sip_address_does_not_start() {
    let switch = Switch::bind();
    let first = Daemon::start(&test_config(0, switch.addr(), "60s"), ACCOUNTS);
    let addr = first.sip_addr();
    let r = run_second(&test_config(addr.port(), switch.addr(), "60s"));
    assert_refused_naming(&r, addr);
    assert!(
        first.ping(Duration::from_secs(3)),
        "the first daemon stopped answering"
    );
    // One worker (no SO_REUSEPORT sibling in the second daemon) changes nothing.
    let r = run_second(
        &test_config(addr.port(), switch.addr(), "60s").replace("workers = 2", "workers = 1"),
    );
    assert_refused_naming(&r, addr);
}

#[test]
fn daemon_does_not_start_on_a_port_another_program_holds() {
    let switch = Switch::bind();
    let held = UdpSocket::bind(SocketAddr::new(DAEMON_IP, 0)).unwrap();
    let addr = held.local_addr().unwrap();
    let r = run_second(&test_config(addr.port(), switch.addr(), "60s"));
    assert_refused_naming(&r, addr);
}

/// A daemon on the wildcard address and one on a specific address of the same port would also
/// share traffic: refused too.
#[test]
fn specific_address_under_a_wildcard_daemon_does_not_start() {
    let switch = Switch::bind();
    let cfg = test_config(0, switch.addr(), "60s").replace("127.0.0.1:0", "0.0.0.0:0");
    let first = Daemon::start(&cfg, ACCOUNTS);
    let port = first.sip_addr().port();
    let r = run_second(&test_config(port, switch.addr(), "60s"));
    assert_refused_naming(&r, SocketAddr::new(DAEMON_IP, port));
}

/// An admin address in use stops the start with one line naming it, the cause said once
/// (`AdminError` prints its source and also returns it as `source()`).
#[test]
fn admin_address_in_use_is_named_with_its_cause_once() {
    let switch = Switch::bind();
    let held = std::net::TcpListener::bind(SocketAddr::new(DAEMON_IP, 0)).unwrap();
    let addr = held.local_addr().unwrap();
    let cfg = test_config(0, switch.addr(), "60s").replace(
        "[admin]\nlisten = \"\"",
        &format!("[admin]\nlisten = \"{addr}\""),
    );
    let r = run_second(&cfg);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains(&addr.to_string()))
        .unwrap_or_else(|| panic!("{addr} not named:\n{}", r.stderr));
    assert_eq!(
        line.matches("Address already in use").count(),
        1,
        "the cause should appear once: {line}"
    );
}
