//! Webhooks to the application (`[[webhooks]]`): each event (`occupied`, `vacated`, `join`,
//! `leave`) is POSTed as JSON `{"event","topic","member","ts","id"}`, signed with
//! `X-Tickwire-Signature: sha256=<hex HMAC-SHA256 of the body>`, to every endpoint that asked
//! for that event and topic.
//!
//! Requests go through the server's one HTTP client (`outbound`): `http://`, or `https://`
//! verified against the system's roots or the entry's `ca_file`.
//!
//! Each endpoint has its own bounded queue (`queue` events) and one task that delivers in
//! order, one request at a time, retrying a failure (no response within `timeout`, or a status
//! other than 2xx) with exponential backoff up to `max_attempts` tries. A full queue drops the
//! new event, counted (`tickwire_webhook_queue_dropped_total`) and logged, so a receiver that
//! is down costs at most its queue in memory. Which node sends an event is decided above
//! (`cluster::presence`): this module sends what it is given.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, CONTENT_TYPE};
use hyper::Method;
use ring::hmac;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::metrics::{Metrics, WebhookResult};
use crate::outbound::{self, Destination};
use crate::settings::WebhookSettings;
use crate::topic::{Pattern, Topic};

/// The signature header.
pub const SIGNATURE: &str = "x-tickwire-signature";

/// First wait before a retry; doubled after each failed try, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The key of an entry's CA file, in messages.
const CA_KEY: &str = "webhooks.ca_file";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Occupied,
    Vacated,
    Join,
    Leave,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Occupied => "occupied",
            EventKind::Vacated => "vacated",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
        }
    }

    fn parse(name: &str) -> Option<EventKind> {
        [
            EventKind::Occupied,
            EventKind::Vacated,
            EventKind::Join,
            EventKind::Leave,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// One event, encoded once for every endpoint.
#[derive(Debug)]
pub struct Event {
    pub kind: EventKind,
    pub topic: Topic,
    body: Bytes,
}

impl Event {
    /// The event `kind` of `topic` (with the `member` of a join or leave) at `ts` (ms since the
    /// Unix epoch), with a fresh random `id` the receiver can deduplicate by.
    pub fn new(kind: EventKind, topic: Topic, member: Option<Box<RawValue>>, ts: u64) -> Event {
        #[derive(Serialize)]
        struct Body<'a> {
            event: &'static str,
            topic: &'a Topic,
            member: Option<&'a RawValue>,
            ts: u64,
            id: &'a str,
        }
        let id = new_id();
        let body = serde_json::to_vec(&Body {
            event: kind.name(),
            topic: &topic,
            member: member.as_deref(),
            ts,
            id: &id,
        })
        .expect("serializing strings and raw JSON cannot fail");
        Event {
            kind,
            topic,
            body: body.into(),
        }
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }
}

/// 128 random bits in hex.
fn new_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
}

/// `sha256=<hex>` of `body` under `key`.
pub fn signature(key: &hmac::Key, body: &[u8]) -> String {
    let tag = hmac::sign(key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

struct Endpoint {
    /// Which of the four events, by [`EventKind`] order.
    events: [bool; 4],
    topics: Vec<Pattern>,
    queue: mpsc::Sender<Arc<Event>>,
    dropped: AtomicU64,
    url: String,
}

/// The configured endpoints, each with its queue and delivery task. Cheap to clone.
#[derive(Clone, Default)]
pub struct Webhooks {
    endpoints: Arc<[Endpoint]>,
}

impl Webhooks {
    /// Starts one delivery task per endpoint (needs a runtime when there is one). The settings
    /// are validated: URLs, events and patterns parse.
    pub fn start(settings: &[WebhookSettings], metrics: Arc<Metrics>) -> Webhooks {
        let endpoints = (settings.iter())
            .map(|s| {
                let (tx, rx) = mpsc::channel(s.queue);
                let mut events = [false; 4];
                for kind in s.events.iter().filter_map(|e| EventKind::parse(e)) {
                    events[kind as usize] = true;
                }
                let delivery = Delivery {
                    url: s.url.clone(),
                    ca_file: s.ca_file.clone(),
                    key: hmac::Key::new(hmac::HMAC_SHA256, s.secret.expose().as_bytes()),
                    timeout: s.timeout,
                    max_attempts: s.max_attempts,
                    metrics: metrics.clone(),
                };
                tokio::spawn(delivery.run(rx));
                Endpoint {
                    events,
                    topics: (s.topics.iter())
                        .map(|p| Pattern::parse(p).expect("settings validate webhook topics"))
                        .collect(),
                    queue: tx,
                    dropped: AtomicU64::new(0),
                    url: s.url.clone(),
                }
            })
            .collect();
        Webhooks { endpoints }
    }

    /// Whether some endpoint wants `kind` events of `topic`.
    pub fn wants(&self, kind: EventKind, topic: &Topic) -> bool {
        self.endpoints.iter().any(|e| e.wants(kind, topic))
    }

    /// Queues `event` for every endpoint that wants it; never waits. An endpoint whose queue is
    /// full drops it (counted, and logged at the first drop and every 1000th).
    pub fn send(&self, event: Event, metrics: &Metrics) {
        let event = Arc::new(event);
        for endpoint in self
            .endpoints
            .iter()
            .filter(|e| e.wants(event.kind, &event.topic))
        {
            if endpoint.queue.try_send(event.clone()).is_err() {
                metrics.webhook_queue_dropped.inc();
                let dropped = endpoint.dropped.fetch_add(1, Ordering::Relaxed);
                if dropped % 1000 == 0 {
                    warn!(
                        url = %endpoint.url,
                        event = event.kind.name(),
                        topic = %event.topic,
                        dropped = dropped + 1,
                        "webhook queue full: event dropped"
                    );
                }
            }
        }
    }
}

impl Endpoint {
    fn wants(&self, kind: EventKind, topic: &Topic) -> bool {
        self.events[kind as usize] && (self.topics.is_empty() || self.topics.iter().any(|p| p.matches(topic)))
    }
}

/// One endpoint's delivery task.
struct Delivery {
    url: String,
    ca_file: Option<PathBuf>,
    key: hmac::Key,
    timeout: Duration,
    max_attempts: u32,
    metrics: Arc<Metrics>,
}

impl Delivery {
    async fn run(self, mut queue: mpsc::Receiver<Arc<Event>>) {
        // Without a client the queue closes: `send` counts what it can no longer queue.
        let Some(client) = self.client().await else {
            return;
        };
        while let Some(event) = queue.recv().await {
            let signature = signature(&self.key, event.body());
            let headers = [
                (CONTENT_TYPE, "application/json"),
                (HeaderName::from_static(SIGNATURE), signature.as_str()),
            ];
            let mut backoff = FIRST_BACKOFF;
            for attempt in 1..=self.max_attempts {
                let sent = client
                    .send(Method::POST, &headers, event.body().clone(), None)
                    .await;
                let (result, why) = match sent {
                    Ok(r) if r.status.is_success() => (WebhookResult::Ok, String::new()),
                    Ok(r) => (
                        WebhookResult::Status,
                        format!("answered HTTP {}", r.status.as_u16()),
                    ),
                    Err(e) => (WebhookResult::Error, e.to_string()),
                };
                self.metrics.webhook_request(event.kind.name(), result);
                if result == WebhookResult::Ok {
                    break;
                }
                if attempt == self.max_attempts {
                    warn!(url = %self.url, event = event.kind.name(), topic = %event.topic, attempts = attempt, error = %why, "webhook given up");
                    break;
                }
                debug!(url = %self.url, attempt, error = %why, "webhook failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// The endpoint's client, trusting `ca_file` when set. A CA file that cannot be read any
    /// more (settings checked it at start-up) trusts nothing: every request fails, counted.
    async fn client(&self) -> Option<outbound::Client> {
        let to = match Destination::parse(&self.url) {
            Ok(to) => to,
            Err(e) => {
                error!(url = %self.url, error = %e, "webhook URL unusable: its events are dropped");
                return None;
            }
        };
        let ca = match self.ca_file.clone() {
            None => None,
            Some(path) => {
                let read =
                    tokio::task::spawn_blocking(move || crate::settings::pem_certificates(CA_KEY, &path))
                        .await;
                let read = read
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                Some(read.unwrap_or_else(|e| {
                    error!(url = %self.url, error = %e, "webhook CA file unreadable: every request to it fails");
                    Vec::new()
                }))
            }
        };
        let client = outbound::Client::new(to, ca.as_deref(), self.timeout).await;
        if client.trusts_nothing() && self.ca_file.is_none() {
            error!(url = %self.url, "no trusted root certificates: set this webhook's ca_file");
        }
        Some(client)
    }
}
