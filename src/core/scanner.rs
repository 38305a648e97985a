//! Known scanners (`[abuse] drop_scanners`): a request whose User-Agent contains one of the
//! configured names (`friendly-scanner`, `sipvicious`, `sipcli`...) is dropped without a reply,
//! so a scanner learns nothing, not even that a SIP server listens.
//!
//! Boundary: a pure look at the headers the scanner already framed; `proxy.rs` asks
//! [`is_scanner`] once per request. Upstream and trusted sources are never matched.

use std::net::IpAddr;

use super::scan::{Hdr, Message};
use super::Policy;

/// Whether the request `msg` from `source` comes from a known scanner (its User-Agent contains
/// one of `policy.scanner_agents`, case-insensitively) and is to be dropped. Costs nothing but a
/// branch when the check is off, and a pass over the header names when on.
pub fn is_scanner(msg: &Message<'_>, source: IpAddr, policy: &Policy) -> bool {
    if policy.scanner_agents.is_empty() {
        return false;
    }
    let matched = msg
        .headers
        .iter()
        .filter(|h| h.kind == Hdr::Other)
        .filter(|h| {
            msg.buf
                .get(h.name.clone())
                .is_some_and(|n| n.eq_ignore_ascii_case(b"user-agent"))
        })
        .filter_map(|h| msg.buf.get(h.value.clone()))
        .any(|ua| {
            policy
                .scanner_agents
                .iter()
                .any(|needle| contains_ignore_case(ua, needle))
        });
    matched && !policy.is_trusted(source)
}

/// Whether `hay` contains `needle` (lower-case ASCII), ignoring ASCII case.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay.len() >= needle.len()
        && hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::core::keys::Keys;
    use crate::core::scan::scan;
    use crate::core::Listener;

    fn policy(extra: &str) -> Policy {
        let cfg = Config::from_toml_str(
            &format!(
                "[sip]\nupstream = [\"127.0.0.2:5080\"]\ntrusted = [\"10.9.0.0/16\"]\n{extra}"
            ),
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

    fn request(ua_line: &str) -> Vec<u8> {
        format!(
            "OPTIONS sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
             From: <sip:100@x>;tag=1\r\nTo: <sip:100@x>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\
             {ua_line}Content-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn known_scanners_match_case_insensitively() {
        let p = policy("");
        let customer: IpAddr = "192.0.2.1".parse().unwrap();
        for (line, scanner) in [
            ("User-Agent: friendly-scanner\r\n", true),
            ("user-agent:   SIPVicious 0.3.4\r\n", true),
            ("USER-AGENT: sipcli/v1.8\r\n", true),
            ("User-Agent: VaxSIPUserAgent/3.1\r\n", true),
            ("User-Agent: Yealink SIP-T46S 66.86.0.15\r\n", false),
            ("User-Agent: Asterisk PBX 20.5.0\r\n", false),
            // Not the User-Agent header.
            (
                "Server: friendly-scanner\r\nX-User-Agent: sipvicious\r\n",
                false,
            ),
            ("", false),
        ] {
            let m = request(line);
            let msg = scan(&m).unwrap();
            assert_eq!(is_scanner(&msg, customer, &p), scanner, "{line:?}");
        }
    }

    /// Through the core: the request is dropped with its own reason, nothing sent.
    #[test]
    fn handle_drops_a_scanner_request() {
        use crate::core::{handle, Action, DropReason, Event, MethodClass, Packet};
        let t0 = std::time::Instant::now();
        let snap = crate::snapshot::Snapshot::new(t0);
        let m = request("User-Agent: friendly-scanner\r\n");
        let o = handle(
            Packet {
                data: &m,
                source: "192.0.2.1:5060".parse().unwrap(),
                local: "127.0.0.1:5060".parse().unwrap(),
                now: t0,
                wall_secs: 1_800_000_000,
            },
            &snap,
            &policy(""),
        );
        assert_eq!(o.action, Action::Drop);
        assert_eq!(o.event, Event::Dropped(DropReason::Scanner));
        assert_eq!(o.method, MethodClass::Options);
        assert_eq!(DropReason::Scanner.as_str(), "scanner");
    }

    #[test]
    fn off_or_trusted_never_matches() {
        let m = request("User-Agent: friendly-scanner\r\n");
        let msg = scan(&m).unwrap();
        let customer: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(!is_scanner(
            &msg,
            customer,
            &policy("[abuse]\ndrop_scanners = false\n")
        ));
        assert!(!is_scanner(&msg, "10.9.1.1".parse().unwrap(), &policy("")));
        assert!(!is_scanner(&msg, "127.0.0.2".parse().unwrap(), &policy("")));
        let own = policy("[abuse]\nscanner_user_agents = [\"EvilBot\"]\n");
        assert!(!is_scanner(&msg, customer, &own));
        let m = request("User-Agent: x-evilbot-2\r\n");
        assert!(is_scanner(&scan(&m).unwrap(), customer, &own));
    }
}
