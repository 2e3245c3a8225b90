//! Watches every price topic (`prices.*`) and prints one line per quote.
//!
//! ```text
//! cargo run -p tickwire-client --example price_watcher -- ws://127.0.0.1:8080/ws
//! ```
//!
//! Uses the event stream. Stop the server and start it again to see the client reconnect, reset
//! each topic (the server's epochs changed) and carry on with fresh snapshots.

use serde::Deserialize;
use tickwire_client::{Client, ClientOptions, Event};

/// The quote the built-in feed publishes.
#[derive(Deserialize)]
struct Quote {
    symbol: String,
    bid: f64,
    ask: f64,
    last: f64,
}

#[tokio::main]
async fn main() -> Result<(), tickwire_client::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let client = Client::connect(url, ClientOptions::default()).await?;
    let mut events = client.events().expect("taken once");
    let subscribed = client.subscribe(["prices.*"]).await?;
    println!("watching {} symbols", subscribed.positions.len());
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::signal::ctrl_c() => break,
        };
        match event {
            Some(Event::Update(update) | Event::Snapshot(update)) => match update.decode::<Quote>() {
                Ok(q) => println!(
                    "{:<10} bid {:>12.4} ask {:>12.4} last {:>12.4}  (#{})",
                    q.symbol, q.bid, q.ask, q.last, update.seq
                ),
                Err(e) => eprintln!("{}: not a quote: {e}", update.topic),
            },
            Some(Event::Reset { topic }) => println!("{topic}: could not recover, starting over"),
            Some(Event::Open) => println!("connected"),
            Some(Event::Close { code, reason }) => println!("disconnected: {code} {reason}"),
            Some(Event::Error(e)) => eprintln!("error: {e}"),
            Some(_) => {}
            None => break,
        }
    }
    client.close().await;
    Ok(())
}
