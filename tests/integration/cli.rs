//! The command line as an operator meets it: `accounts` under a `file`-source configuration,
//! a closed output pipe, the help text, and the wording of a bad value.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{run_cli, test_config, ACCOUNTS, BIN, SWITCH_IP};

/// A file-source config (the harness accounts) in a temp dir; returns the dir and config path.
fn file_config() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(0, std::net::SocketAddr::new(SWITCH_IP, 5080), "60s");
    let path = dir.path().join("creditgate.toml");
    fs::write(&path, cfg).unwrap();
    fs::write(dir.path().join("accounts.toml"), ACCOUNTS).unwrap();
    (dir, path)
}

fn cli(args: &[&str], config: &Path) -> crate::harness::CliRun {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", config.to_str().unwrap()]);
    run_cli(&all, Duration::from_secs(20))
}

#[test]
fn accounts_list_and_show_read_the_file_source() {
    let (_dir, cfg) = file_config();
    let r = cli(&["accounts", "list"], &cfg);
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("file credit source"),
        "list should say the configuration uses the file source:\n{}",
        r.stderr
    );
    assert!(!r.stderr.contains("6379"), "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "id\tbalance\tdebit_limit\tenabled",
            "alice\t25.00\t0\t1",
            "bob\t0.00\t0\t1",
            "carol\t-42.17\t100\t1",
            "dave\t7.50\t-5\t1",
            "mallory\t1000\t0\t0",
        ],
        "{}",
        r.stdout
    );

    let r = cli(&["accounts", "show", "carol"], &cfg);
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("balance = \"-42.17\""), "{}", r.stdout);
    assert!(
        r.stdout.contains("valid: available credit 57.83 (enabled)"),
        "{}",
        r.stdout
    );
    let r = cli(&["accounts", "show", "nobody"], &cfg);
    assert_eq!(r.status.code(), Some(1), "{}", r.stdout);
    assert!(r.stdout.contains("no such account"), "{}", r.stdout);
}

#[test]
fn accounts_set_and_import_refuse_the_file_source() {
    let (dir, cfg) = file_config();
    let csv = dir.path().join("a.csv");
    fs::write(&csv, "id,balance\nx,1\n").unwrap();
    for args in [
        vec!["accounts", "set", "alice", "--balance", "1"],
        vec!["accounts", "import", csv.to_str().unwrap()],
    ] {
        let r = cli(&args, &cfg);
        assert!(!r.status.success(), "{args:?} succeeded:\n{}", r.stdout);
        assert!(
            r.stderr.contains("uses the file credit source") && r.stderr.contains("accounts.toml"),
            "{args:?} should say the configuration uses the file source:\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains("6379"), "{}", r.stderr);
    }
}

/// Runs `creditgate ARGS` with stdout a stream whose reading end is already closed (what `| head
/// -1` leaves once head exits): every write fails with EPIPE. (A socket pair rather than a pipe:
/// `std::io::pipe` is newer than the crate's MSRV; a stream socket fails writes the same way.)
fn run_into_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(reader);
    let writer = std::os::fd::OwnedFd::from(writer);
    let out = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_output_pipe_is_no_panic() {
    let (_dir, cfg) = file_config();
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["check-config", "--config", cfg],
        vec!["accounts", "list", "--config", cfg],
        vec!["accounts", "show", "alice", "--config", cfg],
    ] {
        let (code, stderr) = run_into_closed_pipe(&args);
        assert!(
            !stderr.contains("panicked"),
            "{args:?} panicked on a closed pipe:\n{stderr}"
        );
        assert_ne!(code, Some(101), "{args:?}: {stderr}");
        assert!(code.is_some(), "{args:?} died of a signal");
    }
}

#[test]
fn config_option_help_shows_the_default_path() {
    for args in [
        vec!["--help"],
        vec!["check-config", "--help"],
        vec!["accounts", "list", "--help"],
    ] {
        let r = run_cli(&args, Duration::from_secs(10));
        assert!(r.status.success(), "{args:?}: {}", r.stderr);
        let line = r
            .stdout
            .lines()
            .find(|l| l.contains("--config"))
            .unwrap_or_else(|| panic!("{args:?}: no --config in\n{}", r.stdout));
        assert!(
            !line.contains("default `run`"),
            "{args:?}: the --config help speaks of `run` only: {line}"
        );
        assert!(
            r.stdout
                .contains("[default: /etc/creditgate/creditgate.toml]"),
            "{args:?}: the default path is not shown:\n{}",
            r.stdout
        );
    }
}

#[test]
fn a_bad_duration_says_how_to_write_one() {
    let (dir, cfg) = file_config();
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "refresh_interval = \"60s\"",
        "refresh_interval = \"5 minutes ago\"",
    );
    fs::write(&cfg, text).unwrap();
    let r = cli(&["check-config"], &cfg);
    assert_eq!(r.status.code(), Some(2));
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("credit.refresh_interval"))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(!line.contains("expected number at"), "{line}");
    assert!(line.contains("\"60s\""), "{line}");
    drop(dir);
}
