//! Reusable helpers for the integration tests: spawn the real `creditgate` binary on a temp
//! config, and talk SIP to it over UDP from a fake caller and a fake switch.
//!
//! Boundary: this module knows the daemon only from the outside (its command line, its config
//! file, its log on stderr and its SIP socket). Nothing here links against the library crate.
//!
//! # Addresses
//!
//! creditgate recognises an upstream by its IP address alone (SPEC section 6), so the two sides
//! must not share an IP:
//!
//! * the daemon listens on [`DAEMON_IP`] (127.0.0.1),
//! * callers ([`Caller`]) send from [`CALLER_IP`] (127.0.0.1),
//! * the fake switch ([`Switch`], or a SIPp UAS) listens on [`SWITCH_IP`] (127.0.0.2).
//!
//! All traffic stays on loopback; every wait is bounded (see [`WAIT`], [`QUIET`]).
//!
//! # Typical use
//!
//! ```ignore
//! let switch = Switch::bind();
//! let daemon = Daemon::start(&test_config(0, switch.addr(), "60s"), ACCOUNTS);
//! let caller = Caller::bind();
//! let invite = Request::invite(caller.addr(), daemon.sip_addr(), &new_call_id(), "alice");
//! caller.send(&invite.build(), daemon.sip_addr());
//! let (fwd, from) = switch.recv_or_fail(WAIT, "the INVITE at the switch");
//! switch.send(&response(&fwd, 200, "OK", Some("sw1"), &[]), from);
//! let (ok, _) = caller.recv_or_fail(WAIT, "the 200 at the caller");
//! assert_eq!(status_code(&ok), Some(200));
//! ```
//!
//! A [`Daemon`] is killed when dropped; if the test is panicking at that moment, the daemon's
//! log is printed to stderr (the test harness shows it with the failure).

#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_parse::{Scrape, Value};
use serde_json::Value as Json;
use tempfile::TempDir;

/// The path of the daemon binary Cargo built for this test target.
pub const BIN: &str = env!("CARGO_BIN_EXE_creditgate");

/// The IP the daemon listens on in [`test_config`].
pub const DAEMON_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// The IP callers send from (must differ from [`SWITCH_IP`]: upstreams are recognised by IP).
pub const CALLER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// The IP the fake switch (or a SIPp UAS) listens on.
pub const SWITCH_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The fixed HMAC key of [`test_config`] (tokens and branches are stable across restarts).
pub const SECRET: &str = "integration-test-secret-0123456789";

/// How long to wait for a message that must arrive. Generous: a debug build under a parallel
/// test run on a loaded CI machine still answers in milliseconds, so this only bounds failures.
pub const WAIT: Duration = Duration::from_secs(3);
/// How long to listen before concluding that nothing was sent. The daemon forwards or replies
/// within microseconds; half a second leaves ample margin without slowing the suite much.
pub const QUIET: Duration = Duration::from_millis(500);
/// Upper bound for the daemon to start answering its SIP port. It only bounds failures (a
/// healthy daemon answers as soon as its first snapshot attempt is done): a first load of
/// 20,000 Redis accounts by a debug build on a loaded 2-core machine once took over 10 s.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Accounts for the tests, in the `file` source format (SPEC section 4):
///
/// | id        | balance | debit_limit | note                          |
/// |-----------|---------|-------------|-------------------------------|
/// | `alice`   | 25.00   | 0           | pre-pay with credit: admitted |
/// | `bob`     | 0.00    | 0           | pre-pay, empty: 402           |
/// | `carol`   | -42.17  | 100         | post-pay with credit          |
/// | `dave`    | 7.50    | -5          | pre-pay with buffer, admitted |
/// | `mallory` | 1000    | 0           | disabled: 403                 |
///
/// Identification falls through to `from_user`: no account lists 127.0.0.1 in `ips`.
pub const ACCOUNTS: &str = r#"
[[account]]
id = "alice"
balance = "25.00"
debit_limit = "0"
currency = "EUR"

[[account]]
id = "bob"
balance = "0.00"
debit_limit = "0"
currency = "EUR"

[[account]]
id = "carol"
balance = "-42.17"
debit_limit = "100"
currency = "USD"

[[account]]
id = "dave"
balance = "7.50"
debit_limit = "-5"
currency = "EUR"

[[account]]
id = "mallory"
balance = "1000"
debit_limit = "0"
enabled = false
"#;

/// [`ACCOUNTS`] with the balance of account `id` replaced by `balance` (a decimal string).
/// Keeps the account count unchanged, so a refresh is never held back by `max_shrink`.
/// Panics if `id` is not in [`ACCOUNTS`].
pub fn accounts_with_balance(id: &str, balance: &str) -> String {
    let mut out = String::new();
    let mut in_target = false;
    let mut replaced = false;
    for line in ACCOUNTS.lines() {
        if line.starts_with("[[account]]") {
            in_target = false;
        }
        if line.trim() == format!("id = \"{id}\"") {
            in_target = true;
        }
        if in_target && line.starts_with("balance = ") {
            out.push_str(&format!("balance = \"{balance}\"\n"));
            replaced = true;
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(replaced, "account {id:?} is not in harness::ACCOUNTS");
    out
}

// ---------------------------------------------------------------------------------------------
// Ports
//
// No test picks a port it does not hold: the daemon binds port 0 for SIP and the admin API and
// logs what it bound ([`Daemon::sip_addr`], [`Daemon::sip_addrs`], [`Daemon::admin_addr`] read
// it back); callers and fake switches bind port 0 themselves ([`Endpoint::bind`]); a SIPp UAS
// finds its port by binding it and the test reads it back (`sipp.rs`); `redis-server` listens on
// a Unix socket (`redis.rs`). A port chosen by a test and bound later by another process could be
// taken in between by a parallel test (nextest runs each test in a process of its own).

// ---------------------------------------------------------------------------------------------
// Configuration

/// A complete daemon config for the tests:
///
/// * `[sip] listen = ["127.0.0.1:{listen_port}"]`: pass 0 ([`Daemon::start`] then reads the
///   bound port from the daemon's "listening" log line), `upstream = [upstream]`,
///   `workers = 2`, `secret = SECRET`;
/// * `[credit] source = "file"`, `file = "accounts.toml"` (written next to the config by
///   [`Daemon::start`]), `refresh_interval = refresh_interval` (e.g. `"1s"`, `"60s"`);
/// * `[admin] listen = ""` (admin API off), `[log] level = "info"`.
///
/// Every other key takes its default. Append more tables or keys with string operations when
/// a test needs them (e.g. `cfg.replace("workers = 2", "workers = 1")`).
pub fn test_config(listen_port: u16, upstream: SocketAddr, refresh_interval: &str) -> String {
    format!(
        r#"# creditgate integration test config
[sip]
listen = ["{DAEMON_IP}:{listen_port}"]
upstream = ["{upstream}"]
workers = 2
secret = "{SECRET}"

[credit]
source = "file"
file = "accounts.toml"
refresh_interval = "{refresh_interval}"

[admin]
listen = ""

[log]
level = "info"
"#
    )
}

// ---------------------------------------------------------------------------------------------
// The daemon

/// A running `creditgate run --config FILE` process in its own temp directory.
///
/// The directory holds `creditgate.toml` (the config text), `accounts.toml` (the accounts text),
/// `daemon.log` (the daemon's stderr, i.e. its tracing log) and `stdout.log`. The process is
/// killed on drop; the log is printed to stderr when the drop happens during a panic.
pub struct Daemon {
    dir: TempDir,
    child: Option<Child>,
    sip_addr: SocketAddr,
    /// Every listen address, bound (port 0 resolved), in `[sip] listen` order.
    sip_addrs: Vec<SocketAddr>,
}

impl Daemon {
    /// Writes `config` to `creditgate.toml` and `accounts` to `accounts.toml` in a fresh temp
    /// directory, spawns the daemon with `run --config`, and waits (at most
    /// [`STARTUP_TIMEOUT`]) until it answers an `OPTIONS sip:ADDR` ping with 200. The SIP
    /// address is the first `[sip] listen` entry of `config` (0.0.0.0 is contacted as
    /// 127.0.0.1; port 0 is resolved from the log line `listening bound=...`).
    ///
    /// Panics, printing the daemon log, if the process exits or never answers.
    pub fn start(config: &str, accounts: &str) -> Daemon {
        Daemon::start_wrapped(config, accounts, &[])
    }

    /// [`Daemon::start`] with the binary run through `wrapper` (a command and its arguments,
    /// e.g. `["setpriv", "--bounding-set=-sys_nice", "--"]`), which must exec its last argument
    /// list; [`Daemon::pid`] is then the wrapper's pid, which is the daemon's after the exec.
    pub fn start_wrapped(config: &str, accounts: &str, wrapper: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("creditgate-it-")
            .tempdir()
            .expect("create a temp dir");
        fs::write(dir.path().join("creditgate.toml"), config).expect("write the config");
        fs::write(dir.path().join("accounts.toml"), accounts).expect("write the accounts");
        let configured = configured_listen(config);
        let first = *configured.first().expect("a listen address");
        let log = fs::File::create(dir.path().join("daemon.log")).expect("create daemon.log");
        let out = fs::File::create(dir.path().join("stdout.log")).expect("create stdout.log");
        let mut command = match wrapper.split_first() {
            None => Command::new(BIN),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
        };
        let child = command
            .arg("run")
            .arg("--config")
            .arg(dir.path().join("creditgate.toml"))
            .current_dir(dir.path())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(log)
            .spawn()
            .expect("spawn the creditgate binary");
        let mut d = Daemon {
            dir,
            child: Some(child),
            sip_addr: first,
            sip_addrs: configured,
        };
        d.wait_ready();
        d
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let probe = UdpSocket::bind(SocketAddr::new(CALLER_IP, 0)).expect("bind the probe socket");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.fail(&format!("the daemon exited during startup ({status})"));
            }
            if self.sip_addrs.iter().any(|a| a.port() == 0) {
                let bound = bound_from_log(&self.log());
                if bound.len() >= self.sip_addrs.len() {
                    self.sip_addrs = bound;
                    self.sip_addr = self.sip_addrs[0];
                }
            }
            if self.sip_addr.port() != 0
                && ping_once(&probe, self.sip_addr, Duration::from_millis(200))
            {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "the daemon did not answer an OPTIONS ping on {} within {STARTUP_TIMEOUT:?}",
                    self.sip_addr
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics with `msg` and the daemon log (the log is printed once, here, not again on drop).
    pub fn fail(&mut self, msg: &str) -> ! {
        self.kill();
        let log = self.log();
        // Avoid printing the log twice: Drop prints it only while panicking with a live child.
        panic!(
            "{msg}\n----- daemon log ({}) -----\n{log}\n----- end of daemon log -----",
            self.log_path().display()
        )
    }

    /// The address callers send SIP to (the daemon's first listen socket).
    pub fn sip_addr(&self) -> SocketAddr {
        self.sip_addr
    }

    /// Every listen socket's address, in `[sip] listen` order (0.0.0.0 / :: as loopback).
    pub fn sip_addrs(&self) -> &[SocketAddr] {
        &self.sip_addrs
    }

    /// The admin API's bound address, from the daemon's `admin API listening addr=...` log line
    /// (waits for it at most [`STARTUP_TIMEOUT`]; panics with the log if it never comes).
    pub fn admin_addr(&self) -> SocketAddr {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let log = self.log();
            let found = log
                .lines()
                .find_map(|l| log_field(l, "admin API listening", "addr"));
            if let Some(a) = found {
                return contactable(a);
            }
            assert!(
                Instant::now() < deadline,
                "no `admin API listening addr=` line in the daemon log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The temp directory holding the config, accounts and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `creditgate.toml` in [`Daemon::dir`].
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("creditgate.toml")
    }

    /// `accounts.toml` in [`Daemon::dir`] (the `file` credit source).
    pub fn accounts_path(&self) -> PathBuf {
        self.dir.path().join("accounts.toml")
    }

    /// `daemon.log` in [`Daemon::dir`]: the daemon's stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// The daemon's log so far, with any ANSI colour codes removed.
    pub fn log(&self) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &fs::read(self.log_path()).unwrap_or_default(),
        ))
    }

    /// Replaces the accounts file atomically (write a sibling file, then rename), so the
    /// refresh task never reads half a file. The daemon picks it up at its next refresh
    /// (`refresh_interval`); sleep past that, or check with a request, before relying on it.
    pub fn rewrite_accounts(&self, accounts: &str) {
        let tmp = self.dir.path().join("accounts.toml.tmp");
        fs::write(&tmp, accounts).expect("write the new accounts");
        fs::rename(&tmp, self.accounts_path()).expect("rename the new accounts into place");
    }

    /// Sends one `OPTIONS sip:ADDR` from a fresh caller socket; true if a 200 came back
    /// within `timeout`.
    pub fn ping(&self, timeout: Duration) -> bool {
        let probe = UdpSocket::bind(SocketAddr::new(CALLER_IP, 0)).expect("bind the probe socket");
        ping_once(&probe, self.sip_addr, timeout)
    }

    /// Polls the log until `needle` occurs at least `count` times; false after `timeout`.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().matches(needle).count() >= count {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The process id, e.g. to send it a signal with `kill -HUP`.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the process (SIGKILL) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let had_child = self.child.is_some();
        self.kill();
        if had_child && std::thread::panicking() {
            eprintln!(
                "----- daemon log ({}) -----\n{}\n----- end of daemon log -----",
                self.log_path().display(),
                self.log()
            );
        }
    }
}

/// The `[sip] listen` addresses of a config text (0.0.0.0 / :: mapped to loopback).
fn configured_listen(config: &str) -> Vec<SocketAddr> {
    let table: toml::Table = config
        .parse()
        .unwrap_or_else(|e| panic!("the test config is not TOML: {e}\n{config}"));
    let listen = table
        .get("sip")
        .and_then(|s| s.get("listen"))
        .and_then(|l| l.as_array())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| panic!("the test config has no [sip] listen entry:\n{config}"));
    listen
        .iter()
        .map(|v| {
            let text = v.as_str().expect("a listen string");
            let a: SocketAddr = text
                .parse()
                .unwrap_or_else(|e| panic!("[sip] listen {text:?}: {e}"));
            contactable(a)
        })
        .collect()
}

/// The addresses of the daemon's "listening bound=ADDR" log lines, in order.
fn bound_from_log(log: &str) -> Vec<SocketAddr> {
    log.lines()
        .filter_map(|l| log_field(l, "listening", "bound"))
        .map(contactable)
        .collect()
}

/// The address in field `field` of a log line whose message is `message`, in the text format
/// (`... MESSAGE field=ADDR ...`) or the JSON one (`{"message":"MESSAGE","field":"ADDR",...}`).
fn log_field(line: &str, message: &str, field: &str) -> Option<SocketAddr> {
    if line.starts_with('{') {
        let j: Json = serde_json::from_str(line).ok()?;
        if j["message"] != message {
            return None;
        }
        return j[field].as_str()?.parse().ok();
    }
    if !line.contains(&format!(" {message} ")) && !line.ends_with(&format!(" {message}")) {
        return None;
    }
    let key = format!("{field}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key.as_str()))
        .and_then(|a| a.parse().ok())
}

/// `a` with an unspecified IP (0.0.0.0, ::) replaced by the loopback address of its family.
fn contactable(mut a: SocketAddr) -> SocketAddr {
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            DAEMON_IP
        } else {
            IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    a
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c2 in chars.by_ref() {
                if c2.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn ping_once(probe: &UdpSocket, to: SocketAddr, timeout: Duration) -> bool {
    let local = probe.local_addr().expect("local_addr");
    let ping = Request::new(
        "OPTIONS",
        &format!("sip:{to}"),
        local,
        &new_call_id(),
        "ping",
    )
    .with_to_user("")
    .build();
    if probe.send_to(&ping, to).is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    while let Some((msg, from)) = recv_until(probe, deadline) {
        if from == to && status_code(&msg) == Some(200) {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Running the binary as a command-line tool

/// What a finished command-line run of the binary produced.
#[derive(Debug)]
pub struct CliRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `creditgate ARGS...` to completion (stdout/stderr captured via temp files, so output of
/// any size is safe) and returns its status and output. Panics, killing it, if it has not
/// exited after `timeout` (e.g. `run` that started serving instead of refusing its config).
pub fn run_cli(args: &[&str], timeout: Duration) -> CliRun {
    let dir = tempfile::Builder::new()
        .prefix("creditgate-cli-")
        .tempdir()
        .expect("create a temp dir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("create stdout file"))
        .stderr(fs::File::create(&err_path).expect("create stderr file"))
        .spawn()
        .expect("spawn the creditgate binary");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = strip_ansi(&fs::read_to_string(&err_path).unwrap_or_default());
            panic!(
                "`creditgate {}` still running after {timeout:?}; killed. stderr:\n{stderr}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    CliRun {
        status,
        stdout: strip_ansi(&fs::read_to_string(&out_path).unwrap_or_default()),
        stderr: strip_ansi(&fs::read_to_string(&err_path).unwrap_or_default()),
    }
}

// ---------------------------------------------------------------------------------------------
// UDP endpoints

/// A blocking UDP socket speaking raw SIP bytes. Use it through [`Caller`] or [`Switch`].
pub struct Endpoint {
    sock: UdpSocket,
    addr: SocketAddr,
}

impl Endpoint {
    /// Binds `ip:0`.
    pub fn bind(ip: IpAddr) -> Endpoint {
        let sock =
            UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
        let addr = sock.local_addr().expect("local_addr");
        Endpoint { sock, addr }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one datagram.
    pub fn send(&self, msg: &[u8], to: SocketAddr) {
        self.sock
            .send_to(msg, to)
            .unwrap_or_else(|e| panic!("send from {} to {to}: {e}", self.addr));
    }

    /// The next datagram and its source, or `None` after `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        recv_until(&self.sock, Instant::now() + timeout)
    }

    /// The next datagram, or a panic naming `what` after `timeout`.
    pub fn recv_or_fail(&self, timeout: Duration, what: &str) -> (Vec<u8>, SocketAddr) {
        self.recv_timeout(timeout).unwrap_or_else(|| {
            panic!(
                "{}: nothing received within {timeout:?} (expected {what})",
                self.addr
            )
        })
    }

    /// The next datagram for which `keep` is true, discarding others (e.g. skip a `100
    /// Trying`); `None` after `timeout`. Prefer [`Endpoint::recv_timeout`] where every datagram
    /// matters: this one hides unexpected traffic.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        keep: impl Fn(&[u8]) -> bool,
    ) -> Option<(Vec<u8>, SocketAddr)> {
        let deadline = Instant::now() + timeout;
        while let Some((m, from)) = recv_until(&self.sock, deadline) {
            if keep(&m) {
                return Some((m, from));
            }
        }
        None
    }

    /// Panics if any datagram arrives within `timeout` (shows what arrived).
    pub fn expect_nothing(&self, timeout: Duration) {
        if let Some((m, from)) = self.recv_timeout(timeout) {
            panic!(
                "{}: expected nothing, got from {from}:\n{}",
                self.addr,
                text(&m)
            );
        }
    }

    /// Discards whatever is queued now (non-blocking drain).
    pub fn drain(&self) {
        while self.recv_timeout(Duration::from_millis(1)).is_some() {}
    }
}

fn recv_until(sock: &UdpSocket, deadline: Instant) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = vec![0u8; 65_535];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        let left = (deadline - now).max(Duration::from_millis(1));
        sock.set_read_timeout(Some(left)).expect("set_read_timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                buf.truncate(n);
                return Some((buf, from));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // An ICMP port-unreachable of an earlier send; not a datagram for us.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("recv_from: {e}"),
        }
    }
}

/// A customer UA: an [`Endpoint`] on [`CALLER_IP`]`:0`.
pub struct Caller(Endpoint);

impl Caller {
    pub fn bind() -> Caller {
        Caller(Endpoint::bind(CALLER_IP))
    }
}

impl std::ops::Deref for Caller {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.0
    }
}

/// The fake SIP switch (the daemon's upstream): an [`Endpoint`] on [`SWITCH_IP`]`:0`.
pub struct Switch(Endpoint);

impl Switch {
    pub fn bind() -> Switch {
        Switch(Endpoint::bind(SWITCH_IP))
    }
}

impl std::ops::Deref for Switch {
    type Target = Endpoint;
    fn deref(&self) -> &Endpoint {
        &self.0
    }
}

// ---------------------------------------------------------------------------------------------
// Reading SIP messages

/// The message as (lossy) text, for assertion messages.
pub fn text(msg: &[u8]) -> String {
    String::from_utf8_lossy(msg).into_owned()
}

/// The start line (without CRLF).
pub fn start_line(msg: &[u8]) -> String {
    let t = text(msg);
    t.split("\r\n").next().unwrap_or_default().to_owned()
}

/// The status code of a response, `None` for a request or garbage.
pub fn status_code(msg: &[u8]) -> Option<u16> {
    let line = start_line(msg);
    let mut parts = line.split(' ');
    if parts.next()? != "SIP/2.0" {
        return None;
    }
    parts.next()?.parse().ok()
}

/// The method of a request, `None` for a response.
pub fn method(msg: &[u8]) -> Option<String> {
    let line = start_line(msg);
    if line.starts_with("SIP/2.0 ") {
        return None;
    }
    line.split(' ')
        .next()
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
}

/// The body (bytes after the first blank line).
pub fn body(msg: &[u8]) -> &[u8] {
    msg.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(&[][..], |p| &msg[p + 4..])
}

/// The header lines of a message as (name, value) pairs, in order; folded continuation lines
/// are joined with one space. Names as written (case and compact form kept).
pub fn header_lines(msg: &[u8]) -> Vec<(String, String)> {
    let t = text(msg);
    let head = t.split("\r\n\r\n").next().unwrap_or_default();
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n").skip(1) {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((n, v)) = line.split_once(':') {
            out.push((n.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// The full name of a compact header form (RFC 3261 7.3.3 and later RFCs), lower case.
fn canonical(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    let full = match n.as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "e" => "content-encoding",
        "k" => "supported",
        "s" => "subject",
        "o" => "event",
        "r" => "refer-to",
        "b" => "referred-by",
        "u" => "allow-events",
        "x" => "session-expires",
        "y" => "identity",
        _ => return n,
    };
    full.to_owned()
}

/// The value of the first header `name` (case-insensitive, compact forms understood).
pub fn header(msg: &[u8], name: &str) -> Option<String> {
    all_headers(msg, name).into_iter().next()
}

/// The values of every header line `name`, in order. A comma-joined line stays one value.
pub fn all_headers(msg: &[u8], name: &str) -> Vec<String> {
    let want = canonical(name);
    header_lines(msg)
        .into_iter()
        .filter(|(n, _)| canonical(n) == want)
        .map(|(_, v)| v)
        .collect()
}

/// A `;name=value` parameter of a header value (or of a URI inside it): `Some("")` for a
/// parameter without value, `None` when absent. Case-insensitive name.
pub fn param(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let p = p.trim().trim_end_matches('>');
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The URI of a name-addr (`"Bob" <sip:bob@h>;tag=x` → `sip:bob@h`), or the value itself
/// when it has no angle brackets (parameters after `;` then belong to the header, and are cut).
pub fn uri_of(value: &str) -> String {
    match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_owned(),
        _ => value
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// The `tag` parameter of the To header.
pub fn to_tag(msg: &[u8]) -> Option<String> {
    header(msg, "To").and_then(|v| param(&v, "tag"))
}

/// The `branch` of the top Via.
pub fn top_branch(msg: &[u8]) -> Option<String> {
    header(msg, "Via").and_then(|v| param(&v, "branch"))
}

// ---------------------------------------------------------------------------------------------
// Building SIP messages

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A token unique within this test run (process id, time, counter).
pub fn unique() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        % 1_000_000_000_000;
    format!("{:x}{:x}{n}", std::process::id(), t)
}

/// A fresh Call-ID.
pub fn new_call_id() -> String {
    format!("cg-it-{}@127.0.0.1", unique())
}

/// A fresh RFC 3261 branch (`z9hG4bK` + unique).
pub fn new_branch() -> String {
    format!("z9hG4bK-it{}", unique())
}

/// A fresh tag.
pub fn new_tag() -> String {
    format!("t{}", unique())
}

/// A request as a customer UA would send it. Fields are public; the chaining setters below
/// cover the usual tweaks. [`Request::build`] renders it:
///
/// ```text
/// METHOD ruri SIP/2.0
/// Via: SIP/2.0/UDP {via}; branch={branch}[;rport]
/// Max-Forwards: 70                 (omitted when max_forwards is None)
/// Route: <...>                     (one line per entry of routes)
/// From: <sip:{from_user}@{from_host}>;tag={from_tag}
/// To: <sip:{to_user}@{to_host}>[;tag={to_tag}]
/// Call-ID: {call_id}
/// CSeq: {cseq} {cseq_method or method}
/// Contact: <sip:{from_user}@{via}>
/// {extra headers}
/// Content-Type / Content-Length, body
/// ```
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub ruri: String,
    /// sent-by of the Via (the sender's own address).
    pub via: SocketAddr,
    pub branch: String,
    /// Add an empty `;rport` to the Via (RFC 3581).
    pub rport: bool,
    pub max_forwards: Option<u32>,
    pub routes: Vec<String>,
    pub from_user: String,
    pub from_host: String,
    pub from_tag: String,
    /// Empty: `To: <sip:{to_host}>`.
    pub to_user: String,
    pub to_host: String,
    pub to_tag: Option<String>,
    pub call_id: String,
    pub cseq: u32,
    /// CSeq method when it should differ from `method` (malformed-request tests).
    pub cseq_method: Option<String>,
    pub contact: bool,
    pub headers: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    /// A request from `local` (Via sent-by, Contact) with Request-URI `ruri`; From user
    /// `from_user` on host `example.com` with a fresh tag; To user `4930123456` at the
    /// Request-URI's host; fresh branch with `;rport`; CSeq 1; Max-Forwards 70.
    pub fn new(
        method: &str,
        ruri: &str,
        local: SocketAddr,
        call_id: &str,
        from_user: &str,
    ) -> Request {
        let to_host = ruri
            .split_once('@')
            .map_or_else(|| ruri.trim_start_matches("sip:"), |(_, h)| h)
            .split(';')
            .next()
            .unwrap_or_default()
            .to_owned();
        Request {
            method: method.to_owned(),
            ruri: ruri.to_owned(),
            via: local,
            branch: new_branch(),
            rport: true,
            max_forwards: Some(70),
            routes: Vec::new(),
            from_user: from_user.to_owned(),
            from_host: "example.com".to_owned(),
            from_tag: new_tag(),
            to_user: "4930123456".to_owned(),
            to_host,
            to_tag: None,
            call_id: call_id.to_owned(),
            cseq: 1,
            cseq_method: None,
            contact: true,
            headers: Vec::new(),
            content_type: None,
            body: Vec::new(),
        }
    }

    /// A new call: `INVITE sip:4930123456@{target}` from `local`, From user `from_user`, with a
    /// small SDP body.
    pub fn invite(
        local: SocketAddr,
        target: SocketAddr,
        call_id: &str,
        from_user: &str,
    ) -> Request {
        Request::new(
            "INVITE",
            &format!("sip:4930123456@{target}"),
            local,
            call_id,
            from_user,
        )
        .sdp()
    }

    /// Adds a small SDP offer as body.
    pub fn sdp(mut self) -> Request {
        let ip = self.via.ip();
        self.content_type = Some("application/sdp".to_owned());
        self.body = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n"
        )
        .into_bytes();
        self
    }

    /// The CANCEL of this (INVITE) request: same Request-URI, Via branch, From, To, Call-ID,
    /// CSeq number, Route; no body (RFC 3261 9.1).
    pub fn cancel(&self) -> Request {
        let mut c = self.clone();
        c.method = "CANCEL".to_owned();
        c.cseq_method = None;
        c.contact = false;
        c.headers.clear();
        c.content_type = None;
        c.body.clear();
        c
    }

    /// The ACK of a non-2xx final `response` to this INVITE: same branch and Request-URI, To
    /// with the response's tag, CSeq number with method ACK (RFC 3261 17.1.1.3).
    pub fn ack_for(&self, response: &[u8]) -> Request {
        let mut a = self.cancel();
        a.method = "ACK".to_owned();
        a.to_tag = to_tag(response);
        a
    }

    /// A request inside the dialog this INVITE created with the 2xx `response`: Request-URI =
    /// the response's Contact (else the original one), To-tag from it, Route set = its
    /// Record-Route URIs in reverse (RFC 3261 12.1.2), fresh branch, CSeq `cseq`.
    pub fn in_dialog(&self, method: &str, response: &[u8], cseq: u32) -> Request {
        let mut r = self.clone();
        r.method = method.to_owned();
        r.ruri = header(response, "Contact").map_or(self.ruri.clone(), |c| uri_of(&c));
        r.to_tag = to_tag(response);
        let mut rr: Vec<String> = all_headers(response, "Record-Route")
            .iter()
            .flat_map(|v| {
                v.split(',')
                    .map(|s| format!("<{}>", uri_of(s.trim())))
                    .collect::<Vec<_>>()
            })
            .collect();
        rr.reverse();
        r.routes = rr;
        r.branch = new_branch();
        r.cseq = cseq;
        r.cseq_method = None;
        r.headers.clear();
        r.content_type = None;
        r.body.clear();
        r
    }

    /// Sets the Via branch (e.g. to repeat an INVITE's branch).
    pub fn with_branch(mut self, b: &str) -> Request {
        self.branch = b.to_owned();
        self
    }
    /// Whether the Via carries an empty `;rport` (RFC 3581). Default on.
    pub fn with_rport(mut self, on: bool) -> Request {
        self.rport = on;
        self
    }
    /// Sets Max-Forwards; `None` omits the header.
    pub fn with_max_forwards(mut self, mf: Option<u32>) -> Request {
        self.max_forwards = mf;
        self
    }
    /// Appends a `Route:` line with value `r` (e.g. `"<sip:127.0.0.1:5060;lr;cgt=...>"`).
    pub fn with_route(mut self, r: &str) -> Request {
        self.routes.push(r.to_owned());
        self
    }
    /// Sets the From-tag.
    pub fn with_from_tag(mut self, t: &str) -> Request {
        self.from_tag = t.to_owned();
        self
    }
    /// Sets the To user; `""` gives `To: <sip:{to_host}>`.
    pub fn with_to_user(mut self, u: &str) -> Request {
        self.to_user = u.to_owned();
        self
    }
    /// Sets (or clears) the To-tag.
    pub fn with_to_tag(mut self, t: Option<&str>) -> Request {
        self.to_tag = t.map(str::to_owned);
        self
    }
    /// Sets the CSeq number.
    pub fn with_cseq(mut self, n: u32) -> Request {
        self.cseq = n;
        self
    }
    /// Adds a header line `name: value` after Contact.
    pub fn with_header(mut self, name: &str, value: &str) -> Request {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Renders the request (CRLF line ends, correct Content-Length).
    pub fn build(&self) -> Vec<u8> {
        let mut s = format!("{} {} SIP/2.0\r\n", self.method, self.ruri);
        s += &format!(
            "Via: SIP/2.0/UDP {};branch={}{}\r\n",
            self.via,
            self.branch,
            if self.rport { ";rport" } else { "" }
        );
        if let Some(mf) = self.max_forwards {
            s += &format!("Max-Forwards: {mf}\r\n");
        }
        for r in &self.routes {
            s += &format!("Route: {r}\r\n");
        }
        s += &format!(
            "From: <sip:{}@{}>;tag={}\r\n",
            self.from_user, self.from_host, self.from_tag
        );
        let to_uri = if self.to_user.is_empty() {
            format!("sip:{}", self.to_host)
        } else {
            format!("sip:{}@{}", self.to_user, self.to_host)
        };
        match &self.to_tag {
            Some(t) => s += &format!("To: <{to_uri}>;tag={t}\r\n"),
            None => s += &format!("To: <{to_uri}>\r\n"),
        }
        s += &format!("Call-ID: {}\r\n", self.call_id);
        s += &format!(
            "CSeq: {} {}\r\n",
            self.cseq,
            self.cseq_method.as_deref().unwrap_or(&self.method)
        );
        if self.contact {
            s += &format!("Contact: <sip:{}@{}>\r\n", self.from_user, self.via);
        }
        for (n, v) in &self.headers {
            s += &format!("{n}: {v}\r\n");
        }
        if let Some(ct) = &self.content_type {
            s += &format!("Content-Type: {ct}\r\n");
        }
        s += &format!("Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// A response to `request` as a UAS (the fake switch) builds it (RFC 3261 8.2.6): status line,
/// then every Via and Record-Route line, From, To (with `;tag={to_tag}` added when the request
/// had no To-tag and `to_tag` is given), Call-ID and CSeq copied byte for byte from the
/// request, then `extra` headers (e.g. `("Contact", "<sip:x@127.0.0.2:5080>")`), and
/// `Content-Length: 0`.
pub fn response(
    request: &[u8],
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let t = text(request);
    let head = t.split("\r\n\r\n").next().unwrap_or_default();
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    for line in head.split("\r\n").skip(1) {
        let Some((n, _)) = line.split_once(':') else {
            continue;
        };
        match canonical(n.trim()).as_str() {
            "via" | "record-route" | "from" | "call-id" | "cseq" => {
                s += line;
                s += "\r\n";
            }
            "to" => {
                s += line;
                if let Some(tag) = to_tag {
                    if param(line.split_once(':').map_or("", |x| x.1), "tag").is_none() {
                        s += &format!(";tag={tag}");
                    }
                }
                s += "\r\n";
            }
            _ => {}
        }
    }
    for (n, v) in extra {
        s += &format!("{n}: {v}\r\n");
    }
    s += "Content-Length: 0\r\n\r\n";
    s.into_bytes()
}

/// `msg` with the first header line named `name` (case-insensitive, compact forms understood)
/// removed, byte for byte otherwise; `None` if there is no such line.
pub fn without_first_header(msg: &[u8], name: &str) -> Option<Vec<u8>> {
    let want = canonical(name);
    let head_end = msg.windows(4).position(|w| w == b"\r\n\r\n")? + 2;
    let mut pos = msg.windows(2).position(|w| w == b"\r\n")? + 2;
    while pos < head_end {
        let end = pos + msg[pos..].windows(2).position(|w| w == b"\r\n")? + 2;
        let line = text(&msg[pos..end]);
        if let Some((n, _)) = line.split_once(':') {
            if canonical(n.trim()) == want {
                let mut out = msg[..pos].to_vec();
                out.extend_from_slice(&msg[end..]);
                return Some(out);
            }
        }
        pos = end;
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The admin API: HTTP and Prometheus text

/// [`test_config`] (SIP on port 0) with the admin API on `127.0.0.1:0`; once the daemon runs,
/// [`Daemon::admin_addr`] gives the port it bound.
pub fn config_with_admin(refresh_interval: &str, switch: SocketAddr) -> String {
    let cfg = test_config(0, switch, refresh_interval).replace(
        "[admin]\nlisten = \"\"",
        &format!("[admin]\nlisten = \"{DAEMON_IP}:0\""),
    );
    assert!(
        cfg.contains(&format!("listen = \"{DAEMON_IP}:0\"")),
        "the admin listen line was not replaced:\n{cfg}"
    );
    cfg
}

/// One HTTP/1.1 answer.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Http {
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A minimal HTTP/1.1 client (`Connection: close`, so the body ends at EOF).
pub fn http(method: &str, addr: SocketAddr, path: &str, token: Option<&str>) -> Http {
    let mut s =
        TcpStream::connect_timeout(&addr, WAIT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the answer: {e}"));
    let text = String::from_utf8(raw).expect("an HTTP answer in UTF-8");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Http {
        status,
        headers,
        body,
    }
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn get(addr: SocketAddr, path: &str) -> Http {
    http("GET", addr, path, None)
}

/// Parses a `/metrics` body with `prometheus-parse`, and checks that the parser accepted every
/// sample line (it skips lines it cannot read, so count them) and that every family has a HELP.
pub fn parse_metrics(body: &str) -> Scrape {
    let scrape = Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("a Prometheus text exposition");
    let sample_lines = body
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    let parsed: usize = scrape
        .samples
        .iter()
        .map(|s| match &s.value {
            Value::Histogram(b) => b.len(),
            Value::Summary(q) => q.len(),
            _ => 1,
        })
        .sum();
    assert_eq!(
        parsed, sample_lines,
        "the parser skipped sample lines:\n{body}"
    );
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(scrape.docs.contains_key(name), "no HELP for {name}");
        assert!(
            name.starts_with("creditgate_"),
            "metric {name} lacks the creditgate_ prefix"
        );
    }
    scrape
}

/// The value of the sample `name` whose labels include `labels`; panics if absent.
pub fn metric(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"));
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name} is not a scalar: {other:?}"),
    }
}

pub fn scrape(addr: SocketAddr) -> Scrape {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers
            .get("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.headers
    );
    parse_metrics(&r.body)
}
