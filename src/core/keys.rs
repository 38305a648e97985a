//! Keyed identifiers: creditgate's Via branch, the To-tag of its own refusals, and the
//! Record-Route token. All are truncated HMAC-SHA256 values under one secret, so responses,
//! ACKs and in-dialog requests can be recognised statelessly and cannot be forged by a customer.
//!
//! * branch = `z9hG4bK` `cg` hex(HMAC("b", transaction id)[..8]) hex(HMAC("l", loop fields)[..4]).
//!   The transaction id ends with the address creditgate wrote into the sender's Via
//!   (`received`/`rport`), so the response target is covered too (SPEC 6 "Responses").
//!   The first part is verified on responses (recomputed from the Via below ours), the second is
//!   the RFC 3261 16.6 step 8 loop-detection hash (its fields are chosen in `proxy.rs`).
//! * refusal To-tag = `cg` hex(HMAC("t", Call-ID, From-tag, CSeq number, top branch)[..8]).
//! * Route token = `MINUTES-` hex(HMAC("r", Call-ID, tag of the dialog's initiator, MINUTES as a
//!   u64 big-endian, node)[..10]), where MINUTES is the issue time in unix minutes (so the token
//!   expires, SPEC 6) and node is the trusted switch node the dialog belongs to (its IP octets and
//!   port, big-endian; empty for none), written in the Route URI as `cgn=` hex (issue 9 item 3).
//!
//! Inputs are length-prefixed so that field boundaries cannot be shifted to collide.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Length of the branch after the magic cookie: "cg" + 16 + 8 hex digits.
pub const BRANCH_LEN: usize = 7 + 2 + 16 + 8;
/// Length of a refusal To-tag.
pub const TAG_LEN: usize = 2 + 16;
/// Length of a Route token's MAC part.
pub const TOKEN_LEN: usize = 20;

/// The secret key.
#[derive(Clone)]
pub struct Keys {
    mac: HmacSha256,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub(crate) fn hex_into(out: &mut [u8], bytes: &[u8]) {
    // A nibble is < 16, so the `b'0'` fallbacks never apply.
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        if let [hi, lo] = pair {
            *hi = HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
            *lo = HEX.get(usize::from(b & 15)).copied().unwrap_or(b'0');
        }
    }
}

impl Keys {
    /// Keys from secret bytes (any length; HMAC hashes long keys).
    pub fn new(secret: &[u8]) -> Self {
        // HMAC accepts keys of every length, so this cannot fail; fall back to an empty-key MAC
        // rather than panic should the crate ever change that.
        let mac = <HmacSha256 as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| <HmacSha256 as Mac>::new(&Default::default()));
        Keys { mac }
    }

    fn digest(&self, domain: u8, parts: &[&[u8]]) -> [u8; 32] {
        self.digest_iter(domain, parts.iter().copied())
    }

    fn digest_iter<'p>(&self, domain: u8, parts: impl IntoIterator<Item = &'p [u8]>) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(&[domain]);
        for p in parts {
            let len = u32::try_from(p.len()).unwrap_or(u32::MAX);
            m.update(&len.to_be_bytes());
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// The transaction part of the branch (16 hex digits).
    pub fn branch_txn(&self, txn: &[&[u8]]) -> [u8; 16] {
        let d = self.digest(b'b', txn);
        let mut out = [0u8; 16];
        hex_into(&mut out, &d[..8]);
        out
    }

    /// The loop-detection part of the branch (8 hex digits), over any number of fields.
    pub fn branch_loop<'p>(&self, fields: impl IntoIterator<Item = &'p [u8]>) -> [u8; 8] {
        let d = self.digest_iter(b'l', fields);
        let mut out = [0u8; 8];
        hex_into(&mut out, &d[..4]);
        out
    }

    /// A whole branch value, from the transaction fields and a [`Keys::branch_loop`] value.
    pub fn branch(&self, txn: &[&[u8]], loop_hash: &[u8; 8]) -> [u8; BRANCH_LEN] {
        let mut out = [0u8; BRANCH_LEN];
        out[..9].copy_from_slice(b"z9hG4bKcg");
        out[9..25].copy_from_slice(&self.branch_txn(txn));
        out[25..].copy_from_slice(loop_hash);
        out
    }

    /// The To-tag of a stateless refusal.
    pub fn refusal_tag(
        &self,
        call_id: &[u8],
        from_tag: &[u8],
        cseq: u32,
        branch: &[u8],
    ) -> [u8; TAG_LEN] {
        let d = self.digest(b't', &[call_id, from_tag, &cseq.to_be_bytes(), branch]);
        let mut out = [0u8; TAG_LEN];
        out[..2].copy_from_slice(b"cg");
        hex_into(&mut out[2..], &d[..8]);
        out
    }

    /// The MAC part of the Record-Route token of a dialog issued at `issued_min` (unix
    /// minutes) for the switch node `node` (encoded address bytes, empty for none).
    pub fn route_token(
        &self,
        call_id: &[u8],
        initiator_tag: &[u8],
        issued_min: u64,
        node: &[u8],
    ) -> [u8; TOKEN_LEN] {
        let d = self.digest(
            b'r',
            &[call_id, initiator_tag, &issued_min.to_be_bytes(), node],
        );
        let mut out = [0u8; TOKEN_LEN];
        hex_into(&mut out, &d[..10]);
        out
    }
}

/// Constant-time comparison for tokens and tags.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_keyed() {
        let k1 = Keys::new(b"0123456789abcdef0123456789abcdef");
        let k2 = Keys::new(b"another secret of enough length!");
        let l1 = k1.branch_loop([&b"b"[..]]);
        assert_eq!(k1.branch(&[b"a"], &l1), k1.branch(&[b"a"], &l1));
        assert_ne!(
            k1.branch(&[b"a"], &l1),
            k2.branch(&[b"a"], &k2.branch_loop([&b"b"[..]]))
        );
        // The loop hash is length-prefixed per field like the rest.
        assert_ne!(
            k1.branch_loop([&b"ab"[..], b"c"]),
            k1.branch_loop([&b"a"[..], b"bc"])
        );
        assert_ne!(
            k1.branch_loop([&b"a"[..]]),
            k1.branch_loop([&b"a"[..], b""])
        );
        // Length prefixes: moving a byte between fields changes the value.
        assert_ne!(
            k1.route_token(b"ab", b"c", 1, b""),
            k1.route_token(b"a", b"bc", 1, b"")
        );
        assert_ne!(
            k1.route_token(b"a", b"b", 1, b""),
            k1.route_token(b"a", b"b", 2, b"")
        );
        assert_ne!(
            k1.route_token(b"a", b"b", 1, b""),
            k1.route_token(b"a", b"b", 1, b"\x7f\0\0\x01\x13\xc4")
        );
        let t = k1.refusal_tag(b"cid", b"ft", 1, b"z9hG4bK1");
        assert!(t.starts_with(b"cg") && t[2..].iter().all(u8::is_ascii_hexdigit));
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }
}
