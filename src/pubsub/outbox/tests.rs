//! The outbox's own tests: the bound, conflation, corking, closing and the writer's hand-over.

use super::*;

fn frame(s: &str) -> Bytes {
    wire::json_frame(s)
}

async fn drain(o: &Outbox) -> Vec<Bytes> {
    let mut out = Vec::new();
    assert!(matches!(o.next(&mut out).await, Next::Frames { .. }));
    out
}

#[tokio::test]
async fn keeps_every_frame_while_flowing() {
    let o = Outbox::new(1 << 20);
    for i in 0..500 {
        assert_eq!(
            o.push_topic(&frame(&i.to_string()), 1, Policy::Conflate, None),
            Pushed::Queued
        );
    }
    assert_eq!(drain(&o).await.len(), 500);
}

#[tokio::test]
async fn conflates_per_topic_while_stalled() {
    let o = Outbox::new(1 << 20);
    o.push_topic(&frame("a1"), 1, Policy::Conflate, None);
    o.set_stalled(true);
    o.push_topic(&frame("b1"), 2, Policy::Conflate, None);
    assert_eq!(
        o.push_topic(&frame("a2"), 1, Policy::Conflate, None),
        Pushed::Conflated
    );
    assert_eq!(
        o.push_topic(&frame("a3"), 1, Policy::Conflate, None),
        Pushed::Conflated
    );
    assert_eq!(
        o.push_topic(&frame("b2"), 2, Policy::Conflate, None),
        Pushed::Conflated
    );
    o.push(frame("reply"));
    assert_eq!(o.push_topic(&frame("q1"), 3, Policy::Queue, None), Pushed::Queued);
    assert_eq!(o.push_topic(&frame("q2"), 3, Policy::Queue, None), Pushed::Queued);
    let got = drain(&o).await;
    let want: Vec<Bytes> = ["a3", "b2", "reply", "q1", "q2"]
        .iter()
        .map(|s| frame(s))
        .collect();
    assert_eq!(got, want);
    assert_eq!(o.queued_bytes(), 0);
}

#[tokio::test]
async fn conflates_when_over_bound_even_if_not_stalled() {
    let o = Outbox::new(1024);
    let big = frame(&"x".repeat(600));
    o.push_topic(&big, 1, Policy::Conflate, None);
    o.push_topic(&big, 2, Policy::Conflate, None);
    assert_eq!(o.push_topic(&big, 1, Policy::Conflate, None), Pushed::Conflated);
    assert!(o.queued_bytes() <= 2 * big.len());
}

#[tokio::test]
async fn conflated_backlog_does_not_make_replies_overflow() {
    let o = Outbox::new(1024);
    let big = frame(&"x".repeat(600));
    o.set_stalled(true);
    for key in 0..5 {
        o.push_topic(&big, key, Policy::Conflate, None);
    }
    assert!(
        o.queued_bytes() > 1024,
        "one frame per topic may exceed the bound"
    );
    assert_eq!(o.push(frame("pong")), Pushed::Queued);
    assert_eq!(o.push_optional(big.clone()), Pushed::Queued);
    assert_eq!(
        o.push_optional(big.clone()),
        Pushed::Dropped,
        "no room for a second optional frame"
    );
    assert!(!o.is_closing());
}

#[tokio::test]
async fn queue_overflow_closes_with_4008() {
    let o = Outbox::new(1024);
    let big = frame(&"x".repeat(600));
    assert_eq!(o.push_topic(&big, 1, Policy::Queue, None), Pushed::Queued);
    assert_eq!(o.push_topic(&big, 1, Policy::Queue, None), Pushed::Overflow);
    assert_eq!(o.push(frame("late")), Pushed::Closed);
    let mut out = Vec::new();
    match o.next(&mut out).await {
        Next::End(Some(f)) => assert_eq!(f, wire::close_frame(4008, "slow consumer")),
        other => panic!("expected End(4008), got {other:?}"),
    }
    assert!(out.is_empty(), "waiting frames of a slow consumer are dropped");
    assert_eq!(o.reason(), Some(Disconnect::SlowConsumer));
}

#[tokio::test]
async fn waits_while_open_and_empty() {
    let o = Outbox::new(1024);
    let mut out = Vec::new();
    let waited = tokio::time::timeout(std::time::Duration::from_millis(50), o.next(&mut out)).await;
    assert!(
        waited.is_err(),
        "an open, empty outbox has nothing for the writer"
    );
    assert!(!o.is_closing());
}

#[tokio::test]
async fn corked_frames_wait_behind_the_prefix() {
    let o = Outbox::new(1 << 20);
    o.push(frame("before"));
    let cork = o.cork();
    o.push_topic(&frame("live"), 1, Policy::Conflate, None);
    let mut out = Vec::new();
    let held = tokio::time::timeout(std::time::Duration::from_millis(20), o.next(&mut out)).await;
    assert!(held.is_err(), "nothing is handed out while corked");
    cork.uncork([(frame("reply"), None), (frame("snapshot"), None)]);
    let want: Vec<Bytes> = ["before", "reply", "snapshot", "live"]
        .iter()
        .map(|s| frame(s))
        .collect();
    assert_eq!(drain(&o).await, want);
}

#[tokio::test]
async fn a_cork_dropped_without_uncork_releases_the_frames() {
    let o = Outbox::new(1 << 20);
    {
        let _cork = o.cork();
        o.push(frame("held"));
    }
    assert_eq!(drain(&o).await, vec![frame("held")]);
}

#[tokio::test]
async fn a_large_catch_up_neither_conflates_nor_overflows() {
    let o = Outbox::new(1024);
    let cork = o.cork();
    let update = frame(&"u".repeat(300));
    o.push_topic(&update, 1, Policy::Queue, None);
    cork.uncork((0..10).map(|_| (frame(&"r".repeat(300)), None)));
    assert!(o.queued_bytes() > 3000);
    assert_eq!(o.push_topic(&update, 2, Policy::Conflate, None), Pushed::Queued);
    assert_eq!(
        o.push_topic(&update, 2, Policy::Conflate, None),
        Pushed::Queued,
        "not over: no conflation"
    );
    assert!(!o.is_closing());
}

#[tokio::test]
async fn a_close_wakes_the_reader_side_and_a_stalled_writer() {
    let o = std::sync::Arc::new(Outbox::new(1024));
    let closer = {
        let o = o.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            o.close(Disconnect::Shutdown);
        })
    };
    // Both wait at once, each through its own waker; the close comes from another task.
    let both = async { tokio::join!(o.closed(), o.closed_for_writer()) };
    let waited = tokio::time::timeout(std::time::Duration::from_secs(5), both).await;
    assert!(waited.is_ok(), "both sides saw the close");
    closer.await.unwrap();
}

#[tokio::test]
async fn graceful_close_flushes_first() {
    let o = Outbox::new(1024);
    o.push(frame("last words"));
    o.close(Disconnect::Shutdown);
    assert_eq!(drain(&o).await, vec![frame("last words")]);
    let mut out = Vec::new();
    assert!(matches!(o.next(&mut out).await, Next::End(Some(_))));
    assert!(matches!(o.next(&mut out).await, Next::End(None)));
}
