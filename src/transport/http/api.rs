//! The HTTP API: `POST /api/v1/publish` (with `Idempotency-Key`), the topic listing and one
//! topic's state (`/api/v1/topics`, `/api/v1/topics/{topic}`) and its history
//! (`/api/v1/topics/{topic}/history`), the occupied topics (`/api/v1/topics?occupied=true`)
//! and a presence room (`/api/v1/topics/{topic}/presence`).

use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::debug;

use crate::app::App;
use crate::cluster::idempotency::{self, IdempotencyKey};
use crate::metrics::Source;
use crate::protocol;
use crate::protocol::error::{Action, RequestError};
use crate::topic::Topic;

use super::body::{json, read_body, refuse_body, Body};

/// The topic API is readable with any valid API key once keys are configured (a token, which
/// may publish, does not read it: its `subscribe` claim says nothing about listing topics).
pub(super) fn reader(req: &Request<Incoming>, app: &App) -> Result<(), RequestError> {
    app.auth.reader(req.headers())?;
    Ok(())
}

pub(super) async fn publish(req: Request<Incoming>, app: &App) -> Result<Response<Body>, RequestError> {
    #[derive(Serialize)]
    struct Published<'a> {
        topic: &'a Topic,
        seq: u64,
    }
    #[derive(Serialize)]
    struct Batch<'a> {
        results: Vec<Published<'a>>,
    }
    let publisher = app.auth.publisher(req.headers()).await?;
    let once = match app.node.idempotency() {
        true => idempotency_key(req.headers())?.map(str::to_owned),
        false => None,
    };
    let (body, _permit) = match read_body(req, app).await {
        Ok(read) => read,
        Err(e) => return Ok(refuse_body(&e)),
    };
    let (messages, batch) = protocol::parse_publish(&body)?;
    // Refused whole, before anything is published: a frame larger than a subscriber's queue
    // would close every reading subscriber of a `queue` topic as a slow consumer.
    let limit = app.settings.http.max_message_bytes;
    if let Some((topic, data)) = messages.iter().find(|(_, d)| d.get().len() > limit) {
        return Err(RequestError::MessageTooLarge {
            topic: topic.to_string(),
            bytes: data.get().len(),
            limit,
        });
    }
    // All or nothing, like validation: one forbidden topic publishes none of the batch.
    if let Some((topic, _)) = messages.iter().find(|(t, _)| !publisher.may_publish(t)) {
        debug!(publisher = %publisher.name(), %topic, "publish refused by the publisher's ACL");
        return Err(RequestError::forbidden(Action::Publish, topic));
    }
    let (seqs, replayed) = match once {
        Some(once) => {
            let once = IdempotencyKey::new(&publisher.idempotency_scope(), &once, &body);
            app.node.publish_once(&messages, Source::Http, &once).await?
        }
        None => (app.node.publish(&messages, Source::Http).await?, false),
    };
    // A replay is rebuilt from the same body and the stored seqs, so it is byte for byte the
    // first reply.
    let results: Vec<Published> = (messages.iter().zip(seqs))
        .map(|((topic, _), seq)| Published { topic, seq })
        .collect();
    let mut resp = match batch {
        true => json(StatusCode::OK, &Batch { results }),
        false => json(StatusCode::OK, &results[0]),
    };
    if replayed {
        app.metrics.idempotent_replays.inc();
        (resp.headers_mut()).insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(resp)
}

const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// The request's `Idempotency-Key`, checked; more than one is a bad request.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, RequestError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(RequestError::BadRequest(
            "more than one Idempotency-Key header".into(),
        ));
    }
    idempotency::check_key(value.as_bytes()).map(Some)
}

/// Topics one listing page returns by default, and at most.
const DEFAULT_TOPIC_PAGE: usize = 100;
const MAX_TOPIC_PAGE: usize = 1000;

pub(super) async fn list_topics(query: &str, app: &App) -> Result<Response<Body>, RequestError> {
    #[derive(Serialize)]
    struct Row {
        topic: Topic,
        seq: u64,
        subscribers: usize,
    }
    #[derive(Serialize)]
    struct Listing {
        topics: Vec<Row>,
        /// Pass as `after` for the next page; null on the last one.
        next: Option<Topic>,
    }
    #[derive(Serialize)]
    struct Occupied {
        topics: Vec<Topic>,
        next: Option<Topic>,
    }
    let (mut after, mut limit, mut occupied) = (None, DEFAULT_TOPIC_PAGE, false);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| RequestError::BadRequest(format!("query parameter `{key}` must be {what}"));
        match key {
            "occupied" => {
                occupied = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("true or false")),
                }
            }
            "limit" => {
                limit = value.parse().map_err(|_| bad("an integer from 1 to 1000"))?;
                if !(1..=MAX_TOPIC_PAGE).contains(&limit) {
                    return Err(bad("an integer from 1 to 1000"));
                }
            }
            // Topic names are URL-safe as they are: no decoding needed, none accepted.
            "after" => after = Some(Topic::parse(value).map_err(|e| RequestError::invalid_topic(value, e))?),
            _ => {
                return Err(RequestError::BadRequest(format!(
                    "unknown query parameter `{key}`"
                )))
            }
        }
    }
    if occupied {
        let (topics, next) = app.node.presence().occupied(after.as_ref(), limit).await?;
        return Ok(json(StatusCode::OK, &Occupied { topics, next }));
    }
    let page = app.node.list(after.as_ref(), limit).await?;
    let topics = (page.topics.into_iter())
        .map(|t| Row {
            topic: t.topic,
            seq: t.seq,
            subscribers: t.subscribers,
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        &Listing {
            topics,
            next: page.next,
        },
    ))
}

/// A topic's last publication and its subscribers, cluster-wide; 404 for a topic with
/// neither. A topic with subscribers but no publication yet has no `seq`, `ts` or `data`.
pub(super) async fn get_topic(name: &str, app: &App) -> Result<Response<Body>, RequestError> {
    #[derive(Serialize)]
    struct State<'a> {
        topic: &'a Topic,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a RawValue>,
        subscribers: usize,
        pattern_subscribers: usize,
    }
    let topic = Topic::parse(name).map_err(|e| RequestError::invalid_topic(name, e))?;
    let last = app.node.last(&topic).await?;
    let subscribers = app.node.presence().subscribers(&topic).await?;
    if last.is_none() && subscribers.total == 0 {
        return Err(RequestError::TopicNotFound(name.to_string()));
    }
    let body = State {
        topic: last.as_ref().map_or(&topic, |p| &p.topic),
        seq: last.as_ref().map(|p| p.seq),
        ts: last.as_ref().map(|p| p.ts),
        data: last.as_ref().map(|p| &*p.data),
        subscribers: subscribers.total,
        pattern_subscribers: subscribers.patterns,
    };
    Ok(json(StatusCode::OK, &body))
}

/// Who is in a presence room: `{"topic","members","count"}`, as the `presence` op answers.
pub(super) async fn get_presence(name: &str, app: &App) -> Result<Response<Body>, RequestError> {
    #[derive(Serialize)]
    struct Room<'a> {
        topic: &'a Topic,
        members: Vec<&'a RawValue>,
        count: usize,
    }
    let topic = Topic::parse(name).map_err(|e| RequestError::invalid_topic(name, e))?;
    let presence = app.node.presence();
    if !presence.covers(&topic) {
        return Err(RequestError::BadRequest(format!(
            "{name:?} is not a presence room (presence.patterns)"
        )));
    }
    let room = presence.room(&topic).await?;
    let body = Room {
        topic: &topic,
        members: room.members.iter().map(|m| m.json()).collect(),
        count: room.count,
    };
    Ok(json(StatusCode::OK, &body))
}

/// Most publications one history request returns.
const MAX_HISTORY_PAGE: usize = 1000;

pub(super) async fn get_history(name: &str, query: &str, app: &App) -> Result<Response<Body>, RequestError> {
    #[derive(Serialize)]
    struct Stored<'a> {
        seq: u64,
        ts: u64,
        data: &'a RawValue,
    }
    #[derive(Serialize)]
    struct Page<'a> {
        topic: &'a Topic,
        seq: u64,
        epoch: &'a str,
        /// False when publications after `since` have already left history.
        complete: bool,
        publications: Vec<Stored<'a>>,
    }
    let topic = Topic::parse(name).map_err(|e| RequestError::invalid_topic(name, e))?;
    let (mut since, mut limit) = (0u64, 100usize);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |what: &str| RequestError::BadRequest(format!("query parameter `{key}` must be {what}"));
        match key {
            "since" => since = value.parse().map_err(|_| bad("a non-negative integer"))?,
            "limit" => limit = value.parse().map_err(|_| bad("a non-negative integer"))?,
            _ => {
                return Err(RequestError::BadRequest(format!(
                    "unknown query parameter `{key}`"
                )))
            }
        }
    }
    let page = (app
        .node
        .history(&topic, since, limit.min(MAX_HISTORY_PAGE))
        .await?)
        .ok_or_else(|| RequestError::TopicNotFound(name.to_string()))?;
    let body = Page {
        topic: &topic,
        seq: page.position.seq,
        epoch: &page.position.epoch,
        complete: page.complete,
        publications: (page.publications.iter())
            .map(|e| Stored {
                seq: e.seq,
                ts: e.ts,
                data: &e.data,
            })
            .collect(),
    };
    Ok(json(StatusCode::OK, &body))
}
