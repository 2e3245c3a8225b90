//! Presence through the `tickwire-client` crate against a real in-process server (issue 20):
//! `presence(topic)`, `SubscribeOptions::presence_events` and the `Join`/`Leave` events and
//! callbacks, the refusals, and the option kept across a reconnect.

mod common;

use common::client::{next, options, until, ws_url};
use common::jwt::{claims, token as sign_token, JWT_TOML};
use common::proxy::Proxy;
use common::{eventually, start, RECV_TIMEOUT};
use serde_json::json;
use tickwire_client::{Client, Error, Event, Events, Member, SubscribeOptions};
use tokio::sync::mpsc;

const ROOMS: &str = "[presence]\npatterns = [\"chat.>\"]\n";

fn with_events() -> SubscribeOptions {
    SubscribeOptions::default().presence_events(true)
}

/// The next `Join` of `topic` (other events in between are skipped).
async fn joined(events: &mut Events, topic: &str) -> Member {
    let seen = until(
        events,
        "a join",
        |e| matches!(e, Event::Join { topic: t, .. } if t == topic),
    )
    .await;
    match seen.into_iter().last() {
        Some(Event::Join { member, .. }) => member,
        other => unreachable!("{other:?}"),
    }
}

async fn left(events: &mut Events, topic: &str) -> Member {
    let seen = until(
        events,
        "a leave",
        |e| matches!(e, Event::Leave { topic: t, .. } if t == topic),
    )
    .await;
    match seen.into_iter().last() {
        Some(Event::Leave { member, .. }) => member,
        other => unreachable!("{other:?}"),
    }
}

fn server_code(e: &Error) -> Option<&str> {
    match e {
        Error::Server { code, .. } => Some(code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_query_and_join_leave_events_and_callbacks() {
    let server = start(ROOMS).await;
    let url = ws_url(server.addr);
    let room = "chat.room";

    // Ann watches the room with events; her own join comes first.
    let ann = Client::connect(&url, options()).await.unwrap();
    let mut ann_events = ann.events().unwrap();
    ann.subscribe_with([room], with_events()).await.unwrap();
    let ann_member = joined(&mut ann_events, room).await;
    assert_eq!(ann_member.user, "anonymous");
    assert_eq!(ann_member.info, None);
    let here = ann.presence(room).await.unwrap();
    assert_eq!((here.topic.as_str(), here.count), (room, 1));
    assert_eq!(here.members, std::slice::from_ref(&ann_member));

    // Cat follows through callbacks.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (join_tx, leave_tx) = (tx.clone(), tx);
    let cat = Client::builder(&url)
        .options(options())
        .on_join(move |topic, member| drop(join_tx.send(("join", topic, member))))
        .on_leave(move |topic, member| drop(leave_tx.send(("leave", topic, member))))
        .connect()
        .await
        .unwrap();
    cat.subscribe_with([room], with_events()).await.unwrap();
    let cat_member = joined(&mut ann_events, room).await;
    assert_ne!(cat_member.client, ann_member.client, "one member per connection");
    let got = tokio::time::timeout(RECV_TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        ("join", room.to_string(), cat_member.clone()),
        "cat's own join, by callback"
    );

    // Bob subscribes without events: a member all the same, and he can ask who is there.
    let bob = Client::connect(&url, options()).await.unwrap();
    bob.subscribe([room]).await.unwrap();
    let bob_member = joined(&mut ann_events, room).await;
    let got = tokio::time::timeout(RECV_TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, ("join", room.to_string(), bob_member.clone()));
    let here = bob.presence(room).await.unwrap();
    assert_eq!(here.count, 3);
    let mut clients: Vec<&str> = here.members.iter().map(|m| m.client.as_str()).collect();
    clients.sort();
    let mut want = [
        ann_member.client.as_str(),
        cat_member.client.as_str(),
        bob_member.client.as_str(),
    ];
    want.sort();
    assert_eq!(clients, want);

    // Updates and joins/leaves come in one order: bob's leave after the update he published.
    bob.publish(room, &json!({"text": "bye"})).await.unwrap();
    bob.unsubscribe([room]).await.unwrap();
    let seen = until(&mut ann_events, "bob's leave", |e| {
        matches!(e, Event::Leave { .. })
    })
    .await;
    let update_at = seen
        .iter()
        .position(|e| matches!(e, Event::Update(u) if u.topic == room));
    assert!(update_at.is_some(), "the update before the leave: {seen:?}");
    assert!(matches!(seen.last(), Some(Event::Leave { member, .. }) if *member == bob_member));
    let got = tokio::time::timeout(RECV_TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, ("leave", room.to_string(), bob_member));
    assert_eq!(ann.presence(room).await.unwrap().count, 2);

    // A connection that closes leaves too.
    cat.close().await;
    assert_eq!(left(&mut ann_events, room).await, cat_member);
    assert_eq!(ann.presence(room).await.unwrap().members, [ann_member]);
    ann.close().await;
    bob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_refusals() {
    let server = start(ROOMS).await;
    let client = Client::connect(ws_url(server.addr), options()).await.unwrap();
    let e = client.presence("news.room").await.unwrap_err();
    assert_eq!(server_code(&e), Some("bad_request"), "not a presence room: {e}");
    // Events need exact topics in presence rooms; the whole request is refused.
    for topics in [vec!["news.room"], vec!["chat.*"], vec!["chat.ok", "news.room"]] {
        let e = client
            .subscribe_with(topics.clone(), with_events())
            .await
            .unwrap_err();
        assert_eq!(server_code(&e), Some("bad_request"), "{topics:?}: {e}");
    }
    client.close().await;

    // The ACL of subscribe: a token for chat.a.> may not see chat.b.room.
    let server = start(&format!("{JWT_TOML}{ROOMS}")).await;
    let info = json!({"name": "Ann", "role": "mod"});
    let mut ann_claims = claims("ann", &["chat.a.>"], &[], 3600);
    ann_claims["info"] = info.clone();
    let options = options().token_provider(tickwire_client::TokenProvider::fixed(sign_token(&ann_claims)));
    let ann = Client::connect(ws_url(server.addr), options).await.unwrap();
    let mut events = ann.events().unwrap();
    for denied in [ann.presence("chat.b.room").await, ann.presence("chat.b.x").await] {
        assert_eq!(server_code(&denied.unwrap_err()), Some("forbidden"));
    }
    let e = ann
        .subscribe_with(["chat.b.room"], with_events())
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), Some("forbidden"));
    // The token's sub and info claim, nothing the client says.
    ann.subscribe_with(["chat.a.room"], with_events()).await.unwrap();
    let me = joined(&mut events, "chat.a.room").await;
    assert_eq!((me.user.as_str(), me.info.as_ref()), ("ann", Some(&info)));
    assert_eq!(ann.presence("chat.a.room").await.unwrap().members, [me]);
    ann.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_events_are_asked_again_after_a_reconnect() {
    let server = start(ROOMS).await;
    let proxy = Proxy::start(server.addr).await;
    let room = "chat.again";
    let ann = Client::connect(ws_url(proxy.addr), options()).await.unwrap();
    let mut events = ann.events().unwrap();
    assert!(matches!(next(&mut events).await, Event::Open));
    ann.subscribe_with([room], with_events()).await.unwrap();
    let before = joined(&mut events, room).await;

    proxy.cut();
    until(&mut events, "the reconnect", |e| matches!(e, Event::Open)).await;
    // The re-subscription carries presence_events again: ann's new connection joins, and she
    // hears it. The old one leaves once the server has seen it close (before or after).
    let after = joined(&mut events, room).await;
    assert_ne!(after.client, before.client, "a new connection is a new member");
    let ann_ref = &ann;
    let alone = || {
        let after = after.clone();
        async move { ann_ref.presence(room).await.is_ok_and(|p| p.members == [after]) }
    };
    eventually("only the new connection in the room", RECV_TIMEOUT, alone).await;

    // And others' joins still arrive.
    let bob = Client::connect(ws_url(server.addr), options()).await.unwrap();
    bob.subscribe([room]).await.unwrap();
    let bob_member = joined(&mut events, room).await;
    assert_eq!(ann.presence(room).await.unwrap().count, 2);
    bob.close().await;
    assert_eq!(left(&mut events, room).await, bob_member);
    ann.close().await;
}
