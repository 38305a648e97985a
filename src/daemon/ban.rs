//! Bans after authentication failures (`[abuse]`), in the spirit of Kamailio's pike + htable
//! bans or fail2ban: a source the switch keeps answering 401/407 (or 403 to its REGISTER) is a
//! password guesser (svcrack) or an account scanner (svwar), and after
//! `ban_after_auth_failures` of them within `ban_window` everything it sends is dropped for
//! `ban_time`.
//!
//! Boundary: bookkeeping plus the reading of a relayed response. The worker asks
//! [`Bans::is_banned`] right after `recv_from` and, for every response the core relays, calls
//! [`observe_response`] with its destination (where the request came from: `received`/`rport`
//! that creditgate wrote itself) and bytes. Time comes in as an argument, so the tests drive it
//! without a clock.
//!
//! * A 2xx to a REGISTER or an INVITE to that source clears its count: a challenge answered with
//!   the right credentials is how digest authentication works, and never adds up.
//! * Upstreams and `[sip] trusted` networks are never banned (checked by [`observe_response`]).
//! * Keys are IPv4 addresses (IPv4-mapped included) or IPv6 /64s, as in `flood.rs`.
//! * Memory is bounded: at most `max_tracked` failure counts and `max_tracked` bans. A full table
//!   first forgets what has expired; a new source that still finds no room is not tracked (fail
//!   open: real customers are never locked out by a table full of spoofed entries), and a ban
//!   that finds no room is counted in `refused_full`.
//! * Cost on the packet path: one relaxed atomic load per datagram while no ban is active; a
//!   mutex and a hash lookup while some are. A relayed response costs a look at its status code;
//!   only a 401/403/407, or a 2xx to a source with failures counted, is read further.
//!
//! A caveat documented in `docs/overload.md`: over UDP the source address can be forged, so a
//! third party can get an address banned by sending REGISTERs in its name that the switch
//! refuses. Generous thresholds, `DELETE /bans/{ip}` and the trusted networks bound the harm.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::events::{Counter, LineLimiter, LineVerdict};
use super::flood::source_key;
use crate::config::AbuseConfig;
use crate::core::scan::{self, Hdr};
use crate::core::Policy;

/// The settings of `[abuse]` the table uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanSettings {
    /// Failures before a ban; 0 = never ban.
    pub threshold: u32,
    pub window: Duration,
    pub ban_time: Duration,
    pub max_tracked: usize,
}

impl From<&AbuseConfig> for BanSettings {
    fn from(a: &AbuseConfig) -> Self {
        BanSettings {
            threshold: a.ban_after_auth_failures,
            window: a.ban_window,
            ban_time: a.ban_time,
            max_tracked: a.max_tracked,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    first: Instant,
    count: u32,
}

/// One ban, as the admin API lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ban {
    /// The banned source: an IPv4 address or the first address of an IPv6 /64.
    pub address: IpAddr,
    pub since: Instant,
    pub until: Instant,
    /// Failures counted when it was issued.
    pub failures: u32,
}

#[derive(Debug)]
struct Inner {
    settings: BanSettings,
    failures: HashMap<IpAddr, Failures>,
    bans: HashMap<IpAddr, Ban>,
    /// The earliest end among `bans`: when it has passed, the next look sweeps the table, so
    /// expired bans of sources that never come back do not linger (nor keep the slow path on).
    next_expiry: Option<Instant>,
}

impl Inner {
    /// Removes the bans ended at `now` once the earliest end has passed.
    fn sweep(&mut self, now: Instant) {
        if self.next_expiry.is_some_and(|t| t <= now) {
            self.bans.retain(|_, b| b.until > now);
            self.next_expiry = self.bans.values().map(|b| b.until).min();
        }
    }
}

/// The ban table, shared by every worker.
#[derive(Debug)]
pub struct Bans {
    inner: Mutex<Inner>,
    /// `bans.len()`, for the lock-free fast path of [`Bans::is_banned`].
    active: AtomicUsize,
    /// `failures.len()`, for the fast path of a 2xx.
    tracked: AtomicUsize,
    /// Bans issued (`creditgate_bans_issued_total`).
    pub issued: Counter,
    /// Datagrams dropped because their source was banned (`creditgate_ban_drops_total`).
    pub dropped: Counter,
    /// Bans not issued because the table was full (`creditgate_bans_refused_total`).
    pub refused_full: Counter,
    /// Budget of "banned" log lines (a forged-source attack could issue many bans a second).
    pub log_lines: LineLimiter,
}

impl Bans {
    pub fn new(settings: BanSettings) -> Bans {
        Bans {
            inner: Mutex::new(Inner {
                settings,
                failures: HashMap::new(),
                bans: HashMap::new(),
                next_expiry: None,
            }),
            active: AtomicUsize::new(0),
            tracked: AtomicUsize::new(0),
            issued: Counter::default(),
            dropped: Counter::default(),
            refused_full: Counter::default(),
            log_lines: LineLimiter::default(),
        }
    }

    /// New settings (SIGHUP). Bans already issued keep their end; a threshold of 0 stops new
    /// ones and forgets the failure counts.
    pub fn configure(&self, settings: BanSettings) {
        let mut g = self.lock();
        g.settings = settings;
        if settings.threshold == 0 {
            g.failures.clear();
        }
        self.publish(&g);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind: still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, g: &Inner) {
        self.active.store(g.bans.len(), Ordering::Relaxed);
        self.tracked.store(g.failures.len(), Ordering::Relaxed);
    }

    /// Whether a "banned" log line may be written at `now` (at most 20 a second; the held-back
    /// ones are summed up in the next).
    pub fn log_allowed(&self, now: Instant) -> bool {
        match self.log_lines.allow(now) {
            LineVerdict::Write { suppressed_before } => {
                if suppressed_before > 0 {
                    tracing::warn!(
                        suppressed = suppressed_before,
                        "ban log lines suppressed since the last one (see GET /bans and creditgate_bans_issued_total)"
                    );
                }
                true
            }
            LineVerdict::Suppress => false,
        }
    }

    /// Bans in force.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Whether `ip` is banned at `now` (an expired ban is removed here).
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        if self.active.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let key = source_key(ip);
        let mut g = self.lock();
        let before = g.bans.len();
        g.sweep(now);
        if g.bans.len() != before {
            self.publish(&g);
        }
        g.bans.get(&key).is_some_and(|b| b.until > now)
    }

    /// Bans in force at `now`. Ended bans, and failure counts whose window has passed, are
    /// removed first (called on each `/metrics` scrape, off the packet path).
    pub fn active_at(&self, now: Instant) -> usize {
        let mut g = self.lock();
        g.sweep(now);
        let window = g.settings.window;
        g.failures
            .retain(|_, f| now.saturating_duration_since(f.first) < window);
        self.publish(&g);
        g.bans.len()
    }

    /// One authentication failure of `ip` at `now`; the ban when this one completes it.
    pub fn failure(&self, ip: IpAddr, now: Instant) -> Option<Ban> {
        let key = source_key(ip);
        let mut g = self.lock();
        let s = g.settings;
        if s.threshold == 0 {
            return None;
        }
        if g.bans.get(&key).is_some_and(|b| b.until > now) {
            return None;
        }
        if !g.failures.contains_key(&key) && g.failures.len() >= s.max_tracked {
            g.failures
                .retain(|_, f| now.saturating_duration_since(f.first) < s.window);
            if g.failures.len() >= s.max_tracked {
                self.publish(&g);
                return None;
            }
        }
        let f = g.failures.entry(key).or_insert(Failures {
            first: now,
            count: 0,
        });
        if now.saturating_duration_since(f.first) >= s.window {
            *f = Failures {
                first: now,
                count: 0,
            };
        }
        f.count = f.count.saturating_add(1);
        let count = f.count;
        if count < s.threshold {
            self.publish(&g);
            return None;
        }
        g.failures.remove(&key);
        if !g.bans.contains_key(&key) && g.bans.len() >= s.max_tracked {
            g.bans.retain(|_, b| b.until > now);
            g.next_expiry = g.bans.values().map(|b| b.until).min();
        }
        if !g.bans.contains_key(&key) && g.bans.len() >= s.max_tracked {
            self.refused_full.inc();
            self.publish(&g);
            return None;
        }
        let ban = Ban {
            address: key,
            since: now,
            until: now + s.ban_time,
            failures: count,
        };
        g.bans.insert(key, ban);
        g.next_expiry = Some(g.next_expiry.map_or(ban.until, |t| t.min(ban.until)));
        self.issued.inc();
        self.publish(&g);
        Some(ban)
    }

    /// A successful authentication of `ip` (a 2xx to its REGISTER or INVITE): its failures are
    /// forgotten.
    pub fn success(&self, ip: IpAddr) {
        if self.tracked.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut g = self.lock();
        if g.failures.remove(&source_key(ip)).is_some() {
            self.publish(&g);
        }
    }

    /// Whether `ip` has failures counted (a 2xx to it is then worth reading).
    fn has_failures(&self, ip: IpAddr) -> bool {
        self.tracked.load(Ordering::Relaxed) > 0
            && self.lock().failures.contains_key(&source_key(ip))
    }

    /// The bans in force at `now`, soonest to end first (expired ones are removed).
    pub fn list(&self, now: Instant) -> Vec<Ban> {
        let mut g = self.lock();
        g.sweep(now);
        self.publish(&g);
        let mut v: Vec<Ban> = g.bans.values().copied().collect();
        v.sort_by_key(|b| (b.until, b.address));
        v
    }

    /// Lifts the ban of `ip` (and forgets its failures); false if it was not banned.
    pub fn lift(&self, ip: IpAddr) -> bool {
        let key = source_key(ip);
        let mut g = self.lock();
        g.failures.remove(&key);
        let was = g.bans.remove(&key).is_some();
        self.publish(&g);
        was
    }
}

/// What a relayed response says about authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSignal {
    /// 401 or 407 (any method), 403 to a REGISTER.
    Failure,
    /// 2xx to a REGISTER or an INVITE.
    Success,
}

/// The status code of a response's bytes (`SIP/2.0 401 ...`).
fn status_code(bytes: &[u8]) -> Option<u16> {
    let rest = bytes.strip_prefix(b"SIP/2.0 ")?;
    let digits = rest.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The method of a response's CSeq.
fn cseq_method(bytes: &[u8]) -> Option<&[u8]> {
    let msg = scan::scan(bytes).ok()?;
    let h = msg.headers.iter().find(|h| h.kind == Hdr::CSeq)?;
    let value = msg.buf.get(h.value.clone())?;
    value
        .split(|b| b.is_ascii_whitespace())
        .rfind(|t| !t.is_empty())
}

/// What the response `bytes` creditgate relays says about the authentication of its
/// destination. `interested_in_success` says whether a 2xx is worth reading (the destination has
/// failures counted): most 2xx are then decided on the status line alone.
pub fn auth_signal(
    bytes: &[u8],
    interested_in_success: impl FnOnce() -> bool,
) -> Option<AuthSignal> {
    match status_code(bytes)? {
        401 | 407 => Some(AuthSignal::Failure),
        403 => (cseq_method(bytes)? == b"REGISTER").then_some(AuthSignal::Failure),
        200..=299 if interested_in_success() => {
            matches!(cseq_method(bytes)?, b"REGISTER" | b"INVITE").then_some(AuthSignal::Success)
        }
        _ => None,
    }
}

/// Feeds one relayed response (to `to`, its bytes) into the table; returns the ban it completed.
/// Responses to upstreams and trusted networks are ignored: they are never banned.
pub fn observe_response(
    bans: &Bans,
    policy: &Policy,
    to: SocketAddr,
    bytes: &[u8],
    now: Instant,
) -> Option<Ban> {
    let ip = to.ip();
    match auth_signal(bytes, || bans.has_failures(ip))? {
        AuthSignal::Failure if !policy.is_trusted(ip) => bans.failure(ip, now),
        AuthSignal::Failure => None,
        AuthSignal::Success => {
            bans.success(ip);
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn settings(threshold: u32, max: usize) -> BanSettings {
        BanSettings {
            threshold,
            window: Duration::from_secs(60),
            ban_time: Duration::from_secs(600),
            max_tracked: max,
        }
    }

    #[test]
    fn bans_after_threshold_within_window_until_it_ends() {
        let t0 = Instant::now();
        let b = Bans::new(settings(3, 100));
        let x = ip("192.0.2.1");
        assert!(b.failure(x, t0).is_none());
        assert!(b.failure(x, t0 + Duration::from_secs(10)).is_none());
        assert!(!b.is_banned(x, t0 + Duration::from_secs(10)));
        let ban = b.failure(x, t0 + Duration::from_secs(20)).unwrap();
        assert_eq!((ban.address, ban.failures), (x, 3));
        assert_eq!(ban.until, t0 + Duration::from_secs(620));
        assert!(b.is_banned(x, t0 + Duration::from_secs(21)));
        assert!(!b.is_banned(ip("192.0.2.2"), t0 + Duration::from_secs(21)));
        assert_eq!((b.active(), b.issued.get()), (1, 1));
        // Failures while banned issue nothing new.
        assert!(b.failure(x, t0 + Duration::from_secs(30)).is_none());
        assert_eq!(b.issued.get(), 1);
        // The ban ends on its own.
        assert!(b.is_banned(x, t0 + Duration::from_secs(619)));
        assert!(!b.is_banned(x, t0 + Duration::from_secs(620)));
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn failures_spread_beyond_the_window_never_ban() {
        let t0 = Instant::now();
        let b = Bans::new(settings(3, 100));
        let x = ip("192.0.2.1");
        for i in 0..10 {
            // Two per window: the third starts a new window.
            assert!(b.failure(x, t0 + Duration::from_secs(31 * i)).is_none());
        }
        assert_eq!(b.issued.get(), 0);
    }

    #[test]
    fn success_clears_the_count_and_zero_turns_bans_off() {
        let t0 = Instant::now();
        let b = Bans::new(settings(3, 100));
        let x = ip("192.0.2.1");
        for _ in 0..10 {
            assert!(b.failure(x, t0).is_none());
            assert!(b.failure(x, t0).is_none());
            b.success(x);
        }
        assert_eq!(b.issued.get(), 0);
        b.configure(settings(0, 100));
        for _ in 0..10 {
            assert!(b.failure(x, t0).is_none());
        }
        assert!(!b.is_banned(x, t0));
    }

    #[test]
    fn listed_and_lifted() {
        let t0 = Instant::now();
        let b = Bans::new(settings(1, 100));
        b.failure(ip("192.0.2.9"), t0 + Duration::from_secs(5));
        b.failure(ip("192.0.2.1"), t0);
        let l = b.list(t0 + Duration::from_secs(6));
        assert_eq!(
            l.iter().map(|x| x.address).collect::<Vec<_>>(),
            [ip("192.0.2.1"), ip("192.0.2.9")]
        );
        assert!(b.lift(ip("192.0.2.1")));
        assert!(!b.lift(ip("192.0.2.1")));
        assert!(!b.is_banned(ip("192.0.2.1"), t0 + Duration::from_secs(7)));
        assert!(b.is_banned(ip("192.0.2.9"), t0 + Duration::from_secs(7)));
        assert!(b.list(t0 + Duration::from_secs(605)).is_empty());
        assert_eq!(b.active(), 0);
    }

    #[test]
    fn ended_bans_of_silent_sources_are_swept() {
        let t0 = Instant::now();
        let b = Bans::new(settings(1, 100));
        b.failure(ip("192.0.2.1"), t0);
        b.failure(ip("192.0.2.2"), t0 + Duration::from_secs(100));
        assert_eq!(b.active_at(t0 + Duration::from_secs(1)), 2);
        // The first ban ended; a look at another address removes it.
        assert!(!b.is_banned(ip("198.51.100.1"), t0 + Duration::from_secs(650)));
        assert_eq!(b.active(), 1);
        assert_eq!(b.active_at(t0 + Duration::from_secs(700)), 0);
        // Failure counts past their window go with the sweep too.
        let lone = Bans::new(settings(3, 100));
        lone.failure(ip("192.0.2.3"), t0);
        assert_eq!(lone.tracked.load(Ordering::Relaxed), 1);
        lone.active_at(t0 + Duration::from_secs(61));
        assert_eq!(lone.tracked.load(Ordering::Relaxed), 0);
        // Nothing left: the packet path is back on its lock-free check.
        assert!(!b.is_banned(ip("192.0.2.2"), t0 + Duration::from_secs(701)));
    }

    #[test]
    fn ipv6_per_prefix_and_mapped_as_v4() {
        let t0 = Instant::now();
        let b = Bans::new(settings(2, 100));
        b.failure(ip("2001:db8:1:2::1"), t0);
        b.failure(ip("2001:db8:1:2::ffff"), t0).unwrap();
        assert!(b.is_banned(ip("2001:db8:1:2:abcd::1"), t0));
        assert!(!b.is_banned(ip("2001:db8:1:3::1"), t0));
        b.failure(ip("::ffff:192.0.2.7"), t0);
        b.failure(ip("192.0.2.7"), t0).unwrap();
        assert!(b.is_banned(ip("::ffff:192.0.2.7"), t0));
        assert!(b.lift(ip("2001:db8:1:2::99")));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let cap = 1000;
        let b = Bans::new(settings(2, cap));
        for i in 0..(cap as u32 * 3) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            b.failure(a, t0);
        }
        // The first `cap` sources are tracked, the rest fail open.
        assert_eq!(b.tracked.load(Ordering::Relaxed), cap);
        for i in 0..(cap as u32 * 3) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            b.failure(a, t0);
        }
        assert_eq!(b.active(), cap);
        assert_eq!(b.issued.get(), cap as u64);
        // A new source completing its count finds the ban table full: counted, not banned.
        let late = ip("192.0.2.1");
        let t1 = t0 + Duration::from_secs(61);
        b.failure(late, t1);
        assert!(b.failure(late, t1).is_none());
        assert_eq!(b.refused_full.get(), 1);
        // Once the bans expire, room is made again.
        let t2 = t0 + Duration::from_secs(700);
        b.failure(late, t2);
        assert!(b.failure(late, t2).is_some());
        assert_eq!(b.active(), 1);
    }

    #[test]
    fn responses_read_for_auth() {
        let r = |status: &str, method: &str| {
            format!("SIP/2.0 {status}\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 7 {method}\r\nContent-Length: 0\r\n\r\n")
                .into_bytes()
        };
        let yes = || true;
        assert_eq!(
            auth_signal(&r("401 Unauthorized", "REGISTER"), yes),
            Some(AuthSignal::Failure)
        );
        assert_eq!(
            auth_signal(&r("407 Proxy Authentication Required", "INVITE"), yes),
            Some(AuthSignal::Failure)
        );
        assert_eq!(
            auth_signal(&r("403 Forbidden", "REGISTER"), yes),
            Some(AuthSignal::Failure)
        );
        // A 403 to a call is the switch's routing policy, not authentication.
        assert_eq!(auth_signal(&r("403 Forbidden", "INVITE"), yes), None);
        assert_eq!(
            auth_signal(&r("200 OK", "REGISTER"), yes),
            Some(AuthSignal::Success)
        );
        assert_eq!(
            auth_signal(&r("200 OK", "INVITE"), yes),
            Some(AuthSignal::Success)
        );
        // An OPTIONS answered without authentication proves nothing.
        assert_eq!(auth_signal(&r("200 OK", "OPTIONS"), yes), None);
        // Without failures counted, a 2xx is not even read.
        assert_eq!(auth_signal(&r("200 OK", "REGISTER"), || false), None);
        assert_eq!(auth_signal(&r("180 Ringing", "INVITE"), yes), None);
        assert_eq!(auth_signal(b"SIP/2.0 4x1 Odd\r\n\r\n", yes), None);
        assert_eq!(auth_signal(b"", yes), None);
    }

    #[test]
    fn trusted_destinations_are_never_banned() {
        let t0 = Instant::now();
        let b = Bans::new(settings(1, 100));
        let shared = super::super::test_shared(&["127.0.0.1:5060".parse().unwrap()]);
        let policy = shared.policy.load();
        let challenge =
            b"SIP/2.0 401 Unauthorized\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
        // 127.0.0.2 is the test policy's upstream.
        let up: SocketAddr = "127.0.0.2:5080".parse().unwrap();
        assert!(observe_response(&b, &policy, up, challenge, t0).is_none());
        assert!(!b.is_banned(up.ip(), t0));
        let customer: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        assert!(observe_response(&b, &policy, customer, challenge, t0).is_some());
        assert!(b.is_banned(customer.ip(), t0));
    }
}
