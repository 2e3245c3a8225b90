//! Presence and occupancy on one node (issue 20), over real WebSockets and HTTP on loopback: the
//! `presence` op and `GET /api/v1/topics/{topic}/presence`, `presence_events` with its `join` and
//! `leave` frames in order with the topic's updates, the ACL, `presence.max_members`, and the
//! subscriber counts and occupied listing of the topic API.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const ROOMS: &str = "[presence]\npatterns = [\"chat.>\"]\n";

/// A JWT connection as `sub`, with `info` in its token when given.
async fn member(addr: std::net::SocketAddr, sub: &str, subscribe: &[&str], info: Option<Value>) -> Ws {
    let mut claims = claims(sub, subscribe, &[], 600);
    if let Some(info) = info {
        claims["info"] = info;
    }
    connect_with_token(addr, &token(&claims)).await
}

/// The members of a `presence` reply or body, sorted by user.
fn members(reply: &Value) -> Vec<Value> {
    let mut list = reply["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {reply}"))
        .clone();
    list.sort_by_key(|m| m["user"].as_str().unwrap_or_default().to_string());
    list
}

fn client_of(reply: &Value, user: &str) -> String {
    members(reply)
        .iter()
        .find(|m| m["user"] == user)
        .and_then(|m| m["client"].as_str())
        .unwrap_or_else(|| panic!("{user} not in {reply}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_the_exact_subscribers_with_their_token_identity() {
    let server = start(&format!("{JWT_TOML}{ROOMS}")).await;
    let addr = server.addr;
    let mut alice = member(
        addr,
        "alice",
        &["chat.>"],
        Some(json!({"name": "Alice", "color": 3})),
    )
    .await;
    let mut bob = member(addr, "bob", &["chat.>"], None).await;
    let mut watcher = member(addr, "carol", &["chat.>"], None).await;
    subscribe(&mut alice, 1, &["chat.lobby"]).await;
    // Nothing the client sends goes into its member: an `info` field in the request is ignored.
    let reply = request(
        &mut bob,
        json!({"op": "subscribe", "id": 1, "topics": ["chat.lobby"], "info": {"name": "Admin"}}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    // A pattern subscription receives the room but is no member of it.
    subscribe(&mut watcher, 1, &["chat.*"]).await;

    let reply = request(
        &mut watcher,
        json!({"op": "presence", "id": 7, "topic": "chat.lobby"}),
    )
    .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["topic"], "chat.lobby");
    assert_eq!(reply["count"], 2, "{reply}");
    let list = members(&reply);
    assert_eq!(list[0]["user"], "alice");
    assert_eq!(list[0]["info"], json!({"name": "Alice", "color": 3}));
    assert_eq!(list[1]["user"], "bob");
    assert_eq!(list[1]["info"], Value::Null, "no spoofed info: {reply}");
    let (a, b) = (client_of(&reply, "alice"), client_of(&reply, "bob"));
    assert!(!a.is_empty() && a != b, "distinct connection ids: {a} {b}");
    for m in &list {
        let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["client", "info", "user"], "member fields: {m}");
    }

    // The HTTP endpoint answers the same room.
    let (status, body) = get_json(addr, "/api/v1/topics/chat.lobby/presence").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["topic"].clone(), body["count"].clone()),
        (json!("chat.lobby"), json!(2))
    );
    assert_eq!(members(&body), list);

    // Unsubscribing, and closing the connection, take the member out.
    unsubscribe(&mut alice, 2, &["chat.lobby"]).await;
    let reply = request(
        &mut watcher,
        json!({"op": "presence", "id": 8, "topic": "chat.lobby"}),
    )
    .await;
    assert_eq!(
        (reply["count"].clone(), members(&reply)[0]["user"].clone()),
        (json!(1), json!("bob"))
    );
    close_gracefully(bob).await;
    eventually(
        "bob's seat goes with his connection",
        Duration::from_secs(5),
        || async { get_json(addr, "/api/v1/topics/chat.lobby/presence").await.1["count"] == 0 },
    )
    .await;
    let (_, body) = get_json(addr, "/api/v1/topics/chat.lobby/presence").await;
    assert_eq!(body["members"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_frames_come_in_order_with_the_updates() {
    let server = start(ROOMS).await;
    let addr = server.addr;
    let mut a = connect(addr).await;
    let reply = request(
        &mut a,
        json!({"op": "subscribe", "id": 1, "topics": ["chat.room"], "presence_events": true}),
    )
    .await;
    assert_eq!(reply["type"], "subscribed", "the reply comes first: {reply}");
    // Its own join follows its `subscribed` reply.
    let own = recv_json(&mut a).await;
    assert_eq!(
        (own["type"].clone(), own["topic"].clone()),
        (json!("join"), json!("chat.room")),
        "{own}"
    );
    assert_eq!(own["member"]["user"], "anonymous");
    let a_client = own["member"]["client"].clone();

    publish(addr, "chat.room", json!("before")).await;
    let mut b = connect(addr).await;
    subscribe(&mut b, 1, &["chat.room"]).await;
    let b_snapshot = recv_json(&mut b).await;
    assert_eq!(b_snapshot["type"], "snapshot", "{b_snapshot}");
    publish(addr, "chat.room", json!("between")).await;
    assert_update(&recv_json(&mut b).await, "chat.room");
    unsubscribe(&mut b, 2, &["chat.room"]).await;
    publish(addr, "chat.room", json!("after")).await;
    let mut c = connect(addr).await;
    subscribe(&mut c, 1, &["chat.room"]).await;
    drop(c);

    let frames = recv_until_silence(&mut a, Duration::from_millis(500)).await;
    let shape: Vec<String> = frames
        .iter()
        .map(|f| match f["type"].as_str().unwrap() {
            "update" => format!("update {}", f["data"]),
            kind => kind.to_string(),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "update \"before\"",
            "join",
            "update \"between\"",
            "leave",
            "update \"after\"",
            "join",
            "leave"
        ],
        "{frames:?}"
    );
    assert_eq!(frames[1]["member"], frames[3]["member"], "b joined and left");
    assert_ne!(frames[1]["member"]["client"], a_client);
    assert_eq!(frames[5]["member"], frames[6]["member"], "c joined and left");
    assert_ne!(frames[5]["member"], frames[1]["member"]);
    // b, which did not ask, got no presence frame.
    expect_silence(&mut b, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_only_for_clients_that_may_subscribe() {
    let keys = tickwire::apikey::generate().unwrap();
    let toml = format!(
        "{JWT_TOML}{ROOMS}[[auth.api_keys]]\nname = \"app\"\nsha256 = \"{}\"\npublish = [\"x.>\"]\n",
        keys.sha256
    );
    let server = start(&toml).await;
    let addr = server.addr;
    let mut insider = member(addr, "in", &["chat.secret"], None).await;
    subscribe(&mut insider, 1, &["chat.secret"]).await;
    let mut outsider = member(addr, "out", &["chat.public", "news.>"], None).await;

    let reply = request(
        &mut outsider,
        json!({"op": "presence", "id": 1, "topic": "chat.secret"}),
    )
    .await;
    assert_error(&reply, "forbidden", Some(1));
    let reply = request(
        &mut outsider,
        json!({"op": "subscribe", "id": 2, "topics": ["chat.secret"], "presence_events": true}),
    )
    .await;
    assert_error(&reply, "forbidden", Some(2));
    // Allowed, but not a room: refused, not an empty answer.
    let reply = request(
        &mut outsider,
        json!({"op": "presence", "id": 3, "topic": "news.today"}),
    )
    .await;
    assert_error(&reply, "bad_request", Some(3));
    let reply = request(
        &mut outsider,
        json!({"op": "subscribe", "id": 4, "topics": ["news.today"], "presence_events": true}),
    )
    .await;
    assert_error(&reply, "bad_request", Some(4));
    let reply = request(
        &mut insider,
        json!({"op": "subscribe", "id": 5, "topics": ["chat.*"], "presence_events": true}),
    )
    .await;
    assert_error(&reply, "forbidden", Some(5));
    let reply = request(
        &mut outsider,
        json!({"op": "subscribe", "id": 6, "topics": ["chat.public"], "presence_events": 1}),
    )
    .await;
    assert_error(&reply, "bad_request", Some(6));
    let reply = request(
        &mut outsider,
        json!({"op": "presence", "id": 7, "topic": "chat.public"}),
    )
    .await;
    assert_eq!(
        (reply["type"].clone(), reply["count"].clone()),
        (json!("presence"), json!(0))
    );

    // The HTTP endpoint needs an API key once keys are configured.
    let r = http_get(addr, "/api/v1/topics/chat.secret/presence").await;
    assert_eq!(r.status, 401, "{}", r.json());
    let auth = format!("Bearer {}", keys.key);
    let r = http_request(
        addr,
        "GET",
        "/api/v1/topics/chat.secret/presence",
        &[("Authorization", &auth)],
        None,
    )
    .await;
    assert_eq!((r.status, r.json()["count"].clone()), (200, json!(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_members_caps_the_list_but_not_the_count() {
    let server = start("[presence]\npatterns = [\"room.*\"]\nmax_members = 2\n").await;
    let addr = server.addr;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut ws = connect(addr).await;
        subscribe(&mut ws, 1, &["room.big"]).await;
        clients.push(ws);
    }
    let reply = request(
        &mut clients[0],
        json!({"op": "presence", "id": 1, "topic": "room.big"}),
    )
    .await;
    assert_eq!(reply["count"], 5, "{reply}");
    assert_eq!(reply["members"].as_array().unwrap().len(), 2, "{reply}");
    assert_eq!(metric_value(addr, "tickwire_presence_members").await, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topic_api_counts_subscribers_and_lists_occupied_topics() {
    let server = start(ROOMS).await;
    let addr = server.addr;
    assert_eq!(get_topic(addr, "feed.a").await, None, "unknown topic");
    let mut exact = connect(addr).await;
    subscribe(&mut exact, 1, &["feed.a", "feed.c"]).await;
    publish(addr, "feed.b", json!(1)).await;
    let mut wide = connect(addr).await;
    subscribe(&mut wide, 1, &["feed.*"]).await;
    let _ = recv_until_silence(&mut wide, Duration::from_millis(100)).await;

    // No publication yet, but subscribers: the topic is there, without seq, ts or data.
    let a = get_topic(addr, "feed.a").await.expect("feed.a has subscribers");
    assert_eq!(
        a,
        json!({"topic": "feed.a", "subscribers": 2, "pattern_subscribers": 1})
    );
    let b = get_topic(addr, "feed.b").await.expect("feed.b");
    assert_eq!((b["seq"].clone(), b["subscribers"].clone()), (json!(1), json!(1)));
    assert_eq!(b["pattern_subscribers"], 1);

    let (status, page) = get_json(addr, "/api/v1/topics?occupied=true&limit=2").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page, json!({"topics": ["feed.a", "feed.b"], "next": "feed.b"}));
    let (_, page) = get_json(addr, "/api/v1/topics?occupied=true&limit=2&after=feed.b").await;
    assert_eq!(page, json!({"topics": ["feed.c"], "next": null}));

    unsubscribe(&mut wide, 2, &["feed.*"]).await;
    let (_, page) = get_json(addr, "/api/v1/topics?occupied=true").await;
    assert_eq!(page, json!({"topics": ["feed.a", "feed.c"], "next": null}));
    let (status, body) = get_json(addr, "/api/v1/topics?occupied=maybe").await;
    assert_http_error(status, &body, 400, Some("bad_request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_a_room() {
    let keys = tickwire::apikey::generate().unwrap();
    let toml = format!(
        "{ROOMS}[[auth.api_keys]]\nname = \"ops\"\nsha256 = \"{}\"\npublish = [\"x.>\"]\n",
        keys.sha256
    );
    let server = start(&toml).await;
    let mut ws = connect(server.addr).await;
    subscribe(&mut ws, 1, &["chat.cli"]).await;
    let url = format!("http://{}", server.addr);
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_tickwire(&args, &[])
        })
    };
    let key = keys.key.clone();
    let o = run(vec![
        "presence".into(),
        "--url".into(),
        url.clone(),
        "--api-key".into(),
        key,
        "chat.cli".into(),
    ])
    .await
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let room: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (room["topic"].clone(), room["count"].clone()),
        (json!("chat.cli"), json!(1))
    );
    assert_eq!(room["members"][0]["user"], "anonymous");

    let o = run(vec!["presence".into(), "--url".into(), url, "chat.cli".into()])
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("--api-key"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_reply_fits_the_connections_queue() {
    // 40 members of ~1 KiB info each: 40 KiB, more than half of a 64 KiB queue.
    let toml = format!(
        "{JWT_TOML}{ROOMS}max_members = 100\n[queue]\nmax_bytes = 65536\n\
         [server]\nmax_message_bytes = 16384\n[http]\nmax_message_bytes = 16384\n"
    );
    let server = start(&toml).await;
    let info = json!({"bio": "x".repeat(1000)});
    let mut members_ws = Vec::new();
    for i in 0..40 {
        let mut ws = member(server.addr, &format!("u{i}"), &["chat.>"], Some(info.clone())).await;
        subscribe(&mut ws, 1, &["chat.big"]).await;
        members_ws.push(ws);
    }
    let reply = request(
        &mut members_ws[0],
        json!({"op": "presence", "id": 1, "topic": "chat.big"}),
    )
    .await;
    assert_eq!(reply["count"], 40);
    let listed = reply["members"].as_array().unwrap().len();
    assert!((25..=32).contains(&listed), "{listed} listed within 32 KiB");
    assert_usable(&mut members_ws[0], 2).await;
    // Over HTTP the list is bounded by max_members only.
    let (_, body) = get_json(server.addr, "/api/v1/topics/chat.big/presence").await;
    assert_eq!(body["members"].as_array().unwrap().len(), 40);
}
