//! The documentation's commands, run: recipes marked `<!-- recipe:NAME -->` in `docs/*.md` are
//! extracted and run with their paths moved into a temp directory, and their result is checked
//! with the binary (e.g. `check-config` accepts the key files the secrets recipe writes).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::harness::{run_cli, test_config, ACCOUNTS, SWITCH_IP};

/// The first fenced code block after `<!-- recipe:{name}` in `doc` (relative to the crate root).
pub fn recipe(doc: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let marker = format!("<!-- recipe:{name}");
    let at = text
        .find(&marker)
        .unwrap_or_else(|| panic!("{doc} has no {marker} marker"));
    let rest = &text[at..];
    let start = rest.find("```").expect("a code block after the marker");
    let body = &rest[start..];
    let body = &body[body.find('\n').expect("a fence line") + 1..];
    let end = body.find("```").expect("the end of the code block");
    body[..end].to_owned()
}

/// docs/operations.md's secrets recipe writes two owner-only files with enough key material,
/// which `check-config` accepts as `sip.secret_file` and `admin.token_file`.
#[test]
fn operations_secrets_recipe_writes_keys_check_config_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc-creditgate");
    fs::create_dir(&etc).unwrap();
    let script =
        recipe("docs/operations.md", "secrets").replace("/etc/creditgate", etc.to_str().unwrap());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the recipe failed:\n{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["sip-secret", "admin-token"] {
        let meta = fs::metadata(etc.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        assert!(meta.len() > 16, "{name} is {} bytes", meta.len());
    }
    let cfg = test_config(0, std::net::SocketAddr::new(SWITCH_IP, 5080), "60s")
        .replace(
            &format!("secret = \"{}\"", crate::harness::SECRET),
            "secret_file = \"etc-creditgate/sip-secret\"",
        )
        .replace(
            "[admin]\nlisten = \"\"",
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"etc-creditgate/admin-token\"",
        );
    assert!(cfg.contains("secret_file") && cfg.contains("token_file"));
    fs::write(dir.path().join("creditgate.toml"), cfg).unwrap();
    fs::write(dir.path().join("accounts.toml"), ACCOUNTS).unwrap();
    let check = run_cli(
        &[
            "check-config",
            "--config",
            dir.path().join("creditgate.toml").to_str().unwrap(),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(check.status.code(), Some(0), "{}", check.stderr);
}

/// The first ```json block after the heading line `heading` in `doc`.
fn json_after(doc: &str, heading: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(doc);
    let text = fs::read_to_string(&path).unwrap();
    let at = text
        .find(heading)
        .unwrap_or_else(|| panic!("{doc}: no {heading:?}"));
    let rest = &text[at..];
    let start = rest.find("```json\n").expect("a json block") + "```json\n".len();
    let end = rest[start..].find("```").expect("its end") + start;
    serde_json::from_str(&rest[start..end])
        .unwrap_or_else(|e| panic!("{doc}: the example is not JSON: {e}"))
}

/// docs/operations.md's `GET /accounts/bob` example is what the daemon answers for the shipped
/// `config/accounts.toml` (the snapshot's age and generation aside, which vary).
#[test]
fn operations_accounts_bob_example_is_what_the_daemon_answers() {
    let accounts =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config/accounts.toml"))
            .unwrap();
    let switch = crate::harness::Switch::bind();
    let cfg = crate::harness::config_with_admin("60s", switch.addr());
    let d = crate::harness::Daemon::start(&cfg, &accounts);
    let r = crate::harness::get(d.admin_addr(), "/accounts/bob");
    assert_eq!(r.status, 200, "{}", r.body);
    let mut got = r.json();
    let mut want = json_after("docs/operations.md", "### `GET /accounts/{id}`");
    for v in [&mut got, &mut want] {
        let snap = v["snapshot"].as_object_mut().expect("a snapshot object");
        snap.remove("age_seconds");
        snap.remove("generation");
    }
    assert_eq!(
        got,
        want,
        "docs/operations.md's example differs from the daemon's answer:\n{}",
        serde_json::to_string_pretty(&got).unwrap()
    );
}
