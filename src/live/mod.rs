//! Live credit (SPEC section 7): tariffs, the per-account live ledger and the call table.
//!
//! Sans-IO like [`crate::core`]: no clock, no sockets, no tokio. The caller passes `now` (an
//! `Instant`) and the wall time (Unix seconds, for the UTC day) into every call, together with
//! the snapshot figures of the account it decides for. Not wired into the proxy or the daemon
//! yet.
//!
//! * [`tariff`]: `RATE [CONNECT_FEE [INITIAL/INCREMENT]]` entries, the cost formula, prefix
//!   tariffs with longest-prefix lookup, the dialled-number normalisation.
//! * [`ledger`]: one account's running sums (held by ringing and answered calls, ended since
//!   the snapshot, today's ended cost), the admission check, the CPS bucket, the low-credit
//!   hysteresis. Single-threaded; O(1) per admission.
//! * [`calls`]: [`calls::LiveState`], shared by the workers: the call table (ringing →
//!   answered → ended), one mutex-guarded ledger per account (the check and the hold are one
//!   step under it), the ring-timeout / expiry queues driven by `tick`.
//!
//! How the proxy uses it (one [`calls::LiveState`] per daemon, handed to the core like the
//! snapshot):
//!
//! 1. New INVITE of account A to Request-URI user U: `dialled_number(U, A.tech_prefix)`, look
//!    up A's tariff (or `TariffEntry::per_minute(A.rate_per_min)`, or `TariffEntry::free()` for
//!    `unrated = "admit"`; refuse `no_rate` yourself for `"refuse"`), then
//!    `live.admit(&A.id, live.call_key(call_id, from_tag), &entry, &figures, now, wall)`:
//!    `Ok` → forward, `Err(refusal)` → reply with `refusal.reply_cause()`.
//! 2. Responses to that INVITE: 2xx → `answered(key, ..)`; final ≥ 300 (487 included) →
//!    `failed(key, ..)`. BYE or its 200 either way → `bye(key, ..)`. The key is always
//!    (Call-ID, the dialog initiator's tag): the From-tag of the caller's requests, the To-tag
//!    of the callee's requests.
//! 3. A timer calls `tick(now, wall, budget)` every second; the admin API reads
//!    `figures(..)` and `call(..)`; `low_credit(..)` yields the events to publish.

pub mod calls;
pub mod ledger;
pub mod tariff;
