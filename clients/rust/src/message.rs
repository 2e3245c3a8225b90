//! Typed messages: what the application receives, and the wire frames (protocol v1) behind them.
//! The server's messages themselves (`Update`, `Subscribed`, `Position`...) are the shared
//! definitions of `tickwire-proto`; this module adds the client's events, its requests and the
//! dispatch of a received frame.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
pub use tickwire_proto::{Kind, Position, Published, Subscribed, Unsubscribed, Update};

use crate::error::Error;
use crate::options::SubscribeOptions;
use crate::presence::{Change, Member, Presence};

/// What happens on a client, in order: the stream [`Events`](crate::Events) yields, and what
/// the [`ClientBuilder`](crate::ClientBuilder) callbacks receive.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection opened (the first one, or a reconnect). Re-subscription follows.
    Open,
    /// A publication: live, or replayed after a reconnect.
    Update(Update),
    /// A topic's latest value, after subscribing or after a [`Event::Reset`].
    Snapshot(Update),
    /// The client could not recover `topic`'s missed publications after a reconnect (history
    /// expired, or the server restarted): the topic's stream starts over with the snapshot that
    /// follows (when the topic has a value) or its next update.
    Reset {
        /// The topic.
        topic: String,
    },
    /// The connection closed: the server's close code and reason, 1006 when it was lost without
    /// a close frame, 1000 when the client closed it. A reconnect follows unless the client is
    /// closed or reconnecting is disabled; the stream ends when the client is done.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// A problem nobody awaits: a failed reconnect attempt, an error reply to a request whose
    /// caller stopped waiting (or used [`Client::publish_nowait`](crate::Client::publish_nowait)),
    /// a failed re-subscription, or a malformed frame from the server.
    Error(Error),
    /// A subscription the client retries on its own changed state: the server refused it with
    /// a transient error (`unavailable`: a cluster node without Redis; `rate_limited`), so it
    /// is [`SubscriptionState::Retrying`], then [`SubscriptionState::Subscribed`] once a retry
    /// is accepted, or [`SubscriptionState::Failed`] when a retry is refused for good.
    /// Subscriptions accepted (or refused for good) at the first try report nothing here: their
    /// caller has the reply.
    Subscription {
        /// The subscriptions (topics or patterns) of the refused request, as requested.
        topics: Vec<String>,
        /// Their new state.
        state: SubscriptionState,
    },
    /// `member` joined `topic`: a `join` frame of a subscription made with
    /// [`SubscribeOptions::presence_events`], in order with the topic's updates.
    Join {
        /// The topic.
        topic: String,
        /// Who joined.
        member: Member,
    },
    /// `member` left `topic` (unsubscribed, disconnected, or its node stopped answering for
    /// `presence.ttl`); see [`Event::Join`].
    Leave {
        /// The topic.
        topic: String,
        /// Who left.
        member: Member,
    },
}

/// The state of subscriptions the client retries, reported by [`Event::Subscription`].
#[derive(Debug)]
#[non_exhaustive]
pub enum SubscriptionState {
    /// Refused with a transient error; the next attempt is made after `delay` (or at once
    /// after a reconnect). Stops on [`Client::unsubscribe`](crate::Client::unsubscribe) or
    /// [`Client::close`](crate::Client::close).
    Retrying {
        /// The refusal, an [`Error::Server`] with code `unavailable` or `rate_limited`.
        error: Error,
        /// The number of the coming retry: 1 after the first refusal.
        attempt: u32,
        /// How long until that retry (backoff with full jitter, see
        /// [`ClientOptions::subscribe_retry`](crate::ClientOptions::subscribe_retry)).
        delay: Duration,
    },
    /// A retry was accepted: the subscription is active and re-established after reconnects
    /// like any other. Its snapshots (or recovered updates) follow.
    Subscribed,
    /// Refused for good: a non-transient error (e.g. `forbidden`), or the retries ran out
    /// ([`Backoff::max_attempts`](crate::Backoff::max_attempts)).
    Failed {
        /// The last refusal.
        error: Error,
    },
}

/// A request as sent on the wire.
#[derive(Serialize)]
pub(crate) struct Request<'a> {
    pub op: &'static str,
    pub id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topics: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<&'a BTreeMap<String, Position>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<f64>,
    /// `"fossil"`, the only delta format, when the subscription asks for deltas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<&'static str>,
    /// `true` when the subscription asks for `join` and `leave` frames; absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_events: Option<bool>,
}

impl<'a> Request<'a> {
    fn new(op: &'static str, id: i64) -> Request<'a> {
        Request {
            op,
            id,
            topics: None,
            topic: None,
            data: None,
            since: None,
            max_rate: None,
            delta: None,
            presence_events: None,
        }
    }

    pub fn subscribe(
        id: i64,
        topics: &'a [String],
        since: &'a BTreeMap<String, Position>,
        options: SubscribeOptions,
    ) -> Request<'a> {
        Request {
            topics: Some(topics),
            since: (!since.is_empty()).then_some(since),
            max_rate: options.max_rate,
            delta: options.delta.then_some("fossil"),
            presence_events: options.presence_events.then_some(true),
            ..Request::new("subscribe", id)
        }
    }

    pub fn unsubscribe(id: i64, topics: &'a [String]) -> Request<'a> {
        Request {
            topics: Some(topics),
            ..Request::new("unsubscribe", id)
        }
    }

    pub fn publish(id: i64, topic: &'a str, data: &'a RawValue) -> Request<'a> {
        Request {
            topic: Some(topic),
            data: Some(data),
            ..Request::new("publish", id)
        }
    }

    pub fn presence(id: i64, topic: &'a str) -> Request<'a> {
        Request {
            topic: Some(topic),
            ..Request::new("presence", id)
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("requests always serialize")
    }
}

/// A frame from the server.
#[derive(Debug)]
pub(crate) enum Frame {
    Subscribed(Option<i64>, Subscribed),
    Unsubscribed(Option<i64>, Unsubscribed),
    Published(Option<i64>, Published),
    Pong,
    Error {
        id: Option<i64>,
        code: String,
        message: String,
    },
    Delivery(Update),
    /// An `update` carrying a delta in place of its `data`.
    Delta(DeltaUpdate),
    Presence(Option<i64>, Presence),
    Join(Change),
    Leave(Change),
}

/// An `update` frame of a `"delta":"fossil"` subscription whose `delta` turns the topic's
/// previous data (seq - 1) into this one's (docs/protocol.md §4.1).
#[derive(Debug, Deserialize)]
pub(crate) struct DeltaUpdate {
    pub topic: String,
    pub seq: u64,
    pub ts: u64,
    pub delta: String,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default)]
    id: Option<i64>,
    /// Only whether there is one: a delta frame has no `data` to parse into an [`Update`].
    #[serde(default)]
    delta: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

impl Frame {
    /// Parses a text frame; anything unexpected is an [`Error::Protocol`].
    pub fn parse(text: &str) -> Result<Frame, Error> {
        let bad = |e: serde_json::Error| {
            let shown: String = text.chars().take(200).collect();
            Error::Protocol(format!("malformed frame ({e}): {shown}"))
        };
        let head: Head<'_> = serde_json::from_str(text).map_err(bad)?;
        let id = head.id;
        Ok(match &*head.kind {
            "update" if head.delta.is_some() => Frame::Delta(serde_json::from_str(text).map_err(bad)?),
            "update" | "snapshot" => Frame::Delivery(serde_json::from_str(text).map_err(bad)?),
            "subscribed" => Frame::Subscribed(id, serde_json::from_str(text).map_err(bad)?),
            "unsubscribed" => Frame::Unsubscribed(id, serde_json::from_str(text).map_err(bad)?),
            "published" => Frame::Published(id, serde_json::from_str(text).map_err(bad)?),
            "pong" => Frame::Pong,
            "presence" => Frame::Presence(id, serde_json::from_str(text).map_err(bad)?),
            "join" => Frame::Join(serde_json::from_str(text).map_err(bad)?),
            "leave" => Frame::Leave(serde_json::from_str(text).map_err(bad)?),
            "error" => {
                let ErrorBody { code, message } = serde_json::from_str(text).map_err(bad)?;
                Frame::Error { id, code, message }
            }
            other => {
                let other: String = other.chars().take(64).collect();
                return Err(Error::Protocol(format!("unknown frame type {other:?}")));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode() {
        let topics = vec!["a.*".to_string()];
        let none = BTreeMap::new();
        let plain = SubscribeOptions::default();
        assert_eq!(
            Request::subscribe(1, &topics, &none, plain).encode(),
            r#"{"op":"subscribe","id":1,"topics":["a.*"]}"#
        );
        let options = SubscribeOptions::default().max_rate(0.5).delta(true);
        assert_eq!(
            Request::subscribe(1, &topics, &none, options).encode(),
            r#"{"op":"subscribe","id":1,"topics":["a.*"],"max_rate":0.5,"delta":"fossil"}"#
        );
        let options = SubscribeOptions::default().presence_events(true);
        assert_eq!(
            Request::subscribe(1, &topics, &none, options).encode(),
            r#"{"op":"subscribe","id":1,"topics":["a.*"],"presence_events":true}"#
        );
        let since = BTreeMap::from([(
            "a.b".to_string(),
            Position {
                seq: 40,
                epoch: "k3j2".into(),
            },
        )]);
        assert_eq!(
            Request::subscribe(2, &topics, &since, plain).encode(),
            r#"{"op":"subscribe","id":2,"topics":["a.*"],"since":{"a.b":{"seq":40,"epoch":"k3j2"}}}"#
        );
        let data = RawValue::from_string(r#"{"p": 1.50}"#.into()).unwrap();
        assert_eq!(
            Request::publish(3, "chat.x", &data).encode(),
            r#"{"op":"publish","id":3,"topic":"chat.x","data":{"p": 1.50}}"#
        );
        assert_eq!(
            Request::unsubscribe(4, &topics).encode(),
            r#"{"op":"unsubscribe","id":4,"topics":["a.*"]}"#
        );
    }

    #[test]
    fn frames_parse() {
        let f =
            Frame::parse(r#"{"type":"update","topic":"prices.BTC","seq":42,"ts":1700,"data":{"p": 1.50}}"#);
        let Ok(Frame::Delivery(u)) = f else {
            panic!("{f:?}")
        };
        assert_eq!(
            (u.kind, u.topic.as_str(), u.seq, u.ts),
            (Kind::Update, "prices.BTC", 42, 1700)
        );
        assert_eq!(u.data.get(), r#"{"p": 1.50}"#, "data is kept byte for byte");
        assert_eq!(
            serde_json::to_string(&u).unwrap(),
            r#"{"type":"update","topic":"prices.BTC","seq":42,"ts":1700,"data":{"p": 1.50}}"#
        );
        let f = Frame::parse(
            r#"{"type":"subscribed","id":1,"topics":["a.*"],"positions":{"a.b":{"seq":40,"epoch":"k3j2"}},"recovered":{"a.b":true}}"#,
        );
        let Ok(Frame::Subscribed(Some(1), s)) = f else {
            panic!("{f:?}")
        };
        assert_eq!(&*s.positions["a.b"].epoch, "k3j2");
        assert!(s.recovered["a.b"]);
        let f = Frame::parse(r#"{"type":"subscribed","topics":["x"]}"#);
        assert!(matches!(f, Ok(Frame::Subscribed(None, s)) if s.positions.is_empty()));
        let f = Frame::parse(r#"{"type":"error","id":3,"code":"forbidden","message":"no"}"#);
        assert!(matches!(f, Ok(Frame::Error { id: Some(3), code, .. }) if code == "forbidden"));
        let f = Frame::parse(r#"{"type":"published","id":3,"topic":"chat.x","seq":7}"#);
        assert!(matches!(f, Ok(Frame::Published(Some(3), p)) if p.seq == 7));
        assert!(matches!(
            Frame::parse(r#"{"type":"pong","id":9}"#),
            Ok(Frame::Pong)
        ));
        let f =
            Frame::parse(r#"{"type":"update","topic":"doc.7","seq":43,"ts":1700,"delta":"3\n3@0,2O8XE;"}"#);
        let Ok(Frame::Delta(d)) = f else { panic!("{f:?}") };
        assert_eq!(
            (d.topic.as_str(), d.seq, d.ts, d.delta.as_str()),
            ("doc.7", 43, 1700, "3\n3@0,2O8XE;")
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for bad in [
            "",
            "nope",
            "[1]",
            "{}",
            r#"{"type":5}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"update","topic":"a"}"#,
            r#"{"type":"update","topic":"a","seq":-1,"ts":1,"data":1}"#,
            r#"{"type":"subscribed","id":"x","topics":[]}"#,
            r#"{"type":"error","id":1}"#,
            r#"{"type":"published","id":1,"topic":"a","seq":1.5}"#,
            r#"{"type":"update","topic":"a","seq":2,"ts":1,"delta":5}"#,
            r#"{"type":"update","topic":"a","ts":1,"delta":"1\n"}"#,
        ] {
            assert!(matches!(Frame::parse(bad), Err(Error::Protocol(_))), "{bad:?}");
        }
    }
}
