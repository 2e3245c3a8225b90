//! One client's protocol state machine, whatever transport carries it: who the client is, what
//! it is subscribed to, its rate limit, and the handling of its requests.
//!
//! The transport hands it complete text requests ([`Session::handle`]) or asks it to subscribe
//! directly ([`Session::subscribe`], for a transport whose client cannot send, such as a
//! stream opened from a URL). Every reply, error included, is queued on the connection's
//! [`Outbox`](crate::pubsub::outbox::Outbox), which the transport's writer drains; the
//! session never writes to a socket and never knows which protocol frames the bytes. It
//! returns `Some(Disconnect)` when the connection must end, and the transport closes it.
//!
//! Every request is checked against the connection's ACL here, before it reaches the node: a
//! subscription the ACL does not cover is refused whole, and a token refresh that narrows the
//! ACL drops the subscriptions it no longer covers before its reply is queued. What the session
//! needs from its transport besides the outbox is one timer, the token's expiry ([`Expiry`]).

mod ratelimit;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::value::RawValue;

use crate::app::App;
use crate::auth::acl::Identity;
use crate::metrics::Source;
use crate::protocol::disconnect::Disconnect;
use crate::protocol::error::{Action, RequestError};
use crate::protocol::{parse_request, Data, Position, Reply, Request};
use crate::pubsub::hub::{Subscribed, Subscriber};
use crate::pubsub::presence::{Joining, Member};
use crate::pubsub::throttle::{Interval, Terms};
use crate::topic::{Pattern, Topic};

use self::ratelimit::{RateLimit, Verdict};

/// What a transport provides for the token's expiry: a timer that ends the connection
/// (`Disconnect::TokenExpired`) at `expires`. The transport arms it with the identity it
/// accepted; a token refresh moves it, earlier or later (`None`: never).
///
/// A trait rather than a timer of the session's own: the timer is the transport's (the
/// WebSocket one shares it with pings and the idle timeout), and the session holds only a
/// reference to it, so an idle connection costs no more than before the seam (a generic
/// parameter, not a `dyn`: no dispatch through a vtable).
pub trait Expiry {
    fn expire_at(&self, expires: Option<SystemTime>);
}

pub struct Session<'a, E> {
    app: &'a App,
    who: &'a Subscriber,
    /// Who the client is and what it may do; replaced by a token refresh.
    identity: Identity,
    /// Closes the connection when the token expires.
    expiry: &'a E,
    subscriptions: HashSet<Pattern>,
    limit: RateLimit,
    /// The connection as a presence member, made at its first exact subscription to a room
    /// (and again after a token refresh, for the rooms it joins from then on).
    member: Option<Arc<Member>>,
}

impl<'a, E: Expiry> Session<'a, E> {
    /// The session of the client `who` (whose outbox gets the replies), known as `identity`;
    /// `expiry` must already be armed for `identity.expires`.
    pub fn new(app: &'a App, who: &'a Subscriber, identity: Identity, expiry: &'a E) -> Self {
        let server = &app.settings.server;
        Session {
            app,
            who,
            identity,
            expiry,
            subscriptions: HashSet::new(),
            limit: RateLimit::new(server.requests_per_second, server.request_burst),
            member: None,
        }
    }

    /// Serves one request; every outcome, error included, is one reply queued on the outbox.
    /// Returns a reason to disconnect when the client abuses the rate limit.
    pub async fn handle(&mut self, text: &str) -> Option<Disconnect> {
        let max_topics = self.app.settings.server.max_subscriptions_per_connection;
        let (id, request) = parse_request(text, max_topics);
        // Parsed first so that even a refused request gets its id echoed.
        let request = match (self.limit.check(), request) {
            (Verdict::Abuse, _) => return Some(Disconnect::RateLimit),
            (Verdict::Refused, _) => Err(RequestError::RateLimited),
            (Verdict::Allowed, request) => request,
        };
        match request {
            Err(e) => self.reply(Reply::error(id, &e)),
            Ok(Request::Subscribe {
                topics,
                since,
                max_rate,
                delta,
                presence_events,
            }) => {
                // Its reply, queued, says how it went.
                let _ = (self.subscribe(id, topics, since, max_rate, delta, presence_events)).await;
            }
            Ok(Request::Presence { topic }) => self.presence(id, topic).await,
            Ok(Request::Unsubscribe(topics)) => self.unsubscribe(id, &topics).await,
            Ok(Request::Publish { topic, data }) => self.publish(id, topic, data).await,
            Ok(Request::Auth { token }) => self.auth(id, &token).await,
            Ok(Request::Ping) => self.reply(Reply::Pong { id }),
        }
        None
    }

    /// Subscribes to `topics` (recovering from the `since` positions, at most `max_rate`
    /// updates a second per topic, as deltas if `delta` and deltas are enabled, with `join` and
    /// `leave` frames if `presence_events`), replying `subscribed` followed by the catch-up, or an
    /// error, which is returned too: the whole subscribe request, ACL and limits included. A
    /// transport whose client cannot send calls it directly, and may turn a refusal into its
    /// own answer.
    pub async fn subscribe(
        &mut self,
        id: Option<i64>,
        topics: Vec<Pattern>,
        since: HashMap<Topic, Position>,
        max_rate: Option<f64>,
        delta: bool,
        presence_events: bool,
    ) -> Result<(), RequestError> {
        if let Some(denied) = self.identity.acl.first_unreadable(&topics) {
            return self.refuse(id, RequestError::forbidden(Action::Subscribe, denied));
        }
        let presence = self.app.node.presence();
        if presence_events {
            let not_room = topics
                .iter()
                .find(|t| t.as_exact().is_none_or(|topic| !presence.covers(&topic)));
            if let Some(t) = not_room {
                let e = RequestError::BadRequest(format!(
                    "presence_events needs exact topics matching presence.patterns: {:?} is not one",
                    t.as_str()
                ));
                return self.refuse(id, e);
            }
        }
        // Only a subscription that can seat the connection somewhere makes it a member.
        let rooms = topics
            .iter()
            .any(|t| t.as_exact().is_some_and(|topic| presence.covers(&topic)));
        let joining = rooms.then(|| Joining {
            member: self.member().clone(),
            events: presence_events,
        });
        let interval = match max_rate.map(Interval::from_rate) {
            None => Interval::NONE,
            Some(Some(interval)) => interval,
            Some(None) => return self.refuse(id, RequestError::BadRequest("max_rate out of range".into())),
        };
        // A queue topic delivers every message: a max rate there would be a silent loss.
        let rules = self.app.node.hub().rules();
        if let Some(queued) =
            max_rate.and_then(|_| topics.iter().find_map(|t| rules.may_queue(t).map(|q| (t, q))))
        {
            let (topic, policy) = queued;
            let e = RequestError::BadRequest(format!(
                "max_rate cannot apply to {topic:?}: topics matching {policy:?} have the \"queue\" policy, which delivers every message"
            ));
            return self.refuse(id, e);
        }
        // The node gets each pattern once (a repeat would walk its topics again for nothing);
        // the reply echoes the request as sent.
        let unique = distinct(&topics);
        let new: Vec<Pattern> = (unique.iter())
            .filter(|t| !self.subscriptions.contains(*t))
            .cloned()
            .collect();
        let limit = self.app.settings.server.max_subscriptions_per_connection;
        if self.subscriptions.len() + new.len() > limit {
            return self.refuse(id, RequestError::TooManySubscriptions(limit));
        }
        let reply = |done: Result<&Subscribed, &RequestError>| match done {
            Ok(done) => Reply::Subscribed {
                id,
                topics: &topics,
                positions: &done.positions,
                recovered: &done.recovered,
                truncated: done.truncated,
            }
            .frame(),
            Err(e) => Reply::error(id, e).frame(),
        };
        let terms = Terms {
            interval,
            delta: delta && self.app.settings.delta.enabled,
        };
        let subscribed = (self.app.node).subscribe(self.who, &unique, &new, &since, terms, joining, reply);
        subscribed.await?;
        self.subscriptions.extend(topics);
        Ok(())
    }

    async fn unsubscribe(&mut self, id: Option<i64>, topics: &[Pattern]) {
        let unique = distinct(topics);
        let held: Vec<Pattern> = (unique.iter())
            .filter(|t| self.subscriptions.contains(*t))
            .cloned()
            .collect();
        self.app.node.unsubscribe(self.who, &unique, &held).await;
        // Forgotten only once the node is done: a connection that ends in between still ends
        // them all (`close`).
        for t in &held {
            self.subscriptions.remove(t);
        }
        self.reply(Reply::Unsubscribed { id, topics });
    }

    async fn publish(&mut self, id: Option<i64>, topic: Topic, data: Data) {
        if !self.identity.acl.may_publish(&topic) {
            let e = RequestError::forbidden(Action::Publish, &topic);
            return self.reply(Reply::error(id, &e));
        }
        let published = (self.app.node)
            .publish(&[(topic.clone(), data)], Source::Client)
            .await;
        match published {
            Ok(seqs) => self.reply(Reply::Published {
                id,
                topic: &topic,
                seq: seqs[0],
            }),
            Err(e) => self.reply(Reply::error(id, &e)),
        }
    }

    /// The connection as a presence member (see `member`).
    fn member(&mut self) -> &Arc<Member> {
        let (presence, who, identity) = (self.app.node.presence(), self.who.id, &self.identity);
        self.member.get_or_insert_with(|| {
            presence.member(who, identity.subject.as_deref(), identity.info.as_deref())
        })
    }

    /// Replies with who is in `topic`'s room: for a client that may subscribe to it.
    async fn presence(&mut self, id: Option<i64>, topic: Topic) {
        let pattern = Pattern::parse(topic.as_str()).expect("a topic is an exact pattern");
        if !self.identity.acl.may_subscribe(&pattern) {
            let e = RequestError::forbidden(Action::Presence, &topic);
            return self.reply(Reply::error(id, &e));
        }
        let presence = self.app.node.presence();
        if !presence.covers(&topic) {
            let e = RequestError::BadRequest(format!(
                "{:?} is not a presence room (presence.patterns)",
                topic.as_str()
            ));
            return self.reply(Reply::error(id, &e));
        }
        match presence.room(&topic).await {
            Ok(room) => {
                // A reply must fit the connection's queue (replies are never conflated): the
                // listed members stop at half of it, `count` stays exact.
                let mut budget = self.app.settings.queue.max_bytes / 2;
                let members: Vec<&RawValue> = (room.members.iter())
                    .map(|m| m.json())
                    .take_while(|m| match budget.checked_sub(m.get().len() + 1) {
                        Some(left) => {
                            budget = left;
                            true
                        }
                        None => false,
                    })
                    .collect();
                self.reply(Reply::Presence {
                    id,
                    topic: &topic,
                    members: &members,
                    count: room.count,
                })
            }
            Err(e) => self.reply(Reply::error(id, &e)),
        }
    }

    async fn auth(&mut self, id: Option<i64>, token: &str) {
        match self.refresh(token).await {
            Ok(dropped) => self.reply(Reply::Authed {
                id,
                dropped: &dropped,
            }),
            Err(e) => self.reply(Reply::error(id, &e)),
        }
    }

    /// Replaces the connection's identity with the one `token` gives, and drops (from the hub
    /// first, so nothing more is queued through them) the subscriptions it no longer allows.
    /// A refused token changes nothing: the current one stays in force until it expires.
    async fn refresh(&mut self, token: &str) -> Result<Vec<Pattern>, RequestError> {
        let identity = (self.app.auth.refresh(&self.identity, token))
            .ok_or_else(|| RequestError::BadRequest("no tokens in use (auth.mode = \"none\")".into()))??;
        let mut dropped: Vec<Pattern> = (self.subscriptions.iter())
            .filter(|s| !identity.acl.may_subscribe(s))
            .cloned()
            .collect();
        dropped.sort();
        self.app.node.unsubscribe(self.who, &dropped, &dropped).await;
        for s in &dropped {
            self.subscriptions.remove(s);
        }
        self.expiry.expire_at(identity.expires);
        self.identity = identity;
        self.member = None;
        Ok(dropped)
    }

    fn reply(&self, reply: Reply<'_>) {
        self.who.outbox.push(reply.frame());
    }

    /// Replies with the error `e`, and returns it.
    fn refuse(&self, id: Option<i64>, e: RequestError) -> Result<(), RequestError> {
        self.reply(Reply::error(id, &e));
        Err(e)
    }

    /// The subscriptions the client still holds, for a transport that ends them elsewhere
    /// (the reaper, through [`Node::unsubscribe_blocking`]).
    pub fn into_subscriptions(mut self) -> Vec<Pattern> {
        self.subscriptions.drain().collect()
    }

    /// Ends every subscription the client still holds: for the transport, once the connection
    /// has ended.
    pub async fn close(mut self) {
        let subscriptions: Vec<Pattern> = self.subscriptions.drain().collect();
        (self.app.node)
            .unsubscribe(self.who, &subscriptions, &subscriptions)
            .await;
    }
}

/// `patterns` without repeats, in their first order.
fn distinct(patterns: &[Pattern]) -> Vec<Pattern> {
    let mut seen = HashSet::with_capacity(patterns.len());
    (patterns.iter()).filter(|p| seen.insert(*p)).cloned().collect()
}
