//! A terminal chat room: lines typed on stdin are published to `chat.<room>`, and everything
//! published there is printed.
//!
//! ```text
//! cargo run -p tickwire-client --example chat -- ws://127.0.0.1:8080/ws lobby alice
//! ```
//!
//! Uses the callback API. `chat.>` topics use the server's `queue` policy and history, so after
//! a dropped connection the messages missed meanwhile are replayed, in order, exactly once.
//!
//! When the server's `presence.patterns` cover the room (`presence.patterns = ["chat.>"]`), it
//! prints who is there on joining and a line for each join and leave (docs/presence.md);
//! otherwise the room is joined without them.

use serde::{Deserialize, Serialize};
use tickwire_client::{Client, ClientOptions, Kind, SubscribeOptions};
use tokio::io::AsyncBufReadExt;

#[derive(Serialize, Deserialize)]
struct Message {
    from: String,
    text: String,
}

#[tokio::main]
async fn main() -> Result<(), tickwire_client::Error> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let room = args.next().unwrap_or_else(|| "lobby".into());
    let nick = args.next().unwrap_or_else(|| "anonymous".into());
    let topic = format!("chat.{room}");

    let client = Client::builder(url)
        .options(ClientOptions::default())
        .on_open(|| eprintln!("* connected"))
        .on_message(|update| match update.decode::<Message>() {
            Ok(m) if update.kind == Kind::Snapshot => println!("(last) <{}> {}", m.from, m.text),
            Ok(m) => println!("<{}> {}", m.from, m.text),
            Err(_) => println!("{}: {}", update.topic, update.data),
        })
        .on_reset(|topic| eprintln!("* {topic}: some messages were lost"))
        .on_close(|code, reason| eprintln!("* disconnected ({code} {reason})"))
        .on_error(|e| eprintln!("* {e}"))
        .on_join(|_, member| eprintln!("* {} joined ({})", member.user, member.client))
        .on_leave(|_, member| eprintln!("* {} left ({})", member.user, member.client))
        .connect()
        .await?;
    let with_presence = SubscribeOptions::default().presence_events(true);
    match client.subscribe_with([topic.clone()], with_presence).await {
        Ok(_) => {
            let here = client.presence(topic.as_str()).await?;
            let users: Vec<&str> = here.members.iter().map(|m| m.user.as_str()).collect();
            eprintln!("* {} here: {}", here.count, users.join(", "));
        }
        // Not a presence room on this server: join without who-is-there.
        Err(e) if e.code() == Some("bad_request") => drop(client.subscribe([topic.clone()]).await?),
        Err(e) => return Err(e),
    }
    eprintln!("* joined {topic} as {nick}; type messages, Ctrl-D to leave");

    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(text)) = lines.next_line().await {
        if text.trim().is_empty() {
            continue;
        }
        let message = Message {
            from: nick.clone(),
            text,
        };
        if let Err(e) = client.publish(topic.as_str(), &message).await {
            eprintln!("* not sent: {e}");
        }
    }
    client.close().await;
    Ok(())
}
