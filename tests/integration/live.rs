//! Issue 11, acceptance 3 (and SPEC 7 "Calls in progress"): the live limits end to end, over
//! real UDP against the real binary with a file credit source, a fake switch on [`SWITCH_IP`]
//! that answers each forwarded INVITE as the test needs (180, 200 + ACK + BYE, 486 + ACK), and
//! the admin API for the live figures and the counters.
//!
//! | test | SPEC 7 rule |
//! | --- | --- |
//! | [`channel_limit_refuses_the_third_call_in_progress_with_its_code`] | `max_channels` |
//! | [`credit_scaled_channels_refuse_a_call_the_reserve_alone_would_admit`] | `credit_scaled_channels` |
//! | [`cps_limit_admits_the_burst_and_refuses_the_rest_with_its_code`] | `max_cps` (GCRA, burst = max_cps) |
//! | [`daily_spend_limit_counts_spent_today_held_and_ended_calls`] | `daily_spend_limit` |
//! | [`twenty_simultaneous_invites_on_two_workers_admit_exactly_three`] | reserve: check and hold are one step |
//! | [`a_two_prefix_tariff_refuses_the_expensive_prefix_and_admits_the_cheap_one`] | tariffs, longest prefix, tech prefix and `+` removed |
//! | [`unrated_refuse_answers_no_rate`] | `unrated = "refuse"` |
//! | [`a_full_call_table_refuses_with_channel_limit_and_counts_table_full`] | `max_tracked_calls` |
//! | [`dry_run_forwards_calls_over_every_new_limit_and_counts_them`] | `enforce = false` |
//!
//! No timing assertions: every wait is bounded and polls for evidence. The two tests whose
//! outcome depends on elapsed time say how: the CPS test bounds the admitted calls by the time
//! the burst took, and the credit-scaled test needs its answered call to be younger than its
//! 30 s reserve (it fails with a message saying so if the machine was slower than that).
//!
//! Each test names the refusal codes it expects from [`REPLIES`], where every new cause gets a code
//! of its own, so a refusal for the wrong cause cannot pass for the right one.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use serde_json::Value as Json;

use crate::harness::*;

/// `[reply]` for the live causes: a distinct code and reason each.
pub(crate) const REPLIES: &str = r#"
[reply]
insufficient_credit = { code = 402, reason = "Payment Required" }
channel_limit = { code = 480, reason = "Channel Limit" }
cps_limit = { code = 503, reason = "Slow Down", retry_after = "1s" }
spend_limit = { code = 403, reason = "Spend Limit" }
no_rate = { code = 404, reason = "No Rate" }
"#;
pub(crate) const INSUFFICIENT: u16 = 402;
pub(crate) const CHANNEL_LIMIT: u16 = 480;
pub(crate) const CPS_LIMIT: u16 = 503;
pub(crate) const SPEND_LIMIT: u16 = 403;
pub(crate) const NO_RATE: u16 = 404;

/// The number the tests call by default (a German number: no tariff of these tests covers it).
pub(crate) const NUMBER: &str = "4930123456";

/// `cfg` with the admin API on `127.0.0.1:0`, a one-hour refresh (nothing the test does not
/// trigger: every live figure comes from the calls, and ended calls are not dropped by a
/// refresh), then `[live] track_calls = true` + `live` and [`REPLIES`] appended.
pub(crate) fn with_live(cfg: &str, live: &str) -> String {
    let admin = cfg.replacen(
        "[admin]\nlisten = \"\"",
        &format!("[admin]\nlisten = \"{DAEMON_IP}:0\""),
        1,
    );
    assert_ne!(admin, cfg, "the admin listen line was not replaced:\n{cfg}");
    let slow = admin
        .lines()
        .map(|l| {
            if l.starts_with("refresh_interval = ") {
                "refresh_interval = \"1h\"\nmax_staleness = \"2h\"".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(slow.contains("refresh_interval = \"1h\""), "{slow}");
    format!("{slow}\n\n[live]\ntrack_calls = true\n{live}\n{REPLIES}")
}

// ---------------------------------------------------------------------------------------------
// A daemon, its switch, a caller

/// A running daemon with live tracking, its fake switch and one caller.
pub(crate) struct Live {
    pub daemon: Daemon,
    pub switch: Switch,
    pub caller: Caller,
    pub admin: SocketAddr,
}

/// What became of a new call.
pub(crate) enum Placed {
    /// The INVITE reached the switch.
    Admitted(Box<Call>),
    /// creditgate answered with this final response (already ACKed).
    Refused(Vec<u8>),
}

impl Placed {
    pub fn code(&self) -> Option<u16> {
        match self {
            Placed::Admitted(_) => None,
            Placed::Refused(r) => status_code(r),
        }
    }
    fn describe(&self) -> String {
        match self {
            Placed::Admitted(c) => format!("admitted (Call-ID {})", c.invite.call_id),
            Placed::Refused(r) => format!("refused:\n{}", text(r)),
        }
    }
    /// The call, or a panic saying what happened instead.
    #[track_caller]
    pub fn admitted(self, what: &str) -> Call {
        match self {
            Placed::Admitted(c) => *c,
            other => panic!(
                "{what}: expected the INVITE at the switch, got {}",
                other.describe()
            ),
        }
    }
    /// Asserts a refusal with `code` whose Reason names `cause`.
    #[track_caller]
    pub fn refused(self, code: u16, cause: &str, what: &str) {
        let Placed::Refused(r) = &self else {
            panic!("{what}: expected {code} ({cause}), got {}", self.describe());
        };
        assert_eq!(status_code(r), Some(code), "{what}: {}", text(r));
        let reason = header(r, "Reason").unwrap_or_default();
        assert!(
            reason.contains(&format!("text=\"{cause}\"")),
            "{what}: the Reason header must name {cause}: {reason:?}\n{}",
            text(r)
        );
    }
}

/// An admitted call, from the switch's side.
pub(crate) struct Call {
    /// The INVITE as the caller sent it.
    pub invite: Request,
    /// The INVITE as the switch got it.
    pub at_switch: Vec<u8>,
    /// The daemon socket it came from (where the switch answers).
    pub from: SocketAddr,
    /// The switch's To-tag.
    pub tag: String,
    /// The 200 OK as the caller got it, once answered.
    pub ok: Option<Vec<u8>>,
}

impl Live {
    /// A daemon on `config` and `accounts` (file source), a fresh switch and caller; `config`
    /// is built by the caller from `test_config(0, switch, ...)`, so the switch comes first.
    pub fn start(switch: Switch, config: &str, accounts: &str) -> Live {
        let daemon = Daemon::start(config, accounts);
        let admin = daemon.admin_addr();
        Live {
            daemon,
            switch,
            caller: Caller::bind(),
            admin,
        }
    }

    /// A daemon on a file source with `[live]` settings `live` (see [`with_live`]).
    pub fn file(live: &str, accounts: &str) -> Live {
        let switch = Switch::bind();
        let cfg = with_live(&test_config(0, switch.addr(), "60s"), live);
        Live::start(switch, &cfg, accounts)
    }

    pub fn d(&self) -> SocketAddr {
        self.daemon.sip_addr()
    }

    /// A new-call INVITE from `caller` of account `from_user` to `number`.
    pub fn invite(&self, caller: &Caller, from_user: &str, number: &str) -> Request {
        Request::new(
            "INVITE",
            &format!("sip:{number}@{}", self.d()),
            caller.addr(),
            &new_call_id(),
            from_user,
        )
        .with_to_user(number)
        .sdp()
    }

    /// Sends a new call of `from_user` to `number` from the default caller and waits for its
    /// outcome.
    pub fn place(&self, from_user: &str, number: &str) -> Placed {
        let inv = self.invite(&self.caller, from_user, number);
        self.caller.send(&inv.build(), self.d());
        self.outcome(&self.caller, inv)
    }

    /// Waits (at most [`WAIT`]) for `inv` (already sent from `caller`) to reach the switch or
    /// to get a final reply; a refusal is ACKed (creditgate absorbs the ACK).
    pub fn outcome(&self, caller: &Caller, inv: Request) -> Placed {
        let ours = |m: &[u8]| header(m, "Call-ID").as_deref() == Some(inv.call_id.as_str());
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Some((m, from)) = self.switch.recv_timeout(Duration::from_millis(10)) {
                if ours(&m) && method(&m).as_deref() == Some("INVITE") {
                    return Placed::Admitted(Box::new(Call {
                        invite: inv,
                        at_switch: m,
                        from,
                        tag: new_tag(),
                        ok: None,
                    }));
                }
            }
            if let Some((m, _)) = caller.recv_timeout(Duration::from_millis(10)) {
                if ours(&m) && status_code(&m).is_some_and(|c| c >= 300) {
                    caller.send(&inv.ack_for(&m).build(), self.d());
                    return Placed::Refused(m);
                }
            }
        }
        panic!(
            "INVITE {}: neither at the switch nor answered within {WAIT:?}\n----- daemon log -----\n{}",
            inv.call_id,
            self.daemon.log()
        )
    }

    /// Waits (at most [`WAIT`] after the last progress) for each of `invites` (already sent,
    /// `invites[i]` from `callers[i]`) to reach the switch or get a final reply: the outcomes
    /// of a burst, in `invites` order. Refusals are ACKed.
    pub fn collect(&self, callers: &[Caller], invites: Vec<Request>) -> Vec<Placed> {
        let mut out: Vec<Option<Placed>> = invites.iter().map(|_| None).collect();
        let index = |m: &[u8]| {
            let id = header(m, "Call-ID")?;
            invites.iter().position(|i| i.call_id == id)
        };
        let mut deadline = Instant::now() + WAIT;
        while out.iter().any(Option::is_none) {
            assert!(
                Instant::now() < deadline,
                "{} of {} INVITEs neither at the switch nor answered within {WAIT:?}\n----- daemon log -----\n{}",
                out.iter().filter(|o| o.is_none()).count(),
                invites.len(),
                self.daemon.log()
            );
            while let Some((m, from)) = self.switch.recv_timeout(Duration::from_millis(5)) {
                let Some(i) = index(&m).filter(|_| method(&m).as_deref() == Some("INVITE")) else {
                    continue;
                };
                assert!(out[i].is_none(), "INVITE {i} decided twice:\n{}", text(&m));
                out[i] = Some(Placed::Admitted(Box::new(Call {
                    invite: invites[i].clone(),
                    at_switch: m,
                    from,
                    tag: new_tag(),
                    ok: None,
                })));
                deadline = Instant::now() + WAIT;
            }
            for (c, inv) in callers.iter().zip(&invites) {
                while let Some((m, _)) = c.recv_timeout(Duration::from_millis(1)) {
                    if status_code(&m).is_none_or(|code| code < 300) {
                        continue;
                    }
                    let Some(i) = index(&m) else { continue };
                    assert!(out[i].is_none(), "INVITE {i} decided twice:\n{}", text(&m));
                    c.send(&inv.ack_for(&m).build(), self.d());
                    out[i] = Some(Placed::Refused(m));
                    deadline = Instant::now() + WAIT;
                }
            }
        }
        out.into_iter().map(|o| o.expect("decided")).collect()
    }

    /// The admin API's `live` object of account `id`.
    pub fn live_of(&self, id: &str) -> Json {
        live_json(self.admin, id)
    }

    /// Polls `GET /accounts/{id}` until `want(live)` holds (see [`wait_live`]).
    pub fn wait_live(
        &self,
        id: &str,
        limit: Duration,
        what: &str,
        want: impl Fn(&Json) -> bool,
    ) -> Json {
        wait_live(self.admin, id, limit, what, want)
    }

    /// One counter or gauge now.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&scrape(self.admin), name, labels)
    }

    /// Polls a counter until it reaches `want` (the reply may leave a moment before the
    /// counter is read), then asserts it is exactly `want`.
    #[track_caller]
    pub fn assert_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = Instant::now() + WAIT;
        let mut got = self.metric(name, labels);
        while got < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            got = self.metric(name, labels);
        }
        assert_eq!(got, want, "{name}{labels:?}");
    }
}

impl Call {
    /// The switch rings (180), the caller gets it.
    pub fn ring(&self, live: &Live) {
        live.switch.send(
            &response(&self.at_switch, 180, "Ringing", Some(&self.tag), &[]),
            self.from,
        );
        self.recv_at_caller(live, &live.caller, |c| c == 180, "the 180");
    }

    /// The switch answers 200 (Contact on the switch), the caller gets it and ACKs it through
    /// creditgate, the ACK reaches the switch.
    pub fn answer(&mut self, live: &Live) {
        self.answer_from(live, &live.caller);
    }

    pub fn answer_from(&mut self, live: &Live, caller: &Caller) {
        let contact = format!("<sip:{}@{}>", self.invite.to_user, live.switch.addr());
        let ok = response(
            &self.at_switch,
            200,
            "OK",
            Some(&self.tag),
            &[("Contact", &contact)],
        );
        live.switch.send(&ok, self.from);
        let ok = self.recv_at_caller(live, caller, |c| c == 200, "the 200 OK");
        caller.send(&self.invite.in_dialog("ACK", &ok, 1).build(), live.d());
        self.recv_at_switch(live, "ACK", "the ACK of the 200");
        self.ok = Some(ok);
    }

    /// The switch refuses (`code`, e.g. 486), the caller gets it and ACKs it, the ACK reaches
    /// the switch.
    pub fn fail(&self, live: &Live, code: u16) {
        self.fail_from(live, &live.caller, code);
    }

    pub fn fail_from(&self, live: &Live, caller: &Caller, code: u16) {
        live.switch.send(
            &response(&self.at_switch, code, "Busy Here", Some(&self.tag), &[]),
            self.from,
        );
        let r = self.recv_at_caller(live, caller, |c| c == code, "the switch's refusal");
        caller.send(&self.invite.ack_for(&r).build(), live.d());
        self.recv_at_switch(live, "ACK", "the ACK of the switch's refusal");
    }

    /// The caller hangs up: BYE through creditgate (CSeq 2), the switch answers 200, the
    /// caller gets it.
    pub fn bye(&self, live: &Live) {
        let ok = self.ok.as_ref().expect("bye() needs an answered call");
        let bye = self.invite.in_dialog("BYE", ok, 2);
        live.caller.send(&bye.build(), live.d());
        let (at, from) = self.recv_at_switch(live, "BYE", "the BYE");
        live.switch.send(&response(&at, 200, "OK", None, &[]), from);
        self.recv_at_caller(live, &live.caller, |c| c == 200, "the 200 of the BYE");
    }

    #[track_caller]
    fn recv_at_caller(
        &self,
        live: &Live,
        caller: &Caller,
        want: impl Fn(u16) -> bool,
        what: &str,
    ) -> Vec<u8> {
        let id = self.invite.call_id.as_str();
        match caller.recv_matching(WAIT, |m| {
            header(m, "Call-ID").as_deref() == Some(id) && status_code(m).is_some_and(&want)
        }) {
            Some((m, _)) => m,
            None => panic!(
                "{what} of call {id} never reached the caller\n----- daemon log -----\n{}",
                live.daemon.log()
            ),
        }
    }

    #[track_caller]
    fn recv_at_switch(&self, live: &Live, m: &str, what: &str) -> (Vec<u8>, SocketAddr) {
        let id = self.invite.call_id.as_str();
        live.switch
            .recv_matching(WAIT, |x| {
                header(x, "Call-ID").as_deref() == Some(id) && method(x).as_deref() == Some(m)
            })
            .unwrap_or_else(|| {
                panic!(
                    "{what} of call {id} never reached the switch\n----- daemon log -----\n{}",
                    live.daemon.log()
                )
            })
    }
}

/// The `live` object of `GET /accounts/{id}` on the admin API at `admin`.
pub(crate) fn live_json(admin: SocketAddr, id: &str) -> Json {
    let r = get(admin, &format!("/accounts/{id}"));
    assert_eq!(r.status, 200, "GET /accounts/{id}: {}", r.body);
    let j = r.json();
    let live = j["live"].clone();
    assert!(
        live.is_object(),
        "GET /accounts/{id} has no `live` object: {}",
        r.body
    );
    live
}

/// Polls `GET /accounts/{id}` until `want(live)` holds; panics with the last `live` object
/// after `limit`.
pub(crate) fn wait_live(
    admin: SocketAddr,
    id: &str,
    limit: Duration,
    what: &str,
    want: impl Fn(&Json) -> bool,
) -> Json {
    let deadline = Instant::now() + limit;
    loop {
        let live = live_json(admin, id);
        if want(&live) {
            return live;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: GET /accounts/{id} live is still {live:#} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A decimal of the admin API (a JSON string or number).
#[track_caller]
pub(crate) fn money(v: &Json) -> Decimal {
    match v {
        Json::String(s) => Decimal::from_str(s).unwrap_or_else(|e| panic!("{s:?}: {e}")),
        Json::Number(n) => Decimal::from_str(&n.to_string()).unwrap(),
        other => panic!("not a money figure: {other}"),
    }
}

pub(crate) fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

/// A count of the admin API.
#[track_caller]
pub(crate) fn count(v: &Json) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// One `[[account]]` table.
pub(crate) fn account(id: &str, fields: &[(&str, &str)]) -> String {
    let mut s = format!("[[account]]\nid = \"{id}\"\ndebit_limit = \"0\"\n");
    for (k, v) in fields {
        s += &format!("{k} = \"{v}\"\n");
    }
    s + "\n"
}

// ---------------------------------------------------------------------------------------------
// Channel limits

/// `max_channels = 2`: two calls in progress (ringing or answered) are the limit; the third
/// gets the `channel_limit` reply; a call that ends (486, BYE) makes room for exactly one.
#[test]
fn channel_limit_refuses_the_third_call_in_progress_with_its_code() {
    let accounts = account(
        "chan",
        &[
            ("balance", "100"),
            ("rate_per_min", "0.10"),
            ("max_channels", "2"),
        ],
    ) + &account("other", &[("balance", "100"), ("rate_per_min", "0.10")]);
    let live = Live::file("", &accounts);

    let mut one = live.place("chan", NUMBER).admitted("call 1");
    one.ring(&live);
    let two = live.place("chan", NUMBER).admitted("call 2");
    two.ring(&live);
    live.place("chan", NUMBER)
        .refused(CHANNEL_LIMIT, "channel_limit", "call 3 (two ringing)");
    // The limit is the account's: another account still gets through.
    let _o = live.place("other", NUMBER).admitted("another account");
    let l = live.live_of("chan");
    assert_eq!(
        (count(&l["calls_in_progress"]), count(&l["ringing"])),
        (2, 2),
        "{l:#}"
    );

    // Call 1 answered: still two in progress.
    one.answer(&live);
    live.place("chan", NUMBER).refused(
        CHANNEL_LIMIT,
        "channel_limit",
        "call 4 (one answered, one ringing)",
    );
    // Call 2 refused by the switch: one slot free, taken by call 5; call 6 is over again.
    two.fail(&live, 486);
    let five = live
        .place("chan", NUMBER)
        .admitted("call 5 after the 486 of call 2");
    live.place("chan", NUMBER)
        .refused(CHANNEL_LIMIT, "channel_limit", "call 6");
    // Call 1 hangs up: room for one more.
    one.bye(&live);
    let _seven = live
        .place("chan", NUMBER)
        .admitted("call 7 after the BYE of call 1");
    live.place("chan", NUMBER)
        .refused(CHANNEL_LIMIT, "channel_limit", "call 8");
    let _ = five;

    live.assert_metric(
        "creditgate_refusals_total",
        &[("cause", "channel_limit")],
        4.0,
    );
    live.assert_metric(
        "creditgate_live_refusals_total",
        &[("reason", "channel_limit")],
        4.0,
    );
    live.assert_metric("creditgate_calls_ended_total", &[("cause", "failed")], 1.0);
    live.assert_metric("creditgate_calls_ended_total", &[("cause", "bye")], 1.0);
    // chan: 5 and 7 ringing; other: 1.
    live.assert_metric("creditgate_calls_tracked", &[], 3.0);
}

/// `credit_scaled_channels`: no more calls in progress than live credit covers for the
/// reserve each. Balance 2.00 at 1.00/min with a 30 s reserve (0.50): with one answered call
/// (holding 0.50) and two ringing (0.50 each), live credit is 0.50 and would still cover one
/// more reserve, but four calls would need 2.00 of the 1.50 left after the answered call's
/// hold: refused with `channel_limit`, not `insufficient_credit`.
///
/// Depends on time only through the answered call's hold, which stays at the reserve (0.50)
/// while the call is younger than 30 s; the test fails with a message if it was not.
#[test]
fn credit_scaled_channels_refuse_a_call_the_reserve_alone_would_admit() {
    let accounts = account("scaled", &[("balance", "2.00"), ("rate_per_min", "1.00")]);
    let live = Live::file(
        "reserve = \"30s\"\ncredit_scaled_channels = true\n",
        &accounts,
    );
    let mut a = live.place("scaled", NUMBER).admitted("call A");
    a.answer(&live);
    let answered_at = Instant::now();
    let b = live
        .place("scaled", NUMBER)
        .admitted("call B (2 x 0.50 <= 1.50)");
    let _c = live
        .place("scaled", NUMBER)
        .admitted("call C (3 x 0.50 <= 1.50)");
    let l = live.live_of("scaled");
    assert_eq!(money(&l["live_available"]), dec("0.50"), "{l:#}");
    let d = live.place("scaled", NUMBER);
    assert!(
        answered_at.elapsed() < Duration::from_secs(25),
        "the machine took {:?} from the answer of call A to call D: the answered call's hold \
         may have grown past its reserve, which this test does not cover",
        answered_at.elapsed()
    );
    d.refused(
        CHANNEL_LIMIT,
        "channel_limit",
        "call D (4 x 0.50 > 1.50, though live credit 0.50 covers its reserve)",
    );
    live.assert_metric(
        "creditgate_live_refusals_total",
        &[("reason", "credit_scaled_channels")],
        1.0,
    );
    // Call B ends: three calls fit again.
    b.fail(&live, 486);
    let _e = live
        .place("scaled", NUMBER)
        .admitted("call E after the 486 of call B");
}

// ---------------------------------------------------------------------------------------------
// CPS

/// `max_cps = 2` (burst 2, then one every 0.5 s): a burst of 12 INVITEs from 12 sockets
/// (both workers) admits the burst and refuses the rest with `cps_limit`. Bounded without a
/// timing assumption: the GCRA admits at most `2 + floor(elapsed / 0.5 s)` calls in the span
/// the burst took to be decided (normally a few ms: exactly 2), and at least the first 2.
#[test]
fn cps_limit_admits_the_burst_and_refuses_the_rest_with_its_code() {
    const N: usize = 12;
    const MAX_CPS: u64 = 2;
    let accounts = account(
        "cps",
        &[
            ("balance", "100"),
            ("rate_per_min", "0.10"),
            ("max_cps", "2"),
        ],
    );
    let live = Live::file("", &accounts);
    let callers: Vec<Caller> = (0..N).map(|_| Caller::bind()).collect();
    let invites: Vec<Request> = callers
        .iter()
        .map(|c| live.invite(c, "cps", NUMBER))
        .collect();
    let datagrams: Vec<Vec<u8>> = invites.iter().map(Request::build).collect();
    let t0 = Instant::now();
    for (c, dg) in callers.iter().zip(&datagrams) {
        c.send(dg, live.d());
    }
    let outcomes = live.collect(&callers, invites);
    let elapsed = t0.elapsed();
    let admitted = outcomes.iter().filter(|o| o.code().is_none()).count() as u64;
    let bound = MAX_CPS + (elapsed.as_millis() as u64 * MAX_CPS) / 1000;
    println!("cps burst: {admitted} of {N} admitted, decided within {elapsed:?} (bound {bound})");
    assert!(
        (MAX_CPS..=bound).contains(&admitted),
        "{admitted} of {N} admitted within {elapsed:?}: a burst of {MAX_CPS} plus one per \
         {}ms allows {MAX_CPS}..={bound}",
        1000 / MAX_CPS
    );
    for o in outcomes.into_iter().filter(|o| o.code().is_some()) {
        o.refused(CPS_LIMIT, "cps_limit", "an INVITE over the CPS limit");
    }
    let refused = N as f64 - admitted as f64;
    live.assert_metric(
        "creditgate_refusals_total",
        &[("cause", "cps_limit")],
        refused,
    );
    live.assert_metric(
        "creditgate_live_refusals_total",
        &[("reason", "cps_limit")],
        refused,
    );
    // The bucket refills: a later call passes (polled; the first tries may still be early).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match live.place("cps", NUMBER) {
            Placed::Admitted(_) => break,
            Placed::Refused(r) => {
                assert_eq!(status_code(&r), Some(CPS_LIMIT), "{}", text(&r));
                assert!(Instant::now() < deadline, "the CPS bucket never refilled");
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Daily spend

/// `daily_spend_limit = 10.00` with `spent_today = 9.00` and a 30 s reserve at 1.00/min
/// (0.50): the first call holds 0.50 (9.50 < 10.00, admitted); a second would reach 10.00:
/// refused with `spend_limit`; once the first call has ended after a few seconds (its cost,
/// a few cents, counts for today instead of its hold) one call fits again. An account whose
/// `spent_today` has reached its limit is refused at once.
#[test]
fn daily_spend_limit_counts_spent_today_held_and_ended_calls() {
    let accounts = account(
        "spender",
        &[
            ("balance", "100"),
            ("rate_per_min", "1.00"),
            ("daily_spend_limit", "10.00"),
            ("spent_today", "9.00"),
        ],
    ) + &account(
        "spent",
        &[
            ("balance", "100"),
            ("rate_per_min", "1.00"),
            ("daily_spend_limit", "10.00"),
            ("spent_today", "10.00"),
        ],
    );
    let live = Live::file("reserve = \"30s\"\n", &accounts);
    live.place("spent", NUMBER)
        .refused(SPEND_LIMIT, "spend_limit", "spent_today at the limit");

    let mut one = live
        .place("spender", NUMBER)
        .admitted("call 1 (9.00 + 0.50 < 10.00)");
    live.place("spender", NUMBER).refused(
        SPEND_LIMIT,
        "spend_limit",
        "call 2 (9.00 + 2 x 0.50 = 10.00)",
    );
    one.answer(&live);
    live.place("spender", NUMBER).refused(
        SPEND_LIMIT,
        "spend_limit",
        "call 3 (call 1 answered, holding 0.50)",
    );
    one.bye(&live);
    live.wait_live("spender", WAIT, "call 1 ended", |l| {
        count(&l["calls_in_progress"]) == 0
    });
    let _four = live
        .place("spender", NUMBER)
        .admitted("call 4 (call 1 ended)");
    live.assert_metric(
        "creditgate_refusals_total",
        &[("cause", "spend_limit")],
        3.0,
    );
    live.assert_metric(
        "creditgate_live_refusals_total",
        &[("reason", "spend_limit")],
        3.0,
    );
}

// ---------------------------------------------------------------------------------------------
// The reserve under concurrency

/// Acceptance 3: 20 INVITEs of one account sent at once from 20 source ports (spread over
/// the two workers by `SO_REUSEPORT`), credit for exactly 3 reserves (1.50 at 1.00/min, 30 s
/// reserve = 0.50): exactly 3 reach the switch, 17 get 402, and the account holds 1.50.
#[test]
fn twenty_simultaneous_invites_on_two_workers_admit_exactly_three() {
    const N: usize = 20;
    let accounts = account("three", &[("balance", "1.50"), ("rate_per_min", "1.00")]);
    let switch = Switch::bind();
    let cfg = with_live(&test_config(0, switch.addr(), "60s"), "reserve = \"30s\"\n");
    assert!(cfg.contains("workers = 2\n"), "{cfg}");
    let live = Live::start(switch, &cfg, &accounts);
    let callers: Vec<Caller> = (0..N).map(|_| Caller::bind()).collect();
    let invites: Vec<Request> = callers
        .iter()
        .map(|c| live.invite(c, "three", NUMBER))
        .collect();
    let datagrams: Vec<Vec<u8>> = invites.iter().map(Request::build).collect();
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        // Two sending threads, ten sockets each, released together.
        for half in [0, 1] {
            let (callers, datagrams, barrier, d) = (&callers, &datagrams, &barrier, live.d());
            s.spawn(move || {
                barrier.wait();
                for i in (half..N).step_by(2) {
                    callers[i].send(&datagrams[i], d);
                }
            });
        }
    });
    let outcomes = live.collect(&callers, invites);
    let admitted = outcomes.iter().filter(|o| o.code().is_none()).count();
    assert_eq!(admitted, 3, "admitted of {N} simultaneous INVITEs");
    for o in outcomes.into_iter().filter(|o| o.code().is_some()) {
        o.refused(
            INSUFFICIENT,
            "insufficient_credit",
            "an INVITE past 3 reserves",
        );
    }
    live.switch.expect_nothing(QUIET);
    let l = live.live_of("three");
    assert_eq!(count(&l["calls_in_progress"]), 3, "{l:#}");
    assert_eq!(count(&l["ringing"]), 3, "{l:#}");
    assert_eq!(money(&l["held"]), dec("1.50"), "{l:#}");
    assert_eq!(money(&l["live_available"]), dec("0"), "{l:#}");
    live.assert_metric(
        "creditgate_refusals_total",
        &[("cause", "insufficient_credit")],
        17.0,
    );
}

// ---------------------------------------------------------------------------------------------
// Tariffs and unrated numbers

/// The accounts file's tariff of the tariff tests: "44" costs 1.20/min with a 0.10 connect
/// fee billed 60/6 (a 30 s reserve: 0.10 + 1.20 = 1.30), "4420" 0.01/min (30 s: 0.005).
pub(crate) const INTL: &str = r#"
[[tariff]]
name = "intl"
rates = { "44" = "1.20 0.10 60/6", "4420" = "0.0100" }
"#;
/// London (prefix 4420, cheap), Manchester (prefix 44 only, expensive), Paris (no prefix).
pub(crate) const CHEAP: &str = "+442071234567";
pub(crate) const DEAR: &str = "+441611234567";
pub(crate) const UNCOVERED: &str = "+33142345678";

/// A tariff with two prefixes, credit 0.50 and a 30 s reserve: the call to the expensive
/// prefix (reserve 1.30) is refused 402, the call to the cheap one (0.005) admitted; the
/// Request-URI user carries the account's tech prefix and a `+`, which the lookup removes.
#[test]
fn a_two_prefix_tariff_refuses_the_expensive_prefix_and_admits_the_cheap_one() {
    let accounts = format!(
        "{INTL}\n{}",
        account(
            "tarred",
            &[
                ("balance", "0.50"),
                ("tariff", "intl"),
                ("tech_prefix", "99")
            ],
        )
    );
    let live = Live::file("reserve = \"30s\"\n", &accounts);
    live.place("tarred", &format!("99{DEAR}")).refused(
        INSUFFICIENT,
        "insufficient_credit",
        "a call to prefix 44",
    );
    let _c = live
        .place("tarred", &format!("99{CHEAP}"))
        .admitted("a call to prefix 4420 on the same credit");
    let l = live.live_of("tarred");
    assert_eq!(money(&l["held"]), dec("0.005"), "{l:#}");
    // Prefix 44 still refused with the cheap call's hold on top.
    live.place("tarred", &format!("99{DEAR}")).refused(
        INSUFFICIENT,
        "insufficient_credit",
        "prefix 44 again",
    );
}

/// `unrated = "refuse"`: a number no tariff entry covers, of an account without
/// `rate_per_min`, gets the `no_rate` reply; with a `rate_per_min` to fall back on, or a
/// covered prefix, it is admitted; an account with neither tariff nor rate gets `no_rate`.
#[test]
fn unrated_refuse_answers_no_rate() {
    let accounts = format!(
        "{INTL}\n{}{}{}",
        account("tarred", &[("balance", "10"), ("tariff", "intl")]),
        account(
            "fallback",
            &[
                ("balance", "10"),
                ("tariff", "intl"),
                ("rate_per_min", "0.50")
            ],
        ),
        account("norate", &[("balance", "10")]),
    );
    let live = Live::file("unrated = \"refuse\"\n", &accounts);
    live.place("tarred", UNCOVERED).refused(
        NO_RATE,
        "no_rate",
        "an uncovered number, no rate_per_min",
    );
    let _a = live
        .place("tarred", CHEAP)
        .admitted("a covered number of the same account");
    let _b = live
        .place("fallback", UNCOVERED)
        .admitted("an uncovered number with rate_per_min");
    live.place("norate", NUMBER)
        .refused(NO_RATE, "no_rate", "an account with no rate at all");
    live.assert_metric("creditgate_refusals_total", &[("cause", "no_rate")], 2.0);
    live.assert_metric(
        "creditgate_live_refusals_total",
        &[("reason", "no_rate")],
        2.0,
    );
}

// ---------------------------------------------------------------------------------------------
// Capacity, dry-run

/// `max_tracked_calls = 2`: two calls of two accounts fill the table; a third call (a third
/// account, no limit of its own) is refused with `channel_limit`, counted as `table_full`,
/// never admitted untracked; once a call ends one fits again.
#[test]
fn a_full_call_table_refuses_with_channel_limit_and_counts_table_full() {
    let accounts = account("a1", &[("balance", "100"), ("rate_per_min", "0.10")])
        + &account("a2", &[("balance", "100"), ("rate_per_min", "0.10")])
        + &account("a3", &[("balance", "100"), ("rate_per_min", "0.10")]);
    let live = Live::file("max_tracked_calls = 2\n", &accounts);
    let one = live.place("a1", NUMBER).admitted("call 1");
    let _two = live.place("a2", NUMBER).admitted("call 2");
    live.place("a3", NUMBER)
        .refused(CHANNEL_LIMIT, "channel_limit", "call 3 at a full table");
    live.assert_metric(
        "creditgate_live_refusals_total",
        &[("reason", "table_full")],
        1.0,
    );
    live.assert_metric(
        "creditgate_refusals_total",
        &[("cause", "channel_limit")],
        1.0,
    );
    live.assert_metric("creditgate_calls_tracked", &[], 2.0);
    one.fail(&live, 486);
    let _four = live
        .place("a3", NUMBER)
        .admitted("call 4 after call 1 ended");
    live.assert_metric("creditgate_calls_tracked", &[], 2.0);
}

/// `[credit] enforce = false`: calls over each new limit (channels, spend, reserve, unrated)
/// are forwarded, and counted as dry-run refusals with their cause, never as refusals.
#[test]
fn dry_run_forwards_calls_over_every_new_limit_and_counts_them() {
    let accounts = account(
        "dchan",
        &[
            ("balance", "100"),
            ("rate_per_min", "0.10"),
            ("max_channels", "1"),
        ],
    ) + &account(
        "dspend",
        &[
            ("balance", "100"),
            ("rate_per_min", "0.10"),
            ("daily_spend_limit", "5"),
            ("spent_today", "5"),
        ],
    ) + &account("dpoor", &[("balance", "0.10"), ("rate_per_min", "1.00")])
        + &account("dnorate", &[("balance", "100")]);
    let switch = Switch::bind();
    let cfg = with_live(
        &test_config(0, switch.addr(), "60s"),
        "reserve = \"30s\"\nunrated = \"refuse\"\n",
    );
    let cfg = cfg.replacen(
        "source = \"file\"\n",
        "source = \"file\"\nenforce = false\n",
        1,
    );
    assert!(cfg.contains("enforce = false"), "{cfg}");
    let live = Live::start(switch, &cfg, &accounts);
    let _a = live.place("dchan", NUMBER).admitted("dchan call 1");
    let _b = live
        .place("dchan", NUMBER)
        .admitted("dchan call 2 (over max_channels)");
    let _c = live
        .place("dspend", NUMBER)
        .admitted("dspend (over the daily limit)");
    let _d = live
        .place("dpoor", NUMBER)
        .admitted("dpoor (0.10 < reserve 0.50)");
    let _e = live.place("dnorate", NUMBER).admitted("dnorate (unrated)");
    for cause in [
        "channel_limit",
        "spend_limit",
        "insufficient_credit",
        "no_rate",
    ] {
        live.assert_metric(
            "creditgate_dry_run_refusals_total",
            &[("cause", cause)],
            1.0,
        );
        live.assert_metric("creditgate_refusals_total", &[("cause", cause)], 0.0);
    }
}
