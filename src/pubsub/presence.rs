//! Presence and occupancy as this node's hub sees them: the members of each presence room
//! (topics matching `presence.patterns`, one member per connection holding an exact
//! subscription), the `join`/`leave` frames for the subscribers that asked for them, the set of
//! occupied topics, and the changes the layers above turn into events (cluster-wide counts,
//! `occupied`/`vacated`, webhooks).
//!
//! Everything here is changed by the hub where a subscription is added or removed, under the
//! topic's lock, so a `join` or `leave` frame takes its place among the topic's updates on
//! every outbox, and a transition is seen where it happens, never by scanning. A topic that
//! matches no presence pattern costs one pattern check per exact subscribe and unsubscribe,
//! and nothing per publication. Lock order: topic state → a room's shard → outbox; the occupied
//! set and the change queue innermost (each alone).

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dashmap::DashMap;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::metrics::Metrics;
use crate::protocol::wire;
use crate::pubsub::idmap::IdMap;
use crate::pubsub::outbox::Outbox;
use crate::sync::lock;
use crate::topic::{Pattern, Topic};

/// Identifies a connection inside the hub (as `hub::ClientId`, which this module sits below).
pub type ClientId = u64;

/// A member as everyone sees it: `{"client":…,"user":…,"info":…}`, encoded once per connection
/// and shared by all its rooms (a room holds a pointer to it).
#[derive(Debug)]
pub struct Member {
    pub client: ClientId,
    /// `client` as the JSON shows it, unique in the cluster (the member's key in Redis).
    pub shown: Box<str>,
    json: Box<RawValue>,
}

impl Member {
    /// The member `client` (shown as `shown_client`, unique in the cluster) authenticated as
    /// `user` with the token's `info`.
    pub fn new(client: ClientId, shown_client: &str, user: &str, info: Option<&RawValue>) -> Member {
        #[derive(Serialize)]
        struct Shown<'a> {
            client: &'a str,
            user: &'a str,
            info: Option<&'a RawValue>,
        }
        let json = serde_json::to_string(&Shown {
            client: shown_client,
            user,
            info,
        })
        .expect("serializing strings and raw JSON cannot fail");
        Member {
            client,
            shown: shown_client.into(),
            json: RawValue::from_string(json).expect("serde_json wrote valid JSON"),
        }
    }

    /// A member of another node, as Redis holds it (`shown` its client, `json` the whole).
    pub fn stored(shown: &str, json: Box<RawValue>) -> Member {
        Member {
            client: 0,
            shown: shown.into(),
            json,
        }
    }

    pub fn json(&self) -> &RawValue {
        &self.json
    }
}

/// What an exact subscription to a presence topic brings: the connection as a member, and
/// whether it wants `join`/`leave` frames.
#[derive(Clone)]
pub struct Joining {
    pub member: Arc<Member>,
    pub events: bool,
}

/// One connection in a room.
struct Seat {
    member: Arc<Member>,
    /// Where its `join`/`leave` frames go, when it asked for them.
    events: Option<Arc<Outbox>>,
}

/// A presence topic's members on this node; in the map only while it has one.
#[derive(Default)]
struct Room {
    seats: IdMap<Seat>,
    /// Seats with `events`: while zero, a join or leave pushes no frame.
    watchers: usize,
}

/// A presence change, for the layers above (cluster members, webhooks).
#[derive(Debug, Clone)]
pub enum Change {
    Join(Topic, Arc<Member>),
    Leave(Topic, Arc<Member>),
}

/// Most presence changes waiting for the layers above; more are dropped and counted
/// (`tickwire_presence_changes_dropped_total`): a cluster node's periodic refresh repairs its
/// members in Redis, only those changes' webhooks are lost.
pub const MAX_CHANGES: usize = 65_536;

#[derive(Default)]
struct Pending {
    /// Topics whose local subscriber count went to or from zero since the last `take`: a set,
    /// so it is bounded by the number of topics and a flapping topic is one entry.
    occupancy: HashSet<Topic>,
    changes: VecDeque<Change>,
}

/// A page of one room: the members listed (at most the limit asked) and how many there are.
pub struct RoomPage {
    pub members: Vec<Arc<Member>>,
    pub count: usize,
}

pub struct Presence {
    patterns: Vec<Pattern>,
    rooms: DashMap<Topic, Room>,
    /// Topics with at least one local subscriber, in name order (the occupied listing).
    occupied: Mutex<BTreeSet<Topic>>,
    pending: Mutex<Pending>,
    /// Whether someone reads [`Presence::take`] (the node's presence task): otherwise nothing
    /// is queued.
    tracked: AtomicBool,
    /// Every change of a topic's subscriber count is marked, not only to and from zero (a
    /// cluster node keeps its counts in Redis).
    all_counts: AtomicBool,
    /// Changes were dropped ([`MAX_CHANGES`]): the reader must resync what it keeps elsewhere.
    lost: AtomicBool,
    wake: tokio::sync::Notify,
    metrics: Arc<Metrics>,
}

impl Presence {
    /// Presence for the topics matching `patterns` (none: presence is off, occupancy stays).
    pub fn new(patterns: Vec<Pattern>, metrics: Arc<Metrics>) -> Presence {
        Presence {
            patterns,
            rooms: DashMap::new(),
            occupied: Mutex::default(),
            pending: Mutex::default(),
            tracked: AtomicBool::new(false),
            all_counts: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            metrics,
        }
    }

    /// Whether `topic` is a presence room.
    pub fn covers(&self, topic: &Topic) -> bool {
        self.patterns.iter().any(|p| p.matches(topic))
    }

    /// From now on changes are queued for [`Presence::take`]; with `all_counts`, every
    /// change of a subscriber count, not only the transitions.
    pub fn track(&self, all_counts: bool) {
        self.all_counts.store(all_counts, Ordering::Release);
        self.tracked.store(true, Ordering::Release);
    }

    /// Whether changes were dropped since the last call (the queue was full).
    pub fn lost_changes(&self) -> bool {
        self.lost.swap(false, Ordering::AcqRel)
    }

    /// Seats `joining` in `topic`'s room (under the topic's lock), or updates whether it wants
    /// events when it is seated already; a new member's `join` goes to every watcher, itself
    /// included when it asked for events (its outbox is corked behind its `subscribed` reply).
    pub(crate) fn join(&self, topic: &Topic, joining: &Joining, outbox: &Arc<Outbox>) {
        let mut room = self.rooms.entry(topic.clone()).or_default();
        let id = joining.member.client;
        let events = joining.events.then(|| outbox.clone());
        let watching = events.is_some();
        let mut fresh = false;
        let seat = room.seats.get_or_insert_with(id, || {
            fresh = true;
            Seat {
                member: joining.member.clone(),
                events: None,
            }
        });
        let was_watching = std::mem::replace(&mut seat.events, events).is_some();
        room.watchers = room.watchers + usize::from(watching) - usize::from(was_watching);
        if !fresh {
            return;
        }
        self.metrics.presence_members.inc();
        if room.watchers > 0 {
            push_watchers(&room, &event_frame("join", topic, joining.member.json()));
        }
        drop(room);
        self.queue(Change::Join(topic.clone(), joining.member.clone()));
    }

    /// Unseats `id` from `topic`'s room (under the topic's lock); the remaining watchers get
    /// its `leave`.
    pub(crate) fn leave(&self, topic: &Topic, id: ClientId) {
        let Some(mut room) = self.rooms.get_mut(topic) else {
            return;
        };
        let Some(seat) = room.seats.remove(id) else {
            return;
        };
        room.watchers -= usize::from(seat.events.is_some());
        self.metrics.presence_members.dec();
        if room.watchers > 0 {
            push_watchers(&room, &event_frame("leave", topic, seat.member.json()));
        }
        let empty = room.seats.is_empty();
        drop(room);
        if empty {
            self.rooms.remove_if(topic, |_, r| r.seats.is_empty());
        }
        self.queue(Change::Leave(topic.clone(), seat.member));
    }

    /// A member of another node joined or left (`frame`): for the local watchers of `topic`
    /// (under its lock, so it takes its place among the updates).
    pub(crate) fn remote(&self, topic: &Topic, frame: &Bytes) {
        if let Some(room) = self.rooms.get(topic) {
            if room.watchers > 0 {
                push_watchers(&room, frame);
            }
        }
    }

    /// Every local member of every room, collected one room at a time: what a cluster node
    /// writes to Redis when it must resync.
    pub fn all_members(&self) -> Vec<(Topic, Arc<Member>)> {
        let rooms: Vec<Topic> = self.rooms.iter().map(|r| r.key().clone()).collect();
        let mut all = Vec::new();
        for topic in rooms {
            if let Some(room) = self.rooms.get(&topic) {
                all.extend(room.seats.values().map(|s| (topic.clone(), s.member.clone())));
            }
        }
        all
    }

    /// Every locally occupied topic, for the same resync.
    pub fn all_occupied(&self) -> Vec<Topic> {
        lock(&self.occupied).iter().cloned().collect()
    }

    /// Up to `limit` of `topic`'s local members, and how many there are.
    pub fn members(&self, topic: &Topic, limit: usize) -> RoomPage {
        let Some(room) = self.rooms.get(topic) else {
            return RoomPage {
                members: Vec::new(),
                count: 0,
            };
        };
        RoomPage {
            members: room
                .seats
                .values()
                .take(limit)
                .map(|s| s.member.clone())
                .collect(),
            count: room.seats.len(),
        }
    }

    /// `topic`'s local subscriber count went from `before` to `after` (under its lock).
    pub(crate) fn counted(&self, topic: &Topic, before: usize, after: usize) {
        let transition = (before == 0) != (after == 0);
        if transition {
            let mut set = lock(&self.occupied);
            match after > 0 {
                true => set.insert(topic.clone()),
                false => set.remove(topic),
            };
        }
        let wanted = transition || (before != after && self.all_counts.load(Ordering::Acquire));
        if wanted && self.tracked.load(Ordering::Acquire) {
            lock(&self.pending).occupancy.insert(topic.clone());
            self.wake.notify_one();
        }
    }

    /// Up to `limit` locally occupied topics after `after`, in name order, and whether more
    /// follow.
    pub fn occupied(&self, after: Option<&Topic>, limit: usize) -> (Vec<Topic>, bool) {
        use std::ops::Bound::{Excluded, Unbounded};
        let set = lock(&self.occupied);
        let from = after.map_or(Unbounded, Excluded);
        let mut page: Vec<Topic> = set.range((from, Unbounded)).take(limit + 1).cloned().collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    fn queue(&self, change: Change) {
        if !self.tracked.load(Ordering::Acquire) {
            return;
        }
        let mut pending = lock(&self.pending);
        if pending.changes.len() >= MAX_CHANGES {
            drop(pending);
            self.lost.store(true, Ordering::Release);
            self.metrics.presence_changes_dropped.inc();
            self.wake.notify_one();
            return;
        }
        pending.changes.push_back(change);
        drop(pending);
        self.wake.notify_one();
    }

    /// Waits for changes, then takes them all: the topics whose occupancy may have changed
    /// and the presence changes in order.
    pub async fn take(&self) -> (Vec<Topic>, Vec<Change>) {
        loop {
            let notified = self.wake.notified();
            {
                let mut pending = lock(&self.pending);
                if !pending.occupancy.is_empty() || !pending.changes.is_empty() {
                    let topics = pending.occupancy.drain().collect();
                    let changes = pending.changes.drain(..).collect();
                    return (topics, changes);
                }
            }
            notified.await;
        }
    }
}

fn push_watchers(room: &Room, frame: &Bytes) {
    for outbox in room.seats.values().filter_map(|s| s.events.as_ref()) {
        // A watcher that cannot take it is ended as a slow consumer by its outbox.
        let _ = outbox.push(frame.clone());
    }
}

/// A `join` or `leave` frame.
pub fn event_frame(kind: &'static str, topic: &Topic, member: &RawValue) -> Bytes {
    #[derive(Serialize)]
    struct Event<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        topic: &'a Topic,
        member: &'a RawValue,
    }
    wire::json_frame(&Event { kind, topic, member })
}
