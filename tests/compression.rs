//! permessage-deflate (RFC 7692) as a client sees it on the wire: the negotiation answer, a
//! publication compressed once and sent as the same bytes to every deflate subscriber (plain
//! ones get the plain frame), compressed requests, small frames left plain, and a deflate bomb
//! closed with 1009. Raw sockets, so that every bit of every frame is checked.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens `path` offering `extensions` (none when empty); returns the socket and the server's
/// `Sec-WebSocket-Extensions` answer.
async fn open(addr: SocketAddr, path: &str, extensions: &str) -> (TcpStream, Option<String>) {
    let offer = match extensions {
        "" => String::new(),
        e => format!("Sec-WebSocket-Extensions: {e}\r\n"),
    };
    let (stream, head) = raw_ws_handshake(addr, path, &offer).await;
    let answer = (head.lines())
        .find_map(|l| l.strip_prefix("sec-websocket-extensions: "))
        .map(str::to_owned);
    (stream, answer)
}

/// A frame from the server: its first byte (FIN, RSV1, opcode) and payload.
async fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut h = [0u8; 2];
        stream.read_exact(&mut h).await.unwrap();
        let len = match h[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                stream.read_exact(&mut b).await.unwrap();
                u16::from_be_bytes(b) as usize
            }
            127 => {
                let mut b = [0u8; 8];
                stream.read_exact(&mut b).await.unwrap();
                u64::from_be_bytes(b) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).await.unwrap();
        (h[0], payload)
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a frame")
}

/// Sends a masked text frame, with RSV1 when `compressed`.
async fn send_frame(stream: &mut TcpStream, payload: &[u8], compressed: bool) {
    let mask = [7u8, 1, 9, 3];
    let mut f = vec![0x81 | if compressed { 0x40 } else { 0 }];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&f).await.unwrap();
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(6), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    out
}

/// The next message as JSON, inflating it when RSV1 says so.
async fn next_json(stream: &mut TcpStream) -> (bool, Value) {
    let (b0, payload) = read_frame(stream).await;
    assert_eq!(b0 & 0x0f, 1, "a text frame");
    let compressed = b0 & 0x40 != 0;
    let text = if compressed { inflate(&payload) } else { payload };
    (compressed, serde_json::from_slice(&text).unwrap())
}

fn document(i: u64) -> Value {
    let levels: Vec<Value> = (0..50)
        .map(|l| json!([100_000 + l * 5 + i, 1 + (l * 7 + i) % 13]))
        .collect();
    json!({"symbol": "BTC-USD", "seq_hint": i, "bids": levels, "asks": levels})
}

#[tokio::test]
async fn a_publication_is_compressed_once_for_every_deflate_subscriber() {
    let server = start("").await;
    let addr = server.addr;
    let (mut a, answer) = open(addr, "/ws", "permessage-deflate; client_max_window_bits").await;
    assert_eq!(
        answer.as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
    let (mut b, _) = open(addr, "/ws", "permessage-deflate").await;
    let (mut small, answer) = open(addr, "/ws", "permessage-deflate; server_max_window_bits=10").await;
    assert!(answer.unwrap().ends_with("; server_max_window_bits=10"));
    let (mut plain, answer) = open(addr, "/ws", "").await;
    assert_eq!(answer, None, "no offer, no extension");
    for ws in [&mut a, &mut b, &mut small, &mut plain] {
        let request = json!({"op": "subscribe", "id": 1, "topics": ["book.btc"]}).to_string();
        send_frame(ws, request.as_bytes(), false).await;
        let (_, reply) = next_json(ws).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
    }
    let before = scrape(addr).await;
    let doc = document(1);
    publish(addr, "book.btc", doc.clone()).await;
    let (fa, pa) = read_frame(&mut a).await;
    let (fb, pb) = read_frame(&mut b).await;
    let (fs, ps) = read_frame(&mut small).await;
    let (fp, pp) = read_frame(&mut plain).await;
    assert_eq!(
        (fa, fb, fs, fp),
        (0xc1, 0xc1, 0xc1, 0x81),
        "RSV1 only for deflate clients"
    );
    assert_eq!(
        pa, pb,
        "the same compressed bytes for every subscriber of one window size"
    );
    assert!(
        pa.len() * 3 < pp.len(),
        "compressed {} vs {} bytes",
        pa.len(),
        pp.len()
    );
    assert_eq!(inflate(&pa), pp, "inflates to the plain frame's payload");
    assert_eq!(inflate(&ps), pp, "the 10-bit window's frame too");
    let update: Value = serde_json::from_slice(&pp).unwrap();
    assert_eq!(update["data"], doc);
    let after = scrape(addr).await;
    let frames = after.value("tickwire_compressed_frames_total", &[])
        - before.value("tickwire_compressed_frames_total", &[]);
    assert_eq!(frames, 3.0);
    let saved = after.value("tickwire_bytes_saved_total", &[("by", "deflate")])
        - before.value("tickwire_bytes_saved_total", &[("by", "deflate")]);
    assert!(saved > 3.0 * (pp.len() / 2) as f64, "{saved}");

    // Small frames go plain, even to a deflate client (RSV1 is per message).
    publish(addr, "book.btc", json!(1)).await;
    let (first, _) = read_frame(&mut a).await;
    assert_eq!(first, 0x81, "under compression.min_bytes");
}

#[tokio::test]
async fn snapshots_are_compressed_once_for_deflate_subscribers() {
    let server = start("").await;
    let addr = server.addr;
    let doc = document(5);
    publish(addr, "book.eth", doc.clone()).await;
    let mut payloads = Vec::new();
    for offer in ["permessage-deflate", "permessage-deflate", ""] {
        let (mut ws, _) = open(addr, "/ws", offer).await;
        let request = json!({"op": "subscribe", "id": 1, "topics": ["book.eth"]}).to_string();
        send_frame(&mut ws, request.as_bytes(), false).await;
        let (compressed, reply) = next_json(&mut ws).await;
        assert!(
            !compressed && reply["type"] == "subscribed",
            "replies go plain: {reply}"
        );
        let (b0, payload) = read_frame(&mut ws).await;
        assert_eq!(b0, if offer.is_empty() { 0x81 } else { 0xc1 }, "{offer:?}");
        payloads.push(payload);
    }
    assert_eq!(
        payloads[0], payloads[1],
        "the same compressed snapshot, made once"
    );
    let snapshot: Value = serde_json::from_slice(&inflate(&payloads[0])).unwrap();
    assert_eq!(
        (snapshot["type"].as_str(), &snapshot["data"]),
        (Some("snapshot"), &doc)
    );
    assert_eq!(
        inflate(&payloads[0]),
        payloads[2],
        "inflates to the plain snapshot"
    );
}

#[tokio::test]
async fn compressed_requests_are_served_and_a_bomb_is_closed_1009() {
    let server = start("").await;
    let addr = server.addr;
    let (mut ws, _) = open(addr, "/ws", "permessage-deflate").await;
    let request = json!({"op": "subscribe", "id": 7, "topics": ["chat.z"]}).to_string();
    send_frame(&mut ws, &deflate(request.as_bytes()), true).await;
    let (_, reply) = next_json(&mut ws).await;
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_i64()),
        (Some("subscribed"), Some(7)),
        "{reply}"
    );

    // 50 MB of spaces after a ping: about 50 KB compressed, over server.max_message_bytes
    // (64 KiB) as soon as it is inflated that far.
    let mut bomb = b"{\"op\":\"ping\",\"id\":1}".to_vec();
    bomb.extend(std::iter::repeat_n(b' ', 50 << 20));
    let compressed = deflate(&bomb);
    assert!(
        compressed.len() < 64 << 10,
        "fits the frame limit: {}",
        compressed.len()
    );
    send_frame(&mut ws, &compressed, true).await;
    let (b0, payload) = read_frame(&mut ws).await;
    assert_eq!(b0 & 0x0f, 8, "a close frame");
    assert_eq!(close_payload(&payload).0, 1009);
}

#[tokio::test]
async fn rsv1_without_the_extension_is_a_protocol_error() {
    let server = start("").await;
    let (mut ws, answer) = open(server.addr, "/ws", "").await;
    assert_eq!(answer, None);
    send_frame(&mut ws, &deflate(b"{\"op\":\"ping\"}"), true).await;
    let (b0, payload) = read_frame(&mut ws).await;
    assert_eq!((b0 & 0x0f, close_payload(&payload).0), (8, 1002));
}

#[tokio::test]
async fn compression_can_be_turned_off() {
    let server = start("[compression]\nenabled = false\n").await;
    let (_, answer) = open(server.addr, "/ws", "permessage-deflate").await;
    assert_eq!(answer, None, "the offer is declined");
}

/// A real client library (Python `websockets`, Debian's `python3-websockets`, which
/// `scripts/test` installs): with its default `permessage-deflate` it negotiates the extension
/// and reads the compressed frames; with compression off it reads the plain ones.
#[tokio::test]
async fn a_client_library_reads_the_compressed_frames() {
    let server = start("").await;
    let addr = server.addr;
    let script = r#"
import asyncio, json, sys, websockets
async def main(url, compression):
    async with websockets.connect(url, compression=compression, max_size=None) as ws:
        print(json.dumps({"extensions": ws.response_headers.get("Sec-WebSocket-Extensions")}), flush=True)
        await ws.send(json.dumps({"op": "subscribe", "id": 1, "topics": ["book.py"]}))
        await ws.recv()
        print(json.dumps({"ready": True}), flush=True)
        print(await ws.recv(), flush=True)
asyncio.run(main(sys.argv[1], None if sys.argv[2] == "off" else "deflate"))
"#;
    let python = "/usr/bin/python3";
    assert!(
        std::process::Command::new(python).args(["-c", "import websockets"]).status().is_ok_and(|s| s.success()),
        "{python} with the websockets module is needed: apt-get install python3-websockets (scripts/test does)"
    );
    let url = format!("ws://{addr}/ws");
    let mut clients = Vec::new();
    for mode in ["deflate", "off"] {
        let mut child = tokio::process::Command::new(python)
            .args(["-c", script, &url, mode])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut next = async || -> Value {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
            serde_json::from_str(&line.expect("the client answers").unwrap().expect("a line")).unwrap()
        };
        let extensions = next().await["extensions"].clone();
        assert_eq!(next().await["ready"], true);
        clients.push((mode, extensions, child, lines));
    }
    let before = scrape(addr).await;
    let doc = document(9);
    publish(addr, "book.py", doc.clone()).await;
    for (mode, extensions, _child, lines) in &mut clients {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await;
        let update: Value = serde_json::from_str(&line.unwrap().unwrap().unwrap()).unwrap();
        assert_eq!(update["data"], doc, "{mode}");
        match *mode {
            "deflate" => assert!(
                extensions.as_str().unwrap().starts_with("permessage-deflate"),
                "{extensions}"
            ),
            _ => assert_eq!(*extensions, Value::Null),
        }
    }
    let after = scrape(addr).await;
    let frames = after.value("tickwire_compressed_frames_total", &[])
        - before.value("tickwire_compressed_frames_total", &[]);
    assert_eq!(frames, 1.0, "one compressed frame: the deflate client's");
}

/// What a `max_rate` held back goes out compressed too, when it is released.
#[tokio::test]
async fn a_held_back_update_is_released_compressed() {
    let server = start("").await;
    let addr = server.addr;
    let (mut ws, _) = open(addr, "/ws", "permessage-deflate").await;
    let request = json!({"op": "subscribe", "id": 1, "topics": ["book.sol"], "max_rate": 2}).to_string();
    send_frame(&mut ws, request.as_bytes(), false).await;
    let (_, reply) = next_json(&mut ws).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    for i in 1..=3 {
        publish(addr, "book.sol", document(i)).await;
    }
    for want in [1, 3] {
        let (compressed, update) = next_json(&mut ws).await;
        assert!(compressed, "seq {want} compressed");
        assert_eq!(
            (update["seq"].as_u64(), &update["data"]),
            (Some(want), &document(want))
        );
    }
}
