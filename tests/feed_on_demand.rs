//! `examples/feed_on_demand` against a real tickwire server (issue 20): tickwire's signed
//! `occupied` webhook starts the feed, whose prices reach the subscriber; the `vacated` one
//! (after `occupancy.vacate_delay`) stops it, and the topic's seq stops moving; a receiver
//! started late catches up from the occupied list.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::client::{options, until, ws_url};
use common::{eventually, get_topic, start, wait_metric, RECV_TIMEOUT};
use feed_on_demand::{serve, App, Config};
use tickwire_client::{Client, Event};
use tokio::net::TcpListener;

const SECRET: &str = "feed-test-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_runs_exactly_while_its_topic_is_occupied() {
    // The receiver first: tickwire needs its address.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let server = start(&format!(
        "[occupancy]\nvacate_delay = \"300ms\"\n\n\
         [[webhooks]]\nurl = \"http://{receiver}/webhook\"\nevents = [\"occupied\", \"vacated\"]\n\
         topics = [\"quotes.>\"]\nsecret = \"{SECRET}\"\n"
    ))
    .await;
    let app = Arc::new(App::new(config(server.addr)).unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let receiving = tokio::spawn(serve(listener, app.clone(), async {
        let _ = stopped.await;
    }));
    assert!(app.running().is_empty());

    // A subscriber makes quotes.ACME occupied: the feed starts and its prices arrive.
    let client = Client::connect(ws_url(server.addr), options()).await.unwrap();
    let mut events = client.events().unwrap();
    client.subscribe(["quotes.ACME"]).await.unwrap();
    let mut prices = 0;
    until(&mut events, "three prices from the feed", |e| {
        if let Event::Update(u) | Event::Snapshot(u) = e {
            let data: serde_json::Value = serde_json::from_str(u.data.get()).unwrap();
            assert_eq!(data["symbol"], "ACME", "{data}");
            assert!(data["price"].as_f64().is_some_and(|p| p > 0.0), "{data}");
            prices += 1;
        }
        prices == 3
    })
    .await;
    assert_eq!(app.running(), ["quotes.ACME"]);
    // tickwire counted the delivery as accepted (a 2xx): the signature checked out.
    let ok = [("event", "occupied"), ("result", "ok")];
    wait_metric(server.addr, "tickwire_webhook_requests_total", &ok, "1", |v| {
        v == 1.0
    })
    .await;

    // The last subscriber leaves: after vacate_delay, `vacated` stops the feed.
    client.unsubscribe(["quotes.ACME"]).await.unwrap();
    let app_ref = &app;
    eventually("the feed stopped", RECV_TIMEOUT, || async {
        app_ref.running().is_empty()
    })
    .await;
    let seq = |t: Option<serde_json::Value>| t.and_then(|t| t["seq"].as_u64()).unwrap_or(0);
    let last = seq(get_topic(server.addr, "quotes.ACME").await);
    assert!(last >= 3, "{last}");
    tokio::time::sleep(Duration::from_millis(300)).await; // six intervals of the feed
    assert_eq!(
        seq(get_topic(server.addr, "quotes.ACME").await),
        last,
        "nothing published since"
    );
    let ok = [("event", "vacated"), ("result", "ok")];
    wait_metric(server.addr, "tickwire_webhook_requests_total", &ok, "1", |v| {
        v == 1.0
    })
    .await;

    stop.send(()).unwrap();
    receiving.await.unwrap();

    // A receiver that starts while a topic is already occupied (its `occupied` event went to
    // the old one) starts that feed from the occupied list.
    client.subscribe(["quotes.LATE"]).await.unwrap();
    eventually("quotes.LATE occupied", RECV_TIMEOUT, || async {
        get_topic(server.addr, "quotes.LATE")
            .await
            .is_some_and(|t| t["subscribers"] == 1)
    })
    .await;
    let late = Arc::new(App::new(config(server.addr)).unwrap());
    assert_eq!(late.catch_up().await, Ok(1));
    assert_eq!(late.running(), ["quotes.LATE"]);
    until(
        &mut events,
        "a price of quotes.LATE",
        |e| matches!(e, Event::Update(u) | Event::Snapshot(u) if u.topic == "quotes.LATE"),
    )
    .await;
    client.close().await;
}

fn config(server: SocketAddr) -> Config {
    Config {
        tickwire: format!("http://{server}"),
        api_key: None,
        secret: SECRET.as_bytes().to_vec(),
        path: "/webhook".into(),
        prefix: "quotes.".into(),
        interval: Duration::from_millis(50),
    }
}
