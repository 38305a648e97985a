//! SIPp end to end through the real daemon (issue 2, acceptance 3; SPEC section 2): the
//! scenarios of `sipp-scenarios/` on both sides of creditgate, real SIPp processes, no mocks.
//!
//! | test | customer side (UAC) | switch side (UAS) |
//! | --- | --- | --- |
//! | [`sipp_500_allowed_calls_at_100_cps_complete_through_creditgate`] | `uac-allowed.xml` | `uas.xml` |
//! | [`sipp_200_refused_calls_each_get_402_and_never_reach_the_switch`] | `uac-refused.xml` | a silent [`Switch`] |
//! | [`sipp_cancelled_calls_get_the_200_of_the_cancel_then_487_through_creditgate`] | `uac-cancel.xml` | `uas-cancel.xml` |
//! | [`sipp_re_invites_follow_creditgates_route_and_pass_without_a_credit_check`] | `uac-reinvite.xml` | `uas-reinvite.xml` |
//! | [`sipp_a_486_of_the_switch_reaches_the_caller_and_its_ack_reaches_the_switch`] | `uac-refused.xml -set expect 486` | `uas-busy.xml` |
//! | [`sipp_a_long_call_outlives_its_balance_while_new_calls_of_the_account_get_402`] | `uac-longcall.xml`, `uac-refused.xml` | `uas-reinvite.xml` |
//! | [`load_sh_runs_a_bounded_load_through_creditgate`] | `load.sh` (`uac-allowed.xml`) | `uas.xml` |
//!
//! Every SIPp run is bounded by a call count (`-m`), SIPp's `-timeout` and a hard kill at a
//! deadline in [`Sipp::wait`]; all traffic stays on loopback (callers on [`CALLER_IP`], the
//! switch on [`SWITCH_IP`]). Nothing asserts on timing: the one sequence that depends on it (the
//! long call) waits for evidence at each step and fails with a message saying which step was late.
//!
//! SIPp is Debian's `sip-tester`; `scripts/test.sh` installs it. Without it these tests print
//! "skipped: sipp not found" and pass — except under CI (`CI` set), where a missing SIPp is a
//! failure.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

pub(crate) fn sipp_available() -> bool {
    let ok = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "sipp is missing under CI: scripts/test.sh installs it (apt-get install sip-tester)"
        );
        eprintln!("skipped: sipp not found (apt-get install sip-tester)");
    }
    ok
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp-scenarios")
        .join(name)
}

/// SIPp's own `-timeout` for every run. It is graceful (it stops new calls and waits for the
/// running ones), so [`Sipp::wait`] kills at a deadline as well.
const SIPP_TIMEOUT: &str = "60s";

/// How long a SIPp UAS may take to bind its port. It binds within milliseconds; this only
/// bounds a failure (a port taken by another process, a broken install).
const UAS_BIND: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Running SIPp

/// A SIPp command line being put together; [`SippCmd::start`] runs it.
pub(crate) struct SippCmd {
    name: &'static str,
    dir: PathBuf,
    args: Vec<String>,
    trace_msg: bool,
    /// For a UAS: the IP it listens on; its port is read back before [`SippCmd::start`] returns.
    listen: Option<IpAddr>,
}

/// SIPp as the switch: `file` on [`SWITCH_IP`], stopping after `calls` calls. No `-p`: SIPp
/// tries 5060, 5061, ... until a bind succeeds, so the port it gets is one it holds;
/// [`SippCmd::start`] reads it back ([`Sipp::port`]). Start it before the daemon, whose
/// `upstream` it is.
pub(crate) fn uas(dir: &Path, name: &'static str, file: &str, calls: u64) -> SippCmd {
    SippCmd {
        name,
        dir: dir.to_path_buf(),
        args: vec![
            "-sf".into(),
            scenario(file).display().to_string(),
            "-i".into(),
            SWITCH_IP.to_string(),
            "-m".into(),
            calls.to_string(),
            "-timeout".into(),
            SIPP_TIMEOUT.into(),
        ],
        trace_msg: false,
        listen: Some(SWITCH_IP),
    }
}

/// SIPp as a customer: `file` from [`CALLER_IP`] (a port SIPp finds free by binding it) to
/// `target` (creditgate),
/// `calls` calls at `rate` calls per second.
pub(crate) fn uac(
    dir: &Path,
    name: &'static str,
    target: SocketAddr,
    file: &str,
    calls: u64,
    rate: u64,
) -> SippCmd {
    SippCmd {
        name,
        dir: dir.to_path_buf(),
        args: vec![
            target.to_string(),
            "-sf".into(),
            scenario(file).display().to_string(),
            "-i".into(),
            CALLER_IP.to_string(),
            "-m".into(),
            calls.to_string(),
            "-r".into(),
            rate.to_string(),
            "-timeout".into(),
            SIPP_TIMEOUT.into(),
        ],
        trace_msg: false,
        listen: None,
    }
}

impl SippCmd {
    /// Appends `args` to the command line.
    pub(crate) fn args(mut self, args: &[&str]) -> SippCmd {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
        self
    }

    /// `-set var value` (the scenario must declare `var`).
    pub(crate) fn set(self, var: &str, value: &str) -> SippCmd {
        self.args(&["-set", var, value])
    }

    /// Replaces the `-timeout` value (default [`SIPP_TIMEOUT`]), e.g. for calls held longer.
    pub(crate) fn timeout(mut self, t: &str) -> SippCmd {
        let at = self
            .args
            .iter()
            .position(|a| a == "-timeout")
            .expect("every SippCmd has -timeout");
        self.args[at + 1] = t.to_owned();
        self
    }

    /// Also writes every message sent and received to `NAME.msg` (see [`Sipp::messages`]).
    pub(crate) fn traced(mut self) -> SippCmd {
        self.trace_msg = true;
        self
    }

    /// Spawns SIPp (screen to `NAME.screen`, errors to `NAME.errors` in the directory); for a
    /// UAS, returns once its port is bound, so a UAC started next finds it.
    pub(crate) fn start(self) -> Sipp {
        let screen = self.dir.join(format!("{}.screen", self.name));
        let errors = self.dir.join(format!("{}.errors", self.name));
        let messages = self.dir.join(format!("{}.msg", self.name));
        let mut cmd = Command::new("sipp");
        cmd.args(&self.args)
            .args(["-nostdin", "-trace_screen", "-screen_file"])
            .arg(&screen)
            .args(["-trace_err", "-error_file"])
            .arg(&errors);
        if self.trace_msg {
            cmd.args(["-trace_msg", "-message_file"]).arg(&messages);
        }
        let child = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sipp");
        let mut sipp = Sipp {
            child,
            screen,
            errors,
            messages,
            name: self.name,
            port: 0,
        };
        if let Some(ip) = self.listen {
            sipp.port = sipp.wait_port(ip);
        }
        sipp
    }
}

/// A running SIPp process; killed on drop.
pub(crate) struct Sipp {
    child: Child,
    screen: PathBuf,
    errors: PathBuf,
    messages: PathBuf,
    name: &'static str,
    /// A UAS's SIP port (0 for a UAC).
    pub(crate) port: u16,
}

/// A directory for SIPp's screen, error and message files.
pub(crate) fn sipp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("creditgate-sipp-")
        .tempdir()
        .expect("create a temp dir")
}

impl Sipp {
    /// The SIP port SIPp bound on `ip`: the lowest port among the UDP sockets of its own
    /// process on `ip` (its SIP socket is bound first, from 5060 up; media ports start at 6000),
    /// found through `/proc/PID/fd` and `/proc/net/udp`. Waits until it shows (at most
    /// [`UAS_BIND`]); panics if SIPp exits first.
    fn wait_port(&mut self, ip: IpAddr) -> u16 {
        let IpAddr::V4(ip4) = ip else {
            panic!("{ip}: only IPv4 is looked up in /proc/net/udp")
        };
        let deadline = Instant::now() + UAS_BIND;
        loop {
            if let Some(port) = own_udp_ports(self.child.id(), ip4).into_iter().min() {
                assert!(
                    port < 6000,
                    "sipp {} bound no SIP port below 6000",
                    self.name
                );
                return port;
            }
            if let Some(st) = self.child.try_wait().expect("poll sipp") {
                panic!(
                    "sipp {} exited ({st}) before binding a port on {ip}\n{}",
                    self.name,
                    std::fs::read_to_string(&self.errors).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sipp {} did not bind a port on {ip} within {UAS_BIND:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The messages traced so far (only with [`SippCmd::traced`]).
    pub(crate) fn messages(&self) -> Vec<Traced> {
        traced(&self.messages)
    }

    /// Polls the message trace until `want` holds for one message; false after `limit`.
    pub(crate) fn wait_for_message(&self, limit: Duration, want: impl Fn(&Traced) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.messages().iter().any(&want) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for SIPp to exit (at most `limit`, then kills it and panics).
    pub(crate) fn wait(mut self, limit: Duration) -> SippRun {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("poll sipp") {
                return SippRun {
                    name: self.name,
                    code: st.code(),
                    screen: std::fs::read_to_string(&self.screen).unwrap_or_default(),
                    errors: std::fs::read_to_string(&self.errors).unwrap_or_default(),
                    messages: traced(&self.messages),
                };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let screen = std::fs::read_to_string(&self.screen).unwrap_or_default();
                panic!(
                    "sipp {} did not finish within {limit:?}\n{screen}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Reading what SIPp reports

/// A finished SIPp run: its exit code, final screens, error log and message trace.
pub(crate) struct SippRun {
    name: &'static str,
    code: Option<i32>,
    screen: String,
    errors: String,
    messages: Vec<Traced>,
}

/// Which way a row of SIPp's scenario screen goes, seen from the SIPp process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Sent,
    Received,
}

/// One message row of SIPp's scenario screen.
#[derive(Debug)]
struct Row {
    /// The method or the status code, as printed (`INVITE`, `200`).
    label: String,
    dir: Dir,
    /// The "Messages" column: how many calls passed this row (retransmissions not counted).
    messages: u64,
    /// The "Unexpected-Msg" column (received rows only; 0 elsewhere).
    unexpected: u64,
}

impl SippRun {
    /// Everything SIPp said, for an assertion message.
    pub(crate) fn report(&self) -> String {
        format!(
            "----- sipp {} exit {:?} -----\n{}\n----- sipp {} errors -----\n{}\n----- end of sipp {} -----",
            self.name, self.code, self.screen, self.name, self.errors, self.name
        )
    }

    /// The cumulative counter of a line such as `Successful call | 0 | 500` on the last
    /// statistics screen.
    pub(crate) fn count(&self, label: &str) -> u64 {
        self.screen
            .lines()
            .rev()
            .filter(|l| l.trim_start().starts_with(label))
            .find_map(|l| l.split('|').nth(2).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no `{label}` line on the SIPp screen\n{}", self.report()))
    }

    /// The message rows of the last scenario screen, in scenario order. A UAC prints
    /// `INVITE ---------->` (sent) and `200 <----------` (received); a UAS prints
    /// `----------> INVITE` (received) and `<---------- 200` (sent). Pauses are skipped, but
    /// their unexpected messages are added to [`SippRun::unexpected`].
    fn rows(&self) -> Vec<Row> {
        let last = self
            .screen
            .rfind("Scenario Screen")
            .unwrap_or_else(|| panic!("no scenario screen\n{}", self.report()));
        let section = &self.screen[last..];
        let section = section
            .find("Statistics Screen")
            .map_or(section, |end| &section[..end]);
        let mut rows = Vec::new();
        for line in section.lines() {
            let t: Vec<&str> = line.split_whitespace().collect();
            let (label, dir, nums) = match t.as_slice() {
                ["---------->", label, nums @ ..] => (*label, Dir::Received, nums),
                ["<----------", label, nums @ ..] => (*label, Dir::Sent, nums),
                [label, "---------->", nums @ ..] => (*label, Dir::Sent, nums),
                [label, "<----------", nums @ ..] => (*label, Dir::Received, nums),
                _ => continue,
            };
            let nums: Vec<u64> = nums.iter().filter_map(|n| n.parse().ok()).collect();
            rows.push(Row {
                label: label.to_owned(),
                dir,
                messages: nums.first().copied().unwrap_or(0),
                unexpected: if dir == Dir::Received {
                    nums.get(3).copied().unwrap_or(0)
                } else {
                    0
                },
            });
        }
        assert!(!rows.is_empty(), "no message rows\n{}", self.report());
        rows
    }

    /// The "Messages" column of every row `label` going `dir`, in scenario order.
    fn messages_of(&self, label: &str, dir: Dir) -> Vec<u64> {
        self.rows()
            .iter()
            .filter(|r| r.label == label && r.dir == dir)
            .map(|r| r.messages)
            .collect()
    }

    /// The unexpected messages of the whole scenario (message rows and pauses).
    fn unexpected(&self) -> u64 {
        let in_rows: u64 = self.rows().iter().map(|r| r.unexpected).sum();
        let in_pauses: u64 = self
            .screen
            .lines()
            .filter(|l| l.trim_start().starts_with("Pause ["))
            .filter_map(|l| l.rsplit(']').next())
            .filter_map(|rest| {
                let n: Vec<u64> = rest
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                (n.len() >= 2).then(|| n[n.len() - 1])
            })
            .sum();
        in_rows + in_pauses
    }

    /// Every one of `calls` calls succeeded, none failed, SIPp exited with 0 and saw no
    /// unexpected message.
    pub(crate) fn assert_all_succeeded(&self, calls: u64) {
        assert_eq!(
            self.count("Successful call"),
            calls,
            "successful calls\n{}",
            self.report()
        );
        assert_eq!(
            self.count("Failed call"),
            0,
            "failed calls\n{}",
            self.report()
        );
        assert_eq!(
            self.unexpected(),
            0,
            "unexpected messages\n{}",
            self.report()
        );
        assert_eq!(self.code, Some(0), "exit code\n{}", self.report());
    }
}

/// One message of a SIPp message trace (`-trace_msg`).
#[derive(Debug)]
pub(crate) struct Traced {
    pub(crate) received: bool,
    /// The datagram as SIPp sent or received it (CRLF line ends), for the harness readers.
    pub(crate) msg: Vec<u8>,
}

impl Traced {
    pub(crate) fn is_request(&self, m: &str) -> bool {
        method(&self.msg).as_deref() == Some(m)
    }
    /// A request inside a dialog: its To carries a tag.
    fn in_dialog(&self) -> bool {
        to_tag(&self.msg).is_some()
    }
    pub(crate) fn call_id(&self) -> String {
        header(&self.msg, "Call-ID").unwrap_or_default()
    }
}

/// Runs `uac` to the end against the already started `uas` and checks that both completed
/// `calls` calls with nothing failed or unexpected.
fn run_calls(uac: SippCmd, uas: Sipp, calls: u64) -> (SippRun, SippRun) {
    let uac = uac.start().wait(Duration::from_secs(60));
    let uas = uas.wait(Duration::from_secs(30));
    uac.assert_all_succeeded(calls);
    uas.assert_all_succeeded(calls);
    (uac, uas)
}

/// Reads a SIPp message trace: blocks of `---...--- TIMESTAMP`, then `UDP message received
/// [N] bytes :` or `UDP message sent (N bytes):`, a blank line and the raw message.
fn traced(path: &Path) -> Vec<Traced> {
    let raw = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    raw.split("----------------------------------------------- ")
        .filter_map(|block| {
            let (_timestamp, rest) = block.split_once('\n')?;
            let (kind, msg) = rest.split_once("\n\n")?;
            let received = kind.contains("received");
            (received || kind.contains("sent")).then(|| Traced {
                received,
                msg: msg.trim_end_matches('\n').as_bytes().to_vec(),
            })
        })
        .collect()
}

/// The distinct Call-IDs of the daemon's refusal log lines (`refused account="ID"
/// cause="CAUSE" call_id=...`). A retransmitted INVITE is refused again with another line, so
/// counting lines could exceed the calls; counting Call-IDs cannot.
fn refused_call_ids(log: &str, account: &str, cause: &str) -> HashSet<String> {
    let account = format!("account=\"{account}\"");
    let cause = format!("cause=\"{cause}\"");
    log.lines()
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.contains(&"refused") && w.contains(&account.as_str()) && w.contains(&cause.as_str())
        })
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("call_id="))
                .map(str::to_owned)
        })
        .collect()
}

/// The test config with the switch on [`SWITCH_IP`]`:switch_port`, every refusal logged (the
/// tests count refusal lines; `[log] refusal_lines_per_second` would hold most back at 100
/// calls/s).
fn config(switch_port: u16, refresh_interval: &str) -> String {
    every_refusal_logged(test_config(
        0,
        SocketAddr::new(SWITCH_IP, switch_port),
        refresh_interval,
    ))
}

/// [`refused_call_ids`] once at least `want` of them are in the log (the log is written by a
/// thread of its own, a moment after the reply left), or what is there after [`WAIT`].
fn refused_call_ids_at_least(
    daemon: &Daemon,
    account: &str,
    cause: &str,
    want: usize,
) -> HashSet<String> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ids = refused_call_ids(&daemon.log(), account, cause);
        if ids.len() >= want || std::time::Instant::now() >= deadline {
            return ids;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn every_refusal_logged(config: String) -> String {
    config.replace(
        "[log]\nlevel = \"info\"",
        "[log]\nlevel = \"info\"\nrefusal_lines_per_second = 1000000",
    )
}

/// The ports of the UDP sockets process `pid` holds on `ip` (its `/proc/PID/fd` socket inodes
/// looked up in `/proc/net/udp`, where the kernel prints the address as the in-memory u32).
fn own_udp_ports(pid: u32, ip: std::net::Ipv4Addr) -> Vec<u16> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let inodes: HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let want_ip = format!("{:08X}", u32::from_ne_bytes(ip.octets()));
    let table = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (addr, port) = f.get(1)?.split_once(':')?;
            (addr == want_ip && inodes.contains(*f.get(9)?))
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
fn sipp_500_allowed_calls_at_100_cps_complete_through_creditgate() {
    if !sipp_available() {
        return;
    }
    let work = sipp_dir();
    let dir = work.path().to_path_buf();
    let uas = uas(&dir, "uas", "uas.xml", 500).start();
    let switch_port = uas.port;
    let daemon = Daemon::start(&config(switch_port, "60s"), ACCOUNTS);

    let uac = uac(&dir, "uac", daemon.sip_addr(), "uac-allowed.xml", 500, 100)
        .set("account", "alice")
        .args(&["-d", "500"])
        .start();
    let uac = uac.wait(Duration::from_secs(120));
    uac.assert_all_succeeded(500);
    let uas = uas.wait(Duration::from_secs(30));
    uas.assert_all_succeeded(500);
}

#[test]
fn sipp_200_refused_calls_each_get_402_and_never_reach_the_switch() {
    if !sipp_available() {
        return;
    }
    let switch = Switch::bind();
    let daemon = Daemon::start(
        &every_refusal_logged(test_config(0, switch.addr(), "60s")),
        ACCOUNTS,
    );
    let dir = daemon.dir().to_path_buf();
    let run = uac(
        &dir,
        "uac-refused",
        daemon.sip_addr(),
        "uac-refused.xml",
        200,
        100,
    )
    .set("account", "bob")
    .set("expect", "402")
    .start()
    .wait(Duration::from_secs(90));
    // Each call ends with a 402 (uac-refused.xml fails a call on any other code); SIPp's
    // "Messages" column counts calls, its retransmissions go to another column.
    run.assert_all_succeeded(200);
    assert_eq!(
        run.messages_of("402", Dir::Received),
        vec![200],
        "402 per call\n{}",
        run.report()
    );
    switch.expect_nothing(QUIET);
    // One refusal per call in the daemon's log, counted by Call-ID (a retransmitted INVITE is
    // refused, and logged, once more).
    let ids = refused_call_ids_at_least(&daemon, "bob", "insufficient_credit", 200);
    assert_eq!(ids.len(), 200, "distinct Call-IDs refused: {ids:?}");
}

/// `uac-cancel.xml` against `uas-cancel.xml`: every call rings, is cancelled, gets the 200 of
/// the CANCEL and then the 487 of the INVITE, and ACKs it; the UAS checks that the CANCEL and
/// the ACK reach it with the INVITE's branch.
#[test]
fn sipp_cancelled_calls_get_the_200_of_the_cancel_then_487_through_creditgate() {
    if !sipp_available() {
        return;
    }
    const CALLS: u64 = 20;
    let work = sipp_dir();
    let dir = work.path().to_path_buf();
    let uas = uas(&dir, "uas-cancel", "uas-cancel.xml", CALLS).start();
    let switch_port = uas.port;
    let daemon = Daemon::start(&config(switch_port, "60s"), ACCOUNTS);

    let uac = uac(
        &dir,
        "uac-cancel",
        daemon.sip_addr(),
        "uac-cancel.xml",
        CALLS,
        20,
    )
    .set("account", "alice")
    .args(&["-d", "200"]);
    let (uac, uas) = run_calls(uac, uas, CALLS);

    assert_eq!(
        uac.messages_of("CANCEL", Dir::Sent),
        vec![CALLS],
        "{}",
        uac.report()
    );
    // uac-cancel.xml has two branches: [200 first: 200, 487, ACK] and [487 first: 487, ACK,
    // 200]. The UAS sends the 200 before the 487 from one socket, and creditgate handles one
    // source's datagrams in order, so every call takes the first one.
    assert_eq!(
        uac.messages_of("200", Dir::Received),
        vec![CALLS, 0],
        "the 200 of the CANCEL, then the 487\n{}",
        uac.report()
    );
    assert_eq!(
        uac.messages_of("487", Dir::Received),
        vec![0, CALLS],
        "{}",
        uac.report()
    );
    assert_eq!(
        uac.messages_of("ACK", Dir::Sent),
        vec![0, CALLS],
        "{}",
        uac.report()
    );
    for (label, dir) in [
        ("CANCEL", Dir::Received),
        ("200", Dir::Sent),
        ("487", Dir::Sent),
        ("ACK", Dir::Received),
    ] {
        assert_eq!(
            uas.messages_of(label, dir),
            vec![CALLS],
            "{label} at the switch\n{}",
            uas.report()
        );
    }
}

/// `uac-reinvite.xml` against `uas-reinvite.xml`: the ACK, the re-INVITE and the BYE follow the
/// Route set SIPp learnt from creditgate's Record-Route (`[routes]`, `[next_url]`), and creditgate
/// passes the re-INVITE as an in-dialog request: its Route popped, no Record-Route added.
#[test]
fn sipp_re_invites_follow_creditgates_route_and_pass_without_a_credit_check() {
    if !sipp_available() {
        return;
    }
    const CALLS: u64 = 20;
    let work = sipp_dir();
    let dir = work.path().to_path_buf();
    let uas = uas(&dir, "uas-reinvite", "uas-reinvite.xml", CALLS)
        .traced()
        .start();
    let switch_port = uas.port;
    let daemon = Daemon::start(&config(switch_port, "60s"), ACCOUNTS);
    let d = daemon.sip_addr();

    let uac = uac(&dir, "uac-reinvite", d, "uac-reinvite.xml", CALLS, 20)
        .set("account", "dave")
        .args(&["-d", "300"])
        .traced();
    let (uac, uas) = run_calls(uac, uas, CALLS);
    assert_eq!(
        uas.messages_of("INVITE", Dir::Received),
        vec![CALLS, CALLS],
        "the INVITE and the re-INVITE at the switch\n{}",
        uas.report()
    );

    // Sent by the customer: Request-URI = the switch's Contact, one Route = creditgate's
    // Record-Route with its token.
    let contact = format!("sip:switch@{SWITCH_IP}:{switch_port}");
    let sent: Vec<&Traced> = uac
        .messages
        .iter()
        .filter(|t| !t.received && t.is_request("INVITE") && t.in_dialog())
        .collect();
    assert_eq!(
        sent.iter()
            .map(|t| t.call_id())
            .collect::<HashSet<_>>()
            .len() as u64,
        CALLS,
        "re-INVITEs sent"
    );
    for t in &sent {
        let routes = all_headers(&t.msg, "Route");
        assert_eq!(routes.len(), 1, "{}", text(&t.msg));
        let route = uri_of(&routes[0]);
        assert!(
            route.starts_with(&format!("sip:{d};lr")) && param(&routes[0], "cgt").is_some(),
            "the re-INVITE's Route is not creditgate's Record-Route:\n{}",
            text(&t.msg)
        );
        assert!(
            start_line(&t.msg).starts_with(&format!("INVITE {contact}")),
            "{}",
            text(&t.msg)
        );
    }

    // Received by the switch: creditgate popped its Route and added no Record-Route (it adds
    // one to the new calls it admits), so it took the re-INVITE as an in-dialog request.
    let got: Vec<&Traced> = uas
        .messages
        .iter()
        .filter(|t| t.received && t.is_request("INVITE") && t.in_dialog())
        .collect();
    assert_eq!(
        got.iter()
            .map(|t| t.call_id())
            .collect::<HashSet<_>>()
            .len() as u64,
        CALLS,
        "re-INVITEs received"
    );
    for t in &got {
        assert!(
            all_headers(&t.msg, "Route").is_empty()
                && all_headers(&t.msg, "Record-Route").is_empty(),
            "the re-INVITE reached the switch with a Route or a Record-Route:\n{}",
            text(&t.msg)
        );
        assert!(
            start_line(&t.msg).starts_with(&format!("INVITE {contact}")),
            "{}",
            text(&t.msg)
        );
    }
}

/// `uac-refused.xml -set expect 486` against `uas-busy.xml`: creditgate admits the call, the
/// switch refuses it with 486, creditgate relays the 486 to the caller and the caller's ACK to
/// the switch (with the INVITE's branch, which `uas-busy.xml` checks).
#[test]
fn sipp_a_486_of_the_switch_reaches_the_caller_and_its_ack_reaches_the_switch() {
    if !sipp_available() {
        return;
    }
    const CALLS: u64 = 20;
    let work = sipp_dir();
    let dir = work.path().to_path_buf();
    let uas = uas(&dir, "uas-busy", "uas-busy.xml", CALLS).start();
    let switch_port = uas.port;
    let daemon = Daemon::start(&config(switch_port, "60s"), ACCOUNTS);

    let uac = uac(
        &dir,
        "uac-busy",
        daemon.sip_addr(),
        "uac-refused.xml",
        CALLS,
        20,
    )
    .set("account", "alice")
    .set("expect", "486");
    let (uac, uas) = run_calls(uac, uas, CALLS);
    assert_eq!(
        uac.messages_of("486", Dir::Received),
        vec![CALLS],
        "{}",
        uac.report()
    );
    assert_eq!(
        uas.messages_of("ACK", Dir::Received),
        vec![CALLS],
        "the ACKs of the 486 at the switch\n{}",
        uas.report()
    );
    let ids = refused_call_ids(&daemon.log(), "alice", "insufficient_credit");
    assert!(ids.is_empty(), "creditgate refused calls itself: {ids:?}");
}

/// The hold of the long call. The test does four things while it lasts: see the ACK at the
/// switch, rewrite the accounts and send SIGHUP, wait for the refresh log line, and get a 402
/// for a probe. Each takes milliseconds; 6 s leaves a margin for a loaded two-core machine, and
/// the test fails with a message, not a false pass, if the hold ended first.
const LONG_CALL_HOLD_MS: u64 = 6000;

/// `uac-longcall.xml` against `uas-reinvite.xml`: the call is set up, the account's balance goes
/// to 0 while it is held (accounts file rewritten, SIGHUP), and then its re-INVITE and BYE still
/// pass, while new calls of the account get 402 (a probe, then `uac-refused.xml`).
#[test]
fn sipp_a_long_call_outlives_its_balance_while_new_calls_of_the_account_get_402() {
    if !sipp_available() {
        return;
    }
    let work = sipp_dir();
    let dir = work.path().to_path_buf();
    let uas = uas(&dir, "uas-longcall", "uas-reinvite.xml", 1)
        .traced()
        .start();
    let switch_port = uas.port;
    // refresh_interval 60 s: the balance changes when the test sends SIGHUP, not before.
    let mut daemon = Daemon::start(&config(switch_port, "60s"), ACCOUNTS);
    let d = daemon.sip_addr();

    let call = uac(&dir, "uac-longcall", d, "uac-longcall.xml", 1, 1)
        .set("account", "alice")
        .args(&["-d", &LONG_CALL_HOLD_MS.to_string()])
        .traced()
        .start();

    // 1. The call is up: the ACK of its 200 went through creditgate to the switch.
    let up = call_is_up(&uas);
    if !up {
        daemon.fail("the long call's ACK did not reach the switch within 10 s");
    }
    let up_at = Instant::now();

    // 2. Balance 0, SIGHUP, and the refresh that applies it.
    daemon.rewrite_accounts(&accounts_with_balance("alice", "0.00"));
    let pid = daemon.pid().expect("the daemon's pid");
    let st = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -HUP {pid} failed");
    if !daemon.wait_for_log("changed=1", 1, Duration::from_secs(10)) {
        daemon.fail("no `snapshot refreshed ... changed=1` line within 10 s of SIGHUP");
    }

    // 3. Evidence that it applied: a new call of alice gets 402.
    let caller = Caller::bind();
    let probe = Request::invite(caller.addr(), d, &new_call_id(), "alice");
    caller.send(&probe.build(), d);
    let (r, _) = caller.recv_or_fail(WAIT, "a 402 for alice's probe INVITE");
    if status_code(&r) != Some(402) {
        daemon.fail(&format!(
            "alice's probe INVITE after the refresh got no 402:\n{}",
            text(&r)
        ));
    }
    caller.send(&probe.ack_for(&r).build(), d);

    // 4. ... before the long call's hold ended; else the re-INVITE below proves nothing.
    let early: Vec<String> = call
        .messages()
        .iter()
        .filter(|t| !t.received && t.is_request("INVITE") && t.in_dialog())
        .map(|t| text(&t.msg))
        .collect();
    if !early.is_empty() {
        daemon.fail(&format!(
            "the long call's hold of {LONG_CALL_HOLD_MS} ms ended before the balance change \
             was confirmed ({:?} after the call was up): the machine is too slow for this \
             test's margin, raise LONG_CALL_HOLD_MS\n{}",
            up_at.elapsed(),
            early.join("\n")
        ));
    }

    // 5. New calls of alice are refused while the long call is up.
    let refused = uac(&dir, "uac-refused", d, "uac-refused.xml", 3, 10)
        .set("account", "alice")
        .set("expect", "402")
        .start()
        .wait(Duration::from_secs(60));
    refused.assert_all_succeeded(3);

    // 6. The long call's re-INVITE (sent after the refresh), its ACK and the BYE passed.
    let call = call.wait(Duration::from_secs(60));
    let uas = uas.wait(Duration::from_secs(30));
    call.assert_all_succeeded(1);
    uas.assert_all_succeeded(1);
    assert_eq!(
        call.messages_of("200", Dir::Received),
        vec![1, 1, 1],
        "the 200s of the INVITE, the re-INVITE and the BYE\n{}",
        call.report()
    );
    let call_id = uas
        .messages
        .iter()
        .find(|t| t.received && t.is_request("INVITE"))
        .map(Traced::call_id)
        .expect("the long call's INVITE at the switch");
    for m in ["INVITE", "BYE"] {
        let at_switch: Vec<&Traced> = uas
            .messages
            .iter()
            .filter(|t| t.received && t.is_request(m) && t.in_dialog())
            .collect();
        assert!(
            !at_switch.is_empty(),
            "no in-dialog {m} at the switch\n{}",
            uas.report()
        );
        for t in at_switch {
            assert_eq!(t.call_id(), call_id);
            assert!(
                all_headers(&t.msg, "Record-Route").is_empty(),
                "creditgate took the {m} for a new call:\n{}",
                text(&t.msg)
            );
        }
    }
    // The probe and the three SIPp calls were refused, the long call never.
    let ids = refused_call_ids_at_least(&daemon, "alice", "insufficient_credit", 4);
    assert_eq!(ids.len(), 4, "alice's refused Call-IDs: {ids:?}");
    assert!(ids.contains(&probe.call_id), "{ids:?}");
    assert!(
        !ids.contains(&call_id),
        "the long call was refused: {ids:?}"
    );
}

/// Whether the UAS saw the ACK of the long call's 200 within 10 s.
fn call_is_up(uas: &Sipp) -> bool {
    uas.wait_for_message(Duration::from_secs(10), |t| {
        t.received
            && t.is_request("ACK")
            && header(&t.msg, "CSeq").is_some_and(|c| c.starts_with("1 "))
    })
}

/// `sipp-scenarios/load.sh` with a small bounded load (40 calls at 20 cps) against `uas.xml`:
/// it passes, and says so in its summary line.
#[test]
fn load_sh_runs_a_bounded_load_through_creditgate() {
    if !sipp_available() {
        return;
    }
    const CALLS: u64 = 40;
    let work = sipp_dir();
    let dir = work.path().to_path_buf();
    let uas = uas(&dir, "uas", "uas.xml", CALLS).start();
    let switch_port = uas.port;
    let daemon = Daemon::start(&config(switch_port, "60s"), ACCOUNTS);

    let out = dir.join("load");
    let stdout = std::fs::File::create(dir.join("load.out")).expect("create load.out");
    // Its own process group, so a hung run can be killed with the sipp and `timeout` under it.
    let mut child = Command::new("bash")
        .arg(scenario("load.sh"))
        .args(["--proxy", &daemon.sip_addr().to_string()])
        .args(["--account", "alice", "--calls", &CALLS.to_string()])
        .args(["--rate", "20", "--duration", "200"])
        .args(["--local-ip", &CALLER_IP.to_string()])
        .args(["--timeout", "30"])
        .arg("--out")
        .arg(&out)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn load.sh");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.try_wait().expect("poll load.sh") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!("load.sh did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let printed = std::fs::read_to_string(dir.join("load.out")).unwrap_or_default();
    assert!(status.success(), "load.sh: {status}\n{printed}");
    assert!(
        printed.contains(&format!(
            "result: PASS - {CALLS} successful, 0 failed of {CALLS} calls (sipp exit 0)"
        )),
        "{printed}"
    );
    assert!(out.join("screen.log").exists(), "no screen.log in --out");
    uas.wait(Duration::from_secs(30))
        .assert_all_succeeded(CALLS);
}

// ---------------------------------------------------------------------------------------------
// The README's examples

/// The `sipp` command lines of the code blocks in the section `## {heading}` of `doc` (relative
/// to the crate root), as argument lists after `sipp` (continuation lines joined; an outer
/// `timeout N`, redirections and a trailing `&` left out).
fn readme_sipp_commands(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc))
        .unwrap_or_else(|e| panic!("{doc}: {e}"));
    let start = text
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {heading:?}"));
    let section = &text[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut commands = Vec::new();
    for (i, block) in section.split("```").enumerate() {
        if i % 2 == 0 || !block.starts_with("sh\n") {
            continue;
        }
        for line in block.replace("\\\n", " ").lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(at) = words.iter().position(|w| *w == "sipp") else {
                continue;
            };
            if words.first().is_some_and(|w| w.starts_with('#')) {
                continue;
            }
            let args: Vec<String> = words[at + 1..]
                .iter()
                .take_while(|w| !w.starts_with('>') && !w.starts_with('&') && **w != "2>&1")
                .map(|w| (*w).to_owned())
                .collect();
            commands.push(args);
        }
    }
    commands
}

/// A README command made runnable here: the scenario file by its path, no `-p` (SIPp binds a
/// port it finds free), no `-nostdin` (added by [`SippCmd::start`]), and a UAC's target
/// replaced by the daemon's address. Returns the arguments and the `-m` call count.
fn runnable(args: &[String], target: Option<SocketAddr>) -> (Vec<String>, u64) {
    let mut out = Vec::new();
    let mut calls = 0;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-p" => {
                it.next();
            }
            "-nostdin" => {}
            "-sf" => {
                let file = it.next().expect("a scenario after -sf");
                let name = Path::new(file).file_name().expect("a file name");
                out.push("-sf".to_owned());
                out.push(scenario(name.to_str().unwrap()).display().to_string());
            }
            "-m" => {
                let n = it.next().expect("a count after -m");
                calls = n.parse().expect("-m N");
                out.push("-m".to_owned());
                out.push(n.clone());
            }
            host if !host.starts_with('-') && out.is_empty() => {
                out.push(target.expect("a UAC target").to_string());
            }
            _ => out.push(a.clone()),
        }
    }
    (out, calls)
}

fn is_uas(args: &[String]) -> bool {
    args.first().is_some_and(|a| a.starts_with('-'))
}

/// Every `sipp` command of `sipp-scenarios/README.md`'s "Against creditgate" section runs as
/// written (ports aside) against the real daemon with the shipped `config/accounts.toml`: each
/// UAS with the UAC after it, each refusal example alone; every call succeeds on both sides.
#[test]
fn sipp_readme_examples_run_against_creditgate() {
    if !sipp_available() {
        return;
    }
    let accounts =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/accounts.toml"))
            .expect("config/accounts.toml");
    let commands = readme_sipp_commands("sipp-scenarios/README.md", "Against creditgate");
    assert!(commands.len() >= 8, "too few examples found: {commands:?}");
    let work = sipp_dir();
    let dir = work.path().to_path_buf();
    let mut pending_uas: Option<(Sipp, u64)> = None;
    let mut refused = None;
    for (i, args) in commands.iter().enumerate() {
        let name: &'static str = Box::leak(format!("readme-{i}").into_boxed_str());
        if is_uas(args) {
            let (a, calls) = runnable(args, None);
            assert!(calls > 0, "the README command has no -m: {args:?}");
            let uas = SippCmd {
                name,
                dir: dir.clone(),
                args: a,
                trace_msg: false,
                listen: Some(SWITCH_IP),
            }
            .start();
            pending_uas = Some((uas, calls));
            continue;
        }
        let (daemon, uas) = match pending_uas.take() {
            Some((uas, calls)) => {
                let d = Daemon::start(&config(uas.port, "60s"), &accounts);
                (d, Some((uas, calls)))
            }
            None => {
                let switch = Switch::bind();
                let d = Daemon::start(&test_config(0, switch.addr(), "60s"), &accounts);
                refused = Some(switch);
                (d, None)
            }
        };
        let (a, calls) = runnable(args, Some(daemon.sip_addr()));
        assert!(calls > 0, "the README command has no -m: {args:?}");
        let uac = SippCmd {
            name,
            dir: dir.clone(),
            args: a,
            trace_msg: false,
            listen: None,
        }
        .start()
        .wait(Duration::from_secs(120));
        assert!(
            uac.count("Successful call") == calls,
            "README example {args:?}: not every call succeeded\n{}\n----- daemon log -----\n{}",
            uac.report(),
            daemon.log()
        );
        match uas {
            Some((uas, n)) => uas.wait(Duration::from_secs(60)).assert_all_succeeded(n),
            None => {
                if let Some(s) = refused.take() {
                    s.expect_nothing(QUIET);
                }
            }
        }
    }
}

/// The top-level README's "Try it with SIPp": the shipped `config/creditgate.toml` and
/// `config/accounts.toml` (ports moved: SIP and admin on port 0, upstream the UAS's port), the
/// UAS as written (plus `-m`, it runs until stopped there), alice's calls all complete, bob's all
/// get 402.
#[test]
fn sipp_top_readme_try_it_runs_with_the_shipped_config() {
    if !sipp_available() {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let accounts = std::fs::read_to_string(root.join("config/accounts.toml")).unwrap();
    let shipped = std::fs::read_to_string(root.join("config/creditgate.toml")).unwrap();
    let commands = readme_sipp_commands("README.md", "Try it with SIPp");
    assert_eq!(commands.len(), 3, "{commands:?}");
    let work = sipp_dir();
    let dir = work.path().to_path_buf();
    let (mut uas_args, _) = runnable(&commands[0], None);
    let (_, alice_calls) = runnable(&commands[1], Some(SocketAddr::new(DAEMON_IP, 1)));
    uas_args.extend(["-m".to_owned(), alice_calls.to_string()]);
    let uas = SippCmd {
        name: "try-uas",
        dir: dir.clone(),
        args: uas_args,
        trace_msg: false,
        listen: Some(SWITCH_IP),
    }
    .start();
    let cfg = shipped
        .replacen(
            "listen = [\"127.0.0.1:5060\"]",
            "listen = [\"127.0.0.1:0\"]",
            1,
        )
        .replacen(
            "upstream = [\"127.0.0.2:5080\"]",
            &format!("upstream = [\"127.0.0.2:{}\"]", uas.port),
            1,
        )
        .replacen("listen = \"127.0.0.1:9060\"", "listen = \"127.0.0.1:0\"", 1);
    assert!(
        cfg.contains("127.0.0.1:0\"]") && cfg.contains(&format!(":{}\"]", uas.port)),
        "the shipped config's addresses moved:\n{cfg}"
    );
    let daemon = Daemon::start(&cfg, &accounts);
    for (i, args) in commands[1..].iter().enumerate() {
        let (a, calls) = runnable(args, Some(daemon.sip_addr()));
        let run = SippCmd {
            name: if i == 0 { "try-alice" } else { "try-bob" },
            dir: dir.clone(),
            args: a,
            trace_msg: false,
            listen: None,
        }
        .start()
        .wait(Duration::from_secs(90));
        run.assert_all_succeeded(calls);
    }
    uas.wait(Duration::from_secs(60))
        .assert_all_succeeded(alice_calls);
    let refused = refused_call_ids(&daemon.log(), "bob", "insufficient_credit");
    assert_eq!(refused.len(), 10, "{refused:?}");
}
