//! Delta updates (`"delta":"fossil"` on subscribe): random JSON documents reconstruct exactly
//! from the frames' text, a delta is always based on the frame just before it (conflation and
//! max rate fall back to full data), recovery sends full data first, small data and
//! `delta.enabled = false` go whole, and the metrics count what deltas saved.

mod common;

use std::time::Duration;

use common::documents::{next_document, publish_text, Rng};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tickwire_proto::fossil;
use tokio_tungstenite::tungstenite::Message;

/// The next version of a document of 40 fields (about a kilobyte).
fn document(rng: &mut Rng, fields: &mut Vec<String>) -> String {
    next_document(rng, fields, 40)
}

/// The next text frame, as text.
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        match next.expect("a frame within 10 s") {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected: {other:?}"),
        }
    }
}

/// `data`'s text in an update or snapshot frame: everything after `"data":` but the closing
/// brace (protocol.md §4.1).
fn raw_data(frame: &str) -> &str {
    let at = frame.find("\"data\":").expect("a data member") + "\"data\":".len();
    &frame[at..frame.len() - 1]
}

/// Follows one topic's frames the way a client applying deltas does; returns each seq with
/// its full data text, and how many came as deltas.
struct Follower {
    base: Option<(u64, String)>,
    deltas: usize,
}

impl Follower {
    fn take(&mut self, frame: &str) -> (u64, String) {
        let v: Value = serde_json::from_str(frame).unwrap();
        let seq = v["seq"].as_u64().expect("a seq");
        let text = match v.get("delta") {
            Some(delta) => {
                let (base_seq, base) = self.base.as_ref().expect("a delta needs a frame before it");
                assert_eq!(
                    seq,
                    base_seq + 1,
                    "a delta follows the frame it applies to: {frame}"
                );
                let delta = delta.as_str().expect("delta is a string");
                let out =
                    fossil::apply(base.as_bytes(), delta.as_bytes(), 1 << 20).expect("the delta applies");
                self.deltas += 1;
                String::from_utf8(out).expect("UTF-8")
            }
            None => raw_data(frame).to_owned(),
        };
        self.base = Some((seq, text.clone()));
        (seq, text)
    }
}

async fn subscribe_delta(ws: &mut Ws, topics: &[&str], extra: Value) -> Value {
    let mut req = json!({"op": "subscribe", "id": 1, "topics": topics, "delta": "fossil"});
    for (k, v) in extra.as_object().unwrap() {
        req[k] = v.clone();
    }
    request(ws, req).await
}

#[tokio::test]
async fn random_documents_reconstruct_exactly_from_deltas() {
    let server = start("").await;
    let addr = server.addr;
    let mut rng = Rng(7);
    let mut fields = Vec::new();
    let first = document(&mut rng, &mut fields);
    let first_seq = publish(addr, "doc.7", serde_json::from_str(&first).unwrap()).await;
    let mut ws = connect(addr).await;
    let reply = subscribe_delta(&mut ws, &["doc.*"], json!({})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut follower = Follower {
        base: None,
        deltas: 0,
    };
    let (seq, _) = follower.take(&next_text(&mut ws).await);
    assert_eq!(seq, first_seq, "the snapshot is full data");

    let before = scrape(addr).await;
    let mut published = Vec::new();
    for _ in 0..200 {
        let doc = document(&mut rng, &mut fields);
        // Published as raw text (over HTTP the server keeps the bytes as sent).
        publish_text(addr, "doc.7", &doc).await;
        published.push(doc);
        let (seq, text) = follower.take(&next_text(&mut ws).await);
        assert_eq!(text, *published.last().unwrap(), "seq {seq} reconstructs exactly");
    }
    assert!(
        follower.deltas >= 190,
        "almost every update is a delta: {}",
        follower.deltas
    );
    let after = scrape(addr).await;
    let frames =
        after.value("tickwire_delta_frames_total", &[]) - before.value("tickwire_delta_frames_total", &[]);
    assert_eq!(frames as usize, follower.deltas);
    let saved = after.value("tickwire_bytes_saved_total", &[("by", "delta")])
        - before.value("tickwire_bytes_saved_total", &[("by", "delta")]);
    assert!(
        saved > 200.0 * 500.0,
        "each delta saves most of a ~1 KB document: {saved}"
    );
}

#[tokio::test]
async fn a_conflated_or_throttled_gap_gets_full_data() {
    let server = start("[http]\nmax_body_bytes = 16777216\n").await;
    let addr = server.addr;
    let mut rng = Rng(11);
    let mut fields = Vec::new();
    // A client that stops reading: its queue conflates, so some seqs never reach it.
    let mut stalled = connect_small_rcvbuf(addr, 4096).await;
    let reply = subscribe_delta(&mut stalled, &["doc.c"], json!({})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    // And one with a max rate, which skips seqs too.
    let mut paced = connect(addr).await;
    let reply = subscribe_delta(&mut paced, &["doc.c"], json!({"max_rate": 5})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut docs = Vec::new();
    // Every other update changes a 3 KB field too: enough bytes to fill the socket's buffers.
    let mut pad = String::new();
    for _ in 0..10 {
        let batch: Vec<(&str, Value)> = (0..500)
            .map(|_| {
                if pad.is_empty() || rng.below(2) == 0 {
                    pad = (0..3000)
                        .map(|_| char::from(b'a' + rng.below(26) as u8))
                        .collect();
                }
                let mut doc: Value = serde_json::from_str(&document(&mut rng, &mut fields)).unwrap();
                doc["pad"] = json!(pad);
                ("doc.c", doc)
            })
            .collect();
        docs.extend(batch.iter().map(|(_, v)| v.clone()));
        publish_batch(addr, &batch).await;
    }
    for (name, ws) in [("stalled", &mut stalled), ("paced", &mut paced)] {
        let mut follower = Follower {
            base: None,
            deltas: 0,
        };
        let mut seqs = Vec::new();
        loop {
            let (seq, text) = follower.take(&next_text(ws).await);
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v, docs[seq as usize - 1], "{name}: seq {seq}");
            seqs.push(seq);
            if seq == 5000 {
                break;
            }
        }
        assert!(
            seqs.len() < 5000,
            "{name}: seqs were skipped ({} frames)",
            seqs.len()
        );
        eprintln!("{name}: {} frames, {} deltas", seqs.len(), follower.deltas);
    }
}

#[tokio::test]
async fn recovery_sends_full_data_then_deltas() {
    let server = start("").await;
    let addr = server.addr;
    let mut rng = Rng(3);
    let mut fields = Vec::new();
    let mut docs = Vec::new();
    for _ in 0..5 {
        let doc: Value = serde_json::from_str(&document(&mut rng, &mut fields)).unwrap();
        publish(addr, "doc.r", doc.clone()).await;
        docs.push(doc);
    }
    let mut ws = connect(addr).await;
    let reply = subscribe_delta(&mut ws, &["doc.r"], json!({})).await;
    let (_, epoch) = position(&reply, "doc.r");
    drop(ws);
    for _ in 0..3 {
        let doc: Value = serde_json::from_str(&document(&mut rng, &mut fields)).unwrap();
        publish(addr, "doc.r", doc.clone()).await;
        docs.push(doc);
    }
    let mut ws = connect(addr).await;
    let since = json!({"doc.r": pos(5, &epoch)});
    let reply = subscribe_delta(&mut ws, &["doc.r"], json!({"id": 2, "since": since})).await;
    assert_eq!(reply["recovered"]["doc.r"], true, "{reply}");
    for seq in 6..=8 {
        let frame = next_text(&mut ws).await;
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v.get("delta")),
            (Some(seq), None),
            "recovered in full: {frame}"
        );
        assert_eq!(v["data"], docs[seq as usize - 1]);
    }
    let doc: Value = serde_json::from_str(&document(&mut rng, &mut fields)).unwrap();
    publish(addr, "doc.r", doc.clone()).await;
    let frame = next_text(&mut ws).await;
    assert!(
        frame.contains("\"delta\":"),
        "live again: a delta of seq 8: {frame}"
    );
}

/// A delta shorter than the data whose JSON string escapes to a larger frame than the full one
/// (it inserts many `\"`, each doubled in the frame) goes whole. Such a publication used to
/// underflow the bytes-saved count (a panic in debug builds, a huge count in release).
#[tokio::test]
async fn a_delta_frame_larger_than_the_full_frame_goes_whole() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    let reply = subscribe_delta(&mut ws, &["doc.q"], json!({})).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let pad = "x".repeat(150);
    let quotes = "\"".repeat(200);
    publish(addr, "doc.q", json!({"pad": pad})).await;
    let first = next_text(&mut ws).await;
    assert!(!first.contains("\"delta\""), "{first}");
    let before = scrape(addr).await;
    let data = json!({"pad": pad, "q": quotes});
    let text = data.to_string();
    let delta = fossil::create_str(raw_data(&first), &text);
    assert!(
        delta.len() < text.len(),
        "the delta alone is shorter: {} < {}",
        delta.len(),
        text.len()
    );
    publish(addr, "doc.q", data).await;
    let frame = next_text(&mut ws).await;
    assert!(!frame.contains("\"delta\""), "full data: {frame}");
    assert_eq!(raw_data(&frame), text);
    let after = scrape(addr).await;
    let saved = after.value("tickwire_bytes_saved_total", &[("by", "delta")])
        - before.value("tickwire_bytes_saved_total", &[("by", "delta")]);
    assert_eq!(saved, 0.0);
}

#[tokio::test]
async fn small_data_and_a_disabled_delta_go_whole() {
    for (config, big) in [("", false), ("[delta]\nenabled = false\n", true)] {
        let server = start(config).await;
        let addr = server.addr;
        let mut ws = connect(addr).await;
        let reply = subscribe_delta(&mut ws, &["doc.s"], json!({})).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        let pad = if big { "x".repeat(500) } else { String::new() };
        for i in 0..5 {
            publish(addr, "doc.s", json!({"i": i, "pad": pad})).await;
            let frame = next_text(&mut ws).await;
            assert!(!frame.contains("\"delta\""), "{config:?}: full data: {frame}");
        }
    }
}
