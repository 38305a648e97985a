//! Credit sources: where account records come from. The file source produces a [`LoadReport`]
//! (the good accounts plus the records it had to skip, with the field at fault) that the
//! daemon's refresh task hands to [`crate::snapshot::Snapshot::apply_full`]; the Redis source,
//! built for millions of accounts, applies each batch as it reads it
//! ([`crate::snapshot::Snapshot::begin_full`]) and reports a [`Refreshed`]. Sources know nothing
//! of SIP, and the SIP core knows nothing of sources.

pub mod file;
pub mod redis;

use crate::credit::Account;
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

/// The result of one full load.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub accounts: Vec<Account>,
    pub bad: Vec<BadRecord>,
}

/// The result of a full refresh that read its whole source and applied it.
#[derive(Debug)]
pub struct Refreshed {
    /// Applied, or held back by the `max_shrink` guard.
    pub applied: Result<ApplyStats, ShrinkHeld>,
    /// Records left out for a bad field.
    pub bad: Vec<BadRecord>,
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
