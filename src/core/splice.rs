//! Builds an outgoing datagram from the arrival buffer plus a short list of edits (insert,
//! replace, delete at byte spans). Untouched bytes are copied as they came, so header case,
//! compact forms, folding, unknown headers and binary bodies pass byte for byte.

// Hostile input never panics (STYLE rule 10): no indexing outside tests (denied for the whole
// core in `mod.rs`).

use std::ops::Range;

use smallvec::SmallVec;

/// The bytes an edit puts in place of its span.
#[derive(Debug, Clone)]
pub enum Ins {
    Static(&'static [u8]),
    Bytes(SmallVec<[u8; 96]>),
}

impl Ins {
    fn as_slice(&self) -> &[u8] {
        match self {
            Ins::Static(s) => s,
            Ins::Bytes(b) => b,
        }
    }
}

/// A list of non-overlapping edits over one buffer.
#[derive(Debug, Default)]
pub struct Edits {
    list: SmallVec<[(Range<usize>, u32, Ins); 8]>,
    seq: u32,
}

impl Edits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts `bytes` at `pos`; several inserts at one position keep their call order.
    pub fn insert(&mut self, pos: usize, bytes: Ins) {
        self.replace(pos..pos, bytes);
    }

    /// Replaces `span` by `bytes`.
    pub fn replace(&mut self, span: Range<usize>, bytes: Ins) {
        self.seq += 1;
        self.list.push((span, self.seq, bytes));
    }

    /// Deletes `span`.
    pub fn delete(&mut self, span: Range<usize>) {
        self.replace(span, Ins::Static(b""));
    }

    /// Applies the edits that fall inside `range` to `buf[range]`, appending to `out`.
    pub fn apply_range_into(mut self, buf: &[u8], range: Range<usize>, out: &mut Vec<u8>) {
        self.list.sort_by_key(|a| (a.0.start, a.1));
        let end = range.end.min(buf.len());
        let mut at = range.start.min(end);
        for (span, _, ins) in &self.list {
            if span.start < at || span.end > end || span.start > span.end {
                continue;
            }
            out.extend_from_slice(buf.get(at..span.start).unwrap_or_default());
            out.extend_from_slice(ins.as_slice());
            at = span.end;
        }
        out.extend_from_slice(buf.get(at..end).unwrap_or_default());
    }

    /// Applies the edits to `buf[..end]`. Overlapping edits (a bug) are skipped rather than
    /// producing garbage: an edit starting inside an earlier one is ignored.
    pub fn apply(self, buf: &[u8], end: usize) -> Vec<u8> {
        let extra: usize = self.list.iter().map(|e| e.2.as_slice().len()).sum();
        let mut out = Vec::with_capacity(end.min(buf.len()) + extra);
        self.apply_range_into(buf, 0..end, &mut out);
        out
    }
}

/// Small formatting helper: a byte buffer for an inserted line.
pub fn bytes(parts: &[&[u8]]) -> Ins {
    let mut v = SmallVec::new();
    for p in parts {
        v.extend_from_slice(p);
    }
    Ins::Bytes(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_orders_and_truncates() {
        let buf = b"0123456789";
        let mut e = Edits::new();
        e.insert(2, Ins::Static(b"a"));
        e.insert(2, Ins::Static(b"b"));
        e.replace(4..6, Ins::Static(b"XY"));
        e.delete(7..8);
        assert_eq!(e.apply(buf, 9), b"01ab23XY68".to_vec());
    }
}
