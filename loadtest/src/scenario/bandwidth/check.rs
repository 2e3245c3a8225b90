//! Correctness while measuring: the publisher's record of what it sent ([`Sent`], filled by
//! [`Recorder`]) and each subscriber's [`Check`], which rebuilds every update's data (applying
//! Fossil deltas to the previous frame's data text, as docs/protocol.md §4.1 says a client
//! must), compares it with what was published for that `seq`, and counts the bytes.
//!
//! Bytes per update: the *wire* size is the frame as it arrived (header and payload); the
//! *full* size is what the same update would have been as a full frame, `{…,"ts":T,"data":D}`
//! with the rebuilt `D`, header included: for a full frame the two are equal, for a delta frame
//! the envelope up to `"delta":` is the same and `"data":D}` replaces the rest. Their ratio is
//! what deltas (and later compression, which would shrink the wire size alone) save. Both are
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
use crate::frame;
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
    fn update(&mut self, message: &[u8], wire_len: usize, seq: u64, now_us: u64) -> Option<u64> {
        let m = &mut self.mine;
        m.updates += 1;
        m.wire_bytes += wire_len as u64;
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
mod tests {
    use super::*;
    use crate::scenario::bandwidth::shapes::Shape;

    fn frame_of(seq: u64, body: &str) -> Vec<u8> {
        format!(r#"{{"type":"update","topic":"bench.bw.doc.0","seq":{seq},"ts":1700000000000,{body}}}"#)
            .into_bytes()
    }

    fn full(seq: u64, data: &[u8]) -> Vec<u8> {
        frame_of(seq, &format!(r#""data":{}"#, std::str::from_utf8(data).unwrap()))
    }

    fn delta(seq: u64, from: &[u8], to: &[u8]) -> Vec<u8> {
        let d = tickwire_proto::fossil::create_str(
            std::str::from_utf8(from).unwrap(),
            std::str::from_utf8(to).unwrap(),
        );
        frame_of(seq, &format!(r#""delta":{}"#, serde_json::to_string(&d).unwrap()))
    }

    /// Publishes `n` doc values (seq 11..) through a recorder; returns them.
    fn published(sent: &Arc<Sent>, n: usize) -> Vec<Vec<u8>> {
        sent.set_base(10);
        let mut r = Recorder {
            generator: Generator::new(Shape::Doc, 5),
            sent: sent.clone(),
        };
        (0..n)
            .map(|i| {
                let mut out = b"prefix".to_vec();
                r.next(1_700_000_000_000_000 + i as u64, &mut out);
                out.split_off(6)
            })
            .collect()
    }

    #[test]
    fn rebuilds_deltas_checks_them_and_counts_bytes() {
        let sent = Arc::new(Sent::default());
        let v = published(&sent, 4);
        assert_eq!(sent.len(), 4);
        let shared = Arc::new(Shared::new(sent, 1, None));
        // The window holds the stamps of the first two publications only.
        shared.set_window(1_700_000_000_000_000, 1_700_000_000_000_002);
        let mut c = Box::new(Check::new(0, shared.clone()));
        let wire = |m: &[u8]| frame::server_frame_len(m.len());

        let f = full(11, &v[0]);
        assert_eq!(c.update(&f, wire(&f), 11, 0), Some(1_700_000_000_000_000));
        let d = delta(12, &v[0], &v[1]);
        assert!(
            d.len() * 10 < f.len(),
            "a doc delta is small: {} of {}",
            d.len(),
            f.len()
        );
        assert_eq!(c.update(&d, wire(&d), 12, 0), Some(1_700_000_000_000_001));
        // A delta that does not decode; then a delta after that gap has no base.
        let wrong = frame_of(13, r#""delta":"2g\n7@0,bad;""#);
        assert_eq!(c.update(&wrong, wire(&wrong), 13, 0), None);
        let after_gap = delta(14, &v[2], &v[3]);
        assert_eq!(c.update(&after_gap, wire(&after_gap), 14, 0), None);
        // Full data that is not what was published for its seq.
        let swapped = full(14, &v[2]);
        c.update(&swapped, wire(&swapped), 14, 0);
        let unknown = full(99, &v[3]);
        c.update(&unknown, wire(&unknown), 99, 0);
        c.finish();

        let t = shared.totals();
        assert_eq!((t.updates, t.delta_frames, t.subscribers), (6, 3, 1));
        let m = t.mismatches;
        assert_eq!(
            (m.differs, m.bad_delta, m.no_base, m.unknown_seq, m.unreadable),
            (1, 1, 1, 1, 0)
        );
        assert_eq!(shared.last_seq[0].load(Relaxed), 99);
        // The delta frame counts as the full frame it replaced (the one the server would have
        // sent); the failed ones as they came.
        assert_eq!(
            t.full_wire_bytes as usize,
            wire(&f)
                + wire(&full(12, &v[1]))
                + wire(&wrong)
                + wire(&after_gap)
                + wire(&swapped)
                + wire(&unknown)
        );
        assert_eq!(t.window_updates, 2);
        assert_eq!(t.window_wire_bytes as usize, wire(&f) + wire(&d));
        assert_eq!(
            t.window_full_wire_bytes as usize,
            wire(&f) + wire(&full(12, &v[1]))
        );
        assert_eq!(
            t.wire_bytes as usize,
            [&f, &d, &wrong, &after_gap, &swapped, &unknown]
                .iter()
                .map(|m| wire(m))
                .sum::<usize>()
        );
    }

    #[test]
    fn a_snapshot_is_the_base_of_the_first_delta() {
        let sent = Arc::new(Sent::default());
        let v = published(&sent, 1);
        let shared = Arc::new(Shared::new(sent, 1, None));
        let mut c = Check::new(0, shared.clone());
        let old = br#"{"ts":1,"old":"value before the run, long enough to be worth a delta"}"#;
        let snap = full(10, old);
        let snap = [
            b"{\"type\":\"snapshot\"".as_slice(),
            &snap[b"{\"type\":\"update\"".len()..],
        ]
        .concat();
        c.snapshot(&snap, 10);
        let d = delta(11, old, &v[0]);
        assert!(c.update(&d, d.len() + 4, 11, 0).is_some());
        assert_eq!(c.mine.mismatches, Mismatches::default());
    }

    #[test]
    fn counts_the_most_updates_within_a_second() {
        let sent = Arc::new(Sent::default());
        let v = published(&sent, 5);
        let shared = Arc::new(Shared::new(sent, 1, Some(2.0)));
        let mut c = Box::new(Check::new(0, shared.clone()));
        // 0, 0.4, 0.99 s: three within one second (the bound is 3); then 1.5, 1.6: the window
        // (0.6, 1.6] holds 0.99, 1.5 and 1.6.
        for (i, at) in [0u64, 400_000, 990_000, 1_500_000, 1_600_000]
            .into_iter()
            .enumerate()
        {
            let f = full(11 + i as u64, &v[i]);
            c.update(&f, f.len() + 4, 11 + i as u64, at);
        }
        assert_eq!(c.mine.max_in_1s, 3);
        let f = full(16, &v[4]);
        c.update(&f, 0, 16, 1_700_000);
        assert_eq!(c.mine.max_in_1s, 4);
        c.finish();
        assert_eq!(shared.totals().over_bound, 1);
    }
}
