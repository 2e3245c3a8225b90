//! The fan-out of a publication to a topic's subscribers: the plain loop most topics take, and
//! the one for topics where some subscriber has a gate (`max_rate`, deltas) or takes compressed
//! frames, which makes each variant of the frame once, at the first subscriber that takes it;
//! and the pacer's release of what max rates held back.

use std::time::Instant;

use bytes::Bytes;

use crate::metrics::Metrics;
use crate::protocol::deflate;
use crate::protocol::Data;
use crate::pubsub::outbox::{Pushed, TopicKey};
use crate::pubsub::throttle::{Admit, Due};
use crate::settings::TopicBounds;
use crate::sync::lock;
use crate::topic::Topic;

use super::{Hub, Outgoing, TopicEntry, TopicState, ENCODING};

impl Hub {
    /// Queues `out`, publication `state.seq`, for every subscriber; through their gates when
    /// `out.gated` (an update), past them when not (a reset, which must not wait or be skipped).
    pub(super) fn fan_out(&self, entry: &TopicEntry, state: &mut TopicState, out: &Outgoing<'_>) {
        if state.special > 0 {
            return self.fan_out_gated(entry, state, out);
        }
        let mut conflated = 0;
        let policy = state.policy;
        let Some(subscribers) = state.subscribers.non_empty_values_mut() else {
            return;
        };
        for sub in subscribers {
            let pushed = sub
                .outbox
                .push_topic(out.frame, entry.key, policy, Some(out.accepted));
            conflated += u64::from(pushed == Pushed::Conflated);
        }
        if conflated > 0 {
            self.metrics.conflated.inc_by(conflated);
        }
    }

    /// [`Hub::fan_out`] for a topic some subscribers of which have a gate (a max rate, deltas)
    /// or take compressed frames. `state.last` is still the previous publication, the base of
    /// a delta. Every variant of the frame (delta, compressed for a window size) is made once,
    /// at the first subscriber that takes it.
    #[inline(never)]
    fn fan_out_gated(&self, entry: &TopicEntry, state: &mut TopicState, out: &Outgoing<'_>) {
        let (mut conflated, mut deltas, mut saved) = (0, 0, 0);
        let seq = state.seq;
        let now = self.pacer.ms(out.accepted);
        // `None` inside: not worth it.
        let mut delta: Option<Option<Bytes>> = None;
        let mut variants = Variants::default();
        let TopicState {
            history,
            subscribers,
            policy,
            ..
        } = state;
        let (base, policy) = (history.last().map(|(_, data)| data), *policy);
        let Some(subscribers) = subscribers.non_empty_values_mut() else {
            return;
        };
        for sub in subscribers {
            let mut delta_frame = None;
            if let Some(gate) = sub.gate.as_deref_mut() {
                match out.gated.then(|| gate.admit(seq, now)) {
                    None => gate.caught_up(seq),
                    Some(Admit::Now { follows }) => {
                        if gate.delta() && follows {
                            let made = delta.get_or_insert_with(|| self.delta_frame(out, base));
                            delta_frame = made.as_ref();
                        }
                    }
                    Some(Admit::Replaced) => {
                        conflated += 1;
                        continue;
                    }
                    Some(Admit::Later(at)) => {
                        let due = Due {
                            at,
                            key: entry.key,
                            client: gate.client,
                            target: out.topic.clone(),
                        };
                        if self.pacer.schedule(due) {
                            continue;
                        }
                        gate.unschedule(seq, now);
                    }
                }
            }
            let (frame, is_delta) = (delta_frame.unwrap_or(out.frame), delta_frame.is_some());
            let uncompressed = frame.len();
            let (full, frame) = match sub.outbox.deflate() {
                None => (out.frame, frame),
                Some(bits) => variants.pair(self.bounds, out.frame, frame, is_delta, bits),
            };
            let pushed = match is_delta {
                false => (sub.outbox).push_topic(frame, entry.key, policy, Some(out.accepted)),
                true => (sub.outbox).push_delta(frame, full, entry.key, policy, Some(out.accepted)),
            };
            if pushed == Pushed::Queued && is_delta {
                deltas += 1;
                saved += out.frame.len() - uncompressed;
            }
            // What went into the queue: conflation puts the full frame in place of a delta.
            let queued = match (pushed, is_delta) {
                (Pushed::Queued, _) => Some((frame[0], frame.len(), uncompressed)),
                (Pushed::Conflated, true) => Some((full[0], full.len(), out.frame.len())),
                (Pushed::Conflated, false) => Some((frame[0], frame.len(), uncompressed)),
                _ => None,
            };
            if let Some((head, len, plain)) = queued {
                variants.queued(head, len, plain);
            }
            conflated += u64::from(pushed == Pushed::Conflated);
        }
        if conflated > 0 {
            self.metrics.conflated.inc_by(conflated);
        }
        variants.count(&self.metrics, deltas, saved as u64);
    }

    /// The `update` frame of `out` as a Fossil delta of `base`, the previous publication's
    /// data; `None` when there is no base, the data is under `delta.min_bytes`, or the delta
    /// frame would not be smaller than the full frame. The frames are compared, not the delta
    /// and the data: the delta travels as a JSON string, where each `"` or `\` it inserts
    /// doubles, so a delta shorter than the data can still make the larger frame (and
    /// `fan_out_gated` counts the bytes saved as the difference of the two frames).
    fn delta_frame(&self, out: &Outgoing<'_>, base: Option<&Data>) -> Option<Bytes> {
        let (base, data) = (base?.get(), out.data.get());
        if data.len() < self.bounds.delta_min_bytes {
            return None;
        }
        let delta = tickwire_proto::fossil::create_str(base, data);
        if delta.len() >= data.len() {
            return None; // no frame to build: escaping only makes it longer
        }
        let frame = ENCODING.delta_frame(out.topic, out.seq, out.ts, &delta);
        (frame.len() < out.frame.len()).then_some(frame)
    }

    /// Releases the deliveries held back by max rates, as they fall due; runs for the node's
    /// lifetime (the node spawns it). One task for every connection and topic.
    pub async fn pace(&self) {
        let mut due = Vec::new();
        loop {
            let now = self.pacer.ms(Instant::now());
            let next = self.pacer.take_due(now, &mut due);
            self.release(now, &mut due);
            match next {
                Some(at) if at <= now => tokio::task::yield_now().await,
                next => self.pacer.wait(next).await,
            }
        }
    }

    /// Sends each due pair its topic's newest value, unless something sent it already; the
    /// frame (and its compressed variants) is made once per topic and seq for the pairs due
    /// together.
    pub(super) fn release(&self, now: u64, due: &mut Vec<Due<Topic>>) {
        let mut encoded: Option<(TopicKey, u64, Bytes, Variants)> = None;
        for due in due.drain(..) {
            let Some(entry) = self.topics.get(&due.target).map(|e| e.clone()) else {
                continue;
            };
            if entry.key != due.key {
                continue; // the topic was dropped and created again since
            }
            let mut state = lock(&entry.state);
            let TopicState {
                seq,
                history,
                subscribers,
                removed,
                special,
                policy,
                ..
            } = &mut *state;
            let (Some((ts, data)), false) = (history.last(), *removed) else {
                continue;
            };
            let Some(sub) = subscribers.get_mut(due.client) else {
                continue;
            };
            let Some(gate) = sub.gate.as_deref_mut() else {
                continue;
            };
            if !gate.release(*seq, now) {
                continue;
            }
            if gate.is_open() {
                sub.gate = None;
                *special -= 1;
            }
            if !matches!(&encoded, Some((key, at, ..)) if (*key, *at) == (entry.key, *seq)) {
                if let Some((.., done)) = &encoded {
                    done.count(&self.metrics, 0, 0);
                }
                let frame = ENCODING.update_frame(&due.target, *seq, ts, data);
                encoded = Some((entry.key, *seq, frame, Variants::default()));
            }
            let (.., plain, variants) = encoded.as_mut().expect("made above");
            let frame = match sub.outbox.deflate() {
                None => &*plain,
                Some(bits) => variants.pair(self.bounds, plain, plain, false, bits).1,
            };
            let pushed = sub.outbox.push_topic(frame, entry.key, *policy, None);
            let (head, len, plain) = (frame[0], frame.len(), plain.len());
            if matches!(pushed, Pushed::Queued | Pushed::Conflated) {
                variants.queued(head, len, plain);
            }
            if pushed == Pushed::Conflated {
                self.metrics.conflated.inc();
            }
        }
        if let Some((.., done)) = &encoded {
            done.count(&self.metrics, 0, 0);
        }
    }
}

/// The compressed variants of one publication's frames, made as subscribers need them: at most
/// one per frame (full or delta) and window size.
#[derive(Default)]
struct Variants {
    made: Vec<(bool, u8, Option<Bytes>)>,
    /// Compressed frames queued.
    sent: u64,
    /// Bytes compression saved over those frames.
    saved: u64,
}

impl Variants {
    /// The full frame and the one to send (`frame`, the delta when `delta`), each compressed
    /// for a window of `bits` where that is worth it.
    fn pair<'a>(
        &'a mut self,
        bounds: TopicBounds,
        full: &'a Bytes,
        frame: &'a Bytes,
        delta: bool,
        bits: u8,
    ) -> (&'a Bytes, &'a Bytes) {
        let full_at = self.make(bounds, full, false, bits);
        let frame_at = match delta {
            true => self.make(bounds, frame, true, bits),
            false => full_at,
        };
        let pick = |at: usize, plain: &'a Bytes| self.made[at].2.as_ref().unwrap_or(plain);
        (pick(full_at, full), pick(frame_at, frame))
    }

    /// Counts a queued frame (first byte `head`, `len` bytes; `plain` bytes uncompressed).
    fn queued(&mut self, head: u8, len: usize, plain: usize) {
        if head & 0x40 != 0 {
            self.sent += 1;
            self.saved += (plain - len) as u64;
        }
    }

    /// Where `frame` compressed for `bits` is in `made`, making it if needed; `None` in it when
    /// the frame is under `compression.min_bytes` or compressing does not shrink it.
    fn make(&mut self, bounds: TopicBounds, frame: &Bytes, delta: bool, bits: u8) -> usize {
        if let Some(at) = self.made.iter().position(|(d, b, _)| (*d, *b) == (delta, bits)) {
            return at;
        }
        let small = frame.len() < bounds.deflate_min_bytes;
        let made = (!small).then(|| deflate::compress_frame(frame, bits, bounds.deflate_level));
        self.made.push((delta, bits, made.flatten()));
        self.made.len() - 1
    }

    fn count(&self, metrics: &Metrics, deltas: u64, saved_by_delta: u64) {
        if deltas > 0 {
            metrics.delta_frames.inc_by(deltas);
            metrics.bytes_saved_delta.inc_by(saved_by_delta);
        }
        if self.sent > 0 {
            metrics.compressed_frames.inc_by(self.sent);
            metrics.bytes_saved_deflate.inc_by(self.saved);
        }
    }
}
