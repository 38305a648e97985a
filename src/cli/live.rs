//! `creditgate accounts show ID`, second part: the live figures of the account from the running
//! daemon's admin API (`GET /accounts/{id}`, its `live` object; SPEC sections 7 and 8).
//!
//! The daemon is found at the configuration's `[admin] listen` (an unspecified address is
//! contacted on loopback) with its `admin.token_file` as bearer token. Everything here is
//! best-effort: no daemon, a refused token or an odd answer is one line of explanation, never
//! an error, since the store's record has been shown already.
//!
//! Boundary: a minimal blocking HTTP/1.1 client (`Connection: close`, one request, a
//! [`TIMEOUT`] on connecting and on each read) instead of an HTTP client dependency; the
//! admin API is on loopback or a trusted network and answers small JSON bodies.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use creditgate::config::Config;

/// Time allowed to connect to the admin API and for each read of its answer: a daemon on the
/// same host answers in milliseconds; past this, `show` says it found none rather than hang.
pub const TIMEOUT: Duration = Duration::from_secs(1);
/// The largest answer read (an account's JSON is a few KB).
const MAX_ANSWER: u64 = 1 << 20;

/// What asking the daemon gave.
#[derive(Debug)]
pub enum DaemonAnswer {
    /// `[admin] listen` is off (or port 0): there is no address to ask.
    NoAdmin,
    /// Nothing answered at the address.
    NotRunning(SocketAddr),
    /// `admin.token_file` could not be read.
    Token(String),
    /// An HTTP answer: status and body.
    Http {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    /// Connected, but the answer was not HTTP we understand.
    Garbled(SocketAddr, String),
}

/// The address to contact for a listen address (unspecified → loopback); `None` for port 0.
pub fn contact_addr(listen: SocketAddr) -> Option<SocketAddr> {
    if listen.port() == 0 {
        return None;
    }
    let mut a = listen;
    if a.ip().is_unspecified() {
        a.set_ip(match a.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some(a)
}

/// `GET /accounts/{id}` of the daemon `cfg` describes.
pub fn ask_daemon(cfg: &Config, id: &str) -> DaemonAnswer {
    let Some(addr) = cfg.admin.listen.and_then(contact_addr) else {
        return DaemonAnswer::NoAdmin;
    };
    let token = match &cfg.admin.token_file {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t.trim().to_owned()),
            Err(e) => {
                return DaemonAnswer::Token(format!(
                    "cannot read admin.token_file {}: {e}",
                    p.display()
                ))
            }
        },
    };
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, TIMEOUT) else {
        return DaemonAnswer::NotRunning(addr);
    };
    match http_get(
        &mut conn,
        addr,
        &format!("/accounts/{id}"),
        token.as_deref(),
    ) {
        Ok((status, body)) => DaemonAnswer::Http { addr, status, body },
        Err(e) => DaemonAnswer::Garbled(addr, format!("{e:#}")),
    }
}

/// One `GET` on an open connection: (status, body).
fn http_get(
    conn: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n{auth}\r\n"
    )
    .context("sending the request")?;
    let mut raw = Vec::new();
    conn.take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .context("reading the answer")?;
    parse_answer(&raw)
}

/// Parses an HTTP/1.1 answer read to its end: (status, body), chunked bodies decoded.
pub fn parse_answer(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("no end of the HTTP header")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .filter(|l| l.starts_with("HTTP/1."))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .context("not an HTTP status line")?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")
        })
    });
    let body = if chunked {
        dechunk(body).context("a bad chunked body")?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n")?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(size, 16).ok()?;
        if n == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..n)?);
        s = rest.get(n..)?.strip_prefix("\r\n")?;
    }
}

/// The lines `accounts show` prints for `answer` about account `id`.
pub fn live_lines(answer: &DaemonAnswer, id: &str) -> Vec<String> {
    let mut out = Vec::new();
    match answer {
        DaemonAnswer::NoAdmin => out.push(
            "no running daemon: live figures not shown ([admin] listen is off in this \
             configuration)"
                .to_owned(),
        ),
        DaemonAnswer::NotRunning(addr) => out.push(format!(
            "no running daemon: live figures not shown (nothing answers [admin] listen {addr})"
        )),
        DaemonAnswer::Token(e) => out.push(format!("{e}: live figures not shown")),
        DaemonAnswer::Garbled(addr, e) => out.push(format!(
            "the admin API at {addr} gave no usable answer ({e}): live figures not shown"
        )),
        DaemonAnswer::Http { addr, status, body } => {
            let j: Option<Value> = serde_json::from_str(body).ok();
            match (*status, j) {
                (401, _) => out.push(format!(
                    "the daemon at {addr} refused the admin token (admin.token_file): live \
                     figures not shown"
                )),
                (404, Some(_)) => {
                    out.push(format!("live (from the running daemon at {addr}):"));
                    out.push(format!(
                        "  the running daemon does not know account {id} (not in its snapshot)"
                    ));
                }
                (200, Some(j)) => {
                    out.push(format!("live (from the running daemon at {addr}):"));
                    match j.get("live") {
                        Some(Value::Object(m)) => push_object(&mut out, m, 1),
                        _ => {
                            out.push(
                                "  (no live object: call tracking is off in the running daemon)"
                                    .to_owned(),
                            );
                            for k in ["live_available", "calls_in_progress"] {
                                if let Some(v) = j.get(k) {
                                    out.push(format!("  {k}: {}", scalar(v)));
                                }
                            }
                        }
                    }
                }
                (status, _) => out.push(format!(
                    "the admin API at {addr} answered HTTP {status}: live figures not shown"
                )),
            }
        }
    }
    out
}

/// `key: value` lines of an object, nested objects as indented blocks.
fn push_object(out: &mut Vec<String>, m: &serde_json::Map<String, Value>, depth: usize) {
    let pad = "  ".repeat(depth);
    for (k, v) in m {
        match v {
            Value::Object(inner) => {
                out.push(format!("{pad}{k}:"));
                push_object(out, inner, depth + 1);
            }
            v => out.push(format!("{pad}{k}: {}", scalar(v))),
        }
    }
}

/// A JSON value as shown: strings unquoted, null as `-`, the rest as compact JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn http(status: u16, body: &str) -> DaemonAnswer {
        DaemonAnswer::Http {
            addr: "127.0.0.1:9060".parse().unwrap(),
            status,
            body: body.to_owned(),
        }
    }

    #[test]
    fn live_object_printed_generically() {
        let body = r#"{"id":"acme","live":{"snapshot_available":"25.00","live_available":"23.5000",
            "calls_in_progress":2,"held":"1.50","x":null,"limits":{"max_channels":5,"max_cps":null}}}"#;
        assert_eq!(
            live_lines(&http(200, body), "acme"),
            [
                "live (from the running daemon at 127.0.0.1:9060):",
                "  calls_in_progress: 2",
                "  held: 1.50",
                "  limits:",
                "    max_channels: 5",
                "    max_cps: -",
                "  live_available: 23.5000",
                "  snapshot_available: 25.00",
                "  x: -",
            ]
        );
        let lines = live_lines(
            &http(200, r#"{"live_available":"25.00","calls_in_progress":0}"#),
            "a",
        );
        assert_eq!(lines[2], "  live_available: 25.00");
        assert!(live_lines(&http(404, r#"{"found":false}"#), "zed")[1]
            .contains("does not know account zed"));
        assert!(live_lines(&http(401, "no"), "a")[0].contains("refused the admin token"));
        assert!(live_lines(&http(500, "x"), "a")[0].contains("HTTP 500"));
        let none = live_lines(
            &DaemonAnswer::NotRunning("127.0.0.1:1".parse().unwrap()),
            "a",
        );
        assert!(none[0].starts_with("no running daemon: live figures not shown"));
    }

    #[test]
    fn answers_parse() {
        let (s, b) = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_str()), (200, "{}"));
        let (s, b) = parse_answer(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_str()), (404, "{\"a\":1}"));
        assert!(parse_answer(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(
            parse_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
        assert!(parse_answer(b"").is_err());
    }

    #[test]
    fn contact_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(contact_addr(a("0.0.0.0:9060")), Some(a("127.0.0.1:9060")));
        assert_eq!(contact_addr(a("[::]:9060")), Some(a("[::1]:9060")));
        assert_eq!(contact_addr(a("10.1.2.3:9060")), Some(a("10.1.2.3:9060")));
        assert_eq!(contact_addr(a("127.0.0.1:0")), None);
    }
}
