//! Sequence accounting per (connection, topic).
//!
//! tickwire numbers every publication of a topic (`seq` grows by 1 per publish) and delivers a
//! topic's updates in order. A subscriber that falls behind may be *conflated*: a waiting update
//! is replaced by a newer one of the same topic, so the client sees a jump in `seq` but the
//! stream goes on. A message is *lost* only when it, and everything after it, never arrives:
//! the subscriber's last `seq` at the end of the drain is below the topic's last published `seq`.
//!
//! So, with `base` the topic's `seq` before the run published anything and `last` the last `seq`
//! it published, every one of the `last - base` messages of the run is, for each subscriber,
//! exactly one of: received, conflated (skipped over by a later one that did arrive) or lost.

use serde::Serialize;

/// What one subscriber saw of one topic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeqTrack {
    /// First update `seq` received (valid when `received > 0`).
    first: u64,
    /// Highest update `seq` received.
    last: u64,
    /// Updates received, duplicates and reordered ones excluded.
    received: u64,
    /// Messages skipped over between received updates.
    skipped: u64,
    /// Jumps in `seq` (each skipping one or more messages).
    jumps: u64,
    /// Updates whose `seq` was not above the previous one.
    out_of_order: u64,
}

impl SeqTrack {
    /// Records a received update.
    #[inline]
    pub fn on_update(&mut self, seq: u64) {
        if self.received == 0 {
            self.first = seq;
            self.last = seq;
            self.received = 1;
            return;
        }
        if seq <= self.last {
            self.out_of_order += 1;
            return;
        }
        if seq > self.last + 1 {
            self.skipped += seq - self.last - 1;
            self.jumps += 1;
        }
        self.last = seq;
        self.received += 1;
    }

    /// The highest `seq` received, if any.
    pub fn last(&self) -> Option<u64> {
        (self.received > 0).then_some(self.last)
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Settles the account once the drain is over: `base` is the topic's `seq` before the run
    /// published, `last_published` its final `seq`.
    pub fn finish(&self, base: u64, last_published: u64) -> GapCounts {
        let published = last_published.saturating_sub(base);
        if self.received == 0 {
            return GapCounts {
                expected: published,
                lost: published,
                ..GapCounts::default()
            };
        }
        // Messages before the first one received were skipped too: the stream continued.
        let leading = self.first.saturating_sub(base + 1);
        let conflated = leading + self.skipped;
        GapCounts {
            expected: published,
            received: self.received,
            conflated,
            conflation_jumps: self.jumps + u64::from(leading > 0),
            lost: last_published.saturating_sub(self.last),
            out_of_order: self.out_of_order,
            streams_with_conflation: u64::from(conflated > 0),
            streams_with_loss: u64::from(last_published > self.last),
        }
    }
}

/// Totals over (connection, topic) streams.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GapCounts {
    /// Messages that should have reached the subscribers (published × subscribers).
    pub expected: u64,
    /// Updates received.
    pub received: u64,
    /// Messages skipped because a newer update of the same topic replaced them (the stream
    /// continued past them).
    pub conflated: u64,
    /// Number of jumps in `seq`.
    pub conflation_jumps: u64,
    /// Messages never delivered by the end of the drain (a missing tail of the stream).
    pub lost: u64,
    /// Updates received with a `seq` not above the previous one (should never happen).
    pub out_of_order: u64,
    /// (connection, topic) streams with at least one conflated message.
    pub streams_with_conflation: u64,
    /// (connection, topic) streams with lost messages.
    pub streams_with_loss: u64,
}

impl std::ops::AddAssign for GapCounts {
    fn add_assign(&mut self, o: GapCounts) {
        self.expected += o.expected;
        self.received += o.received;
        self.conflated += o.conflated;
        self.conflation_jumps += o.conflation_jumps;
        self.lost += o.lost;
        self.out_of_order += o.out_of_order;
        self.streams_with_conflation += o.streams_with_conflation;
        self.streams_with_loss += o.streams_with_loss;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(seqs: &[u64]) -> SeqTrack {
        let mut t = SeqTrack::default();
        seqs.iter().for_each(|&s| t.on_update(s));
        t
    }

    #[test]
    fn complete_stream() {
        let g = track(&[11, 12, 13, 14, 15]).finish(10, 15);
        assert_eq!((g.expected, g.received, g.conflated, g.lost), (5, 5, 0, 0));
        assert_eq!(g.streams_with_conflation + g.streams_with_loss, 0);
    }

    #[test]
    fn gaps_in_a_continuing_stream_are_conflation() {
        let g = track(&[1, 2, 5, 6, 10]).finish(0, 10);
        assert_eq!(
            (g.received, g.conflated, g.conflation_jumps, g.lost),
            (5, 5, 2, 0)
        );
        assert_eq!(g.received + g.conflated + g.lost, g.expected);
        // missing head, stream continued
        let g = track(&[4, 5]).finish(0, 5);
        assert_eq!((g.conflated, g.conflation_jumps, g.lost), (3, 1, 0));
    }

    #[test]
    fn missing_tail_is_loss() {
        let g = track(&[1, 2, 3]).finish(0, 6);
        assert_eq!((g.received, g.conflated, g.lost), (3, 0, 3));
        assert_eq!(g.streams_with_loss, 1);
        let g = track(&[1, 3]).finish(0, 5);
        assert_eq!((g.conflated, g.lost), (1, 2));
        assert_eq!(g.received + g.conflated + g.lost, g.expected);
    }

    #[test]
    fn nothing_received_is_all_lost() {
        let g = SeqTrack::default().finish(7, 10);
        assert_eq!((g.expected, g.received, g.lost), (3, 0, 3));
        // nothing published, nothing expected
        assert_eq!(SeqTrack::default().finish(7, 7), GapCounts::default());
    }

    #[test]
    fn duplicates_are_counted_apart() {
        let g = track(&[1, 2, 2, 1, 3]).finish(0, 3);
        assert_eq!((g.received, g.out_of_order, g.conflated, g.lost), (3, 2, 0, 0));
    }

    #[test]
    fn totals_add_up() {
        let mut total = GapCounts::default();
        total += track(&[1, 3]).finish(0, 3);
        total += track(&[1]).finish(0, 3);
        assert_eq!(
            (total.expected, total.received, total.conflated, total.lost),
            (6, 3, 1, 2)
        );
        assert_eq!((total.streams_with_conflation, total.streams_with_loss), (1, 1));
    }
}
