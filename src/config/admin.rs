//! `[admin]`: the HTTP admin API's address and token file: the typed table, its defaults, its
//! raw (serde) form, its checks and their tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::values::{optional_path, parse_socket_addr, path_text};
use super::{value, Checker};

/// `[admin]`: the HTTP admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// TCP address of the admin HTTP server (`/metrics /health /ready /accounts/{id} /refresh`).
    /// Default `"127.0.0.1:9060"`; `""` = `None` = disabled. A non-loopback address requires
    /// `token_file`.
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token for the admin API. `""` = `None` (default) = no token: keep
    /// the API on loopback then. Relative paths are resolved against the config file's directory.
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9060))),
            token_file: None,
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_file: Option<String>,
}

pub(super) fn check_admin(raw: RawAdmin, base_dir: &Path, ck: &mut Checker) -> AdminConfig {
    let d = AdminConfig::default();
    let listen = value(ck, "admin.listen", raw.listen, d.listen, |s| {
        if s.is_empty() {
            Ok(None)
        } else {
            parse_socket_addr(&s).map(Some)
        }
    });
    let token_file = value(ck, "admin.token_file", raw.token_file, d.token_file, |s| {
        Ok(optional_path(&s, base_dir))
    });
    if let Some(addr) = listen {
        if !addr.ip().is_loopback() && token_file.is_none() && !ck.has_problem("admin.token_file") {
            ck.push(
                "admin.listen",
                format!(
                    "{addr} is reachable from other hosts: set admin.token_file, or listen on \
                     127.0.0.1"
                ),
            );
        }
    }
    AdminConfig { listen, token_file }
}

impl From<&AdminConfig> for RawAdmin {
    /// The typed values in the file's notation, for `Config::effective_toml`.
    fn from(a: &AdminConfig) -> Self {
        RawAdmin {
            listen: Some(a.listen.map(|a| a.to_string()).unwrap_or_default()),
            token_file: Some(path_text(a.token_file.as_ref())),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use crate::config::tests::{ok, problem_at, with};

    #[test]
    fn unknown_key_in_admin() {
        problem_at(&with("[admin]\ntoken = \"x\"\n"), "admin.token");
    }

    #[test]
    fn admin_rules() {
        assert_eq!(ok(&with("[admin]\nlisten = \"\"\n")).admin.listen, None);
        assert_eq!(
            ok(&with("[admin]\nlisten = \"[::1]:9060\"\n")).admin.listen,
            Some("[::1]:9060".parse().unwrap())
        );
        problem_at(
            &with("[admin]\nlisten = \"0.0.0.0:9060\"\n"),
            "admin.listen",
        );
        ok(&with(
            "[admin]\nlisten = \"0.0.0.0:9060\"\ntoken_file = \"token\"\n",
        ));
    }
}
