//! Live credit (SPEC section 7): tariffs, the per-account live ledger and the call table.
//!
//! Sans-IO like [`crate::core`]: no clock, no sockets, no tokio. The caller passes `now`
//! (an `Instant`) and the wall time (Unix seconds, for the UTC day) into every call, and the
//! snapshot figures of the account it decides for. Not wired into the proxy or the daemon yet.

pub mod calls;
pub mod ledger;
pub mod tariff;
