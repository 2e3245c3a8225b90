//! tickwire protocol v1 as the load client needs it: recognising server messages without a
//! full JSON parse, and building subscribe requests and publish bodies. Where a full parse is
//! fine (publish replies, off the receive path) it uses the shared types of `tickwire-proto`.
//!
//! The server writes `update`/`snapshot` frames with a fixed field order
//! (`{"type":..,"topic":..,"seq":..,"ts":..,"data":..}`), and the publisher embeds its send time
//! as the first field of `data` (`{"t":<µs since epoch>,"pad":"…"}`), so a message is classified
//! with a few substring searches on the received bytes.

use std::io::Write;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use tickwire_proto::{Published, PublishedBatch};

/// A server message, borrowed from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    Update {
        topic: &'a [u8],
        seq: u64,
        /// The publisher's send time (µs since the epoch), when `data` carries one.
        sent_us: Option<u64>,
    },
    Snapshot {
        topic: &'a [u8],
        seq: u64,
    },
    /// A `subscribed` reply (the whole frame, for [`parse_subscribed`] when positions matter).
    Subscribed(&'a [u8]),
    Error(&'a [u8]),
    /// Any other reply type (pong, unsubscribed, published).
    Other,
    /// Not a message this client understands.
    Unparsed,
}

static TOPIC: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""topic":""#));
static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""seq":"#));
static DATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""data":"#));
static T: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br#""t":"#));

const TYPE_PREFIX: &[u8] = br#"{"type":""#;

/// The unsigned integer at the start of `p`.
pub(crate) fn digits(p: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &c in p {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        n += 1;
    }
    (n > 0).then_some(v)
}

/// The unsigned integer right after `key` (searched from `from`), and where the search stopped.
fn number_after(p: &[u8], finder: &Finder<'_>, from: usize) -> Option<(u64, usize)> {
    let at = from + finder.find(&p[from..])? + finder.needle().len();
    Some((digits(&p[at..])?, at))
}

/// Classifies one text message from the server.
pub fn classify(p: &[u8]) -> ServerMsg<'_> {
    let Some(rest) = p.strip_prefix(TYPE_PREFIX) else {
        return ServerMsg::Unparsed;
    };
    let Some(end) = memchr::memchr(b'"', rest) else {
        return ServerMsg::Unparsed;
    };
    let kind = &rest[..end];
    match kind {
        b"update" | b"snapshot" => {}
        b"subscribed" => return ServerMsg::Subscribed(p),
        b"error" => return ServerMsg::Error(p),
        _ => return ServerMsg::Other,
    }
    let body = &rest[end..];
    let Some(t) = TOPIC.find(body) else {
        return ServerMsg::Unparsed;
    };
    let name_at = t + TOPIC.needle().len();
    let Some(name_len) = memchr::memchr(b'"', &body[name_at..]) else {
        return ServerMsg::Unparsed;
    };
    let topic = &body[name_at..name_at + name_len];
    let after_topic = name_at + name_len;
    let Some((seq, at)) = number_after(body, &SEQ, after_topic) else {
        return ServerMsg::Unparsed;
    };
    if kind == b"snapshot" {
        return ServerMsg::Snapshot { topic, seq };
    }
    let sent_us = DATA
        .find(&body[at..])
        .and_then(|d| number_after(body, &T, at + d).map(|(t, _)| t));
    ServerMsg::Update { topic, seq, sent_us }
}

/// What a subscribe asks for beyond plain delivery (docs/protocol.md §4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SubscribeOptions {
    /// `"max_rate"`: at most this many updates a second per topic.
    pub max_rate: Option<f64>,
    /// `"delta":"fossil"`: updates may come as Fossil deltas of the previous frame's data.
    pub delta: bool,
}

/// `{"op":"subscribe","topics":[...]}`, with the options that are set.
pub fn subscribe_request<S: AsRef<str>>(topics: &[S], options: &SubscribeOptions) -> Vec<u8> {
    let names: Vec<&str> = topics.iter().map(AsRef::as_ref).collect();
    let mut request = serde_json::json!({"op": "subscribe", "topics": names});
    if let Some(rate) = options.max_rate {
        request["max_rate"] = rate.into();
    }
    if options.delta {
        request["delta"] = "fossil".into();
    }
    serde_json::to_vec(&request).expect("serializing JSON to a Vec cannot fail")
}

/// Where a topic's stream stands, from a `subscribed` reply's `positions`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Position {
    pub seq: u64,
    pub epoch: String,
}

/// What a `subscribed` reply says about the topics it matched (a full parse: once per
/// subscribe, off the update path).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Subscribed {
    #[serde(default)]
    pub positions: std::collections::HashMap<String, Position>,
    /// Per topic named in `since`: recovered (`true`) or reset (`false`).
    #[serde(default)]
    pub recovered: std::collections::HashMap<String, bool>,
}

pub fn parse_subscribed(p: &[u8]) -> anyhow::Result<Subscribed> {
    Ok(serde_json::from_slice(p)?)
}

/// `{"op":"subscribe","topics":[...],"since":{topic:{"seq":N,"epoch":E},...}}`: a subscribe that
/// recovers from the positions the client has (protocol.md §4.5).
pub fn subscribe_since_request<S: AsRef<str>>(topics: &[S], since: &[(String, u64, &str)]) -> Vec<u8> {
    let names: Vec<&str> = topics.iter().map(AsRef::as_ref).collect();
    let since: serde_json::Map<String, serde_json::Value> = (since.iter())
        .map(|(t, seq, epoch)| (t.clone(), serde_json::json!({"seq": seq, "epoch": epoch})))
        .collect();
    serde_json::to_vec(&serde_json::json!({"op": "subscribe", "topics": names, "since": since}))
        .expect("serializing JSON to a Vec cannot fail")
}

/// Appends `{"t":<sent_us>,"pad":"xxx…"}`, padded so that it is `size` bytes long (or as short as
/// possible when `size` is smaller than the unpadded object).
pub fn payload(sent_us: u64, size: usize, out: &mut Vec<u8>) {
    let start = out.len();
    write!(out, r#"{{"t":{sent_us},"pad":""#).expect("writing to a Vec cannot fail");
    let used = out.len() - start + 2;
    out.resize(out.len() + size.saturating_sub(used), b'x');
    out.extend_from_slice(b"\"}");
}

/// A batch publish body: `{"messages":[{"topic":..,"data":..},...]}`, one message per topic
/// name in `topics`, all stamped with `sent_us`.
pub fn batch_body<S: AsRef<str>>(topics: &[S], sent_us: u64, payload_bytes: usize, out: &mut Vec<u8>) {
    batch_body_with(topics, out, |out| payload(sent_us, payload_bytes, out));
}

/// [`batch_body`] with each message's `data` appended by `data`, called once per message in
/// order (the bandwidth scenario's shapes).
pub fn batch_body_with<S: AsRef<str>>(topics: &[S], out: &mut Vec<u8>, mut data: impl FnMut(&mut Vec<u8>)) {
    out.clear();
    out.extend_from_slice(br#"{"messages":["#);
    for (i, topic) in topics.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        message(topic.as_ref(), out, &mut data);
    }
    out.extend_from_slice(b"]}");
}

/// A single publish body: `{"topic":..,"data":..}`.
pub fn single_body(topic: &str, sent_us: u64, payload_bytes: usize, out: &mut Vec<u8>) {
    out.clear();
    message(topic, out, |out| payload(sent_us, payload_bytes, out));
}

/// One message of a publish body: `{"topic":..,"data":..}`, `data` appended by `data`.
fn message(topic: &str, out: &mut Vec<u8>, data: impl FnOnce(&mut Vec<u8>)) {
    // Topic names are validated as topics by the tool (`opts::check_topic_prefix`): no escaping needed.
    out.extend_from_slice(br#"{"topic":""#);
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(br#"","data":"#);
    data(out);
    out.push(b'}');
}

/// The `results` of a publish response: `(topic, seq)` per message, in order.
pub fn parse_publish_response(body: &[u8]) -> anyhow::Result<Vec<(String, u64)>> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Resp {
        Batch(PublishedBatch),
        One(Published),
    }
    let resp: Resp = serde_json::from_slice(body)?;
    Ok(match resp {
        Resp::Batch(b) => b.results.into_iter().map(|o| (o.topic, o.seq)).collect(),
        Resp::One(o) => vec![(o.topic, o.seq)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_server_frames() {
        let u = br#"{"type":"update","topic":"bench.t3","seq":42,"ts":1700,"data":{"t":1732560000123456,"pad":"xx"}}"#;
        assert_eq!(
            classify(u),
            ServerMsg::Update {
                topic: b"bench.t3",
                seq: 42,
                sent_us: Some(1732560000123456)
            }
        );
        let s = br#"{"type":"snapshot","topic":"a.b","seq":7,"ts":1,"data":{"t":5}}"#;
        assert_eq!(
            classify(s),
            ServerMsg::Snapshot {
                topic: b"a.b",
                seq: 7
            }
        );
        let no_t = br#"{"type":"update","topic":"a","seq":1,"ts":2,"data":{"price":3}}"#;
        assert_eq!(
            classify(no_t),
            ServerMsg::Update {
                topic: b"a",
                seq: 1,
                sent_us: None
            }
        );
        // the "t" of another field before `data` must not be taken for the stamp
        let ts_only = br#"{"type":"update","topic":"a","seq":1,"ts":2,"data":5}"#;
        assert!(matches!(
            classify(ts_only),
            ServerMsg::Update { sent_us: None, .. }
        ));
        assert!(matches!(
            classify(br#"{"type":"subscribed","topics":["a"]}"#),
            ServerMsg::Subscribed(_)
        ));
        assert!(matches!(
            classify(br#"{"type":"error","code":"x","message":"y"}"#),
            ServerMsg::Error(_)
        ));
        assert_eq!(classify(br#"{"type":"pong"}"#), ServerMsg::Other);
        assert_eq!(classify(b"hello"), ServerMsg::Unparsed);
        assert_eq!(
            classify(br#"{"type":"update","topic":"a","seq":"x"}"#),
            ServerMsg::Unparsed
        );
    }

    #[test]
    fn payload_is_padded_json() {
        for size in [0usize, 20, 100, 1000] {
            let mut v = Vec::new();
            payload(1732560000000000, size, &mut v);
            if size >= 40 {
                assert_eq!(v.len(), size);
            }
            let j: serde_json::Value = serde_json::from_slice(&v).unwrap();
            assert_eq!(j["t"], 1732560000000000u64);
        }
    }

    #[test]
    fn bodies_are_valid_json() {
        let mut b = Vec::new();
        batch_body(&["bench.t0", "bench.t1"], 99, 100, &mut b);
        let j: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(j["messages"][1]["topic"], "bench.t1");
        assert_eq!(j["messages"][1]["data"]["t"], 99);
        assert_eq!(j["messages"][1]["data"].to_string().len(), 100);
        single_body("bench.t0", 7, 100, &mut b);
        let j: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(j["data"]["t"], 7);
        let plain = SubscribeOptions::default();
        let req: serde_json::Value = serde_json::from_slice(&subscribe_request(&["a", "b"], &plain)).unwrap();
        assert_eq!(req, serde_json::json!({"op":"subscribe","topics":["a","b"]}));
        let both = SubscribeOptions {
            max_rate: Some(0.5),
            delta: true,
        };
        let req: serde_json::Value = serde_json::from_slice(&subscribe_request(&["a"], &both)).unwrap();
        assert_eq!(
            req,
            serde_json::json!({"op":"subscribe","topics":["a"],"max_rate":0.5,"delta":"fossil"})
        );
        let mut b = Vec::new();
        let mut n = 0;
        batch_body_with(&["x", "y"], &mut b, |out| {
            n += 1;
            out.extend_from_slice(format!("[{n}]").as_bytes());
        });
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            r#"{"messages":[{"topic":"x","data":[1]},{"topic":"y","data":[2]}]}"#
        );
    }

    #[test]
    fn subscribed_replies_and_recovery_requests() {
        let r = parse_subscribed(
            br#"{"type":"subscribed","id":1,"topics":["a.*"],"positions":{"a.b":{"seq":43,"epoch":"k3"}},"recovered":{"a.b":true}}"#,
        )
        .unwrap();
        assert_eq!(
            r.positions["a.b"],
            Position {
                seq: 43,
                epoch: "k3".into()
            }
        );
        assert!(r.recovered["a.b"]);
        let plain = parse_subscribed(br#"{"type":"subscribed","topics":["x"]}"#).unwrap();
        assert_eq!(plain, Subscribed::default());
        let req = subscribe_since_request(&["a.*"], &[("a.b".into(), 40, "k3")]);
        let j: serde_json::Value = serde_json::from_slice(&req).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"op":"subscribe","topics":["a.*"],"since":{"a.b":{"seq":40,"epoch":"k3"}}})
        );
    }

    #[test]
    fn publish_responses() {
        let r =
            parse_publish_response(br#"{"results":[{"topic":"a","seq":1},{"topic":"b","seq":9}]}"#).unwrap();
        assert_eq!(r, vec![("a".to_string(), 1), ("b".to_string(), 9)]);
        let r = parse_publish_response(br#"{"topic":"a","seq":3}"#).unwrap();
        assert_eq!(r, vec![("a".to_string(), 3)]);
        assert!(parse_publish_response(br#"{"error":{"code":"x"}}"#).is_err());
    }
}
