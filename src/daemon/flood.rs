//! Per-source packet-rate limit (`[sip] source_pps_limit`): a flood guard in front of the core,
//! in the spirit of Kamailio's pike module, so that one noisy source cannot use up the workers'
//! time at the expense of the others. Not a calls-per-second limit (that is per account, SPEC
//! section 7): it counts every datagram, keep-alives and garbage included.
//!
//! Boundary: pure bookkeeping. The worker asks [`Limiter::check`] right after `recv_from` and
//! drops the datagram (counted, no reply) when it says no; time comes in as an argument, so the
//! tests drive it without a clock.
//!
//! Shape: one limiter per worker socket, no lock. A source is counted in fixed one-second
//! windows that all start together; when a window ends the whole table is forgotten, so memory
//! is bounded by the sources seen in one second and at most [`MAX_SOURCES`] of them, whatever a
//! spoofed-source flood sends. Consequences, documented in `docs/overload.md`:
//!
//! * a source can get up to twice its limit across a window boundary (fixed-window burst);
//! * `SO_REUSEPORT` spreads a source's datagrams over the workers by source port, so a source
//!   sending from many ports can get up to `workers` times its limit; one SIP UA uses one port;
//! * IPv6 sources are counted per /64 (one subscriber's prefix), IPv4-mapped ones as IPv4;
//! * upstreams and `[sip] trusted` networks are never limited (the worker checks that only for
//!   sources already over their limit, so the common path does no CIDR lookup);
//! * once [`MAX_SOURCES`] distinct sources are tracked in a window, further new sources pass
//!   unlimited until the window ends: a spoofed flood spread that thin is the kernel socket
//!   buffer's to absorb, and failing open keeps unknown customers from being locked out.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Length of a counting window. One second, because the limit is in packets per second.
const WINDOW: Duration = Duration::from_secs(1);

/// Distinct sources tracked per window and worker. 65 536 entries are about 2 MiB of table at
/// most (key, count, hash overhead) per worker, far above the customer count of one instance,
/// and small enough that a spoofed flood cannot grow memory further.
pub const MAX_SOURCES: usize = 65_536;

/// One worker's per-source rate limiter.
#[derive(Debug)]
pub struct Limiter {
    limit: u32,
    window_start: Option<Instant>,
    counts: HashMap<IpAddr, u32>,
    /// Datagrams refused in the current window.
    refused_in_window: u64,
}

/// What [`Limiter::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under the limit (or not tracked): handle the datagram.
    Accept,
    /// Over the limit in this window: drop it.
    Refuse {
        /// True for the first refusal of this window on this worker: the caller logs it, so a
        /// flood costs at most one log line per second and worker.
        first_in_window: bool,
    },
}

impl Limiter {
    /// A limiter accepting `limit` datagrams per second per source; `None` when `limit` is 0
    /// (the guard is off).
    pub fn new(limit: u32) -> Option<Limiter> {
        (limit > 0).then(|| Limiter {
            limit,
            window_start: None,
            counts: HashMap::new(),
            refused_in_window: 0,
        })
    }

    /// Counts one datagram from `ip` at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let start = *self.window_start.get_or_insert(now);
        if now.saturating_duration_since(start) >= WINDOW {
            self.rotate(now);
        }
        let key = source_key(ip);
        let tracked = self.counts.len();
        let count = match self.counts.get_mut(&key) {
            Some(c) => c,
            None if tracked >= MAX_SOURCES => return Verdict::Accept,
            None => self.counts.entry(key).or_insert(0),
        };
        if *count >= self.limit {
            self.refused_in_window += 1;
            return Verdict::Refuse {
                first_in_window: self.refused_in_window == 1,
            };
        }
        *count += 1;
        Verdict::Accept
    }

    /// Sources tracked in the current window.
    pub fn tracked(&self) -> usize {
        self.counts.len()
    }

    /// Starts a new window: forgets every count, and, once a window was much quieter than the
    /// table's size, gives back the memory a flood made it grow to (keeping room for the usual
    /// population).
    fn rotate(&mut self, now: Instant) {
        let used = self.counts.len();
        self.counts.clear();
        if self.counts.capacity() > 1024 && self.counts.capacity() > 4 * used {
            self.counts.shrink_to(used.max(1024));
        }
        self.window_start = Some(now);
        self.refused_in_window = 0;
    }
}

/// The address a source is counted under: IPv4 (also when IPv4-mapped), or the IPv6 /64.
pub(crate) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn off_when_zero() {
        assert!(Limiter::new(0).is_none());
    }

    #[test]
    fn limits_per_source_per_window() {
        let t0 = Instant::now();
        let mut l = Limiter::new(3).unwrap();
        let noisy = ip("192.0.2.1");
        let quiet = ip("192.0.2.2");
        for _ in 0..3 {
            assert_eq!(l.check(noisy, t0), Verdict::Accept);
        }
        assert_eq!(
            l.check(noisy, t0),
            Verdict::Refuse {
                first_in_window: true
            }
        );
        assert_eq!(
            l.check(noisy, t0 + Duration::from_millis(999)),
            Verdict::Refuse {
                first_in_window: false
            }
        );
        // Another source is not affected.
        assert_eq!(l.check(quiet, t0), Verdict::Accept);
        // The next window starts afresh.
        let t1 = t0 + WINDOW;
        assert_eq!(l.check(noisy, t1), Verdict::Accept);
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn ipv6_per_prefix_and_mapped_as_v4() {
        let t0 = Instant::now();
        let mut l = Limiter::new(1).unwrap();
        assert_eq!(l.check(ip("2001:db8:1:2::1"), t0), Verdict::Accept);
        // Same /64, another interface id: same source.
        assert!(matches!(
            l.check(ip("2001:db8:1:2:ffff::9"), t0),
            Verdict::Refuse { .. }
        ));
        assert_eq!(l.check(ip("2001:db8:1:3::1"), t0), Verdict::Accept);
        assert_eq!(l.check(ip("192.0.2.9"), t0), Verdict::Accept);
        assert!(matches!(
            l.check(ip("::ffff:192.0.2.9"), t0),
            Verdict::Refuse { .. }
        ));
    }

    #[test]
    fn memory_is_bounded_under_spoofed_sources() {
        let t0 = Instant::now();
        let mut l = Limiter::new(1).unwrap();
        for i in 0..(MAX_SOURCES as u32 + 10_000) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            // Every spoofed source is new; past the cap they pass untracked.
            assert_eq!(l.check(a, t0), Verdict::Accept);
        }
        assert_eq!(l.tracked(), MAX_SOURCES);
        // A new window forgets them; the first quiet window after the flood gives the memory
        // back when it ends.
        assert_eq!(l.check(ip("192.0.2.1"), t0 + WINDOW), Verdict::Accept);
        assert_eq!(l.tracked(), 1);
        assert_eq!(l.check(ip("192.0.2.1"), t0 + 2 * WINDOW), Verdict::Accept);
        assert!(l.counts.capacity() < MAX_SOURCES);
    }
}
