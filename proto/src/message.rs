//! What the server sends a client, as owned, parseable types: positions, deliveries (`update`
//! and `snapshot` frames) and the replies a client waits for.
//!
//! These are the shapes clients parse. The server does not serialise through them: it writes
//! the same JSON from borrowing types of its own (`tickwire::protocol`), tuned for the hot path
//! (an update is encoded once per publication, for every subscriber). Both sides are held to the
//! same bytes by tests: the server's assert its exact frames, these round-trip them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A place in a topic's stream: a seq, valid within the topic's epoch.
///
/// Epochs change when the server restarts (or forgets an idle topic), and seqs of different
/// epochs are unrelated. A client sends the positions it has in a subscribe's `since`; the
/// server reports every matched topic's position in its `subscribed` reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The last seq (0: nothing published yet).
    pub seq: u64,
    /// The topic's epoch. Shared, not copied: the server hands the same epoch to every reply.
    pub epoch: Arc<str>,
}

/// Whether a delivered publication is a live (or recovered) update or a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A publication, delivered live or replayed after a reconnect.
    Update,
    /// The topic's latest value, sent when subscribing without (successful) recovery.
    Snapshot,
}

/// A publication delivered on a topic: an `update` or `snapshot` frame.
///
/// Serializes back to the exact wire shape
/// `{"type":"update","topic":..,"seq":..,"ts":..,"data":..}`, with `data` byte-for-byte as the
/// server sent it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Update {
    /// Update or snapshot.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The concrete topic (never a pattern).
    pub topic: String,
    /// The publication's seq in the topic's stream.
    pub seq: u64,
    /// When the server accepted the publication, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The payload, as the publisher sent it.
    pub data: Box<RawValue>,
    /// Set only on a snapshot that resets the topic outside a subscribe reply (a cluster's
    /// broker lost the stream, or history no longer reaches back): the epoch the topic
    /// continues in. The client then tracks the topic from this snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

impl Update {
    /// Whether this is a snapshot rather than an update.
    pub fn is_snapshot(&self) -> bool {
        self.kind == Kind::Snapshot
    }

    /// Decodes the payload.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// The server's reply to a subscribe request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The subscriptions (topics or patterns) as requested.
    pub topics: Vec<String>,
    /// The position of every existing topic the subscriptions match.
    #[serde(default)]
    pub positions: BTreeMap<String, Position>,
    /// For topics given in `since`: whether the missed publications were replayed.
    #[serde(default)]
    pub recovered: BTreeMap<String, bool>,
    /// The patterns matched more topics than the server's `limits.max_catch_up_topics`: some
    /// matching topics have no position here and got no snapshot, but are subscribed to.
    #[serde(default)]
    pub truncated: bool,
}

/// The server's reply to an unsubscribe request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// The subscriptions removed, as requested.
    pub topics: Vec<String>,
}

/// The server's reply to a publish: the seq the publication got. Over WebSocket a `published`
/// frame; over HTTP the body of a single publish, and each entry of [`PublishedBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The topic published to.
    pub topic: String,
    /// The publication's seq.
    pub seq: u64,
}

/// The HTTP reply to a batch publish (`{"messages":[...]}`): one result per message, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedBatch {
    /// The seq each message got, in the order of the request.
    pub results: Vec<Published>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_round_trip_byte_for_byte() {
        for frame in [
            r#"{"type":"update","topic":"prices.BTC","seq":42,"ts":1700,"data":{"p": 1.50}}"#,
            r#"{"type":"snapshot","topic":"a.b","seq":7,"ts":1,"data":null,"epoch":"k3j2"}"#,
        ] {
            let u: Update = serde_json::from_str(frame).unwrap();
            assert_eq!(serde_json::to_string(&u).unwrap(), frame);
        }
    }

    #[test]
    fn replies_parse() {
        let s: Subscribed = serde_json::from_str(
            r#"{"type":"subscribed","id":1,"topics":["a.*"],"positions":{"a.b":{"seq":40,"epoch":"k3j2"}},"recovered":{"a.b":true}}"#,
        )
        .unwrap();
        assert_eq!(
            s.positions["a.b"],
            Position {
                seq: 40,
                epoch: "k3j2".into()
            }
        );
        assert!(s.recovered["a.b"]);
        let b: PublishedBatch =
            serde_json::from_str(r#"{"results":[{"topic":"a","seq":1},{"topic":"b","seq":9}]}"#).unwrap();
        assert_eq!(
            b.results[1],
            Published {
                topic: "b".into(),
                seq: 9
            }
        );
    }
}
