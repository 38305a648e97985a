//! The `file` credit source: a TOML file of `[[account]]` tables, re-read every
//! `refresh_interval` and on SIGHUP. Money is written as strings (`balance = "12.50"`) or
//! integers; floats are refused because they cannot hold money exactly.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{BadRecord, LoadReport, SourceError};
use crate::credit::Account;

/// Fields an account table may have.
const FIELDS: [&str; 12] = [
    "id",
    "balance",
    "debit_limit",
    "enabled",
    "ips",
    "tech_prefix",
    "currency",
    "max_channels",
    "max_cps",
    "rate_per_min",
    "daily_spend_limit",
    "spent_today",
];

/// The accounts file.
#[derive(Debug, Clone)]
pub struct FileSource {
    pub path: PathBuf,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSource { path: path.into() }
    }

    /// Reads and parses the whole file.
    pub async fn load(&self) -> Result<LoadReport, SourceError> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| SourceError::Io {
                path: self.path.display().to_string(),
                source,
            })?;
        parse_accounts(&text, &self.path)
    }
}

/// Parses an accounts file. A record with a bad field is reported in `bad` and left out; the
/// rest load.
pub fn parse_accounts(text: &str, path: &Path) -> Result<LoadReport, SourceError> {
    let fmt_err = |message: String| SourceError::Format {
        path: path.display().to_string(),
        message,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| fmt_err(e.to_string()))?;
    for key in table.keys() {
        if key != "account" {
            return Err(fmt_err(format!(
                "unknown top-level key `{key}` (expected [[account]] tables)"
            )));
        }
    }
    let list = match table.get("account") {
        None => return Ok(LoadReport::default()),
        Some(toml::Value::Array(a)) => a,
        Some(_) => {
            return Err(fmt_err(
                "`account` must be an array of tables ([[account]])".into(),
            ))
        }
    };
    let mut report = LoadReport::default();
    let mut seen = HashSet::new();
    for (i, v) in list.iter().enumerate() {
        let Some(t) = v.as_table() else {
            report.bad.push(BadRecord {
                id: format!("account[{i}]"),
                field: "-".into(),
                reason: "not a table".into(),
            });
            continue;
        };
        let id = match t.get("id") {
            Some(toml::Value::String(s)) => s.clone(),
            _ => {
                report.bad.push(BadRecord {
                    id: format!("account[{i}]"),
                    field: "id".into(),
                    reason: "missing or not a string".into(),
                });
                continue;
            }
        };
        match record(&id, t) {
            Ok(acct) => {
                if seen.insert(id.clone()) {
                    report.accounts.push(acct);
                } else {
                    report.bad.push(BadRecord {
                        id,
                        field: "id".into(),
                        reason: "duplicate id (first one kept)".into(),
                    });
                }
            }
            Err((field, reason)) => report.bad.push(BadRecord { id, field, reason }),
        }
    }
    Ok(report)
}

fn record(id: &str, t: &toml::Table) -> Result<Account, (String, String)> {
    let mut fields: Vec<(&'static str, String)> = Vec::with_capacity(t.len());
    for (k, v) in t {
        let Some(name) = FIELDS.iter().find(|f| **f == k.as_str()) else {
            return Err((
                k.clone(),
                format!("unknown field (expected one of: {})", FIELDS.join(", ")),
            ));
        };
        if *name == "id" {
            continue;
        }
        let s = match (*name, v) {
            (_, toml::Value::String(s)) => s.clone(),
            (_, toml::Value::Integer(n)) => n.to_string(),
            ("enabled", toml::Value::Boolean(b)) => if *b { "1" } else { "0" }.to_string(),
            ("ips", toml::Value::Array(a)) => {
                let mut parts = Vec::with_capacity(a.len());
                for x in a {
                    match x.as_str() {
                        Some(s) => parts.push(s.to_string()),
                        None => return Err(("ips".into(), "must be a list of strings".into())),
                    }
                }
                parts.join(",")
            }
            (_, toml::Value::Float(_)) => {
                return Err((
                    name.to_string(),
                    "write amounts as strings (\"12.50\"): floats cannot hold money exactly".into(),
                ))
            }
            _ => return Err((name.to_string(), "wrong type".into())),
        };
        fields.push((name, s));
    }
    Account::from_fields(id, fields.iter().map(|(k, v)| (*k, v.as_str())))
        .map_err(|e| (e.field.to_string(), e.reason))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shipped_accounts_file_parses_cleanly() {
        let r = parse_accounts(
            include_str!("../../config/accounts.toml"),
            Path::new("accounts.toml"),
        )
        .unwrap();
        assert!(r.bad.is_empty(), "{:?}", r.bad);
        assert!(r.accounts.len() >= 5);
    }

    #[test]
    fn bad_records_are_skipped_with_their_field() {
        let text = r#"
[[account]]
id = "good"
balance = "10"

[[account]]
id = "floaty"
balance = 10.5

[[account]]
id = "typo"
balanse = "1"

[[account]]
id = "badip"
balance = "1"
ips = ["10.0.0.999"]

[[account]]
balance = "1"

[[account]]
id = "good"
balance = "3"
"#;
        let r = parse_accounts(text, Path::new("a.toml")).unwrap();
        assert_eq!(r.accounts.len(), 1);
        let fields: Vec<_> = r
            .bad
            .iter()
            .map(|b| (b.id.as_str(), b.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("floaty", "balance"),
                ("typo", "balanse"),
                ("badip", "ips"),
                ("account[4]", "id"),
                ("good", "id")
            ]
        );
        assert!(parse_accounts("[[account]\n", Path::new("a.toml")).is_err());
    }

    /// SPEC 4: a negative money/rate field or count makes the record bad (skipped, reported
    /// with its field); negative balance and debit_limit stay valid.
    #[test]
    fn negative_money_and_counts_are_bad_records() {
        let text = r#"
[[account]]
id = "postpay"
balance = "-42.17"
debit_limit = "100"

[[account]]
id = "rate"
balance = "10"
rate_per_min = "-0.01"

[[account]]
id = "daily"
balance = "10"
daily_spend_limit = "-5"

[[account]]
id = "spent"
balance = "10"
spent_today = -3

[[account]]
id = "cps"
balance = "10"
max_cps = -1

[[account]]
id = "chan"
balance = "10"
max_channels = "-2"
"#;
        let r = parse_accounts(text, Path::new("a.toml")).unwrap();
        let ids: Vec<_> = r.accounts.iter().map(|a| &*a.id).collect();
        assert_eq!(ids, ["postpay"]);
        let fields: Vec<_> = r
            .bad
            .iter()
            .map(|b| (b.id.as_str(), b.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("rate", "rate_per_min"),
                ("daily", "daily_spend_limit"),
                ("spent", "spent_today"),
                ("cps", "max_cps"),
                ("chan", "max_channels"),
            ]
        );
    }
}
