//! creditgate: a SIP admission filter. See the README for the design.
//!
//! The library holds the sans-IO core ([`core`]), the credit model ([`credit`]), the shared
//! snapshot ([`snapshot`]), the credit sources ([`source`]) and the configuration ([`config`]);
//! the [`daemon`] module is the thin tokio shell around them, and [`sched`] gives its threads
//! their scheduling classes.

#![forbid(unsafe_code)]

pub mod config;
pub mod core;
pub mod credit;
pub mod daemon;
pub mod live;
pub mod sched;
pub mod snapshot;
pub mod source;
