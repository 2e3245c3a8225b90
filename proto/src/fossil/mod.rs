//! Fossil deltas: the codec behind the `"delta":"fossil"` subscribe option (issue 18).
//!
//! With that option an update may carry `delta` instead of `data`: a delta in the format of the
//! Fossil SCM (<https://fossil-scm.org/home/doc/tip/www/delta_format.wiki>, the format Centrifugo
//! and the npm `fossil-delta` package use) that turns the previous publication's `data` bytes
//! into this one's. The server computes it once per publication with [`create_str`] (or
//! [`create_into`], to reuse a buffer), shared by every subscriber; the Rust client and the CLI
//! rebuild the data with [`apply`]; `fossilApply` in `web/tickwire.js` is the browser's copy of
//! [`apply`].
//! This module owns both directions so that they agree on every byte.
//!
//! # Format
//!
//! Numbers are unsigned 32-bit, written in base 64 with the digits
//! `0-9 A-Z _ a-z ~` (in that order, most significant first). A delta is a header `LEN\n` (the
//! target's length), then commands: `CNT@OFS,` copies `CNT` bytes of the source from offset
//! `OFS`, `CNT:BYTES` inserts the next `CNT` bytes of the delta; it ends with `SUM;`, the sum of
//! the target read as big-endian 32-bit words (the last one padded with zeros), wrapping.
//!
//! # UTF-8, and deltas as JSON strings
//!
//! The delta travels as a JSON string, so it must be valid UTF-8, and every count in it is a
//! count of UTF-8 bytes. The reference encoder works on bytes: when one character changes into
//! another with the same leading byte (`é` `C3 A9` into `è` `C3 A8`) it copies the `C3` and
//! inserts a lone `A8`. Centrifugo puts its delta into the JSON string as-is, where the
//! escaper turns such a byte into U+FFFD and the client then fails to apply the delta
//! (centrifugal/centrifuge#630 fixes this by moving the edges of the inserts after the fact).
//! Here the encoder never creates the split: when the target is valid UTF-8, every copy it
//! emits starts and ends on a character boundary of the target, so every insert holds whole
//! characters and the delta (ASCII around the inserts) is valid UTF-8: [`create_str`] returns
//! a `String`. The copied bytes need no such care, as they are equal to the target's.
//!
//! # Compatibility and strictness
//!
//! [`create`] is the reference algorithm (16-byte blocks of the source indexed by a rolling
//! hash, a 16-byte window slid over the target, each hit extended both ways, at most 250
//! candidates per hash) with its own hash table and the boundary rule above, so its deltas are
//! not byte-equal to the reference's, but any conforming decoder applies them. [`apply`] takes
//! what the reference encoders produce and is stricter than the reference decoders, because
//! its input comes off the network: every number must have a digit and fit 32 bits, a copy
//! must end with `,` and stay inside the source, the output must reach exactly the declared
//! length, the checksum is always checked (the C decoder only checks it when built to), and
//! nothing may follow the `;`. The format page says a copy of length 0 copies the rest of the
//! source, but no implementation does that and no encoder emits one: here, as in the
//! reference decoders, it copies nothing.

use thiserror::Error;

/// The reference's block and window size. Any size gives deltas every decoder accepts; 16 is the
/// size/speed balance the reference settled on, and keeps our deltas comparable to its own.
const BLOCK: usize = 16;

/// How many candidate blocks one window position may examine: the reference's bound, which
/// keeps a repetitive source (every block hashing alike) from making the search quadratic.
const CHAIN_LIMIT: usize = 250;

const DIGITS: &[u8; 64] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";

/// No digit.
const NOT_DIGIT: u8 = 0xff;

const DIGIT_VALUE: [u8; 256] = {
    let mut table = [NOT_DIGIT; 256];
    let mut i = 0;
    while i < DIGITS.len() {
        table[DIGITS[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why [`apply`] (or [`target_len`]) rejected a delta. Positions are byte offsets in the delta.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DeltaError {
    /// A base-64 number was expected and there is none.
    #[error("fossil delta: no number at byte {at}")]
    MissingNumber {
        /// Where the number should start.
        at: usize,
    },
    /// A number that does not fit 32 bits.
    #[error("fossil delta: number at byte {at} exceeds 32 bits")]
    NumberTooLarge {
        /// Where the number starts.
        at: usize,
    },
    /// The length in the header is not followed by a newline.
    #[error("fossil delta: the header's length is not followed by a newline")]
    BadHeader,
    /// The header declares a target longer than the caller's cap.
    #[error("fossil delta: declares {declared} bytes, over the cap of {max_len}")]
    TooLarge {
        /// The length the header declares.
        declared: usize,
        /// The caller's cap.
        max_len: usize,
    },
    /// A byte after a count that is none of `@`, `:` and `;`.
    #[error("fossil delta: unknown operator {op:#04x} at byte {at}")]
    UnknownOperator {
        /// The byte.
        op: u8,
        /// Its position.
        at: usize,
    },
    /// A copy's offset is not followed by `,`.
    #[error("fossil delta: copy not terminated by ',' at byte {at}")]
    UnterminatedCopy {
        /// Where the `,` should be.
        at: usize,
    },
    /// A copy reaching past the end of the source.
    #[error("fossil delta: copy of {len} bytes from offset {offset} passes the source's {source_len} bytes")]
    CopyOutOfRange {
        /// The copy's source offset.
        offset: usize,
        /// The copy's length.
        len: usize,
        /// The source's length.
        source_len: usize,
    },
    /// An insert longer than what is left of the delta.
    #[error("fossil delta: insert of {len} bytes at byte {at} passes the end of the delta")]
    InsertPastEnd {
        /// Where the inserted bytes start.
        at: usize,
        /// The insert's length.
        len: usize,
    },
    /// The commands produce more than the header declared.
    #[error("fossil delta: output passes the declared {declared} bytes")]
    OutputTooLong {
        /// The length the header declares.
        declared: usize,
    },
    /// The commands produce less than the header declared.
    #[error("fossil delta: output has {produced} bytes, the header declares {declared}")]
    LengthMismatch {
        /// The length the header declares.
        declared: usize,
        /// What the commands produced.
        produced: usize,
    },
    /// The output does not have the checksum the delta carries: a wrong source, or a damaged delta.
    #[error("fossil delta: checksum {actual:#x} of the output, the delta says {expected:#x}")]
    BadChecksum {
        /// The delta's checksum.
        expected: u32,
        /// The output's.
        actual: u32,
    },
    /// Bytes after the final `;`.
    #[error("fossil delta: {extra} bytes after the checksum")]
    TrailingData {
        /// How many.
        extra: usize,
    },
    /// The delta ends before its checksum.
    #[error("fossil delta: ends before its checksum")]
    Unterminated,
}

/// The delta that turns `source` into `target`.
///
/// When `target` is valid UTF-8 the delta is too (see the module header).
///
/// # Panics
///
/// If `source` or `target` is 4 GiB or longer: the format's numbers have 32 bits.
pub fn create(source: &[u8], target: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    create_into(source, target, &mut out);
    out
}

/// [`create`] for text: the delta as a `String`, ready to be put in a JSON string.
///
/// # Panics
///
/// As [`create`].
pub fn create_str(source: &str, target: &str) -> String {
    // Cannot fail: with a valid UTF-8 target the inserts hold whole characters (module header),
    // and the tests hold the encoder to it.
    String::from_utf8(create(source.as_bytes(), target.as_bytes()))
        .expect("fossil::create keeps a UTF-8 target's characters whole")
}

/// [`create`] into `out`, which is cleared first: the server reuses one buffer for every
/// publication.
///
/// # Panics
///
/// As [`create`].
pub fn create_into(source: &[u8], target: &[u8], out: &mut Vec<u8>) {
    encode(source, target, std::str::from_utf8(target).is_ok(), out);
}

/// The target length a delta declares, from its header alone: what a client may check against
/// its own limits before applying it.
pub fn target_len(delta: &[u8]) -> Result<usize, DeltaError> {
    Reader { delta, pos: 0 }.header()
}

/// Applies `delta` to `source`, returning the target.
///
/// Every part of the delta is checked (module header); any fault is an `Err`, never a panic.
/// A delta declaring more than `max_len` bytes is refused before anything is allocated, and
/// the output never grows past the declared length, so a hostile delta cannot make the caller
/// allocate more than `max_len` (the client passes its message size limit).
pub fn apply(source: &[u8], delta: &[u8], max_len: usize) -> Result<Vec<u8>, DeltaError> {
    let mut reader = Reader { delta, pos: 0 };
    let declared = reader.header()?;
    if declared > max_len {
        return Err(DeltaError::TooLarge { declared, max_len });
    }
    // What a delta can legitimately produce is not bounded by its own size (one copy can
    // repeat much of the source), but a short delta declaring a huge length should not get
    // that memory up front: start from what its parts could plausibly hold and let it grow.
    let mut out = Vec::with_capacity(declared.min(source.len().saturating_add(delta.len())));
    loop {
        if reader.pos == delta.len() {
            return Err(DeltaError::Unterminated);
        }
        let count = reader.number()?;
        let op_at = reader.pos;
        let len = count as usize;
        match reader.byte() {
            Some(b'@') => {
                let offset = reader.number()? as usize;
                let comma_at = reader.pos;
                if reader.byte() != Some(b',') {
                    return Err(DeltaError::UnterminatedCopy { at: comma_at });
                }
                if len > declared - out.len() {
                    return Err(DeltaError::OutputTooLong { declared });
                }
                let bytes = offset
                    .checked_add(len)
                    .and_then(|end| source.get(offset..end))
                    .ok_or(DeltaError::CopyOutOfRange {
                        offset,
                        len,
                        source_len: source.len(),
                    })?;
                out.extend_from_slice(bytes);
            }
            Some(b':') => {
                if len > declared - out.len() {
                    return Err(DeltaError::OutputTooLong { declared });
                }
                let at = reader.pos;
                let bytes = reader.take(len).ok_or(DeltaError::InsertPastEnd { at, len })?;
                out.extend_from_slice(bytes);
            }
            Some(b';') => {
                if out.len() != declared {
                    return Err(DeltaError::LengthMismatch {
                        declared,
                        produced: out.len(),
                    });
                }
                let actual = checksum(&out);
                if actual != count {
                    return Err(DeltaError::BadChecksum {
                        expected: count,
                        actual,
                    });
                }
                if reader.pos != delta.len() {
                    return Err(DeltaError::TrailingData {
                        extra: delta.len() - reader.pos,
                    });
                }
                return Ok(out);
            }
            Some(op) => return Err(DeltaError::UnknownOperator { op, at: op_at }),
            None => return Err(DeltaError::Unterminated),
        }
    }
}

struct Reader<'a> {
    delta: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn header(&mut self) -> Result<usize, DeltaError> {
        let len = self.number()?;
        if self.byte() != Some(b'\n') {
            return Err(DeltaError::BadHeader);
        }
        Ok(len as usize)
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.delta.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        let bytes = self.delta.get(self.pos..self.pos.checked_add(len)?)?;
        self.pos += len;
        Some(bytes)
    }

    fn number(&mut self) -> Result<u32, DeltaError> {
        let at = self.pos;
        let mut value: u32 = 0;
        while let Some(&b) = self.delta.get(self.pos) {
            let digit = DIGIT_VALUE[usize::from(b)];
            if digit == NOT_DIGIT {
                break;
            }
            value = value
                .checked_mul(64)
                .and_then(|v| v.checked_add(u32::from(digit)))
                .ok_or(DeltaError::NumberTooLarge { at })?;
            self.pos += 1;
        }
        if self.pos == at {
            return Err(DeltaError::MissingNumber { at });
        }
        Ok(value)
    }
}

fn put_number(out: &mut Vec<u8>, value: usize) {
    let mut v = u32::try_from(value).expect("fossil delta numbers have 32 bits");
    let mut buf = [0u8; 6];
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = DIGITS[(v & 63) as usize];
        v >>= 6;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[start..]);
}

fn number_width(value: usize) -> usize {
    let mut width = 1;
    let mut v = value >> 6;
    while v > 0 {
        width += 1;
        v >>= 6;
    }
    width
}

fn checksum(data: &[u8]) -> u32 {
    let mut words = data.chunks_exact(4);
    let mut sum = 0u32;
    for w in &mut words {
        sum = sum.wrapping_add(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    if !rest.is_empty() {
        let mut last = [0u8; 4];
        last[..rest.len()].copy_from_slice(rest);
        sum = sum.wrapping_add(u32::from_be_bytes(last));
    }
    sum
}

/// The rolling hash of the reference: a plain sum and a position-weighted sum of the window's
/// bytes, both mod 2^16, so the window slides by one byte in constant time.
struct Rolling {
    sum: u16,
    weighted: u16,
}

impl Rolling {
    fn new(window: &[u8]) -> Rolling {
        let (mut sum, mut weighted) = (0u16, 0u16);
        for (i, &b) in window.iter().enumerate() {
            sum = sum.wrapping_add(u16::from(b));
            weighted = weighted.wrapping_add(((BLOCK - i) as u16).wrapping_mul(u16::from(b)));
        }
        Rolling { sum, weighted }
    }

    fn slide(&mut self, out: u8, inc: u8) {
        self.sum = self.sum.wrapping_sub(u16::from(out)).wrapping_add(u16::from(inc));
        self.weighted = self
            .weighted
            .wrapping_sub((BLOCK as u16).wrapping_mul(u16::from(out)))
            .wrapping_add(self.sum);
    }

    fn value(&self) -> u32 {
        u32::from(self.sum) | (u32::from(self.weighted) << 16)
    }
}

const NO_BLOCK: u32 = u32::MAX;

/// The source's 16-byte blocks (at multiples of 16) by hash: chains through `next`, newest
/// first, as in the reference. The table has a power of two of slots, at least twice the
/// blocks: on input without matches (most of a new document) nearly every window position then
/// finds an empty slot instead of a block to rule out, which made `create` a quarter faster
/// there. A slot is the top bits of a multiplicative mix of the hash, because the hash's low
/// half (a plain byte sum) spreads poorly on its own.
struct Index {
    heads: Vec<u32>,
    next: Vec<u32>,
    shift: u32,
}

impl Index {
    fn new(source: &[u8]) -> Index {
        let blocks = source.len() / BLOCK;
        let bits = blocks.next_power_of_two().trailing_zeros() + 1;
        let mut index = Index {
            heads: vec![NO_BLOCK; 1 << bits],
            next: vec![NO_BLOCK; blocks],
            shift: 32 - bits,
        };
        for (i, block) in source.chunks_exact(BLOCK).enumerate() {
            let slot = index.slot(Rolling::new(block).value());
            index.next[i] = index.heads[slot];
            index.heads[slot] = i as u32;
        }
        index
    }

    fn slot(&self, hash: u32) -> usize {
        (hash.wrapping_mul(0x9E37_79B1) >> self.shift) as usize
    }
}

/// A copy command: `target[start..start + len]` equals `source[offset..offset + len]`.
struct Copy {
    start: usize,
    len: usize,
    offset: usize,
}

fn encode(source: &[u8], target: &[u8], whole_chars: bool, out: &mut Vec<u8>) {
    assert!(
        u32::try_from(source.len()).is_ok() && u32::try_from(target.len()).is_ok(),
        "fossil deltas cover inputs under 4 GiB"
    );
    out.clear();
    put_number(out, target.len());
    out.push(b'\n');
    let mut base = 0;
    // A source of one block or less could only yield copies too short to pay for themselves.
    if source.len() > BLOCK {
        let index = Index::new(source);
        while base + BLOCK < target.len() {
            let Some(copy) = find_copy(&index, source, target, base, whole_chars) else {
                break;
            };
            put_insert(out, &target[base..copy.start]);
            put_number(out, copy.len);
            out.push(b'@');
            put_number(out, copy.offset);
            out.push(b',');
            base = copy.start + copy.len;
        }
    }
    put_insert(out, &target[base..]);
    put_number(out, checksum(target) as usize);
    out.push(b';');
}

fn put_insert(out: &mut Vec<u8>, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_number(out, bytes.len());
        out.push(b':');
        out.extend_from_slice(bytes);
    }
}

/// The first copy worth emitting at or after `base`: slides the window from `base` until some
/// position has a candidate that, extended both ways (never before `base`), is at least as
/// long as the commands it takes, and returns that position's longest. `None` when the window
/// reaches the end of the target without one.
fn find_copy(index: &Index, source: &[u8], target: &[u8], base: usize, whole_chars: bool) -> Option<Copy> {
    let mut hash = Rolling::new(&target[base..base + BLOCK]);
    let mut anchor = base;
    loop {
        let mut best: Option<Copy> = None;
        let mut block = index.heads[index.slot(hash.value())];
        let mut budget = CHAIN_LIMIT;
        while block != NO_BLOCK && budget > 0 {
            budget -= 1;
            let at = block as usize * BLOCK;
            block = index.next[block as usize];
            let ahead = common_prefix(&source[at..], &target[anchor..]);
            let behind = common_suffix(&source[..at], &target[base..anchor]);
            let (mut start, mut end) = (anchor - behind, anchor + ahead);
            if whole_chars {
                while start < end && !is_char_boundary(target, start) {
                    start += 1;
                }
                while end > start && !is_char_boundary(target, end) {
                    end -= 1;
                }
            }
            let len = end - start;
            let offset = at + start - anchor;
            let cost = number_width(start - base) + number_width(len) + number_width(offset) + 3;
            if len >= cost && best.as_ref().is_none_or(|b| len > b.len) {
                best = Some(Copy { start, len, offset });
                // Nothing can beat copying all that is left: spare the rest of the chain.
                if start == base && end == target.len() {
                    break;
                }
            }
        }
        if best.is_some() {
            return best;
        }
        if anchor + BLOCK >= target.len() {
            return None;
        }
        hash.slide(target[anchor], target[anchor + BLOCK]);
        anchor += 1;
    }
}

fn is_char_boundary(text: &[u8], at: usize) -> bool {
    // Every byte but a continuation byte (0b10xx_xxxx, -64..=-1 as an i8) starts a character.
    text.get(at).is_none_or(|&b| (b as i8) >= -0x40)
}

/// How many leading bytes `a` and `b` share, eight at a time: on a long match (a republished
/// document is mostly one) this loop is where `create` spends its time.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut same = 0;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let diff = u64::from_le_bytes(word(x)) ^ u64::from_le_bytes(word(y));
        if diff != 0 {
            return same + (diff.trailing_zeros() / 8) as usize;
        }
        same += 8;
    }
    same + a[same..]
        .iter()
        .zip(&b[same..])
        .take_while(|(x, y)| x == y)
        .count()
}

fn word(bytes: &[u8]) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    w
}

fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

#[cfg(test)]
mod tests;
