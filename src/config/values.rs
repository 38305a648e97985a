//! Shared value parsers and printers of the configuration: sizes, durations, socket addresses,
//! networks, paths, Redis URL redaction. Each parser returns the operator-facing message (no key:
//! the caller names it, see `value` and `list` in the parent module).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub(super) const KIB: u64 = 1024;
pub(super) const MIB: u64 = 1024 * KIB;
pub(super) const GIB: u64 = 1024 * MIB;

/// A size as written: `"8MiB"` or a bare integer of bytes; kept as text until checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SizeValue(pub(super) String);

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"8MiB\" or a number of bytes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SizeValue, E> {
                Ok(SizeValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Serialize for SizeValue {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Parses a size in bytes: an integer with an optional unit, case-insensitive, optionally
/// separated by spaces: `B`; `K`, `KiB` = 1024 and `KB` = 1000; likewise `M`/`MiB`/`MB` and
/// `G`/`GiB`/`GB`. A bare `K`, `M` or `G` is binary, as in systemd and nginx.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let bad = || format!("{s:?} is not a size (write it like \"8MiB\", \"512KiB\" or \"65536\")");
    if number.is_empty() {
        return Err(bad());
    }
    let multiplier = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "kb" => 1000,
        "m" | "mib" => MIB,
        "mb" => 1_000_000,
        "g" | "gib" => GIB,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Formats a size the way [`parse_size`] reads it: the largest binary unit that divides it
/// exactly, else a bare byte count.
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes != 0 && bytes % unit == 0 {
            return format!("{}{name}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Parses a human duration such as `"60s"`, `"5m"`, `"1h 30m"` or `"250ms"` (humantime).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    humantime::parse_duration(text).map_err(|e| {
        use humantime::DurationError as E;
        // The word at a byte position of `text` (humantime reports positions, not words).
        let word_at = |i: usize| {
            text.get(i..)
                .unwrap_or_default()
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        let why = match e {
            E::Empty => "it is empty".to_owned(),
            E::NumberOverflow => "it is too large".to_owned(),
            E::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            E::InvalidCharacter(i) | E::NumberExpected(i) => {
                format!("{:?} is not a number with a unit", word_at(i))
            }
        };
        format!(
            "{s:?} is not a duration ({why}); write numbers with units, like \"60s\", \"5m\", \
             \"1h 30m\" or \"250ms\""
        )
    })
}

/// Formats a duration the way [`parse_duration`] reads it (`"1m"`, `"1h 30m"`, `"0s"`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

pub(super) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not a socket address (IP:port, IPv6 in brackets: \"[::1]:5060\")")
    })
}

pub(super) fn parse_net(s: &str) -> Result<IpNet, String> {
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{s:?} is not an IP address or CIDR (\"10.0.0.0/8\", \"192.0.2.7\")"))
}

/// RFC 3261 `token`: alphanumerics and `-.!%*_+`'~`.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
}

/// The URL with the password of its userinfo part, if any, replaced by `<redacted>`.
pub(super) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:<redacted>@{host}{path}")
            } else {
                format!("{scheme}://<redacted>@{host}{path}")
            }
        }
        None => url.to_owned(),
    }
}

pub(super) fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// `""` = `None`; otherwise the path resolved against `base_dir`.
pub(super) fn optional_path(s: &str, base_dir: &Path) -> Option<PathBuf> {
    if s.is_empty() {
        None
    } else {
        Some(resolve(base_dir, Path::new(s)))
    }
}

/// A path as written back into the file; `None` = `""`.
pub(super) fn path_text(path: Option<&PathBuf>) -> String {
    path.map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let cases = [
            ("65536", 65_536),
            ("8MiB", 8 << 20),
            ("8 MiB", 8 << 20),
            ("512KiB", 512 << 10),
            ("512k", 512 << 10),
            ("1MB", 1_000_000),
            ("1mb", 1_000_000),
            ("2KB", 2_000),
            ("1G", 1 << 30),
            ("3GB", 3_000_000_000),
            ("100B", 100),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in [
            "",
            "MiB",
            "8 furlongs",
            "-1",
            "1.5MiB",
            "99999999999999999999",
            "20000000000GiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        for n in [1, 1000, 1024, 8 << 20, 3 << 30, 65_537] {
            assert_eq!(parse_size(&format_size(n)), Ok(n));
        }
        assert_eq!(format_size(8 << 20), "8MiB");
        assert_eq!(format_size(0), "0");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("60").is_err());
        assert!(parse_duration("soon").is_err());
        for d in [0, 1, 60, 90, 3600, 4 * 3600] {
            let d = Duration::from_secs(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn redact_url_hides_the_password() {
        assert_eq!(redact_url("redis://:pw@h/0"), "redis://:<redacted>@h/0");
        assert_eq!(redact_url("redis://tok@h"), "redis://<redacted>@h");
        assert_eq!(redact_url("redis://h:6379/0"), "redis://h:6379/0");
    }
}
