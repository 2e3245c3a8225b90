//! The hub as a mirror of a broker's topics (`broker.kind = "redis"`): publications that were
//! assigned their seq elsewhere are applied in seq order, and a topic is brought up to the
//! broker's stored state (continued, or reset with an explicit snapshot).

use std::time::{Duration, Instant};

use crate::protocol::{now_ms, Position};
use crate::pubsub::history::{self, History};
use crate::sync::lock;
use crate::topic::Topic;

use super::{Applied, HistoryPage, Hub, Outgoing, Remote, Stored, ENCODING};

/// The local instant at which a publication accepted at `ts` (ms since the Unix epoch, maybe on
/// another node) happened, for the latency histogram and the history TTL.
fn instant_of(ts: u64) -> Instant {
    let ago = Duration::from_millis(now_ms().saturating_sub(ts));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}

/// The broker's stored publications, as history entries (each at its own accept time, so that
/// the TTL counts from there).
fn entries(stored: &Stored) -> impl Iterator<Item = history::Entry> + '_ {
    (stored.entries.iter()).map(|p| history::Entry {
        seq: p.seq,
        ts: p.ts,
        data: p.data.clone(),
    })
}

impl Hub {
    /// Applies a publication the broker assigned its seq to, if it is the next one of a topic
    /// this hub holds; duplicates are dropped, anything else is for the caller to resolve.
    pub fn apply(&self, topic: &Topic, p: &Remote) -> Applied {
        let Some(entry) = self.topics.get(topic).map(|e| e.clone()) else {
            return Applied::Unknown;
        };
        let mut state = lock(&entry.state);
        if state.removed {
            return Applied::Unknown;
        }
        state.adopt(&p.epoch);
        if state.epoch != p.epoch {
            return Applied::Gap;
        }
        if p.seq <= state.seq {
            return Applied::Duplicate;
        }
        if p.seq != state.seq + 1 {
            return Applied::Gap;
        }
        self.deliver(topic, &entry, &mut state, p.seq, p.ts, &p.data, instant_of(p.ts));
        Applied::Delivered
    }

    /// Brings a topic (created when missing) up to the broker's `stored` state: the stored
    /// publications that continue the local stream are delivered in order; when they cannot
    /// (the broker lost the stream and started a new epoch, or history no longer reaches back),
    /// the topic restarts from `stored` and its subscribers get a `snapshot` carrying the new
    /// position: an explicit reset, never a silent gap.
    pub fn mirror(&self, topic: &Topic, stored: &Stored) {
        self.with_topic(topic, |entry, state| {
            // Loaded for a subscriber about to register: not idle, however old the stream.
            state.touched = self.clock.ticks(Instant::now());
            state.adopt(&stored.epoch);
            if state.epoch == stored.epoch {
                let have = state.seq;
                for p in stored.entries.iter().skip_while(|p| p.seq <= have) {
                    if p.seq != state.seq + 1 {
                        break;
                    }
                    self.deliver(topic, entry, state, p.seq, p.ts, &p.data, instant_of(p.ts));
                }
                if stored.seq <= state.seq {
                    return;
                }
            }
            state.epoch = stored.epoch.clone();
            state.seq = stored.seq;
            state.snapshot = None;
            let bounds = self.rules.retention_at(state.retention);
            let last = stored.last.clone();
            let delta = (state.history).load(bounds, stored.seq, last, entries(stored), now_ms());
            self.count_history(delta);
            if let Some((ts, data)) = stored.last.clone() {
                let frame = ENCODING.reset_frame(topic, state.seq, ts, &data, &state.epoch);
                let out = Outgoing {
                    topic,
                    seq: state.seq,
                    ts,
                    data: &data,
                    frame: &frame,
                    accepted: instant_of(ts),
                    gated: false,
                };
                self.fan_out(entry, state, &out);
            }
        });
    }

    /// Every topic this hub holds, with its position: what a mirror must catch up on after
    /// losing the broker for a while.
    pub fn positions(&self) -> Vec<(Topic, Position)> {
        let topics: Vec<Topic> = self.topics.iter().map(|item| item.key().clone()).collect();
        (topics.into_iter())
            .filter_map(|t| Some((t.clone(), self.position(&t)?)))
            .collect()
    }

    /// A page of a topic's history as the broker stores it, within this hub's retention rules.
    pub fn page_of(&self, topic: &Topic, stored: &Stored, since: u64, limit: usize) -> HistoryPage {
        let bounds = self.rules.retention_for(topic);
        let mut history = History::default();
        history.load(bounds, stored.seq, stored.last.clone(), entries(stored), now_ms());
        let (publications, complete) = history.page(since, limit, stored.seq);
        HistoryPage {
            position: Position {
                seq: stored.seq,
                epoch: stored.epoch.clone(),
            },
            publications,
            complete,
        }
    }

    /// Where `topic`'s stream stands here, if the hub holds it.
    pub fn position(&self, topic: &Topic) -> Option<Position> {
        let entry = self.topics.get(topic).map(|e| e.clone())?;
        let state = lock(&entry.state);
        Some(Position {
            seq: state.seq,
            epoch: state.epoch.clone(),
        })
    }
}
