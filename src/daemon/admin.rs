//! The admin HTTP API (SPEC section 8), served by axum on `[admin] listen`:
//!
//! | route | answer |
//! |---|---|
//! | `GET /health` | 200 `ok` while the process serves (liveness) |
//! | `GET /ready` | 200 once a snapshot is loaded and fresh; 503 with the reason otherwise (never loaded, older than `max_staleness`, a refresh held back by the `max_shrink` guard) |
//! | `GET /metrics` | Prometheus text (OpenMetrics when asked for), see [`super::metrics`] |
//! | `GET /accounts/{id}` | JSON: the snapshot entry, available credit, the decision a new call of the account would get now |
//! | `GET /accounts/{id}/calls` | JSON: the account's tracked calls (`?limit=N`, default 1000); `"tracking": false` while `[live] track_calls` is off |
//! | `POST /refresh` | a full refresh now; `?force=1` applies one the shrink guard held back |
//! | `GET /bans` | JSON: the sources banned for authentication failures (`[abuse]`, `ban.rs`) |
//! | `DELETE /bans/{ip}` | lifts the ban of `ip` (its IPv6 /64); 404 when it was not banned |
//!
//! With `admin.token_file` set, every route but `/health` and `/ready` needs
//! `Authorization: Bearer TOKEN` (probes of load balancers and orchestrators rarely carry
//! credentials, and those two routes reveal nothing about accounts).
//!
//! Boundary: this module reads the shared snapshot and policy and asks the refresher for
//! refreshes; it never touches the packet path. The decision shown by `/accounts/{id}` is the
//! core's own ([`admission::decide`], the function the proxy calls after identifying a caller).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::metrics::{self, Format, OpsCounters};
use super::refresh::{RefreshStats, Refresher};
use super::Shared;
use crate::config::AdminConfig;
use crate::core::admission;
use crate::core::{AccountId, Policy};
use crate::credit::valid_account_id;
use crate::live::calls::LiveState;
use crate::snapshot::Snapshot;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `admin.listen` could not be bound (in use, not a local address).
    #[error("cannot bind admin.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `admin.token_file` could not be read: a deployment problem.
    #[error("cannot read admin.token_file {}: {source}", .path.display())]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `admin.token_file` holds no token (an empty file would let any bearer in).
    #[error("admin.token_file {} is empty", .path.display())]
    EmptyToken { path: PathBuf },
}

/// What the handlers share.
pub struct AdminState {
    shared: Arc<Shared>,
    refresher: Refresher,
    registry: Registry,
    token: Option<String>,
}

/// Reads the token, binds `admin.listen` and serves until `shutdown`. `Ok(None)` when the admin
/// API is disabled (`listen = ""`).
pub async fn start(
    cfg: &AdminConfig,
    shared: Arc<Shared>,
    refresher: Refresher,
    ops: Arc<OpsCounters>,
    shutdown: CancellationToken,
) -> Result<Option<(SocketAddr, JoinHandle<()>)>, AdminError> {
    let Some(addr) = cfg.listen else {
        return Ok(None);
    };
    let token = match &cfg.token_file {
        None => None,
        Some(path) => {
            let text =
                tokio::fs::read_to_string(path)
                    .await
                    .map_err(|source| AdminError::Token {
                        path: path.clone(),
                        source,
                    })?;
            let t = text.trim();
            if t.is_empty() {
                return Err(AdminError::EmptyToken { path: path.clone() });
            }
            Some(t.to_owned())
        }
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    let registry = metrics::registry(Arc::clone(&shared), refresher.clone(), ops);
    let state = Arc::new(AdminState {
        shared,
        refresher,
        registry,
        token,
    });
    let app = router(state);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    Ok(Some((bound, task)))
}

/// The routes; the token check guards all but `/health` and `/ready`.
pub fn router(state: Arc<AdminState>) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(get_metrics))
        .route("/accounts/{id}", get(get_account))
        .route("/accounts/{id}/calls", get(get_account_calls))
        .route("/refresh", post(post_refresh))
        .route("/bans", get(get_bans))
        .route("/bans/{ip}", axum::routing::delete(delete_ban))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth));
    Router::new()
        .route("/health", get(get_health))
        .route("/ready", get(get_ready))
        .merge(guarded)
        .with_state(state)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from response times.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(st): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let Some(token) = &st.token else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(p) if ct_eq(p.as_bytes(), token.as_bytes()) => next.run(req).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is required (admin.token_file)\n",
        )
            .into_response(),
    }
}

async fn get_health() -> &'static str {
    "ok\n"
}

/// Why the daemon is not ready, or `None` when it is.
pub fn not_ready_reason(
    snap: &Snapshot,
    policy: &Policy,
    stats: &RefreshStats,
    now: Instant,
) -> Option<String> {
    let last_error = stats
        .last_error()
        .map(|e| format!(" (last refresh failed: {e})"))
        .unwrap_or_default();
    let Some(age) = snap.age(now) else {
        return Some(format!("no credit snapshot loaded yet{last_error}"));
    };
    if age > policy.max_staleness {
        return Some(format!(
            "credit snapshot is stale: {:.1}s old, credit.max_staleness is {}s{last_error}",
            age.as_secs_f64(),
            policy.max_staleness.as_secs()
        ));
    }
    if let Some(held) = stats.pending_hold() {
        return Some(format!(
            "a refresh was held back by the max_shrink guard: it would remove {} of {} known accounts (max_shrink {}); confirm with SIGHUP or POST /refresh?force=1",
            held.would_remove, held.known, held.max_shrink
        ));
    }
    None
}

async fn get_ready(State(st): State<Arc<AdminState>>) -> Response {
    let policy = st.shared.policy.load();
    let snap = &st.shared.snapshot;
    let now = Instant::now();
    match not_ready_reason(snap, &policy, st.refresher.stats(), now) {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
        None => {
            let age = snap.age(now).unwrap_or_default();
            (
                StatusCode::OK,
                format!(
                    "ready: {} accounts, snapshot {:.1}s old\n",
                    snap.len(),
                    age.as_secs_f64()
                ),
            )
                .into_response()
        }
    }
}

async fn get_metrics(State(st): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match metrics::encode(&st.registry, format) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, format.content_type())],
            body,
        )
            .into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        )
            .into_response(),
    }
}

/// The decision a new call of account `id` would get now: the core's own decision
/// ([`admission::decide`]) for a caller already identified as `id`, then, with call tracking
/// on, the live check ([`admission::probe_live`], holding nothing) for a call to Request-URI
/// user `to` (empty: the account's own rate, no tariff prefix).
pub fn decision_now(
    snap: &Snapshot,
    live: Option<&LiveState>,
    policy: &Policy,
    id: &str,
    to: &[u8],
    now: Instant,
    wall_secs: u64,
) -> Value {
    let cause = match admission::decide(snap, policy, now, || Some(AccountId::Borrowed(id))) {
        Ok(_) => match live.map(|l| admission::probe_live(l, snap, policy, id, to, now, wall_secs))
        {
            None => return json!({ "result": "admit", "forwarded": true }),
            Some(Ok(left)) => {
                return json!({
                    "result": "admit",
                    "forwarded": true,
                    "live_available_after_reserve": left.to_string(),
                })
            }
            Some(Err(r)) => {
                let mut v = refusal_json(policy, r.cause());
                v["live_reason"] = json!(r.label());
                return v;
            }
        },
        Err((cause, _)) => cause,
    };
    refusal_json(policy, cause)
}

fn refusal_json(policy: &Policy, cause: crate::credit::RefusalCause) -> Value {
    let tpl = policy.reply(cause);
    let reason = String::from_utf8_lossy(&tpl.status_line)
        .trim_end()
        .splitn(3, ' ')
        .nth(2)
        .unwrap_or_default()
        .to_owned();
    json!({
        "result": if policy.enforce { "refuse" } else { "would_refuse" },
        "cause": cause.as_str(),
        "sip_code": tpl.code,
        "sip_reason": reason,
        "forwarded": !policy.enforce,
    })
}

/// The `live` object of `GET /accounts/{id}` (SPEC 7): snapshot and live available credit,
/// calls in progress and what they hold, ended calls not yet in a snapshot, the limits.
fn live_json(
    snap: &Snapshot,
    live: Option<&LiveState>,
    policy: &Policy,
    id: &str,
    now: Instant,
    wall_secs: u64,
) -> Value {
    let Some(live) = live else {
        return json!({ "tracking": false });
    };
    let Some(inputs) = admission::live_inputs(snap, id, b"") else {
        return json!({ "tracking": true });
    };
    let fig = &inputs.figures;
    let f = live.figures(id, fig, now, wall_secs);
    let money = |d: Option<rust_decimal::Decimal>| d.map(|d| d.to_string());
    json!({
        "tracking": true,
        "snapshot_available": fig.available.to_string(),
        "live_available": f.live_available(fig.available).to_string(),
        "calls_in_progress": f.in_progress(),
        "ringing": f.ringing,
        "answered": f.answered,
        "held": f.held().to_string(),
        "held_by_ringing_calls": f.held_ringing.to_string(),
        "held_by_answered_calls": f.held_answered.to_string(),
        "ended_since_snapshot": f.ended_since_snapshot.to_string(),
        "ended_today": f.ended_today.to_string(),
        "limits": {
            "max_channels": fig.max_channels,
            "max_cps": fig.max_cps,
            "daily_spend_limit": money(fig.daily_spend_limit),
            "spent_today": fig.spent_today.to_string(),
            "rate_per_min": money(inputs.view.rate_per_min),
            "tariff": inputs.view.tariff.as_ref().map(|(name, _)| name.to_string()),
            "tariff_loaded": inputs.view.tariff.as_ref().map(|(_, loaded)| *loaded),
            "reserve_seconds": live.config().reserve_secs,
            "credit_scaled_channels": live.config().credit_scaled_channels,
            "unrated": match policy.unrated {
                crate::config::Unrated::Admit => "admit",
                crate::config::Unrated::Refuse => "refuse",
            },
        },
    })
}

/// The `to` object of `GET /accounts/{id}?to=NUMBER`: the price of a call to that number and
/// the decision it would get now.
fn to_json(
    snap: &Snapshot,
    live: Option<&LiveState>,
    policy: &Policy,
    id: &str,
    to: &str,
    now: Instant,
    wall_secs: u64,
) -> Value {
    let price = admission::live_inputs(snap, id, to.as_bytes()).map(|i| match &i.entry {
        Some(e) => json!({
            "rate_per_min": e.rate_per_min.to_string(),
            "connect_fee": e.connect_fee.to_string(),
            "increments": format!("{}/{}", e.initial, e.increment),
            "reserve_cost": live.map(|l| {
                crate::live::ledger::reserve_cost(e, l.config().reserve_secs).to_string()
            }),
        }),
        None => json!(null),
    });
    json!({
        "number": to,
        "price": price,
        "decision": decision_now(snap, live, policy, id, to.as_bytes(), now, wall_secs),
    })
}

fn wall_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn snapshot_json(snap: &Snapshot, policy: &Policy, now: Instant) -> Value {
    let age = snap.age(now);
    json!({
        "loaded": age.is_some(),
        "age_seconds": age.map(|a| a.as_secs_f64()),
        "stale": age.is_none_or(|a| a > policy.max_staleness),
        "accounts": snap.len(),
        "generation": snap.generation(),
    })
}

/// The `to` query parameter (`?to=NUMBER`), percent-decoding left out: a dialled number is
/// digits, `+`, `*` and `#` (`%23`/`%2B` are decoded).
fn query_to(query: Option<&str>) -> Option<String> {
    let v = query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("to="))?
        .replace("%23", "#")
        .replace("%2B", "+")
        .replace("%2b", "+");
    (!v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic())).then_some(v)
}

/// 400 with the id and what is wrong with the request.
fn bad_request(id: &str, error: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "id": id, "error": error })),
    )
        .into_response()
}

async fn get_account(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if !valid_account_id(&id) {
        return bad_request(&id, "not a valid account id");
    }
    let policy = st.shared.policy.load();
    let snap = &st.shared.snapshot;
    let now = Instant::now();
    let wall = wall_now();
    let live = st.shared.live.as_deref();
    let decision = decision_now(snap, live, &policy, &id, b"", now, wall);
    let snapshot = snapshot_json(snap, &policy, now);
    let Some(a) = snap.account(&id) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({
                "id": id,
                "found": false,
                "decision": decision,
                "snapshot": snapshot,
            })),
        )
            .into_response();
    };
    let money = |d: Option<rust_decimal::Decimal>| d.map(|d| d.to_string());
    let available = a.available();
    let live_obj = live_json(snap, live, &policy, &id, now, wall);
    let to = query_to(query.as_deref()).map(|to| to_json(snap, live, &policy, &id, &to, now, wall));
    let body = json!({
        "id": &*a.id,
        "found": true,
        "balance": a.balance.to_string(),
        "debit_limit": a.debit_limit.to_string(),
        "available": available.to_string(),
        // Without call tracking nothing is held against the snapshot.
        "live_available": live_obj.get("live_available").cloned().unwrap_or_else(|| json!(available.to_string())),
        "calls_in_progress": live_obj.get("calls_in_progress").cloned().unwrap_or(json!(0)),
        "enabled": a.enabled,
        "ips": a.ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "tech_prefix": a.tech_prefix.as_deref(),
        "currency": a.currency.as_deref(),
        "max_channels": a.max_channels(),
        "max_cps": a.max_cps(),
        "rate_per_min": money(a.rate_per_min()),
        "daily_spend_limit": money(a.daily_spend_limit()),
        "spent_today": money(a.spent_today()),
        "decision": decision,
        "snapshot": snapshot,
        "live": live_obj,
    });
    let mut body = body;
    if let (Some(to), Some(obj)) = (to, body.as_object_mut()) {
        obj.insert("to".to_owned(), to);
    }
    (StatusCode::OK, Json(body)).into_response()
}

/// Calls listed by `GET /accounts/{id}/calls` unless `?limit=` says otherwise.
pub const CALLS_LIMIT_DEFAULT: usize = 1000;
/// The most `?limit=` may ask for: a list this long is a few MB of JSON, and building it scans
/// the whole call table once either way.
pub const CALLS_LIMIT_MAX: usize = 100_000;

/// `limit=N` in a query string, clamped to 1..=[`CALLS_LIMIT_MAX`]; `Err` when not a number.
fn calls_limit(query: Option<&str>) -> Result<usize, ()> {
    let Some(v) = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("limit="))) else {
        return Ok(CALLS_LIMIT_DEFAULT);
    };
    v.parse::<usize>()
        .map(|n| n.clamp(1, CALLS_LIMIT_MAX))
        .map_err(|_| ())
}

/// The JSON of `GET /accounts/{id}/calls`: `now` is when the answer is built.
pub fn calls_json(
    live: Option<&crate::live::calls::LiveState>,
    id: &str,
    limit: usize,
    now: Instant,
) -> Value {
    let Some(live) = live else {
        return json!({ "id": id, "tracking": false, "count": 0, "truncated": false, "calls": [] });
    };
    let mut calls = live.calls_of(id, limit.saturating_add(1));
    let truncated = calls.len() > limit;
    calls.truncate(limit);
    let age = u64::from(
        u32::try_from(now.saturating_duration_since(live.epoch()).as_secs()).unwrap_or(u32::MAX),
    );
    let list: Vec<Value> = calls
        .iter()
        .map(|(key, c)| {
            json!({
                "key": key.to_hex(),
                "state": match c.state {
                    crate::live::calls::CallState::Ringing => "ringing",
                    crate::live::calls::CallState::Answered => "answered",
                },
                "started_ago_s": age.saturating_sub(u64::from(c.started_secs)),
                "held": c.hold.to_string(),
                "rate_per_min": c.rate_per_min.to_string(),
            })
        })
        .collect();
    json!({
        "id": id,
        "tracking": true,
        "count": list.len(),
        "truncated": truncated,
        "calls": list,
    })
}

/// `GET /accounts/{id}/calls`: the account's tracked calls, oldest first. Builds the list by
/// scanning the call table (O(tracked calls)): an operator's tool, not for polling at a high
/// rate.
async fn get_account_calls(
    State(st): State<Arc<AdminState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    if !valid_account_id(&id) {
        return bad_request(&id, "not a valid account id");
    }
    let Ok(limit) = calls_limit(query.as_deref()) else {
        return bad_request(&id, "limit: not a whole number");
    };
    let mut body = calls_json(st.shared.live.as_deref(), &id, limit, Instant::now());
    if st.shared.snapshot.account(&id).is_none() {
        // As `/accounts/{id}`: unknown to the snapshot is a 404 (calls of an account removed
        // since they were admitted are still listed).
        body["found"] = json!(false);
        return (StatusCode::NOT_FOUND, Json(body)).into_response();
    }
    body["found"] = json!(true);
    (StatusCode::OK, Json(body)).into_response()
}

/// `GET /bans`: every ban in force, soonest to end first.
async fn get_bans(State(st): State<Arc<AdminState>>) -> Response {
    let now = Instant::now();
    let bans: Vec<Value> = st
        .shared
        .bans
        .list(now)
        .iter()
        .map(|b| {
            json!({
                "address": b.address.to_string(),
                "failures": b.failures,
                "banned_for_s": now.saturating_duration_since(b.since).as_secs(),
                "expires_in_s": b.until.saturating_duration_since(now).as_secs(),
            })
        })
        .collect();
    (
        StatusCode::OK,
        Json(json!({ "count": bans.len(), "bans": bans })),
    )
        .into_response()
}

/// `DELETE /bans/{ip}`: lifts one ban.
async fn delete_ban(State(st): State<Arc<AdminState>>, Path(ip): Path<String>) -> Response {
    let Ok(addr) = ip.parse::<std::net::IpAddr>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "not an IP address" })),
        )
            .into_response();
    };
    if st.shared.bans.lift(addr) {
        tracing::info!(address = %addr, "admin API: ban lifted");
        (
            StatusCode::OK,
            Json(json!({ "address": addr.to_string(), "lifted": true })),
        )
            .into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "address": addr.to_string(), "lifted": false, "error": "not banned" })),
        )
            .into_response()
    }
}

/// `force=1` / `force=true` / `force` in a query string.
fn wants_force(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
            k == "force" && matches!(v, "1" | "true" | "yes")
        })
    })
}

async fn post_refresh(State(st): State<Arc<AdminState>>, RawQuery(query): RawQuery) -> Response {
    let force = wants_force(query.as_deref());
    let stats = st.refresher.stats();
    let failed_before = stats.failed.get();
    tracing::info!(force, "admin API: refresh requested");
    let applied = st.refresher.refresh_once(force).await;
    let accounts = st.shared.snapshot.len();
    // Microsecond resolution is plenty for a human reading the answer.
    let took_ms = (stats.last_duration().as_secs_f64() * 1e6).round() / 1e3;
    if applied {
        return (
            StatusCode::OK,
            Json(json!({ "result": "applied", "force": force, "accounts": accounts, "took_ms": took_ms })),
        )
            .into_response();
    }
    if stats.failed.get() > failed_before {
        return (
            StatusCode::BAD_GATEWAY,
            Json(json!({
                "result": "failed",
                "force": force,
                "error": stats.last_error(),
                "accounts": accounts,
                "took_ms": took_ms,
            })),
        )
            .into_response();
    }
    let held = stats.pending_hold();
    (
        StatusCode::CONFLICT,
        Json(json!({
            "result": "held",
            "force": force,
            "would_remove": held.map(|h| h.would_remove),
            "known": held.map(|h| h.known),
            "max_shrink": held.map(|h| h.max_shrink),
            "accounts": accounts,
            "hint": "the max_shrink guard held this refresh back; POST /refresh?force=1 applies it",
        })),
    )
        .into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::keys::Keys;
    use crate::core::Listener;
    use crate::credit::Account;
    use std::time::Duration;

    /// A policy from `[credit]` lines and extra tables.
    fn policy(credit: &str, extra: &str) -> Policy {
        let text = format!("[sip]\nupstream = [\"127.0.0.2:5080\"]\n[credit]\n{credit}\n{extra}\n");
        let cfg = Config::from_toml_str(&text, std::path::Path::new("")).unwrap();
        let listener = Listener {
            bound: "127.0.0.1:5060".parse().unwrap(),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 5060,
        };
        Policy::new(&cfg, Keys::new(b"0123456789abcdef-test"), vec![listener]).unwrap()
    }

    fn acct(id: &str, balance: &str, debit_limit: &str, enabled: bool) -> Account {
        let mut a = Account::new(id, balance.parse().unwrap(), debit_limit.parse().unwrap());
        a.enabled = enabled;
        a
    }

    /// A snapshot loaded at `t0` with a pre-pay, an empty, a post-pay and a disabled account.
    fn snapshot(t0: Instant) -> Snapshot {
        let snap = Snapshot::new(t0);
        snap.apply_full(
            vec![
                acct("alice", "10", "0", true),
                acct("bob", "0", "0", true),
                acct("carol", "-42.17", "100", true),
                acct("mallory", "1000", "0", false),
            ],
            t0,
            0.5,
            false,
        )
        .unwrap();
        snap
    }

    /// With call tracking on, the admin decision is the proxy's live check, and asking holds
    /// nothing.
    #[test]
    fn live_decision_is_the_proxys_and_holds_nothing() {
        use crate::live::calls::{LiveConfig, LiveState};
        let t0 = Instant::now();
        let snap = Snapshot::new(t0);
        let mut a = acct("alice", "1.00", "0", true);
        a.limits = Some(Box::new(crate::credit::Limits {
            rate_per_min: Some("1.00".parse().unwrap()),
            ..Default::default()
        }));
        snap.apply_full(vec![a], t0, 0.5, false).unwrap();
        let p = policy("", "[live]\ntrack_calls = true\nreserve = \"60s\"\n");
        let live = LiveState::new(
            LiveConfig {
                reserve_secs: 60,
                ..LiveConfig::default()
            },
            t0,
        );
        let now = t0 + std::time::Duration::from_secs(1);
        for _ in 0..3 {
            let v = decision_now(&snap, Some(&live), &p, "alice", b"", now, 0);
            assert_eq!(v["result"], "admit", "{v}");
            assert_eq!(v["live_available_after_reserve"], "0.00", "{v}");
        }
        assert_eq!(live.tracked(), 0, "asking holds nothing");
        // A call through the proxy's path holds the reserve: the next one is refused.
        let key = live.call_key(b"c1", b"t1");
        crate::core::admission::admit_live(&live, &snap, &p, "alice", b"", key, now, 0).unwrap();
        let v = decision_now(&snap, Some(&live), &p, "alice", b"", now, 0);
        assert_eq!(
            summary(&v),
            ("refuse".into(), "insufficient_credit".into(), 402)
        );
        assert_eq!(v["live_reason"], "insufficient_credit");
        let body = live_json(&snap, Some(&live), &p, "alice", now, 0);
        assert_eq!(body["calls_in_progress"], 1);
        let dec = |v: &Value| {
            v.as_str()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        };
        assert_eq!(dec(&body["held"]), rust_decimal::Decimal::ONE);
        assert!(dec(&body["live_available"]).is_zero(), "{body}");
        assert_eq!(query_to(Some("x=1&to=%2B4930")), Some("+4930".to_owned()));
        assert_eq!(query_to(Some("to=")), None);
    }

    fn summary(v: &Value) -> (String, String, i64) {
        (
            v["result"].as_str().unwrap_or_default().to_owned(),
            v["cause"].as_str().unwrap_or_default().to_owned(),
            v["sip_code"].as_i64().unwrap_or(0),
        )
    }

    /// (case, credit lines, extra tables, snapshot, account, now, expected summary)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a Snapshot,
        &'a str,
        Instant,
        (String, String, i64),
    );

    #[test]
    fn decision_follows_the_core_rules() {
        let t0 = Instant::now();
        let fresh = t0 + Duration::from_secs(1);
        let stale = t0 + Duration::from_secs(600);
        let empty = Snapshot::new(t0);
        let snap = snapshot(t0);
        let s = |r: &str, c: &str, code: i64| (r.to_owned(), c.to_owned(), code);
        let cases: [Case<'_>; 13] = [
            (
                "no snapshot, reject",
                "",
                "",
                &empty,
                "alice",
                fresh,
                s("refuse", "no_snapshot", 503),
            ),
            (
                "no snapshot, admit",
                "on_no_snapshot = \"admit\"",
                "",
                &empty,
                "alice",
                fresh,
                s("admit", "", 0),
            ),
            (
                "pre-pay with credit",
                "",
                "",
                &snap,
                "alice",
                fresh,
                s("admit", "", 0),
            ),
            (
                "empty pre-pay",
                "",
                "",
                &snap,
                "bob",
                fresh,
                s("refuse", "insufficient_credit", 402),
            ),
            (
                "post-pay within limit",
                "",
                "",
                &snap,
                "carol",
                fresh,
                s("admit", "", 0),
            ),
            (
                "disabled",
                "",
                "",
                &snap,
                "mallory",
                fresh,
                s("refuse", "account_disabled", 403),
            ),
            (
                "unknown",
                "",
                "",
                &snap,
                "nobody",
                fresh,
                s("refuse", "unknown_account", 403),
            ),
            (
                "stale, serve",
                "",
                "",
                &snap,
                "alice",
                stale,
                s("admit", "", 0),
            ),
            (
                "stale, reject",
                "on_stale = \"reject\"",
                "",
                &snap,
                "carol",
                stale,
                s("refuse", "no_snapshot", 503),
            ),
            (
                "stale, reject_prepaid, pre-pay",
                "on_stale = \"reject_prepaid\"",
                "",
                &snap,
                "alice",
                stale,
                s("refuse", "no_snapshot", 503),
            ),
            (
                "stale, reject_prepaid, post-pay",
                "on_stale = \"reject_prepaid\"",
                "",
                &snap,
                "carol",
                stale,
                s("admit", "", 0),
            ),
            (
                "dry run",
                "enforce = false",
                "",
                &snap,
                "bob",
                fresh,
                s("would_refuse", "insufficient_credit", 402),
            ),
            (
                "configured reply",
                "",
                "[reply]\ninsufficient_credit = { code = 403, reason = \"Blocked Now\" }",
                &snap,
                "bob",
                fresh,
                s("refuse", "insufficient_credit", 403),
            ),
        ];
        for (name, credit, extra, snap, id, now, want) in cases {
            let p = policy(credit, extra);
            let got = decision_now(snap, None, &p, id, b"", now, 0);
            assert_eq!(summary(&got), want, "{name}: {got}");
        }
        let p = policy(
            "",
            "[reply]\ninsufficient_credit = { code = 403, reason = \"Blocked Now\" }",
        );
        assert_eq!(
            decision_now(&snap, None, &p, "bob", b"", fresh, 0)["sip_reason"],
            "Blocked Now"
        );
        assert_eq!(
            decision_now(&snap, None, &p, "bob", b"", fresh, 0)["forwarded"],
            false
        );
    }

    #[test]
    fn readiness_reasons() {
        let t0 = Instant::now();
        let p = policy("max_staleness = \"5m\"", "");
        let stats = RefreshStats::default();
        let empty = Snapshot::new(t0);
        let why = not_ready_reason(&empty, &p, &stats, t0).unwrap();
        assert!(why.contains("no credit snapshot"), "{why}");
        let snap = snapshot(t0);
        assert_eq!(
            not_ready_reason(&snap, &p, &stats, t0 + Duration::from_secs(10)),
            None
        );
        let why = not_ready_reason(&snap, &p, &stats, t0 + Duration::from_secs(301)).unwrap();
        assert!(why.contains("stale"), "{why}");
    }

    #[test]
    fn force_query() {
        assert!(wants_force(Some("force=1")));
        assert!(wants_force(Some("a=b&force=true")));
        assert!(wants_force(Some("force")));
        assert!(!wants_force(Some("force=0")));
        assert!(!wants_force(Some("forced=1")));
        assert!(!wants_force(None));
    }

    #[test]
    fn calls_limit_query() {
        assert_eq!(calls_limit(None), Ok(CALLS_LIMIT_DEFAULT));
        assert_eq!(calls_limit(Some("a=1&limit=5")), Ok(5));
        assert_eq!(calls_limit(Some("limit=0")), Ok(1));
        assert_eq!(calls_limit(Some("limit=99999999999")), Ok(CALLS_LIMIT_MAX));
        assert_eq!(calls_limit(Some("limit=x")), Err(()));
    }

    /// The router answering `GET path` (with `token` as bearer token if given) on `shared`.
    async fn call_route(
        shared: Arc<Shared>,
        token: Option<&str>,
        bearer: Option<&str>,
        path: &str,
    ) -> (StatusCode, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cfg = Config::from_toml_str(
            "[sip]\nupstream = [\"127.0.0.2:5080\"]\n",
            std::path::Path::new(""),
        )
        .unwrap();
        let refresher = Refresher::new(&cfg, Arc::clone(&shared));
        let registry = metrics::registry(Arc::clone(&shared), refresher.clone(), Arc::default());
        let app = router(Arc::new(AdminState {
            shared,
            refresher,
            registry,
            token: token.map(str::to_owned),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let auth = bearer
            .map(|b| format!("Authorization: Bearer {b}\r\n"))
            .unwrap_or_default();
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.unwrap();
        server.abort();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let code: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        (
            StatusCode::from_u16(code).unwrap(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn account_calls_lists_tracked_calls() {
        use crate::live::calls::{AccountFigures, LiveConfig, LiveState};
        use crate::live::tariff::TariffEntry;
        use rust_decimal::Decimal;

        // Tracking off: an empty list that says so; unknown accounts are 404 all the same.
        let t0 = Instant::now();
        let off = super::super::live::test_shared_live(None);
        off.snapshot
            .apply_full(vec![acct("alice", "10", "0", true)], t0, 0.5, false)
            .unwrap();
        let (status, j) = call_route(Arc::clone(&off), None, None, "/accounts/alice/calls").await;
        assert_eq!(status, StatusCode::OK, "{j}");
        assert_eq!(j["tracking"], false);
        assert_eq!(j["calls"], json!([]));
        let (status, j) = call_route(Arc::clone(&off), None, None, "/accounts/nobody/calls").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{j}");
        assert_eq!(j["found"], false);
        let (status, _) = call_route(off, None, None, "/accounts/a%20b/calls").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Tracking on: two calls of alice (one answered), one of bob.
        let epoch = t0 - Duration::from_secs(100);
        let live = Arc::new(LiveState::new(LiveConfig::default(), epoch));
        let shared = super::super::live::test_shared_live(Some(Arc::clone(&live)));
        shared
            .snapshot
            .apply_full(
                vec![acct("alice", "10", "0", true), acct("bob", "10", "0", true)],
                t0,
                0.5,
                false,
            )
            .unwrap();
        let figures = AccountFigures::new(Decimal::TEN, t0);
        let entry = Arc::new(TariffEntry::per_minute(Decimal::new(150, 2)));
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        let k1 = live.call_key(b"c1", b"t");
        let k2 = live.call_key(b"c2", b"t");
        let k3 = live.call_key(b"c3", b"t");
        live.admit(
            &alice,
            k1,
            &entry,
            &figures,
            epoch + Duration::from_secs(10),
            0,
        )
        .unwrap();
        live.admit(
            &alice,
            k2,
            &entry,
            &figures,
            epoch + Duration::from_secs(40),
            0,
        )
        .unwrap();
        live.admit(
            &bob,
            k3,
            &entry,
            &figures,
            epoch + Duration::from_secs(50),
            0,
        )
        .unwrap();
        live.answered(k1, epoch + Duration::from_secs(20), 0);

        let (status, j) =
            call_route(Arc::clone(&shared), None, None, "/accounts/alice/calls").await;
        assert_eq!(status, StatusCode::OK, "{j}");
        assert_eq!(j["tracking"], true);
        assert_eq!(j["count"], 2);
        assert_eq!(j["truncated"], false);
        let calls = j["calls"].as_array().unwrap();
        assert_eq!(calls[0]["key"], k1.to_hex());
        assert_eq!(calls[0]["state"], "answered");
        assert!(calls[0]["started_ago_s"].as_u64().unwrap() >= 90, "{j}");
        assert_eq!(calls[0]["rate_per_min"], "1.50");
        assert_eq!(calls[1]["key"], k2.to_hex());
        assert_eq!(calls[1]["state"], "ringing");
        assert_eq!(calls[1]["held"], "0", "no reserve configured: {j}");
        let (_, j) = call_route(
            Arc::clone(&shared),
            None,
            None,
            "/accounts/alice/calls?limit=1",
        )
        .await;
        assert_eq!(j["count"], 1);
        assert_eq!(j["truncated"], true);
        let (_, j) = call_route(Arc::clone(&shared), None, None, "/accounts/bob/calls").await;
        assert_eq!(j["calls"][0]["key"], k3.to_hex());
        assert_eq!(k3.to_hex().len(), 32);

        // The bearer token guards it like the other account routes.
        let (status, _) = call_route(
            Arc::clone(&shared),
            Some("tok"),
            None,
            "/accounts/alice/calls",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, j) =
            call_route(shared, Some("tok"), Some("tok"), "/accounts/alice/calls").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(j["count"], 2);
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret2"));
        assert!(!ct_eq(b"", b"x"));
    }
}
