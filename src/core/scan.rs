//! Structural scanner: splits a datagram into start line, header lines and body, as spans into
//! the arrival buffer. Nothing is copied and nothing is interpreted beyond framing; typed access to
//! header values lives in [`super::grammar`] and validation in the proxy. Compact header names are
//! canonicalised in exactly one function, [`canonical`].
//!
//! Fatal problems (no start line, no end of the header section) make the datagram unusable and
//! return [`ScanError`]. Other problems (a header line without a colon, a bad Content-Length, a
//! short body, an unknown SIP version) are recorded as a [`Defect`] on an otherwise scanned
//! message, so the proxy can still build a `400`/`505` from the headers it found.

// Hostile input never panics (STYLE rule 10): no indexing outside tests (denied for the whole
// core in `mod.rs`).

use std::ops::Range;

use smallvec::SmallVec;

/// Header lines kept per message; more is a defect (hostile input: "header counts in the
/// thousands"). 256 is several times what real traffic carries (RFC 4475 longreq has ~40).
pub const MAX_HEADERS: usize = 256;

/// Headers the proxy looks at; everything else is `Other` and passes through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hdr {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Route,
    RecordRoute,
    ContentLength,
    ProxyRequire,
    Authorization,
    ProxyAuthorization,
    Other,
}

/// The one place header names (long and compact forms, any case) are canonicalised.
pub fn canonical(name: &[u8]) -> Hdr {
    if name.len() == 1 {
        return match name.first().map(u8::to_ascii_lowercase) {
            Some(b'v') => Hdr::Via,
            Some(b'f') => Hdr::From,
            Some(b't') => Hdr::To,
            Some(b'i') => Hdr::CallId,
            Some(b'l') => Hdr::ContentLength,
            _ => Hdr::Other,
        };
    }
    const LONG: [(&[u8], Hdr); 12] = [
        (b"via", Hdr::Via),
        (b"from", Hdr::From),
        (b"to", Hdr::To),
        (b"call-id", Hdr::CallId),
        (b"cseq", Hdr::CSeq),
        (b"max-forwards", Hdr::MaxForwards),
        (b"route", Hdr::Route),
        (b"record-route", Hdr::RecordRoute),
        (b"content-length", Hdr::ContentLength),
        (b"proxy-require", Hdr::ProxyRequire),
        (b"authorization", Hdr::Authorization),
        (b"proxy-authorization", Hdr::ProxyAuthorization),
    ];
    LONG.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map_or(Hdr::Other, |(_, h)| *h)
}

/// One header line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderLine {
    pub kind: Hdr,
    /// The name as written.
    pub name: Range<usize>,
    /// The value, trimmed of surrounding whitespace; may span folded continuation lines.
    pub value: Range<usize>,
    /// The whole line(s) including the final CRLF.
    pub line: Range<usize>,
}

/// The start line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    Request {
        method: Range<usize>,
        uri: Range<usize>,
    },
    Response {
        code: u16,
    },
}

/// A problem that leaves the message scannable but not forwardable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    BadRequestLine,
    BadVersion,
    BadHeaderLine,
    BareLineFeed,
    TooManyHeaders,
    BadContentLength,
    ConflictingContentLength,
    BodyShorterThanContentLength,
}

impl Defect {
    /// Reason phrase / log text.
    pub fn as_str(self) -> &'static str {
        match self {
            Defect::BadRequestLine => "Malformed Request-Line",
            Defect::BadVersion => "Version Not Supported",
            Defect::BadHeaderLine => "Malformed header line",
            Defect::BareLineFeed => "Bare LF in header section",
            Defect::TooManyHeaders => "Too many header lines",
            Defect::BadContentLength => "Malformed Content-Length",
            Defect::ConflictingContentLength => "Conflicting Content-Length values",
            Defect::BodyShorterThanContentLength => "Body shorter than Content-Length",
        }
    }
}

/// Why a datagram could not be scanned at all (dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanError {
    Empty,
    NoStartLine,
    BadStatusLine,
    NoEndOfHeaders,
}

impl ScanError {
    pub fn as_str(self) -> &'static str {
        match self {
            ScanError::Empty => "empty",
            ScanError::NoStartLine => "no_start_line",
            ScanError::BadStatusLine => "bad_status_line",
            ScanError::NoEndOfHeaders => "no_end_of_headers",
        }
    }
}

/// A scanned message borrowing its datagram.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub buf: &'a [u8],
    pub start: Start,
    /// The start line including its CRLF.
    pub start_line: Range<usize>,
    pub headers: SmallVec<[HeaderLine; 32]>,
    /// Offset of the empty line that ends the header section.
    pub head_end: usize,
    /// The body as framed by Content-Length (or the rest of the datagram without one).
    pub body: Range<usize>,
    pub defect: Option<Defect>,
}

/// Whether a datagram is only a keep-alive (CRLF, RFC 5626 section 4.4.1, or other whitespace).
pub fn is_keepalive(buf: &[u8]) -> bool {
    !buf.is_empty()
        && buf
            .iter()
            .all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0))
}

pub(crate) fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

/// Finds the end of the line starting at `from`: returns (content end, next line start, bare_lf).
fn line_end(buf: &[u8], from: usize) -> Option<(usize, usize, bool)> {
    let rest = buf.get(from..)?;
    let nl = memchr::memchr(b'\n', rest)? + from;
    if nl > from && buf.get(nl - 1) == Some(&b'\r') {
        Some((nl - 1, nl + 1, false))
    } else {
        Some((nl, nl + 1, true))
    }
}

/// Scans a datagram.
pub fn scan(buf: &[u8]) -> Result<Message<'_>, ScanError> {
    if buf.is_empty() {
        return Err(ScanError::Empty);
    }
    // RFC 3261 7.5: ignore CRLFs before the start line.
    let mut pos = 0;
    while buf.get(pos..pos + 2) == Some(b"\r\n") {
        pos += 2;
    }
    let (sl_end, mut next, sl_bare) = line_end(buf, pos).ok_or(ScanError::NoStartLine)?;
    let first = at(buf, pos..sl_end);
    let mut defect = None;
    let start = if first.starts_with(b"SIP/") {
        parse_status_line(first)?
    } else {
        match parse_request_line(first, pos) {
            Ok(s) => s,
            Err(d) => {
                defect = Some(d);
                // Keep what spans we can so a reply can still be built.
                let sp = memchr::memchr(b' ', first).unwrap_or(first.len());
                Start::Request {
                    method: pos..pos + sp,
                    uri: pos + sp..pos + sp,
                }
            }
        }
    };
    if sl_bare {
        defect.get_or_insert(Defect::BareLineFeed);
    }
    let start_line = pos..next;

    let mut headers: SmallVec<[HeaderLine; 32]> = SmallVec::new();
    let head_end;
    loop {
        let (end, after, bare) = line_end(buf, next).ok_or(ScanError::NoEndOfHeaders)?;
        if end == next {
            if bare {
                defect.get_or_insert(Defect::BareLineFeed);
            }
            head_end = next;
            next = after;
            break;
        }
        if bare {
            defect.get_or_insert(Defect::BareLineFeed);
        }
        let line_start = next;
        let mut line_stop = after;
        // Folded continuation lines (RFC 3261 7.3.1) belong to this header.
        let mut value_end = end;
        while matches!(buf.get(line_stop), Some(b' ' | b'\t')) {
            let (e, a, b2) = line_end(buf, line_stop).ok_or(ScanError::NoEndOfHeaders)?;
            if b2 {
                defect.get_or_insert(Defect::BareLineFeed);
            }
            value_end = e;
            line_stop = a;
        }
        if matches!(buf.get(line_start), Some(b' ' | b'\t')) {
            // A continuation with no header before it (first header line folded).
            defect.get_or_insert(Defect::BadHeaderLine);
            next = line_stop;
            continue;
        }
        let name_end = at(buf, line_start..end)
            .iter()
            .position(|b| !is_token_char(*b))
            .map_or(end, |p| line_start + p);
        let mut p = name_end;
        while p < end && matches!(buf.get(p), Some(b' ' | b'\t')) {
            p += 1;
        }
        if name_end == line_start || p >= end || buf.get(p) != Some(&b':') {
            defect.get_or_insert(Defect::BadHeaderLine);
            next = line_stop;
            continue;
        }
        let mut vs = p + 1;
        while vs < value_end && matches!(buf.get(vs), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            vs += 1;
        }
        let mut ve = value_end;
        while ve > vs && matches!(buf.get(ve - 1), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            ve -= 1;
        }
        if headers.len() >= MAX_HEADERS {
            defect = Some(Defect::TooManyHeaders);
        } else {
            headers.push(HeaderLine {
                kind: canonical(at(buf, line_start..name_end)),
                name: line_start..name_end,
                value: vs..ve,
                line: line_start..line_stop,
            });
        }
        next = line_stop;
    }

    // Framing by Content-Length (RFC 3261 18.3): over UDP a missing Content-Length means the
    // rest of the datagram; extra octets after the body are discarded; a short body is an error.
    let available = buf.len().saturating_sub(next);
    let mut cl: Option<usize> = None;
    for h in headers.iter().filter(|h| h.kind == Hdr::ContentLength) {
        match parse_u32_digits(at(buf, h.value.clone())) {
            Some(v) => match cl {
                Some(prev) if prev != v as usize => {
                    defect.get_or_insert(Defect::ConflictingContentLength);
                }
                _ => cl = Some(v as usize),
            },
            None => {
                defect.get_or_insert(Defect::BadContentLength);
            }
        }
    }
    let body = match cl {
        Some(n) if n > available => {
            defect.get_or_insert(Defect::BodyShorterThanContentLength);
            next..buf.len()
        }
        Some(n) => next..next + n,
        None => next..buf.len(),
    };
    Ok(Message {
        buf,
        start,
        start_line,
        headers,
        head_end,
        body,
        defect,
    })
}

/// `buf[r]`, or empty when `r` is not inside `buf`. Spans come from the scanner and always fit;
/// this keeps a bug from becoming a panic on hostile input (STYLE rule 10).
#[inline]
pub fn at(buf: &[u8], r: Range<usize>) -> &[u8] {
    buf.get(r).unwrap_or_default()
}

/// A decimal of 1 to 9 digits (no sign, no space): Content-Length, CSeq, Max-Forwards.
pub fn parse_u32_digits(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 10 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for b in s {
        v = v * 10 + u64::from(b - b'0');
    }
    u32::try_from(v).ok()
}

fn parse_status_line(line: &[u8]) -> Result<Start, ScanError> {
    // "SIP/2.0 200 OK" — the reason phrase may be empty but the SP before it is required.
    let rest = line
        .strip_prefix(b"SIP/2.0 ")
        .ok_or(ScanError::BadStatusLine)?;
    let (Some(&[a, b, c, b' ']), Some(reason)) = (rest.get(..4), rest.get(4..)) else {
        return Err(ScanError::BadStatusLine);
    };
    if ![a, b, c].iter().all(u8::is_ascii_digit) {
        return Err(ScanError::BadStatusLine);
    }
    let code = u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0');
    if !(100..=699).contains(&code) || reason.iter().any(|b| *b == b'\r' || *b == b'\n') {
        return Err(ScanError::BadStatusLine);
    }
    Ok(Start::Response { code })
}

/// `Method SP Request-URI SP SIP-Version`, exactly one SP between the parts, nothing after.
fn parse_request_line(line: &[u8], base: usize) -> Result<Start, Defect> {
    let sp1 = memchr::memchr(b' ', line).ok_or(Defect::BadRequestLine)?;
    let method = at(line, 0..sp1);
    if method.is_empty() || !method.iter().all(|b| is_token_char(*b)) {
        return Err(Defect::BadRequestLine);
    }
    let rest = line.get(sp1 + 1..).unwrap_or_default();
    let sp2 = memchr::memchr(b' ', rest).ok_or(Defect::BadRequestLine)?;
    let uri = at(rest, 0..sp2);
    if uri.is_empty() || uri.iter().any(|b| *b <= b' ' || *b == 0x7f) {
        return Err(Defect::BadRequestLine);
    }
    let version = rest.get(sp2 + 1..).unwrap_or_default();
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        // "SIP/" 1*DIGIT "." 1*DIGIT of another version: 505; anything else is malformed.
        let v = version
            .get(..4)
            .filter(|p| p.eq_ignore_ascii_case(b"SIP/"))
            .and_then(|_| version.get(4..));
        let well_formed = v.is_some_and(|v| {
            let mut parts = v.split(|b| *b == b'.');
            let a = parts.next().unwrap_or_default();
            let b = parts.next().unwrap_or_default();
            parts.next().is_none()
                && !a.is_empty()
                && !b.is_empty()
                && a.iter().all(u8::is_ascii_digit)
                && b.iter().all(u8::is_ascii_digit)
        });
        return Err(if well_formed {
            Defect::BadVersion
        } else {
            Defect::BadRequestLine
        });
    }
    let m0 = base;
    let u0 = base + sp1 + 1;
    Ok(Start::Request {
        method: m0..m0 + sp1,
        uri: u0..u0 + sp2,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_long_names() {
        for (n, want) in [
            (&b"v"[..], Hdr::Via),
            (b"V", Hdr::Via),
            (b"VIA", Hdr::Via),
            (b"f", Hdr::From),
            (b"t", Hdr::To),
            (b"i", Hdr::CallId),
            (b"l", Hdr::ContentLength),
            (b"call-ID", Hdr::CallId),
            (b"CSeq", Hdr::CSeq),
            (b"Max-Forwards", Hdr::MaxForwards),
            (b"m", Hdr::Other),
            (b"X-Via", Hdr::Other),
        ] {
            assert_eq!(canonical(n), want, "{:?}", String::from_utf8_lossy(n));
        }
    }

    #[test]
    fn folding_and_space_before_colon() {
        let m =
            b"INVITE sip:a@b SIP/2.0\r\nMax-Forwards : 69\r\nSubject: one\r\n two\r\nl: 0\r\n\r\n";
        let msg = scan(m).unwrap();
        assert_eq!(msg.defect, None);
        assert_eq!(msg.headers.len(), 3);
        assert_eq!(&m[msg.headers[0].value.clone()], b"69");
        assert_eq!(&m[msg.headers[1].value.clone()], b"one\r\n two");
        assert_eq!(msg.headers[2].kind, Hdr::ContentLength);
    }

    #[test]
    fn request_line_defects() {
        let cases: [(&[u8], Option<Defect>); 6] = [
            (b"INVITE sip:a@b SIP/2.0\r\n\r\n", None),
            (
                b"INVITE  sip:a@b SIP/2.0\r\n\r\n",
                Some(Defect::BadRequestLine),
            ),
            (
                b"INVITE sip:a@b SIP/2.0 \r\n\r\n",
                Some(Defect::BadRequestLine),
            ),
            (b"INVITE sip:a@b SIP/7.0\r\n\r\n", Some(Defect::BadVersion)),
            (b"INVITE sip:a@b\r\n\r\n", Some(Defect::BadRequestLine)),
            (
                b"INVITE sip:a@b; lr SIP/2.0\r\n\r\n",
                Some(Defect::BadRequestLine),
            ),
        ];
        for (m, want) in cases {
            assert_eq!(
                scan(m).unwrap().defect,
                want,
                "{}",
                String::from_utf8_lossy(m)
            );
        }
    }

    #[test]
    fn content_length_framing() {
        let m = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 3\r\n\r\nabcXYZ";
        let msg = scan(m).unwrap();
        assert_eq!(&m[msg.body.clone()], b"abc");
        let m = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 9\r\n\r\nabc";
        assert_eq!(
            scan(m).unwrap().defect,
            Some(Defect::BodyShorterThanContentLength)
        );
        let m = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 3\r\nl: 4\r\n\r\nabcd";
        assert_eq!(
            scan(m).unwrap().defect,
            Some(Defect::ConflictingContentLength)
        );
        let m = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: -3\r\n\r\nabcd";
        assert_eq!(scan(m).unwrap().defect, Some(Defect::BadContentLength));
        let m = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\nabcd";
        assert_eq!(scan(m).unwrap().defect, Some(Defect::BadContentLength));
        let m = b"MESSAGE sip:a@b SIP/2.0\r\nX: y\r\n\r\nrest of it";
        assert_eq!(&m[scan(m).unwrap().body.clone()], b"rest of it");
    }

    #[test]
    fn fatal_and_status() {
        assert_eq!(scan(b"").unwrap_err(), ScanError::Empty);
        assert_eq!(
            scan(b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n").unwrap_err(),
            ScanError::NoEndOfHeaders
        );
        assert_eq!(
            scan(b"SIP/2.0 4294967301 Huge\r\n\r\n").unwrap_err(),
            ScanError::BadStatusLine
        );
        assert!(matches!(
            scan(b"SIP/2.0 100 \r\n\r\n").unwrap().start,
            Start::Response { code: 100 }
        ));
        assert!(is_keepalive(b"\r\n\r\n"));
        assert!(!is_keepalive(b"\r\nX"));
    }

    #[test]
    fn too_many_headers_is_a_defect() {
        let mut m = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for i in 0..3000 {
            m.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        m.extend_from_slice(b"\r\n");
        let msg = scan(&m).unwrap();
        assert_eq!(msg.defect, Some(Defect::TooManyHeaders));
        assert_eq!(msg.headers.len(), MAX_HEADERS);
    }
}
