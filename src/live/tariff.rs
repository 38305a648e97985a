//! Tariffs: what a call to a dialled number costs (SPEC section 7, "Rates").
//!
//! A tariff entry is `RATE [CONNECT_FEE [INITIAL/INCREMENT]]` (money per minute, money per
//! call, billing increments in seconds, default `1/1`), parsed into exact decimals by
//! [`TariffEntry::parse`]; [`TariffEntry::cost`] is the SPEC's formula. A [`Tariff`] maps
//! digit prefixes to entries and finds the longest prefix of a dialled number without
//! allocating: one hash map per prefix length, keyed by the prefix's value, tried from the
//! longest length down. [`dialled_number`] turns a Request-URI user into the digits a tariff
//! is matched against.
//!
//! Boundary: pure data and arithmetic. Where tariffs come from (Redis, the accounts file, CSV)
//! and which tariff an account uses is the caller's business.

use std::sync::Arc;
use std::time::Duration;

use rust_decimal::Decimal;
use rustc_hash::FxHashMap;

/// Longest accepted billing increment or initial period: a day. Longer ones are typos.
pub const MAX_INCREMENT_SECS: u32 = 86_400;
/// Longest accepted prefix: 19 digits always fit a `u64`, and no numbering plan needs more.
pub const MAX_PREFIX_DIGITS: usize = 19;
/// Digits of a dialled number kept by [`dialled_number`]; E.164 numbers have at most 15, and
/// only the first [`MAX_PREFIX_DIGITS`] can take part in a prefix match.
pub const MAX_DIALLED_DIGITS: usize = 32;
/// Largest magnitude of a rate or fee, the same bound as account money (`credit.rs`): far
/// beyond any real price, far below `Decimal`'s range, so sums of a million calls cannot
/// overflow.
const MONEY_LIMIT: i64 = 1_000_000_000_000_000;

/// The price of a call: a rate per minute, a connect fee and billing increments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TariffEntry {
    /// Money per minute of billed time.
    pub rate_per_min: Decimal,
    /// Money charged once per answered call.
    pub connect_fee: Decimal,
    /// Seconds billed at least (the first block), in whole seconds.
    pub initial: u32,
    /// Block size after the first, in seconds, at least 1.
    pub increment: u32,
}

/// Why a tariff entry or prefix was refused. The text names the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TariffError {
    /// The entry has no fields at all.
    #[error("empty tariff entry (expected RATE [CONNECT_FEE [INITIAL/INCREMENT]])")]
    Empty,
    /// More than three whitespace-separated fields.
    #[error("tariff entry has {0} fields; expected RATE [CONNECT_FEE [INITIAL/INCREMENT]]")]
    TooManyFields(usize),
    /// A money field is not a plain decimal number.
    #[error("{field} {value:?} is not a decimal amount")]
    BadAmount { field: &'static str, value: String },
    /// A money field is negative (SPEC 4: money and rate fields are never negative).
    #[error("{field} {value:?} is negative")]
    Negative { field: &'static str, value: String },
    /// A money field is absurdly large.
    #[error("{field} {value:?} is out of range")]
    OutOfRange { field: &'static str, value: String },
    /// The increments field is not `INITIAL/INCREMENT` in whole seconds.
    #[error("increments {value:?} must be INITIAL/INCREMENT in whole seconds, e.g. 60/6")]
    BadIncrements { value: String },
    /// INCREMENT is 0 (every second would be a new block of zero seconds).
    #[error("increments {value:?}: INCREMENT must be at least 1 second")]
    ZeroIncrement { value: String },
    /// INITIAL or INCREMENT is longer than a day.
    #[error("increments {value:?}: INITIAL and INCREMENT must be at most {MAX_INCREMENT_SECS} s")]
    IncrementTooLong { value: String },
    /// A prefix is empty, has a non-digit, or is longer than 19 digits.
    #[error("prefix {prefix:?} must be 1-{MAX_PREFIX_DIGITS} digits")]
    BadPrefix { prefix: String },
    /// The same prefix was given twice.
    #[error("prefix {prefix:?} appears twice")]
    DuplicatePrefix { prefix: String },
}

impl TariffEntry {
    /// A flat rate per minute, no connect fee, billed per second (`1/1`): an account's
    /// `rate_per_min`.
    pub fn per_minute(rate_per_min: Decimal) -> Self {
        TariffEntry {
            rate_per_min,
            connect_fee: Decimal::ZERO,
            initial: 1,
            increment: 1,
        }
    }

    /// The free entry: calls cost nothing (unrated numbers admitted on snapshot credit).
    pub fn free() -> Self {
        Self::per_minute(Decimal::ZERO)
    }

    /// Parses `RATE [CONNECT_FEE [INITIAL/INCREMENT]]`, fields separated by spaces or tabs.
    /// Never panics; every error names the field.
    pub fn parse(s: &str) -> Result<Self, TariffError> {
        let mut fields = s.split_ascii_whitespace();
        let n = s.split_ascii_whitespace().count();
        if n > 3 {
            return Err(TariffError::TooManyFields(n));
        }
        let rate = fields.next().ok_or(TariffError::Empty)?;
        let rate_per_min = parse_amount("rate", rate)?;
        let connect_fee = match fields.next() {
            Some(f) => parse_amount("connect_fee", f)?,
            None => Decimal::ZERO,
        };
        let (initial, increment) = match fields.next() {
            Some(f) => parse_increments(f)?,
            None => (1, 1),
        };
        Ok(TariffEntry {
            rate_per_min,
            connect_fee,
            initial,
            increment,
        })
    }

    /// Seconds billed for a call of `d` whole seconds: `initial` if `d <= initial`, else
    /// `initial + ceil((d - initial) / increment) * increment`.
    pub fn billed(&self, d: u64) -> u64 {
        let initial = u64::from(self.initial);
        if d <= initial {
            return initial;
        }
        let inc = u64::from(self.increment.max(1));
        let over = d - initial;
        let blocks = over / inc + u64::from(over % inc != 0);
        initial.saturating_add(blocks.saturating_mul(inc))
    }

    /// Cost of an answered call of `d` whole seconds: `connect_fee + rate/60 × billed(d)`,
    /// computed as `connect_fee + rate × billed(d) / 60` (one division, exact to `Decimal`'s 28
    /// significant digits). Saturates at `Decimal::MAX` (never reached with bounded inputs), so
    /// an overflow can only over-estimate.
    pub fn cost(&self, d: u64) -> Decimal {
        let billed = Decimal::from(self.billed(d));
        self.rate_per_min
            .checked_mul(billed)
            .and_then(|x| x.checked_div(Decimal::from(60u32)))
            .and_then(|x| x.checked_add(self.connect_fee))
            .unwrap_or(Decimal::MAX)
    }

    /// Cost of an answered call that lasted `elapsed`: a started second counts as a whole one
    /// (fractions of a second are rounded up).
    pub fn cost_of(&self, elapsed: Duration) -> Decimal {
        self.cost(whole_secs_up(elapsed))
    }

    /// Whether calls at this entry cost nothing at all.
    pub fn is_free(&self) -> bool {
        self.rate_per_min.is_zero() && self.connect_fee.is_zero()
    }
}

/// `elapsed` in whole seconds, a started second counting as a whole one.
pub fn whole_secs_up(elapsed: Duration) -> u64 {
    elapsed
        .as_secs()
        .saturating_add(u64::from(elapsed.subsec_nanos() != 0))
}

fn parse_amount(field: &'static str, value: &str) -> Result<Decimal, TariffError> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    let plain = !digits.is_empty()
        && !digits.starts_with('.')
        && !digits.ends_with('.')
        && digits.bytes().filter(|b| *b == b'.').count() <= 1
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let bad = || TariffError::BadAmount {
        field,
        value: value.into(),
    };
    if !plain {
        return Err(bad());
    }
    let d = Decimal::from_str_exact(value).map_err(|_| bad())?;
    if d.is_sign_negative() && !d.is_zero() {
        return Err(TariffError::Negative {
            field,
            value: value.into(),
        });
    }
    if d.abs() >= Decimal::from(MONEY_LIMIT) {
        return Err(TariffError::OutOfRange {
            field,
            value: value.into(),
        });
    }
    // `-0` is zero; store it without the sign.
    Ok(d.abs())
}

fn parse_increments(value: &str) -> Result<(u32, u32), TariffError> {
    let bad = || TariffError::BadIncrements {
        value: value.into(),
    };
    let (a, b) = value.split_once('/').ok_or_else(bad)?;
    let secs = |s: &str| -> Result<u32, TariffError> {
        if s.is_empty() || s.len() > 9 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        s.parse::<u32>().map_err(|_| bad())
    };
    let (initial, increment) = (secs(a)?, secs(b)?);
    if increment == 0 {
        return Err(TariffError::ZeroIncrement {
            value: value.into(),
        });
    }
    if initial > MAX_INCREMENT_SECS || increment > MAX_INCREMENT_SECS {
        return Err(TariffError::IncrementTooLong {
            value: value.into(),
        });
    }
    Ok((initial, increment))
}

/// A dialled number as digits (at most [`MAX_DIALLED_DIGITS`]), held inline: no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dialled {
    len: u8,
    digits: [u8; MAX_DIALLED_DIGITS],
}

impl Dialled {
    /// The ASCII digits.
    pub fn as_bytes(&self) -> &[u8] {
        self.digits.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl std::fmt::Debug for Dialled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dialled({})", String::from_utf8_lossy(self.as_bytes()))
    }
}

/// The dialled number of a Request-URI user part (SPEC 7): the account's tech prefix removed
/// when the user starts with it, then one leading `+`, then digits only. The RFC 3966 visual
/// separators `-`, `.`, `(`, `)` are skipped; any other character (letters, `*`, `#`, escapes)
/// means the user is not a number (`None`: no tariff applies). Digits past the 32nd are
/// dropped (a prefix match reads at most 19).
pub fn dialled_number(ruri_user: &[u8], tech_prefix: Option<&[u8]>) -> Option<Dialled> {
    let mut user = ruri_user;
    if let Some(tp) = tech_prefix.filter(|tp| !tp.is_empty()) {
        if let Some(rest) = user.strip_prefix(tp) {
            user = rest;
        }
    }
    let user = user.strip_prefix(b"+").unwrap_or(user);
    let mut out = Dialled {
        len: 0,
        digits: [0; MAX_DIALLED_DIGITS],
    };
    for &b in user {
        match b {
            b'0'..=b'9' => {
                if let Some(slot) = out.digits.get_mut(usize::from(out.len)) {
                    *slot = b;
                    out.len += 1;
                }
            }
            b'-' | b'.' | b'(' | b')' => {}
            _ => return None,
        }
    }
    (out.len > 0).then_some(out)
}

/// Prefix → entry, with longest-prefix lookup.
#[derive(Debug, Clone, Default)]
pub struct Tariff {
    /// One map per prefix length present, longest first; key = the prefix's value (the
    /// length disambiguates leading zeros: "00" and "0" live in different maps).
    by_len: Vec<(usize, FxHashMap<u64, Arc<TariffEntry>>)>,
    entries: usize,
}

impl Tariff {
    /// An empty tariff.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `prefix → entry`. The prefix is 1-19 digits (a leading `+` is ignored); a prefix
    /// given twice is an error (the caller decides whether that skips the entry or the tariff).
    pub fn insert(&mut self, prefix: &str, entry: TariffEntry) -> Result<(), TariffError> {
        let digits = prefix.trim().strip_prefix('+').unwrap_or(prefix.trim());
        let bad = || TariffError::BadPrefix {
            prefix: prefix.into(),
        };
        if digits.is_empty()
            || digits.len() > MAX_PREFIX_DIGITS
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let value = digits.parse::<u64>().map_err(|_| bad())?;
        let len = digits.len();
        let pos = match self.by_len.iter().position(|(l, _)| *l <= len) {
            Some(p) if self.by_len.get(p).is_some_and(|(l, _)| *l == len) => p,
            Some(p) => {
                self.by_len.insert(p, (len, FxHashMap::default()));
                p
            }
            None => {
                self.by_len.push((len, FxHashMap::default()));
                self.by_len.len() - 1
            }
        };
        let Some((_, map)) = self.by_len.get_mut(pos) else {
            return Err(bad());
        };
        if map.contains_key(&value) {
            return Err(TariffError::DuplicatePrefix {
                prefix: prefix.into(),
            });
        }
        map.insert(value, Arc::new(entry));
        self.entries += 1;
        Ok(())
    }

    /// Parses and adds one `prefix → "RATE [CONNECT_FEE [INITIAL/INCREMENT]]"` pair.
    pub fn insert_str(&mut self, prefix: &str, entry: &str) -> Result<(), TariffError> {
        self.insert(prefix, TariffEntry::parse(entry)?)
    }

    /// The entry of the longest prefix of `number`, if any. No allocation: at most one hash
    /// lookup per distinct prefix length in the tariff.
    pub fn lookup(&self, number: &Dialled) -> Option<&Arc<TariffEntry>> {
        let digits = number.as_bytes();
        // values[k] = the first k digits as a number.
        let mut values = [0u64; MAX_PREFIX_DIGITS + 1];
        let mut acc = 0u64;
        for (i, d) in digits.iter().take(MAX_PREFIX_DIGITS).enumerate() {
            acc = acc * 10 + u64::from(d - b'0');
            if let Some(v) = values.get_mut(i + 1) {
                *v = acc;
            }
        }
        let n = digits.len().min(MAX_PREFIX_DIGITS);
        self.by_len
            .iter()
            .filter(|(len, _)| *len <= n)
            .find_map(|(len, map)| values.get(*len).and_then(|v| map.get(v)))
    }

    /// Number of prefixes.
    pub fn len(&self) -> usize {
        self.entries
    }

    /// Whether the tariff has no prefix.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }
}

#[cfg(test)]
#[path = "tariff_tests.rs"]
mod tests;
