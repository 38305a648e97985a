//! Operating live credit (issue 11): the low-credit publisher against a real `redis-server`
//! (driven directly through the library: the daemon wiring is tested with the proxy), and
//! `creditgate accounts show` with and without a running daemon.

use std::fs;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rust_decimal::Decimal;
use tokio_util::sync::CancellationToken;

use creditgate::daemon::live::{low_credit_channel, spawn_publisher, LiveCounters};
use creditgate::live::calls::LowCredit;

use crate::harness::{config_with_admin, run_cli, Daemon, Switch, ACCOUNTS, DAEMON_IP};
use crate::redis::{RedisServer, PREFIX};

fn event(id: &str, live: &str) -> LowCredit {
    LowCredit {
        account: Arc::from(id),
        live_available: Decimal::from_str_exact(live).unwrap(),
        threshold: Decimal::from_str_exact("2.50").unwrap(),
        calls_in_progress: 3,
    }
}

/// A subscription to `{PREFIX}events` on `redis`, confirmed.
async fn subscribe(redis: &RedisServer) -> ::redis::aio::PubSub {
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    ps.subscribe(format!("{PREFIX}events")).await.unwrap();
    ps
}

/// The next message of `ps` (at most 10 s: only bounds a failure).
async fn next_payload(ps: &mut ::redis::aio::PubSub) -> String {
    let msg = tokio::time::timeout(Duration::from_secs(10), ps.on_message().next())
        .await
        .expect("a low-credit event within 10 s")
        .expect("the subscription is open");
    String::from_utf8(msg.get_payload_bytes().to_vec()).unwrap()
}

/// Polls `cond` for at most 20 s.
async fn eventually(cond: impl Fn() -> bool) -> bool {
    for _ in 0..400 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Events reach a real subscriber as the documented JSON; with Redis down they are counted
/// failed without blocking the sender; after a restart the publisher reconnects by itself.
#[tokio::test]
async fn low_credit_events_are_published_and_survive_a_redis_restart() {
    let mut redis = RedisServer::start();
    let mut ps = subscribe(&redis).await;
    let counters = Arc::new(LiveCounters::default());
    let (tx, rx) = low_credit_channel(Arc::clone(&counters));
    let shutdown = CancellationToken::new();
    let task = spawn_publisher(
        &redis.url(),
        PREFIX,
        rx,
        Arc::clone(&counters),
        shutdown.clone(),
    )
    .unwrap();

    // 2026-12-02T17:05:00Z
    assert!(tx.send(event("alice", "1.2300"), 1_796_231_100));
    let got = next_payload(&mut ps).await;
    assert_eq!(
        got,
        r#"{"event":"low_credit","account":"alice","live_available":"1.2300","threshold":"2.50","calls_in_progress":3,"time":"2026-12-02T17:05:00Z"}"#
    );
    assert!(eventually(|| counters.events_published.get() == 1).await);

    // Redis down: the sender never blocks; the publisher counts what it cannot publish.
    drop(ps);
    redis.kill();
    for i in 0..5 {
        assert!(tx.send(event(&format!("down{i}"), "1"), 0));
    }
    assert!(
        eventually(|| counters.events_failed.get() == 5).await,
        "failed {}",
        counters.events_failed.get()
    );

    // Back up: a later event is published again (the back-off is at most a few seconds here).
    redis.restart();
    let mut ps = subscribe(&redis).await;
    let mut delivered = None;
    for i in 0..100 {
        tx.send(event(&format!("up{i}"), "2"), 0);
        if let Ok(p) = tokio::time::timeout(Duration::from_millis(200), next_payload(&mut ps)).await
        {
            delivered = Some(p);
            break;
        }
    }
    let delivered = delivered.expect("an event published after the restart");
    assert!(delivered.contains("\"account\":\"up"), "{delivered}");
    assert_eq!(counters.events_dropped.get(), 0);
    shutdown.cancel();
    task.await.unwrap();
}

/// `accounts show` with a daemon answering on `[admin] listen` (with a bearer token): the
/// store's record, then the live figures under their heading.
#[test]
fn accounts_show_prints_the_running_daemons_live_figures() {
    let side = tempfile::tempdir().unwrap();
    let token = side.path().join("admin.token");
    fs::write(&token, "t0ken\n").unwrap();
    let switch = Switch::bind();
    let cfg = config_with_admin("60s", switch.addr()).replace(
        "[admin]\n",
        &format!("[admin]\ntoken_file = \"{}\"\n", token.display()),
    ) + "\n[live]\ntrack_calls = true\n";
    let d = Daemon::start(&cfg, ACCOUNTS);
    let admin = d.admin_addr();
    // The CLI reads the same configuration with the bound admin port written in.
    let cli_cfg = d.dir().join("cli.toml");
    let text = cfg.replace(
        &format!("listen = \"{DAEMON_IP}:0\"\n"),
        &format!("listen = \"{admin}\"\n"),
    );
    assert!(text.contains(&admin.to_string()), "{text}");
    fs::write(&cli_cfg, text).unwrap();
    let r = run_cli(
        &[
            "accounts",
            "show",
            "alice",
            "--config",
            cli_cfg.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(r.status.code(), Some(0), "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("valid: available credit 25.00"),
        "{}",
        r.stdout
    );
    let heading = format!("live (from the running daemon at {admin}):");
    let after = r
        .stdout
        .split_once(&heading)
        .unwrap_or_else(|| panic!("no {heading:?} in\n{}", r.stdout))
        .1;
    assert!(after.contains("live_available: 25.00"), "{}", r.stdout);

    // A wrong token is said, and the record is still shown with exit 0.
    fs::write(&token, "wrong\n").unwrap();
    let r = run_cli(
        &[
            "accounts",
            "show",
            "alice",
            "--config",
            cli_cfg.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(r.stdout.contains("refused the admin token"), "{}", r.stdout);
    assert!(
        r.stdout.contains("valid: available credit 25.00"),
        "{}",
        r.stdout
    );
}

/// `accounts show` with nothing answering on `[admin] listen`: says so, shows the record, exit 0.
#[test]
fn accounts_show_without_a_daemon_says_so() {
    // A TCP port held by this test but not listening: connecting is refused, and no other
    // test can take the port meanwhile.
    let held = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    held.bind(&std::net::SocketAddr::new(DAEMON_IP, 0).into())
        .unwrap();
    let port = held.local_addr().unwrap().as_socket().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let switch = Switch::bind();
    let cfg = config_with_admin("60s", switch.addr()).replace(
        &format!("listen = \"{DAEMON_IP}:0\"\n"),
        &format!("listen = \"{DAEMON_IP}:{port}\"\n"),
    );
    let path = dir.path().join("creditgate.toml");
    fs::write(&path, cfg).unwrap();
    fs::write(dir.path().join("accounts.toml"), ACCOUNTS).unwrap();
    let r = run_cli(
        &[
            "accounts",
            "show",
            "carol",
            "--config",
            path.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("valid: available credit 57.83"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("no running daemon: live figures not shown"),
        "{}",
        r.stdout
    );
}
