//! The hub's own tests: fan-out, recovery, idle topics and the topic limit.

use super::*;
use crate::pubsub::outbox::Next;
use crate::settings::Settings;
use serde_json::value::RawValue;
use std::collections::HashMap;

fn hub() -> Hub {
    hub_with("")
}

fn hub_with(toml: &str) -> Hub {
    let settings = Settings::from_toml(toml).unwrap();
    let (rules, bounds) = (settings.topic_rules().unwrap(), settings.topic_bounds());
    Hub::new(rules, bounds, Arc::new(Metrics::new().unwrap()), false)
}

fn data(s: &str) -> Data {
    Arc::from(RawValue::from_string(s.to_string()).unwrap())
}

fn pats(list: &[&str]) -> Vec<Pattern> {
    list.iter().map(|p| Pattern::parse(p).unwrap()).collect()
}

fn topic(s: &str) -> Topic {
    Topic::parse(s).unwrap()
}

async fn frames(o: &Outbox) -> Vec<String> {
    if o.queued_bytes() == 0 {
        return vec![];
    }
    let mut out = Vec::new();
    assert!(matches!(o.next(&mut out).await, Next::Frames { .. }));
    out.iter()
        .map(|f| String::from_utf8_lossy(&f[2..]).into_owned())
        .collect()
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_and_snapshot_once() {
    let hub = hub();
    assert_eq!(hub.publish(&topic("prices.A"), data("1")), 1);
    let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    let done = hub
        .subscribe(
            &who,
            &pats(&["prices.A", "prices.*", "prices.>"]),
            &HashMap::new(),
        )
        .unwrap();
    assert_eq!(done.frames.len(), 1, "one snapshot per topic");
    let snap = String::from_utf8_lossy(&done.frames[0].0[2..]).into_owned();
    assert!(
        snap.contains(r#""type":"snapshot""#) && snap.contains(r#""seq":1"#),
        "{snap}"
    );
    assert_eq!(done.positions[&topic("prices.A")].seq, 1);
    assert!(
        frames(&who.outbox).await.is_empty(),
        "snapshots are returned, not queued"
    );
    assert_eq!(hub.publish(&topic("prices.A"), data("2")), 2);
    assert_eq!(frames(&who.outbox).await.len(), 1);
    // a topic created after the pattern subscription picks it up
    hub.publish(&topic("prices.B"), data("3"));
    assert_eq!(frames(&who.outbox).await.len(), 1);
    hub.unsubscribe(who.id, &pats(&["prices.*", "prices.>"]));
    hub.publish(&topic("prices.B"), data("4"));
    assert!(frames(&who.outbox).await.is_empty());
    hub.publish(&topic("prices.A"), data("5"));
    assert_eq!(frames(&who.outbox).await.len(), 1, "exact subscription remains");
}

#[tokio::test]
async fn recovery_replays_exactly_the_missed_publications() {
    let hub = hub();
    let t = topic("chat.room");
    for i in 1..=5 {
        hub.publish(&t, data(&i.to_string()));
    }
    let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    let at = hub
        .subscribe(&who, &pats(&["chat.room"]), &HashMap::new())
        .unwrap()
        .positions[&t]
        .clone();
    assert_eq!(at.seq, 5);
    let since = HashMap::from([(
        t.clone(),
        Position {
            seq: 2,
            epoch: at.epoch.clone(),
        },
    )]);
    let done = hub.subscribe(&who, &pats(&["chat.room"]), &since).unwrap();
    assert!(done.recovered[&t]);
    let got: Vec<String> = done
        .frames
        .iter()
        .map(|f| String::from_utf8_lossy(&f.0[2..]).into_owned())
        .collect();
    assert_eq!(got.len(), 3);
    for (frame, seq) in got.iter().zip(3..) {
        assert!(
            frame.contains(&format!(r#""type":"update","topic":"chat.room","seq":{seq},"#)),
            "{frame}"
        );
    }
    let again = (hub.subscribe(&who, &pats(&["chat.room", "chat.*"]), &HashMap::new())).unwrap();
    assert!(again.frames.is_empty(), "already receiving: no second snapshot");
    assert_eq!(again.positions[&t].seq, 5);
    let wrong = HashMap::from([(
        t.clone(),
        Position {
            seq: 2,
            epoch: "other".into(),
        },
    )]);
    let done = hub.subscribe(&who, &pats(&["chat.room"]), &wrong).unwrap();
    assert!(!done.recovered[&t]);
    assert_eq!(done.frames.len(), 1);
    assert!(String::from_utf8_lossy(&done.frames[0].0).contains(r#""type":"snapshot""#));
}

/// Topics created together share one epoch (one allocation for all of them), but a topic that
/// was removed and is created again never continues its old epoch, and the others keep theirs.
#[tokio::test]
async fn a_topic_created_again_starts_a_new_epoch() {
    let hub = hub();
    let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    let epochs = |hub: &Hub, list: &[&str]| {
        let done = hub.subscribe(&who, &pats(list), &HashMap::new()).unwrap();
        list.iter()
            .map(|t| done.positions[&topic(t)].epoch.clone())
            .collect::<Vec<_>>()
    };
    let first = epochs(&hub, &["a.b", "a.c"]);
    assert!(Arc::ptr_eq(&first[0], &first[1]), "one shared epoch");
    hub.unsubscribe(who.id, &pats(&["a.b"]));
    assert!(!hub.has(&topic("a.b")), "no subscriber and no value: removed");
    let again = epochs(&hub, &["a.b", "a.c"]);
    assert_ne!(again[0], first[0], "created again: a new epoch");
    assert_eq!(again[1], first[1], "a.c was never removed");
    hub.unsubscribe(who.id, &pats(&["a.b"]));
    hub.publish(&topic("a.b"), data("1"));
    assert_ne!(hub.history(&topic("a.b"), 0, 1).unwrap().position.epoch, again[0]);
}

#[tokio::test]
async fn idle_topics_are_dropped() {
    let hub = hub();
    let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    hub.subscribe(&who, &pats(&["a.b", "x.*"]), &HashMap::new())
        .unwrap();
    assert_eq!(hub.list(None, 10).topics.len(), 1);
    hub.unsubscribe(who.id, &pats(&["a.b", "x.*"]));
    assert!(hub.list(None, 10).topics.is_empty());
    hub.publish(&topic("a.b"), data("1"));
    hub.subscribe(&who, &pats(&["a.b"]), &HashMap::new()).unwrap();
    hub.unsubscribe(who.id, &pats(&["a.b"]));
    assert_eq!(
        hub.list(None, 10).topics.len(),
        1,
        "a topic with a last value stays"
    );
    assert_eq!(hub.last(&topic("a.b")).unwrap().seq, 1);
}

#[tokio::test]
async fn topic_limit_is_all_or_none_and_listing_pages() {
    let hub = hub_with("[limits]\nmax_topics = 2");
    let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    hub.subscribe(&who, &pats(&["x.*"]), &HashMap::new()).unwrap();
    hub.reserve(&[topic("x.a")]).unwrap();
    let refused = hub.reserve(&[topic("x.b"), topic("x.c")]).unwrap_err();
    assert_eq!(refused.code(), "too_many_topics");
    // x.b was created (with the pattern subscriber on it) before x.c did not fit.
    assert!(!hub.has(&topic("x.b")), "rolled back");
    assert_eq!(hub.topic_count(), 1);
    let refused = hub.subscribe(&who, &pats(&["x.b", "x.c"]), &HashMap::new());
    assert!(refused.is_err());
    assert_eq!(hub.topic_count(), 1);
    hub.publish(&topic("x.b"), data("1"));
    let page = hub.list(None, 1);
    assert_eq!(page.topics[0].topic, topic("x.a"));
    assert_eq!(page.topics[0].subscribers, 1);
    assert_eq!(page.next, Some(topic("x.a")));
    let page = hub.list(page.next.as_ref(), 1);
    assert_eq!((page.topics[0].topic.clone(), page.next), (topic("x.b"), None));
}

/// A pattern registered in slices: topics that existed when it was added are caught up and
/// reported; one created between the slices is delivered from its first publication, and not
/// reported (its position could name a seq still on its way as an update).
#[tokio::test]
async fn pattern_subscribe_in_slices_misses_and_repeats_nothing() {
    let hub = hub();
    for i in 0..10 {
        hub.publish(&topic(&format!("p.t{i}")), data("1"));
    }
    hub.publish(&topic("q.t0"), data("1"));
    let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    let since = HashMap::new();
    let subs = pats(&["p.*"]);
    let mut job = hub.subscribing(&who, &subs, &since, Terms::PLAIN, None).unwrap();
    job.add(&subs[0]);
    assert!(!job.run(4), "10 topics take three slices of 4");
    hub.publish(&topic("p.new"), data("2"));
    assert!(!job.run(4));
    assert!(job.run(4));
    let done = job.finish();
    let mut reported: Vec<&str> = done.positions.keys().map(Topic::as_str).collect();
    reported.sort();
    let want: Vec<String> = (0..10).map(|i| format!("p.t{i}")).collect();
    assert_eq!(reported, want.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(done.frames.len(), 10, "one snapshot per existing topic");
    let live = frames(&who.outbox).await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert!(live[0].contains(r#""topic":"p.new""#) && live[0].contains(r#""seq":1"#));
    // Unsubscribing finds the same topics through the names, the new one included.
    hub.unsubscribe(who.id, &subs);
    hub.publish(&topic("p.t3"), data("3"));
    hub.publish(&topic("p.new"), data("3"));
    assert!(frames(&who.outbox).await.is_empty());
}

/// The per-topic layout, at millions of topics (issue 16): a `TopicEntry` in its `Arc` must fit
/// the allocator's 176-byte chunk. Fails when a field grows it past that.
#[test]
fn a_topic_entry_stays_small() {
    let arc_inner = 16 + std::mem::size_of::<TopicEntry>();
    println!(
        "TopicEntry {} B, TopicState {} B, History {} B",
        std::mem::size_of::<TopicEntry>(),
        std::mem::size_of::<TopicState>(),
        std::mem::size_of::<History>()
    );
    // 120 B is the largest request glibc serves from a 128-byte chunk (it adds 8 and rounds up
    // to 16): one byte more and every topic costs 16 more.
    assert!(arc_inner <= 120, "{arc_inner} B with the Arc's counts");
    // One per (topic, connection) pair: a node with many pattern subscriptions holds millions.
    let pair = std::mem::size_of::<Subscription>();
    assert!(pair <= 32, "a subscription is {pair} B");
}

#[tokio::test]
async fn a_gate_holds_publications_back_and_the_pacer_sends_the_newest() {
    let hub = hub();
    let t = topic("dash.a");
    let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    let other = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    let ten_a_second = Terms {
        interval: Interval::from_rate(10.0).unwrap(),
        delta: false,
    };
    hub.subscribe_on(&who, &pats(&["dash.a"]), &HashMap::new(), ten_a_second)
        .unwrap();
    hub.subscribe(&other, &pats(&["dash.*"]), &HashMap::new())
        .unwrap();
    for i in 1..=3 {
        hub.publish(&t, data(&i.to_string()));
    }
    let sent = frames(&who.outbox).await;
    assert_eq!(sent.len(), 1, "the first goes at once: {sent:?}");
    assert!(sent[0].contains(r#""seq":1"#), "{sent:?}");
    assert_eq!(
        frames(&other.outbox).await.len(),
        3,
        "the other subscriber has no gate"
    );
    assert_eq!(
        hub.pacer.len(),
        1,
        "one held-back delivery, however many publications"
    );

    let mut due = Vec::new();
    let now = hub.pacer.ms(Instant::now());
    assert!(
        hub.pacer.take_due(now, &mut due).is_some_and(|at| at > now),
        "not yet due"
    );
    let later = now + 100;
    hub.pacer.take_due(later, &mut due);
    hub.release(later, &mut due);
    let sent = frames(&who.outbox).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].contains(r#""seq":3"#) && sent[0].contains(r#""data":3"#),
        "the newest: {sent:?}"
    );

    hub.unsubscribe(who.id, &pats(&["dash.a"]));
    let entry = hub.topics.get(&t).unwrap().clone();
    assert_eq!(
        lock(&entry.state).special,
        0,
        "the gate left with its subscription"
    );
}

#[tokio::test]
async fn a_subscription_without_a_rate_opens_the_gate_of_the_same_connection() {
    let hub = hub();
    let t = topic("dash.b");
    let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    let once_a_second = Terms {
        interval: Interval::from_rate(1.0).unwrap(),
        delta: false,
    };
    hub.subscribe_on(&who, &pats(&["dash.b"]), &HashMap::new(), once_a_second)
        .unwrap();
    hub.subscribe(&who, &pats(&["dash.*"]), &HashMap::new()).unwrap();
    for i in 1..=3 {
        hub.publish(&t, data(&i.to_string()));
    }
    assert_eq!(
        frames(&who.outbox).await.len(),
        3,
        "the loosest subscription applies"
    );
    let entry = hub.topics.get(&t).unwrap().clone();
    assert_eq!(lock(&entry.state).special, 0);
    hub.unsubscribe(who.id, &pats(&["dash.*"]));
    assert_eq!(lock(&entry.state).special, 1, "throttled again");
}

#[tokio::test]
async fn deltas_start_with_a_whole_update_for_a_topic_already_received_without() {
    let hub = hub();
    let t = topic("doc.x");
    let doc = |i: u32| data(&format!("{{\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(200)));
    hub.publish(&t, doc(1));
    let who = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    hub.subscribe(&who, &pats(&["doc.*"]), &HashMap::new()).unwrap();
    hub.publish(&t, doc(2));
    assert_eq!(frames(&who.outbox).await.len(), 1);
    let deltas = Terms {
        interval: Interval::NONE,
        delta: true,
    };
    hub.subscribe_on(&who, &pats(&["doc.x"]), &HashMap::new(), deltas)
        .unwrap();
    hub.publish(&t, doc(3));
    let sent = frames(&who.outbox).await;
    assert!(sent[0].contains(r#""data":"#), "the first goes whole: {sent:?}");
    hub.publish(&t, doc(4));
    let sent = frames(&who.outbox).await;
    assert!(sent[0].contains(r#""delta":"#), "then deltas: {sent:?}");
}

/// A topic's last use is kept in 100 ms ticks: idleness counts from the tick's end, so a topic
/// is never dropped before `idle_ttl`, and at most one tick after it.
#[test]
fn the_idle_clock_is_never_early() {
    let clock = Clock {
        start: Instant::now(),
    };
    let used = clock.start + Duration::from_millis(250);
    let touched = clock.ticks(used);
    assert_eq!(touched, 2);
    let ttl = Duration::from_secs(1);
    let at = |ms: u64| clock.start + Duration::from_millis(ms);
    assert!(
        !clock.idle_for(touched, ttl, at(1_250)),
        "exactly idle_ttl after a use inside the tick's end"
    );
    assert!(!clock.idle_for(touched, ttl, at(1_299)));
    assert!(
        clock.idle_for(touched, ttl, at(1_300)),
        "one tick's end plus idle_ttl"
    );
    assert_eq!(
        clock.ticks(clock.start - Duration::from_secs(1)),
        0,
        "before the start"
    );
}

/// The counts the cluster reports (`subscribers`, `pattern_subscribers`) follow every add and
/// remove, a connection with both kinds counting as exact.
#[tokio::test]
async fn subscriber_counts_split_exact_from_pattern_only() {
    let hub = hub();
    let t = topic("prices.A");
    hub.publish(&t, data("1"));
    let both = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    let wild = hub.new_subscriber(Arc::new(Outbox::new(1 << 20)));
    hub.subscribe(&both, &pats(&["prices.A", "prices.*"]), &HashMap::new())
        .unwrap();
    hub.subscribe(&wild, &pats(&["prices.>", "prices.*"]), &HashMap::new())
        .unwrap();
    assert_eq!(hub.subscriber_counts(&t), Some((2, 1)));
    // Subscribing again to what it has changes nothing.
    hub.subscribe(&both, &pats(&["prices.A"]), &HashMap::new())
        .unwrap();
    assert_eq!(hub.subscriber_counts(&t), Some((2, 1)));
    hub.unsubscribe(both.id, &pats(&["prices.A"]));
    assert_eq!(
        hub.subscriber_counts(&t),
        Some((2, 2)),
        "only its pattern is left"
    );
    hub.subscribe(&wild, &pats(&["prices.A"]), &HashMap::new())
        .unwrap();
    assert_eq!(hub.subscriber_counts(&t), Some((2, 1)));
    hub.unsubscribe(both.id, &pats(&["prices.*"]));
    hub.unsubscribe(wild.id, &pats(&["prices.>", "prices.*"]));
    assert_eq!(hub.subscriber_counts(&t), Some((1, 0)));
    hub.unsubscribe(wild.id, &pats(&["prices.A"]));
    assert_eq!(hub.subscriber_counts(&t), Some((0, 0)));
    // The table went with its last entry; a new exact subscriber starts the count again.
    hub.subscribe(&both, &pats(&["prices.A"]), &HashMap::new())
        .unwrap();
    assert_eq!(hub.subscriber_counts(&t), Some((1, 0)));
}
