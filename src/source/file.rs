//! The `file` credit source: a TOML file of `[[account]]` tables, re-read every
//! `refresh_interval` and on SIGHUP. Money is written as strings (`balance = "12.50"`) or
//! integers; floats are refused because they cannot hold money exactly.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::{BadRecord, BadTariff, LoadReport, SourceError};
use crate::credit::{valid_tariff_name, Account, TARIFF_NAME_RULE};
use crate::live::tariff::Tariff;

/// Fields an account table may have.
const FIELDS: [&str; 13] = [
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
    "tariff",
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
        if key != "account" && key != "tariff" {
            return Err(fmt_err(format!(
                "unknown top-level key `{key}` (expected [[account]] and [[tariff]] tables)"
            )));
        }
    }
    let (tariffs, bad_tariffs) = match table.get("tariff") {
        None => (Vec::new(), Vec::new()),
        Some(toml::Value::Array(a)) => parse_tariffs(a),
        Some(_) => {
            return Err(fmt_err(
                "`tariff` must be an array of tables ([[tariff]])".into(),
            ))
        }
    };
    let empty = LoadReport {
        tariffs,
        bad_tariffs,
        ..LoadReport::default()
    };
    let list = match table.get("account") {
        None => return Ok(empty),
        Some(toml::Value::Array(a)) => a,
        Some(_) => {
            return Err(fmt_err(
                "`account` must be an array of tables ([[account]])".into(),
            ))
        }
    };
    let mut report = empty;
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

/// `[[tariff]]` tables: `name = "intl"`, `rates = { "44" = "0.0120 0.05 60/6", ... }` (SPEC 7).
/// A tariff with any bad key is left out whole (a missing entry would price its numbers by a
/// shorter, maybe cheaper, prefix), reported with the key path.
fn parse_tariffs(list: &[toml::Value]) -> (Vec<(String, Tariff)>, Vec<BadTariff>) {
    let mut good: Vec<(String, Tariff)> = Vec::new();
    let mut bad = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let at = format!("tariff[{i}]");
        let fail = |name: &str, field: &str, reason: String| BadTariff {
            name: name.to_owned(),
            field: field.to_owned(),
            reason,
        };
        let Some(t) = v.as_table() else {
            bad.push(fail(&at, "-", "not a table".into()));
            continue;
        };
        if let Some(k) = t.keys().find(|k| *k != "name" && *k != "rates") {
            bad.push(fail(
                &at,
                &format!("{at}.{k}"),
                "unknown key (expected name, rates)".into(),
            ));
            continue;
        }
        let name = match t.get("name") {
            Some(toml::Value::String(n)) if valid_tariff_name(n) => n.clone(),
            Some(toml::Value::String(_)) => {
                bad.push(fail(&at, &format!("{at}.name"), TARIFF_NAME_RULE.into()));
                continue;
            }
            _ => {
                bad.push(fail(
                    &at,
                    &format!("{at}.name"),
                    "missing or not a string".into(),
                ));
                continue;
            }
        };
        let Some(rates) = t.get("rates").and_then(toml::Value::as_table) else {
            bad.push(fail(
                &name,
                &format!("{at}.rates"),
                "missing or not a table of \"PREFIX\" = \"RATE [FEE [I/N]]\"".into(),
            ));
            continue;
        };
        let mut tariff = Tariff::new();
        let mut fault = None;
        for (prefix, entry) in rates {
            let field = format!("{at}.rates.\"{}\"", prefix.escape_debug());
            let Some(entry) = entry.as_str() else {
                fault = Some((field, "must be a string: \"RATE [FEE [I/N]]\"".to_owned()));
                break;
            };
            if let Err(e) = tariff.insert_str(prefix, entry) {
                fault = Some((field, e.to_string()));
                break;
            }
        }
        if let Some((field, reason)) = fault {
            bad.push(fail(&name, &field, reason));
            continue;
        }
        if good.iter().any(|(n, _)| *n == name) {
            bad.push(fail(
                &name,
                &format!("{at}.name"),
                "duplicate name (first one kept)".into(),
            ));
            continue;
        }
        good.push((name, tariff));
    }
    (good, bad)
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

    /// Issue 11: `[[tariff]]` tables load; a bad one is reported whole with its key path.
    #[test]
    fn tariffs_load_and_bad_ones_name_the_key() {
        let text = r#"
[[tariff]]
name = "intl"
rates = { "44" = "0.0500", "4420" = "0.0100 0.05 60/6" }

[[tariff]]
name = "broken"
rates = { "33" = "0.02", "3x" = "0.01" }

[[tariff]]
name = "typo"
rate = { "1" = "0.01" }

[[tariff]]
rates = { "1" = "0.01" }

[[tariff]]
name = "intl"
rates = { "1" = "0.01" }

[[account]]
id = "a"
balance = "1"
tariff = "intl"

[[account]]
id = "b"
balance = "1"
tariff = "has space"
"#;
        let r = parse_accounts(text, Path::new("a.toml")).unwrap();
        assert_eq!(r.tariffs.len(), 1);
        assert_eq!(r.tariffs[0].0, "intl");
        assert_eq!(r.tariffs[0].1.len(), 2);
        let bad: Vec<String> = r.bad_tariffs.iter().map(ToString::to_string).collect();
        assert_eq!(bad.len(), 4, "{bad:#?}");
        assert!(
            bad[0].starts_with("tariff broken: `tariff[1].rates.\"3x\"`"),
            "{bad:#?}"
        );
        assert!(bad[1].contains("`tariff[2].rate`"), "{bad:#?}");
        assert!(bad[2].contains("`tariff[3].name`"), "{bad:#?}");
        assert!(bad[3].contains("duplicate"), "{bad:#?}");
        assert_eq!(r.accounts.len(), 1);
        assert_eq!(r.accounts[0].tariff().map(|t| &**t), Some("intl"));
        assert_eq!(r.bad.len(), 1);
        assert_eq!(r.bad[0].field, "tariff");
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
