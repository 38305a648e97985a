//! `[sip]`: the sockets, the upstream switch(es) and SIP handling: the typed table, its
//! defaults, its raw (serde) form, its checks and their tests.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::values::{
    format_size, is_token, optional_path, parse_net, parse_size, parse_socket_addr, path_text,
    SizeValue, GIB, KIB, MIB,
};
use super::{list, report_duplicates, value, Checker};

/// The IANA port for SIP over UDP (RFC 3261 section 19.1.2).
const SIP_PORT: u16 = 5060;

/// Shortest inline `sip.secret` accepted: 128 bits, the usual floor for an HMAC key.
pub const MIN_SECRET_LEN: usize = 16;
/// Upper bound for `sip.workers`: each worker is one socket per listen address, so a typo such as
/// `10000` would open thousands of sockets; no machine we target has more cores than this.
const MAX_WORKERS: usize = 1024;
/// Highest `sip.realtime_priority`: the top of Linux's `SCHED_FIFO` range.
const MAX_REALTIME_PRIORITY: u32 = 99;
/// Smallest `sip.recv_buffer`: below this a burst of a few large INVITEs already overflows.
const MIN_RECV_BUFFER: u64 = 4 * KIB;
/// Largest `sip.recv_buffer`: `SO_RCVBUF` is a C `int` that the kernel doubles; 1 GiB is far
/// beyond any useful queue (and beyond `net.core.rmem_max` anywhere sane).
const MAX_RECV_BUFFER: u64 = GIB;

/// Default `sip.source_pps_limit`: 200 calls a second from one address at a generous ten
/// datagrams per call (INVITE, retransmissions, ACK, BYE, responses to calls the switch sends,
/// keep-alives). No customer trunk of a credit-controlled service gets near it; a flood or a
/// scanner sends far more. Costs one hash-map operation per datagram (`flood.rs`).
const DEFAULT_SOURCE_PPS_LIMIT: u32 = 2_000;

/// `[sip]`: sockets, upstreams and SIP handling.
#[derive(Debug, Clone, PartialEq)]
pub struct SipConfig {
    /// UDP sockets to receive customers' and the switch's traffic on. Default `["0.0.0.0:5060"]`;
    /// must not be empty nor repeat an address. IPv6 is written `"[::1]:5060"`. Port 0 binds an
    /// ephemeral port (tests); then set `advertise` with an explicit port or leave it empty.
    pub listen: Vec<SocketAddr>,
    /// `host:port` written into creditgate's Via and Record-Route. `""` or absent = `None`: the
    /// daemon uses the address of the socket the request arrived on. Set it behind NAT or when
    /// listening on `0.0.0.0`. `"host"` alone takes the port of the first `listen` address. The
    /// host is an IP (IPv6 in brackets when a port follows) or a DNS name.
    pub advertise: Option<Advertise>,
    /// The switch(es) new calls are forwarded to, `IP:port`; several = spread by Call-ID hash.
    /// Required, no default. Requests arriving from these IPs (any port) are never credit-checked.
    pub upstream: Vec<SocketAddr>,
    /// Insert a Record-Route so in-dialog requests keep flowing through creditgate (default
    /// `true`). Without it the dialog's later requests bypass creditgate entirely, which also
    /// disables call tracking (`[live]`).
    pub record_route: bool,
    /// Further sources treated like upstreams (never credit-checked), as CIDRs or bare IPs (a
    /// bare IP is a /32 or /128). Default empty. Stored with the host bits cleared.
    pub trusted: Vec<IpNet>,
    /// Number of worker sockets per listen address (`SO_REUSEPORT`). Default `0` = one per CPU
    /// core, resolved by the daemon, not here. At most 1024.
    pub workers: usize,
    /// Out-of-dialog methods that need credit, as SIP tokens stored upper-case. Default
    /// `["INVITE"]`. Must not be empty (use `credit.enforce = false` for a dry run); ACK and
    /// CANCEL are never checked and are refused here.
    pub check_methods: Vec<String>,
    /// Forward customers' other out-of-dialog requests (REGISTER, OPTIONS, MESSAGE...) upstream
    /// unchecked (default `true`); `false` refuses them instead.
    pub forward_other_methods: bool,
    /// Inline key for the Record-Route token and the Via branch HMAC (an extension of SPEC
    /// section 3). Default `""` = not set. At least 16 bytes when set; prefer `secret_file`,
    /// which keeps the key out of the config file. Setting both is an error.
    pub secret: String,
    /// File holding the HMAC key (its bytes, trailing newline trimmed by the daemon). `""` =
    /// `None`: with no `secret` either, a random key per start and a warning (Record-Route tokens
    /// of calls in progress die on restart). Relative paths are resolved against the directory of
    /// the config file. All instances behind one address must share the key.
    pub secret_file: Option<PathBuf>,
    /// `SO_RCVBUF` per socket, in bytes; written `"8MiB"`, `"512KiB"`, `"1MB"`, `"65536"` (also a
    /// bare integer). Default 8 MiB. The kernel caps it at `net.core.rmem_max`: raise that too.
    /// Between 4 KiB and 1 GiB.
    pub recv_buffer: u64,
    /// Packets per second accepted from one source address before further packets are dropped;
    /// default 2000, `0` = off. A flood guard, not a CPS limit (that is per account,
    /// `max_cps`): 2000 is a PBX placing 200 calls a second from one address at ten datagrams
    /// per call, more than any one customer trunk sends, and far below what a flood or a
    /// scanner does (docs/overload.md).
    pub source_pps_limit: u32,
    /// `SCHED_FIFO` priority (1-99) of the packet worker threads; default `0` = normal
    /// scheduling. A woken packet worker then takes its CPU from any normal process at once
    /// (redis-server, a backup, a kernel thread) instead of waiting for it to use up its time
    /// slice: with Redis on the same host, a full refresh of a million accounts otherwise lifted
    /// the admission p99 several-fold (BENCHMARKS.md). Needs `CAP_SYS_NICE` or an
    /// `RLIMIT_RTPRIO` at least this high (the shipped systemd unit sets `LimitRTPRIO=10`);
    /// without them the daemon logs a warning and runs at normal priority. Keep it low (10):
    /// it only has to beat normal processes, and the kernel's RT throttling still leaves 5 %
    /// of each CPU to them under a flood.
    pub realtime_priority: u8,
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, SIP_PORT))],
            advertise: None,
            upstream: Vec::new(),
            record_route: true,
            trusted: Vec::new(),
            workers: 0,
            check_methods: vec!["INVITE".to_owned()],
            forward_other_methods: true,
            secret: String::new(),
            secret_file: None,
            recv_buffer: 8 * MIB,
            source_pps_limit: DEFAULT_SOURCE_PPS_LIMIT,
            realtime_priority: 0,
        }
    }
}

/// The address creditgate writes into its Via and Record-Route headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Advertise {
    /// An IP address (IPv6 without brackets) or a DNS name.
    pub host: String,
    /// The port, never 0.
    pub port: u16,
}

impl Advertise {
    /// The host as an IP address, when it is one (not a DNS name).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Advertise {
    /// `host:port`, with the host in brackets when it is an IPv6 address (RFC 3261 `hostport`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSip {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    record_route: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trusted: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check_methods: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forward_other_methods: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recv_buffer: Option<SizeValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_pps_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    realtime_priority: Option<u32>,
}

pub(super) fn check_sip(raw: RawSip, base_dir: &Path, ck: &mut Checker) -> SipConfig {
    let d = SipConfig::default();

    let listen = list(ck, "sip.listen", raw.listen, d.listen, parse_socket_addr);
    if listen.is_empty() && !ck.has_problem("sip.listen") {
        ck.push(
            "sip.listen",
            "must list at least one address, e.g. [\"0.0.0.0:5060\"]",
        );
    }
    if !ck.has_problem("sip.listen") {
        report_duplicates(ck, "sip.listen", &listen, |a| *a);
    }

    // A bare host takes the port of the first listen address.
    let default_port = listen.first().map_or(SIP_PORT, SocketAddr::port);
    let advertise = value(ck, "sip.advertise", raw.advertise, d.advertise, |s| {
        if s.is_empty() {
            Ok(None)
        } else {
            parse_advertise(&s, default_port).map(Some)
        }
    });

    let upstream = list(ck, "sip.upstream", raw.upstream, d.upstream, |s| {
        let addr = parse_socket_addr(s)?;
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(format!(
                "{s:?} cannot be sent to (port 0 or unspecified address)"
            ));
        }
        Ok(addr)
    });
    if upstream.is_empty() && !ck.has_problem("sip.upstream") {
        ck.push(
            "sip.upstream",
            "required: list at least one switch to forward to, e.g. [\"10.0.0.5:5060\"]",
        );
    }
    for (i, up) in upstream.iter().enumerate() {
        if listen.contains(up) {
            ck.push(
                format!("sip.upstream[{i}]"),
                format!("{up} is one of sip.listen: forwarding there would loop"),
            );
        }
    }

    let record_route = raw.record_route.unwrap_or(d.record_route);
    let trusted = list(ck, "sip.trusted", raw.trusted, d.trusted, parse_net);

    let workers = value(ck, "sip.workers", raw.workers, d.workers, |n| {
        if n > MAX_WORKERS {
            Err(format!("{n} is more than {MAX_WORKERS} (0 = one per core)"))
        } else {
            Ok(n)
        }
    });

    let check_methods = list(
        ck,
        "sip.check_methods",
        raw.check_methods,
        d.check_methods,
        |s| {
            if !is_token(s) {
                return Err(format!(
                    "{s:?} is not a SIP method name (a token such as \"INVITE\")"
                ));
            }
            let method = s.to_ascii_uppercase();
            if method == "ACK" || method == "CANCEL" {
                return Err(format!(
                    "{method} belongs to an INVITE transaction and is never credit-checked"
                ));
            }
            Ok(method)
        },
    );
    if check_methods.is_empty() && !ck.has_problem("sip.check_methods") {
        ck.push(
            "sip.check_methods",
            "must list at least one method (for a dry run set credit.enforce = false)",
        );
    }
    if !ck.has_problem("sip.check_methods") {
        report_duplicates(ck, "sip.check_methods", &check_methods, Clone::clone);
    }
    if !check_methods.is_empty()
        && !ck.has_problem("sip.check_methods")
        && !check_methods.iter().any(|m| m == "INVITE")
    {
        ck.push(
            "sip.check_methods",
            "must include INVITE: new calls are what creditgate admits or refuses \
             (for a dry run set credit.enforce = false)",
        );
    }

    let forward_other_methods = raw.forward_other_methods.unwrap_or(d.forward_other_methods);

    let secret = value(ck, "sip.secret", raw.secret, d.secret, |s| {
        if !s.is_empty() && s.len() < MIN_SECRET_LEN {
            Err(format!(
                "is {} bytes; use at least {MIN_SECRET_LEN} (or \"\" for none)",
                s.len()
            ))
        } else {
            Ok(s)
        }
    });
    let secret_file = value(ck, "sip.secret_file", raw.secret_file, d.secret_file, |s| {
        Ok(optional_path(&s, base_dir))
    });
    if !secret.is_empty() && secret_file.is_some() {
        ck.push(
            "sip.secret",
            "set either sip.secret or sip.secret_file, not both",
        );
    }

    let recv_buffer = value(ck, "sip.recv_buffer", raw.recv_buffer, d.recv_buffer, |s| {
        let n = parse_size(&s.0)?;
        if !(MIN_RECV_BUFFER..=MAX_RECV_BUFFER).contains(&n) {
            return Err(format!(
                "{} is outside {} ..= {}",
                s.0,
                format_size(MIN_RECV_BUFFER),
                format_size(MAX_RECV_BUFFER)
            ));
        }
        Ok(n)
    });
    let source_pps_limit = raw.source_pps_limit.unwrap_or(d.source_pps_limit);
    let realtime_priority = value(
        ck,
        "sip.realtime_priority",
        raw.realtime_priority,
        d.realtime_priority,
        |n| {
            u8::try_from(n)
                .ok()
                .filter(|p| u32::from(*p) <= MAX_REALTIME_PRIORITY)
                .ok_or_else(|| {
                    format!(
                        "{n} is outside 0 ..= {MAX_REALTIME_PRIORITY} \
                         (0 = normal scheduling, 1-99 = SCHED_FIFO priority)"
                    )
                })
        },
    );

    SipConfig {
        listen,
        advertise,
        upstream,
        record_route,
        trusted,
        workers,
        check_methods,
        forward_other_methods,
        secret,
        secret_file,
        recv_buffer,
        source_pps_limit,
        realtime_priority,
    }
}

/// Parses `host:port`, `host`, `[v6]:port`, `[v6]` or a bare IPv6 address.
fn parse_advertise(s: &str, default_port: u16) -> Result<Advertise, String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?} has no closing bracket"))?;
        v6.parse::<Ipv6Addr>()
            .map_err(|_| format!("{v6:?} in brackets is not an IPv6 address"))?;
        match after {
            "" => (v6, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (v6, Some(port)),
                None => return Err(format!("{s:?}: expected \":port\" after \"]\"")),
            },
        }
    } else if s.parse::<Ipv6Addr>().is_ok() {
        (s, None)
    } else if let Some((host, port)) = s.rsplit_once(':') {
        if host.contains(':') {
            return Err(format!(
                "{s:?}: write an IPv6 address with a port as \"[addr]:port\""
            ));
        }
        (host, Some(port))
    } else {
        (s, None)
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{s:?}: {p:?} is not a port (1 ..= 65535)"))?,
        None if default_port == 0 => {
            return Err(format!(
                "{s:?} has no port and the first sip.listen port is 0 (ephemeral): write host:port"
            ))
        }
        None => default_port,
    };
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {
            return Err(format!("{s:?}: cannot advertise the unspecified address"))
        }
        Ok(_) => {}
        Err(_) => check_dns_name(host).map_err(|why| format!("{s:?}: {why}"))?,
    }
    Ok(Advertise {
        host: host.to_owned(),
        port,
    })
}

fn check_dns_name(host: &str) -> Result<(), String> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > 253 {
        return Err(format!("{host:?} is not a host name"));
    }
    if name.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{host:?} is not a valid IPv4 address"));
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("{host:?} is neither an IP address nor a DNS name"))
    }
}

impl From<&SipConfig> for RawSip {
    /// The typed values in the file's notation, for `Config::effective_toml`.
    fn from(s: &SipConfig) -> Self {
        RawSip {
            listen: Some(s.listen.iter().map(ToString::to_string).collect()),
            advertise: Some(
                s.advertise
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
            upstream: Some(s.upstream.iter().map(ToString::to_string).collect()),
            record_route: Some(s.record_route),
            trusted: Some(s.trusted.iter().map(ToString::to_string).collect()),
            workers: Some(s.workers),
            check_methods: Some(s.check_methods.clone()),
            forward_other_methods: Some(s.forward_other_methods),
            secret: Some(if s.secret.is_empty() {
                String::new()
            } else {
                // Shorter than MIN_SECRET_LEN on purpose: pasted back, it fails loudly.
                "<redacted>".to_owned()
            }),
            secret_file: Some(path_text(s.secret_file.as_ref())),
            recv_buffer: Some(SizeValue(format_size(s.recv_buffer))),
            source_pps_limit: Some(s.source_pps_limit),
            realtime_priority: Some(u32::from(s.realtime_priority)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::config::tests::{ok, parse, problem_at, with};

    #[test]
    fn unknown_key_in_sip() {
        let msg = problem_at(&with("upstrem = [\"10.0.0.6:5060\"]\n"), "sip.upstrem");
        assert_eq!(
            msg,
            "unknown key (expected one of: listen, advertise, upstream, record_route, trusted, \
             workers, check_methods, forward_other_methods, secret, secret_file, recv_buffer, \
             source_pps_limit, realtime_priority)"
        );
    }

    #[test]
    fn bad_upstream_at_index_1() {
        let msg = problem_at(
            "[sip]\nupstream = [\"10.0.0.5:5060\", \"10.0.0.5:99999\"]\n",
            "sip.upstream[1]",
        );
        assert!(
            msg.starts_with("\"10.0.0.5:99999\" is not a socket address"),
            "{msg}"
        );
        // And the Display of the whole error.
        let err = parse("[sip]\nupstream = [\"10.0.0.5:5060\", \"10.0.0.5:99999\"]\n").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("sip.upstream[1]: \"10.0.0.5:99999\" is not a socket address"));
    }

    #[test]
    fn upstream_is_required() {
        let msg = problem_at("", "sip.upstream");
        assert!(msg.starts_with("required"), "{msg}");
        problem_at("[sip]\nupstream = []\n", "sip.upstream");
        problem_at("[sip]\nupstream = [\"0.0.0.0:5060\"]\n", "sip.upstream[0]");
        problem_at("[sip]\nupstream = [\"10.0.0.5:0\"]\n", "sip.upstream[0]");
    }

    #[test]
    fn upstream_equal_to_listen_is_a_loop() {
        problem_at(
            "[sip]\nlisten = [\"127.0.0.1:5060\"]\nupstream = [\"127.0.0.1:5060\"]\n",
            "sip.upstream[0]",
        );
    }

    #[test]
    fn listen_rules() {
        problem_at(&with("listen = []\n"), "sip.listen");
        problem_at(&with("listen = [\"localhost:5060\"]\n"), "sip.listen[0]");
        let msg = problem_at(
            &with("listen = [\"127.0.0.1:5060\", \"127.0.0.1:5060\"]\n"),
            "sip.listen[1]",
        );
        assert_eq!(msg, "repeats sip.listen[0]");
        let c = ok(&with("listen = [\"[::1]:5060\", \"0.0.0.0:5061\"]\n"));
        assert_eq!(c.sip.listen[0], "[::1]:5060".parse().unwrap());
    }

    #[test]
    fn advertise_forms() {
        let adv = |v: &str| ok(&with(&format!("advertise = {v:?}\n"))).sip.advertise;
        assert_eq!(adv(""), None);
        let a = adv("203.0.113.10:5070").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("203.0.113.10", 5070));
        assert_eq!(a.to_string(), "203.0.113.10:5070");
        assert_eq!(a.ip(), Some("203.0.113.10".parse().unwrap()));
        let a = adv("sbc.example.net").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("sbc.example.net", 5060));
        assert_eq!(a.ip(), None);
        let a = adv("[2001:db8::1]:5062").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("2001:db8::1", 5062));
        assert_eq!(a.to_string(), "[2001:db8::1]:5062");
        let a = adv("2001:db8::1").unwrap();
        assert_eq!(a.to_string(), "[2001:db8::1]:5060");
        assert_eq!(adv("[::1]").unwrap().port, 5060);
        // Port from the first listen address.
        let c = ok(&with(
            "listen = [\"127.0.0.1:5070\"]\nadvertise = \"sbc.example.net\"\n",
        ));
        assert_eq!(c.sip.advertise.unwrap().port, 5070);

        for bad in [
            "sbc.example.net:0",
            "sbc.example.net:99999",
            "0.0.0.0:5060",
            "300.1.1.1",
            "-bad-.example",
            "[2001:db8::1",
            "[2001:db8::1]5060",
            "2001:db8::1::5:5060x",
            "host name",
        ] {
            problem_at(&with(&format!("advertise = {bad:?}\n")), "sip.advertise");
        }
        problem_at(
            &with("listen = [\"127.0.0.1:0\"]\nadvertise = \"sbc.example.net\"\n"),
            "sip.advertise",
        );
    }

    #[test]
    fn trusted_and_methods() {
        let c = ok(&with(
            "trusted = [\"10.1.0.0/16\", \"192.0.2.7\", \"2001:db8::/32\", \"10.2.3.4/8\"]\n\
             check_methods = [\"invite\", \"MESSAGE\"]\n",
        ));
        let nets: Vec<String> = c.sip.trusted.iter().map(ToString::to_string).collect();
        assert_eq!(
            nets,
            ["10.1.0.0/16", "192.0.2.7/32", "2001:db8::/32", "10.0.0.0/8"]
        );
        assert_eq!(c.sip.check_methods, ["INVITE", "MESSAGE"]);
        problem_at(&with("trusted = [\"10.0.0.0/33\"]\n"), "sip.trusted[0]");
        problem_at(
            &with("check_methods = [\"IN VITE\"]\n"),
            "sip.check_methods[0]",
        );
        problem_at(&with("check_methods = [\"ACK\"]\n"), "sip.check_methods[0]");
        problem_at(&with("check_methods = []\n"), "sip.check_methods");
        problem_at(
            &with("check_methods = [\"MESSAGE\"]\n"),
            "sip.check_methods",
        );
        problem_at(
            &with("check_methods = [\"INVITE\", \"invite\"]\n"),
            "sip.check_methods[1]",
        );
        problem_at(&with("workers = 100000\n"), "sip.workers");
    }

    #[test]
    fn secrets_and_paths() {
        let c = ok(&with(
            "secret_file = \"secret.key\"\n[admin]\ntoken_file = \"/run/token\"\n\
             [credit]\nfile = \"/var/lib/cg/accounts.toml\"\n",
        ));
        assert_eq!(
            c.sip.secret_file,
            Some(PathBuf::from("/etc/creditgate/secret.key"))
        );
        assert_eq!(c.admin.token_file, Some(PathBuf::from("/run/token")));
        assert_eq!(c.credit.file, PathBuf::from("/var/lib/cg/accounts.toml"));
        problem_at(&with("secret = \"short\"\n"), "sip.secret");
        problem_at(
            &with("secret = \"0123456789abcdef\"\nsecret_file = \"k\"\n"),
            "sip.secret",
        );
        assert_eq!(
            ok(&with("secret = \"0123456789abcdef\"\n"))
                .sip
                .secret
                .len(),
            16
        );
    }

    #[test]
    fn recv_buffer_bounds() {
        problem_at(&with("recv_buffer = \"1KiB\"\n"), "sip.recv_buffer");
        problem_at(&with("recv_buffer = \"2GiB\"\n"), "sip.recv_buffer");
        problem_at(&with("recv_buffer = -5\n"), "sip.recv_buffer");
        assert_eq!(ok(&with("recv_buffer = 65536\n")).sip.recv_buffer, 65_536);
    }

    #[test]
    fn realtime_priority_is_off_by_default_and_bounded() {
        assert_eq!(ok(&with("")).sip.realtime_priority, 0);
        assert_eq!(
            ok(&with("realtime_priority = 10\n")).sip.realtime_priority,
            10
        );
        assert_eq!(
            ok(&with("realtime_priority = 99\n")).sip.realtime_priority,
            99
        );
        let msg = problem_at(&with("realtime_priority = 100\n"), "sip.realtime_priority");
        assert!(msg.contains("0 ..= 99"), "{msg}");
        problem_at(&with("realtime_priority = -1\n"), "sip.realtime_priority");
        problem_at(
            &with("realtime_priority = \"high\"\n"),
            "sip.realtime_priority",
        );
    }
}
