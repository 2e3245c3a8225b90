//! How a publication becomes the bytes a subscriber receives: the one place that decides the
//! frame of an `update`, a `snapshot` and a reset `snapshot` for a class of subscribers.
//!
//! The hub encodes each publication once per [`Encoding`] and shares the resulting `Bytes`
//! with every subscriber of that class (one allocation per publication, none per delivery).
//! Today there is one class, JSON text frames. A new encoding (compressed or delta frames) is a
//! new variant here, chosen per subscriber at subscribe time; the hub's fan-out stays the same:
//! it encodes once per class present, not once per subscriber.

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::protocol::wire;
use crate::topic::Topic;

/// The format a class of subscribers receives publications in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Encoding {
    /// Protocol v1: one JSON object per WebSocket text frame, `data` passed through raw.
    #[default]
    Json,
}

impl Encoding {
    /// An `update` frame: a live publication.
    pub fn update_frame(self, topic: &Topic, seq: u64, ts: u64, data: &RawValue) -> Bytes {
        match self {
            Encoding::Json => json_delivery("update", topic, seq, ts, data, None),
        }
    }

    /// A `snapshot` frame: the last value, sent when a subscription starts.
    pub fn snapshot_frame(self, topic: &Topic, seq: u64, ts: u64, data: &RawValue) -> Bytes {
        match self {
            Encoding::Json => json_delivery("snapshot", topic, seq, ts, data, None),
        }
    }

    /// An `update` frame whose `delta` (a Fossil delta, `tickwire_proto::fossil`) turns the
    /// previous publication's data into this one's, in place of `data`.
    pub fn delta_frame(self, topic: &Topic, seq: u64, ts: u64, delta: &str) -> Bytes {
        match self {
            Encoding::Json => wire::json_frame(&DeltaDelivery {
                kind: "update",
                topic,
                seq,
                ts,
                delta,
            }),
        }
    }

    /// A `snapshot` outside any subscribe reply: the topic's stream could not be continued (a
    /// cluster's broker lost it, or missed publications left history), so the client must
    /// replace what it has with this value and track the topic from this seq, in this epoch.
    pub fn reset_frame(self, topic: &Topic, seq: u64, ts: u64, data: &RawValue, epoch: &str) -> Bytes {
        match self {
            Encoding::Json => json_delivery("snapshot", topic, seq, ts, data, Some(epoch)),
        }
    }
}

/// An `update` or `snapshot` frame: a publication as clients receive it. `data` comes last,
/// as the published text: a client applying deltas takes its base from the frame's text,
/// everything after `"data":` but the closing brace (docs/protocol.md §4.1), so that no
/// re-encoding can change a byte of it.
#[derive(Serialize)]
struct Delivery<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    topic: &'a Topic,
    seq: u64,
    ts: u64,
    /// Only on a reset: the epoch the topic's stream continues in.
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<&'a str>,
    data: &'a RawValue,
}

/// An `update` frame carrying a delta in place of `data`.
#[derive(Serialize)]
struct DeltaDelivery<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    topic: &'a Topic,
    seq: u64,
    ts: u64,
    delta: &'a str,
}

fn json_delivery(
    kind: &'static str,
    topic: &Topic,
    seq: u64,
    ts: u64,
    data: &RawValue,
    epoch: Option<&str>,
) -> Bytes {
    wire::json_frame(&Delivery {
        kind,
        topic,
        seq,
        ts,
        data,
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::EPOCH_LEN;

    #[test]
    fn frames_add_at_most_the_envelope_to_their_data() {
        use crate::settings::FRAME_ENVELOPE_BYTES;
        let topic = Topic::parse(&"t".repeat(crate::topic::MAX_TOPIC_BYTES)).unwrap();
        let data = RawValue::from_string(format!("\"{}\"", "x".repeat(70_000))).unwrap();
        let json = Encoding::Json;
        for frame in [
            json.update_frame(&topic, u64::MAX, u64::MAX, &data),
            json.snapshot_frame(&topic, u64::MAX, u64::MAX, &data),
            json.reset_frame(&topic, u64::MAX, u64::MAX, &data, &"e".repeat(EPOCH_LEN)),
        ] {
            assert!(
                frame.len() <= data.get().len() + FRAME_ENVELOPE_BYTES,
                "{}",
                frame.len()
            );
        }
    }

    #[test]
    fn frames_are_exact() {
        let t = Topic::parse("prices.BTC").unwrap();
        let data = RawValue::from_string(r#"{"p": 1.50}"#.into()).unwrap();
        let f = Encoding::Json.update_frame(&t, 42, 1700, &data);
        assert_eq!(
            &f[2..],
            br#"{"type":"update","topic":"prices.BTC","seq":42,"ts":1700,"data":{"p": 1.50}}"#
        );
    }
}
