//! Correctness while measuring: the publisher's record of what it sent ([`Sent`], filled by
//! [`Recorder`]) and each subscriber's [`Check`], which rebuilds every update's data (applying
//! Fossil deltas to the previous frame's data text, as docs/protocol.md §4.1 says a client
//! must), compares it with what was published for that `seq`, and counts the bytes.
//!
//! Bytes per update: the *wire* size is the frame as it arrived (header and payload, compressed
//! if it came so); the *full* size is what the same update would have been as a plain full
//! frame, `{…,"ts":T,"data":D}` with the rebuilt `D`, header included: for a plain full frame
//! the two are equal, for a delta frame the envelope up to `"delta":` is the same and
//! `"data":D}` replaces the rest. Their ratio is what deltas and compression save together;
//! a compressed frame also counts what compression alone saved (its inflated frame less what
//! came), the figure of the server's `tickwire_bytes_saved_total{by="deflate"}`. The sizes are
//! also counted for the updates stamped in the measurement window alone: by then every
//! subscriber has had the one full frame a subscription starts with, so those figures are the
//! steady state, whatever the run's length.
//!
//! The record is keyed by `seq`: the run's one publisher is the topic's only one, so its k-th
//! publication gets `base + 1 + k` (the scenario checks the acknowledgements say so). It holds
//! every publication of the run (rate × duration, a few MB at most at the rates a run keeps up
//! with), written before the request goes out, so a subscriber always finds it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};

use memchr::memmem::Finder;
use serde::Serialize;
use std::sync::LazyLock;

use super::shapes::Generator;
use crate::frame::{self, Wire};
use crate::pool::Watch;
use crate::publisher::Payloads;

static DATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""data":"#));
static DELTA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""delta":"#));
static STAMP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""ts":"#));

/// What the publisher sent, in order: publication k is `seq` base + 1 + k.
#[derive(Debug, Default)]
pub struct Sent {
    base: AtomicU64,
    texts: RwLock<Vec<Box<[u8]>>>,
}

impl Sent {
    /// The topic's `seq` before the run's first publication.
    pub fn set_base(&self, seq: u64) {
        self.base.store(seq, Relaxed);
    }

    pub fn len(&self) -> usize {
        self.texts.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&self, text: &[u8]) {
        let mut texts = self.texts.write().unwrap_or_else(|e| e.into_inner());
        texts.push(text.into());
    }

    /// Whether `data` is what was published as `seq`; `None` when this run did not publish it.
    pub fn matches(&self, seq: u64, data: &[u8]) -> Option<bool> {
        let k = seq.checked_sub(self.base.load(Relaxed) + 1)?;
        let texts = self.texts.read().unwrap_or_else(|e| e.into_inner());
        texts.get(usize::try_from(k).ok()?).map(|t| **t == *data)
    }
}

/// The publisher's payloads: the shape's next value, recorded before it is sent.
#[derive(Debug)]
pub struct Recorder {
    pub generator: Generator,
    pub sent: Arc<Sent>,
}

impl Payloads for Recorder {
    fn next(&mut self, sent_us: u64, out: &mut Vec<u8>) {
        let start = out.len();
        self.generator.next_into(sent_us, out);
        self.sent.push(&out[start..]);
    }
}

/// Updates whose data could not be rebuilt into exactly what was published for their `seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Mismatches {
    /// Rebuilt, but not the published text.
    pub differs: u64,
    /// A delta that is not a JSON string or that `fossil::apply` refused (checksum, bounds).
    pub bad_delta: u64,
    /// A delta to a connection whose previous frame was not `seq − 1` (its base is missing).
    pub no_base: u64,
    /// A `seq` this run did not publish.
    pub unknown_seq: u64,
    /// Neither `data` nor `delta` found.
    pub unreadable: u64,
}

/// Why an update's data could not be rebuilt.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Unreadable,
    BadDelta,
    NoBase,
}

impl Mismatches {
    fn count(&mut self, fault: Fault) {
        match fault {
            Fault::Unreadable => self.unreadable += 1,
            Fault::BadDelta => self.bad_delta += 1,
            Fault::NoBase => self.no_base += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.differs + self.bad_delta + self.no_base + self.unknown_seq + self.unreadable
    }

    fn add(&mut self, o: &Mismatches) {
        self.differs += o.differs;
        self.bad_delta += o.bad_delta;
        self.no_base += o.no_base;
        self.unknown_seq += o.unknown_seq;
        self.unreadable += o.unreadable;
    }
}

/// What the subscribers saw, summed when each connection finishes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    pub subscribers: u64,
    pub updates: u64,
    pub delta_frames: u64,
    /// Updates that came compressed, and the bytes compression saved on them (their frame
    /// inflated, less the frame as it came).
    pub compressed_frames: u64,
    pub deflate_saved_bytes: u64,
    /// Update frames as they arrived, headers included.
    pub wire_bytes: u64,
    /// The same updates as full frames.
    pub full_wire_bytes: u64,
    /// The rebuilt data texts.
    pub data_bytes: u64,
    /// Updates stamped in the measurement window, and their wire and full sizes.
    pub window_updates: u64,
    pub window_wire_bytes: u64,
    pub window_full_wire_bytes: u64,
    pub mismatches: Mismatches,
    /// Fewest and most updates one subscriber received.
    pub min_updates: Option<u64>,
    pub max_updates: u64,
    /// With a max rate: the most updates one subscriber received within any 1 s, and how many
    /// subscribers got more than the bound (rate + 1).
    pub max_in_1s: u64,
    pub over_bound: u64,
}

/// What every connection's [`Check`] shares.
#[derive(Debug)]
pub struct Shared {
    pub sent: Arc<Sent>,
    /// Per connection, the `seq` of the last update received (0: none): the drain waits until
    /// every one has the last publication.
    pub last_seq: Box<[AtomicU64]>,
    /// Most updates a connection may get within any 1 s (`max_rate` + 1), when rate-limited.
    pub bound: Option<f64>,
    /// The measurement window, µs since the epoch (as the pool's).
    window: (AtomicU64, AtomicU64),
    pub totals: Mutex<Totals>,
}

impl Shared {
    pub fn new(sent: Arc<Sent>, connections: usize, max_rate: Option<f64>) -> Shared {
        Shared {
            sent,
            last_seq: (0..connections).map(|_| AtomicU64::new(0)).collect(),
            bound: max_rate.map(|r| r + 1.0),
            window: (AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)),
            totals: Mutex::new(Totals::default()),
        }
    }

    pub fn set_window(&self, t0: u64, t1: u64) {
        self.window.0.store(t0, Relaxed);
        self.window.1.store(t1, Relaxed);
    }

    fn in_window(&self, stamp: u64) -> bool {
        (self.window.0.load(Relaxed)..self.window.1.load(Relaxed)).contains(&stamp)
    }

    pub fn totals(&self) -> Totals {
        *self.totals.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One subscriber's check, run on its receiver thread.
pub struct Check {
    conn: usize,
    shared: Arc<Shared>,
    /// The data text of the last frame (update or snapshot) and its `seq`: a delta's base.
    base: Vec<u8>,
    base_seq: Option<u64>,
    /// With a max rate: arrival times (µs) of the updates of the last second.
    arrivals: VecDeque<u64>,
    mine: Totals,
}

impl Check {
    pub fn new(conn: usize, shared: Arc<Shared>) -> Check {
        Check {
            conn,
            shared,
            base: Vec::new(),
            base_seq: None,
            arrivals: VecDeque::new(),
            mine: Totals::default(),
        }
    }

    /// Rebuilds the update's data into `base`; the full frame's payload size.
    fn rebuild(&mut self, message: &[u8], seq: u64) -> Result<usize, Fault> {
        let body = |at: usize| message.get(at..message.len().saturating_sub(1));
        if let Some(at) = DATA.find(message) {
            let data = body(at + DATA.needle().len()).ok_or(Fault::Unreadable)?;
            self.base.clear();
            self.base.extend_from_slice(data);
            return Ok(message.len());
        }
        let at = DELTA.find(message).ok_or(Fault::Unreadable)?;
        self.mine.delta_frames += 1;
        let text = body(at + DELTA.needle().len()).ok_or(Fault::Unreadable)?;
        // The delta's numbers count UTF-8 bytes of the unescaped string.
        let delta: String = serde_json::from_slice(text).map_err(|_| Fault::BadDelta)?;
        if self.base_seq.is_none_or(|b| b + 1 != seq) {
            return Err(Fault::NoBase);
        }
        let rebuilt = tickwire_proto::fossil::apply(&self.base, delta.as_bytes(), frame::MAX_MESSAGE)
            .map_err(|_| Fault::BadDelta)?;
        self.base = rebuilt;
        // The same envelope, then `"data":` + data + `}` in place of `"delta":"…"}`.
        Ok(at + DATA.needle().len() + self.base.len() + 1)
    }

    fn arrived(&mut self, now_us: u64) {
        self.arrivals.push_back(now_us);
        while self.arrivals.front().is_some_and(|&t| t + 1_000_000 <= now_us) {
            self.arrivals.pop_front();
        }
        self.mine.max_in_1s = self.mine.max_in_1s.max(self.arrivals.len() as u64);
    }
}

impl Watch for Check {
    fn update(&mut self, message: &[u8], wire: Wire, seq: u64, now_us: u64) -> Option<u64> {
        let wire_len = wire.len;
        let m = &mut self.mine;
        m.updates += 1;
        m.wire_bytes += wire_len as u64;
        if wire.compressed {
            m.compressed_frames += 1;
            let inflated = frame::server_frame_len(message.len());
            m.deflate_saved_bytes += inflated.saturating_sub(wire_len) as u64;
        }
        self.shared.last_seq[self.conn].store(seq, Relaxed);
        if self.shared.bound.is_some() {
            self.arrived(now_us);
        }
        let full = match self.rebuild(message, seq) {
            Ok(full) => full,
            Err(fault) => {
                self.mine.mismatches.count(fault);
                // Its size as a full frame is unknown: count it as it came.
                self.mine.full_wire_bytes += wire_len as u64;
                self.base_seq = None;
                return None;
            }
        };
        self.base_seq = Some(seq);
        let m = &mut self.mine;
        let full = frame::server_frame_len(full) as u64;
        m.full_wire_bytes += full;
        m.data_bytes += self.base.len() as u64;
        match self.shared.sent.matches(seq, &self.base) {
            Some(true) => {}
            Some(false) => m.mismatches.differs += 1,
            None => m.mismatches.unknown_seq += 1,
        }
        let at = STAMP.find(&self.base)? + STAMP.needle().len();
        let stamp = crate::proto::digits(&self.base[at..])?;
        if self.shared.in_window(stamp) {
            m.window_updates += 1;
            m.window_wire_bytes += wire_len as u64;
            m.window_full_wire_bytes += full;
        }
        Some(stamp)
    }

    fn snapshot(&mut self, message: &[u8], seq: u64) {
        // The value before the run: not checked, but the base of a first delta.
        match DATA.find(message) {
            Some(at) => {
                let data = &message[at + DATA.needle().len()..message.len().saturating_sub(1)];
                self.base.clear();
                self.base.extend_from_slice(data);
                self.base_seq = Some(seq);
            }
            None => self.base_seq = None,
        }
    }

    fn finish(self: Box<Self>) {
        let m = &self.mine;
        let mut t = self.shared.totals.lock().unwrap_or_else(|e| e.into_inner());
        t.subscribers += 1;
        t.updates += m.updates;
        t.delta_frames += m.delta_frames;
        t.compressed_frames += m.compressed_frames;
        t.deflate_saved_bytes += m.deflate_saved_bytes;
        t.wire_bytes += m.wire_bytes;
        t.full_wire_bytes += m.full_wire_bytes;
        t.data_bytes += m.data_bytes;
        t.window_updates += m.window_updates;
        t.window_wire_bytes += m.window_wire_bytes;
        t.window_full_wire_bytes += m.window_full_wire_bytes;
        t.mismatches.add(&m.mismatches);
        t.min_updates = Some(t.min_updates.map_or(m.updates, |x| x.min(m.updates)));
        t.max_updates = t.max_updates.max(m.updates);
        t.max_in_1s = t.max_in_1s.max(m.max_in_1s);
        if self.shared.bound.is_some_and(|b| m.max_in_1s as f64 > b) {
            t.over_bound += 1;
        }
    }
}

#[cfg(test)]
mod tests;
