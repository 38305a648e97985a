//! `[identify]`: how a request is mapped to an account: the typed table, its default, its raw
//! (serde) form, its checks and their tests.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::values::is_token;
use super::{list, report_duplicates, Checker};

/// One identification rule of `identify.order`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdentifyRule {
    /// `"source_ip"`: longest-prefix match of the packet's source address over accounts' `ips`.
    SourceIp,
    /// `"header:NAME"`: the value of header NAME (a SIP token, matched case-insensitively) is the
    /// account id.
    Header(String),
    /// `"auth_user"`: the `username` of Authorization / Proxy-Authorization (not verified).
    AuthUser,
    /// `"from_user"`: the user part of the From URI.
    FromUser,
}

impl fmt::Display for IdentifyRule {
    /// The rule as written in the config file.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentifyRule::SourceIp => f.write_str("source_ip"),
            IdentifyRule::Header(name) => write!(f, "header:{name}"),
            IdentifyRule::AuthUser => f.write_str("auth_user"),
            IdentifyRule::FromUser => f.write_str("from_user"),
        }
    }
}

/// `[identify]`: how a request is mapped to an account.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentifyConfig {
    /// Rules tried in order; the first that finds an account wins. Default `["source_ip",
    /// "header:X-Account-Id", "auth_user", "from_user"]`. Not empty, no rule twice. Drop the rules
    /// your customers could abuse: `from_user` trusts what the caller writes.
    pub order: Vec<IdentifyRule>,
}

impl Default for IdentifyConfig {
    fn default() -> Self {
        IdentifyConfig {
            order: vec![
                IdentifyRule::SourceIp,
                IdentifyRule::Header("X-Account-Id".to_owned()),
                IdentifyRule::AuthUser,
                IdentifyRule::FromUser,
            ],
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentify {
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<Vec<String>>,
}

pub(super) fn check_identify(raw: RawIdentify, ck: &mut Checker) -> IdentifyConfig {
    let d = IdentifyConfig::default();
    let order = list(
        ck,
        "identify.order",
        raw.order,
        d.order,
        parse_identify_rule,
    );
    if order.is_empty() && !ck.has_problem("identify.order") {
        ck.push(
            "identify.order",
            "must list at least one rule (source_ip, header:NAME, auth_user, from_user)",
        );
    }
    if !ck.has_problem("identify.order") {
        // Header names are case-insensitive, so header:X-A and header:x-a are the same rule.
        report_duplicates(ck, "identify.order", &order, |rule| match rule {
            IdentifyRule::Header(name) => IdentifyRule::Header(name.to_ascii_lowercase()),
            other => other.clone(),
        });
    }
    IdentifyConfig { order }
}

fn parse_identify_rule(s: &str) -> Result<IdentifyRule, String> {
    match s {
        "source_ip" => Ok(IdentifyRule::SourceIp),
        "auth_user" => Ok(IdentifyRule::AuthUser),
        "from_user" => Ok(IdentifyRule::FromUser),
        _ => match s.strip_prefix("header:") {
            Some(name) if is_token(name) => Ok(IdentifyRule::Header(name.to_owned())),
            Some(name) => Err(format!(
                "{name:?} is not a header name (in \"header:NAME\", NAME is a SIP token such as \
                 X-Account-Id)"
            )),
            None => Err(format!(
                "unknown rule {s:?} (expected one of: source_ip, header:NAME, auth_user, from_user)"
            )),
        },
    }
}

impl From<&IdentifyConfig> for RawIdentify {
    /// The typed values in the file's notation, for `Config::effective_toml`.
    fn from(i: &IdentifyConfig) -> Self {
        RawIdentify {
            order: Some(i.order.iter().map(ToString::to_string).collect()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::tests::{ok, problem_at, with};

    #[test]
    fn unknown_key_in_identify() {
        let msg = problem_at(&with("[identify]\nrules = []\n"), "identify.rules");
        assert_eq!(msg, "unknown key (expected one of: order)");
    }

    #[test]
    fn identify_rules() {
        let msg = problem_at(
            &with("[identify]\norder = [\"source_ip\", \"caller_id\"]\n"),
            "identify.order[1]",
        );
        assert!(msg.starts_with("unknown rule \"caller_id\""), "{msg}");
        problem_at(
            &with("[identify]\norder = [\"header:\"]\n"),
            "identify.order[0]",
        );
        problem_at(
            &with("[identify]\norder = [\"header:X Account\"]\n"),
            "identify.order[0]",
        );
        problem_at(&with("[identify]\norder = []\n"), "identify.order");
        let msg = problem_at(
            &with("[identify]\norder = [\"header:X-Acct\", \"from_user\", \"header:x-acct\"]\n"),
            "identify.order[2]",
        );
        assert_eq!(msg, "repeats identify.order[0]");
        let c = ok(&with(
            "[identify]\norder = [\"header:P-Asserted-Identity\", \"auth_user\"]\n",
        ));
        assert_eq!(
            c.identify.order,
            vec![
                IdentifyRule::Header("P-Asserted-Identity".into()),
                IdentifyRule::AuthUser
            ]
        );
    }
}
