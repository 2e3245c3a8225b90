//! The outbound queue's bound, seen from clients that behave: a burst of requests is slowed to
//! the client's reading pace instead of closing it, and a publication whose frame could never
//! fit in a subscriber's queue is refused at publish time instead of closing every subscriber.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// A masked client frame (RFC 6455 §5.3), with a zero mask for simplicity.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pings_from_a_reading_client_gets_every_pong() {
    // 1,000 pongs of 127 bytes are about twice the queue's bound.
    let server = start("[server]\nmax_message_bytes = 32768\n[queue]\nmax_bytes = 65536\n").await;
    let mut stream = raw_ws_connect(server.addr).await;
    let payload = [b'p'; 125];
    let burst: Vec<u8> = (0..1000).flat_map(|_| client_frame(0x9, &payload)).collect();
    let (mut rd, mut wr) = stream.split();
    // Written while reading, as a client on a real network would: the server may stop reading
    // (backpressure) until we have read its answers.
    let write = async {
        wr.write_all(&burst).await.expect("write the burst");
    };
    let read = async {
        let mut pongs = 0;
        while pongs < 1000 {
            let mut h = [0u8; 2];
            let got =
                tokio::time::timeout(RECV_TIMEOUT, tokio::io::AsyncReadExt::read_exact(&mut rd, &mut h))
                    .await;
            assert!(matches!(got, Ok(Ok(_))), "stream ended after {pongs} pongs");
            let len = (h[1] & 0x7f) as usize;
            assert!(len < 126);
            let mut body = vec![0u8; len];
            tokio::io::AsyncReadExt::read_exact(&mut rd, &mut body)
                .await
                .unwrap();
            match h[0] & 0x0f {
                0xA => {
                    assert_eq!(body, payload);
                    pongs += 1;
                }
                0x8 => panic!("closed after {pongs} pongs: {:?}", close_payload(&body)),
                op => panic!("unexpected opcode {op}"),
            }
        }
        pongs
    };
    let ((), pongs) = tokio::join!(write, read);
    assert_eq!(pongs, 1000);
    let slow = metric_value(
        server.addr,
        "tickwire_disconnects_total{reason=\"slow_consumer\"}",
    )
    .await;
    assert_eq!(slow, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_the_queue_is_refused_at_publish_time() {
    let server = start("").await;
    let addr = server.addr;
    let mut reader = connect(addr).await;
    subscribe(&mut reader, 1, &["chat.lobby"]).await;
    // Fits the body limit (1 MiB), but its frame could never fit a subscriber's queue (1 MiB):
    // accepted, it would close every reading subscriber with 4008.
    let data = format!("\"{}\"", "x".repeat(1_048_400));
    let body = format!(r#"{{"topic":"chat.lobby","data":{data}}}"#);
    assert!(body.len() < 1_048_576);
    let r = http_post(addr, "/api/v1/publish", body.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body));
    let e = r.json();
    assert_eq!(e["error"]["code"], "payload_too_large", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("http.max_message_bytes"),
        "{e}"
    );
    // Nothing was published, and the subscriber is still served.
    expect_silence(&mut reader, SILENCE).await;
    // (The topic has its subscriber, but no publication: no seq.)
    let state = get_topic(addr, "chat.lobby").await.expect("the subscribed topic");
    assert!(state.get("seq").is_none() && state["subscribers"] == 1, "{state}");
    // The largest message that is accepted reaches it.
    let limit = 1_048_576 - tickwire::settings::FRAME_ENVELOPE_BYTES;
    let data = json!("y".repeat(limit - 2));
    assert_eq!(publish(addr, "chat.lobby", data.clone()).await, 1);
    let u = recv_json_within(&mut reader, Duration::from_secs(10)).await;
    assert_eq!(assert_update(&u, "chat.lobby"), 1);
    assert_eq!(u["data"], data);
    assert_usable(&mut reader, 2).await;
}
