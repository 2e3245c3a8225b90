//! `/healthz`, `/readyz` and the separate admin listener.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_readyz_on_the_main_listener() {
    let server = start("").await;
    let r = http_get(server.addr, "/healthz").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let r = http_get(server.addr, "/readyz").await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    // Probes are counted like every route.
    let m = scrape(server.addr).await;
    assert_eq!(
        m.value(
            "tickwire_http_requests_total",
            &[("route", "healthz"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "tickwire_http_requests_total",
            &[("route", "readyz"), ("status", "200")]
        ),
        1.0
    );
}

#[track_caller]
fn assert_not_found(r: &HttpResponse, what: &str) {
    assert_eq!(
        r.status,
        404,
        "{what}: expected 404, got {} {:?}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let body = r.json();
    assert_eq!(body["error"]["code"], "not_found", "{what}: {body}");
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_listener_splits_operator_and_application_routes() {
    let (server, admin) = start_with_admin("").await;
    let main = server.addr;

    // Operator routes: on admin, not on main.
    for path in ["/healthz", "/readyz"] {
        let r = http_get(admin, path).await;
        assert_eq!(r.status, 200, "admin {path}");
        assert_not_found(&http_get(main, path).await, &format!("main {path}"));
    }
    assert_not_found(&http_get(main, "/metrics").await, "main /metrics");

    // Application routes: on main, not on admin.
    let mut ws = connect(main).await;
    subscribe(&mut ws, 1, &["news.x"]).await;
    assert_eq!(publish(main, "news.x", json!(1)).await, 1);
    assert_eq!(assert_update(&recv_json(&mut ws).await, "news.x"), 1);

    let (status, body) = post_json(admin, "/api/v1/publish", &json!({"topic": "news.x", "data": 2})).await;
    assert_eq!(status, 404, "publish on admin: {body}");
    assert_eq!(body["error"]["code"], "not_found");
    assert_not_found(&http_get(admin, "/api/v1/topics").await, "admin /api/v1/topics");
    let upgrade = http_request(
        admin,
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        None,
    )
    .await;
    assert_not_found(&upgrade, "WebSocket upgrade on admin");
    // The refused publish did not publish.
    expect_silence(&mut ws, SILENCE).await;

    // The admin /metrics reflects the main listener's traffic, and the 404s.
    let m = scrape(admin).await;
    assert_eq!(m.value("tickwire_connections", &[]), 1.0);
    assert_eq!(
        m.value("tickwire_messages_published_total", &[("source", "http")]),
        1.0
    );
    assert_eq!(
        m.value(
            "tickwire_http_requests_total",
            &[("route", "not_found"), ("status", "404")]
        ),
        6.0,
        "3 operator routes on main + publish, topics and ws on admin"
    );
    drop(ws);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_readyz_turns_503_while_draining() {
    let (server, admin) = start_with_admin("").await;
    // A client that never reads, so never answers the server's close: it keeps the drain
    // going for a moment.
    let _stalled = raw_ws_connect(server.addr).await;
    wait_metric(admin, "tickwire_connections", &[], "1", |v| v == 1.0).await;
    assert_eq!(http_get(admin, "/readyz").await.status, 200);

    let main = server.addr;
    let done = server.begin_shutdown();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let r = http_get(admin, "/readyz").await;
        if r.status == 503 {
            break;
        }
        assert_eq!(r.status, 200, "/readyz during shutdown");
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz still 200 two seconds after shutdown began"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Liveness is unaffected by the drain; the main listener no longer accepts.
    assert_eq!(http_get(admin, "/healthz").await.status, 200);
    assert!(
        tokio::net::TcpStream::connect(main).await.is_err(),
        "main listener still accepts during the drain"
    );
    let result = tokio::time::timeout(Duration::from_secs(15), done)
        .await
        .expect("serve did not return after shutdown");
    result.expect("join").expect("clean drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_releases_the_admin_listener_when_it_returns() {
    let (server, admin) = start_with_admin("").await;
    assert_eq!(http_get(admin, "/healthz").await.status, 200);
    server.stop().await.expect("clean stop");
    // serve() has returned: nothing of the server should be left listening.
    match tokio::net::TcpStream::connect(admin).await {
        Err(_) => {}
        Ok(_) => {
            let r = http_get(admin, "/readyz").await;
            panic!(
                "admin listener {admin} still accepts after serve() returned (/readyz -> {})",
                r.status
            );
        }
    }
}
