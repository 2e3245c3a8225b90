//! `tickwire subscribe --sse`: the same subscription over `GET /sse` (Server-Sent Events), to
//! tell whether a proxy that breaks WebSocket passes a plain HTTP stream. It turns the stream
//! into the `tickwire_client::Event`s the WebSocket client gives, so `subscribe` prints exactly
//! what it prints for WebSocket: updates and snapshots as JSON lines (deltas applied), `reset`
//! lines, and the connection's story on stderr.
//!
//! Recovery is the browser's: each reconnect sends the id of the last event handled as
//! `Last-Event-ID`; the server recovers every topic the id carries and says so in
//! `subscribed`'s `recovered`. A topic delivered before and not recovered gets a `reset`, then
//! its snapshot. Updates at or below a topic's last seq (a replay overlapping what arrived) are
//! dropped, as the client drops them. See docs/protocol.md, "Server-Sent Events".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST, USER_AGENT};
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use rustls::pki_types::ServerName;
use serde::Deserialize;
use serde_json::value::RawValue;
use tickwire_client::{Error, Event, Kind, Subscribed, Update};
use tickwire_proto::close::{RATE_LIMIT, TOKEN_EXPIRED};
use tickwire_proto::fossil;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Largest data a delta may produce, as the WebSocket client allows.
const MAX_DATA_BYTES: usize = 64 << 20;
/// Longest line (an event's `data:` included) read before the stream is given up.
const MAX_LINE_BYTES: usize = 64 << 20;
/// Reconnect backoff: the WebSocket client's defaults (full jitter).
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// A stream that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(5);
/// Most time for the connection and the response head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What to open: the endpoint and the subscription.
pub(crate) struct Stream {
    /// `http(s)://host:port[/prefix]/sse?topics=…` (without the token).
    pub(crate) url: String,
    /// Sent as `Authorization: Bearer` (the CLI can set headers, unlike a browser).
    pub(crate) token: Option<String>,
    pub(crate) reconnect: bool,
    /// `--delta`: keep each topic's data, the base of its next delta.
    pub(crate) delta: bool,
}

impl Stream {
    /// The URL of `topics` under the HTTP base `http`, with the subscribe options.
    pub(crate) fn url(http: &str, topics: &[String], max_rate: Option<f64>, delta: bool) -> String {
        let topics: Vec<String> = topics.iter().map(|t| encode(t)).collect();
        let mut url = format!("{http}/sse?topics={}", topics.join(","));
        if let Some(rate) = max_rate {
            url.push_str(&format!("&max_rate={rate}"));
        }
        if delta {
            url.push_str("&delta=fossil");
        }
        url
    }

    /// Opens the first stream: its refusal (connection, 401, 403, 400…) is returned, so the
    /// command fails as the WebSocket one does. Then the events, reconnecting as told.
    pub(crate) async fn start(self) -> Result<mpsc::UnboundedReceiver<Event>, Error> {
        let endpoint = Arc::new(Endpoint::parse(&self.url)?);
        let first = endpoint.open(self.token.as_deref(), None).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(self, endpoint, first, tx));
        Ok(rx)
    }
}

/// Percent-encodes what a query value must not carry raw (topics are mostly URL-safe already).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'*' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The stream's state across reconnects: what recovery and deduplication need.
#[derive(Default)]
struct Tracks {
    /// The id of the last event handled: `Last-Event-ID` of the next connection.
    last_id: Option<String>,
    /// Per topic delivered: the last seq, and the data a delta applies to.
    topics: HashMap<String, Track>,
    keep_bases: bool,
}

struct Track {
    seq: u64,
    /// The last data's text, kept only for `--delta`.
    base: Option<String>,
}

/// An `update` or `snapshot` event's data: the WebSocket frame, `delta` in place of `data` for
/// a delta update.
#[derive(Deserialize)]
struct Frame {
    #[serde(rename = "type")]
    kind: Kind,
    topic: String,
    seq: u64,
    ts: u64,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    delta: Option<String>,
}

#[derive(Deserialize)]
struct Close {
    code: u16,
    #[serde(default)]
    reason: String,
}

/// How a connection ended.
enum End {
    /// The server's `event: close`, or 1006 when the stream just stopped.
    Closed(u16, String),
    /// The receiver is gone (the command ends).
    Gone,
}

async fn run(
    s: Stream,
    endpoint: Arc<Endpoint>,
    first: Response<Incoming>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut tracks = Tracks {
        keep_bases: s.delta,
        ..Tracks::default()
    };
    let mut response = Some(first);
    let mut attempt = 0u32;
    loop {
        let opened = match response.take() {
            Some(r) => Ok(r),
            None => endpoint.open(s.token.as_deref(), tracks.last_id.as_deref()).await,
        };
        let body = match opened {
            Ok(r) => r.into_body(),
            Err(e) => {
                let fatal = match &e {
                    Error::Unauthorized { .. } => true,
                    Error::Http { status, .. } => !matches!(status, 429 | 500..=599),
                    _ => false,
                };
                if tx.send(Event::Error(e)).is_err() || fatal || !s.reconnect {
                    return;
                }
                attempt = backoff(attempt).await;
                continue;
            }
        };
        if tx.send(Event::Open).is_err() {
            return;
        }
        let since = tokio::time::Instant::now();
        let (code, reason) = match read(body, &mut tracks, &tx).await {
            End::Gone => return,
            End::Closed(code, reason) => (code, reason),
        };
        if tx.send(Event::Close { code, reason }).is_err() {
            return;
        }
        // An expired token would be refused again; a rate-limited client is told to stay away.
        if !s.reconnect || code == TOKEN_EXPIRED || code == RATE_LIMIT {
            return;
        }
        if since.elapsed() >= STABLE {
            attempt = 0;
        }
        attempt = backoff(attempt).await;
    }
}

/// Waits the `attempt`-th backoff (full jitter) and returns the next attempt's number.
async fn backoff(attempt: u32) -> u32 {
    let cap = (BACKOFF_INITIAL * 2u32.saturating_pow(attempt.min(16))).min(BACKOFF_MAX);
    let wait = rand::rng().random_range(Duration::ZERO..=cap);
    tokio::time::sleep(wait).await;
    attempt + 1
}

/// Reads one stream to its end, turning its events into `Event`s.
async fn read(mut body: Incoming, tracks: &mut Tracks, tx: &mpsc::UnboundedSender<Event>) -> End {
    let mut parser = Parser::default();
    loop {
        let frame = match body.frame().await {
            Some(Ok(frame)) => frame,
            Some(Err(_)) | None => return End::Closed(1006, String::new()),
        };
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers
        };
        let Some(events) = parser.push(&chunk) else {
            let e = Error::Transport("an SSE line longer than 64 MiB".into());
            return match tx.send(Event::Error(e)) {
                Ok(()) => End::Closed(1006, String::new()),
                Err(_) => End::Gone,
            };
        };
        for event in events {
            match handle(event, tracks, tx) {
                Ok(None) => {}
                Ok(Some(end)) => return end,
                Err(_) => return End::Gone,
            }
        }
    }
}

/// One event: delivered (`Ok(None)`), the end of the stream, or `Err` when the receiver is gone.
fn handle(
    event: SseEvent,
    tracks: &mut Tracks,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<Option<End>, ()> {
    let send = |e: Event| tx.send(e).map_err(|_| ());
    let malformed = |what: &str, e: serde_json::Error| {
        Event::Error(Error::Transport(format!("malformed {what} event: {e}").into()))
    };
    match event.name.as_str() {
        "subscribed" => {
            let reply: Subscribed = match serde_json::from_str(&event.data) {
                Ok(reply) => reply,
                Err(e) => return send(malformed("subscribed", e)).map(|()| None),
            };
            // Topics delivered before that the id did not carry on: they start over.
            let mut reset: Vec<String> = (tracks.topics.keys())
                .filter(|t| reply.recovered.get(*t) != Some(&true))
                .cloned()
                .collect();
            reset.sort();
            for topic in reset {
                tracks.topics.remove(&topic);
                send(Event::Reset { topic })?;
            }
        }
        "snapshot" | "update" => {
            let frame: Frame = match serde_json::from_str(&event.data) {
                Ok(frame) => frame,
                Err(e) => return send(malformed(&event.name, e)).map(|()| None),
            };
            let reset = frame.kind == Kind::Snapshot && frame.epoch.is_some();
            if reset {
                // A cluster's reset outside any subscribe reply (protocol.md §5).
                tracks.topics.remove(&frame.topic);
                send(Event::Reset {
                    topic: frame.topic.clone(),
                })?;
            }
            let track = tracks.topics.get(&frame.topic);
            if track.is_some_and(|t| frame.seq <= t.seq) {
                // A replay overlapping what arrived.
                tracks.last_id = event.id.or(tracks.last_id.take());
                return Ok(None);
            }
            let data = match (frame.data, frame.delta) {
                (Some(data), _) => data,
                (None, Some(delta)) => {
                    let base = track
                        .filter(|t| t.seq + 1 == frame.seq)
                        .and_then(|t| t.base.as_deref());
                    let applied = base
                        .ok_or_else(|| format!("no data of seq {} to apply it to", frame.seq - 1))
                        .and_then(|base| {
                            fossil::apply(base.as_bytes(), delta.as_bytes(), MAX_DATA_BYTES)
                                .map_err(|e| e.to_string())
                        })
                        .and_then(|out| String::from_utf8(out).map_err(|e| e.to_string()))
                        .and_then(|text| RawValue::from_string(text).map_err(|e| e.to_string()));
                    match applied {
                        Ok(data) => data,
                        Err(why) => {
                            // Reconnecting from the last id handled replays this update.
                            let e = format!("update {} of {} not applied ({why})", frame.seq, frame.topic);
                            send(Event::Error(Error::Transport(e.into())))?;
                            return Ok(Some(End::Closed(1006, "delta not applied".into())));
                        }
                    }
                }
                (None, None) => {
                    let e = serde::de::Error::missing_field("data");
                    return send(malformed(&event.name, e)).map(|()| None);
                }
            };
            tracks.topics.insert(
                frame.topic.clone(),
                Track {
                    seq: frame.seq,
                    base: tracks.keep_bases.then(|| data.get().to_string()),
                },
            );
            if event.id.is_some() {
                tracks.last_id = event.id;
            }
            let update = Update {
                kind: frame.kind,
                topic: frame.topic,
                seq: frame.seq,
                ts: frame.ts,
                data,
                epoch: frame.epoch,
            };
            send(match update.kind {
                Kind::Snapshot => Event::Snapshot(update),
                _ => Event::Update(update),
            })?;
        }
        "close" => {
            let close: Close = serde_json::from_str(&event.data).unwrap_or(Close {
                code: 1006,
                reason: String::new(),
            });
            return Ok(Some(End::Closed(close.code, close.reason)));
        }
        _ => {} // unknown events are ignored, as a browser does
    }
    Ok(None)
}

/// One dispatched event.
struct SseEvent {
    name: String,
    data: String,
    id: Option<String>,
}

/// The `text/event-stream` parser (WHATWG HTML, "Server-sent events", parsing an event
/// stream): lines end with LF, CRLF or CR; `field: value` (one optional space after the
/// colon); a line starting with `:` is a comment; a blank line dispatches the event.
#[derive(Default)]
struct Parser {
    line: Vec<u8>,
    /// A CR ended the last line: an LF right after it is part of that line ending.
    after_cr: bool,
    name: String,
    data: String,
    has_data: bool,
    id: Option<String>,
}

impl Parser {
    /// The events `chunk` completes; `None` when a line grows past [`MAX_LINE_BYTES`].
    fn push(&mut self, chunk: &Bytes) -> Option<Vec<SseEvent>> {
        let mut events = Vec::new();
        for &b in chunk.iter() {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        events.push(event);
                    }
                }
                _ if self.line.len() >= MAX_LINE_BYTES => return None,
                _ => self.line.push(b),
            }
        }
        Some(events)
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            let name = std::mem::take(&mut self.name);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(SseEvent {
                name: if name.is_empty() { "message".into() } else { name },
                data,
                id: self.id.clone(),
            });
        }
        if line[0] == b':' {
            return None; // a comment: the server's `: ping`
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.name = value.to_string(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_string()),
            _ => {} // `retry` and unknown fields: the reconnect policy is the client's
        }
        None
    }
}

/// Where the stream is (or another GET of the HTTP API): parsed once, connected to on every
/// (re)connect.
pub(super) struct Endpoint {
    url: String,
    host: String,
    port: u16,
    authority: String,
    path_and_query: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl Endpoint {
    pub(super) fn parse(url: &str) -> Result<Endpoint, Error> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|e| invalid(format!("{e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => return Err(invalid(format!("scheme {other:?} is not http or https"))),
        };
        let host = uri.host().ok_or_else(|| invalid("no host".into()))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let tls = match https {
            false => None,
            true => {
                let name = ServerName::try_from(bare.clone()).map_err(|e| invalid(e.to_string()))?;
                Some((connector(), name))
            }
        };
        Ok(Endpoint {
            url: url.to_string(),
            authority: (uri.authority().map(|a| a.to_string())).unwrap_or_else(|| host.to_string()),
            host: bare,
            port,
            path_and_query: (uri.path_and_query().map(|p| p.to_string())).unwrap_or_else(|| "/".into()),
            tls,
        })
    }

    /// One GET of the stream. A non-200 answer is the server's refusal, read from its error body.
    async fn open(&self, token: Option<&str>, last_id: Option<&str>) -> Result<Response<Incoming>, Error> {
        self.get(token, last_id, "text/event-stream").await
    }

    /// One GET accepting `accept`, with `token` as `Authorization: Bearer`; a non-200 answer
    /// is the server's refusal, read from its error body.
    pub(super) async fn get(
        &self,
        token: Option<&str>,
        last_id: Option<&str>,
        accept: &str,
    ) -> Result<Response<Incoming>, Error> {
        let connect_err = |source: tickwire_client::BoxError| Error::Connect {
            url: self.url.clone(),
            source,
        };
        let exchange = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| connect_err(e.into()))?;
            tcp.set_nodelay(true).ok();
            let mut sender = match &self.tls {
                None => handshake(tcp).await,
                Some((tls, name)) => {
                    let stream = (tls.connect(name.clone(), tcp).await).map_err(|e| connect_err(e.into()))?;
                    handshake(stream).await
                }
            }
            .map_err(connect_err)?;
            let mut request = Request::get(self.path_and_query.as_str())
                .header(HOST, self.authority.as_str())
                .header(ACCEPT, accept)
                .header(USER_AGENT, concat!("tickwire/", env!("CARGO_PKG_VERSION")));
            if let Some(token) = token {
                request = request.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            if let Some(id) = last_id {
                request = request.header("last-event-id", id);
            }
            let request = (request.body(Empty::<Bytes>::new())).map_err(|e| connect_err(e.into()))?;
            sender
                .send_request(request)
                .await
                .map_err(|e| connect_err(e.into()))
        };
        let response = match tokio::time::timeout(CONNECT_TIMEOUT, exchange).await {
            Ok(response) => response?,
            Err(_) => return Err(connect_err("no response head within 10s".into())),
        };
        if response.status().as_u16() == 200 {
            return Ok(response);
        }
        Err(refusal(response).await)
    }
}

/// The error of a refused stream, from the server's `{"error":{"code","message"}}` body.
async fn refusal(response: Response<Incoming>) -> Error {
    let status = response.status().as_u16();
    let body = tokio::time::timeout(CONNECT_TIMEOUT, response.into_body().collect()).await;
    let text = match body {
        Ok(Ok(body)) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        _ => String::new(),
    };
    let parsed: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let code = parsed["error"]["code"].as_str().map(str::to_string);
    let (code, message) = match code {
        Some(code) => (
            code,
            parsed["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
        None => (format!("http_{status}"), text.trim().chars().take(200).collect()),
    };
    match status {
        401 => Error::Unauthorized {
            status,
            code,
            message,
        },
        _ => Error::Http {
            status,
            code,
            message,
        },
    }
}

async fn handshake<IO>(
    io: IO,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, tickwire_client::BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// TLS with the system's roots: a proxy that intercepts TLS has its CA there.
fn connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&str]) -> Vec<(String, String, Option<String>)> {
        let mut p = Parser::default();
        let mut out = Vec::new();
        for c in chunks {
            for e in p.push(&Bytes::copy_from_slice(c.as_bytes())).unwrap() {
                out.push((e.name, e.data, e.id));
            }
        }
        out
    }

    #[test]
    fn events_are_parsed_across_chunks_and_line_endings() {
        let events = parse(&[
            ": ping\n\nevent: subscribed\ndata: {\"topics\":[]}\n\n",
            "event: upd",
            "ate\r\nid: abc\r\ndata: {\"a\":\r\n",
            "data:1}\r\rdata: x\n\n",
        ]);
        assert_eq!(
            events,
            vec![
                ("subscribed".into(), "{\"topics\":[]}".into(), None),
                ("update".into(), "{\"a\":\n1}".into(), Some("abc".into())),
                ("message".into(), "x".into(), Some("abc".into())),
            ]
        );
    }

    #[test]
    fn urls_carry_the_options() {
        let url = Stream::url(
            "http://h:1/p",
            &["prices.*".into(), "chat.>".into()],
            Some(2.5),
            true,
        );
        assert_eq!(
            url,
            "http://h:1/p/sse?topics=prices.*,chat.%3E&max_rate=2.5&delta=fossil"
        );
    }
}
