//! The `tickwire-client` crate against a real in-process server over real sockets: requests and
//! replies, the event stream and callbacks, and reconnect with recovery (connection drops through
//! a proxy, history running out, server restarts).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::client::{expect_quiet, next, options, until, ws_url};
use common::documents::{next_document, publish_text, Rng};
use common::jwt::{claims, token as sign_token, JWT_TOML};
use common::proxy::Proxy;
use common::redis::RedisServer;
use common::{free_port, metric, publish, start, wait_ready, RECV_TIMEOUT, SILENCE};
use serde_json::{json, Value};
use tickwire_client::{
    rustls, Backoff, Client, ClientOptions, Error, Event, Events, HttpPublisher, Kind, Outgoing,
    SubscribeOptions, SubscriptionState, TokenProvider,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

fn is_delivery(event: &Event, topic: &str, seq: u64) -> bool {
    matches!(event, Event::Update(u) | Event::Snapshot(u) if u.topic == topic && u.seq == seq)
}

/// (kind, topic, seq) of every delivery in `events`.
fn deliveries(events: &[Event]) -> Vec<(Kind, String, u64)> {
    (events.iter())
        .filter_map(|e| match e {
            Event::Update(u) | Event::Snapshot(u) => Some((u.kind, u.topic.clone(), u.seq)),
            _ => None,
        })
        .collect()
}

fn seqs_of(events: &[Event], topic: &str) -> Vec<u64> {
    (deliveries(events).into_iter())
        .filter(|(_, t, _)| t == topic)
        .map(|(_, _, seq)| seq)
        .collect()
}

fn resets(events: &[Event]) -> Vec<String> {
    (events.iter())
        .filter_map(|e| match e {
            Event::Reset { topic } => Some(topic.clone()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A server that can be stopped and started again on the same address
// ---------------------------------------------------------------------------------------------

struct Server {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl Server {
    /// Starts on `addr` (port 0 for any), with SO_REUSEADDR as the server binds.
    async fn start(addr: SocketAddr, extra_toml: &str) -> Server {
        let settings = common::settings(extra_toml);
        let mut tries = 0;
        let listener = loop {
            match tickwire::server::bind(addr) {
                Ok(listener) => break listener,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("bind {addr}: {e}, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let shutdown = async move {
                let _ = rx.await;
            };
            tickwire::server::run(listener, settings, shutdown)
                .await
                .expect("server failed");
        });
        Server {
            addr,
            shutdown: Some(tx),
            handle,
        }
    }

    /// Drains (clients get close 1001) and waits until the listener is gone.
    async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(15), &mut self.handle)
            .await
            .expect("server did not stop")
            .expect("server task panicked");
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and replies
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_returns_seq_and_server_errors_are_typed() {
    let server = start("").await;
    let client = Client::connect(ws_url(server.addr), options()).await.unwrap();
    assert!(client.is_connected());

    let first = client.publish("chat.seq", &json!({"n": 1})).await.unwrap();
    assert_eq!((first.topic.as_str(), first.seq), ("chat.seq", 1));
    assert_eq!(client.publish("chat.seq", "two").await.unwrap().seq, 2);

    // Replies are matched by id even when requests overlap.
    let (a, b, c) = tokio::join!(
        client.publish("chat.seq", &3),
        client.publish("prices.X", &1),
        client.subscribe(["bad..topic"]),
    );
    assert_eq!(a.unwrap().seq, 3);
    match b {
        Err(Error::Server { code, message }) => {
            assert_eq!(code, "forbidden");
            assert!(message.contains("prices.X"), "{message}");
        }
        other => panic!("expected a forbidden error, got {other:?}"),
    }
    assert_eq!(c.unwrap_err().code(), Some("invalid_topic"));

    // The same topic's seq continues over HTTP, single and batched.
    let http = HttpPublisher::new(&format!("http://{}", server.addr)).unwrap();
    assert_eq!(http.publish("chat.seq", &json!([4])).await.unwrap().seq, 4);
    let batch = vec![
        Outgoing::new("chat.seq", &5).unwrap(),
        Outgoing::new("prices.X", &json!({"last": 1.5})).unwrap(),
    ];
    let results = http.publish_batch(&batch).await.unwrap();
    assert_eq!(
        results
            .iter()
            .map(|p| (p.topic.as_str(), p.seq))
            .collect::<Vec<_>>(),
        [("chat.seq", 5), ("prices.X", 1)]
    );
    // Keep-alive connection reused for several requests in a row.
    for seq in 6..=8 {
        assert_eq!(http.publish("chat.seq", &seq).await.unwrap().seq, seq);
    }
    match http.publish("chat.*", &1).await {
        Err(Error::Http { status, code, .. }) => assert_eq!((status, code.as_str()), (400, "invalid_topic")),
        other => panic!("expected HTTP 400, got {other:?}"),
    }
    let bad = vec![
        Outgoing::new("chat.ok", &1).unwrap(),
        Outgoing::new("x..y", &1).unwrap(),
    ];
    assert_eq!(
        http.publish_batch(&bad).await.unwrap_err().code(),
        Some("invalid_topic")
    );
    assert!(
        common::get_topic(server.addr, "chat.ok").await.is_none(),
        "batches are all or nothing"
    );

    client.close().await;
    assert!(!client.is_connected());
    assert!(matches!(client.publish("chat.seq", &1).await, Err(Error::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_errors() {
    let unused: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    match Client::connect(ws_url(unused), options()).await {
        Err(Error::Connect { .. }) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(matches!(
        Client::connect("http://127.0.0.1:1/ws", options()).await,
        Err(Error::InvalidUrl { .. })
    ));
    // The upgrade refused with an HTTP error body: its code and message come through.
    let server = start("[server]\nmax_connections = 1\n").await;
    let first = Client::connect(ws_url(server.addr), options()).await.unwrap();
    match Client::connect(ws_url(server.addr), options()).await {
        Err(Error::Http {
            status,
            code,
            message,
        }) => {
            assert_eq!((status, code.as_str()), (503, "unavailable"));
            assert!(message.contains("connection limit"), "{message}");
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
    // Token provider failures stop the connection attempt.
    let failing = options().token_provider(TokenProvider::from_fn(|| Err::<String, _>("no token")));
    match Client::connect(ws_url(server.addr), failing).await {
        Err(Error::Token(e)) => assert_eq!(e.to_string(), "no token"),
        other => panic!("expected a token error, got {other:?}"),
    }
    first.close().await;
}

/// A provider that hands out `tokens[i]` on its `i`th call (the last one from then on), and
/// the number of calls so far.
fn counted_tokens(tokens: Vec<String>) -> (TokenProvider, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let provider = TokenProvider::from_fn(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Error>(tokens[n.min(tokens.len() - 1)].clone())
    });
    (provider, calls)
}

/// Every event until the stream ends (bounded by `within`).
async fn until_end(events: &mut Events, within: Duration) -> Vec<Event> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => seen.push(event),
            Ok(None) => return seen,
            Err(_) => panic!("the event stream did not end within {within:?}; saw {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_tokens_are_final_unless_the_provider_has_a_new_one() {
    let server = start(JWT_TOML).await;
    let expired = sign_token(&claims("ann", &["chat.>"], &[], -10));
    let fixed = options().token_provider(TokenProvider::fixed(expired));
    match Client::connect(ws_url(server.addr), fixed).await {
        Err(Error::Unauthorized {
            status,
            code,
            message,
        }) => {
            assert_eq!((status, code.as_str()), (401, "unauthorized"));
            assert_eq!(message, "token expired");
        }
        other => panic!("expected Unauthorized, got {other:?}"),
    }

    // Tokens that expire while connected (the server closes with 4003), three providers at
    // once: the same token again, a new one that is refused too, a new valid one.
    let short = sign_token(&claims("ann", &["chat.>"], &[], 2));
    let refused = sign_token(&claims("bob", &["chat.>"], &[], -10));
    let valid = sign_token(&claims("cy", &["chat.>"], &[], 3600));
    let connect = |tokens: Vec<String>| async move {
        let (provider, calls) = counted_tokens(tokens);
        let client = Client::connect(ws_url(server.addr), options().token_provider(provider))
            .await
            .unwrap();
        let events = client.events().unwrap();
        (client, events, calls)
    };
    let (
        (same, mut same_events, same_calls),
        (other, mut other_events, other_calls),
        (new, mut new_events, new_calls),
    ) = tokio::join!(
        connect(vec![short.clone()]),
        connect(vec![short.clone(), refused]),
        connect(vec![short, valid]),
    );
    let (same_seen, other_seen, new_seen) = tokio::join!(
        until_end(&mut same_events, RECV_TIMEOUT),
        until_end(&mut other_events, RECV_TIMEOUT),
        until(&mut new_events, "a second Open", {
            let mut opens = 0;
            move |e| {
                opens += usize::from(matches!(e, Event::Open));
                opens == 2
            }
        }),
    );

    // The same token: no reconnect at all; the stream ends with the close.
    assert!(
        matches!(&same_seen[..], [Event::Open, Event::Close { code: 4003, .. }]),
        "{same_seen:?}"
    );
    assert_eq!(
        same_calls.load(Ordering::SeqCst),
        2,
        "the connect, and asking for a new token"
    );
    assert!(!same.is_connected());
    assert!(matches!(same.subscribe(["chat.a"]).await, Err(Error::Closed)));

    // A new token the server refuses: one attempt, then the refusal ends the stream.
    assert!(
        matches!(
            &other_seen[..],
            [
                Event::Open,
                Event::Close { code: 4003, .. },
                Event::Error(Error::Unauthorized { status: 401, .. })
            ]
        ),
        "{other_seen:?}"
    );
    assert_eq!(other_calls.load(Ordering::SeqCst), 3);
    tokio::time::sleep(SILENCE).await;
    assert_eq!(
        other_calls.load(Ordering::SeqCst),
        3,
        "no attempt after the final refusal"
    );
    assert!(matches!(other.publish("chat.a", &1).await, Err(Error::Closed)));

    // A new valid token: reconnected with it.
    assert!(
        matches!(
            &new_seen[..],
            [Event::Open, Event::Close { code: 4003, .. }, Event::Open]
        ),
        "{new_seen:?}"
    );
    assert_eq!(new_calls.load(Ordering::SeqCst), 2);
    new.subscribe(["chat.a"]).await.unwrap();
    new.close().await;
}

// ---------------------------------------------------------------------------------------------
// Event stream and callbacks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_delivers_snapshot_then_updates_without_duplicates() {
    let server = start("").await;
    publish(server.addr, "prices.A", json!({"last": 1.50})).await;
    let client = Client::connect(ws_url(server.addr), options()).await.unwrap();
    let mut events = client.events().unwrap();
    assert!(client.events().is_none(), "events can be taken once");
    assert!(matches!(next(&mut events).await, Event::Open));

    let subscribed = client.subscribe(["prices.*"]).await.unwrap();
    assert_eq!(subscribed.topics, ["prices.*"]);
    assert_eq!(subscribed.positions["prices.A"].seq, 1);
    match next(&mut events).await {
        Event::Snapshot(u) => {
            assert_eq!((u.kind, u.topic.as_str(), u.seq), (Kind::Snapshot, "prices.A", 1));
            assert_eq!(u.data.get(), r#"{"last":1.5}"#);
            assert_eq!(u.decode::<Value>().unwrap(), json!({"last": 1.5}));
        }
        other => panic!("expected the snapshot, got {other:?}"),
    }
    for i in 2..=4 {
        publish(server.addr, "prices.A", json!({"last": i})).await;
    }
    publish(server.addr, "prices.B", json!({"last": 9})).await;
    let seen = until(&mut events, "prices.B", |e| is_delivery(e, "prices.B", 1)).await;
    assert_eq!(
        deliveries(&seen),
        [
            (Kind::Update, "prices.A".to_string(), 2),
            (Kind::Update, "prices.A".to_string(), 3),
            (Kind::Update, "prices.A".to_string(), 4),
            (Kind::Update, "prices.B".to_string(), 1),
        ]
    );

    // An overlapping subscription: the server sends snapshots again, the client drops them
    // as duplicates.
    let again = client.subscribe(["prices.A", "prices.>"]).await.unwrap();
    assert_eq!(again.positions["prices.A"].seq, 4);
    expect_quiet(&mut events).await;
    publish(server.addr, "prices.A", json!({"last": 5})).await;
    assert!(is_delivery(&next(&mut events).await, "prices.A", 5));
    expect_quiet(&mut events).await;

    // Events is a futures Stream too.
    publish(server.addr, "prices.B", json!({"last": 10})).await;
    let streamed = tokio::time::timeout(RECV_TIMEOUT, futures_util::StreamExt::next(&mut events)).await;
    assert!(
        matches!(streamed, Ok(Some(ref e)) if is_delivery(e, "prices.B", 2)),
        "{streamed:?}"
    );

    let removed = client
        .unsubscribe(["prices.*", "prices.>", "prices.A"])
        .await
        .unwrap();
    assert_eq!(removed.topics.len(), 3);
    publish(server.addr, "prices.A", json!({"last": 6})).await;
    expect_quiet(&mut events).await;

    client.close().await;
    match next(&mut events).await {
        Event::Close { code, .. } => assert_eq!(code, 1000),
        other => panic!("expected Close, got {other:?}"),
    }
    assert!(events.recv().await.is_none(), "the stream ends after close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_fire_in_order_and_errors_reach_on_error() {
    let server = start("").await;
    publish(server.addr, "chat.cb", json!("before")).await;
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let push = |log: &Arc<Mutex<Vec<String>>>| {
        let log = log.clone();
        move |entry: String| log.lock().unwrap().push(entry)
    };
    let (on_open, on_message, on_close, on_error) = (push(&log), push(&log), push(&log), push(&log));
    let client = Client::builder(ws_url(server.addr))
        .options(options())
        .on_open(move || on_open("open".into()))
        .on_message(move |u| on_message(format!("{:?} {} {} {}", u.kind, u.topic, u.seq, u.data)))
        .on_close(move |code, reason| on_close(format!("close {code} {reason}")))
        .on_error(move |e| on_error(format!("error {}", e.code().unwrap_or("?"))))
        .connect()
        .await
        .unwrap();
    assert!(client.events().is_none(), "callbacks consume the events");
    client.subscribe(["chat.cb"]).await.unwrap();
    for i in 1..=3 {
        assert_eq!(client.publish("chat.cb", &i).await.unwrap().seq, i + 1);
    }
    // Nobody awaits a publish_nowait: its refusal goes to on_error.
    client.publish_nowait("prices.nope", &1).unwrap();
    // ...and so does an error for a request whose caller gave up waiting.
    let wait_for_error = async {
        while !log.lock().unwrap().iter().any(|l| l.starts_with("error")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(RECV_TIMEOUT, wait_for_error)
        .await
        .expect("on_error not called");
    client.close().await;
    assert_eq!(
        *log.lock().unwrap(),
        [
            "open",
            r#"Snapshot chat.cb 1 "before""#,
            "Update chat.cb 2 1",
            "Update chat.cb 3 2",
            "Update chat.cb 4 3",
            "error forbidden",
            "close 1000 client closed",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Reconnect and recovery
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_without_loss_when_the_connection_drops() {
    let server = start("[history]\nsize = 1000\n").await;
    let proxy = Proxy::start(server.addr).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let tokens = TokenProvider::from_fn(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        Ok::<_, Error>(format!("tok {n}"))
    });
    // prices.A exists before the pattern subscription (its epoch is known); prices.B appears
    // after it (epoch unknown: the documented protocol limitation).
    publish(server.addr, "prices.A", json!(1)).await;
    let client = Client::connect(ws_url(proxy.addr), options().token_provider(tokens))
        .await
        .unwrap();
    let mut events = client.events().unwrap();
    client.subscribe(["chat.room", "prices.*"]).await.unwrap();
    for i in 1..=5 {
        publish(server.addr, "chat.room", json!(i)).await;
    }
    publish(server.addr, "prices.A", json!(2)).await;
    publish(server.addr, "prices.B", json!(1)).await;
    let mut seen = until(&mut events, "prices.B 1", |e| is_delivery(e, "prices.B", 1)).await;

    // Cut the connection and keep the door shut while publications go on.
    proxy.set_open(false);
    proxy.cut();
    let closed = until(&mut events, "Close", |e| matches!(e, Event::Close { .. })).await;
    assert!(
        matches!(closed.last(), Some(Event::Close { code: 1006, .. })),
        "{closed:?}"
    );
    seen.extend(closed);
    for i in 6..=25 {
        publish(server.addr, "chat.room", json!(i)).await;
    }
    publish(server.addr, "prices.A", json!(3)).await;
    publish(server.addr, "prices.B", json!(2)).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // a few refused attempts
    proxy.set_open(true);

    seen.extend(until(&mut events, "chat.room 25", |e| is_delivery(e, "chat.room", 25)).await);
    seen.extend(until(&mut events, "prices.B 2", |e| is_delivery(e, "prices.B", 2)).await);
    publish(server.addr, "chat.room", json!(26)).await;
    seen.extend(until(&mut events, "chat.room 26", |e| is_delivery(e, "chat.room", 26)).await);

    assert_eq!(
        seqs_of(&seen, "chat.room"),
        (1..=26).collect::<Vec<_>>(),
        "gap-free, no duplicates"
    );
    assert_eq!(seqs_of(&seen, "prices.A"), [1, 2, 3]);
    assert_eq!(
        resets(&seen),
        ["prices.B"],
        "only the topic with an unknown epoch resets"
    );
    let opens = seen.iter().filter(|e| matches!(e, Event::Open)).count();
    assert_eq!(opens, 2, "the first connection and one reconnect");
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Error(Error::Connect { .. }))),
        "refused attempts surface as errors"
    );
    let b = (seen.iter())
        .filter_map(|e| match e {
            Event::Snapshot(u) if u.topic == "prices.B" => Some(u.seq),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(b, [2], "a snapshot follows prices.B's reset");

    // The token provider ran for every attempt, and the token went into the URL.
    let lines = proxy.request_lines();
    assert!(lines.len() >= 2, "{lines:?}");
    assert_eq!(lines[0], "GET /ws?token=tok%201 HTTP/1.1");
    assert!(calls.load(Ordering::SeqCst) >= 2);
    let last = format!("GET /ws?token=tok%20{} HTTP/1.1", calls.load(Ordering::SeqCst));
    assert_eq!(lines.last().unwrap(), &last);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_when_history_no_longer_covers_the_gap() {
    let server = start("[history]\nsize = 3\n").await;
    let proxy = Proxy::start(server.addr).await;
    let client = Client::connect(ws_url(proxy.addr), options()).await.unwrap();
    let mut events = client.events().unwrap();
    let subscribed = client.subscribe(["chat.h"]).await.unwrap();
    assert_eq!(subscribed.positions["chat.h"].seq, 0);
    for i in 1..=2 {
        publish(server.addr, "chat.h", json!(i)).await;
    }
    let mut seen = until(&mut events, "chat.h 2", |e| is_delivery(e, "chat.h", 2)).await;
    proxy.set_open(false);
    proxy.cut();
    seen.extend(until(&mut events, "Close", |e| matches!(e, Event::Close { .. })).await);
    for i in 3..=12 {
        publish(server.addr, "chat.h", json!(i)).await;
    }
    proxy.set_open(true);
    seen.extend(until(&mut events, "snapshot 12", |e| is_delivery(e, "chat.h", 12)).await);
    publish(server.addr, "chat.h", json!(13)).await;
    seen.extend(until(&mut events, "update 13", |e| is_delivery(e, "chat.h", 13)).await);
    let tail: Vec<String> = (seen.iter())
        .skip_while(|e| !matches!(e, Event::Close { .. }))
        .filter_map(|e| match e {
            Event::Open => Some("open".to_string()),
            Event::Reset { topic } => Some(format!("reset {topic}")),
            Event::Snapshot(u) => Some(format!("snapshot {} {}", u.seq, u.data)),
            Event::Update(u) => Some(format!("update {} {}", u.seq, u.data)),
            _ => None,
        })
        .collect();
    assert_eq!(tail, ["open", "reset chat.h", "snapshot 12 12", "update 13 13"]);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_server_restart_and_resets_every_topic() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let first = Server::start(any, "").await;
    let addr = first.addr;
    // The first token is free; later ones wait for the test to open the gate, so the client
    // reconnects exactly when the new server has data.
    let (gate, gate_rx) = watch::channel(false);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let tokens = TokenProvider::new(move || {
        let mut gate = gate_rx.clone();
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if n > 0 {
                let _ = gate.wait_for(|open| *open).await;
            }
            Ok::<_, Error>(format!("t{n}"))
        }
    });
    publish(addr, "prices.A", json!(1)).await;
    publish(addr, "prices.Z", json!(1)).await;
    let client = Client::connect(ws_url(addr), options().token_provider(tokens))
        .await
        .unwrap();
    let mut events = client.events().unwrap();
    client.subscribe(["chat.lobby", "prices.*"]).await.unwrap();
    for i in 1..=3 {
        publish(addr, "chat.lobby", json!(i)).await;
    }
    publish(addr, "prices.A", json!(2)).await;
    until(&mut events, "prices.A 2", |e| is_delivery(e, "prices.A", 2)).await;

    first.stop().await;
    let closed = until(&mut events, "Close", |e| matches!(e, Event::Close { .. })).await;
    assert!(
        matches!(closed.last(), Some(Event::Close { code: 1001, .. })),
        "drain closes with 1001: {closed:?}"
    );
    assert!(!client.is_connected());
    // Requests made while disconnected wait for the reconnect.
    let pending = tokio::spawn({
        let client = client.clone();
        async move { client.publish("chat.lobby", &json!("queued")).await }
    });

    let second = Server::start(addr, "").await;
    assert_eq!(
        publish(addr, "chat.lobby", json!("new")).await,
        1,
        "a new epoch starts at 1"
    );
    assert_eq!(publish(addr, "prices.A", json!(10)).await, 1);
    gate.send(true).unwrap();

    let seen = until(&mut events, "the queued publish", |e| {
        is_delivery(e, "chat.lobby", 2)
    })
    .await;
    assert!(matches!(seen[0], Event::Open), "{seen:?}");
    let mut got_resets = resets(&seen);
    got_resets.sort();
    assert_eq!(got_resets, ["chat.lobby", "prices.A", "prices.Z"], "{seen:?}");
    let mut snapshots: Vec<(String, u64)> = (seen.iter())
        .filter_map(|e| match e {
            Event::Snapshot(u) => Some((u.topic.clone(), u.seq)),
            _ => None,
        })
        .collect();
    snapshots.sort();
    assert_eq!(
        snapshots,
        [("chat.lobby".to_string(), 1), ("prices.A".to_string(), 1)]
    );
    for topic in ["chat.lobby", "prices.A"] {
        let reset = seen
            .iter()
            .position(|e| matches!(e, Event::Reset { topic: t } if t == topic));
        let snapshot = seen.iter().position(|e| is_delivery(e, topic, 1));
        assert!(
            reset < snapshot,
            "{topic}: Reset comes before the snapshot: {seen:?}"
        );
    }
    assert_eq!(pending.await.unwrap().unwrap().seq, 2);
    // prices.Z does not exist on the new server; when it appears, it starts at seq 1.
    publish(addr, "prices.Z", json!("z")).await;
    until(&mut events, "prices.Z 1", |e| is_delivery(e, "prices.Z", 1)).await;
    assert!(calls.load(Ordering::SeqCst) >= 2);
    client.close().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reconnect_the_stream_ends_with_the_connection() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let server = Server::start(any, "").await;
    let client = Client::connect(ws_url(server.addr), options().no_reconnect())
        .await
        .unwrap();
    let mut events = client.events().unwrap();
    assert!(matches!(next(&mut events).await, Event::Open));
    server.stop().await;
    match next(&mut events).await {
        Event::Close { code, reason } => assert_eq!((code, reason.as_str()), (1001, "server shutting down")),
        other => panic!("expected Close, got {other:?}"),
    }
    assert!(tokio::time::timeout(RECV_TIMEOUT, events.recv())
        .await
        .unwrap()
        .is_none());
    assert!(matches!(client.subscribe(["a"]).await, Err(Error::Closed)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_time_out_while_the_server_is_unreachable() {
    let server = start("").await;
    let proxy = Proxy::start(server.addr).await;
    let client = Client::connect(
        ws_url(proxy.addr),
        options().request_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let mut events = client.events().unwrap();
    proxy.set_open(false);
    proxy.cut();
    until(&mut events, "Close", |e| matches!(e, Event::Close { .. })).await;
    match client.publish("chat.t", &1).await {
        Err(Error::Timeout(d)) => assert_eq!(d, Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    proxy.set_open(true);
    until(&mut events, "Open", |e| matches!(e, Event::Open)).await;
    // The timed-out publish was never sent: the next one gets seq 1.
    assert_eq!(client.publish("chat.t", &2).await.unwrap().seq, 1);
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_requests_stay_under_the_message_limit() {
    // 400 topics with long names: their `since` positions do not fit one 64 KiB request, so the
    // client asks to recover those that fit and resets the others (instead of a request the
    // server would close with 1009 on every reconnect).
    let server = start("").await;
    let topic = |i: usize| format!("chat.many.{}{i:03}", "x".repeat(140));
    let messages: Vec<(String, Value)> = (0..400).map(|i| (topic(i), json!(i))).collect();
    let refs: Vec<(&str, Value)> = messages.iter().map(|(t, d)| (t.as_str(), d.clone())).collect();
    common::publish_batch(server.addr, &refs).await;
    let proxy = Proxy::start(server.addr).await;
    let client = Client::connect(ws_url(proxy.addr), options()).await.unwrap();
    let mut events = client.events().unwrap();
    client.subscribe(["chat.many.*"]).await.unwrap();
    let mut snapshots = 0;
    until(&mut events, "400 snapshots", |e| {
        snapshots += usize::from(matches!(e, Event::Snapshot(_)));
        snapshots == 400
    })
    .await;

    proxy.cut();
    until(&mut events, "Open", |e| matches!(e, Event::Open)).await;
    // Replies come in request order: once this one is back, the re-subscription is done.
    client.subscribe(["chat.marker"]).await.unwrap();
    publish(server.addr, "chat.marker", json!("end")).await;
    let seen = until(&mut events, "the marker", |e| is_delivery(e, "chat.marker", 1)).await;
    let reset = resets(&seen);
    assert!(
        (50..=200).contains(&reset.len()),
        "{} of 400 topics reset",
        reset.len()
    );
    let mut snapshot_topics: Vec<String> = (seen.iter())
        .filter_map(|e| match e {
            Event::Snapshot(u) => Some(u.topic.clone()),
            _ => None,
        })
        .collect();
    let mut expected = reset.clone();
    expected.sort();
    snapshot_topics.sort();
    assert_eq!(
        snapshot_topics, expected,
        "exactly the reset topics get a new snapshot"
    );
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Close { .. })),
        "the re-subscription was accepted: {:?}",
        seen.iter().find(|e| matches!(e, Event::Close { .. }))
    );
    // Recovered and reset topics both carry on.
    let kept = (0..400).map(topic).find(|t| !reset.contains(t)).unwrap();
    publish(server.addr, &kept, json!("next")).await;
    publish(server.addr, &reset[0], json!("next")).await;
    until(&mut events, "kept topic", |e| is_delivery(e, &kept, 2)).await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_cut_off_by_the_server_recovers_without_loss() {
    let server = start("[server]\nmax_message_bytes = 8192\n[queue]\nmax_bytes = 16384\n\n[history]\nsize = 100000\nttl_seconds = 600\n").await;
    let client = Client::connect(ws_url(server.addr), options().event_buffer(1))
        .await
        .unwrap();
    let mut events = client.events().unwrap();
    client.subscribe(["chat.slow"]).await.unwrap();
    // Bursts larger than the server's queue for the client (a small queue.max_bytes; the test
    // reads no events meanwhile) get it disconnected with 4008.
    let pad = "x".repeat(1000);
    let mut published = 0u64;
    loop {
        let batch: Vec<(&str, Value)> = (0..200)
            .map(|i| ("chat.slow", json!({"i": published + i + 1, "pad": pad})))
            .collect();
        published += common::publish_batch(server.addr, &batch).await.len() as u64;
        let slow = metric(
            server.addr,
            "tickwire_disconnects_total{reason=\"slow_consumer\"}",
        )
        .await;
        if slow.is_some_and(|n| n > 0.0) {
            break;
        }
        assert!(published < 40_000, "never disconnected as a slow consumer");
    }
    let seen = until(&mut events, "the last publication", |e| {
        is_delivery(e, "chat.slow", published)
    })
    .await;
    assert_eq!(
        seqs_of(&seen, "chat.slow"),
        (1..=published).collect::<Vec<_>>(),
        "gap-free across the disconnect"
    );
    assert!(resets(&seen).is_empty());
    let closes: Vec<u16> = (seen.iter())
        .filter_map(|e| match e {
            Event::Close { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    assert!(
        matches!(closes.as_slice(), [4008] | [1006]),
        "cut off once: {closes:?}"
    );
    for e in &seen {
        if let Event::Update(u) = e {
            assert_eq!(u.decode::<Value>().unwrap()["i"], json!(u.seq));
        }
    }
    client.close().await;
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// A TLS-terminating proxy in front of `target` with a fresh self-signed certificate for
/// `localhost`; returns its address and a client configuration that trusts the certificate.
async fn tls_proxy(target: SocketAddr) -> (SocketAddr, Arc<rustls::ClientConfig>, JoinHandle<()>) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, Arc::new(client_config), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_and_https_through_rustls() {
    let server = start("").await;
    let (addr, tls, proxy) = tls_proxy(server.addr).await;
    let wss = format!("wss://localhost:{}/ws", addr.port());

    // The default roots do not trust a self-signed certificate.
    match Client::connect(wss.as_str(), options()).await {
        Err(Error::Connect { source, .. }) => {
            assert!(
                source.to_string().to_lowercase().contains("certificate"),
                "{source}"
            )
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }

    let client = Client::connect(wss.as_str(), options().tls_config(tls.clone()))
        .await
        .unwrap();
    let mut events = client.events().unwrap();
    client.subscribe(["chat.tls"]).await.unwrap();
    assert_eq!(client.publish("chat.tls", "over wss").await.unwrap().seq, 1);
    let https = HttpPublisher::new(&format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .token_provider(TokenProvider::fixed("secret"));
    assert_eq!(https.publish("chat.tls", "over https").await.unwrap().seq, 2);
    let seen = until(&mut events, "both", |e| is_delivery(e, "chat.tls", 2)).await;
    let data: Vec<String> = (seen.iter())
        .filter_map(|e| match e {
            Event::Update(u) => Some(u.data.get().to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(data, [r#""over wss""#, r#""over https""#]);
    client.close().await;
    proxy.abort();
}

// ---------------------------------------------------------------------------------------------
// Robustness
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_server_input_becomes_errors_not_panics() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // A fake server: answers the client's first request (a publish) with the wrong reply type,
    // then sends garbage, then one good update.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let Some(Ok(Message::Text(request))) = ws.next().await else {
            panic!("no request")
        };
        let request: Value = serde_json::from_str(request.as_str()).unwrap();
        assert_eq!(request["op"], "publish");
        let id = request["id"].as_i64().unwrap();
        let frames = [
            json!({"type": "subscribed", "id": id, "topics": []}).to_string(),
            "not json".to_string(),
            r#"{"type":"update","topic":"x"}"#.to_string(),
            r#"{"type":"update","topic":"x","seq":1,"ts":1,"data":{"unterminated":}"#.to_string(),
            json!({"type": "teleport"}).to_string(),
            json!({"type": "published", "id": 424242, "topic": "x", "seq": 1}).to_string(),
            json!({"type": "error", "code": "boom", "message": "no id"}).to_string(),
        ];
        for frame in frames {
            ws.send(Message::text(frame)).await.unwrap();
        }
        ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        let good = json!({"type": "update", "topic": "x", "seq": 1, "ts": 2, "data": [1]});
        ws.send(Message::text(good.to_string())).await.unwrap();
        // Stay open until the client closes.
        while let Some(Ok(_)) = ws.next().await {}
    });
    let client = Client::connect(ws_url(addr), options()).await.unwrap();
    let mut events = client.events().unwrap();
    match client.publish("chat.x", &1).await {
        Err(Error::Protocol(message)) => assert!(message.contains("subscribed"), "{message}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let seen = until(&mut events, "the good update", |e| is_delivery(e, "x", 1)).await;
    let errors: Vec<String> = (seen.iter())
        .filter_map(|e| match e {
            Event::Error(Error::Protocol(m)) => Some(format!("protocol: {}", m.split(':').next().unwrap())),
            Event::Error(Error::Server { code, .. }) => Some(format!("server: {code}")),
            Event::Error(other) => Some(format!("other: {other}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        [
            "protocol: unexpected `subscribed` reply",
            "protocol: malformed frame (expected ident at line 1 column 2)",
            "protocol: malformed frame (missing field `seq` at line 1 column 29)",
            "protocol: malformed frame (expected value at line 1 column 68)",
            "protocol: unknown frame type \"teleport\"",
            "server: boom",
            "protocol: unexpected binary message of 3 bytes",
        ]
    );
    assert!(client.is_connected(), "bad frames do not end the connection");
    client.close().await;
    fake.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_from_a_callback_while_events_back_up() {
    let server = start("").await;
    let holder: Arc<Mutex<Option<Client>>> = Arc::default();
    let closes = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = oneshot::channel::<()>();
    let mut done_tx = Some(done_tx);
    let (h, c) = (holder.clone(), closes.clone());
    let client = Client::builder(ws_url(server.addr))
        .options(options().event_buffer(1))
        .on_message(move |u| {
            if u.seq == 3 {
                // Slow down so events back up, then close from a spawned task.
                std::thread::sleep(Duration::from_millis(50));
                let client = h.lock().unwrap().clone().unwrap();
                let done = done_tx.take().unwrap();
                tokio::spawn(async move {
                    client.close().await;
                    let _ = done.send(());
                });
            }
        })
        .on_close(move |code, _| {
            assert_eq!(code, 1000);
            c.fetch_add(1, Ordering::SeqCst);
        })
        .connect()
        .await
        .unwrap();
    *holder.lock().unwrap() = Some(client.clone());
    client.subscribe(["chat.cb"]).await.unwrap();
    let batch: Vec<(&str, Value)> = (0..500).map(|i| ("chat.cb", json!(i))).collect();
    common::publish_batch(server.addr, &batch).await;
    tokio::time::timeout(RECV_TIMEOUT, done_rx)
        .await
        .expect("close() from a callback's task did not finish")
        .unwrap();
    assert_eq!(
        closes.load(Ordering::SeqCst),
        1,
        "on_close ran once, before close() returned"
    );
    holder.lock().unwrap().take();
}

// ---------------------------------------------------------------------------------------------
// Subscriptions refused while a cluster node has no Redis are retried
// ---------------------------------------------------------------------------------------------

/// Fast subscribe retries: the first within 150 ms, then at most 300 ms apart.
fn retrying_options() -> ClientOptions {
    options().subscribe_retry(Backoff {
        initial: Duration::from_millis(150),
        max: Duration::from_millis(300),
        factor: 2.0,
        max_attempts: None,
    })
}

/// The state of an `Event::Subscription` for exactly `topics`, if `event` is one.
fn subscription_state<'a>(event: &'a Event, topics: &[&str]) -> Option<&'a SubscriptionState> {
    match event {
        Event::Subscription { topics: t, state }
            if t.iter().map(String::as_str).eq(topics.iter().copied()) =>
        {
            Some(state)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_refused_while_redis_is_down_is_retried_until_it_succeeds() {
    // The node's Redis port is known, but nothing listens on it yet.
    let mut redis = RedisServer::start(false);
    redis.kill();
    let node = start(&redis.broker_toml("retry")).await;
    let client = Client::connect(ws_url(node.addr), retrying_options())
        .await
        .unwrap();
    let mut events = client.events().unwrap();
    assert!(matches!(next(&mut events).await, Event::Open));

    // The caller gets the refusal; the client keeps the subscription as retrying.
    let refused = client.subscribe(["chat.retry"]).await.unwrap_err();
    assert_eq!(refused.code(), Some("unavailable"), "{refused}");
    match next(&mut events).await {
        Event::Subscription {
            topics,
            state:
                SubscriptionState::Retrying {
                    error,
                    attempt,
                    delay,
                },
        } => {
            assert_eq!(topics, ["chat.retry"]);
            assert_eq!((error.code(), attempt), (Some("unavailable"), 1));
            assert!(delay <= Duration::from_millis(150), "{delay:?}");
        }
        other => panic!("expected Retrying, got {other:?}"),
    }
    // A second subscription, cancelled by an unsubscribe while it waits.
    assert_eq!(
        client.subscribe(["chat.gone"]).await.unwrap_err().code(),
        Some("unavailable")
    );
    // Retries while Redis stays down are refused too, with growing attempt numbers.
    let seen = until(&mut events, "retry 3 of chat.retry", |e| {
        matches!(
            subscription_state(e, &["chat.retry"]),
            Some(SubscriptionState::Retrying { attempt: 3, .. })
        )
    })
    .await;
    let attempts: Vec<u32> = (seen.iter())
        .filter_map(|e| match subscription_state(e, &["chat.retry"]) {
            Some(SubscriptionState::Retrying { attempt, .. }) => Some(*attempt),
            Some(other) => panic!("unexpected state {other:?}"),
            None => None,
        })
        .collect();
    assert_eq!(attempts, [2, 3]);
    client.unsubscribe(["chat.gone"]).await.unwrap();

    // Redis comes up: the next retry is accepted and publications flow.
    redis.restart();
    wait_ready(node.addr).await;
    let seen = until(&mut events, "chat.retry subscribed", |e| {
        matches!(
            subscription_state(e, &["chat.retry"]),
            Some(SubscriptionState::Subscribed)
        )
    })
    .await;
    for event in &seen[..seen.len() - 1] {
        match event {
            Event::Subscription {
                topics,
                state: SubscriptionState::Retrying { .. },
            } if topics == &["chat.retry"] || topics == &["chat.gone"] => {}
            other => panic!("unexpected event before Subscribed: {other:?}"),
        }
    }
    publish(node.addr, "chat.gone", json!("nobody")).await;
    publish(node.addr, "chat.retry", json!("hello")).await;
    match next(&mut events).await {
        Event::Update(u) => {
            assert_eq!(
                (u.topic.as_str(), u.seq, u.data.get()),
                ("chat.retry", 1, r#""hello""#)
            );
        }
        other => panic!("expected the update, got {other:?}"),
    }
    // The unsubscribed topic was never retried into a subscription, and the accepted one is
    // not retried again.
    expect_quiet(&mut events).await;

    client.close().await;
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resubscribe_refused_after_a_reconnect_is_retried_and_recovers() {
    // Persistent Redis: the topic's stream (epoch, history) survives the Redis restart.
    let mut redis = RedisServer::start(true);
    let node = start(&redis.broker_toml("reretry")).await;
    wait_ready(node.addr).await;
    let proxy = Proxy::start(node.addr).await;
    let client = Client::connect(ws_url(proxy.addr), retrying_options())
        .await
        .unwrap();
    let mut events = client.events().unwrap();
    assert!(matches!(next(&mut events).await, Event::Open));
    // Published first, so that the subscribe reply tells the topic's epoch (needed to recover).
    publish(node.addr, "chat.re", json!(1)).await;
    client.subscribe(["chat.re"]).await.unwrap();
    assert!(is_delivery(&next(&mut events).await, "chat.re", 1));

    // Redis goes down and the connection drops: the re-subscription is refused.
    redis.kill();
    proxy.cut();
    let seen = until(&mut events, "re-subscription retrying", |e| {
        matches!(
            subscription_state(e, &["chat.re"]),
            Some(SubscriptionState::Retrying { attempt: 1, .. })
        )
    })
    .await;
    assert!(seen.iter().any(|e| matches!(e, Event::Open)), "{seen:?}");
    assert!(!seen.iter().any(|e| matches!(e, Event::Error(_))), "{seen:?}");

    // Redis is back; a publication made meanwhile is recovered, without a reset.
    redis.restart();
    wait_ready(node.addr).await;
    publish(node.addr, "chat.re", json!(2)).await;
    let seen = until(&mut events, "chat.re #2", |e| is_delivery(e, "chat.re", 2)).await;
    assert!(
        seen.iter().any(|e| matches!(
            subscription_state(e, &["chat.re"]),
            Some(SubscriptionState::Subscribed)
        )),
        "{seen:?}"
    );
    assert_eq!(resets(&seen), Vec::<String>::new());
    assert_eq!(seqs_of(&seen, "chat.re"), [2]);
    publish(node.addr, "chat.re", json!(3)).await;
    assert!(is_delivery(&next(&mut events).await, "chat.re", 3));
    expect_quiet(&mut events).await;

    client.close().await;
    node.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Subscribe options: max rate and Fossil deltas
// ---------------------------------------------------------------------------------------------

/// The documents of these tests: 30 fields, well over 128 bytes (the server's `delta.min_bytes`).
const DOCUMENT_FIELDS: usize = 30;

async fn delta_frames(addr: SocketAddr) -> f64 {
    metric(addr, "tickwire_delta_frames_total").await.unwrap_or(0.0)
}

/// Publishes `count` documents to `topic`, one at a time, and checks that each arrives with
/// exactly the published text as its data. Returns how many deltas the server sent meanwhile.
async fn documents_arrive_exactly(
    addr: SocketAddr,
    events: &mut Events,
    topic: &str,
    rng: &mut Rng,
    fields: &mut Vec<String>,
    count: usize,
) -> f64 {
    let before = delta_frames(addr).await;
    for _ in 0..count {
        let doc = next_document(rng, fields, DOCUMENT_FIELDS);
        let seq = publish_text(addr, topic, &doc).await;
        let seen = until(events, "the document", |e| is_delivery(e, topic, seq)).await;
        for event in &seen {
            match event {
                Event::Update(u) if u.topic == topic && u.seq == seq => {
                    assert_eq!(u.data.get(), doc, "{topic} #{seq} arrives byte for byte")
                }
                Event::Update(_) | Event::Snapshot(_) | Event::Open | Event::Close { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    delta_frames(addr).await - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_updates_reach_the_application_as_the_published_data() {
    let server = start("").await;
    let addr = server.addr;
    let mut rng = Rng(18);
    let mut fields = Vec::new();
    let first = next_document(&mut rng, &mut fields, DOCUMENT_FIELDS);
    publish_text(addr, "doc.d", &first).await;
    let client = Client::connect(ws_url(addr), options()).await.unwrap();
    let mut events = client.events().unwrap();
    let delta = SubscribeOptions::default().delta(true);
    client.subscribe_with(["doc.*"], delta).await.unwrap();
    let seen = until(&mut events, "the snapshot", |e| is_delivery(e, "doc.d", 1)).await;
    match seen.last() {
        Some(Event::Snapshot(u)) => assert_eq!(u.data.get(), first),
        other => panic!("expected the snapshot, got {other:?}"),
    }

    let deltas = documents_arrive_exactly(addr, &mut events, "doc.d", &mut rng, &mut fields, 100).await;
    assert!(deltas >= 95.0, "the server sent them as deltas: {deltas} of 100");
    // A plain subscriber of the same topic on the same client is not affected.
    client.subscribe(["doc.d"]).await.unwrap();
    let deltas = documents_arrive_exactly(addr, &mut events, "doc.d", &mut rng, &mut fields, 10).await;
    assert!(
        deltas >= 9.0,
        "any delta subscription of a topic keeps deltas on: {deltas}"
    );
    expect_quiet(&mut events).await;
    client.close().await;
}

/// Receives `topic`'s updates until seq `last`: (seq, data text, arrival time) of each.
async fn timed_updates(events: &mut Events, topic: &str, last: u64) -> Vec<(u64, String, Instant)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + RECV_TIMEOUT;
    while got.last().is_none_or(|(seq, _, _)| *seq < last) {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Update(u))) if u.topic == topic => {
                got.push((u.seq, u.data.get().to_string(), Instant::now()))
            }
            Ok(Some(_)) => {}
            other => panic!("waiting for {topic} #{last}: {other:?}, got {got:?}"),
        }
    }
    got
}

/// A burst of 500 publications reaches a `max_rate` 2 subscription as a few updates, at least
/// 0.4 s apart, the last of which is the newest.
async fn burst_is_thinned(addr: SocketAddr, events: &mut Events, topic: &str) {
    let batch: Vec<(&str, Value)> = (0..500).map(|i| (topic, json!({"i": i}))).collect();
    let seqs = common::publish_batch(addr, &batch).await;
    let last = *seqs.last().unwrap();
    let got = timed_updates(events, topic, last).await;
    let seqs: Vec<u64> = got.iter().map(|(seq, _, _)| *seq).take(10).collect();
    assert!(
        got.len() <= 4,
        "{} updates of a burst at max_rate 2: {seqs:?}…",
        got.len()
    );
    assert_eq!(got.last().unwrap().1, r#"{"i":499}"#, "the newest arrives");
    for pair in got.windows(2) {
        let gap = pair[1].2 - pair[0].2;
        assert!(
            gap >= Duration::from_millis(400),
            "updates {gap:?} apart: {seqs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rate_thins_a_burst_and_bad_rates_are_refused_locally() {
    let server = start("").await;
    let client = Client::connect(ws_url(server.addr), options()).await.unwrap();
    let mut events = client.events().unwrap();
    for bad in [0.0, 0.009, 1000.5, -1.0, f64::NAN] {
        let refused = client
            .subscribe_with(["rate.b"], SubscribeOptions::default().max_rate(bad))
            .await
            .unwrap_err();
        assert!(
            matches!(refused, Error::InvalidMaxRate(r) if r.to_bits() == bad.to_bits()),
            "{refused:?}"
        );
    }
    let reply = client
        .subscribe_with(["rate.b"], SubscribeOptions::default().max_rate(2.0))
        .await
        .unwrap();
    assert_eq!(reply.topics, ["rate.b"], "only the valid request was sent");
    burst_is_thinned(server.addr, &mut events, "rate.b").await;
    // The server refuses what it cannot thin out (chat.> is a `queue` topic by default).
    let refused = client
        .subscribe_with(["chat.b"], SubscribeOptions::default().max_rate(2.0))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("bad_request"), "{refused}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_options_are_sent_again_after_a_reconnect() {
    let server = start("").await;
    let addr = server.addr;
    let proxy = Proxy::start(addr).await;
    let client = Client::connect(ws_url(proxy.addr), options()).await.unwrap();
    let mut events = client.events().unwrap();
    let mut rng = Rng(5);
    let mut fields = Vec::new();
    // Two subscriptions with different options: a reconnect sends them in two requests.
    (client.subscribe_with(["doc.*"], SubscribeOptions::default().delta(true)))
        .await
        .unwrap();
    (client.subscribe_with(["rate.*"], SubscribeOptions::default().max_rate(2.0)))
        .await
        .unwrap();
    let deltas = documents_arrive_exactly(addr, &mut events, "doc.r", &mut rng, &mut fields, 5).await;
    assert!(deltas >= 4.0, "{deltas}");
    burst_is_thinned(addr, &mut events, "rate.x").await;

    proxy.cut();
    until(&mut events, "the reconnect", |e| matches!(e, Event::Open)).await;
    // Once a publication of each arrives, both re-subscriptions are in place.
    let seq = publish(addr, "rate.x", json!("after")).await;
    until(&mut events, "rate.x after the reconnect", |e| {
        is_delivery(e, "rate.x", seq)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await; // past the rate's interval
    let deltas = documents_arrive_exactly(addr, &mut events, "doc.r", &mut rng, &mut fields, 20).await;
    assert!(deltas >= 19.0, "deltas after the reconnect: {deltas} of 20");
    burst_is_thinned(addr, &mut events, "rate.x").await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_that_does_not_apply_is_never_delivered_and_the_topic_is_caught_up_in_full() {
    use futures_util::{SinkExt, StreamExt};
    use tickwire_proto::fossil;
    use tokio_tungstenite::tungstenite::Message;
    type FakeWs = tokio_tungstenite::WebSocketStream<TcpStream>;

    async fn next_request(ws: &mut FakeWs) -> Value {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("no request: {other:?}"),
            }
        }
    }
    async fn send(ws: &mut FakeWs, frame: String) {
        ws.send(Message::text(frame)).await.unwrap();
    }
    let full = |kind: &str, seq: usize, data: &str| {
        format!(r#"{{"type":"{kind}","topic":"doc.f","seq":{seq},"ts":1,"data":{data}}}"#)
    };
    let delta = |seq: usize, from: &str, to: &str| {
        let delta = fossil::create_str(from, to);
        json!({"type": "update", "topic": "doc.f", "seq": seq, "ts": 1, "delta": delta}).to_string()
    };
    // docs[n] is the data of seq n.
    let mut rng = Rng(9);
    let mut fields = Vec::new();
    let docs: Vec<String> = (0..=8)
        .map(|_| next_document(&mut rng, &mut fields, DOCUMENT_FIELDS))
        .collect();
    let wanted = SubscribeOptions::default().max_rate(4.0).delta(true);
    let asked = |id: &Value, since: Option<Value>| {
        let mut request =
            json!({"op": "subscribe", "id": id, "topics": ["doc.*"], "max_rate": 4.0, "delta": "fossil"});
        if let Some(since) = since {
            request["since"] = since;
        }
        request
    };

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_docs = docs.clone();
    let fake = tokio::spawn(async move {
        let docs = server_docs;
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let request = next_request(&mut ws).await;
        assert_eq!(request, asked(&request["id"], None));
        let id = &request["id"];
        let reply = json!({"type": "subscribed", "id": id, "topics": ["doc.*"], "positions": {"doc.f": {"seq": 1, "epoch": "E"}}});
        send(&mut ws, reply.to_string()).await;
        send(&mut ws, full("snapshot", 1, &docs[1])).await;
        send(&mut ws, delta(2, &docs[1], &docs[2])).await;
        // Made for other data than seq 2's (its checksum gives it away), then one the client
        // cannot apply either, sent before its resync request arrives.
        send(&mut ws, delta(3, &docs[3], &docs[3])).await;
        send(&mut ws, delta(4, &docs[3], &docs[4])).await;
        let request = next_request(&mut ws).await;
        let since = json!({"doc.f": {"seq": 2, "epoch": "E"}});
        assert_eq!(
            request,
            asked(&request["id"], Some(since)),
            "resync from the last delivered"
        );
        let reply = json!({"type": "subscribed", "id": request["id"], "topics": ["doc.*"],
            "positions": {"doc.f": {"seq": 4, "epoch": "E"}}, "recovered": {"doc.f": true}});
        send(&mut ws, reply.to_string()).await;
        send(&mut ws, full("update", 3, &docs[3])).await;
        send(&mut ws, full("update", 4, &docs[4])).await;
        send(&mut ws, delta(5, &docs[4], &docs[5])).await;
        // A delta whose base (seq 6) the client never got.
        send(&mut ws, delta(7, &docs[6], &docs[7])).await;
        let request = next_request(&mut ws).await;
        let since = json!({"doc.f": {"seq": 5, "epoch": "E"}});
        assert_eq!(request, asked(&request["id"], Some(since)));
        // This time history does not reach back: a reset, and a snapshot to start from.
        let reply = json!({"type": "subscribed", "id": request["id"], "topics": ["doc.*"],
            "positions": {"doc.f": {"seq": 7, "epoch": "F"}}, "recovered": {"doc.f": false}});
        send(&mut ws, reply.to_string()).await;
        send(&mut ws, full("snapshot", 7, &docs[7])).await;
        send(&mut ws, delta(8, &docs[7], &docs[8])).await;
        while let Some(Ok(_)) = ws.next().await {}
    });

    let client = Client::connect(ws_url(addr), options()).await.unwrap();
    let mut events = client.events().unwrap();
    client.subscribe_with(["doc.*"], wanted).await.unwrap();
    let seen = until(&mut events, "doc.f #8", |e| is_delivery(e, "doc.f", 8)).await;
    let story: Vec<String> = (seen.iter())
        .filter_map(|e| match e {
            Event::Open => None,
            Event::Update(u) | Event::Snapshot(u) => {
                assert_eq!(u.data.get(), docs[u.seq as usize], "#{} is exact", u.seq);
                Some(format!("{:?} {}", u.kind, u.seq))
            }
            Event::Error(Error::Delta { topic, seq, reason }) => {
                // Fossil's own checks (checksum, copy bounds): which one depends on the data.
                let why = if reason.starts_with("fossil delta:") {
                    "refused by Fossil"
                } else {
                    reason
                };
                Some(format!("delta error {topic} {seq}: {why}"))
            }
            Event::Reset { topic } => Some(format!("reset {topic}")),
            other => Some(format!("unexpected {other:?}")),
        })
        .collect();
    assert_eq!(
        story,
        [
            "Snapshot 1",
            "Update 2",
            "delta error doc.f 3: refused by Fossil",
            "Update 3",
            "Update 4",
            "Update 5",
            "delta error doc.f 7: it applies to seq 6, the last data is seq 5",
            "reset doc.f",
            "Snapshot 7",
            "Update 8",
        ]
    );
    client.close().await;
    fake.await.unwrap();
}
