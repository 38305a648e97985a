//! Everything the core needs to know about the deployment, computed once from the configuration
//! (STYLE rule 5): own addresses, upstream and trusted networks, reply templates, identification
//! order, credit rules. A new `Policy` is built on reload and swapped in whole.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use super::grammar::Host;
use super::keys::Keys;
use crate::config::{Config, IdentifyRule, OnNoSnapshot, OnStale, ReplySpec, Unrated};
use crate::credit::RefusalCause;

/// A listening socket as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The address the socket is bound to (what `Packet::local` carries, what `Action` names).
    pub bound: SocketAddr,
    /// `host:port` written into Via and Record-Route for traffic leaving through it.
    pub advertised_host: String,
    pub advertised_port: u16,
}

/// A prebuilt refusal: status line and extra header lines.
#[derive(Debug, Clone)]
pub struct ReplyTemplate {
    pub code: u16,
    /// `SIP/2.0 402 Payment Required\r\n`
    pub status_line: Vec<u8>,
    /// `Reason: ...\r\n` and `Retry-After: ...\r\n` lines.
    pub extra: Vec<u8>,
}

/// Why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// No listening socket was given (a daemon bug, or every bind failed).
    #[error("no listening socket")]
    NoListener,
}

/// The core's view of the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub keys: Keys,
    pub listeners: Vec<Listener>,
    /// Addresses naming creditgate in a Via sent-by or a Route URI.
    own: Vec<(OwnHost, u16)>,
    pub upstreams: Vec<SocketAddr>,
    /// Source networks never credit-checked: upstream IPs (host prefixes) and `[sip] trusted`.
    pub trusted: Vec<IpNet>,
    pub record_route: bool,
    /// Upper-case method names that need credit.
    pub check_methods: Vec<Vec<u8>>,
    pub forward_other_methods: bool,
    pub identify: Vec<IdentifyRule>,
    pub replies: [ReplyTemplate; 8],
    pub on_stale: OnStale,
    pub max_staleness: Duration,
    pub on_no_snapshot: OnNoSnapshot,
    pub enforce: bool,
    /// How long a Route token stays valid, in minutes (`[live] call_expiry`, rounded up).
    pub token_life_min: u64,
    /// Lower-case User-Agent substrings of scanners whose requests are dropped; empty when
    /// `[abuse] drop_scanners` is off (`scanner.rs`).
    pub scanner_agents: Vec<Vec<u8>>,
    /// `[live] unrated`: a call no rate covers is admitted on snapshot credit, or refused
    /// (`no_rate`).
    pub unrated: Unrated,
    /// The price of an unrated call admitted with `unrated = "admit"` (free: it holds nothing),
    /// allocated once.
    pub free_entry: std::sync::Arc<crate::live::tariff::TariffEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum OwnHost {
    Ip(IpAddr),
    Name(String),
}

/// The template of `cause` from its `spec`; with `reveal` false, without the `Reason` header
/// (which would name the cause).
fn reply_template(cause: RefusalCause, spec: &ReplySpec, reveal: bool) -> ReplyTemplate {
    let status_line = format!("SIP/2.0 {} {}\r\n", spec.code, spec.reason).into_bytes();
    let mut extra = Vec::new();
    if reveal {
        extra.extend_from_slice(
            format!(
                "Reason: SIP;cause={};text=\"{}\"\r\n",
                spec.code,
                cause.as_str()
            )
            .as_bytes(),
        );
    }
    if let Some(ra) = spec.retry_after {
        extra.extend_from_slice(format!("Retry-After: {}\r\n", ra.as_secs().max(1)).as_bytes());
    }
    ReplyTemplate {
        code: spec.code,
        status_line,
        extra,
    }
}

fn normalise(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl Policy {
    /// Builds the policy. `listeners` are the sockets actually bound (ports resolved, unspecified
    /// addresses replaced by the address to advertise).
    pub fn new(cfg: &Config, keys: Keys, listeners: Vec<Listener>) -> Result<Policy, PolicyError> {
        if listeners.is_empty() {
            return Err(PolicyError::NoListener);
        }
        let mut own = Vec::new();
        for l in &listeners {
            let host = match l.advertised_host.parse::<IpAddr>() {
                Ok(ip) => OwnHost::Ip(normalise(ip)),
                Err(_) => OwnHost::Name(l.advertised_host.to_ascii_lowercase()),
            };
            own.push((host, l.advertised_port));
            if !l.bound.ip().is_unspecified() {
                own.push((OwnHost::Ip(normalise(l.bound.ip())), l.bound.port()));
            }
        }
        own.dedup();
        let mut trusted: Vec<IpNet> = cfg
            .sip
            .upstream
            .iter()
            .map(|u| IpNet::from(normalise(u.ip())))
            .collect();
        trusted.extend(cfg.sip.trusted.iter().copied());
        let r = &cfg.reply;
        let reveal = r.reveal_cause;
        // `[reply] reveal_cause = false`: the refusals that tell an account's state to whoever
        // names it (no credit, daily limit, disabled) look like the one for no account at all.
        let hidden = |own| if reveal { own } else { &r.unknown_account };
        let replies = [
            reply_template(
                RefusalCause::InsufficientCredit,
                hidden(&r.insufficient_credit),
                reveal,
            ),
            reply_template(RefusalCause::UnknownAccount, &r.unknown_account, reveal),
            reply_template(
                RefusalCause::AccountDisabled,
                hidden(&r.account_disabled),
                reveal,
            ),
            reply_template(RefusalCause::NoSnapshot, &r.no_snapshot, reveal),
            reply_template(RefusalCause::ChannelLimit, &r.channel_limit, reveal),
            reply_template(RefusalCause::CpsLimit, &r.cps_limit, reveal),
            reply_template(RefusalCause::SpendLimit, hidden(&r.spend_limit), reveal),
            reply_template(RefusalCause::NoRate, &r.no_rate, reveal),
        ];
        Ok(Policy {
            keys,
            listeners,
            own,
            upstreams: cfg.sip.upstream.clone(),
            trusted,
            record_route: cfg.sip.record_route,
            check_methods: cfg
                .sip
                .check_methods
                .iter()
                .map(|m| m.to_ascii_uppercase().into_bytes())
                .collect(),
            forward_other_methods: cfg.sip.forward_other_methods,
            identify: cfg.identify.order.clone(),
            replies,
            on_stale: cfg.credit.on_stale,
            max_staleness: cfg.credit.max_staleness,
            on_no_snapshot: cfg.credit.on_no_snapshot,
            enforce: cfg.credit.enforce,
            token_life_min: cfg.live.call_expiry.as_secs().div_ceil(60).max(1),
            scanner_agents: if cfg.abuse.drop_scanners {
                cfg.abuse
                    .scanner_user_agents
                    .iter()
                    .map(|s| s.to_ascii_lowercase().into_bytes())
                    .collect()
            } else {
                Vec::new()
            },
            unrated: cfg.live.unrated,
            free_entry: std::sync::Arc::new(crate::live::tariff::TariffEntry::free()),
        })
    }

    pub fn reply(&self, cause: RefusalCause) -> &ReplyTemplate {
        // Same order as `replies` is built in `Policy::new` (the order of `RefusalCause`).
        let [insufficient, unknown, disabled, no_snapshot, channels, cps, spend, no_rate] =
            &self.replies;
        match cause {
            RefusalCause::InsufficientCredit => insufficient,
            RefusalCause::UnknownAccount => unknown,
            RefusalCause::AccountDisabled => disabled,
            RefusalCause::NoSnapshot => no_snapshot,
            RefusalCause::ChannelLimit => channels,
            RefusalCause::CpsLimit => cps,
            RefusalCause::SpendLimit => spend,
            RefusalCause::NoRate => no_rate,
        }
    }

    /// Whether `host:port` (port `None` = 5060) names creditgate.
    pub fn is_own(&self, host_text: &[u8], host: Host, port: Option<u16>) -> bool {
        let port = port.unwrap_or(5060);
        self.own.iter().any(|(h, p)| {
            *p == port
                && match (h, host) {
                    (OwnHost::Ip(a), Host::Ip(b)) => *a == normalise(b),
                    (OwnHost::Name(n), Host::Name) => n.as_bytes().eq_ignore_ascii_case(host_text),
                    _ => false,
                }
        })
    }

    /// Whether requests from this address skip the credit check.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = normalise(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The upstream for a call: stable per Call-ID (FNV-1a), so every request of a call, its
    /// CANCEL and its ACK reach the same switch.
    pub fn upstream_for(&self, call_id: &[u8]) -> Option<SocketAddr> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in call_id {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let n = self.upstreams.len() as u64;
        if n == 0 {
            return None;
        }
        self.upstreams
            .get(usize::try_from(h % n).unwrap_or(0))
            .copied()
    }

    /// The listener to send to `dest` from: the receiving one when the family matches.
    pub fn egress(&self, local: SocketAddr, dest: SocketAddr) -> Option<&Listener> {
        let fam = |a: &SocketAddr| normalise(a.ip()).is_ipv4();
        let dual = |l: &Listener| l.bound.ip() == IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        self.listeners
            .iter()
            .find(|l| l.bound == local && (fam(&l.bound) == fam(&dest) || dual(l)))
            .or_else(|| self.listeners.iter().find(|l| fam(&l.bound) == fam(&dest)))
            .or_else(|| self.listeners.iter().find(|l| dual(l)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use std::time::{Duration, Instant};

    use rust_decimal::Decimal;

    use super::*;
    use crate::core::{handle, Action, Event, Packet};
    use crate::credit::Account;
    use crate::snapshot::Snapshot;

    fn policy(extra: &str) -> Policy {
        let cfg = Config::from_toml_str(
            &format!("[sip]\nupstream = [\"127.0.0.2:5080\"]\n{extra}"),
            std::path::Path::new(""),
        )
        .unwrap();
        let l = Listener {
            bound: "127.0.0.1:5060".parse().unwrap(),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 5060,
        };
        Policy::new(&cfg, Keys::new(b"unit-test-secret-unit-test"), vec![l]).unwrap()
    }

    /// The refusal of a new call from `user`: (status line, whole reply, cause).
    fn refuse(p: &Policy, snap: &Snapshot, now: Instant, user: &str) -> (String, String, String) {
        let data = format!(
            "INVITE sip:+4915112345@127.0.0.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:40000;rport;branch=z9hG4bK-{user}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@example.com>;tag=ft-{user}\r\n\
             To: <sip:+4915112345@example.com>\r\n\
             Call-ID: c-{user}@example.com\r\n\
             CSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let o = handle(
            Packet {
                data: data.as_bytes(),
                source: "127.0.0.1:40000".parse().unwrap(),
                local: "127.0.0.1:5060".parse().unwrap(),
                now,
                wall_secs: 1_767_225_600,
            },
            snap,
            p,
        );
        let Action::Reply { bytes, .. } = o.action else {
            panic!("not refused: {:?}", o.event)
        };
        let Event::Refused { cause, .. } = o.event else {
            panic!("not refused: {:?}", o.event)
        };
        let text = String::from_utf8(bytes).unwrap();
        let status = text.lines().next().unwrap().to_owned();
        (status, text, cause.as_str().to_owned())
    }

    /// `reveal_cause = false`: no credit, disabled and unknown get the same code and reason and
    /// no Reason header; the event keeps the real cause for logs and metrics.
    #[test]
    fn hidden_causes_look_alike() {
        let t0 = Instant::now();
        let snap = Snapshot::new(t0);
        let mut off = Account::new("off", Decimal::from(100), Decimal::ZERO);
        off.enabled = false;
        let bob = Account::new("bob", Decimal::ZERO, Decimal::ZERO);
        snap.apply_full(vec![bob, off], t0, 0.5, false).unwrap();
        let now = t0 + Duration::from_secs(1);

        let shown = policy("");
        let cases = [
            ("bob", "insufficient_credit", "SIP/2.0 402 Payment Required"),
            ("off", "account_disabled", "SIP/2.0 403 Forbidden"),
            ("nobody", "unknown_account", "SIP/2.0 403 Forbidden"),
        ];
        for (user, cause, status) in cases {
            let (s, text, c) = refuse(&shown, &snap, now, user);
            assert_eq!((s.as_str(), c.as_str()), (status, cause));
            assert!(
                text.contains(&format!(
                    "Reason: SIP;cause={};text=\"{cause}\"",
                    &status[8..11]
                )),
                "{text}"
            );
        }

        let hidden = policy(
            "[reply]\nreveal_cause = false\nunknown_account = { code = 404, reason = \"Not Found\" }\n",
        );
        for (user, cause, _) in cases {
            let (s, text, c) = refuse(&hidden, &snap, now, user);
            assert_eq!((s.as_str(), c.as_str()), ("SIP/2.0 404 Not Found", cause));
            assert!(!text.contains("Reason:"), "{text}");
        }
        // The other refusals keep their code (503 asks the caller to retry or route elsewhere),
        // without the cause either; Retry-After stays.
        let cps = hidden.reply(RefusalCause::CpsLimit);
        assert_eq!(cps.code, 503);
        assert_eq!(cps.extra, b"Retry-After: 1\r\n");
        assert_eq!(hidden.reply(RefusalCause::SpendLimit).code, 404);
    }
}
