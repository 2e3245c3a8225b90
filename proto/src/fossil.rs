//! Fossil deltas: the codec behind the `"delta":"fossil"` subscribe option (issue 18).
//!
//! With that option an update may carry `delta` instead of `data`: a delta in the format of the
//! Fossil SCM (<https://fossil-scm.org/home/doc/tip/www/delta_format.wiki>, the format Centrifugo
//! and the npm `fossil-delta` package use) that turns the previous publication's `data` bytes
//! into this one's. The server computes it once per publication with [`create_str`] (or
//! [`create_into`], to reuse a buffer), shared by every subscriber; the Rust client and the CLI
//! rebuild the data with [`apply`]; `web/fossil-apply.js` is the browser's copy of [`apply`].
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
mod tests {
    use super::*;

    /// splitmix64: deterministic, so a failure names its case and reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }

        /// Bytes from a small alphabet when `narrow` (repetitive, so copies happen), any otherwise.
        fn bytes(&mut self, len: usize, narrow: bool) -> Vec<u8> {
            (0..len)
                .map(|_| {
                    if narrow {
                        *self.pick(b"abcd{}\":, ")
                    } else {
                        self.next() as u8
                    }
                })
                .collect()
        }
    }

    fn number(v: usize) -> String {
        let mut out = Vec::new();
        put_number(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    /// Creates, checks the delta applies back to `target` (and is UTF-8 when `target` is),
    /// returns it.
    fn round_trip(source: &[u8], target: &[u8]) -> Vec<u8> {
        let delta = create(source, target);
        assert_eq!(
            apply(source, &delta, target.len()).as_deref(),
            Ok(target),
            "delta {:?}",
            String::from_utf8_lossy(&delta)
        );
        if std::str::from_utf8(target).is_ok() {
            assert!(
                std::str::from_utf8(&delta).is_ok(),
                "delta not UTF-8: {:?}",
                String::from_utf8_lossy(&delta)
            );
        }
        delta
    }

    /// A few random edits: replace, delete, insert, duplicate or move a span.
    fn edit(rng: &mut Rng, bytes: &[u8], narrow: bool) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for _ in 0..1 + rng.below(5) {
            let at = rng.below(out.len() + 1);
            let span = rng.below(40).min(out.len() - at);
            match rng.below(5) {
                0 => {
                    let len = 1 + rng.below(20);
                    let new = rng.bytes(len, narrow);
                    out.splice(at..at + span, new);
                }
                1 => {
                    out.drain(at..at + span);
                }
                2 => {
                    let len = 1 + rng.below(20);
                    let new = rng.bytes(len, narrow);
                    out.splice(at..at, new);
                }
                3 => {
                    let copy = out[at..at + span].to_vec();
                    let to = rng.below(out.len() + 1);
                    out.splice(to..to, copy);
                }
                _ => {
                    let moved: Vec<u8> = out.drain(at..at + span).collect();
                    let to = rng.below(out.len() + 1);
                    out.splice(to..to, moved);
                }
            }
        }
        out
    }

    const WORDS: &[&str] = &[
        "price",
        "bid",
        "ask",
        "é",
        "è",
        "ü",
        "naïve",
        "привет",
        "мир",
        "中文",
        "字",
        "🟢",
        "🔴",
        "👍🏽",
        "\"quoted\"",
        "back\\slash",
        "line\nbreak",
        "tab\there",
        "\u{1}ctl",
        "</script>",
        "x",
    ];

    fn random_text(rng: &mut Rng) -> String {
        (0..1 + rng.below(12))
            .map(|_| *rng.pick(WORDS))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn random_value(rng: &mut Rng, depth: usize) -> serde_json::Value {
        use serde_json::Value;
        match rng.below(if depth > 2 { 4 } else { 6 }) {
            0 => Value::from(rng.next() % 100_000),
            1 => Value::from((rng.next() % 1_000_000) as f64 / 100.0),
            2 | 3 => Value::from(random_text(rng)),
            4 => Value::Array((0..rng.below(6)).map(|_| random_value(rng, depth + 1)).collect()),
            _ => {
                let fields = 1 + rng.below(6);
                random_object(rng, depth + 1, fields)
            }
        }
    }

    fn random_object(rng: &mut Rng, depth: usize, fields: usize) -> serde_json::Value {
        let map = (0..fields)
            .map(|i| (format!("{}{i}", rng.pick(WORDS)), random_value(rng, depth)))
            .collect();
        serde_json::Value::Object(map)
    }

    /// Changes a document the way publications of one topic differ: a field's value, a letter
    /// inside a string (often into one with the same UTF-8 lead byte), a field added or removed.
    fn edit_json(rng: &mut Rng, doc: &mut serde_json::Value) {
        let serde_json::Value::Object(map) = doc else {
            unreachable!()
        };
        let keys: Vec<String> = map.keys().cloned().collect();
        let key = rng.pick(&keys).clone();
        match rng.below(4) {
            0 => map[&key] = random_value(rng, 1),
            1 => {
                let swaps = [
                    ("é", "è"),
                    ("è", "ü"),
                    ("п", "р"),
                    ("中", "字"),
                    ("🟢", "🔴"),
                    ("a", "b"),
                    ("\"", "\\"),
                ];
                let text = random_text(rng) + "é п 中 🟢 a \"";
                let (from, to) = *rng.pick(&swaps);
                let value = map[&key].as_str().map_or(text, str::to_string);
                map[&key] = serde_json::Value::from(value.replacen(from, to, 1));
            }
            2 => {
                map.insert(format!("new{}", rng.below(1000)), random_value(rng, 1));
            }
            _ => {
                if map.len() > 1 {
                    map.remove(&key);
                }
            }
        }
    }

    #[test]
    fn numbers_are_the_formats_base_64() {
        // The examples of the format page.
        assert_eq!(number(0), "0");
        assert_eq!(number(6246), "1Xb");
        assert_eq!(number(3_193_528_526), "2zMM3E");
        assert_eq!(number(u32::MAX as usize), "3~~~~~");
        for v in [0, 1, 63, 64, 4095, 4096, 6246, u32::MAX as usize] {
            let text = format!("{}\n", number(v));
            assert_eq!(target_len(text.as_bytes()), Ok(v));
            assert_eq!(number_width(v), number(v).len());
        }
    }

    #[test]
    fn checksum_sums_big_endian_words_padded_with_zeros() {
        assert_eq!(checksum(b""), 0);
        assert_eq!(checksum(b"\x01\x02\x03\x04"), 0x0102_0304);
        assert_eq!(checksum(b"\x01\x02\x03\x04\x05"), 0x0102_0304 + 0x0500_0000);
        assert_eq!(checksum(&[0xff; 8]), 0xffff_fffe);
    }

    #[test]
    fn random_bytes_round_trip() {
        let mut rng = Rng(1);
        for case in 0..3000 {
            let narrow = case % 2 == 0;
            let len = if case % 10 == 0 {
                rng.below(8000)
            } else {
                rng.below(300)
            };
            let source = rng.bytes(len, narrow);
            let target = match case % 5 {
                0 => {
                    let len = rng.below(300);
                    rng.bytes(len, narrow)
                }
                _ => edit(&mut rng, &source, narrow),
            };
            round_trip(&source, &target);
        }
    }

    #[test]
    fn random_json_documents_round_trip_as_json_strings() {
        let mut rng = Rng(2);
        let mut small = 0;
        for case in 0..2000 {
            let fields = 1 + rng.below(if case % 10 == 0 { 60 } else { 12 });
            let mut doc = random_object(&mut rng, 0, fields);
            let source = doc.to_string();
            for _ in 0..1 + rng.below(3) {
                edit_json(&mut rng, &mut doc);
            }
            let target = doc.to_string();
            let delta = create_str(&source, &target);
            // The wire: the delta inside a JSON string, out of it, applied.
            let wire = serde_json::to_string(&delta).unwrap();
            let received: String = serde_json::from_str(&wire).unwrap();
            assert_eq!(received, delta);
            let rebuilt = apply(source.as_bytes(), received.as_bytes(), 1 << 20).unwrap();
            assert_eq!(rebuilt, target.as_bytes(), "case {case}");
            small += usize::from(delta.len() < target.len() / 2);
        }
        // Most edits touch a small part of the document: the deltas show it.
        assert!(small > 1000, "{small} of 2000 deltas under half the target");
    }

    #[test]
    fn a_changed_character_is_never_split() {
        let body = "lorem ipsum dolor sit amet, ".repeat(4);
        for (from, to) in [
            ("é", "è"),
            ("🟢", "🔴"),
            ("мир", "мор"),
            ("中文", "中斌"),
            ("ü", "é"),
        ] {
            for (a, b) in [(from, to), (to, from)] {
                let source = format!(r#"{{"text":"{body}{a}{body}","n":1}}"#);
                let target = format!(r#"{{"text":"{body}{b}{body}","n":1}}"#);
                let delta = round_trip(source.as_bytes(), target.as_bytes());
                assert!(delta.len() < 40, "{}", String::from_utf8_lossy(&delta));
                // Bytes-only matching splits these characters, which is why the encoder doesn't.
                let mut split = Vec::new();
                encode(source.as_bytes(), target.as_bytes(), false, &mut split);
                assert!(std::str::from_utf8(&split).is_err(), "{a} -> {b}");
                assert_eq!(
                    apply(source.as_bytes(), &split, target.len()).unwrap(),
                    target.as_bytes()
                );
            }
        }
    }

    #[test]
    fn identical_input_is_one_copy() {
        let text = "{\"symbol\":\"BTC-USD\",\"price\":64123.5}".repeat(20);
        let delta = round_trip(text.as_bytes(), text.as_bytes());
        let len = number(text.len());
        assert_eq!(
            String::from_utf8(delta).unwrap(),
            format!("{len}\n{len}@0,{};", number(checksum(text.as_bytes()) as usize))
        );
    }

    #[test]
    fn empty_and_short_inputs() {
        assert_eq!(round_trip(b"", b""), b"0\n0;");
        assert_eq!(round_trip(b"a longer source than one block", b""), b"0\n0;");
        let sum = number(checksum(b"hello") as usize);
        assert_eq!(round_trip(b"", b"hello"), format!("5\n5:hello{sum};").as_bytes());
        // A source of one block: no copy could pay for itself.
        assert_eq!(
            round_trip(b"hello world 0123", b"hello"),
            format!("5\n5:hello{sum};").as_bytes()
        );
        round_trip(b"hello world 01234", b"hello world 01234");
        round_trip(b"hello world 01234", b"x");
    }

    fn big_doc() -> String {
        let mut rng = Rng(3);
        let mut fields = Vec::new();
        for i in 0..58 {
            fields.push(format!(
                r#""field{i}":{{"name":"{}","value":{},"ok":true}}"#,
                random_text(&mut rng),
                rng.next() % 100_000
            ));
        }
        format!("{{{}}}", fields.join(","))
    }

    #[test]
    fn one_field_changed_in_a_5k_document_is_a_small_delta() {
        let source = big_doc();
        assert!((4500..8000).contains(&source.len()), "{}", source.len());
        let target = source.replacen(r#""field33":{"name":"#, r#""field33":{"title":"#, 1);
        let delta = round_trip(source.as_bytes(), target.as_bytes());
        assert!(
            delta.len() * 10 < target.len(),
            "{} bytes of delta for {}",
            delta.len(),
            target.len()
        );
        let at = source.find(r#""value":"#).unwrap() + 8;
        let target = format!("{}987654321{}", &source[..at], &source[at..]);
        let delta = round_trip(source.as_bytes(), target.as_bytes());
        assert!(
            delta.len() * 10 < target.len(),
            "{} bytes of delta for {}",
            delta.len(),
            target.len()
        );
    }

    #[test]
    fn repetitive_input_stays_cheap() {
        // Every source block hashes alike: the candidate walk is capped, so this is quick even
        // in a debug build.
        let source = vec![b'a'; 64 * 1024];
        let mut target = source.clone();
        for i in (0..target.len()).step_by(1000) {
            target[i] = b'b';
        }
        let delta = round_trip(&source, &target);
        assert!(delta.len() < 1000, "{}", delta.len());
        let source = b"ab".repeat(32 * 1024);
        round_trip(&source, &b"ba".repeat(32 * 1024));
    }

    fn sample() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let source = big_doc().into_bytes();
        let mut target = source.clone();
        target.splice(2000..2010, b"new \xc3\xa9 text".iter().copied());
        target.extend_from_slice(b" tail");
        let delta = round_trip(&source, &target);
        (source, target, delta)
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (source, _, delta) = sample();
        for len in 0..delta.len() {
            assert!(
                apply(&source, &delta[..len], usize::MAX).is_err(),
                "truncated to {len}"
            );
        }
    }

    #[test]
    fn flipped_bytes_are_errors() {
        let (source, target, delta) = sample();
        let mut errors = 0;
        let mut cases = 0;
        for at in 0..delta.len() {
            for mask in [0x01, 0x02, 0x20, 0x40, 0x80, 0xff] {
                let mut bad = delta.clone();
                bad[at] ^= mask;
                cases += 1;
                match apply(&source, &bad, usize::MAX) {
                    Err(_) => errors += 1,
                    // A flip may be harmless, e.g. a copy offset moved onto identical bytes.
                    Ok(out) => assert_eq!(out, target, "flip {mask:#x} at {at}"),
                }
            }
        }
        assert!(errors * 100 >= cases * 99, "{errors} errors of {cases}");
    }

    #[test]
    fn crafted_faults_are_named() {
        use DeltaError::*;
        let source = b"0123456789";
        let sum = |s: &[u8]| number(checksum(s) as usize);
        let ok = format!("4\n3@2,1:x{};", sum(b"234x"));
        assert_eq!(apply(source, ok.as_bytes(), 4).unwrap(), b"234x");
        let cases: Vec<(String, DeltaError)> = vec![
            (String::new(), MissingNumber { at: 0 }),
            ("\n0;".into(), MissingNumber { at: 0 }),
            ("4".into(), BadHeader),
            ("4 \n".into(), BadHeader),
            ("4\n".into(), Unterminated),
            ("4\n3@2,".into(), Unterminated),
            ("4\n3".into(), Unterminated),
            ("4\n@2,".into(), MissingNumber { at: 2 }),
            ("4\n3@,".into(), MissingNumber { at: 4 }),
            ("4\n3@2;".into(), UnterminatedCopy { at: 5 }),
            ("4\n3#2,".into(), UnknownOperator { op: b'#', at: 3 }),
            (
                "4\n3@8,".into(),
                CopyOutOfRange {
                    offset: 8,
                    len: 3,
                    source_len: 10,
                },
            ),
            (
                "4\n1@Z,".into(),
                CopyOutOfRange {
                    offset: 35,
                    len: 1,
                    source_len: 10,
                },
            ),
            ("4\n5@0,".into(), OutputTooLong { declared: 4 }),
            ("4\n5:01234".into(), OutputTooLong { declared: 4 }),
            ("4\n4:012".into(), InsertPastEnd { at: 4, len: 4 }),
            (
                format!("4\n3@2,{};", sum(b"234")),
                LengthMismatch {
                    declared: 4,
                    produced: 3,
                },
            ),
            (
                format!("4\n3@2,1:y{};", sum(b"234x")),
                BadChecksum {
                    expected: checksum(b"234x"),
                    actual: checksum(b"234y"),
                },
            ),
            (format!("{ok}x"), TrailingData { extra: 1 }),
            (format!("{ok}0;"), TrailingData { extra: 2 }),
            ("4000000\n".into(), NumberTooLarge { at: 0 }),
            ("4\n1@~~~~~~~,".into(), NumberTooLarge { at: 4 }),
            (
                "3~~~~~\n1:x0;".into(),
                TooLarge {
                    declared: u32::MAX as usize,
                    max_len: 1 << 20,
                },
            ),
        ];
        for (delta, want) in cases {
            assert_eq!(apply(source, delta.as_bytes(), 1 << 20), Err(want), "{delta:?}");
        }
        // Without a cap, a tiny delta declaring 4 GiB is refused for what it holds, without
        // reserving what it declares.
        let huge = format!("3~~~~~\n~~~~~@0,{};", sum(b""));
        assert!(matches!(
            apply(source, huge.as_bytes(), usize::MAX),
            Err(OutputTooLong { .. } | CopyOutOfRange { .. })
        ));
        assert_eq!(
            apply(source, b"3~~~~~\n1:x0;", usize::MAX),
            Err(LengthMismatch {
                declared: u32::MAX as usize,
                produced: 1
            })
        );
        // One byte over the cap is refused.
        assert_eq!(
            apply(source, ok.as_bytes(), 3),
            Err(TooLarge {
                declared: 4,
                max_len: 3
            })
        );
    }

    #[test]
    fn random_garbage_never_panics() {
        let mut rng = Rng(4);
        let source = big_doc().into_bytes();
        let (_, _, delta) = sample();
        for _ in 0..20_000 {
            let garbage: Vec<u8> = match rng.below(3) {
                0 => (0..rng.below(40))
                    .map(|_| *rng.pick(b"0129AZaz_~@,:;\n\xc3"))
                    .collect(),
                1 => {
                    let len = rng.below(60);
                    rng.bytes(len, false)
                }
                _ => {
                    let mut bad = delta.clone();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(bad.len());
                        bad[at] = *rng.pick(b"0129AZaz_~@,:;\n\xff");
                    }
                    bad
                }
            };
            let _ = apply(&source, &garbage, 1 << 16);
        }
    }

    /// A 3 KB order book (80 levels a side) at `seq`; a level's size depends on `version(level)`.
    fn order_book(seq: u64, version: impl Fn(u64) -> u64) -> String {
        let side = |best: f64, step: f64, first: u64| {
            (0..80)
                .map(|i| {
                    let size = ((first + i) * 7919 + version(first + i) * 104_729) % 100_000;
                    format!(r#"[{:.2},{:.4}]"#, best + step * i as f64, size as f64 / 10_000.0)
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        format!(
            r#"{{"symbol":"BTC-USD","seq":{seq},"ts":{},"bids":[{}],"asks":[{}]}}"#,
            1_718_000_000_000 + seq * 37,
            side(64000.0, -0.5, 0),
            side(64000.5, 0.5, 80),
        )
    }

    /// `cargo test -p tickwire-proto --release fossil::tests::create_timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing report, not a test"]
    fn create_timing() {
        use std::hint::black_box;
        let book_a = order_book(41, |_| 0);
        let book_b = order_book(42, |level| u64::from(matches!(level, 3 | 85 | 86)));
        let book_c = order_book(42, |_| 1);
        let doc_a = big_doc();
        let doc_b = doc_a.replacen(r#""field33":{"name":"#, r#""field33":{"title":"#, 1);
        let mut rng = Rng(5);
        let noise_a = rng.bytes(64 * 1024, false);
        let noise_b = rng.bytes(64 * 1024, false);
        let same_a = vec![b'a'; 64 * 1024];
        let mut same_b = same_a.clone();
        same_b[30_000] = b'b';
        let cases: [(&str, &[u8], &[u8]); 6] = [
            (
                "order book, 3 levels changed",
                book_a.as_bytes(),
                book_b.as_bytes(),
            ),
            (
                "order book, every level changed",
                book_a.as_bytes(),
                book_c.as_bytes(),
            ),
            ("5 KB doc, one field renamed", doc_a.as_bytes(), doc_b.as_bytes()),
            ("64 KiB unrelated random", &noise_a, &noise_b),
            ("64 KiB of one byte, one changed", &same_a, &same_b),
            ("64 KiB random, identical", &noise_a, &noise_a),
        ];
        // The best of seven batches: the machine is shared, and the noise only ever adds.
        let best = |f: &mut dyn FnMut(), rounds: u32| {
            (0..7)
                .map(|_| {
                    let start = std::time::Instant::now();
                    for _ in 0..rounds {
                        f();
                    }
                    start.elapsed() / rounds
                })
                .min()
                .unwrap()
        };
        let mut out = Vec::new();
        for (name, a, b) in cases {
            let rounds = (1_000_000 / b.len().max(1)).clamp(20, 5_000) as u32;
            create_into(a, b, &mut out);
            let create = best(&mut || create_into(black_box(a), black_box(b), &mut out), rounds);
            let apply = best(&mut || drop(black_box(apply(a, &out, b.len()).unwrap())), rounds);
            let (from, to, delta) = (a.len(), b.len(), out.len());
            println!("{name}: {from} -> {to} bytes, delta {delta} bytes, create {create:?}, apply {apply:?}");
        }
    }
}
