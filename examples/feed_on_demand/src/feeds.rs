//! The running feeds: one publishing task per occupied topic, started by `occupied` and
//! stopped by `vacated`.
//!
//! Webhooks are delivered at least once (a retry follows a lost response) and a late retry can
//! arrive after a newer event, so each topic remembers the `ts` of the last event applied and
//! ignores older ones; applying the same event twice changes nothing (`occupied` on a running
//! feed, `vacated` on a stopped one). The map is bounded by [`Feeds::MAX_TOPICS`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tickwire_client::HttpPublisher;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// What one topic's feed is doing.
struct Feed {
    /// The `ts` of the last event applied to the topic.
    last_ts: u64,
    /// The publishing task while the topic is occupied.
    task: Option<JoinHandle<()>>,
}

/// What applying an event did, for the response and the tests.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Started,
    Stopped,
    /// Already in that state (a duplicate delivery), or not an event that changes feeds.
    Unchanged,
    /// Older than the last event applied to the topic (a late retry).
    Stale,
    /// A topic outside the prefix this publisher serves.
    NotOurs,
    /// [`Feeds::MAX_TOPICS`] feeds already run: the webhook is answered 503 so tickwire retries.
    Full,
}

pub struct Feeds {
    publisher: Arc<HttpPublisher>,
    prefix: String,
    interval: Duration,
    /// Std mutex: held only to look up and swap a task handle, never across an `.await`.
    feeds: Mutex<HashMap<String, Feed>>,
}

impl Feeds {
    /// Most topics remembered; stopped ones are forgotten first when it is reached.
    pub const MAX_TOPICS: usize = 10_000;

    pub fn new(publisher: HttpPublisher, prefix: String, interval: Duration) -> Feeds {
        Feeds {
            publisher: Arc::new(publisher),
            prefix,
            interval,
            feeds: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Feed>> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one webhook event (`occupied`, `vacated`; others change nothing).
    pub fn apply(&self, event: &str, topic: &str, ts: u64) -> Outcome {
        let Some(symbol) = topic.strip_prefix(&self.prefix).filter(|s| !s.is_empty()) else {
            return Outcome::NotOurs;
        };
        let occupied = match event {
            "occupied" => true,
            "vacated" => false,
            _ => return Outcome::Unchanged,
        };
        let mut feeds = self.lock();
        if !feeds.contains_key(topic) && feeds.len() >= Self::MAX_TOPICS {
            feeds.retain(|_, f| f.task.is_some());
            if feeds.len() >= Self::MAX_TOPICS {
                warn!(
                    topic,
                    "too many feeds running: refusing the event, tickwire will retry"
                );
                return Outcome::Full;
            }
        }
        let feed = (feeds.entry(topic.to_string())).or_insert(Feed {
            last_ts: 0,
            task: None,
        });
        if ts < feed.last_ts {
            return Outcome::Stale;
        }
        feed.last_ts = ts;
        match (occupied, feed.task.take()) {
            (true, None) => {
                info!(topic, "occupied: starting the feed");
                let publisher = self.publisher.clone();
                let task = run(publisher, topic.to_string(), symbol.to_string(), self.interval);
                feed.task = Some(tokio::spawn(task));
                Outcome::Started
            }
            (false, Some(task)) => {
                info!(topic, "vacated: stopping the feed");
                task.abort();
                Outcome::Stopped
            }
            (_, task) => {
                feed.task = task;
                Outcome::Unchanged
            }
        }
    }

    /// The topics being published, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut topics: Vec<String> = (self.lock().iter())
            .filter(|(_, f)| f.task.is_some())
            .map(|(t, _)| t.clone())
            .collect();
        topics.sort();
        topics
    }

    /// Stops every feed (on shutdown).
    pub fn stop_all(&self) {
        for feed in self.lock().values_mut() {
            if let Some(task) = feed.task.take() {
                task.abort();
            }
        }
    }
}

/// Publishes a made-up price for `symbol` every `interval` until aborted. A failed publish
/// is logged and the next tick tries again: the feed is a stand-in for an upstream connection.
async fn run(publisher: Arc<HttpPublisher>, topic: String, symbol: String, interval: Duration) {
    let mut price = 100.0_f64;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        price = (price * (1.0 + (rand::random::<f64>() - 0.5) / 100.0)).max(0.01);
        let data = serde_json::json!({"symbol": symbol, "price": (price * 100.0).round() / 100.0});
        if let Err(e) = publisher.publish(&topic, &data).await {
            warn!(topic, error = %e, "publish failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feeds() -> Feeds {
        // Nothing listens there: the feeds' publishes fail and are logged, which these tests
        // do not look at.
        let publisher = HttpPublisher::new("http://127.0.0.1:9").unwrap();
        Feeds::new(publisher, "prices.".into(), Duration::from_secs(3600))
    }

    #[tokio::test]
    async fn occupied_starts_vacated_stops_duplicates_change_nothing() {
        let feeds = feeds();
        assert_eq!(feeds.apply("occupied", "prices.ACME", 10), Outcome::Started);
        assert_eq!(feeds.apply("occupied", "prices.ACME", 10), Outcome::Unchanged);
        assert_eq!(feeds.apply("join", "prices.ACME", 11), Outcome::Unchanged);
        assert_eq!(feeds.running(), ["prices.ACME"]);
        assert_eq!(feeds.apply("vacated", "prices.ACME", 20), Outcome::Stopped);
        assert_eq!(feeds.apply("vacated", "prices.ACME", 20), Outcome::Unchanged);
        assert!(feeds.running().is_empty());
    }

    #[tokio::test]
    async fn a_late_retry_does_not_undo_a_newer_event() {
        let feeds = feeds();
        assert_eq!(feeds.apply("occupied", "prices.ACME", 10), Outcome::Started);
        assert_eq!(feeds.apply("vacated", "prices.ACME", 20), Outcome::Stopped);
        assert_eq!(feeds.apply("occupied", "prices.ACME", 10), Outcome::Stale);
        assert!(feeds.running().is_empty());
        assert_eq!(feeds.apply("occupied", "prices.ACME", 30), Outcome::Started);
    }

    #[tokio::test]
    async fn only_topics_under_the_prefix() {
        let feeds = feeds();
        assert_eq!(feeds.apply("occupied", "chat.lobby", 1), Outcome::NotOurs);
        assert_eq!(feeds.apply("occupied", "prices.", 1), Outcome::NotOurs);
        assert!(feeds.running().is_empty());
    }

    #[tokio::test]
    async fn the_map_is_bounded_and_forgets_stopped_feeds_first() {
        let feeds = feeds();
        for i in 0..Feeds::MAX_TOPICS {
            let topic = format!("prices.S{i}");
            feeds.lock().insert(
                topic,
                Feed {
                    last_ts: 1,
                    task: None,
                },
            );
        }
        // Full of stopped feeds: they are forgotten to make room.
        assert_eq!(feeds.apply("occupied", "prices.NEW", 2), Outcome::Started);
        assert_eq!(feeds.lock().len(), 1);
        let idle = || tokio::spawn(std::future::pending::<()>());
        for i in 0..Feeds::MAX_TOPICS - 1 {
            let feed = Feed {
                last_ts: 1,
                task: Some(idle()),
            };
            feeds.lock().insert(format!("prices.R{i}"), feed);
        }
        assert_eq!(feeds.apply("occupied", "prices.ONE_MORE", 2), Outcome::Full);
        assert_eq!(feeds.running().len(), Feeds::MAX_TOPICS);
        feeds.stop_all();
        assert!(feeds.running().is_empty());
    }
}
