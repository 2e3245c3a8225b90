//! Catching up at start: the topics tickwire reports occupied now
//! (`GET /api/v1/topics?occupied=true`, paged with `limit` and `after`). Their `occupied`
//! events were sent before this process listened (or dropped after `webhooks.max_attempts`
//! while it was down), so without this their feeds would wait for the next transition.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{AUTHORIZATION, HOST};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;

/// Topics per page (the API's largest).
const PAGE: usize = 1000;
/// Largest page body accepted: 1,000 topic names.
const MAX_PAGE_BYTES: usize = 1 << 20;
/// Pages read at most: a bound on what a misbehaving server can make this loop do.
const MAX_PAGES: usize = 1000;

#[derive(Deserialize)]
struct Page {
    topics: Vec<String>,
    next: Option<String>,
}

/// The occupied topics that start with `prefix`, from tickwire at `base` (`http://host:port`,
/// a path prefix kept; `https://` is not supported here).
pub async fn occupied(base: &str, api_key: Option<&str>, prefix: &str) -> Result<Vec<String>, String> {
    let base = base.trim_end_matches('/').trim_end_matches("/api/v1/publish");
    let uri: Uri = base.parse().map_err(|e| format!("{base}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{base}: only http:// is supported for the occupied list"));
    }
    let authority = uri.authority().ok_or_else(|| format!("{base}: no host"))?.clone();
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((authority.host(), port))
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(connection);
    let mut topics = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut path = format!(
            "{}/api/v1/topics?occupied=true&limit={PAGE}",
            uri.path().trim_end_matches('/')
        );
        if let Some(after) = &after {
            path.push_str("&after=");
            path.push_str(&encode(after));
        }
        let mut request = Request::get(path).header(HOST, authority.as_str());
        if let Some(key) = api_key {
            request = request.header(AUTHORIZATION, format!("Bearer {key}"));
        }
        let request = request.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("GET topics: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_PAGE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the topic list: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "GET topics: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let page: Page = serde_json::from_slice(&body).map_err(|e| format!("the topic list: {e}"))?;
        topics.extend(page.topics.into_iter().filter(|t| t.starts_with(prefix)));
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(topics),
        }
    }
    Err(format!("more than {MAX_PAGES} pages of occupied topics"))
}

/// Percent-encodes everything but unreserved characters (a topic is mostly those).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encode_keeps_topics_readable() {
        assert_eq!(super::encode("prices.BTC-USD"), "prices.BTC-USD");
        assert_eq!(super::encode("a b&c"), "a%20b%26c");
    }
}
