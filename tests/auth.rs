//! Authentication and authorization, end to end: JWTs on the WebSocket upgrade (every way a
//! token is refused, 401 before any upgrade), the ACL in its claims (subscribe, publish, no
//! frame of an unreadable topic), token refresh and expiry (4003), and API keys and tokens on
//! the HTTP API (401, 403, all-or-nothing batches, the publish matrix of protocol.md §10.1).

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

const AUD_ISS: &str = "audience = \"tickwire\"\nissuer = \"https://idp.test/\"\n";

/// Claims that pass the audience and issuer checks of [`AUD_ISS`].
fn good_claims() -> Value {
    let mut c = claims("alice", &["prices.>"], &["chat.>"], 60);
    c["aud"] = json!("tickwire");
    c["iss"] = json!("https://idp.test/");
    c
}

fn with(mut c: Value, key: &str, value: Value) -> Value {
    c[key] = value;
    c
}

async fn rejected(addr: std::net::SocketAddr, reason: &str) -> f64 {
    scrape(addr)
        .await
        .value("tickwire_connections_rejected_total", &[("reason", reason)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_is_refused_with_401_before_the_upgrade() {
    let server = start(&format!("{JWT_TOML}{AUD_ISS}")).await;
    let addr = server.addr;
    let hs = |c: &Value| token(c);
    let other_secret = EncodingKey::from_secret(b"another-secret-another-secret-0123456789");
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(good_claims().to_string());
    let unsigned = format!("{header}.{payload}.");
    let mut no_exp = good_claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    let cases: Vec<(&str, String)> = vec![
        (
            "bad signature",
            sign(&good_claims(), Algorithm::HS256, &other_secret, None),
        ),
        (
            "HS512 where HS256 is configured",
            sign(
                &good_claims(),
                Algorithm::HS512,
                &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
                None,
            ),
        ),
        ("alg none", unsigned),
        ("expired", hs(&with(good_claims(), "exp", json!(unix_now() - 30)))),
        ("no exp", hs(&no_exp)),
        ("exp as a string", hs(&with(good_claims(), "exp", json!("never")))),
        (
            "not before",
            hs(&with(good_claims(), "nbf", json!(unix_now() + 60))),
        ),
        ("wrong audience", hs(&with(good_claims(), "aud", json!("other")))),
        (
            "wrong issuer",
            hs(&with(good_claims(), "iss", json!("https://evil.test/"))),
        ),
        ("no issuer", {
            let mut c = good_claims();
            c.as_object_mut().unwrap().remove("iss");
            hs(&c)
        }),
        (
            "invalid pattern claim",
            hs(&with(good_claims(), "subscribe", json!(["a..b"]))),
        ),
        ("garbage", "not-a-token".to_string()),
    ];
    let mut refused = 0.0;
    // No token at all, and an Authorization header of another scheme.
    for headers in [vec![], vec![("Authorization", "Basic YWxpY2U6cHc=")]] {
        let r = try_connect(addr, "/ws", &headers).await.unwrap_err();
        r.assert(401, "unauthorized");
        assert!(r
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")));
        refused += 1.0;
    }
    for (what, bad) in &cases {
        let r = try_connect(addr, &format!("/ws?token={bad}"), &[]).await;
        let r = r.err().unwrap_or_else(|| panic!("{what}: token accepted"));
        assert_eq!(r.status, 401, "{what}: {r:?}");
        assert_eq!(r.body["error"]["code"], "unauthorized", "{what}: {r:?}");
        let bearer = format!("Bearer {bad}");
        let r = try_connect(addr, "/ws", &[("Authorization", &bearer)]).await;
        assert_eq!(r.err().map(|r| r.status), Some(401), "{what} in the header");
        refused += 2.0;
    }
    assert_eq!(rejected(addr, "auth").await, refused);
    let m = scrape(addr).await;
    assert_eq!(m.value("tickwire_connections_accepted_total", &[]), 0.0);

    // The good token, in the query string and in the header.
    let good = hs(&good_claims());
    let mut ws = connect_with_token(addr, &good).await;
    assert_usable(&mut ws, 1).await;
    let bearer = format!("Bearer {good}");
    let mut ws = try_connect(addr, "/ws", &[("Authorization", &bearer)])
        .await
        .unwrap();
    subscribe(&mut ws, 2, &["prices.*"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_accept_only_their_own_algorithm() {
    let ec_private = std::fs::read(fixture("ec-private.pem")).unwrap();
    let ec_public = std::fs::read(fixture("ec-public.pem")).unwrap();
    let rsa_private = std::fs::read(fixture("rsa-private.pem")).unwrap();
    let es = EncodingKey::from_ec_pem(&ec_private).unwrap();
    let rs = EncodingKey::from_rsa_pem(&rsa_private).unwrap();
    let c = claims("bob", &["prices.>"], &[], 60);

    // ES256 from a PEM public key.
    let toml = format!(
        "[auth]\nmode = \"jwt\"\n[auth.jwt]\npublic_key_file = \"{}\"\n",
        fixture("ec-public.pem")
    );
    let server = start(&toml).await;
    let ok = sign(&c, Algorithm::ES256, &es, None);
    assert_usable(&mut connect_with_token(server.addr, &ok).await, 1).await;
    // HS/RS confusion: an HS256 token "signed" with the public key as its secret.
    let confused = sign(&c, Algorithm::HS256, &EncodingKey::from_secret(&ec_public), None);
    let rs_token = sign(&c, Algorithm::RS256, &rs, None);
    for bad in [confused, rs_token] {
        let r = try_connect(server.addr, &format!("/ws?token={bad}"), &[]).await;
        r.unwrap_err().assert(401, "unauthorized");
    }

    // A JWKS: keys chosen by kid, each with its own algorithm; encryption keys unused.
    let toml = format!(
        "[auth]\nmode = \"jwt\"\n[auth.jwt]\njwks_file = \"{}\"\n",
        fixture("jwks.json")
    );
    let server = start(&toml).await;
    for ok in [
        sign(&c, Algorithm::RS256, &rs, Some("rsa-1")),
        sign(&c, Algorithm::ES256, &es, Some("ec-1")),
    ] {
        assert_usable(&mut connect_with_token(server.addr, &ok).await, 1).await;
    }
    for bad in [
        sign(&c, Algorithm::RS256, &rs, None),
        sign(&c, Algorithm::RS256, &rs, Some("nope")),
        sign(&c, Algorithm::RS256, &rs, Some("ec-1")),
        sign(&c, Algorithm::RS256, &rs, Some("enc-1")),
        sign(
            &c,
            Algorithm::HS256,
            &EncodingKey::from_secret(&std::fs::read(fixture("rsa-public.pem")).unwrap()),
            Some("rsa-1"),
        ),
    ] {
        let r = try_connect(server.addr, &format!("/ws?token={bad}"), &[]).await;
        r.unwrap_err().assert(401, "unauthorized");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_acl_governs_subscribing_and_publishing() {
    let server = start(JWT_TOML).await;
    let addr = server.addr;
    let t = token(&claims("carol", &["prices.>", "chat.lobby"], &["chat.>"], 60));
    let mut ws = connect_with_token(addr, &t).await;

    // Any forbidden topic refuses the whole request, which subscribes nothing.
    for (id, topics) in [
        (1, vec!["prices.*", "chat.*"]),
        (2, vec![">"]),
        (3, vec!["*.lobby"]),
        (4, vec!["chat.lobby", "chat.lobby.x"]),
    ] {
        let e = request(&mut ws, json!({"op": "subscribe", "id": id, "topics": topics})).await;
        assert_error(&e, "forbidden", Some(id));
        assert!(e["message"].as_str().unwrap().contains("subscribe"), "{e}");
    }
    publish(addr, "prices.A", json!(1)).await;
    publish(addr, "chat.lobby", json!(1)).await;
    expect_silence(&mut ws, SILENCE).await;
    let listing = topic_listing(addr, "prices.A").await.unwrap();
    assert_eq!(listing["subscribers"], 0, "{listing}");

    // Publishing follows the token's `publish` claim.
    let ok = request(
        &mut ws,
        json!({"op": "publish", "id": 5, "topic": "chat.room", "data": 1}),
    )
    .await;
    assert_eq!(ok["type"], "published", "{ok}");
    for (id, topic) in [(6, "prices.A"), (7, "news.x"), (8, "chat")] {
        let e = request(
            &mut ws,
            json!({"op": "publish", "id": id, "topic": topic, "data": 2}),
        )
        .await;
        assert_error(&e, "forbidden", Some(id));
    }
    assert_eq!(get_topic(addr, "prices.A").await.unwrap()["seq"], 1);
    assert!(get_topic(addr, "news.x").await.is_none());
    let m = scrape(addr).await;
    assert_eq!(
        m.value("tickwire_messages_published_total", &[("source", "client")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_frame_of_an_unreadable_topic_reaches_the_client() {
    let server = start(JWT_TOML).await;
    let addr = server.addr;
    let t = token(&claims(
        "dave",
        &["prices.>", "chat.lobby", "news.*.public"],
        &[],
        60,
    ));
    let mut ws = connect_with_token(addr, &t).await;
    subscribe(
        &mut ws,
        1,
        &["prices.*", "prices.>", "chat.lobby", "news.*.public"],
    )
    .await;
    let readable = ["prices.A", "prices.A.book", "chat.lobby", "news.eu.public"];
    let unreadable = [
        "prices",
        "pricesx.A",
        "chat.secret",
        "chat.lobby.x",
        "news.eu.private",
        "news.public",
        "admin.keys",
    ];
    for round in 0..3 {
        for topic in unreadable.iter().chain(&readable) {
            publish(addr, topic, json!({"round": round})).await;
        }
    }
    let got = recv_until_silence(&mut ws, SILENCE).await;
    let mut seen: Vec<&str> = got.iter().map(|v| v["topic"].as_str().unwrap()).collect();
    for v in &got {
        assert_eq!(v["type"], "update", "{v}");
    }
    seen.sort();
    let mut expected: Vec<&str> = readable.iter().flat_map(|t| [*t; 3]).collect();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_replaces_the_acl_and_drops_what_it_no_longer_allows() {
    let server = start(JWT_TOML).await;
    let addr = server.addr;
    let wide = claims("erin", &["prices.>", "chat.>"], &[], 60);
    let mut ws = connect_with_token(addr, &token(&wide)).await;
    subscribe(&mut ws, 1, &["prices.*", "chat.lobby", "prices.BTC"]).await;

    let narrow = token(&claims("erin", &["chat.>", "prices.BTC"], &[], 120));
    let reply = request(&mut ws, json!({"op": "auth", "id": 5, "token": narrow.clone()})).await;
    assert_eq!(reply, json!({"type": "authed", "id": 5, "dropped": ["prices.*"]}));
    publish(addr, "prices.ETH", json!(1)).await;
    publish(addr, "prices.BTC", json!(2)).await;
    publish(addr, "chat.lobby", json!(3)).await;
    let got = recv_until_silence(&mut ws, SILENCE).await;
    let topics: Vec<&str> = got.iter().map(|v| v["topic"].as_str().unwrap()).collect();
    assert_eq!(topics, ["prices.BTC", "chat.lobby"]);
    let e = request(
        &mut ws,
        json!({"op": "subscribe", "id": 6, "topics": ["prices.*"]}),
    )
    .await;
    assert_error(&e, "forbidden", Some(6));
    let m = scrape(addr).await;
    assert_eq!(m.value("tickwire_subscriptions", &[]), 2.0);

    // Refused refreshes change nothing.
    let mallory = token(&claims("mallory", &[">"], &[], 60));
    let expired = token(&claims("erin", &[">"], &[], -10));
    for (id, bad) in [(7, mallory), (8, expired), (9, "garbage".to_string())] {
        let e = request(&mut ws, json!({"op": "auth", "id": id, "token": bad})).await;
        assert_error(&e, "unauthorized", Some(id));
    }
    let e = request(&mut ws, json!({"op": "subscribe", "id": 10, "topics": [">"]})).await;
    assert_error(&e, "forbidden", Some(10));
    publish(addr, "chat.lobby", json!(4)).await;
    assert_update(&recv_json(&mut ws).await, "chat.lobby");
    let reply = request(&mut ws, json!({"op": "auth", "id": 11, "token": narrow})).await;
    assert_eq!(reply, json!({"type": "authed", "id": 11, "dropped": []}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_closes_the_connection_with_4003_unless_refreshed() {
    let server = start(JWT_TOML).await;
    let addr = server.addr;
    // Expires in 1 to 2 s (exp has whole seconds), leeway 0.
    let short = claims("frank", &["chat.>"], &[], 2);
    let mut lapsing = connect_with_token(addr, &token(&short)).await;
    let mut refreshed = connect_with_token(addr, &token(&short)).await;
    subscribe(&mut lapsing, 1, &["chat.lobby"]).await;
    let long = token(&claims("frank", &["chat.>"], &[], 600));
    let reply = request(&mut refreshed, json!({"op": "auth", "id": 1, "token": long})).await;
    assert_eq!(reply["type"], "authed", "{reply}");

    let (_, close) = recv_close_within(&mut lapsing, Duration::from_secs(4)).await;
    assert_eq!(close, (4003, "token expired".to_string()));
    assert_usable(&mut refreshed, 2).await;
    wait_metric(
        addr,
        "tickwire_disconnects_total",
        &[("reason", "token_expired")],
        "1",
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_get_the_anonymous_acl_and_cannot_refresh() {
    let server = start("[auth.anonymous]\nsubscribe = [\"public.>\"]\npublish = []\n").await;
    let mut ws = connect(server.addr).await;
    subscribe(&mut ws, 1, &["public.*"]).await;
    let e = request(
        &mut ws,
        json!({"op": "subscribe", "id": 2, "topics": ["private.x"]}),
    )
    .await;
    assert_error(&e, "forbidden", Some(2));
    let e = request(
        &mut ws,
        json!({"op": "publish", "id": 3, "topic": "chat.x", "data": 1}),
    )
    .await;
    assert_error(&e, "forbidden", Some(3));
    let e = request(&mut ws, json!({"op": "auth", "id": 4, "token": "x"})).await;
    assert_error(&e, "bad_request", Some(4));
}

// ---------------------------------------------------------------------------------------------
// HTTP publishers
// ---------------------------------------------------------------------------------------------

async fn post(addr: std::net::SocketAddr, key: Option<&str>, body: &Value) -> (u16, Value, Option<String>) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth));
    }
    let body = body.to_string();
    let r = http_request(addr, "POST", "/api/v1/publish", &headers, Some(body.as_bytes())).await;
    let www = r.header("www-authenticate").map(str::to_string);
    (r.status, r.json(), www)
}

async fn get(addr: std::net::SocketAddr, key: Option<&str>, path: &str) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let r = http_request(addr, "GET", path, &headers, None).await;
    (r.status, r.json())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_publishing_and_the_topic_api() {
    let prices = tickwire::apikey::generate().unwrap();
    let chat = tickwire::apikey::generate().unwrap();
    let toml = format!(
        "[[auth.api_keys]]\nname = \"prices\"\nsha256 = \"{}\"\npublish = [\"prices.>\"]\n\
         [[auth.api_keys]]\nname = \"chat\"\nsha256 = \"{}\"\npublish = [\"chat.*\"]\n",
        prices.sha256, chat.sha256
    );
    let server = start(&toml).await;
    let addr = server.addr;
    let one = json!({"topic": "prices.A", "data": 1});

    // Missing or unknown key: 401.
    for key in [None, Some("nope"), Some(prices.sha256.as_str()), Some("")] {
        let (status, body, www) = post(addr, key, &one).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        assert!(www.is_some_and(|w| w.starts_with("Bearer")));
    }
    let (status, body, _) = post(addr, Some(&prices.key), &one).await;
    assert_eq!((status, &body), (200, &json!({"topic": "prices.A", "seq": 1})));

    // A topic outside the key's patterns: 403, and a batch with one publishes none.
    let (status, body, _) = post(addr, Some(&prices.key), &json!({"topic": "chat.x", "data": 1})).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let batch = json!({"messages": [
        {"topic": "prices.B", "data": 1},
        {"topic": "prices.A", "data": 2},
        {"topic": "chat.x", "data": 3},
    ]});
    let (status, body, _) = post(addr, Some(&prices.key), &batch).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = get(addr, Some(&chat.key), "/api/v1/topics/prices.B").await;
    assert_eq!(status, 404, "nothing of the refused batch was published");
    let (_, last) = get(addr, Some(&chat.key), "/api/v1/topics/prices.A").await;
    assert_eq!(last["seq"], 1, "{last}");
    let (status, body, _) = post(addr, Some(&chat.key), &json!({"topic": "chat.x", "data": 1})).await;
    assert_eq!(status, 200, "{body}");

    // The topic API needs any valid key; operator endpoints stay open.
    for path in [
        "/api/v1/topics",
        "/api/v1/topics/prices.A",
        "/api/v1/topics/prices.A/history",
    ] {
        let (status, body) = get(addr, None, path).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = get(addr, Some("wrong"), path).await;
        assert_eq!(status, 401, "{path}: {body}");
        let (status, body) = get(addr, Some(&chat.key), path).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    assert_eq!(http_get(addr, "/healthz").await.status, 200);
    assert_eq!(http_get(addr, "/metrics").await.status, 200);
}

/// One cell of the HTTP publish matrix (docs/protocol.md §10.1): the status a publish of `topic`
/// with `credentials` gets.
async fn publish_status(addr: std::net::SocketAddr, credentials: Option<&str>, topic: &str) -> u16 {
    let (status, body, _) = post(addr, credentials, &json!({"topic": topic, "data": 1})).await;
    let code = match status {
        200 => None,
        401 => Some("unauthorized"),
        403 => Some("forbidden"),
        _ => panic!("{topic} with {credentials:?}: {status} {body}"),
    };
    assert_eq!(
        body["error"]["code"].as_str(),
        code,
        "{topic} with {credentials:?}: {body}"
    );
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_publish_over_http_within_their_publish_claim() {
    let alice = token(&claims("alice", &[], &["chat.>"], 60));
    let bob = token(&claims("bob", &[], &["chat.>"], 60));
    let expired = token(&claims("alice", &[], &["chat.>"], -30));
    let forged = sign(
        &claims("alice", &[], &[">"], 60),
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-another-secret-0123456789"),
        None,
    );

    // auth.mode = "jwt", no API key: open without credentials; a token is held to its claim.
    let server = start(JWT_TOML).await;
    let addr = server.addr;
    assert_eq!(publish_status(addr, None, "prices.A").await, 200);
    assert_eq!(publish_status(addr, Some("not-a-token"), "prices.A").await, 200);
    assert_eq!(publish_status(addr, Some(&alice), "chat.x").await, 200);
    assert_eq!(publish_status(addr, Some(&alice), "prices.A").await, 403);
    for bad in [&expired, &forged, &"a.b.c".to_string()] {
        assert_eq!(publish_status(addr, Some(bad), "chat.x").await, 401, "{bad}");
    }
    let batch = json!({"messages": [{"topic": "chat.y", "data": 1}, {"topic": "prices.B", "data": 2}]});
    let (status, body, _) = post(addr, Some(&alice), &batch).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        get(addr, None, "/api/v1/topics/chat.y").await.0,
        404,
        "nothing of the batch"
    );

    // A subscriber over WebSocket sees what a token publishes over HTTP.
    let mut ws = connect_with_token(addr, &token(&claims("carol", &["chat.>"], &[], 60))).await;
    subscribe(&mut ws, 1, &["chat.room"]).await;
    assert_eq!(publish_status(addr, Some(&alice), "chat.room").await, 200);
    let update = recv_json(&mut ws).await;
    assert_eq!(
        (update["type"].as_str(), update["topic"].as_str()),
        (Some("update"), Some("chat.room"))
    );

    // Idempotency-Keys are scoped by subject: alice's retry replays, bob's same key publishes.
    let once = |t: &str| {
        let auth = format!("Bearer {t}");
        async move {
            let headers = [("Authorization", auth.as_str()), ("Idempotency-Key", "k-1")];
            let body = br#"{"topic":"chat.once","data":1}"#;
            let r = http_request(addr, "POST", "/api/v1/publish", &headers, Some(body)).await;
            assert_eq!(r.status, 200, "{:?}", r.json());
            r.json()["seq"].as_u64().unwrap()
        }
    };
    let first = once(&alice).await;
    assert_eq!(once(&alice).await, first, "replayed");
    assert_eq!(once(&bob).await, first + 1, "another subject's key");
    drop(server);

    // auth.mode = "jwt" with API keys: a key or a token; nothing, or neither, is 401. The topic
    // API still reads with keys only.
    let key = tickwire::apikey::generate().unwrap();
    let toml = format!(
        "{JWT_TOML}[[auth.api_keys]]\nname = \"prices\"\nsha256 = \"{}\"\npublish = [\"prices.>\"]\n",
        key.sha256
    );
    let server = start(&toml).await;
    let addr = server.addr;
    for (credentials, topic, status) in [
        (None, "chat.x", 401),
        (Some("nope"), "chat.x", 401),
        (Some(key.key.as_str()), "prices.A", 200),
        (Some(key.key.as_str()), "chat.x", 403),
        (Some(alice.as_str()), "chat.x", 200),
        (Some(alice.as_str()), "prices.A", 403),
        (Some(expired.as_str()), "chat.x", 401),
        (Some(forged.as_str()), "chat.x", 401),
    ] {
        assert_eq!(
            publish_status(addr, credentials, topic).await,
            status,
            "{credentials:?} {topic}"
        );
    }
    assert_eq!(get(addr, Some(&alice), "/api/v1/topics").await.0, 401);
    assert_eq!(get(addr, Some(&key.key), "/api/v1/topics").await.0, 200);
    drop(server);

    // auth.mode = "none": tokens mean nothing. Without keys publishing stays open (the
    // anonymous ACL is the WebSocket's); with keys a token is an unknown key.
    let server = start("").await;
    assert_eq!(publish_status(server.addr, Some(&alice), "prices.A").await, 200);
    assert_eq!(publish_status(server.addr, None, "prices.A").await, 200);
    drop(server);
    let toml = format!(
        "[[auth.api_keys]]\nname = \"prices\"\nsha256 = \"{}\"\npublish = [\"prices.>\"]\n",
        key.sha256
    );
    let server = start(&toml).await;
    assert_eq!(publish_status(server.addr, Some(&alice), "chat.x").await, 401);
    assert_eq!(publish_status(server.addr, Some(&key.key), "prices.A").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_from_the_environment_is_used_verbatim() {
    // All digits: the environment layer would otherwise read it as a number and reformat it.
    let secret = "12345678901234567890123456789012345";
    let server = ServerProcess::start(&[
        ("TICKWIRE__AUTH__MODE", "jwt"),
        ("TICKWIRE__AUTH__JWT__HS256_SECRET", secret),
    ])
    .await;
    let key = EncodingKey::from_secret(secret.as_bytes());
    let t = sign(
        &claims("gina", &["chat.>"], &[], 60),
        Algorithm::HS256,
        &key,
        None,
    );
    let mut ws = connect_with_token(server.addr, &t).await;
    assert_usable(&mut ws, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fractional_dates_are_numeric_dates_and_alg_none_is_an_algorithm() {
    let server = start(JWT_TOML).await;
    let addr = server.addr;
    // RFC 7519 NumericDates may be fractional; exp is floored, so it never lasts longer.
    let mut c = claims("gina", &["chat.>"], &[], 0);
    c["exp"] = json!(unix_now() as f64 + 60.5);
    c["iat"] = json!(unix_now() as f64 - 0.25);
    c["nbf"] = json!(unix_now() as f64 - 1.5);
    let mut ws = connect_with_token(addr, &token(&c)).await;
    assert_usable(&mut ws, 1).await;
    let far = token(&with(c.clone(), "exp", json!(1.9e10)));
    assert_usable(&mut connect_with_token(addr, &far).await, 1).await;

    let message = |r: &Refusal| {
        r.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let past = token(&with(c.clone(), "exp", json!(unix_now() as f64 - 30.5)));
    let r = try_connect(addr, &format!("/ws?token={past}"), &[])
        .await
        .unwrap_err();
    r.assert(401, "unauthorized");
    assert_eq!(message(&r), "token expired");
    let negative = token(&with(c.clone(), "exp", json!(-1.5)));
    let r = try_connect(addr, &format!("/ws?token={negative}"), &[])
        .await
        .unwrap_err();
    assert_eq!(message(&r), "token claim `exp` is invalid");

    // `alg: none` is an algorithm refused, on the upgrade and on a refresh.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{header}.{}.", URL_SAFE_NO_PAD.encode(c.to_string()));
    let r = try_connect(addr, &format!("/ws?token={unsigned}"), &[])
        .await
        .unwrap_err();
    r.assert(401, "unauthorized");
    assert_eq!(message(&r), "token algorithm not accepted");
    let e = request(&mut ws, json!({"op": "auth", "id": 2, "token": unsigned})).await;
    assert_error(&e, "unauthorized", Some(2));
    assert_eq!(e["message"], "token algorithm not accepted");

    // The token field takes JSON escapes like every string field.
    let refreshed = token(&with(c, "exp", json!(unix_now() + 600))).replace('.', "\\u002e");
    send_text(
        &mut ws,
        &format!(r#"{{"op":"auth","id":3,"token":"{refreshed}"}}"#),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"type": "authed", "id": 3, "dropped": []})
    );
}
