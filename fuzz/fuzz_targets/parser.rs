//! Fuzz target `parser`: the structural scanner and every grammar function on the header values
//! they apply to. Checks: no panic, and every span returned lies inside the buffer and is
//! ordered (the splicer relies on it).
#![no_main]

use std::ops::Range;

use creditgate::core::grammar::{
    first_via, for_each_name_addr, for_each_via, parse_cseq, parse_max_forwards, parse_uri,
    single_name_addr,
};
use creditgate::core::scan::{canonical, is_keepalive, parse_u32_digits, scan, Hdr, Start};
use libfuzzer_sys::fuzz_target;

fn inside(r: &Range<usize>, outer: &Range<usize>, what: &str) {
    assert!(
        r.start <= r.end && r.start >= outer.start && r.end <= outer.end,
        "{what} span {r:?} outside {outer:?}"
    );
}

fn uri(buf: &[u8], r: Range<usize>) {
    if let Ok(u) = parse_uri(buf, r.clone()) {
        if let Some(user) = &u.user {
            inside(user, &r, "uri user");
        }
        inside(&u.host_span, &r, "uri host");
        inside(&u.params, &r, "uri params");
        let _ = u.param(buf, b"lr");
        let _ = u.param(buf, b"maddr");
    }
}

fuzz_target!(|buf: &[u8]| {
    let _ = is_keepalive(buf);
    let Ok(m) = scan(buf) else { return };
    let all = 0..buf.len();
    inside(&m.start_line, &all, "start line");
    inside(&m.body, &all, "body");
    assert!(m.head_end <= m.body.start, "head_end after body");
    if let Start::Request { method, uri: u } = &m.start {
        inside(method, &all, "method");
        inside(u, &all, "request-uri");
        uri(buf, u.clone());
    }
    for h in &m.headers {
        inside(&h.line, &all, "header line");
        inside(&h.name, &h.line, "header name");
        inside(&h.value, &h.line, "header value");
        assert_eq!(canonical(&buf[h.name.clone()]), h.kind);
        let v = h.value.clone();
        match h.kind {
            Hdr::Via => {
                let _ = for_each_via(buf, v.clone(), |via| {
                    inside(&via.span, &v, "via");
                    inside(&via.sent_by(), &via.span, "sent-by");
                    if let Some(b) = &via.branch {
                        inside(b, &via.span, "branch");
                    }
                    if let Some((p, val)) = &via.received {
                        inside(p, &via.span, "received");
                        inside(val, p, "received value");
                    }
                    if let Some((p, val)) = &via.rport {
                        inside(p, &via.span, "rport");
                        if let Some(val) = val {
                            inside(val, p, "rport value");
                        }
                    }
                    true
                });
                let _ = first_via(buf, v);
            }
            Hdr::From | Hdr::To => {
                if let Ok(na) = single_name_addr(buf, v.clone()) {
                    inside(&na.span, &v, "name-addr");
                    inside(&na.uri, &na.span, "name-addr uri");
                    uri(buf, na.uri);
                }
            }
            Hdr::Route | Hdr::RecordRoute => {
                let _ = for_each_name_addr(buf, v.clone(), |na| {
                    inside(&na.span, &v, "route");
                    uri(buf, na.uri.clone());
                    true
                });
            }
            Hdr::CSeq => {
                if let Ok((_, method)) = parse_cseq(buf, v.clone()) {
                    inside(&method, &v, "cseq method");
                }
            }
            Hdr::MaxForwards => {
                let _ = parse_max_forwards(&buf[v]);
            }
            Hdr::ContentLength => {
                let _ = parse_u32_digits(&buf[v]);
            }
            _ => {}
        }
    }
});
