//! Integration tests: the real `creditgate` binary (`env!("CARGO_BIN_EXE_creditgate")`) on a temp
//! config, driven over UDP on loopback by a fake caller (127.0.0.1) and a fake switch
//! (127.0.0.2). One test binary for every integration suite (STYLE rule 12):
//!
//! * [`harness`] — spawning the daemon, ports, configs, UDP endpoints, SIP read/build helpers;
//! * [`proxy`] — SIP behaviour of SPEC section 6 end to end, and the config CLI (section 3);
//! * [`sched`] — the scheduling classes of the daemon's threads (`[sip] realtime_priority`);
//! * [`startup`] — `check-config` and `run` agree on every file, faults exit 2;
//! * [`bind`] — one daemon per SIP address;
//! * [`cli`] — the `accounts` commands on a file-source config, closed pipes, help, wording;
//! * [`docs`] — the documentation's recipes and examples, run.
//!
//! Run with `cargo test --test integration`. Each test starts its own daemon, which binds port 0
//! and logs what it bound (see [`harness`], "Ports"): no test picks a port it does not hold, so
//! tests run in parallel, also as separate processes under `cargo nextest`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod bans;
mod bind;
mod cli;
mod docs;
mod flood;
mod hardening;
mod harness;
mod live_ops;
mod logs;
mod ops;
mod proxy;
mod redis;
mod reveal;
mod sched;
mod sipp;
mod sipvicious;
mod snapshot_races;
mod spiral;
mod startup;
mod tariffs;
mod uri;
