//! Presence (docs/presence.md): who holds an exact subscription to a topic under the server's
//! `presence.patterns`. The reply to [`Client::presence`](crate::Client::presence) and the
//! members that `join` and `leave` frames carry for subscriptions made with
//! [`SubscribeOptions::presence_events`](crate::SubscribeOptions::presence_events).
//!
//! The client keeps no member lists of its own: the server's reply is the list, and the join
//! and leave events are passed on in the order they arrive (in order with the topic's updates).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One member of a topic: a connection with an exact subscription to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Member {
    /// The connection's id: one user connected twice is two members.
    pub client: String,
    /// The token's `sub` claim, `"anonymous"` without a token.
    pub user: String,
    /// The token's `info` claim, `None` when it has none (JSON `null`). Set by whoever minted
    /// the token, never by the client itself, so it can be trusted like the token.
    #[serde(default)]
    pub info: Option<Value>,
}

/// The answer to [`Client::presence`](crate::Client::presence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Presence {
    /// The topic asked about.
    pub topic: String,
    /// Its members, at most the server's `presence.max_members` (default 1,000) of them.
    pub members: Vec<Member>,
    /// How many members the topic has, exactly, across the cluster: more than
    /// `members.len()` when the list was cut at `presence.max_members`.
    pub count: u64,
}

/// A `join` or `leave` frame: `{"type":"join","topic":…,"member":{…}}`.
#[derive(Debug, Deserialize)]
pub(crate) struct Change {
    pub topic: String,
    pub member: Member,
}

#[cfg(test)]
mod tests {
    use crate::message::{Frame, Request};

    #[test]
    fn the_presence_request_and_its_reply() {
        assert_eq!(
            Request::presence(7, "chat.lobby").encode(),
            r#"{"op":"presence","id":7,"topic":"chat.lobby"}"#
        );
        let reply = r#"{"type":"presence","id":7,"topic":"chat.lobby","members":[
            {"client":"c1","user":"ann","info":{"name":"Ann"}},
            {"client":"c2","user":"anonymous","info":null}],"count":3}"#;
        let Ok(Frame::Presence(Some(7), p)) = Frame::parse(reply) else {
            panic!("{:?}", Frame::parse(reply))
        };
        assert_eq!((p.topic.as_str(), p.members.len(), p.count), ("chat.lobby", 2, 3));
        assert_eq!(p.members[0].info, Some(serde_json::json!({"name": "Ann"})));
        assert_eq!(
            (p.members[1].user.as_str(), &p.members[1].info),
            ("anonymous", &None)
        );
    }

    #[test]
    fn join_and_leave_frames() {
        let join =
            r#"{"type":"join","topic":"chat.lobby","member":{"client":"c9","user":"bob","info":null}}"#;
        let Ok(Frame::Join(c)) = Frame::parse(join) else {
            panic!("{:?}", Frame::parse(join))
        };
        assert_eq!(
            (c.topic.as_str(), c.member.client.as_str(), c.member.user.as_str()),
            ("chat.lobby", "c9", "bob")
        );
        let leave = join.replace("\"join\"", "\"leave\"");
        assert!(matches!(Frame::parse(&leave), Ok(Frame::Leave(c)) if c.member.client == "c9"));
        for bad in [
            r#"{"type":"join","topic":"chat.lobby"}"#,
            r#"{"type":"leave","topic":"chat.lobby","member":{"user":"bob"}}"#,
            r#"{"type":"presence","id":1,"topic":"t","members":[],"count":-1}"#,
        ] {
            assert!(Frame::parse(bad).is_err(), "{bad}");
        }
    }
}
