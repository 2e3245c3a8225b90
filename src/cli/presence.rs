//! `tickwire presence TOPIC`: who is in a presence room, from `GET
//! /api/v1/topics/{topic}/presence`, printed as the server's JSON on one line.

use http_body_util::BodyExt;

use super::sse::Endpoint;
use super::target::Target;
use super::{print_json, runtime, Failure, PresenceArgs};

pub(crate) async fn run(args: PresenceArgs) -> Result<(), Failure> {
    let target = Target::resolve(args.server.url.as_deref(), args.server.config.as_deref())?;
    let topic = tickwire_proto::Topic::parse(&args.topic)
        .map_err(|e| Failure::Usage(format!("TOPIC {:?}: {e}", args.topic)))?;
    let url = format!("{}/api/v1/topics/{}/presence", target.http, topic.as_str());
    let endpoint = Endpoint::parse(&url).map_err(|e| Failure::Usage(e.to_string()))?;
    let response = (endpoint
        .get(args.api_key.as_deref(), None, "application/json")
        .await)
        .map_err(|e| {
            Failure::Runtime(match (&e, args.api_key.is_some()) {
                (tickwire_client::Error::Unauthorized { .. }, false) => {
                    format!("{url}: {e}; pass an API key with --api-key (see `tickwire hash-key`)")
                }
                (tickwire_client::Error::Unauthorized { .. }, true) => {
                    format!("{url}: {e}; the key given with --api-key was refused")
                }
                _ => format!("{url}: {e}"),
            })
        })?;
    let body = (response.into_body().collect().await)
        .map_err(runtime)?
        .to_bytes();
    let room: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| runtime(format!("{url}: not a presence answer: {e}")))?;
    print_json(&mut std::io::stdout(), &room).map_err(runtime)
}
