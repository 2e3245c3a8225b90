//! The JSON wire format (protocol v1): requests clients send, and the frames the server sends.
//!
//! Parsing turns text into validated [`Request`]s or a [`RequestError`]; nothing past this
//! module sees raw JSON. `data` payloads stay raw (`RawValue`): they are passed through
//! byte-for-byte and never re-encoded. Every string field accepts JSON escapes ([`Text`]).

pub mod deflate;
pub mod disconnect;
pub mod encoding;
pub mod error;
mod fields;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::protocol::error::RequestError;
use crate::protocol::fields::{bad, envelope, field, topic, Entries, Envelope, Text};
use crate::topic::{Pattern, Topic};

/// A publication's payload: any JSON value, kept as its original text.
pub type Data = Arc<RawValue>;

/// Length of a topic epoch: random alphanumerics, fixed when the topic's stream starts.
pub const EPOCH_LEN: usize = 6;

/// A fresh random epoch, for a topic's stream that starts (in the hub, or in Redis when it
/// lost the topic).
pub(crate) fn new_epoch() -> Arc<str> {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), EPOCH_LEN).into()
}

/// A place in a topic's stream (seq + epoch): shared with the clients (`tickwire-proto`). Here,
/// below `history` and the hub, because the `since` of a subscribe request carries it.
pub use tickwire_proto::Position;

/// A validated client request.
#[derive(Debug)]
pub enum Request {
    Subscribe {
        topics: Vec<Pattern>,
        /// Positions the client already has, per concrete topic, for recovery.
        since: HashMap<Topic, Position>,
        /// At most this many updates a second per topic (within `tickwire_proto::rate`).
        max_rate: Option<f64>,
        /// Updates may come as Fossil deltas (`"delta":"fossil"`).
        delta: bool,
        /// `join`/`leave` frames for the presence rooms among `topics`.
        presence_events: bool,
    },
    /// Who is in a presence room.
    Presence {
        topic: Topic,
    },
    Unsubscribe(Vec<Pattern>),
    Publish {
        topic: Topic,
        data: Data,
    },
    /// Replaces the connection's token (and so its ACL) before the current one expires.
    Auth {
        token: String,
    },
    Ping,
}

fn data(raw: Option<&RawValue>) -> Result<Data, RequestError> {
    let raw = raw.ok_or_else(|| bad("missing field `data`"))?;
    Ok(Arc::from(raw.to_owned()))
}

/// Parses one client message. Returns the request `id` (when it is an integer) separately so
/// that even a failed request's error reply can echo it.
pub fn parse_request(text: &str, max_topics: usize) -> (Option<i64>, Result<Request, RequestError>) {
    let env = match envelope(text) {
        Ok(env) => env,
        Err(e) => return (None, Err(e)),
    };
    let id = match env.id.map(|raw| serde_json::from_str::<i64>(raw.get())) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return (None, Err(bad("field `id` must be an integer"))),
    };
    (id, request(&env, max_topics))
}

fn request(env: &Envelope<'_>, max_topics: usize) -> Result<Request, RequestError> {
    let op: Text<'_> = field(env.op, "op", "a string")?;
    match &*op {
        "subscribe" => Ok(Request::Subscribe {
            topics: patterns(env.topics, max_topics)?,
            since: since(env.since)?,
            max_rate: max_rate(env.max_rate)?,
            delta: delta(env.delta)?,
            presence_events: flag(env.presence_events, "presence_events")?,
        }),
        "presence" => Ok(Request::Presence {
            topic: topic(env.topic)?,
        }),
        "unsubscribe" => Ok(Request::Unsubscribe(patterns(env.topics, max_topics).map_err(
            |e| match e {
                // Unsubscribing from many is not a new subscription; it is just a too-long request.
                RequestError::TooManySubscriptions(n) => bad(format!("at most {n} topics per request")),
                e => e,
            },
        )?)),
        "publish" => Ok(Request::Publish {
            topic: topic(env.topic)?,
            data: data(env.data)?,
        }),
        "auth" => Ok(Request::Auth {
            token: field::<Text<'_>>(env.token, "token", "a string")?.0.into_owned(),
        }),
        "ping" => Ok(Request::Ping),
        other => Err(RequestError::UnknownOp(other.chars().take(64).collect())),
    }
}

fn patterns(raw: Option<&RawValue>, max_topics: usize) -> Result<Vec<Pattern>, RequestError> {
    let names: Vec<Text<'_>> = field(raw, "topics", "an array of strings")?;
    if names.is_empty() {
        return Err(bad("field `topics` must not be empty"));
    }
    if names.len() > max_topics {
        return Err(RequestError::TooManySubscriptions(max_topics));
    }
    names
        .iter()
        .map(|name| Pattern::parse(name).map_err(|e| RequestError::invalid_topic(name, e)))
        .collect()
}

fn max_rate(raw: Option<&RawValue>) -> Result<Option<f64>, RequestError> {
    use tickwire_proto::rate::{valid, MAX_RATE, MIN_RATE};
    let Some(raw) = raw else { return Ok(None) };
    match serde_json::from_str::<f64>(raw.get()) {
        Ok(rate) if valid(rate) => Ok(Some(rate)),
        _ => Err(bad(format!(
            "field `max_rate` must be a number of updates a second, from {MIN_RATE} to {MAX_RATE}"
        ))),
    }
}

fn delta(raw: Option<&RawValue>) -> Result<bool, RequestError> {
    let Some(raw) = raw else { return Ok(false) };
    match serde_json::from_str::<Text<'_>>(raw.get()) {
        Ok(kind) if &*kind == "fossil" => Ok(true),
        _ => Err(bad("field `delta` must be \"fossil\" (the only delta format)")),
    }
}

fn flag(raw: Option<&RawValue>, name: &str) -> Result<bool, RequestError> {
    let Some(raw) = raw else { return Ok(false) };
    serde_json::from_str::<bool>(raw.get()).map_err(|_| bad(format!("field `{name}` must be true or false")))
}

/// Longest accepted epoch in a `since` position; real ones are much shorter.
const MAX_EPOCH_BYTES: usize = 64;

fn since(raw: Option<&RawValue>) -> Result<HashMap<Topic, Position>, RequestError> {
    /// A position as it arrives, its epoch still in the request text.
    #[derive(serde::Deserialize)]
    struct At<'a> {
        seq: u64,
        #[serde(borrow)]
        epoch: Text<'a>,
    }
    let Some(raw) = raw else { return Ok(HashMap::new()) };
    let expected = "an object of {\"seq\": integer, \"epoch\": string} by topic";
    let Entries(entries): Entries<At> = field(Some(raw), "since", expected)?;
    let mut since = HashMap::with_capacity(entries.len());
    // Topics created together share an epoch, so a client's positions mostly name one or a
    // few: each is allocated once, not once per topic.
    let mut last: Option<Arc<str>> = None;
    for (name, at) in entries {
        let topic = Topic::parse(&name).map_err(|e| RequestError::invalid_topic(&name, e))?;
        if at.epoch.len() > MAX_EPOCH_BYTES {
            return Err(bad(format!("epoch longer than {MAX_EPOCH_BYTES} bytes")));
        }
        let epoch = match &last {
            Some(epoch) if **epoch == *at.epoch => epoch.clone(),
            _ => last.insert(Arc::from(&*at.epoch)).clone(),
        };
        // A name given twice: the last position counts, as JSON parsers commonly read it.
        since.insert(topic, Position { seq: at.seq, epoch });
    }
    Ok(since)
}

/// Parses an HTTP publish body: one `{"topic","data"}` or a batch `{"messages":[...]}`.
/// Returns the messages and whether the body was a batch. Any invalid message fails the whole
/// body, so that a batch publishes all or nothing.
pub fn parse_publish(body: &[u8]) -> Result<(Vec<(Topic, Data)>, bool), RequestError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("body is not UTF-8"))?;
    let env = envelope(text)?;
    let Some(messages) = env.messages else {
        return Ok((vec![(topic(env.topic)?, data(env.data)?)], false));
    };
    let messages: Vec<Envelope<'_>> = serde_json::from_str(messages.get()).map_err(|e| {
        bad(format!(
            "field `messages` must be an array of {{\"topic\",\"data\"}} objects: {e}"
        ))
    })?;
    let parsed = (messages.iter())
        .map(|m| Ok((topic(m.topic)?, data(m.data)?)))
        .collect::<Result<Vec<_>, RequestError>>()?;
    Ok((parsed, true))
}

/// Replies to requests, one per request.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Reply<'a> {
    Subscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        topics: &'a [Pattern],
        /// Where each matched topic's stream stands, so the client can recover from there later.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        positions: &'a BTreeMap<Topic, Position>,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        recovered: &'a BTreeMap<Topic, bool>,
        /// More topics matched than `limits.max_catch_up_topics`: some have no position here
        /// and got no snapshot (they are subscribed to all the same).
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    Unsubscribed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        topics: &'a [Pattern],
    },
    Published {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        topic: &'a Topic,
        seq: u64,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
    },
    /// A presence room: up to `presence.max_members` members, and how many there are.
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        topic: &'a Topic,
        members: &'a [&'a RawValue],
        count: usize,
    },
    /// A refreshed token was accepted; `dropped` are the subscriptions it no longer allows.
    Authed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        dropped: &'a [Pattern],
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<i64>,
        code: &'static str,
        message: String,
    },
}

impl Reply<'_> {
    pub fn error(id: Option<i64>, err: &RequestError) -> Reply<'static> {
        Reply::Error {
            id,
            code: err.code(),
            message: err.to_string(),
        }
    }

    pub fn frame(&self) -> Bytes {
        wire::json_frame_sized(self, self.size_hint())
    }

    /// About the reply's length: a `subscribed` reply names every topic it matched (hundreds of
    /// bytes for a reconnecting client), the others are short.
    fn size_hint(&self) -> usize {
        match self {
            Reply::Subscribed {
                topics,
                positions,
                recovered,
                ..
            } => {
                let names = |n: &str| n.len() + 4;
                64 + topics.iter().map(|p| names(p.as_str())).sum::<usize>()
                    + (positions.iter())
                        .map(|(t, p)| names(t.as_str()) + p.epoch.len() + 28)
                        .sum::<usize>()
                    + recovered.keys().map(|t| names(t.as_str()) + 6).sum::<usize>()
            }
            _ => 128,
        }
    }
}

/// Wall-clock milliseconds since the Unix epoch: a publication's `ts`, set when it is accepted
/// (by the hub, the Redis broker, or the feed for its quotes).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> (Option<i64>, &'static str) {
        let (id, r) = parse_request(text, 10);
        (id, r.expect_err("should fail").code())
    }

    #[test]
    fn parses_each_op() {
        let (id, r) = parse_request(r#"{"op":"subscribe","id":1,"topics":["a.b","a.*"]}"#, 10);
        assert_eq!(id, Some(1));
        assert!(
            matches!(r, Ok(Request::Subscribe { topics, since, .. }) if topics.len() == 2 && since.is_empty())
        );
        let (_, r) = parse_request(
            r#"{"op":"subscribe","topics":["a.b"],"since":{"a.b":{"seq":4,"epoch":"x"}}}"#,
            10,
        );
        match r {
            Ok(Request::Subscribe { since, .. }) => {
                assert_eq!(
                    since[&Topic::parse("a.b").unwrap()],
                    Position {
                        seq: 4,
                        epoch: "x".into()
                    }
                )
            }
            other => panic!("{other:?}"),
        }
        // Positions of one epoch share it; a name given twice keeps its last position.
        let (_, r) = parse_request(
            r#"{"op":"subscribe","topics":["a.*"],"since":{"a.b":{"seq":4,"epoch":"x"},
                "a.c":{"seq":5,"epoch":"x"},"a.b":{"seq":7,"epoch":"x"},"a.d":{"seq":6,"epoch":"y"}}}"#,
            10,
        );
        let Ok(Request::Subscribe { since, .. }) = r else {
            panic!("{r:?}")
        };
        let at = |t: &str| since[&Topic::parse(t).unwrap()].clone();
        let seqs = ["a.b", "a.c", "a.d"].map(|t| (at(t).seq, at(t).epoch.to_string()));
        assert_eq!(seqs, [(7, "x".into()), (5, "x".into()), (6, "y".into())]);
        assert!(Arc::ptr_eq(&at("a.b").epoch, &at("a.c").epoch));
        let (_, r) = parse_request(r#"{"op":"subscribe","topics":["a.b"],"delta":"fossil"}"#, 10);
        assert!(matches!(r, Ok(Request::Subscribe { delta: true, .. })), "{r:?}");
        for bad in ["true", "\"xdelta\"", "1"] {
            let text = format!(r#"{{"op":"subscribe","topics":["a.b"],"delta":{bad}}}"#);
            let (_, r) = parse_request(&text, 10);
            assert!(
                matches!(&r, Err(RequestError::BadRequest(m)) if m.contains("delta")),
                "{bad}: {r:?}"
            );
        }
        let (_, r) = parse_request(r#"{"op":"subscribe","topics":["a.b"],"max_rate":0.5}"#, 10);
        assert!(
            matches!(
                r,
                Ok(Request::Subscribe {
                    max_rate: Some(0.5),
                    ..
                })
            ),
            "{r:?}"
        );
        for bad in ["0", "-1", "0.001", "1001", "\"4\"", "[4]"] {
            let text = format!(r#"{{"op":"subscribe","topics":["a.b"],"max_rate":{bad}}}"#);
            let (_, r) = parse_request(&text, 10);
            assert!(
                matches!(&r, Err(RequestError::BadRequest(m)) if m.contains("max_rate")),
                "{bad}: {r:?}"
            );
        }
        let (_, r) = parse_request(r#"{"op":"publish","topic":"chat.x","data":{"a":[1, 2]}}"#, 10);
        match r {
            Ok(Request::Publish { topic, data }) => {
                assert_eq!(topic.as_str(), "chat.x");
                assert_eq!(data.get(), r#"{"a":[1, 2]}"#, "data passes through unchanged");
            }
            other => panic!("{other:?}"),
        }
        let (_, r) = parse_request(r#"{"op":"publish","topic":"chat.x","data":null}"#, 10);
        assert!(matches!(r, Ok(Request::Publish { data, .. }) if data.get() == "null"));
        assert!(matches!(
            parse_request(r#"{"op":"ping"}"#, 10),
            (None, Ok(Request::Ping))
        ));
        let (id, r) = parse_request(r#"{"op":"auth","id":5,"token":"a.b.c"}"#, 10);
        assert_eq!(id, Some(5));
        assert!(matches!(r, Ok(Request::Auth { token }) if token == "a.b.c"));
    }

    #[test]
    fn error_codes() {
        assert_eq!(code("nope"), (None, "bad_request"));
        assert_eq!(code("[1]"), (None, "bad_request"));
        assert_eq!(code(r#"{"id":7}"#), (Some(7), "bad_request"));
        assert_eq!(code(r#"{"op":5,"id":7}"#), (Some(7), "bad_request"));
        assert_eq!(code(r#"{"op":"ping","id":"x"}"#), (None, "bad_request"));
        assert_eq!(code(r#"{"op":"dance","id":2}"#), (Some(2), "unknown_op"));
        assert_eq!(
            code(r#"["publish",11,null,"chat.lobby",{"x":1},null]"#),
            (None, "bad_request")
        );
        assert_eq!(code(r#"{"op":"subscribe","topics":"a"}"#), (None, "bad_request"));
        assert_eq!(code(r#"{"op":"subscribe","topics":[]}"#), (None, "bad_request"));
        assert_eq!(
            code(r#"{"op":"subscribe","topics":["a..b"]}"#),
            (None, "invalid_topic")
        );
        assert_eq!(
            code(r#"{"op":"publish","topic":"a.*","data":1}"#),
            (None, "invalid_topic")
        );
        assert_eq!(code(r#"{"op":"publish","topic":"a"}"#), (None, "bad_request"));
        assert_eq!(code(r#"{"op":"auth","id":3}"#), (Some(3), "bad_request"));
        assert_eq!(code(r#"{"op":"auth","token":5}"#), (None, "bad_request"));
        assert_eq!(
            code(r#"{"op":"subscribe","topics":["a"],"since":{"a":{"seq":-1,"epoch":"x"}}}"#),
            (None, "bad_request")
        );
        assert_eq!(
            code(r#"{"op":"subscribe","topics":["a"],"since":{"a.*":{"seq":1,"epoch":"x"}}}"#),
            (None, "invalid_topic")
        );
        assert_eq!(
            code(r#"{"op":"subscribe","topics":["a"],"since":[1]}"#),
            (None, "bad_request")
        );
        let many = format!(r#"{{"op":"subscribe","topics":[{}]}}"#, ["\"a\""; 11].join(","));
        assert_eq!(code(&many), (None, "too_many_subscriptions"));
        let many = many.replace("subscribe", "unsubscribe");
        assert_eq!(code(&many), (None, "bad_request"));
    }

    #[test]
    fn publish_bodies() {
        let (m, batch) = parse_publish(br#"{"topic":"a","data":1}"#).unwrap();
        assert!(!batch);
        assert_eq!(m.len(), 1);
        let (m, batch) =
            parse_publish(br#"{"messages":[{"topic":"a","data":1},{"topic":"b","data":"x"}]}"#).unwrap();
        assert!(batch);
        assert_eq!(m[1].1.get(), r#""x""#);
        let err = parse_publish(br#"{"messages":[{"topic":"a","data":1},{"topic":"b.>","data":1}]}"#);
        assert_eq!(err.unwrap_err().code(), "invalid_topic");
        let (m, _) = parse_publish(br#"{"messages":[{"topic":"a\u002eb","data":1}]}"#).unwrap();
        assert_eq!(m[0].0.as_str(), "a.b");
        let err = parse_publish(br#"{"messages":[{"topic":"a","data":1},{"topic":"b.\u00e9","data":1}]}"#);
        assert_eq!(err.unwrap_err().code(), "invalid_topic");
        assert_eq!(parse_publish(b"{").unwrap_err().code(), "bad_request");
    }

    /// A request's topic names, whatever the op, as the server will use and echo them.
    fn names(text: &str) -> Result<Vec<String>, &'static str> {
        match parse_request(text, 10).1 {
            Ok(Request::Subscribe { topics, since, .. }) => {
                let mut v: Vec<String> = topics.iter().map(|p| p.as_str().to_string()).collect();
                v.extend(
                    since
                        .into_iter()
                        .map(|(t, p)| format!("{t}@{}:{}", p.seq, p.epoch)),
                );
                Ok(v)
            }
            Ok(Request::Unsubscribe(topics)) => Ok(topics.iter().map(|p| p.as_str().into()).collect()),
            Ok(Request::Publish { topic, .. }) | Ok(Request::Presence { topic }) => {
                Ok(vec![topic.as_str().into()])
            }
            Ok(Request::Auth { token }) => Ok(vec![token]),
            Ok(Request::Ping) => Ok(vec!["ping".into()]),
            Err(e) => Err(e.code()),
        }
    }

    #[test]
    fn string_fields_accept_escapes() {
        // Go's encoding/json sends `>` as \u003e; any encoder may escape `/` or anything else.
        assert_eq!(
            names(r#"{"op":"subscribe","id":1,"topics":["chat.\u003e","a\u002e*"]}"#),
            Ok(vec!["chat.>".into(), "a.*".into()])
        );
        assert_eq!(
            names(r#"{"op":"unsubscribe","topics":["chat.\u003E"]}"#),
            Ok(vec!["chat.>".into()])
        );
        assert_eq!(
            names(r#"{"op":"publish","topic":"chat\u002ex","data":1}"#),
            Ok(vec!["chat.x".into()])
        );
        assert_eq!(
            names(r#"{"op":"subscribe","topics":["a"],"since":{"a\u002eb":{"seq":4,"epoch":"k\u0033"}}}"#),
            Ok(vec!["a".into(), "a.b@4:k3".into()])
        );
        assert_eq!(
            names(r#"{"op":"auth","token":"a\u002eb\/c"}"#),
            Ok(vec!["a.b/c".into()])
        );
        assert_eq!(names(r#"{"op":"\u0070ing"}"#), Ok(vec!["ping".into()]));
        assert_eq!(names(r#"{"\u006fp":"ping"}"#), Ok(vec!["ping".into()]));
        // Unescaped, these are still checked as topics: the escape is no way around validation.
        for bad in [
            r#""chat.\u00e9""#,
            r#""chat.\ud83d\ude00""#,
            r#""chat\"x""#,
            r#""chat\\x""#,
            r#""chat\/x""#,
            r#""chat.\u0000""#,
            r#""chat.\u002a""#,
        ] {
            let publish = format!(r#"{{"op":"publish","topic":{bad},"data":1}}"#);
            assert_eq!(names(&publish), Err("invalid_topic"), "{publish}");
            let subscribe = format!(r#"{{"op":"subscribe","topics":["a",{bad}]}}"#);
            let expected = if bad.contains("002a") {
                Ok(vec!["a".into(), "chat.*".into()])
            } else {
                Err("invalid_topic")
            };
            assert_eq!(names(&subscribe), expected, "{subscribe}");
            let since =
                format!(r#"{{"op":"subscribe","topics":["a"],"since":{{{bad}:{{"seq":1,"epoch":"x"}}}}}}"#);
            assert_eq!(names(&since), Err("invalid_topic"), "{since}");
        }
        // A lone surrogate is not a string at all.
        assert_eq!(
            names(r#"{"op":"publish","topic":"chat.\ud83d","data":1}"#),
            Err("bad_request")
        );
        let (_, r) = parse_request(r#"{"op":"d\u00e9nce"}"#, 10);
        assert!(matches!(r, Err(RequestError::UnknownOp(op)) if op == "dénce"));
        // The echoed name is the unescaped one.
        let (_, r) = parse_request(r#"{"op":"publish","topic":"chat.\u00e9","data":1}"#, 10);
        let message = r.unwrap_err().to_string();
        assert!(message.contains(r#""chat.é""#), "{message}");
    }

    #[test]
    fn escapes_inside_data_pass_through() {
        let (_, r) = parse_request(
            r#"{"op":"publish","topic":"a","data":{"t":"\u003e\"\\\/\ud83d\ude00"}}"#,
            10,
        );
        match r {
            Ok(Request::Publish { data, .. }) => {
                assert_eq!(data.get(), r#"{"t":"\u003e\"\\\/\ud83d\ude00"}"#)
            }
            other => panic!("{other:?}"),
        }
        let (m, _) = parse_publish(br#"{"topic":"a\u002eb","data":"\u003e"}"#).unwrap();
        assert_eq!((m[0].0.as_str(), m[0].1.get()), ("a.b", r#""\u003e""#));
    }

    #[test]
    fn frames_are_exact() {
        let topics = [Pattern::parse("a.*").unwrap()];
        let none = BTreeMap::new();
        let f = Reply::Subscribed {
            id: Some(1),
            topics: &topics,
            positions: &none,
            recovered: &BTreeMap::new(),
            truncated: false,
        }
        .frame();
        assert_eq!(&f[2..], br#"{"type":"subscribed","id":1,"topics":["a.*"]}"#);
        let a = Topic::parse("a.b").unwrap();
        let positions = BTreeMap::from([(
            a.clone(),
            Position {
                seq: 40,
                epoch: "k3j2".into(),
            },
        )]);
        let f = Reply::Subscribed {
            id: None,
            topics: &topics,
            positions: &positions,
            recovered: &BTreeMap::from([(a, true)]),
            truncated: false,
        }
        .frame();
        assert_eq!(
            &f[2..],
            br#"{"type":"subscribed","topics":["a.*"],"positions":{"a.b":{"seq":40,"epoch":"k3j2"}},"recovered":{"a.b":true}}"#
        );
        let f = Reply::Subscribed {
            id: Some(2),
            topics: &topics,
            positions: &positions,
            recovered: &BTreeMap::new(),
            truncated: true,
        }
        .frame();
        assert_eq!(
            &f[2..],
            br#"{"type":"subscribed","id":2,"topics":["a.*"],"positions":{"a.b":{"seq":40,"epoch":"k3j2"}},"truncated":true}"#
        );
        let f = Reply::Pong { id: None }.frame();
        assert_eq!(&f[2..], br#"{"type":"pong"}"#);
        let f = Reply::Authed {
            id: Some(5),
            dropped: &topics,
        }
        .frame();
        assert_eq!(&f[2..], br#"{"type":"authed","id":5,"dropped":["a.*"]}"#);
    }

    /// A reconnecting client's `subscribed` reply fits the buffer it starts in.
    #[test]
    fn a_subscribed_reply_fits_its_first_buffer() {
        let topics = [
            Pattern::parse("bench.rc.t17").unwrap(),
            Pattern::parse("bench.rc.g3.*").unwrap(),
        ];
        let mut positions = BTreeMap::new();
        let mut recovered = BTreeMap::new();
        for i in 0..11 {
            let t = Topic::parse(&format!("bench.rc.g3.t{i}")).unwrap();
            positions.insert(
                t.clone(),
                Position {
                    seq: 1_000_000 + i,
                    epoch: "k3Jd9sQ0".into(),
                },
            );
            recovered.insert(t, i % 2 == 0);
        }
        let reply = Reply::Subscribed {
            id: Some(12),
            topics: &topics,
            positions: &positions,
            recovered: &recovered,
            truncated: false,
        };
        let json = serde_json::to_vec(&reply).unwrap();
        assert!(
            json.len() <= reply.size_hint(),
            "{} > {}",
            json.len(),
            reply.size_hint()
        );
        assert!(reply.size_hint() < 2 * json.len(), "a guess, not a waste");
    }
}
