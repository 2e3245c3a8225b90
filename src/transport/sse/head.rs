//! What an SSE event needs from a frame's JSON: its `type` (the event's name), and for an
//! `update` or `snapshot` its topic, seq and (a reset's) epoch, for the event's `id:`.
//!
//! Read by a bounded scan of the frame's known layout rather than by parsing it: the frames
//! are the server's own (`protocol::encoding` writes `type`, `topic`, `seq`, `ts`, then an
//! optional `epoch`, then `data` or `delta` last; replies start with `type` too), so the
//! fields needed are always at the start, and the scan reads at most the first ~370 bytes of a
//! frame whatever the size of its `data`, where a JSON parser would walk all of it for every
//! event on every stream. The alternative, the hub pushing (topic, seq) beside each frame,
//! would add a word to every queued frame of every WebSocket connection too; this costs only
//! the SSE streams. A frame that does not match (none should) becomes an event without a name
//! or an id, its data intact.

use crate::topic::MAX_TOPIC_BYTES;

/// Longest `type` value (`unsubscribed`).
const MAX_KIND: usize = 16;
/// Longest epoch a frame names.
const MAX_EPOCH: usize = 64;
/// Digits of a u64.
const MAX_DIGITS: usize = 20;

/// The start of a frame, as far as an event needs it.
#[derive(Debug, PartialEq, Eq)]
pub struct Head<'a> {
    /// The frame's `type`.
    pub kind: &'a str,
    /// An `update`'s or a `snapshot`'s topic, seq and (only on a reset) epoch.
    pub position: Option<(&'a str, u64, Option<&'a str>)>,
}

/// Scans the start of a server frame's JSON.
pub fn scan(json: &[u8]) -> Option<Head<'_>> {
    let rest = json.strip_prefix(br#"{"type":""#)?;
    let (kind, rest) = string(rest, MAX_KIND)?;
    if kind != "update" && kind != "snapshot" {
        return Some(Head { kind, position: None });
    }
    let rest = rest.strip_prefix(br#","topic":""#)?;
    let (topic, rest) = string(rest, MAX_TOPIC_BYTES)?;
    let rest = rest.strip_prefix(br#","seq":"#)?;
    let (seq, rest) = number(rest)?;
    let rest = rest.strip_prefix(br#","ts":"#)?;
    let (_, rest) = number(rest)?;
    let epoch = match rest.strip_prefix(br#","epoch":""#) {
        Some(rest) => Some(string(rest, MAX_EPOCH)?.0),
        None => None,
    };
    Some(Head {
        kind,
        position: Some((topic, seq, epoch)),
    })
}

/// A JSON string's content up to its closing quote, at most `max` bytes, without escapes (the
/// names scanned here never need any: topics, epochs and types are ASCII without quotes).
fn string(bytes: &[u8], max: usize) -> Option<(&str, &[u8])> {
    let end = bytes.iter().take(max + 1).position(|&b| b == b'"')?;
    let (s, rest) = bytes.split_at(end);
    if s.contains(&b'\\') {
        return None;
    }
    Some((std::str::from_utf8(s).ok()?, &rest[1..]))
}

/// A JSON unsigned integer.
fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let end = (bytes.iter().take(MAX_DIGITS + 1))
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len().min(MAX_DIGITS + 1));
    if end == 0 || end > MAX_DIGITS {
        return None;
    }
    let n = std::str::from_utf8(&bytes[..end]).ok()?.parse().ok()?;
    Some((n, &bytes[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::encoding::Encoding;
    use crate::protocol::wire::server_payload;
    use crate::topic::Topic;
    use serde_json::value::RawValue;

    #[test]
    fn reads_the_frames_the_encoding_writes() {
        let topic = Topic::parse("prices.BTC-USD").unwrap();
        let data = RawValue::from_string(r#"{"p":"1","seq":5,"type":"x"}"#.into()).unwrap();
        let json = Encoding::Json;
        let frames = [
            (json.update_frame(&topic, 42, 1700, &data), "update", None),
            (json.snapshot_frame(&topic, 42, 1700, &data), "snapshot", None),
            (json.delta_frame(&topic, 42, 1700, "3\n1:x"), "update", None),
            (
                json.reset_frame(&topic, 42, 1700, &data, "k3j2Zq"),
                "snapshot",
                Some("k3j2Zq"),
            ),
        ];
        for (frame, kind, epoch) in frames {
            let (_, payload) = server_payload(&frame).unwrap();
            let head = scan(payload).unwrap();
            assert_eq!(
                head,
                Head {
                    kind,
                    position: Some(("prices.BTC-USD", 42, epoch))
                }
            );
        }
        let max = Topic::parse(&"t".repeat(MAX_TOPIC_BYTES)).unwrap();
        let frame = json.update_frame(&max, u64::MAX, u64::MAX, &data);
        let head = scan(server_payload(&frame).unwrap().1).unwrap();
        assert_eq!(head.position.unwrap().1, u64::MAX);
    }

    #[test]
    fn replies_give_their_type_only() {
        for (json, kind) in [
            (&br#"{"type":"subscribed","topics":["a"]}"#[..], "subscribed"),
            (br#"{"type":"error","code":"forbidden","message":"m"}"#, "error"),
            (br#"{"type":"unsubscribed","topics":[]}"#, "unsubscribed"),
        ] {
            assert_eq!(scan(json), Some(Head { kind, position: None }));
        }
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        for json in [
            &b"[1]"[..],
            br#"{"type":"update"}"#,
            br#"{"type":"update","topic":"a","seq":-1,"ts":1,"data":1}"#,
            br#"{"type":"update","topic":"a","seq":123456789012345678901,"ts":1,"data":1}"#,
            br#"{"type":"update","topic":"a\"b","seq":1,"ts":1,"data":1}"#,
            br#"{"type":"a-type-that-is-far-too-long"}"#,
            br#"{"type":"update","topic":"a","seq":1"#,
        ] {
            assert_eq!(scan(json), None, "{}", String::from_utf8_lossy(json));
        }
    }
}
