//! Autobahn TestSuite driver (fuzzingserver mode) for the WebSocket layer the client runs on:
//! the same handshake, TLS connector and message-size limit as [`tickwire_client::Client`]
//! (`conformance::open`), and the same handling of what the server sends (tungstenite answers
//! pings and echoes the close; fragments are reassembled and text is checked for UTF-8).
//!
//! ```text
//! ../shared/tools/autobahn.sh --client 9001 '["1.*","2.*","3.*","4.*","5.*","6.*","7.*","9.*","10.*"]' \
//!     /tmp/ab-rust -- target/debug/examples/autobahn_client
//! ```
//!
//! Reads `AUTOBAHN_URL` and `AUTOBAHN_AGENT` (set by the script), runs every case, echoing
//! each text and binary message, then asks the fuzzing server to write its reports.

use futures_util::{SinkExt, StreamExt};
use tickwire_client::conformance::{open, Ws};
use tickwire_client::ClientOptions;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base = std::env::var("AUTOBAHN_URL").unwrap_or_else(|_| "ws://127.0.0.1:9001".into());
    let agent = std::env::var("AUTOBAHN_AGENT").unwrap_or_else(|_| "tickwire-rust".into());
    // Case 9.* sends messages of up to 16 MiB; the client's default limit is exactly that.
    let options = ClientOptions::default().max_message_bytes(32 << 20);

    let mut ws = open(&format!("{base}/getCaseCount"), &options, None).await?;
    let count: u32 = match ws.next().await {
        Some(Ok(Message::Text(text))) => text.as_str().trim().parse()?,
        other => return Err(format!("no case count: {other:?}").into()),
    };
    drain(&mut ws).await;
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        match open(&url, &options, None).await {
            Ok(mut ws) => echo(&mut ws).await,
            Err(e) => eprintln!("case {case}: {e}"),
        }
    }
    let mut ws = open(&format!("{base}/updateReports?agent={agent}"), &options, None).await?;
    drain(&mut ws).await;
    Ok(())
}

/// Echoes data messages until the connection ends; any error ends the case.
async fn echo(ws: &mut Ws) {
    while let Some(message) = ws.next().await {
        let reply = match message {
            Ok(m @ (Message::Text(_) | Message::Binary(_))) => m,
            Ok(_) => continue,
            Err(_) => break,
        };
        if ws.send(reply).await.is_err() {
            break;
        }
    }
}

async fn drain(ws: &mut Ws) {
    while let Some(Ok(_)) = ws.next().await {}
}
