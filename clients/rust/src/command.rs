//! The requests a [`Client`](crate::Client) handle sends the connection task, each with the
//! channel its reply goes back on: the seam between the handles and the task.

use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::message::{Published, Subscribed, Unsubscribed};
use crate::options::SubscribeOptions;
use crate::presence::Presence;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A request from a [`Client`](crate::Client) handle.
pub(crate) enum Command {
    Subscribe {
        topics: Vec<String>,
        options: SubscribeOptions,
        reply: Reply<Subscribed>,
    },
    Unsubscribe {
        topics: Vec<String>,
        reply: Reply<Unsubscribed>,
    },
    Publish {
        topic: String,
        data: Box<RawValue>,
        /// `None` for fire-and-forget publishes: errors become [`Event::Error`](crate::Event::Error).
        reply: Option<Reply<Published>>,
    },
    /// A `presence` query: a read, so it is sent again after a reconnect like a subscribe.
    Presence { topic: String, reply: Reply<Presence> },
}

impl Command {
    /// Whether its caller stopped waiting (timed out): then it is not sent at all.
    pub fn abandoned(&self) -> bool {
        match self {
            Command::Subscribe { reply, .. } => reply.is_closed(),
            Command::Unsubscribe { reply, .. } => reply.is_closed(),
            Command::Publish { reply, .. } => reply.as_ref().is_some_and(|r| r.is_closed()),
            Command::Presence { reply, .. } => reply.is_closed(),
        }
    }

    pub fn fail(self, error: Error) {
        match self {
            Command::Subscribe { reply, .. } => drop(reply.send(Err(error))),
            Command::Unsubscribe { reply, .. } => drop(reply.send(Err(error))),
            Command::Publish { reply, .. } => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(error));
                }
            }
            Command::Presence { reply, .. } => drop(reply.send(Err(error))),
        }
    }
}
