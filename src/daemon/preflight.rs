//! What `run` reads at start besides the configuration file, read once and the same way for
//! `check-config`: the MAC key (`sip.secret_file`), the admin API's bearer token
//! (`admin.token_file`) and, with the `file` credit source, the accounts file with every record
//! in it. A fault in any of them is a configuration fault (exit status 2 in both commands),
//! reported as a [`ConfigProblem`] naming the key, all of them at once.
//!
//! * `sip.secret_file` is read as raw bytes; one trailing line end (`\n` or `\r\n`) is not key
//!   material and is dropped, nothing else is trimmed. What remains must be at least
//!   [`MIN_SECRET_LEN`] (16) bytes, like an inline `sip.secret`: an empty or short key would let
//!   anyone forge Record-Route tokens and Via branches.
//! * `admin.token_file` is read as UTF-8 text, trimmed of surrounding whitespace; it must not be
//!   empty (an empty token would let any bearer in).
//! * The accounts file must be readable, valid, and hold no bad record: at start a bad record
//!   is an operator's typo to fix, not data to skip. Later refreshes (the timer, SIGHUP) skip
//!   and count bad records and keep the last snapshot on a failed load (SPEC section 5), so an
//!   edit of a running system never takes it down.
//!
//! Boundary: blocking file reads, called before the runtimes start. No logging: `check-config`
//! prints the problems, `run` prints them and exits.

use std::path::Path;

use crate::config::{Config, ConfigProblem, SourceKind, MIN_SECRET_LEN};
use crate::core::keys::Keys;
use crate::source::file::parse_accounts;

/// What the files gave: the key the daemon signs with, the admin token, and what the accounts
/// file holds.
pub struct Prepared {
    pub keys: Keys,
    /// Where the key came from.
    pub key_source: KeySource,
    /// The admin bearer token, when `admin.token_file` is set.
    pub admin_token: Option<String>,
    /// Accounts in the `file` source's file (`None` for the Redis source).
    pub file_accounts: Option<usize>,
}

/// Where the MAC key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Inline,
    File,
    /// Neither `sip.secret` nor `sip.secret_file`: random for this run (a warning at start).
    Random,
}

/// Reads every file the configuration names, as `run` uses them. `Err` holds every problem.
pub fn check(cfg: &Config) -> Result<Prepared, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let key = read_key(cfg).map_err(|p| problems.push(p)).ok();
    let admin_token = match &cfg.admin.token_file {
        Some(path) => match read_token(path) {
            Ok(t) => Some(t),
            Err(message) => {
                problems.push(problem("admin.token_file", message));
                None
            }
        },
        None => None,
    };
    let file_accounts = match cfg.credit.source {
        SourceKind::File => read_accounts(&cfg.credit.file, &mut problems),
        _ => None,
    };
    match key {
        Some((keys, key_source)) if problems.is_empty() => Ok(Prepared {
            keys,
            key_source,
            admin_token,
            file_accounts,
        }),
        _ => Err(problems),
    }
}

fn problem(key: &str, message: String) -> ConfigProblem {
    ConfigProblem {
        key: key.to_owned(),
        message,
    }
}

/// The key material of a secret file's bytes: the bytes without one trailing `\n` or `\r\n`.
pub fn key_material(bytes: &[u8]) -> &[u8] {
    let b = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if b.len() < bytes.len() {
        b.strip_suffix(b"\r").unwrap_or(b)
    } else {
        b
    }
}

fn read_key(cfg: &Config) -> Result<(Keys, KeySource), ConfigProblem> {
    if !cfg.sip.secret.is_empty() {
        return Ok((Keys::new(cfg.sip.secret.as_bytes()), KeySource::Inline));
    }
    if let Some(path) = &cfg.sip.secret_file {
        let bytes = std::fs::read(path).map_err(|e| {
            problem(
                "sip.secret_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let key = key_material(&bytes);
        if key.len() < MIN_SECRET_LEN {
            return Err(problem(
                "sip.secret_file",
                format!(
                    "{} holds {} bytes of key material; use at least {MIN_SECRET_LEN} bytes (read as raw \
                     bytes, one trailing newline dropped), e.g. `openssl rand -hex 32 > {}`",
                    path.display(),
                    key.len(),
                    path.display()
                ),
            ));
        }
        return Ok((Keys::new(key), KeySource::File));
    }
    let mut key = [0u8; 32];
    if getrandom::fill(&mut key).is_err() {
        // Extremely unlikely; fall back to time-derived entropy rather than refuse to start.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        key[..16].copy_from_slice(&t.to_le_bytes());
        key[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    Ok((Keys::new(&key), KeySource::Random))
}

/// The admin token of `path`: UTF-8, trimmed, not empty.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(format!(
            "{} is empty (an empty token would let any bearer in)",
            path.display()
        ));
    }
    Ok(t.to_owned())
}

/// Reads and parses the accounts file; pushes a problem per fault and per bad record.
fn read_accounts(path: &Path, problems: &mut Vec<ConfigProblem>) -> Option<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(problem(
                "credit.file",
                format!("cannot read {}: {e}", path.display()),
            ));
            return None;
        }
    };
    match parse_accounts(&text, path) {
        Err(e) => {
            problems.push(problem("credit.file", e.to_string()));
            None
        }
        Ok(report) => {
            for bad in &report.bad {
                problems.push(problem(
                    "credit.file",
                    format!("{}: {bad} (bad record)", path.display()),
                ));
            }
            for bad in &report.bad_tariffs {
                problems.push(problem(
                    "credit.file",
                    format!("{}: {bad} (bad tariff)", path.display()),
                ));
            }
            Some(report.accounts.len())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_material_drops_one_line_end_only() {
        assert_eq!(key_material(b""), b"");
        assert_eq!(key_material(b"\n"), b"");
        assert_eq!(key_material(b"\r\n"), b"");
        assert_eq!(key_material(b"abc\n\n"), b"abc\n");
        assert_eq!(key_material(b"abc\r"), b"abc\r");
        assert_eq!(key_material(b" abc \n"), b" abc ");
        assert_eq!(key_material(b"\x00\x01"), b"\x00\x01");
    }

    fn cfg_with_secret_file(dir: &Path, content: &[u8]) -> Config {
        std::fs::write(dir.join("k"), content).unwrap();
        std::fs::write(dir.join("a.toml"), "").unwrap();
        Config::from_toml_str(
            "[sip]\nupstream = [\"127.0.0.2:5080\"]\nsecret_file = \"k\"\n[credit]\nfile = \"a.toml\"\n",
            dir,
        )
        .unwrap()
    }

    #[test]
    fn short_secret_file_is_a_problem_of_sip_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        for short in [&b""[..], b"\n", b"abc", b"0123456789abcde\r\n"] {
            let problems = check(&cfg_with_secret_file(dir.path(), short))
                .err()
                .unwrap();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert_eq!(problems[0].key, "sip.secret_file");
            assert!(problems[0].message.contains("at least 16"), "{problems:?}");
        }
        let ok = check(&cfg_with_secret_file(dir.path(), b"0123456789abcdef\n")).unwrap();
        assert_eq!(ok.key_source, KeySource::File);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::from_toml_str(
            "[sip]\nupstream = [\"127.0.0.2:5080\"]\nsecret_file = \"nokey\"\n\
             [credit]\nfile = \"noaccounts.toml\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"notoken\"\n",
            dir.path(),
        )
        .unwrap();
        let keys: Vec<String> = check(&cfg)
            .err()
            .unwrap()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, ["sip.secret_file", "admin.token_file", "credit.file"]);
    }
}
