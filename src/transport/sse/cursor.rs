//! The `id:` of an SSE event: where the stream stands in every exact topic it has carried
//! (epoch + seq), as an opaque token that the client hands back when it reconnects
//! (`Last-Event-ID`, or `?last_event_id=`), and that becomes the `since` of its new
//! subscription. No server keeps anything per client between the two connections, so any node
//! can resume the stream: no sticky sessions.
//!
//! # The token
//!
//! base64url (no padding) of:
//!
//! ```text
//! version (1 byte, 1)
//! epochs:  count (varint), then each: length (1 byte) + bytes     topics started together share one
//! topics:  count (varint), then each:
//!            ref: 0 (varint) + name length (varint) + name        a topic matched by a pattern
//!              or 1 (varint) + FNV-1a 32 of the name (4 bytes)    a topic the URL names exactly
//!            epoch index (varint), seq (varint)
//! check:   FNV-1a 32 of everything before it (4 bytes)
//! ```
//!
//! A topic that the URL names exactly is carried as a hash of its name, not as an index into
//! the URL's list: a client that reopens the stream with a changed list (tickwire.js does when
//! its subscriptions change) keeps the positions of the topics both lists name. The name is
//! matched back among the new request's exact topics; a hash that two of them share is
//! dropped (those topics restart from a snapshot).
//!
//! # Epochs
//!
//! Update frames carry no epoch. A topic's epoch comes from the `subscribed` reply's positions,
//! from a reset snapshot (which names it), or, for a topic first seen in an update (a topic a
//! pattern matched after the subscription started), from the hub when that update is written.
//! That lookup is exact with the memory broker, where a subscribed topic's epoch never changes;
//! in a cluster, a reset between the update and the lookup would give the update the new epoch,
//! and the reset's snapshot, which follows it, puts the token right again.
//!
//! # Caps
//!
//! A token carries at most [`MAX_TOPICS`] topics and [`MAX_TOKEN_BYTES`] bytes before base64
//! (so an `id:` line stays under 700 characters, whatever the topic names): a topic first seen
//! when either is reached is not carried, and after a reconnect it starts again from a snapshot
//! (`recovered: false`), never with an error. A `Last-Event-ID` longer than [`MAX_ID_CHARS`], or
//! one that does not decode (corrupted, from another server or another program), is ignored:
//! the stream starts as new, and `subscribed` says `recovered: false` for each topic the URL
//! names exactly.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;

use crate::protocol::Position;
use crate::topic::{Pattern, Topic};

/// Most topics one token carries.
pub const MAX_TOPICS: usize = 32;
/// Most bytes of one token before base64 (683 characters after).
pub const MAX_TOKEN_BYTES: usize = 512;
/// Longest `Last-Event-ID` read: longer ones were not issued by this server.
pub const MAX_ID_CHARS: usize = 1024;
/// Most epochs kept for topics of the `subscribed` reply not carried yet: a pattern may match
/// thousands; those past it take the hub's epoch when their first event is written.
const MAX_PENDING: usize = 1024;
/// Longest epoch a token carries (as in a subscribe request's `since`).
const MAX_EPOCH_BYTES: usize = 64;
/// The format's version, its first byte.
const VERSION: u8 = 1;
/// Reference kinds.
const BY_NAME: u64 = 0;
const BY_HASH: u64 = 1;
/// An epoch no topic ever has (epochs are alphanumeric): a `since` with it never recovers, so
/// the topics of a stream whose id did not decode are answered `recovered: false`.
const NO_EPOCH: &str = "-";

/// A topic the stream has carried.
struct Entry {
    name: Box<str>,
    /// The name's hash, when the request names the topic exactly (and no other of its exact
    /// topics has the same hash).
    hash: Option<u32>,
    epoch: Arc<str>,
    seq: u64,
}

/// Where one stream stands, topic by topic, and its `id:` token.
pub struct Cursor {
    /// Hashes of the request's exact topics, by name; a hash two of them share is left out.
    exact: HashMap<Box<str>, u32>,
    entries: Vec<Entry>,
    /// The token's size: as last written, plus what was carried since.
    bytes: usize,
    /// The byte cap was reached: no topic is added any more (so none comes and goes).
    full: bool,
    /// Epochs the `subscribed` reply gave for topics not carried yet (their snapshot or first
    /// update follows); emptied once no topic can be added any more.
    pending: HashMap<Box<str>, Arc<str>>,
    /// What the subscription recovered from: the start of a recovered topic's stream here.
    since: HashMap<Topic, Position>,
    raw: Vec<u8>,
}

/// What the `subscribed` reply says, as far as the cursor needs it.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    positions: HashMap<Box<str>, Position>,
    #[serde(default)]
    recovered: HashMap<Box<str>, bool>,
}

impl Cursor {
    /// The cursor of a stream subscribed to `topics`, recovering from `since`.
    pub fn new(topics: &[Pattern], since: HashMap<Topic, Position>) -> Cursor {
        Cursor {
            exact: exact_hashes(topics),
            entries: Vec::new(),
            bytes: 1 + 1 + 1 + 4,
            full: false,
            pending: HashMap::new(),
            since,
            raw: Vec::new(),
        }
    }

    /// Takes in the `subscribed` reply (its JSON): the recovered topics are carried from their
    /// `since` (their missed publications follow), a topic never published from seq 0, and the
    /// others' epochs are kept for their snapshot or first update.
    pub fn subscribed(&mut self, reply: &[u8]) {
        let Ok(reply) = serde_json::from_slice::<Reply>(reply) else {
            return;
        };
        let mut positions: Vec<(Box<str>, Position)> = reply.positions.into_iter().collect();
        // Deterministic: which topics fit under the caps does not depend on a hash order.
        positions.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, position) in positions {
            let epoch: Arc<str> = position.epoch.clone();
            let from = match reply.recovered.get(&name) {
                Some(true) => Topic::parse(&name)
                    .ok()
                    .and_then(|t| self.since.get(&t))
                    .map(|p| p.seq),
                _ if position.seq == 0 => Some(0),
                _ => None,
            };
            match from {
                Some(seq) => self.carry(&name, epoch, seq),
                None if self.entries.len() < MAX_TOPICS && self.pending.len() < MAX_PENDING => {
                    self.pending.insert(name, epoch);
                }
                None => {}
            }
        }
        self.since = HashMap::new();
    }

    /// Records that an update or snapshot of `topic` at `seq` was written; `epoch` is the one
    /// the frame names (a reset), else the one known for the topic, else `lookup`'s (a topic a
    /// pattern matched after the subscription started: the hub's current epoch for it).
    pub fn advance(
        &mut self,
        topic: &str,
        seq: u64,
        epoch: Option<&str>,
        lookup: impl FnOnce(&Topic) -> Option<Position>,
    ) {
        // Linear: at most MAX_TOPICS entries, each compared by length first.
        if let Some(e) = self.entries.iter_mut().find(|e| &*e.name == topic) {
            e.seq = seq;
            match epoch {
                Some(epoch) if *e.epoch != *epoch => e.epoch = epoch.into(),
                // A cluster's topic never published had no epoch yet; it has one now.
                None if e.epoch.is_empty() => {
                    if let Some(p) = Topic::parse(topic).ok().and_then(|t| lookup(&t)) {
                        e.epoch = p.epoch;
                    }
                }
                _ => {}
            }
            return;
        }
        if self.entries.len() >= MAX_TOPICS {
            return;
        }
        let epoch: Option<Arc<str>> = match epoch {
            Some(epoch) => Some(epoch.into()),
            None => match self.pending.remove(topic) {
                Some(epoch) if !epoch.is_empty() => Some(epoch),
                _ => Topic::parse(topic).ok().and_then(|t| lookup(&t)).map(|p| p.epoch),
            },
        };
        if let Some(epoch) = epoch {
            self.carry(topic, epoch, seq);
        }
    }

    /// Starts carrying `name`, if the caps leave room.
    fn carry(&mut self, name: &str, epoch: Arc<str>, seq: u64) {
        if self.full || self.entries.len() >= MAX_TOPICS || epoch.len() > MAX_EPOCH_BYTES {
            return;
        }
        let hash = self.exact.get(name).copied();
        let reference = match hash {
            Some(_) => 1 + 4,
            None => 1 + varint_len(name.len() as u64) + name.len(),
        };
        let shared = self.entries.iter().any(|e| e.epoch == epoch);
        let size = reference + 1 + varint_len(seq) + if shared { 0 } else { 1 + epoch.len() };
        if self.bytes + size > MAX_TOKEN_BYTES {
            self.full = true;
            self.pending = HashMap::new();
            return;
        }
        self.bytes += size;
        self.entries.push(Entry {
            name: name.into(),
            hash,
            epoch,
            seq,
        });
        if self.entries.len() == MAX_TOPICS {
            self.pending = HashMap::new();
        }
    }

    /// The current token, appended to `out` in base64url.
    pub fn write_id(&mut self, out: &mut Vec<u8>) {
        self.encode();
        // Seqs grow and resets bring new epochs: past the cap, the topic carried last goes.
        while self.raw.len() > MAX_TOKEN_BYTES && self.entries.pop().is_some() {
            self.full = true;
            self.encode();
        }
        self.bytes = self.raw.len();
        let raw = &self.raw;
        let start = out.len();
        out.resize(start + base64::encoded_len(raw.len(), false).expect("small"), 0);
        let written = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut out[start..])
            .expect("sized above");
        out.truncate(start + written);
    }

    /// The token's bytes, into `raw`.
    fn encode(&mut self) {
        let raw = &mut self.raw;
        raw.clear();
        raw.push(VERSION);
        // The epochs, each once: topics started together share one.
        let mut epochs: Vec<&str> = Vec::new();
        let index: Vec<usize> = (self.entries.iter())
            .map(|e| match epochs.iter().position(|x| *x == &*e.epoch) {
                Some(i) => i,
                None => {
                    epochs.push(&e.epoch);
                    epochs.len() - 1
                }
            })
            .collect();
        varint(raw, epochs.len() as u64);
        for epoch in &epochs {
            raw.push(epoch.len() as u8);
            raw.extend_from_slice(epoch.as_bytes());
        }
        varint(raw, self.entries.len() as u64);
        for (e, epoch) in self.entries.iter().zip(index) {
            match e.hash {
                Some(hash) => {
                    varint(raw, BY_HASH);
                    raw.extend_from_slice(&hash.to_be_bytes());
                }
                None => {
                    varint(raw, BY_NAME);
                    varint(raw, e.name.len() as u64);
                    raw.extend_from_slice(e.name.as_bytes());
                }
            }
            varint(raw, epoch as u64);
            varint(raw, e.seq);
        }
        let check = fnv1a(FNV_OFFSET, raw);
        raw.extend_from_slice(&check.to_be_bytes());
    }
}

/// The `since` positions a `Last-Event-ID` gives a stream subscribing to `topics`. `None` when
/// there is no id; otherwise every exact topic of `topics` that the id does not carry (or all
/// of them, when the id does not decode) gets a position that cannot recover, so that the
/// `subscribed` reply says `recovered: false` for it and its snapshot follows.
pub fn since(topics: &[Pattern], id: Option<&str>) -> Option<HashMap<Topic, Position>> {
    let id = id?;
    let mut since = decode(topics, id).unwrap_or_default();
    for topic in topics.iter().filter_map(Pattern::as_exact) {
        since.entry(topic).or_insert_with(|| Position {
            seq: 0,
            epoch: NO_EPOCH.into(),
        });
    }
    Some(since)
}

/// The positions in the token `id`, with hashed names matched among `topics`' exact topics.
fn decode(topics: &[Pattern], id: &str) -> Option<HashMap<Topic, Position>> {
    if id.len() > MAX_ID_CHARS {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(id).ok()?;
    let (body, check) = raw.split_at_checked(raw.len().checked_sub(4)?)?;
    if fnv1a(FNV_OFFSET, body).to_be_bytes() != check {
        return None;
    }
    let mut r = Reader(body);
    if r.byte()? != VERSION {
        return None;
    }
    let epochs = r.count()?;
    let epochs: Vec<&str> = (0..epochs)
        .map(|_| {
            let len = r.byte()? as usize;
            let epoch = std::str::from_utf8(r.take(len)?).ok()?;
            (len <= MAX_EPOCH_BYTES).then_some(epoch)
        })
        .collect::<Option<_>>()?;
    let exact = exact_hashes(topics);
    let by_hash: HashMap<u32, &str> = exact.iter().map(|(name, &hash)| (hash, &**name)).collect();
    let count = r.count()?;
    let mut since = HashMap::with_capacity(count);
    for _ in 0..count {
        let name: Option<&str> = match r.varint()? {
            BY_NAME => {
                let len = usize::try_from(r.varint()?).ok()?;
                Some(std::str::from_utf8(r.take(len)?).ok()?)
            }
            BY_HASH => {
                let hash = u32::from_be_bytes(r.take(4)?.try_into().ok()?);
                // A topic the new request does not name exactly: nothing to recover.
                by_hash.get(&hash).copied()
            }
            _ => return None,
        };
        let epoch = *epochs.get(usize::try_from(r.varint()?).ok()?)?;
        let seq = r.varint()?;
        if let Some(name) = name {
            let topic = Topic::parse(name).ok()?;
            let epoch = epoch.into();
            since.insert(topic, Position { seq, epoch });
        }
    }
    r.0.is_empty().then_some(since)
}

/// The FNV-1a hashes of `topics`' exact topics, by name, less those whose hash another
/// exact topic shares.
fn exact_hashes(topics: &[Pattern]) -> HashMap<Box<str>, u32> {
    let mut by_hash: HashMap<u32, Option<&str>> = HashMap::new();
    for topic in topics.iter().filter(|t| t.as_exact().is_some()) {
        let name = topic.as_str();
        let hash = fnv1a(FNV_OFFSET, name.as_bytes());
        by_hash
            .entry(hash)
            .and_modify(|seen| {
                if *seen != Some(name) {
                    *seen = None;
                }
            })
            .or_insert(Some(name));
    }
    (by_hash.into_iter())
        .filter_map(|(hash, name)| Some((name?.into(), hash)))
        .collect()
}

const FNV_OFFSET: u32 = 0x811c_9dc5;

/// 32-bit FNV-1a: stable across builds and versions (unlike std's hasher), so a token stays
/// valid across a rolling restart; a check against corruption, not against forgery (a forged
/// token can only claim positions, which the ACL and the topics' own epochs bound).
fn fnv1a(mut hash: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// LEB128.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The bytes `varint` writes for `n`.
fn varint_len(n: u64) -> usize {
    (64 - n.leading_zeros() as usize).div_ceil(7).max(1)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    /// A count of topics or epochs: at most what a token carries.
    fn count(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok().filter(|&n| n <= MAX_TOPICS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(names: &[&str]) -> Vec<Pattern> {
        names.iter().map(|n| Pattern::parse(n).unwrap()).collect()
    }

    fn pos(seq: u64, epoch: &str) -> Position {
        Position {
            seq,
            epoch: epoch.into(),
        }
    }

    fn id(cursor: &mut Cursor) -> String {
        let mut out = Vec::new();
        cursor.write_id(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn none(_: &Topic) -> Option<Position> {
        None
    }

    #[test]
    fn a_token_gives_back_every_position_it_carries() {
        let topics = patterns(&["prices.BTC-USD", "chat.*"]);
        let mut c = Cursor::new(&topics, HashMap::new());
        c.subscribed(br#"{"type":"subscribed","topics":["prices.BTC-USD","chat.*"],"positions":{"prices.BTC-USD":{"seq":7,"epoch":"abc123"},"chat.a":{"seq":0,"epoch":"abc123"}}}"#);
        // Nothing written yet for the topic with a value: only the one never published is carried.
        let since = decode(&topics, &id(&mut c)).unwrap();
        assert_eq!(
            since,
            HashMap::from([(Topic::parse("chat.a").unwrap(), pos(0, "abc123"))])
        );
        c.advance("prices.BTC-USD", 7, None, none);
        c.advance("chat.a", 1, None, none);
        // A topic matched later: its epoch comes from the hub.
        c.advance("chat.b", 4, None, |t| {
            assert_eq!(t.as_str(), "chat.b");
            Some(pos(4, "zzz999"))
        });
        c.advance("prices.BTC-USD", 9, None, none);
        let token = id(&mut c);
        assert!(token.len() < 80, "{token}");
        let since = decode(&topics, &token).unwrap();
        assert_eq!(since.len(), 3);
        assert_eq!(since[&Topic::parse("prices.BTC-USD").unwrap()], pos(9, "abc123"));
        assert_eq!(since[&Topic::parse("chat.a").unwrap()], pos(1, "abc123"));
        assert_eq!(since[&Topic::parse("chat.b").unwrap()], pos(4, "zzz999"));
        // A reset names its epoch.
        c.advance("chat.b", 1, Some("new000"), none);
        let since = decode(&topics, &id(&mut c)).unwrap();
        assert_eq!(since[&Topic::parse("chat.b").unwrap()], pos(1, "new000"));
        // Another list: exact topics it no longer names are dropped, the others kept.
        let other = patterns(&["chat.*", "orders.1"]);
        let since = decode(&other, &id(&mut c)).unwrap();
        assert!(!since.contains_key(&Topic::parse("prices.BTC-USD").unwrap()));
        assert_eq!(since.len(), 2);
    }

    #[test]
    fn a_recovered_topic_is_carried_from_where_it_recovered() {
        let topics = patterns(&["a.b"]);
        let since = HashMap::from([(Topic::parse("a.b").unwrap(), pos(40, "k3j2Zq"))]);
        let mut c = Cursor::new(&topics, since);
        c.subscribed(br#"{"type":"subscribed","topics":["a.b"],"positions":{"a.b":{"seq":43,"epoch":"k3j2Zq"}},"recovered":{"a.b":true}}"#);
        let got = decode(&topics, &id(&mut c)).unwrap();
        assert_eq!(got[&Topic::parse("a.b").unwrap()], pos(40, "k3j2Zq"));
    }

    #[test]
    fn caps_bound_the_token() {
        let mut c = Cursor::new(&[], HashMap::new());
        for i in 0..100 {
            c.advance(&format!("t.{i}"), i, Some("abcdef"), none);
        }
        assert_eq!(c.entries.len(), MAX_TOPICS);
        let long = "x".repeat(200);
        let mut c = Cursor::new(&[], HashMap::new());
        for i in 0..10 {
            c.advance(&format!("{long}.{i}"), u64::MAX, Some(&format!("{i:064}")), none);
        }
        let token = id(&mut c);
        assert!(token.len() <= 4 * MAX_TOKEN_BYTES / 3 + 1, "{}", token.len());
        assert_eq!(c.entries.len(), 1, "the second does not fit");
        assert_eq!(decode(&[], &token).unwrap().len(), 1);
        // Growing seqs and new epochs never take a token past the cap either.
        let mut c = Cursor::new(&[], HashMap::new());
        for i in 0..20 {
            c.advance(&format!("{}.{i}", &long[..10]), 1, Some("abcdef"), none);
        }
        assert_eq!(c.entries.len(), 20);
        for i in 0..20 {
            c.advance(
                &format!("{}.{i}", &long[..10]),
                u64::MAX,
                Some(&format!("{i:064}")),
                none,
            );
            let token = id(&mut c);
            assert!(token.len() <= 4 * MAX_TOKEN_BYTES / 3 + 1, "{}", token.len());
        }
        assert!(c.entries.len() < 20);
        for n in [0, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut v = Vec::new();
            varint(&mut v, n);
            assert_eq!(v.len(), varint_len(n), "{n}");
            assert_eq!(Reader(&v).varint(), Some(n));
        }
    }

    #[test]
    fn a_bad_id_recovers_nothing_and_resets_every_exact_topic() {
        let topics = patterns(&["a.b", "c.*"]);
        let mut c = Cursor::new(&topics, HashMap::new());
        c.advance("a.b", 5, Some("abcdef"), none);
        let good = id(&mut c);
        let reset = HashMap::from([(Topic::parse("a.b").unwrap(), pos(0, NO_EPOCH))]);
        let mut flipped = good.clone().into_bytes();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in [
            "",
            "x",
            "!!!",
            "AAAA",
            &flipped,
            &good[..good.len() - 1],
            &"A".repeat(2000),
        ] {
            assert_eq!(since(&topics, Some(bad)), Some(reset.clone()), "{bad:?}");
        }
        assert_eq!(since(&topics, None), None, "no id: a new stream");
        let got = since(&topics, Some(&good)).unwrap();
        assert_eq!(got[&Topic::parse("a.b").unwrap()], pos(5, "abcdef"));
    }
}
