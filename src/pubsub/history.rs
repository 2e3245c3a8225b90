//! A topic's newest publication (its last value) and the recent ones before it, kept so that a
//! client that reconnects can be sent exactly what it missed.
//!
//! Bounded twice: at most `size` publications and none older than `ttl`, counted by their accept
//! time (`ts`, wall-clock milliseconds: a clock stepped back keeps entries longer, one stepped
//! forward drops them early, and a recovery then resets: the safe side). Each entry costs its
//! payload plus [`ENTRY_OVERHEAD`] bytes; the hub reports the totals as metrics.
//!
//! The newest publication is held once, as the topic's last value, whether or not it still counts
//! as history (a snapshot needs it after the TTL too): a node with many topics mostly holds one
//! publication per topic, and keeping it twice, with a ring allocated for it, cost about 70 bytes
//! per topic (issue 16). The ring holds only the publications *before* the newest, and is
//! allocated at the second one kept. The bounds are not stored here: every topic with the same
//! rule has the same ones, so the caller passes them in.

use std::collections::VecDeque;
use std::time::Duration;

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
}

/// A stored publication, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Kept<'a> {
    pub seq: u64,
    pub ts: u64,
    pub data: &'a Data,
}

impl Kept<'_> {
    fn to_entry(self) -> Entry {
        Entry {
            seq: self.seq,
            ts: self.ts,
            data: self.data.clone(),
        }
    }
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
    fn add(&mut self, data: &Data, sign: i64) {
        self.messages += sign;
        self.bytes += sign * (data.get().len() + ENTRY_OVERHEAD) as i64;
    }
}

/// Set in the newest publication's stored `ts` while it counts as history (within the bounds):
/// a flag in a bit `ts` never uses (milliseconds reach 2^63 in 292 million years), because
/// every topic holds one and a separate `bool` would grow the topic's entry past an allocator
/// size class (`a_topic_entry_stays_small`).
const KEPT: u64 = 1 << 63;

/// Every topic holds one: 32 bytes.
#[derive(Debug, Default)]
pub struct History {
    /// The newest publication (its `ts`, with [`KEPT`], and data); its seq is the topic's.
    newest: Option<(u64, Data)>,
    /// Kept publications before the newest, oldest first; `None` while there are none. Boxed
    /// (clippy's `box_collection` notwithstanding): 8 bytes on every topic instead of a
    /// `VecDeque`'s 32, for the allocation only topics with a deeper history make.
    #[allow(clippy::box_collection)]
    older: Option<Box<VecDeque<Entry>>>,
}

fn expired(ts: u64, now: u64, ttl: Duration) -> bool {
    u128::from(now.saturating_sub(ts)) >= ttl.as_millis()
}

impl History {
    /// The newest publication: its accept time and data.
    pub fn last(&self) -> Option<(u64, &Data)> {
        let (ts, data) = self.newest.as_ref()?;
        Some((ts & !KEPT, data))
    }

    fn newest_kept(&self) -> bool {
        self.newest.as_ref().is_some_and(|(ts, _)| ts & KEPT != 0)
    }

    /// Stores a publication as the newest (seqs must grow; `latest` is the seq of the newest
    /// until now), evicting what falls out of `bounds` (`now`: ms since the Unix epoch).
    pub fn push(&mut self, bounds: Retention, latest: u64, ts: u64, data: &Data, now: u64) -> Delta {
        let mut delta = Delta::default();
        let kept = bounds.size > 0;
        let previous = self
            .newest
            .replace((ts | if kept { KEPT } else { 0 }, data.clone()));
        if let Some((pts, pdata)) = previous.filter(|(pts, _)| pts & KEPT != 0) {
            match bounds.size > 1 {
                true => self
                    .older
                    .get_or_insert_with(|| Box::new(VecDeque::with_capacity(1)))
                    .push_back(Entry {
                        seq: latest,
                        ts: pts & !KEPT,
                        data: pdata,
                    }),
                false => delta.add(&pdata, -1),
            }
        }
        if kept {
            delta.add(data, 1);
        }
        if let Some(older) = self.older.as_mut() {
            while older.len() > bounds.size.saturating_sub(1) {
                let old = older.pop_front().expect("longer than a size, so not empty");
                delta.add(&old.data, -1);
            }
        }
        delta += self.expire(bounds, now);
        delta
    }

    /// Drops what is older than the TTL. Kept publications are always a run that ends with the
    /// newest: when the newest goes (a clock stepped back can make it look older than the ones
    /// before it), they all go, so that a recovery never skips it.
    pub fn expire(&mut self, bounds: Retention, now: u64) -> Delta {
        let mut delta = Delta::default();
        let mut all = false;
        if let Some((ts, data)) = self.newest.as_mut() {
            if *ts & KEPT != 0 && expired(*ts & !KEPT, now, bounds.ttl) {
                *ts &= !KEPT;
                delta.add(data, -1);
                all = true;
            }
        }
        if let Some(older) = self.older.as_mut() {
            while let Some(front) = older.front() {
                if !all && !expired(front.ts, now, bounds.ttl) {
                    break;
                }
                let old = older.pop_front().expect("front exists");
                delta.add(&old.data, -1);
            }
            if older.is_empty() {
                self.older = None;
            }
        }
        delta
    }

    /// Every kept publication, oldest first (`latest`: the topic's seq, the newest's).
    fn kept(&self, latest: u64) -> impl Iterator<Item = Kept<'_>> {
        let older = self.older.iter().flat_map(|o| o.iter());
        let older = older.map(|e| Kept {
            seq: e.seq,
            ts: e.ts,
            data: &e.data,
        });
        let newest = (self.newest.as_ref()).filter(|(ts, _)| ts & KEPT != 0);
        older.chain(newest.map(|(ts, data)| Kept {
            seq: latest,
            ts: ts & !KEPT,
            data,
        }))
    }

    /// Whether every publication after `since` is kept (`latest` is the topic's seq).
    fn reaches(&self, since: u64, latest: u64) -> bool {
        since == latest
            || (since < latest
                && self.newest_kept()
                && self.kept(latest).next().is_some_and(|e| e.seq <= since + 1))
    }

    /// Every publication after `since`, when history still holds all of them (`latest` is the
    /// topic's current seq). `None` means a gap: the caller must reset the client instead.
    pub fn after(&self, since: u64, latest: u64) -> Option<impl Iterator<Item = Kept<'_>>> {
        self.reaches(since, latest)
            .then(|| self.kept(latest).skip_while(move |e| e.seq <= since))
    }

    /// Up to `limit` publications after `since`, and whether nothing after `since` is missing
    /// (`latest` is the topic's current seq).
    pub fn page(&self, since: u64, limit: usize, latest: u64) -> (Vec<Entry>, bool) {
        let complete = since >= latest || self.reaches(since, latest);
        let page = (self.kept(latest))
            .filter(|e| e.seq > since)
            .take(limit)
            .map(Kept::to_entry)
            .collect();
        (page, complete)
    }

    /// Drops everything, the newest publication included; returns the change for the gauges.
    pub fn clear(&mut self) -> Delta {
        let mut delta = Delta::default();
        for e in self.older.take().into_iter().flat_map(|o| o.into_iter()) {
            delta.add(&e.data, -1);
        }
        if let Some((ts, data)) = self.newest.take() {
            if ts & KEPT != 0 {
                delta.add(&data, -1);
            }
        }
        delta
    }

    /// Replaces everything with a stream stored elsewhere (a broker's): `last` is publication
    /// `seq`'s accept time and data, `entries` stored publications in seq order (the newest among
    /// them or not), kept within `bounds` as if they had been published here.
    pub fn load(
        &mut self,
        bounds: Retention,
        seq: u64,
        last: Option<(u64, Data)>,
        entries: impl IntoIterator<Item = Entry>,
        now: u64,
    ) -> Delta {
        let mut delta = self.clear();
        let mut older = VecDeque::new();
        let mut newest_stored = false;
        for e in entries {
            if e.seq >= seq {
                newest_stored = e.seq == seq;
                break;
            }
            older.push_back(e);
        }
        let keep_newest = newest_stored && bounds.size > 0 && last.is_some();
        let room = bounds.size.saturating_sub(usize::from(keep_newest));
        while older.len() > room {
            older.pop_front();
        }
        // Older ones are only kept below a kept newest, as `push` would have left them.
        if !keep_newest {
            older.clear();
        }
        older.iter().for_each(|e| delta.add(&e.data, 1));
        self.newest = last.map(|(ts, data)| {
            if keep_newest {
                delta.add(&data, 1);
            }
            (ts | if keep_newest { KEPT } else { 0 }, data)
        });
        self.older = (!older.is_empty()).then(|| Box::new(older));
        delta += self.expire(bounds, now);
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

    fn seqs<'a>(it: impl Iterator<Item = Kept<'a>>) -> Vec<u64> {
        it.map(|e| e.seq).collect()
    }

    /// Publishes seqs `from..=to` at `ts`, returning the total gauge change.
    fn publish(h: &mut History, r: Retention, from: u64, to: u64, ts: u64) -> Delta {
        let mut total = Delta::default();
        for seq in from..=to {
            total += h.push(r, seq - 1, ts, &data(), ts);
        }
        total
    }

    #[test]
    fn keeps_the_last_size_entries() {
        let r = retention(3, 60);
        let mut h = History::default();
        let total = publish(&mut h, r, 1, 5, 1_000);
        assert_eq!(total.messages, 3);
        assert_eq!(seqs(h.after(2, 5).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(h.after(4, 5).unwrap()), vec![5]);
        assert_eq!(seqs(h.after(5, 5).unwrap()), Vec::<u64>::new());
        assert!(h.after(1, 5).is_none(), "seq 2 is gone");
        assert!(h.after(6, 5).is_none(), "a position from the future");
        let cleared = h.clear();
        assert_eq!((cleared.messages, cleared.bytes), (-total.messages, -total.bytes));
        assert!(h.page(0, 10, 0).0.is_empty());
        assert!(h.last().is_none(), "clear drops the last value too");
    }

    #[test]
    fn the_newest_is_held_once() {
        let r = retention(100, 60);
        let mut h = History::default();
        let d = h.push(r, 0, 1_000, &data(), 1_000);
        assert_eq!(d.messages, 1, "the newest counts as history");
        assert!(h.older.is_none(), "no ring for the only publication");
        assert_eq!(h.last().map(|(ts, _)| ts), Some(1_000));
        assert_eq!(seqs(h.after(0, 1).unwrap()), vec![1]);
        h.push(r, 1, 1_001, &data(), 1_001);
        assert_eq!(h.older.as_ref().map(|o| o.len()), Some(1));
        assert_eq!(seqs(h.after(0, 2).unwrap()), vec![1, 2]);
        assert_eq!(
            h.last().map(|(ts, _)| ts),
            Some(1_001),
            "the flag is not part of ts"
        );
    }

    #[test]
    fn expires_by_age() {
        let r = retention(10, 1);
        let mut h = History::default();
        h.push(r, 0, 0, &data(), 0);
        h.push(r, 1, 900, &data(), 900);
        let d = h.expire(r, 1_100);
        assert_eq!(d.messages, -1);
        assert!(h.after(0, 2).is_none());
        assert_eq!(seqs(h.after(1, 2).unwrap()), vec![2]);
        let d = h.expire(r, 1_900);
        assert_eq!(d.messages, -1, "the newest ages out of history");
        assert!(h.after(1, 2).is_none());
        assert!(h.after(2, 2).is_some(), "an up-to-date position needs nothing");
        assert!(h.last().is_some(), "but stays the last value");
        assert_eq!(h.clear().messages, 0, "nothing left to count");
    }

    #[test]
    fn when_the_newest_expires_first_everything_goes() {
        // A clock stepped back: the newest looks older than the one before it.
        let r = retention(10, 1);
        let mut h = History::default();
        h.push(r, 0, 5_000, &data(), 5_000);
        h.push(r, 1, 1_000, &data(), 1_000);
        let d = h.expire(r, 2_500);
        assert_eq!(d.messages, -2);
        assert!(h.after(0, 2).is_none(), "never seq 1 without seq 2");
    }

    #[test]
    fn size_zero_keeps_nothing_but_an_up_to_date_position_recovers() {
        let r = retention(0, 60);
        let mut h = History::default();
        assert_eq!(h.push(r, 0, 0, &data(), 0), Delta::default());
        assert!(h.after(0, 1).is_none());
        assert_eq!(h.after(1, 1).map(|it| it.count()), Some(0));
        assert!(h.last().is_some());
    }

    #[test]
    fn size_one_keeps_the_newest_only() {
        let r = retention(1, 60);
        let mut h = History::default();
        let total = publish(&mut h, r, 1, 4, 0);
        assert_eq!(total.messages, 1);
        assert!(h.older.is_none());
        assert_eq!(seqs(h.after(3, 4).unwrap()), vec![4]);
        assert!(h.after(2, 4).is_none());
    }

    #[test]
    fn pages() {
        let r = retention(5, 60);
        let mut h = History::default();
        publish(&mut h, r, 1, 8, 0);
        let (page, complete) = h.page(5, 2, 8);
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7]);
        assert!(complete);
        let (page, complete) = h.page(0, 100, 8);
        assert_eq!(page.len(), 5);
        assert!(!complete);
        assert!(h.page(8, 100, 8).1, "nothing after the latest seq is missing");
    }

    #[test]
    fn loads_a_stored_stream() {
        let r = retention(3, 60);
        let e = |seq| Entry {
            seq,
            ts: 0,
            data: data(),
        };
        let mut h = History::default();
        publish(&mut h, r, 1, 2, 0);
        let d = h.load(r, 9, Some((0, data())), (5..=9).map(e), 0);
        assert_eq!(d.messages, 3 - 2, "two dropped, three loaded");
        assert_eq!(seqs(h.after(6, 9).unwrap()), vec![7, 8, 9]);
        let d = h.load(r, 9, Some((0, data())), (5..=8).map(e), 0);
        assert_eq!(d.messages, -3, "the newest not stored: nothing recovers");
        assert!(h.after(8, 9).is_none());
        assert!(h.last().is_some());
    }
}
