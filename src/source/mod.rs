//! Credit sources: where account records come from. The file source produces a [`LoadReport`]
//! (the good accounts plus the records it had to skip, with the field at fault) that the
//! daemon's refresh task hands to [`crate::snapshot::Snapshot::apply_full`]; the Redis source,
//! built for millions of accounts, applies each batch as it reads it
//! ([`crate::snapshot::Snapshot::begin_full`]) and reports a [`Refreshed`]. Sources know nothing
//! of SIP, and the SIP core knows nothing of sources.

pub mod file;
pub mod redis;

use crate::credit::Account;
use crate::live::tariff::Tariff;
use crate::snapshot::{ApplyStats, ShrinkHeld};

/// One record that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// The account id, or a position (`account[3]`) when the id itself is missing.
    pub id: String,
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for BadRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "account {}: field `{}`: {}",
            self.id, self.field, self.reason
        )
    }
}

/// A tariff that could not be used (SPEC 7): the whole tariff is left out, and a version loaded
/// before stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTariff {
    /// The tariff's name, or its position (`tariff[2]`) when the name itself is unusable.
    pub name: String,
    /// The key at fault (`tariff[1].rates."44x"` in the accounts file, the hash field in Redis).
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for BadTariff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tariff {}: `{}`: {}", self.name, self.field, self.reason)
    }
}

/// Applies a full read's tariffs to the snapshot: the good ones set, the vanished removed, the
/// bad ones' previous versions kept (a bad tariff named by position only keeps nothing).
/// Returns how many were set.
pub fn apply_tariffs(
    snapshot: &crate::snapshot::Snapshot,
    tariffs: Vec<(String, Tariff)>,
    bad: &[BadTariff],
) -> usize {
    let keep: Vec<String> = bad.iter().map(|b| b.name.clone()).collect();
    let n = tariffs.len();
    snapshot.replace_tariffs(tariffs, &keep);
    n
}

/// The result of one full load.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub accounts: Vec<Account>,
    pub bad: Vec<BadRecord>,
    /// The tariffs read whole and valid.
    pub tariffs: Vec<(String, Tariff)>,
    pub bad_tariffs: Vec<BadTariff>,
}

/// The result of a full refresh that read its whole source and applied it.
#[derive(Debug)]
pub struct Refreshed {
    /// Applied, or held back by the `max_shrink` guard.
    pub applied: Result<ApplyStats, ShrinkHeld>,
    /// Records left out for a bad field.
    pub bad: Vec<BadRecord>,
    /// Tariffs left out (their previous version stays).
    pub bad_tariffs: Vec<BadTariff>,
    /// Tariffs loaded by this refresh.
    pub tariffs: usize,
}

/// Why a whole load failed (the previous snapshot stays).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The accounts file could not be read (missing, permissions): the operator's to fix.
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// The accounts file is not valid TOML or not an `[[account]]` list.
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    /// The credit store could not be reached or answered an error.
    #[error("credit store: {0}")]
    Store(String),
}
