//! Presence and occupancy as clients and the HTTP API see them: who is in a room, how many
//! subscribers a topic has, which topics are occupied, for the whole cluster; and the events
//! `occupied` / `vacated` / `join` / `leave`, each emitted once, that go to the webhooks.
//!
//! The hub keeps this node's share (`pubsub::presence`: rooms, occupied topics, changes, all
//! changed where subscriptions are added and removed). With the memory broker that share is
//! everything. In a cluster the Redis part (`cluster::redis::presence`) adds every node's
//! share; it is also where a transition is observed once (an atomic script) so that exactly one
//! node emits each event.
//!
//! Occupancy events are level-triggered: the hub marks a topic whose local subscriber count
//! went to or from zero, and [`Presence::run`] looks at the topic's count *now*. A topic that
//! flaps many times between two looks is one mark, and the count it sees is the truth, so an
//! event is never emitted for a transition that did not last, and `vacated` waits
//! `occupancy.vacate_delay` for the count to stay at zero.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::cluster::redis::presence::{ClusterPresence, Emit};
use crate::cluster::redis::BrokerError;
use crate::metrics::Metrics;
use crate::protocol::error::RequestError;
use crate::protocol::now_ms;
use crate::pubsub::hub::{ClientId, Hub};
use crate::pubsub::presence::{Change, Member};
use crate::settings::{BrokerKind, Settings};
use crate::topic::Topic;
use crate::webhooks::{Event, EventKind, Webhooks};

/// A room as a query answers it.
pub struct Room {
    pub members: Vec<Arc<Member>>,
    /// Exact, however many are listed.
    pub count: usize,
}

/// How many connections receive a topic, cluster-wide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subscribers {
    /// Connections receiving it (exact or pattern subscriptions): occupied while above zero.
    pub total: usize,
    /// Of those, the ones receiving it through patterns only.
    pub patterns: usize,
}

pub struct Presence {
    hub: Arc<Hub>,
    /// This node's name in member ids (`<node>-<connection>`), unique in a cluster.
    node: Arc<str>,
    max_members: usize,
    vacate_delay: Duration,
    webhooks: Webhooks,
    /// In a cluster: the Redis part, which has the last word on everything here.
    cluster: Option<Arc<ClusterPresence>>,
    metrics: Arc<Metrics>,
}

impl Presence {
    pub fn new(
        settings: &Settings,
        hub: Arc<Hub>,
        node: Arc<str>,
        metrics: Arc<Metrics>,
    ) -> Result<Presence, BrokerError> {
        let cluster = match settings.broker.kind {
            // Presence and webhooks are refused with "redis-cluster" (settings check), so its
            // occupancy counts are this node's, as on one node.
            BrokerKind::Memory | BrokerKind::RedisCluster => None,
            BrokerKind::Redis => Some(Arc::new(ClusterPresence::new(
                settings,
                node.clone(),
                metrics.clone(),
            )?)),
        };
        Ok(Presence {
            hub,
            node,
            cluster,
            max_members: settings.presence.max_members,
            vacate_delay: settings.occupancy.vacate_delay,
            webhooks: Webhooks::start(&settings.webhooks, metrics.clone()),
            metrics,
        })
    }

    /// Whether `topic` is a presence room.
    pub fn covers(&self, topic: &Topic) -> bool {
        self.hub.presence().covers(topic)
    }

    /// The member a connection is: `client` shown as `<node>-<client>`, `user` its token's
    /// `sub` (or `anonymous`), `info` its token's `info` claim.
    pub fn member(&self, client: ClientId, user: Option<&str>, info: Option<&RawValue>) -> Arc<Member> {
        let shown = format!("{}-{client}", self.node);
        Arc::new(Member::new(client, &shown, user.unwrap_or("anonymous"), info))
    }

    /// Who is in `topic`'s room: at most `presence.max_members` listed, the count exact.
    pub async fn room(&self, topic: &Topic) -> Result<Room, RequestError> {
        if let Some(cluster) = &self.cluster {
            let room = cluster.room(topic, self.max_members).await?;
            return Ok(Room {
                members: room.members,
                count: room.count,
            });
        }
        let page = self.hub.presence().members(topic, self.max_members);
        Ok(Room {
            members: page.members,
            count: page.count,
        })
    }

    /// How many connections receive `topic`, cluster-wide.
    pub async fn subscribers(&self, topic: &Topic) -> Result<Subscribers, RequestError> {
        if let Some(cluster) = &self.cluster {
            let (total, patterns) = cluster.subscribers(topic).await?;
            return Ok(Subscribers { total, patterns });
        }
        let (total, patterns) = self.hub.subscriber_counts(topic).unwrap_or((0, 0));
        Ok(Subscribers { total, patterns })
    }

    /// Up to `limit` occupied topics after `after`, in name order, and the `after` of the next
    /// page (`None` on the last).
    pub async fn occupied(
        &self,
        after: Option<&Topic>,
        limit: usize,
    ) -> Result<(Vec<Topic>, Option<Topic>), RequestError> {
        let (page, more) = match &self.cluster {
            Some(cluster) => cluster.occupied(after, limit).await?,
            None => self.hub.presence().occupied(after, limit),
        };
        let next = more.then(|| page.last().cloned()).flatten();
        Ok((page, next))
    }

    /// Turns the hub's changes into events, for as long as the node lives: occupancy (with
    /// the vacate delay) and presence, each once. In a cluster the Redis part decides which
    /// node emits; here, this one.
    pub async fn run(self: Arc<Self>) {
        if let Some(cluster) = &self.cluster {
            let this = self.clone();
            let emit: Emit = Arc::new(move |kind, topic, member| this.emit(kind, topic, member));
            return cluster.clone().run(self.hub.clone(), emit).await;
        }
        let presence = self.hub.presence();
        presence.track(false);
        let mut occupancy = Occupancy::default();
        loop {
            let wake = occupancy.next_deadline();
            let taken = match wake {
                Some(at) => tokio::select! {
                    taken = presence.take() => Some(taken),
                    _ = tokio::time::sleep_until(at) => None,
                },
                None => Some(presence.take().await),
            };
            let now = Instant::now();
            if let Some((topics, changes)) = taken {
                for topic in topics {
                    let local = self.hub.subscribers(&topic).unwrap_or(0);
                    if let Some(kind) = occupancy.observe(&topic, local > 0, now + self.vacate_delay) {
                        self.emit(kind, topic, None);
                    }
                }
                for change in changes {
                    let (kind, topic, member) = match change {
                        Change::Join(t, m) => (EventKind::Join, t, m),
                        Change::Leave(t, m) => (EventKind::Leave, t, m),
                    };
                    self.emit(kind, topic, Some(member.json().to_owned()));
                }
            }
            for topic in occupancy.due(now) {
                // Re-checked: a subscriber that came back in time cancelled the vacate, one
                // that came since marked the topic and is seen at the next take.
                if self.hub.subscribers(&topic).unwrap_or(0) == 0 {
                    occupancy.vacate(&topic);
                    self.emit(EventKind::Vacated, topic, None);
                }
            }
            self.metrics.occupied_topics.set(occupancy.occupied.len() as i64);
        }
    }

    fn emit(&self, kind: EventKind, topic: Topic, member: Option<Box<RawValue>>) {
        if !self.webhooks.wants(kind, &topic) {
            return;
        }
        let event = Event::new(kind, topic, member, now_ms());
        self.webhooks.send(event, &self.metrics);
    }
}

/// One node's occupancy as its events have told it: the topics reported occupied, and those
/// waiting out the vacate delay.
#[derive(Default)]
pub(crate) struct Occupancy {
    pub(crate) occupied: HashSet<Topic>,
    vacating: HashMap<Topic, Instant>,
    /// The same deadlines in time order, for the next wake-up (stale entries skipped).
    deadlines: BTreeMap<(Instant, Topic), ()>,
}

impl Occupancy {
    /// The topic's count is `busy` (above zero) now: returns the event this makes, if any.
    pub(crate) fn observe(&mut self, topic: &Topic, busy: bool, vacate_at: Instant) -> Option<EventKind> {
        match (busy, self.occupied.contains(topic)) {
            (true, true) => {
                // Back before the delay ran out: no `vacated`, no second `occupied`.
                if let Some(at) = self.vacating.remove(topic) {
                    self.deadlines.remove(&(at, topic.clone()));
                }
                None
            }
            (true, false) => {
                self.occupied.insert(topic.clone());
                Some(EventKind::Occupied)
            }
            (false, true) => {
                if !self.vacating.contains_key(topic) {
                    self.vacating.insert(topic.clone(), vacate_at);
                    self.deadlines.insert((vacate_at, topic.clone()), ());
                }
                None
            }
            (false, false) => None,
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(at, _)| *at)
    }

    /// The topics whose vacate delay ran out by `now`; each must be re-checked, then
    /// [`Occupancy::vacate`]d or observed busy.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<Topic> {
        let mut due = Vec::new();
        while let Some(((at, _), ())) = self.deadlines.first_key_value() {
            if *at > now {
                break;
            }
            let ((_, topic), ()) = self.deadlines.pop_first().expect("seen above");
            self.vacating.remove(&topic);
            due.push(topic);
        }
        due
    }

    pub(crate) fn vacate(&mut self, topic: &Topic) {
        self.occupied.remove(topic);
    }
}
