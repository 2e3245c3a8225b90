//! Max rate per subscription (`"max_rate"` on subscribe, `max_rate` in `queue.policies`): at
//! most R frames a second per topic, the newest value always delivered at the end, the policy
//! cap over the client's request, the loosest of a connection's subscriptions, and the refusal
//! on `queue` topics. Real server, real WebSocket clients, updates published over HTTP.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Reads updates of `topic` until none came for `quiet`; each with its arrival time.
async fn updates_until_quiet(ws: &mut Ws, topic: &str, quiet: Duration) -> Vec<(Instant, Value)> {
    let mut got = Vec::new();
    loop {
        match next_incoming(ws, quiet).await {
            Incoming::Json(v) if v["type"] == "update" => {
                assert_update(&v, topic);
                got.push((Instant::now(), v));
            }
            Incoming::Json(v) if v["type"] == "snapshot" => {}
            Incoming::Timeout => return got,
            other => panic!("unexpected while reading updates: {other:?}"),
        }
    }
}

/// The most frames that arrived within any one second.
fn most_in_a_second(got: &[(Instant, Value)]) -> usize {
    (0..got.len())
        .map(|i| {
            let from = got[i].0;
            got[i..]
                .iter()
                .take_while(|(at, _)| at.duration_since(from) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

fn seqs(got: &[(Instant, Value)]) -> Vec<u64> {
    got.iter().map(|(_, v)| v["seq"].as_u64().unwrap()).collect()
}

/// Publishes `total` updates `{"i": seq}` of `topic` in `batches` spread over `over`.
async fn burst(addr: std::net::SocketAddr, topic: &'static str, total: u64, batches: u64, over: Duration) {
    let per = total / batches;
    for b in 0..batches {
        let messages: Vec<(&str, Value)> = (0..per).map(|i| (topic, json!({"i": b * per + i + 1}))).collect();
        publish_batch(addr, &messages).await;
        tokio::time::sleep(over / batches as u32).await;
    }
}

async fn subscribe_at(ws: &mut Ws, id: i64, topics: &[&str], max_rate: Value) -> Value {
    request(
        ws,
        json!({"op": "subscribe", "id": id, "topics": topics, "max_rate": max_rate}),
    )
    .await
}

#[tokio::test]
async fn a_burst_arrives_at_most_r_a_second_and_ends_with_the_newest() {
    let server = start("").await;
    let addr = server.addr;
    let mut slow = connect(addr).await;
    let reply = subscribe_at(&mut slow, 1, &["dash.a"], json!(2)).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut full = connect(addr).await;
    subscribe(&mut full, 1, &["dash.a"]).await;
    let conflated = metric_value(addr, "tickwire_messages_conflated_total").await;

    // Read while publishing: arrival times are what the rate is about.
    let (_, got) = tokio::join!(
        burst(addr, "dash.a", 1000, 8, Duration::from_millis(1200)),
        updates_until_quiet(&mut slow, "dash.a", Duration::from_millis(1500)),
    );
    let seqs = seqs(&got);
    eprintln!("throttled client got seqs {seqs:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert_eq!(seqs.last(), Some(&1000), "the newest value arrives last");
    assert_eq!(got.last().unwrap().1["data"], json!({"i": 1000}));
    assert!(
        most_in_a_second(&got) <= 3,
        "at most R+1 = 3 frames within a second: {seqs:?}"
    );
    assert!(got.len() >= 2, "the first and the trailing one: {seqs:?}");

    // The other subscriber of the topic is not throttled: it keeps up and gets the end too.
    let other = updates_until_quiet(&mut full, "dash.a", Duration::from_millis(300)).await;
    assert!(other.len() > 100, "unthrottled: {} frames", other.len());
    assert_eq!(other.last().unwrap().1["seq"], 1000);

    let skipped = metric_value(addr, "tickwire_messages_conflated_total").await - conflated;
    assert!(
        skipped >= (1000 - seqs.len()) as f64,
        "every skipped seq of the throttled client counts as conflated: {skipped}"
    );
}

#[tokio::test]
async fn the_policy_caps_every_subscriber_and_a_client_can_only_lower_it() {
    let server = start(
        "[queue]\npolicies = [{ pattern = \"slow.>\", policy = \"conflate\", max_rate = 2 }, \
         { pattern = \"chat.>\", policy = \"queue\" }]\n",
    )
    .await;
    let addr = server.addr;
    let mut plain = connect(addr).await;
    subscribe(&mut plain, 1, &["slow.x"]).await;
    let mut eager = connect(addr).await;
    let reply = subscribe_at(&mut eager, 1, &["slow.*"], json!(100)).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut lazy = connect(addr).await;
    let reply = subscribe_at(&mut lazy, 1, &["slow.x"], json!(0.5)).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");

    let quiet = Duration::from_millis(2500);
    let (_, plain, eager, lazy) = tokio::join!(
        burst(addr, "slow.x", 400, 20, Duration::from_millis(2500)),
        updates_until_quiet(&mut plain, "slow.x", quiet),
        updates_until_quiet(&mut eager, "slow.x", quiet),
        updates_until_quiet(&mut lazy, "slow.x", quiet),
    );
    #[rustfmt::skip]
    let cases = [("no max_rate", &plain, 3), ("max_rate 100", &eager, 3), ("max_rate 0.5", &lazy, 1)];
    for (name, got, most) in cases {
        let seqs = seqs(got);
        eprintln!("{name}: {seqs:?}");
        assert_eq!(seqs.last(), Some(&400), "{name}: the newest arrives");
        assert!(
            most_in_a_second(got) <= most,
            "{name}: at most {most} a second: {seqs:?}"
        );
    }
    assert!(lazy.len() < plain.len(), "0.5/s is below the cap of 2/s");
}

#[tokio::test]
async fn the_loosest_subscription_of_a_connection_applies() {
    let server = start("").await;
    let addr = server.addr;
    let mut ws = connect(addr).await;
    let reply = subscribe_at(&mut ws, 1, &["dash.b"], json!(1)).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    subscribe(&mut ws, 2, &["dash.*"]).await;
    for i in 1..=20 {
        publish(addr, "dash.b", json!(i)).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = updates_until_quiet(&mut ws, "dash.b", Duration::from_millis(500)).await;
    assert_eq!(
        seqs(&got),
        (1..=20).collect::<Vec<u64>>(),
        "the pattern has no max rate"
    );

    unsubscribe(&mut ws, 3, &["dash.*"]).await;
    let (_, got) = tokio::join!(
        burst(addr, "dash.b", 200, 4, Duration::from_millis(800)),
        updates_until_quiet(&mut ws, "dash.b", Duration::from_millis(1500)),
    );
    let seqs = seqs(&got);
    assert_eq!(seqs.last(), Some(&220), "{seqs:?}");
    assert!(most_in_a_second(&got) <= 2, "the exact one's 1/s again: {seqs:?}");
}

#[tokio::test]
async fn max_rate_is_refused_on_queue_topics_and_outside_its_bounds() {
    let server = start("").await; // the default configuration: chat.> has the queue policy
    let addr = server.addr;
    let mut ws = connect(addr).await;
    for topics in [vec!["dash.c", "chat.lobby"], vec!["*.lobby"], vec![">"]] {
        let reply = subscribe_at(&mut ws, 1, &topics, json!(4)).await;
        assert_error(&reply, "bad_request", Some(1));
        let message = reply["message"].as_str().unwrap();
        assert!(
            message.contains("queue") && message.contains("max_rate"),
            "{message}"
        );
    }
    let reply = subscribe_at(&mut ws, 2, &["dash.c", "chat.lobby"], json!(4)).await;
    assert!(
        reply["message"].as_str().unwrap().contains("chat.lobby"),
        "{reply}"
    );
    for bad in [
        json!(0),
        json!(-2),
        json!(0.001),
        json!(5000),
        json!("4"),
        json!([4]),
    ] {
        let reply = subscribe_at(&mut ws, 3, &["dash.c"], bad.clone()).await;
        assert_error(&reply, "bad_request", Some(3));
    }
    // Refused whole: nothing was subscribed to.
    publish(addr, "dash.c", json!(1)).await;
    publish(addr, "chat.lobby", json!(1)).await;
    expect_silence(&mut ws, Duration::from_millis(300)).await;
    // Without a max rate the same request is fine.
    subscribe(&mut ws, 4, &["dash.c", "chat.lobby"]).await;
}
