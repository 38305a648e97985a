//! Operator subcommands of the `creditgate` binary other than `run` and `check-config`.
//!
//! Boundary: binary-only code (it may use `anyhow`); everything reusable lives in the library.

pub mod accounts;
pub mod live;
pub mod tariff;
