//! A topic's recent publications, kept so that a client that reconnects can be sent exactly what
//! it missed.
//!
//! Bounded twice: at most `size` publications and none older than `ttl`. Each entry costs its
//! payload plus [`ENTRY_OVERHEAD`] bytes; the hub reports the totals as metrics.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::protocol::Data;
use crate::settings::Retention;

/// Bytes one entry costs besides its payload: the ring slot, the payload's `Arc` header and
/// allocator rounding. Used for the `tickwire_history_bytes` gauge and the documented bound.
pub const ENTRY_OVERHEAD: usize = 64;

/// One stored publication.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    /// Accept time, milliseconds since the Unix epoch.
    pub ts: u64,
    pub data: Data,
    at: Instant,
}

/// Change in stored messages and bytes, for the gauges.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub messages: i64,
    pub bytes: i64,
}

impl std::ops::AddAssign for Delta {
    fn add_assign(&mut self, other: Delta) {
        self.messages += other.messages;
        self.bytes += other.bytes;
    }
}

impl Delta {
    fn add(&mut self, entry: &Entry, sign: i64) {
        self.messages += sign;
        self.bytes += sign * cost(entry) as i64;
    }
}

fn cost(entry: &Entry) -> usize {
    entry.data.get().len() + ENTRY_OVERHEAD
}

/// Every topic holds one, so its size matters at millions of topics: the bounds are kept as
/// `u32` (4 billion entries, 136 years: beyond what memory or a config can mean), and the ring
/// is allocated for one entry at the first publication, since most topics of a node with many
/// keep only their last value (a first push would otherwise allocate room for four).
#[derive(Debug)]
pub struct History {
    entries: VecDeque<Entry>,
    size: u32,
    ttl_secs: u32,
}

impl History {
    pub fn new(retention: Retention) -> History {
        History {
            entries: VecDeque::new(),
            size: u32::try_from(retention.size).unwrap_or(u32::MAX),
            ttl_secs: u32::try_from(retention.ttl.as_secs()).unwrap_or(u32::MAX),
        }
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_secs.into())
    }

    /// Stores a publication (seqs must grow), evicting what falls out of the bounds.
    pub fn push(&mut self, seq: u64, ts: u64, data: &Data, now: Instant) -> Delta {
        let mut delta = Delta::default();
        if self.size == 0 {
            return delta;
        }
        let entry = Entry {
            seq,
            ts,
            data: data.clone(),
            at: now,
        };
        delta.add(&entry, 1);
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(1);
        }
        self.entries.push_back(entry);
        while self.entries.len() > self.size as usize {
            let old = self.entries.pop_front().expect("longer than size, so not empty");
            delta.add(&old, -1);
        }
        delta += self.expire(now);
        delta
    }

    /// Drops entries older than the TTL.
    pub fn expire(&mut self, now: Instant) -> Delta {
        let mut delta = Delta::default();
        let ttl = self.ttl();
        while let Some(front) = self.entries.front() {
            if now.duration_since(front.at) < ttl {
                break;
            }
            let old = self.entries.pop_front().expect("front exists");
            delta.add(&old, -1);
        }
        if self.entries.is_empty() && self.entries.capacity() > 0 {
            self.entries = VecDeque::new();
        }
        delta
    }

    /// Every publication after `since`, when history still holds all of them (`latest` is the
    /// topic's current seq). `None` means a gap: the caller must reset the client instead.
    pub fn after(&self, since: u64, latest: u64) -> Option<impl Iterator<Item = &Entry>> {
        if since > latest {
            return None;
        }
        if since < latest {
            let oldest = self.entries.front()?.seq;
            if oldest > since + 1 {
                return None;
            }
        }
        let skip = self.entries.iter().take_while(|e| e.seq <= since).count();
        Some(self.entries.iter().skip(skip))
    }

    /// Up to `limit` publications after `since`, and whether nothing after `since` is missing
    /// (`latest` is the topic's current seq).
    pub fn page(&self, since: u64, limit: usize, latest: u64) -> (Vec<Entry>, bool) {
        let complete = since >= latest || self.entries.front().is_some_and(|e| e.seq <= since + 1);
        let page = (self.entries.iter())
            .filter(|e| e.seq > since)
            .take(limit)
            .cloned()
            .collect();
        (page, complete)
    }

    /// Drops every entry; returns the change for the gauges.
    pub fn clear(&mut self) -> Delta {
        let mut delta = Delta::default();
        self.entries.drain(..).for_each(|e| delta.add(&e, -1));
        self.entries = VecDeque::new();
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use std::sync::Arc;

    fn data() -> Data {
        Arc::from(RawValue::from_string("1".into()).unwrap())
    }

    fn retention(size: usize, secs: u64) -> Retention {
        Retention {
            size,
            ttl: Duration::from_secs(secs),
        }
    }

    fn seqs<'a>(it: impl Iterator<Item = &'a Entry>) -> Vec<u64> {
        it.map(|e| e.seq).collect()
    }

    #[test]
    fn keeps_the_last_size_entries() {
        let mut h = History::new(retention(3, 60));
        let now = Instant::now();
        let mut total = Delta::default();
        for seq in 1..=5 {
            let d = h.push(seq, 0, &data(), now);
            total.messages += d.messages;
            total.bytes += d.bytes;
        }
        assert_eq!(total.messages, 3);
        assert_eq!(seqs(h.after(2, 5).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(h.after(4, 5).unwrap()), vec![5]);
        assert_eq!(seqs(h.after(5, 5).unwrap()), Vec::<u64>::new());
        assert!(h.after(1, 5).is_none(), "seq 2 is gone");
        assert!(h.after(6, 5).is_none(), "a position from the future");
        let cleared = h.clear();
        assert_eq!((cleared.messages, cleared.bytes), (-total.messages, -total.bytes));
        assert!(h.page(0, 10, 0).0.is_empty());
    }

    #[test]
    fn a_first_entry_takes_one_slot() {
        let mut h = History::new(retention(100, 60));
        assert_eq!(h.entries.capacity(), 0, "nothing before the first publication");
        h.push(1, 0, &data(), Instant::now());
        assert_eq!(h.entries.capacity(), 1, "most topics keep only their last value");
        h.push(2, 0, &data(), Instant::now());
        assert_eq!(seqs(h.after(0, 2).unwrap()), vec![1, 2]);
    }

    #[test]
    fn expires_by_age() {
        let mut h = History::new(retention(10, 1));
        let t0 = Instant::now();
        h.push(1, 0, &data(), t0);
        h.push(2, 0, &data(), t0 + Duration::from_millis(900));
        let d = h.expire(t0 + Duration::from_millis(1100));
        assert_eq!(d.messages, -1);
        assert!(h.after(0, 2).is_none());
        assert_eq!(seqs(h.after(1, 2).unwrap()), vec![2]);
    }

    #[test]
    fn size_zero_keeps_nothing_but_an_up_to_date_position_recovers() {
        let mut h = History::new(retention(0, 60));
        assert_eq!(h.push(1, 0, &data(), Instant::now()), Delta::default());
        assert!(h.after(0, 1).is_none());
        assert_eq!(h.after(1, 1).map(|it| it.count()), Some(0));
    }

    #[test]
    fn pages() {
        let mut h = History::new(retention(5, 60));
        for seq in 1..=8 {
            h.push(seq, 0, &data(), Instant::now());
        }
        let (page, complete) = h.page(5, 2, 8);
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7]);
        assert!(complete);
        let (page, complete) = h.page(0, 100, 8);
        assert_eq!(page.len(), 5);
        assert!(!complete);
        assert!(h.page(8, 100, 8).1, "nothing after the latest seq is missing");
    }
}
