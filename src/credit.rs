//! The credit model (SPEC section 1): accounts, available credit and the admission decision.
//!
//! Money is `rust_decimal::Decimal`, parsed from decimal strings, never through floats.
//! `available = balance + debit_limit`, and a new call is admitted only while `available > 0`.
//! This module is pure data and arithmetic: no I/O, no clock.

use std::sync::Arc;

use ipnet::IpNet;
use rust_decimal::Decimal;

use crate::live::tariff::TariffEntry;

/// One customer account as the snapshot holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Account {
    /// The account id (Redis key suffix, identification result).
    pub id: Arc<str>,
    /// Money the account holds now; negative for post-pay accounts in debt.
    pub balance: Decimal,
    /// Credit granted below zero (post-pay), 0 (pre-pay) or negative (pre-pay with buffer).
    pub debit_limit: Decimal,
    /// A disabled account is refused with `account_disabled` whatever its balance.
    pub enabled: bool,
    /// Addresses and prefixes the account sends from (`source_ip` identification).
    pub ips: Vec<IpNet>,
    /// Request-URI user prefix that picks this account among several sharing an address.
    pub tech_prefix: Option<Box<str>>,
    /// Informational only.
    pub currency: Option<Box<str>>,
    /// SPEC section 7 limits; boxed because most accounts have none, which keeps the snapshot
    /// entry small (a million accounts live in memory). Carried, validated, not enforced yet.
    pub limits: Option<Box<Limits>>,
}

/// The optional SPEC section 7 fields of an account.
///
/// Equality compares every field; `rate_entry` is derived from `rate_per_min` (equal rates give
/// equal entries), so it never makes two otherwise equal records differ.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub max_channels: Option<u32>,
    pub max_cps: Option<u32>,
    pub rate_per_min: Option<Decimal>,
    pub daily_spend_limit: Option<Decimal>,
    pub spent_today: Option<Decimal>,
    /// The name of the tariff the account's calls are rated by (SPEC 7 "Rates").
    pub tariff: Option<Arc<str>>,
    /// `TariffEntry::per_minute(rate_per_min)`, built once when the record is parsed so the
    /// packet path only clones an `Arc`. Kept in step with `rate_per_min` by
    /// [`Account::from_fields`]; code that sets `rate_per_min` by hand calls
    /// [`Limits::set_rate_per_min`].
    pub rate_entry: Option<Arc<TariffEntry>>,
}

impl Limits {
    /// Sets `rate_per_min` and its precomputed entry together.
    pub fn set_rate_per_min(&mut self, rate: Option<Decimal>) {
        self.rate_per_min = rate;
        self.rate_entry = rate.map(|r| Arc::new(TariffEntry::per_minute(r)));
    }
}

impl Account {
    /// A minimal enabled account, for tests and tooling.
    pub fn new(id: &str, balance: Decimal, debit_limit: Decimal) -> Self {
        Account {
            id: Arc::from(id),
            balance,
            debit_limit,
            enabled: true,
            ips: Vec::new(),
            tech_prefix: None,
            currency: None,
            limits: None,
        }
    }

    pub fn max_channels(&self) -> Option<u32> {
        self.limits.as_ref().and_then(|l| l.max_channels)
    }
    pub fn max_cps(&self) -> Option<u32> {
        self.limits.as_ref().and_then(|l| l.max_cps)
    }
    pub fn rate_per_min(&self) -> Option<Decimal> {
        self.limits.as_ref().and_then(|l| l.rate_per_min)
    }
    pub fn daily_spend_limit(&self) -> Option<Decimal> {
        self.limits.as_ref().and_then(|l| l.daily_spend_limit)
    }
    pub fn spent_today(&self) -> Option<Decimal> {
        self.limits.as_ref().and_then(|l| l.spent_today)
    }
    /// The tariff name, if the account names one.
    pub fn tariff(&self) -> Option<&Arc<str>> {
        self.limits.as_ref().and_then(|l| l.tariff.as_ref())
    }
    /// The flat-rate entry of `rate_per_min`, if set.
    pub fn rate_entry(&self) -> Option<&Arc<TariffEntry>> {
        self.limits.as_ref().and_then(|l| l.rate_entry.as_ref())
    }

    /// Sets one limit, allocating the box only when a value is present.
    fn set_limit<T>(&mut self, v: Option<T>, f: impl FnOnce(&mut Limits, Option<T>)) {
        match (&mut self.limits, v.is_some()) {
            (Some(l), _) => f(l, v),
            (None, true) => f(self.limits.get_or_insert_with(Default::default), v),
            (None, false) => {}
        }
    }

    /// `balance + debit_limit`: what the account may still spend.
    pub fn available(&self) -> Decimal {
        self.balance + self.debit_limit
    }

    /// The decision for a new call of this account, from the snapshot alone.
    pub fn decide(&self) -> CreditDecision {
        credit_decision(self.enabled, self.balance, self.debit_limit)
    }

    /// Builds an account from string fields as Redis (HGETALL) or the accounts file give them.
    /// Unknown field names are ignored (a billing system may store more); a bad value is an error
    /// naming the field.
    pub fn from_fields<'a, I>(id: &str, fields: I) -> Result<Account, BadField>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        if !valid_account_id(id) {
            return Err(BadField::new(
                "id",
                "must be 1-128 printable characters without spaces",
            ));
        }
        let mut acct = Account::new(id, Decimal::ZERO, Decimal::ZERO);
        let mut have_balance = false;
        for (name, value) in fields {
            let value = value.trim();
            match name {
                "balance" => {
                    acct.balance = parse_money(value).map_err(|r| BadField::new("balance", r))?;
                    have_balance = true;
                }
                "debit_limit" => {
                    acct.debit_limit = if value.is_empty() {
                        Decimal::ZERO
                    } else {
                        parse_money(value).map_err(|r| BadField::new("debit_limit", r))?
                    }
                }
                "enabled" => {
                    acct.enabled = match value {
                        "1" | "true" | "yes" | "" => true,
                        "0" | "false" | "no" => false,
                        _ => return Err(BadField::new("enabled", "must be 1 or 0")),
                    }
                }
                "ips" => {
                    acct.ips = parse_ips(value).map_err(|r| BadField::new("ips", r))?;
                }
                "tech_prefix" => {
                    if value.is_empty() {
                        acct.tech_prefix = None;
                    } else if value.len() > 32 || value.bytes().any(|b| !b.is_ascii_graphic()) {
                        return Err(BadField::new(
                            "tech_prefix",
                            "must be 1-32 printable characters",
                        ));
                    } else {
                        acct.tech_prefix = Some(value.into());
                    }
                }
                "currency" => {
                    acct.currency = (!value.is_empty()).then(|| value.into());
                }
                "max_channels" => {
                    let v = parse_opt_u32(value).map_err(|r| BadField::new("max_channels", r))?;
                    acct.set_limit(v, |l, v| l.max_channels = v);
                }
                "max_cps" => {
                    let v = parse_opt_u32(value).map_err(|r| BadField::new("max_cps", r))?;
                    acct.set_limit(v, |l, v| l.max_cps = v);
                }
                "rate_per_min" => {
                    let v = parse_opt_money(value).map_err(|r| BadField::new("rate_per_min", r))?;
                    acct.set_limit(v, |l, v| l.set_rate_per_min(v));
                }
                "daily_spend_limit" => {
                    let v = parse_opt_money(value)
                        .map_err(|r| BadField::new("daily_spend_limit", r))?;
                    acct.set_limit(v, |l, v| l.daily_spend_limit = v);
                }
                "spent_today" => {
                    let v = parse_opt_money(value).map_err(|r| BadField::new("spent_today", r))?;
                    acct.set_limit(v, |l, v| l.spent_today = v);
                }
                "tariff" => {
                    let v = if value.is_empty() {
                        None
                    } else if valid_tariff_name(value) {
                        Some(Arc::<str>::from(value))
                    } else {
                        return Err(BadField::new("tariff", TARIFF_NAME_RULE));
                    };
                    acct.set_limit(v, |l, v| l.tariff = v);
                }
                _ => {}
            }
        }
        if !have_balance {
            return Err(BadField::new("balance", "missing"));
        }
        Ok(acct)
    }
}

/// The field of an account record that could not be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct BadField {
    pub field: &'static str,
    pub reason: String,
}

impl BadField {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        BadField {
            field,
            reason: reason.into(),
        }
    }
}

/// An account id: printable, no whitespace, no separators that would break a log line or a key.
pub fn valid_account_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Longest tariff name, in bytes.
pub const MAX_TARIFF_NAME: usize = 64;

/// What a tariff name must be (the text of the error for a bad one).
pub const TARIFF_NAME_RULE: &str =
    "a tariff name must be 1-64 bytes without spaces or control characters";

/// A tariff name: 1-64 bytes, no whitespace, no control characters (it appears in a Redis key,
/// `{prefix}tariff:{name}`, and in log lines).
pub fn valid_tariff_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TARIFF_NAME
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Largest magnitude accepted for a money amount: far beyond any real balance, far below
/// `Decimal`'s range, so `balance + debit_limit` can never overflow.
const MONEY_LIMIT: i64 = 1_000_000_000_000_000;

/// Parses a money amount exactly: an optional sign, digits, an optional fraction; nothing else
/// (no exponent, no thousands separators, no floats).
pub fn parse_money(s: &str) -> Result<Decimal, String> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    let ok = !digits.is_empty()
        && !digits.starts_with('.')
        && !digits.ends_with('.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !ok {
        return Err(format!("{s:?} is not a decimal amount"));
    }
    let d =
        Decimal::from_str_exact(s).map_err(|e| format!("{s:?} is not a decimal amount: {e}"))?;
    if d.abs() >= Decimal::from(MONEY_LIMIT) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(d)
}

/// An optional money or rate amount (SPEC 4: never negative; `-0` is zero).
fn parse_opt_money(s: &str) -> Result<Option<Decimal>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    let d = parse_money(s)?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(format!(
            "{s:?} is negative (amounts and rates are never negative)"
        ));
    }
    // `-0` parses to a negative zero: store a plain zero.
    Ok(Some(if d.is_zero() { Decimal::ZERO } else { d }))
}

/// An optional count (SPEC 4: never negative).
fn parse_opt_u32(s: &str) -> Result<Option<u32>, String> {
    if s.is_empty() {
        Ok(None)
    } else if s.starts_with('-') && s.len() > 1 && s.bytes().skip(1).all(|b| b.is_ascii_digit()) {
        if s.bytes().skip(1).all(|b| b == b'0') {
            Ok(Some(0))
        } else {
            Err(format!("{s:?} is negative (counts are never negative)"))
        }
    } else {
        s.parse::<u32>()
            .map(Some)
            .map_err(|_| format!("{s:?} is not a whole number"))
    }
}

/// Comma-separated IPs and CIDRs; a bare IP is a host prefix.
pub fn parse_ips(s: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        out.push(parse_ip_or_net(part)?);
    }
    Ok(out)
}

/// One IP or CIDR; the network is normalised (host bits cleared).
pub fn parse_ip_or_net(part: &str) -> Result<IpNet, String> {
    if let Ok(net) = part.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    part.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{part:?} is not an IP address or CIDR"))
}

/// What the snapshot says about a new call of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreditDecision {
    Admit,
    Refuse(RefusalCause),
}

/// The pure rule of SPEC section 1: disabled accounts are refused; otherwise admit only while
/// `balance + debit_limit > 0` (exactly 0 is refused).
pub fn credit_decision(enabled: bool, balance: Decimal, debit_limit: Decimal) -> CreditDecision {
    if !enabled {
        CreditDecision::Refuse(RefusalCause::AccountDisabled)
    } else if balance + debit_limit > Decimal::ZERO {
        CreditDecision::Admit
    } else {
        CreditDecision::Refuse(RefusalCause::InsufficientCredit)
    }
}

/// Why a new call was refused; each has a `[reply]` entry. Small and `Copy`, usable as a metric
/// label without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalCause {
    InsufficientCredit,
    UnknownAccount,
    AccountDisabled,
    NoSnapshot,
    ChannelLimit,
    CpsLimit,
    SpendLimit,
    /// No tariff entry and no `rate_per_min` covers the dialled number (`live.unrated =
    /// "refuse"`).
    NoRate,
}

impl RefusalCause {
    pub const ALL: [RefusalCause; 8] = [
        RefusalCause::InsufficientCredit,
        RefusalCause::UnknownAccount,
        RefusalCause::AccountDisabled,
        RefusalCause::NoSnapshot,
        RefusalCause::ChannelLimit,
        RefusalCause::CpsLimit,
        RefusalCause::SpendLimit,
        RefusalCause::NoRate,
    ];

    /// The `[reply]` key and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalCause::InsufficientCredit => "insufficient_credit",
            RefusalCause::UnknownAccount => "unknown_account",
            RefusalCause::AccountDisabled => "account_disabled",
            RefusalCause::NoSnapshot => "no_snapshot",
            RefusalCause::ChannelLimit => "channel_limit",
            RefusalCause::CpsLimit => "cps_limit",
            RefusalCause::SpendLimit => "spend_limit",
            RefusalCause::NoRate => "no_rate",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn credit_model_table() {
        use CreditDecision::*;
        use RefusalCause::*;
        // (case, enabled, balance, debit_limit, expected)
        let cases = [
            ("pre-pay with money", true, "10.00", "0", Admit),
            (
                "pre-pay at exactly zero is refused",
                true,
                "0",
                "0",
                Refuse(InsufficientCredit),
            ),
            (
                "pre-pay smallest positive is admitted",
                true,
                "0.0001",
                "0",
                Admit,
            ),
            (
                "pre-pay negative",
                true,
                "-0.01",
                "0",
                Refuse(InsufficientCredit),
            ),
            (
                "post-pay in debt within the limit",
                true,
                "-99.99",
                "100",
                Admit,
            ),
            (
                "post-pay exactly at -100 is refused",
                true,
                "-100",
                "100",
                Refuse(InsufficientCredit),
            ),
            (
                "post-pay beyond the limit",
                true,
                "-100.5",
                "100",
                Refuse(InsufficientCredit),
            ),
            ("buffer: above +5 admitted", true, "5.0001", "-5", Admit),
            (
                "buffer: exactly +5 refused",
                true,
                "5",
                "-5",
                Refuse(InsufficientCredit),
            ),
            (
                "buffer: below +5 refused",
                true,
                "4.99",
                "-5",
                Refuse(InsufficientCredit),
            ),
            (
                "disabled with plenty",
                false,
                "1000",
                "0",
                Refuse(AccountDisabled),
            ),
            (
                "available exactly 0 via mixed scales",
                true,
                "-0.5000",
                "0.5",
                Refuse(InsufficientCredit),
            ),
            (
                "available 0.0001 via debit limit",
                true,
                "-4.9999",
                "5",
                Admit,
            ),
        ];
        for (name, enabled, bal, lim, want) in cases {
            assert_eq!(credit_decision(enabled, d(bal), d(lim)), want, "{name}");
        }
    }

    /// A million accounts live in the snapshot: keep an entry small (it was 184 bytes with the
    /// section 7 fields inline).
    #[test]
    fn account_entry_stays_small() {
        assert!(
            std::mem::size_of::<Account>() <= 128,
            "{}",
            std::mem::size_of::<Account>()
        );
        let a = Account::from_fields("x", [("balance", "1"), ("max_cps", "")]).unwrap();
        assert!(a.limits.is_none(), "empty optional fields allocate nothing");
        let b = Account::from_fields("x", [("balance", "1"), ("max_cps", "5")]).unwrap();
        assert_eq!(b.max_cps(), Some(5));
    }

    #[test]
    fn money_parsing_is_exact_and_strict() {
        assert_eq!(parse_money("12.5000").unwrap(), d("12.5"));
        assert_eq!(parse_money("-5").unwrap(), d("-5"));
        assert_eq!(parse_money("0.0001").unwrap(), d("0.0001"));
        for bad in [
            "",
            "1e3",
            "abc",
            "1,000",
            "NaN",
            "1.",
            ".5",
            "1.2.3",
            "--1",
            " 1",
            "1000000000000000000",
        ] {
            assert!(parse_money(bad).is_err(), "{bad:?} accepted");
        }
        // 0.1 + 0.2 is exactly 0.3 here, unlike floats.
        assert_eq!(
            parse_money("0.1").unwrap() + parse_money("0.2").unwrap(),
            d("0.3")
        );
    }

    /// SPEC 4: money and rate fields and counts are never negative; a negative one makes the
    /// record bad, naming the field. `balance` and `debit_limit` may be negative (credit model).
    #[test]
    fn negative_money_rate_and_count_fields_are_bad() {
        for field in [
            "rate_per_min",
            "daily_spend_limit",
            "spent_today",
            "max_cps",
            "max_channels",
        ] {
            for value in ["-1", "-0.0001", "-5.00"] {
                let e = Account::from_fields("acme", [("balance", "1"), (field, value)])
                    .expect_err(&format!("{field} = {value} accepted"));
                assert_eq!(e.field, field, "{value}");
                assert!(
                    e.reason.contains("negative") || e.reason.contains("whole"),
                    "{e}"
                );
            }
            // Zero is fine, and "-0" is zero.
            assert!(Account::from_fields("acme", [("balance", "1"), (field, "0")]).is_ok());
        }
        for field in ["rate_per_min", "daily_spend_limit", "spent_today"] {
            let e = Account::from_fields("acme", [("balance", "1"), (field, "-0.5")]).unwrap_err();
            assert!(e.reason.contains("negative"), "{field}: {e}");
        }
        let a = Account::from_fields(
            "acme",
            [
                ("balance", "-3"),
                ("debit_limit", "-5"),
                ("spent_today", "-0"),
            ],
        )
        .unwrap();
        assert_eq!((a.balance, a.debit_limit), (d("-3"), d("-5")));
        assert_eq!(a.spent_today(), Some(Decimal::ZERO));
    }

    #[test]
    fn from_fields_reports_the_bad_field() {
        let ok = Account::from_fields(
            "acme",
            [
                ("balance", "12.50"),
                ("debit_limit", "-5"),
                ("enabled", "1"),
                ("ips", "10.0.0.0/8, 192.0.2.7"),
                ("tech_prefix", "4711#"),
            ],
        )
        .unwrap();
        assert_eq!(ok.available(), d("7.50"));
        assert_eq!(ok.ips.len(), 2);
        assert_eq!(ok.tech_prefix.as_deref(), Some("4711#"));
        let e = Account::from_fields("acme", [("balance", "ten")]).unwrap_err();
        assert_eq!(e.field, "balance");
        let e =
            Account::from_fields("acme", [("balance", "1"), ("ips", "10.0.0.300")]).unwrap_err();
        assert_eq!(e.field, "ips");
        let e = Account::from_fields("acme", [("debit_limit", "1")]).unwrap_err();
        assert_eq!(e.field, "balance");
        let e = Account::from_fields("bad id", [("balance", "1")]).unwrap_err();
        assert_eq!(e.field, "id");
        let e = Account::from_fields("acme", [("balance", "1"), ("enabled", "maybe")]).unwrap_err();
        assert_eq!(e.field, "enabled");
    }

    /// Issue 11 item 1: `tariff` is a name checked when the record is parsed, and the
    /// `rate_per_min` entry is built then (equal records stay equal).
    #[test]
    fn tariff_name_and_rate_entry() {
        let a = Account::from_fields(
            "acme",
            [
                ("balance", "1"),
                ("tariff", "intl-2026"),
                ("rate_per_min", "0.0200"),
            ],
        )
        .unwrap();
        assert_eq!(a.tariff().map(|t| &**t), Some("intl-2026"));
        assert_eq!(
            a.rate_entry().map(|e| (**e).clone()),
            Some(TariffEntry::per_minute(d("0.0200")))
        );
        let b = Account::from_fields(
            "acme",
            [
                ("rate_per_min", "0.0200"),
                ("tariff", "intl-2026"),
                ("balance", "1"),
            ],
        )
        .unwrap();
        assert_eq!(a, b);
        let none = Account::from_fields("acme", [("balance", "1"), ("tariff", "")]).unwrap();
        assert!(none.limits.is_none() && none.tariff().is_none() && none.rate_entry().is_none());
        let long = "t".repeat(MAX_TARIFF_NAME + 1);
        for bad in ["two words", "tab\there", "ctl\u{7}", long.as_str()] {
            let e = Account::from_fields("acme", [("balance", "1"), ("tariff", bad)]).unwrap_err();
            assert_eq!(e.field, "tariff", "{bad:?}");
        }
        assert!(valid_tariff_name(&"t".repeat(MAX_TARIFF_NAME)));
    }
}
