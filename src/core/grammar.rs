//! Typed, lazy access to the few header values the proxy interprets: Via, From/To, Route,
//! CSeq, Max-Forwards and SIP URIs. Every parser works on spans of the arrival buffer and returns
//! spans (absolute offsets), so edits can be spliced without re-serialising. Linear white space
//! (including folded CRLF + WSP, already validated by the scanner) is skipped where RFC 3261
//! allows it. Nothing here allocates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;

use super::scan::{at, is_token_char};

/// Grammar violation in a header value (the proxy answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrammarError {
    Via,
    NameAddr,
    Uri,
    CSeq,
    MaxForwards,
}

impl GrammarError {
    pub fn as_str(self) -> &'static str {
        match self {
            GrammarError::Via => "Malformed Via",
            GrammarError::NameAddr => "Malformed From/To/Route",
            GrammarError::Uri => "Malformed URI",
            GrammarError::CSeq => "Malformed CSeq",
            GrammarError::MaxForwards => "Malformed Max-Forwards",
        }
    }
}

/// A host as written in a URI or Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name (span of the name).
    Name,
}

/// A cursor over `buf[pos..end]` with absolute offsets.
struct Cur<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cur<'a> {
    fn new(buf: &'a [u8], r: Range<usize>) -> Self {
        Cur {
            buf,
            pos: r.start,
            end: r.end.min(buf.len()),
        }
    }
    fn peek(&self) -> Option<u8> {
        if self.pos < self.end {
            self.buf.get(self.pos).copied()
        } else {
            None
        }
    }
    fn at_end(&self) -> bool {
        self.pos >= self.end
    }
    fn lws(&mut self) -> bool {
        let s = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
        self.pos > s
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> Range<usize> {
        let s = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        s..self.pos
    }
    fn token(&mut self) -> Option<Range<usize>> {
        let r = self.take_while(is_token_char);
        (!r.is_empty()).then_some(r)
    }
    /// `*LWS ";" *LWS token [ *LWS "=" *LWS (token / host / quoted-string) ]` at the cursor:
    /// `Some(None)` when no parameter follows (cursor unchanged), `None` when one is malformed.
    #[allow(clippy::type_complexity)]
    fn generic_param(&mut self) -> Option<Option<(Range<usize>, Option<Range<usize>>)>> {
        let save = self.pos;
        self.lws();
        if !self.eat(b';') {
            self.pos = save;
            return Some(None);
        }
        self.lws();
        let name = self.token()?;
        let after_name = self.pos;
        self.lws();
        let value = if self.eat(b'=') {
            self.lws();
            let r = if self.peek() == Some(b'"') {
                self.quoted()?
            } else {
                self.take_while(is_param_value_char)
            };
            if r.is_empty() {
                return None;
            }
            Some(r)
        } else {
            self.pos = after_name;
            None
        };
        Some(Some((name, value)))
    }

    /// A quoted string including its quotes; `None` if unterminated.
    fn quoted(&mut self) -> Option<Range<usize>> {
        let s = self.pos;
        if !self.eat(b'"') {
            return None;
        }
        while let Some(c) = self.peek() {
            self.pos += 1;
            match c {
                b'\\' => {
                    if self.at_end() {
                        return None;
                    }
                    self.pos += 1;
                }
                b'"' => return Some(s..self.pos),
                _ => {}
            }
        }
        None
    }
}

fn is_param_value_char(b: u8) -> bool {
    is_token_char(b) || matches!(b, b':' | b'[' | b']')
}

/// An IPv6 address as written inside `[ ]`. RFC 5118 4.10: the RFC 3261 ABNF wrongly admits a
/// third colon before an embedded IPv4 part (`2001:db8:::192.0.2.1`), and implementations must
/// tolerate it as the two-colon form it means.
fn parse_v6(t: &[u8]) -> Option<Ipv6Addr> {
    if let Some(a) = std::str::from_utf8(t).ok().and_then(|s| s.parse().ok()) {
        return Some(a);
    }
    // Longest valid text: 8 groups of 4 hex digits and 7 colons, or 6 groups + an IPv4 part.
    const MAX: usize = 45;
    let i = memchr::memmem::find(t, b":::")?;
    let (head, tail) = (t.get(..i + 2)?, t.get(i + 3..)?);
    if !tail.contains(&b'.') || head.len() + tail.len() > MAX {
        return None;
    }
    let mut b = [0u8; MAX];
    b.get_mut(..head.len())?.copy_from_slice(head);
    b.get_mut(head.len()..head.len() + tail.len())?
        .copy_from_slice(tail);
    std::str::from_utf8(b.get(..head.len() + tail.len())?)
        .ok()?
        .parse()
        .ok()
}

/// `IPv4address = 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT` (RFC 3261 25.1), each part at
/// most 255. Leading zeros are allowed and decimal (`063` is 63), unlike Rust's strict parser.
fn parse_v4(t: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = t.split(|b| *b == b'.');
    for o in &mut octets {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let v = p.iter().fold(0u16, |a, d| a * 10 + u16::from(d - b'0'));
        *o = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// Parses `host [":" port]` at the cursor.
fn host_port(c: &mut Cur<'_>) -> Option<(Range<usize>, Host, Option<u16>)> {
    let hs = c.pos;
    let host = if c.eat(b'[') {
        let inner = c.take_while(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !c.eat(b']') {
            return None;
        }
        Host::Ip(IpAddr::V6(parse_v6(at(c.buf, inner))?))
    } else {
        let r = c.take_while(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if r.is_empty() {
            return None;
        }
        let txt = at(c.buf, r.clone());
        if txt.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
            Host::Ip(IpAddr::V4(parse_v4(txt)?))
        } else {
            // hostname: labels of alnum/'-', the last label starting with a letter.
            if txt.starts_with(b".") || txt.starts_with(b"-") || txt.windows(2).any(|w| w == b"..")
            {
                return None;
            }
            Host::Name
        }
    };
    let host_span = hs..c.pos;
    let port = if c.peek() == Some(b':') {
        let save = c.pos;
        c.pos += 1;
        let d = c.take_while(|b| b.is_ascii_digit());
        if d.is_empty() || d.len() > 5 {
            c.pos = save;
            return None;
        }
        let v: u32 = at(c.buf, d)
            .iter()
            .fold(0, |a, b| a * 10 + u32::from(b - b'0'));
        Some(u16::try_from(v).ok().filter(|p| *p != 0)?)
    } else {
        None
    };
    Some((host_span, host, port))
}

/// One Via value (via-parm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The whole via-parm (from the protocol name to the end of the last parameter).
    pub span: Range<usize>,
    pub transport: Range<usize>,
    pub host_span: Range<usize>,
    pub host: Host,
    pub port: Option<u16>,
    pub branch: Option<Range<usize>>,
    /// `received=` parameter: (whole parameter span, value span).
    pub received: Option<(Range<usize>, Range<usize>)>,
    /// `rport` parameter: (whole parameter span, value span if any).
    pub rport: Option<(Range<usize>, Option<Range<usize>>)>,
}

impl Via {
    /// The sent-by as written (`host[:port]`).
    pub fn sent_by(&self) -> Range<usize> {
        self.host_span.start..self.port_end()
    }
    fn port_end(&self) -> usize {
        self.host_span.end + self.port.map_or(0, |p| 1 + digits(p))
    }
}

fn digits(p: u16) -> usize {
    match p {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

/// Parses the via-parms of one Via header value; calls `f` for each, stops when `f` returns
/// false. Errors on the first malformed via-parm.
pub fn for_each_via(
    buf: &[u8],
    value: Range<usize>,
    mut f: impl FnMut(Via) -> bool,
) -> Result<(), GrammarError> {
    let mut c = Cur::new(buf, value);
    loop {
        c.lws();
        let v = via_parm(&mut c).ok_or(GrammarError::Via)?;
        if !f(v) {
            return Ok(());
        }
        c.lws();
        if c.at_end() {
            return Ok(());
        }
        if !c.eat(b',') {
            return Err(GrammarError::Via);
        }
    }
}

/// The first via-parm of a Via header value.
pub fn first_via(buf: &[u8], value: Range<usize>) -> Result<Via, GrammarError> {
    let mut out = None;
    for_each_via(buf, value, |v| {
        out = Some(v);
        false
    })?;
    out.ok_or(GrammarError::Via)
}

fn via_parm(c: &mut Cur<'_>) -> Option<Via> {
    let start = c.pos;
    c.token()?; // protocol name
    c.lws();
    if !c.eat(b'/') {
        return None;
    }
    c.lws();
    c.token()?; // version
    c.lws();
    if !c.eat(b'/') {
        return None;
    }
    c.lws();
    let transport = c.token()?;
    if !c.lws() {
        return None;
    }
    let (host_span, host, port) = host_port(c)?;
    let mut v = Via {
        span: start..c.pos,
        transport,
        host_span,
        host,
        port,
        branch: None,
        received: None,
        rport: None,
    };
    while let Some((name, value)) = c.generic_param()? {
        let pspan = name.start..c.pos;
        let n = at(c.buf, name);
        if n.eq_ignore_ascii_case(b"branch") {
            v.branch = Some(value.clone()?);
        } else if n.eq_ignore_ascii_case(b"received") {
            v.received = Some((pspan.clone(), value.clone()?));
        } else if n.eq_ignore_ascii_case(b"rport") {
            v.rport = Some((pspan.clone(), value.clone()));
        }
        v.span.end = c.pos;
    }
    Some(v)
}

/// From/To/Route/Record-Route value: `[display] <uri> *(;param)` or `uri *(;param)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// The whole value element (up to a following comma for Route lists).
    pub span: Range<usize>,
    pub uri: Range<usize>,
    pub tag: Option<Range<usize>>,
}

/// Parses name-addrs of a header value (one for From/To; a list for Route).
pub fn for_each_name_addr(
    buf: &[u8],
    value: Range<usize>,
    mut f: impl FnMut(NameAddr) -> bool,
) -> Result<(), GrammarError> {
    let mut c = Cur::new(buf, value);
    loop {
        c.lws();
        let na = name_addr(&mut c).ok_or(GrammarError::NameAddr)?;
        if !f(na) {
            return Ok(());
        }
        c.lws();
        if c.at_end() {
            return Ok(());
        }
        if !c.eat(b',') {
            return Err(GrammarError::NameAddr);
        }
    }
}

/// A From/To value: exactly one name-addr, nothing after it.
pub fn single_name_addr(buf: &[u8], value: Range<usize>) -> Result<NameAddr, GrammarError> {
    let mut c = Cur::new(buf, value);
    c.lws();
    let na = name_addr(&mut c).ok_or(GrammarError::NameAddr)?;
    c.lws();
    if !c.at_end() {
        return Err(GrammarError::NameAddr);
    }
    Ok(na)
}

fn name_addr(c: &mut Cur<'_>) -> Option<NameAddr> {
    let start = c.pos;
    let uri;
    if c.peek() == Some(b'"') {
        c.quoted()?;
        c.lws();
        if !c.eat(b'<') {
            return None;
        }
        uri = bracketed_uri(c)?;
    } else {
        // Either a display name of tokens followed by '<', or a bare addr-spec.
        let save = c.pos;
        let mut saw_lt = false;
        while let Some(b) = c.peek() {
            if b == b'<' {
                saw_lt = true;
                break;
            }
            if is_token_char(b) || matches!(b, b' ' | b'\t' | b'\r' | b'\n') || b >= 0x80 {
                c.pos += 1;
            } else {
                break;
            }
        }
        if saw_lt {
            c.pos += 1;
            uri = bracketed_uri(c)?;
        } else {
            c.pos = save;
            // addr-spec: the URI ends at ';' (header params), ',' or whitespace.
            let r = c.take_while(|b| {
                !matches!(
                    b,
                    b';' | b',' | b' ' | b'\t' | b'\r' | b'\n' | b'<' | b'>' | b'"'
                )
            });
            if r.is_empty() || !uri_shape_ok(at(c.buf, r.clone())) {
                return None;
            }
            // A bare addr-spec must not carry '?' headers (RFC 3261 20: name-addr form required).
            if at(c.buf, r.clone()).contains(&b'?') {
                return None;
            }
            uri = r;
        }
    }
    let mut na = NameAddr {
        span: start..c.pos,
        uri,
        tag: None,
    };
    while let Some((name, value)) = c.generic_param()? {
        if at(c.buf, name).eq_ignore_ascii_case(b"tag") {
            na.tag = Some(value?);
        }
        na.span.end = c.pos;
    }
    Some(na)
}

fn bracketed_uri(c: &mut Cur<'_>) -> Option<Range<usize>> {
    let r = c.take_while(|b| b != b'>' && b > b' ' && b != 0x7f && b != b'<');
    if !c.eat(b'>') || r.is_empty() || !uri_shape_ok(at(c.buf, r.clone())) {
        return None;
    }
    Some(r)
}

/// `scheme ":" something`, scheme = ALPHA *(ALPHA / DIGIT / "+" / "-" / ".").
fn uri_shape_ok(u: &[u8]) -> bool {
    let Some(colon) = memchr::memchr(b':', u) else {
        return false;
    };
    let Some(scheme) = u.get(..colon) else {
        return false;
    };
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && colon + 1 < u.len()
}

/// URI scheme class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    Other,
}

/// A parsed URI (enough for routing and identification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// The user part (sip/sips: before '@', without password; tel: the number).
    pub user: Option<Range<usize>>,
    /// sip/sips only.
    pub host_span: Range<usize>,
    pub host: Option<Host>,
    pub port: Option<u16>,
    /// `;name[=value]` parameters of a sip/sips URI (span from the first ';').
    pub params: Range<usize>,
    pub has_headers: bool,
}

impl Uri {
    /// Value of a URI parameter (`None` if absent; `Some(empty)` for a flag parameter).
    pub fn param<'b>(&self, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
        let p = buf.get(self.params.clone())?;
        p.split(|b| *b == b';').skip(1).find_map(|kv| {
            let (k, v) = match memchr::memchr(b'=', kv) {
                Some(i) => (
                    kv.get(..i).unwrap_or_default(),
                    kv.get(i + 1..).unwrap_or_default(),
                ),
                None => (kv, &[][..]),
            };
            k.eq_ignore_ascii_case(name).then_some(v)
        })
    }
}

/// Parses a URI (Request-URI or a Route URI).
pub fn parse_uri(buf: &[u8], r: Range<usize>) -> Result<Uri, GrammarError> {
    let u = buf.get(r.clone()).ok_or(GrammarError::Uri)?;
    if !uri_shape_ok(u) {
        return Err(GrammarError::Uri);
    }
    let colon = memchr::memchr(b':', u).ok_or(GrammarError::Uri)?;
    let scheme_b = u.get(..colon).ok_or(GrammarError::Uri)?;
    let scheme = if scheme_b.eq_ignore_ascii_case(b"sip") {
        Scheme::Sip
    } else if scheme_b.eq_ignore_ascii_case(b"sips") {
        Scheme::Sips
    } else if scheme_b.eq_ignore_ascii_case(b"tel") {
        Scheme::Tel
    } else {
        Scheme::Other
    };
    let rest0 = r.start + colon + 1;
    let mut out = Uri {
        scheme,
        user: None,
        host_span: rest0..rest0,
        host: None,
        port: None,
        params: r.end..r.end,
        has_headers: false,
    };
    match scheme {
        Scheme::Other => Ok(out),
        Scheme::Tel => {
            let end = u
                .get(colon + 1..)
                .ok_or(GrammarError::Uri)?
                .iter()
                .position(|b| *b == b';')
                .map_or(r.end, |p| rest0 + p);
            out.user = Some(rest0..end);
            out.params = end..r.end;
            Ok(out)
        }
        Scheme::Sip | Scheme::Sips => {
            let body = u.get(colon + 1..).ok_or(GrammarError::Uri)?;
            // The userinfo ends at the one '@' a SIP URI can hold: '?' is a legal user
            // character (RFC 3261 25.1 user-unreserved, RFC 4475 intmeth) and '@' appears
            // nowhere else unescaped, so headers are only looked for after it.
            let at = memchr::memchr(b'@', body);
            let after_user = at.map_or(0, |a| a + 1);
            let after = body.get(after_user..).ok_or(GrammarError::Uri)?;
            let q = memchr::memchr(b'?', after).map_or(body.len(), |p| after_user + p);
            out.has_headers = q < body.len();
            let host_start = match at {
                Some(at) => {
                    let userinfo = body.get(..at).ok_or(GrammarError::Uri)?;
                    let ulen = memchr::memchr(b':', userinfo).unwrap_or(userinfo.len());
                    if ulen == 0 {
                        return Err(GrammarError::Uri);
                    }
                    out.user = Some(rest0..rest0 + ulen);
                    rest0 + at + 1
                }
                None => rest0,
            };
            let mut c = Cur::new(buf, host_start..rest0 + q);
            let (hs, host, port) = host_port(&mut c).ok_or(GrammarError::Uri)?;
            out.host_span = hs;
            out.host = Some(host);
            out.port = port;
            if !c.at_end() && c.peek() != Some(b';') {
                return Err(GrammarError::Uri);
            }
            out.params = c.pos..rest0 + q;
            // maddr-param = "maddr=" host (RFC 3261 25.1): an IPv6 address there must be
            // bracketed like the host itself (RFC 5118 4.2), or the next hop would be read
            // from a value no grammar allows.
            if out.param(buf, b"maddr").is_some_and(|v| !is_host(v)) {
                return Err(GrammarError::Uri);
            }
            Ok(out)
        }
    }
}

/// Whether `v` is exactly a `host` (hostname, IPv4 address or bracketed IPv6 reference).
fn is_host(v: &[u8]) -> bool {
    let mut c = Cur::new(v, 0..v.len());
    matches!(host_port(&mut c), Some((_, _, None))) && c.at_end()
}

/// `CSeq: number method`; returns (number, method span). Number < 2^31 (RFC 3261 8.1.1.5).
pub fn parse_cseq(buf: &[u8], value: Range<usize>) -> Result<(u32, Range<usize>), GrammarError> {
    let mut c = Cur::new(buf, value);
    let d = c.take_while(|b| b.is_ascii_digit());
    let n = super::scan::parse_u32_digits(at(buf, d))
        .filter(|n| *n < 0x8000_0000)
        .ok_or(GrammarError::CSeq)?;
    if !c.lws() {
        return Err(GrammarError::CSeq);
    }
    let m = c.token().ok_or(GrammarError::CSeq)?;
    c.lws();
    if !c.at_end() {
        return Err(GrammarError::CSeq);
    }
    Ok((n, m))
}

/// Max-Forwards value: digits (leading zeros allowed); values above 255 count as 255.
pub fn parse_max_forwards(v: &[u8]) -> Result<u8, GrammarError> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(GrammarError::MaxForwards);
    }
    let trimmed = v
        .iter()
        .position(|b| *b != b'0')
        .and_then(|p| v.get(p..))
        .unwrap_or_default();
    if trimmed.len() > 3 {
        return Ok(255);
    }
    let n: u32 = trimmed.iter().fold(0, |a, b| a * 10 + u32::from(b - b'0'));
    Ok(u8::try_from(n).unwrap_or(255))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn all(b: &[u8]) -> Range<usize> {
        0..b.len()
    }

    #[test]
    fn ipv6_hosts_must_be_bracketed() {
        for bad in [
            &b"sip:2001:db8::10"[..],
            b"sip:u@fe80::1",
            b"sip:::1",
            b"sip:u@example.com;maddr=2001:db8::10",
            b"sip:u@example.com;maddr=",
        ] {
            assert!(
                parse_uri(bad, all(bad)).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for good in [
            &b"sip:[2001:db8::10]"[..],
            b"sip:u@[2001:db8::10]:5070;lr",
            b"sip:u@example.com;maddr=[2001:db8::10]",
            b"sip:u@example.com;maddr=192.0.2.1;lr",
            b"sip:u@example.com;maddr=ss1.example.com",
        ] {
            assert!(
                parse_uri(good, all(good)).is_ok(),
                "{}",
                String::from_utf8_lossy(good)
            );
        }
    }

    #[test]
    fn via_forms() {
        let b = b"SIP / 2.0 / UDP first.example.com: 4000;ttl=16\r\n ;maddr=224.2.0.1 ;branch=z9hG4bKa7c6a8dlze.1";
        // "host: 4000" has a space after the colon, which RFC 3261 does not allow in sent-by.
        assert!(first_via(b, all(b)).is_err());
        let b = b"SIP / 2.0 / UDP first.example.com:4000;ttl=16\r\n ;maddr=224.2.0.1 ;branch=z9hG4bKa7c6a8dlze.1";
        let v = first_via(b, all(b)).unwrap();
        assert_eq!(&b[v.sent_by()], b"first.example.com:4000");
        assert_eq!(&b[v.branch.unwrap()], b"z9hG4bKa7c6a8dlze.1");
        let b = b"SIP/2.0/UDP 192.0.2.1;rport;branch=z9hG4bK1, SIP/2.0/UDP [2001:db8::1]:5070;received=[2001:db8::9:255]";
        let mut vs = Vec::new();
        for_each_via(b, all(b), |v| {
            vs.push(v);
            true
        })
        .unwrap();
        assert_eq!(vs.len(), 2);
        assert_eq!(vs[0].host, Host::Ip("192.0.2.1".parse().unwrap()));
        assert_eq!(vs[0].rport.as_ref().unwrap().1, None);
        assert_eq!(vs[1].port, Some(5070));
        for bad in [
            &b"SIP/2.0/UDP 192.0.2.15;;,;,,"[..],
            b"SIP/2.0/UDP",
            b"SIP/2.0/UDP 1.2.3.4:99999",
            b"garbage",
            b"SIP/2.0/UDP 1.2.3.400",
        ] {
            assert!(
                first_via(bad, all(bad)).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn name_addr_forms() {
        type Want<'x> = Option<(&'x [u8], Option<&'x [u8]>)>;
        let cases: [(&[u8], Want<'_>); 9] = [
            (b"<sip:a@b>;tag=1", Some((b"sip:a@b", Some(b"1")))),
            (
                b"\"Alice \\\"A\\\"\" <sip:a@b;transport=udp>;tag=x",
                Some((b"sip:a@b;transport=udp", Some(b"x"))),
            ),
            (b"sip:a@b;tag=2", Some((b"sip:a@b", Some(b"2")))),
            (
                b"caller<sip:caller@example.com>;tag=323",
                Some((b"sip:caller@example.com", None.or(Some(b"323")))),
            ),
            (b"\"Gr\xfc\xdfe\" <sip:a@b>", Some((b"sip:a@b", None))),
            (b"\"unterminated <sip:a@b>", None),
            (b"Bell, Alexander <sip:a.g.bell@bell-tel.com>", None),
            (b"\"Watson, Thomas\" < sip:t.watson@example.org >", None),
            (
                b"sip:user@example.com?Route=%3Csip:sip.example.com%3E",
                None,
            ),
        ];
        for (v, want) in cases {
            let got = single_name_addr(v, all(v))
                .ok()
                .map(|na| (&v[na.uri.clone()], na.tag.map(|t| &v[t])));
            assert_eq!(got, want, "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn uris() {
        let u = b"sip:user;par=u%40example.net@example.com";
        let p = parse_uri(u, all(u)).unwrap();
        assert_eq!(&u[p.user.unwrap()], b"user;par=u%40example.net");
        assert_eq!(p.host, Some(Host::Name));
        let u = b"sip:[2001:db8::10]:5070;lr;cgt=abc";
        let p = parse_uri(u, all(u)).unwrap();
        assert_eq!(p.port, Some(5070));
        assert_eq!(p.param(u, b"cgt"), Some(&b"abc"[..]));
        assert_eq!(p.param(u, b"lr"), Some(&b""[..]));
        let u = b"sip:user@example.com?Route=%3Csip:example.com%3E";
        assert!(parse_uri(u, all(u)).unwrap().has_headers);
        for bad in [
            &b"<sip:a@b>"[..],
            b"sip:[2001:db8::10",
            b"sip:",
            b"sip:@host",
        ] {
            assert!(
                parse_uri(bad, all(bad)).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // RFC 4475 intmeth: '?' (and much else) in the user part, password after ':'.
        let u = b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com";
        let p = parse_uri(u, all(u)).unwrap();
        assert_eq!(
            &u[p.user.unwrap()],
            b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        );
        assert_eq!(&u[p.host_span], b"example.com");
        assert!(!p.has_headers);
        // RFC 5118 4.10: the three-colon form is tolerated as the two-colon one.
        for u in [
            &b"sip:user@[2001:db8:::192.0.2.1]"[..],
            b"sip:user@[2001:db8::192.0.2.1]",
        ] {
            assert_eq!(
                parse_uri(u, all(u)).unwrap().host,
                Some(Host::Ip("2001:db8::c000:201".parse().unwrap())),
                "{}",
                String::from_utf8_lossy(u)
            );
        }
        for bad in [&b"sip:[2001:db8:::1]"[..], b"sip:[2001:::db8::1.2.3.4]"] {
            assert!(parse_uri(bad, all(bad)).is_err());
        }
        let u = b"nobodyKnowsThisScheme:totallyopaquecontent";
        assert_eq!(parse_uri(u, all(u)).unwrap().scheme, Scheme::Other);
        let u = b"tel:+1-555;phone-context=x";
        assert_eq!(&u[parse_uri(u, all(u)).unwrap().user.unwrap()], b"+1-555");
    }

    #[test]
    fn ipv4_with_leading_zeros() {
        assert_eq!(parse_v4(b"063.0.0.001"), Some(Ipv4Addr::new(63, 0, 0, 1)));
        for bad in [
            &b"256.0.0.1"[..],
            b"1.2.3",
            b"1.2.3.4.5",
            b"1..2.3",
            b"0001.2.3.4",
        ] {
            assert_eq!(parse_v4(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn cseq_and_mf() {
        let v = b"0009 INVITE";
        assert_eq!(parse_cseq(v, all(v)).unwrap().0, 9);
        for bad in [
            &b"36893488147419103232 REGISTER"[..],
            b"INVITE",
            b"1",
            b"-1 INVITE",
            b"2147483648 INVITE",
        ] {
            assert!(parse_cseq(bad, all(bad)).is_err());
        }
        assert_eq!(parse_max_forwards(b"0068").unwrap(), 68);
        assert_eq!(parse_max_forwards(b"300").unwrap(), 255);
        assert_eq!(parse_max_forwards(b"0").unwrap(), 0);
        assert!(parse_max_forwards(b"x").is_err());
    }
}
