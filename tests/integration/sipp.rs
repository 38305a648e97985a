//! SIPp end to end through the real daemon (issue 2, acceptance 3): the customer scenarios of
//! `sipp-scenarios/` against the switch scenario, with creditgate in the middle.
//!
//! SIPp is Debian's `sip-tester`; `scripts/test.sh` installs it. Without it these tests say
//! "skipped: sipp not installed" — except under CI (`CI` set), where a missing SIPp is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

fn sipp_available() -> bool {
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
        eprintln!("skipped: sipp not installed (apt-get install sip-tester)");
    }
    ok
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("sipp-scenarios")
        .join(name)
}

/// A SIPp process with its screen written to a file, killed at a deadline.
struct Sipp {
    child: Child,
    screen: PathBuf,
    name: &'static str,
}

impl Sipp {
    fn spawn(name: &'static str, dir: &Path, args: &[String]) -> Sipp {
        let screen = dir.join(format!("{name}.screen"));
        let child = Command::new("sipp")
            .args(args)
            .args(["-nostdin", "-trace_screen", "-screen_file"])
            .arg(&screen)
            .args(["-trace_err", "-error_file"])
            .arg(dir.join(format!("{name}.errors")))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sipp");
        Sipp {
            child,
            screen,
            name,
        }
    }

    /// Waits for SIPp to exit (at most `limit`, then kills it); returns (exit code, screen).
    fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().expect("poll sipp") {
                let screen = std::fs::read_to_string(&self.screen).unwrap_or_default();
                return (st.code(), screen);
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

/// The cumulative counter of a line such as `Successful call | 0 | 500` on SIPp's final screen.
fn final_count(screen: &str, label: &str) -> u64 {
    screen
        .lines()
        .rev()
        .filter(|l| l.trim_start().starts_with(label))
        .find_map(|l| l.split('|').nth(2).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no `{label}` line on the SIPp screen:\n{screen}"))
}

#[test]
fn sipp_500_allowed_calls_at_100_cps_complete_through_creditgate() {
    if !sipp_available() {
        return;
    }
    let port = free_udp_port(DAEMON_IP);
    let switch_port = free_udp_port(SWITCH_IP);
    let daemon = Daemon::start(
        &test_config(
            port,
            format!("{SWITCH_IP}:{switch_port}").parse().unwrap(),
            "60s",
        ),
        ACCOUNTS,
    );
    let dir = daemon.dir().to_path_buf();
    let uas = Sipp::spawn(
        "uas",
        &dir,
        &[
            "-sf".into(),
            scenario("uas.xml").display().to_string(),
            "-i".into(),
            SWITCH_IP.to_string(),
            "-p".into(),
            switch_port.to_string(),
            "-m".into(),
            "500".into(),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let uac = Sipp::spawn(
        "uac",
        &dir,
        &[
            daemon.sip_addr().to_string(),
            "-sf".into(),
            scenario("uac-allowed.xml").display().to_string(),
            "-set".into(),
            "account".into(),
            "alice".into(),
            "-i".into(),
            CALLER_IP.to_string(),
            "-p".into(),
            free_udp_port(CALLER_IP).to_string(),
            "-m".into(),
            "500".into(),
            "-r".into(),
            "100".into(),
            "-d".into(),
            "500".into(),
            "-timeout".into(),
            "90s".into(),
        ],
    );
    let (code, screen) = uac.wait(Duration::from_secs(120));
    assert_eq!(
        final_count(&screen, "Successful call"),
        500,
        "{screen}\n{}",
        daemon.log()
    );
    assert_eq!(final_count(&screen, "Failed call"), 0, "{screen}");
    assert_eq!(code, Some(0), "{screen}");
    let (ucode, uscreen) = uas.wait(Duration::from_secs(30));
    assert_eq!(final_count(&uscreen, "Successful call"), 500, "{uscreen}");
    assert_eq!(ucode, Some(0), "{uscreen}");
}

#[test]
fn sipp_200_refused_calls_each_get_402_and_never_reach_the_switch() {
    if !sipp_available() {
        return;
    }
    let switch = Switch::bind();
    let port = free_udp_port(DAEMON_IP);
    let daemon = Daemon::start(&test_config(port, switch.addr(), "60s"), ACCOUNTS);
    let dir = daemon.dir().to_path_buf();
    let uac = Sipp::spawn(
        "uac-refused",
        &dir,
        &[
            daemon.sip_addr().to_string(),
            "-sf".into(),
            scenario("uac-refused.xml").display().to_string(),
            "-set".into(),
            "account".into(),
            "bob".into(),
            "-set".into(),
            "expect".into(),
            "402".into(),
            "-i".into(),
            CALLER_IP.to_string(),
            "-p".into(),
            free_udp_port(CALLER_IP).to_string(),
            "-m".into(),
            "200".into(),
            "-r".into(),
            "100".into(),
            "-timeout".into(),
            "60s".into(),
        ],
    );
    let (code, screen) = uac.wait(Duration::from_secs(90));
    assert_eq!(
        final_count(&screen, "Successful call"),
        200,
        "{screen}\n{}",
        daemon.log()
    );
    assert_eq!(final_count(&screen, "Failed call"), 0, "{screen}");
    assert_eq!(code, Some(0), "{screen}");
    switch.expect_nothing(QUIET);
    assert_eq!(
        daemon.log().matches("refused").count(),
        200,
        "one refusal log line per call"
    );
}
