//! Occupancy events and `[[webhooks]]` on one node (issue 20), with a real HTTP receiver on
//! loopback: `occupied`/`vacated` once per transition with the vacate delay, `join`/`leave` with
//! the member, the signature checked by the receiver, a retry after a 500, the bounded queue
//! of an endpoint that is down, and `https://` receivers: trusted through a private CA's
//! `ca_file`, or refused (a CA not trusted, the system's roots) and counted as errors.

mod common;

use std::time::Duration;

use common::webhook::Receiver;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "hook-secret-0123";

fn hook_toml(url: &str, events: &[&str], extra: &str) -> String {
    format!("[[webhooks]]\nurl = \"{url}\"\nevents = {events:?}\nsecret = \"{SECRET}\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn occupied_and_vacated_once_per_transition_with_the_vacate_delay() {
    let receiver = Receiver::start(&[]).await;
    let toml = format!(
        "{}[occupancy]\nvacate_delay = \"600ms\"\n",
        hook_toml(
            &receiver.url("/hooks"),
            &["occupied", "vacated"],
            "topics = [\"prices.>\"]"
        )
    );
    let server = start(&toml).await;
    let addr = server.addr;

    // Two subscribers, one after the other: one `occupied`. Another topic outside `topics`: none.
    let mut a = connect(addr).await;
    subscribe(&mut a, 1, &["prices.BTC", "other.x"]).await;
    let mut b = connect(addr).await;
    subscribe(&mut b, 1, &["prices.BTC"]).await;
    eventually("occupied", Duration::from_secs(5), || async {
        !receiver.hooks().is_empty()
    })
    .await;

    // A reconnect within the delay: no event at all.
    unsubscribe(&mut a, 2, &["prices.BTC"]).await;
    unsubscribe(&mut b, 2, &["prices.BTC"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    subscribe(&mut b, 3, &["prices.BTC"]).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        receiver.events(),
        [("occupied".to_string(), "prices.BTC".to_string())]
    );
    // Every topic counts, whether a webhook wants its events or not.
    assert_eq!(
        metric_value(addr, "tickwire_occupied_topics").await,
        2.0,
        "prices.BTC, other.x"
    );

    // Gone for longer than the delay: one `vacated`, not before the delay.
    let left = tokio::time::Instant::now();
    close_gracefully(b).await;
    eventually("vacated", Duration::from_secs(5), || async {
        receiver.hooks().len() == 2
    })
    .await;
    assert!(
        left.elapsed() >= Duration::from_millis(550),
        "vacated after {:?}",
        left.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        receiver.events(),
        [
            ("occupied".to_string(), "prices.BTC".to_string()),
            ("vacated".to_string(), "prices.BTC".to_string())
        ]
    );

    // Each request is signed, and the body has the documented fields.
    let hooks = receiver.hooks();
    for hook in &hooks {
        assert_eq!(hook.path, "/hooks");
        assert!(hook.signed_with(SECRET), "bad signature {:?}", hook.signature);
        assert!(!hook.signed_with("another secret"));
        let body = hook.json();
        let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["event", "id", "member", "topic", "ts"], "{body}");
        assert_eq!(body["member"], Value::Null);
        assert!(body["ts"].as_u64().unwrap() > 1_700_000_000_000, "{body}");
        assert_eq!(body["id"].as_str().unwrap().len(), 32, "{body}");
    }
    assert_ne!(hooks[0].json()["id"], hooks[1].json()["id"]);
    assert_eq!(
        metric_value(addr, "tickwire_occupied_topics").await,
        1.0,
        "other.x"
    );
    let s = scrape(addr).await;
    assert_eq!(
        s.value(
            "tickwire_webhook_requests_total",
            &[("event", "occupied"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        s.value(
            "tickwire_webhook_requests_total",
            &[("event", "vacated"), ("result", "ok")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_go_to_the_webhook_with_the_member() {
    let receiver = Receiver::start(&[]).await;
    let toml = format!(
        "{JWT_TOML}[presence]\npatterns = [\"chat.>\"]\n{}",
        hook_toml(&receiver.url("/"), &["join", "leave"], "")
    );
    let server = start(&toml).await;
    let mut claims = claims("ann", &["chat.>"], &[], 600);
    claims["info"] = json!({"name": "Ann"});
    let mut ann = connect_with_token(server.addr, &token(&claims)).await;
    subscribe(&mut ann, 1, &["chat.lobby"]).await;
    unsubscribe(&mut ann, 2, &["chat.lobby"]).await;
    eventually("join and leave", Duration::from_secs(5), || async {
        receiver.hooks().len() == 2
    })
    .await;
    let bodies: Vec<Value> = receiver.hooks().iter().map(|h| h.json()).collect();
    assert_eq!(
        (bodies[0]["event"].clone(), bodies[1]["event"].clone()),
        (json!("join"), json!("leave"))
    );
    for body in &bodies {
        assert_eq!(body["topic"], "chat.lobby");
        assert_eq!(body["member"]["user"], "ann");
        assert_eq!(body["member"]["info"], json!({"name": "Ann"}));
    }
    assert_eq!(bodies[0]["member"], bodies[1]["member"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_request_is_retried_with_the_same_body() {
    let receiver = Receiver::start(&[500, 503]).await;
    let server = start(&hook_toml(&receiver.url("/h"), &["occupied"], "max_attempts = 3")).await;
    let mut a = connect(server.addr).await;
    subscribe(&mut a, 1, &["t.one"]).await;
    eventually("three tries", Duration::from_secs(5), || async {
        receiver.hooks().len() == 3
    })
    .await;
    let hooks = receiver.hooks();
    assert!(hooks
        .iter()
        .all(|h| h.body == hooks[0].body && h.signed_with(SECRET)));
    let s = scrape(server.addr).await;
    let requests = |result| {
        s.value(
            "tickwire_webhook_requests_total",
            &[("event", "occupied"), ("result", result)],
        )
    };
    assert_eq!((requests("status"), requests("ok")), (2.0, 1.0));
    // No fourth try once one succeeded.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(receiver.hooks().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_down_holds_at_most_its_queue() {
    // A port nobody listens on: every try fails at once, and retries keep the first event busy.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/down", closed.local_addr().unwrap());
    drop(closed);
    let server = start(&hook_toml(&url, &["occupied"], "queue = 2\nmax_attempts = 20")).await;
    let mut a = connect(server.addr).await;
    let topics: Vec<String> = (0..10).map(|i| format!("t.{i}")).collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    subscribe(&mut a, 1, &names).await;
    // One in flight, two queued, the other seven (or eight, if the first was not yet taken off
    // the queue) dropped.
    eventually("dropped events counted", Duration::from_secs(5), || async {
        metric_value(server.addr, "tickwire_webhook_queue_dropped_total").await >= 7.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = scrape(server.addr).await;
    let dropped = s.value("tickwire_webhook_queue_dropped_total", &[]);
    assert!((7.0..=8.0).contains(&dropped), "dropped {dropped}");
    assert!(
        s.value(
            "tickwire_webhook_requests_total",
            &[("event", "occupied"), ("result", "error")]
        ) >= 1.0
    );
    assert_eq!(
        s.get(
            "tickwire_webhook_requests_total",
            &[("event", "occupied"), ("result", "ok")]
        ),
        None
    );
}

/// `ca_file = <path>` of a fresh file holding `pem`.
fn ca_file_toml(name: &str, pem: &str) -> String {
    let file = scratch(name).join("ca.pem");
    std::fs::write(&file, pem).unwrap();
    format!("ca_file = \"{}\"", file.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_receiver_trusted_through_ca_file_gets_the_signed_body() {
    let ca = private_ca("tickwire webhook test CA");
    let receiver = Receiver::start_https(&[], &ca.server).await;
    let url = receiver.url("/secure");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let toml = hook_toml(&url, &["occupied"], &ca_file_toml("hook-ca", &ca.ca_pem));
    let server = start(&toml).await;
    let mut a = connect(server.addr).await;
    subscribe(&mut a, 1, &["t.secure"]).await;
    eventually("the hook over HTTPS", Duration::from_secs(5), || async {
        receiver.hooks().len() == 1
    })
    .await;
    let hook = &receiver.hooks()[0];
    assert_eq!(hook.path, "/secure");
    assert!(hook.signed_with(SECRET), "bad signature {:?}", hook.signature);
    assert_eq!(
        (hook.json()["event"].clone(), hook.json()["topic"].clone()),
        (json!("occupied"), json!("t.secure"))
    );
    assert_eq!(receiver.refused_handshakes(), 0);
    assert_eq!(
        scrape(server.addr).await.value(
            "tickwire_webhook_requests_total",
            &[("event", "occupied"), ("result", "ok")]
        ),
        1.0
    );
}

/// Two `https://` receivers the server must not trust: one whose certificate chains to another
/// CA than the entry's `ca_file`, one checked against the system's roots (no `ca_file`). Every
/// try fails at the handshake, is counted as an error and logged; nothing reaches a receiver,
/// and the server (a real process, so that its log can be read) keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_receiver_that_is_not_trusted_gets_nothing() {
    let (trusted, other) = (private_ca("trusted CA"), private_ca("other CA"));
    let wrong_ca = Receiver::start_https(&[], &other.server).await;
    let system = Receiver::start_https(&[], &other.server).await;
    let toml = format!(
        "{}{}",
        hook_toml(
            &wrong_ca.url("/a"),
            &["occupied"],
            &format!(
                "max_attempts = 2\n{}",
                ca_file_toml("hook-trusted", &trusted.ca_pem)
            )
        ),
        hook_toml(&system.url("/b"), &["occupied"], "max_attempts = 2")
    );
    let config = scratch("hook-untrusted").join("tickwire.toml");
    std::fs::write(&config, toml).unwrap();
    let mut server = ServerProcess::start_with_args(&["--config", config.to_str().unwrap()], &[]).await;
    let mut a = connect(server.addr).await;
    subscribe(&mut a, 1, &["t.untrusted"]).await;
    let addr = server.addr;
    let errors = move || async move {
        (scrape(addr).await)
            .get(
                "tickwire_webhook_requests_total",
                &[("event", "occupied"), ("result", "error")],
            )
            .unwrap_or(0.0)
    };
    eventually(
        "two tries per receiver, failed",
        Duration::from_secs(10),
        || async { errors().await == 4.0 },
    )
    .await;
    eventually("both given up, logged", Duration::from_secs(5), || async {
        server.logs().matches("webhook given up").count() == 2
    })
    .await;
    let logs = server.logs();
    assert!(logs.contains("invalid peer certificate"), "{logs}");
    assert!(wrong_ca.hooks().is_empty() && system.hooks().is_empty());
    assert_eq!(
        (wrong_ca.refused_handshakes(), system.refused_handshakes()),
        (2, 2)
    );
    let s = scrape(server.addr).await;
    assert_eq!(
        s.get(
            "tickwire_webhook_requests_total",
            &[("event", "occupied"), ("result", "ok")]
        ),
        None
    );
    assert!(server.child.try_wait().unwrap().is_none(), "the server runs on");
    assert_eq!(http_get(server.addr, "/healthz").await.status, 200);
    assert_usable(&mut a, 2).await;
    assert_eq!(errors().await, 4.0, "no more tries");
}
