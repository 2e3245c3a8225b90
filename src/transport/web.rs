//! The browser side: the live price dashboard (`GET /`), the chat page (`GET /chat`), the
//! console page for the README's snippet (`GET /console`), and the JavaScript client module
//! the pages import (`GET /tickwire.js`).
//!
//! The files live in `web/` and are compiled into the binary with `include_str!`, so the server
//! needs no files at run time and there is no build step. See docs/web.md.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

use crate::settings::Settings;

/// The price dashboard served at `/`.
pub const DASHBOARD_HTML: &str = include_str!("../../web/index.html");
/// The chat page served at `/chat`.
pub const CHAT_HTML: &str = include_str!("../../web/chat.html");
/// The console page served at `/console`.
pub const CONSOLE_HTML: &str = include_str!("../../web/console.html");
/// The ES module client served at `/tickwire.js`.
pub const CLIENT_JS: &str = include_str!("../../web/tickwire.js");

/// The dashboard's marker of a running feed; replaced when `feed.enabled` is off, so that an
/// empty table can say why instead of guessing from silence.
const FEED_ON: &str = r#"data-feed="on""#;
const FEED_OFF: &str = r#"data-feed="off""#;

const HTML: &str = "text/html; charset=utf-8";

/// The embedded page or module for a path, with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" => Some((DASHBOARD_HTML, HTML)),
        "/chat" => Some((CHAT_HTML, HTML)),
        "/console" => Some((CONSOLE_HTML, HTML)),
        "/tickwire.js" => Some((CLIENT_JS, "text/javascript; charset=utf-8")),
        _ => None,
    }
}

/// Whether `path` is served with these settings: the pages only with `web.enabled`, the client
/// module always (an application's own pages behind the same origin may import it).
pub fn served(path: &str, settings: &Settings) -> bool {
    asset(path).is_some() && (path == "/tickwire.js" || settings.web.enabled)
}

/// A `200 OK` response with the embedded asset of `path`, or `None` for a path that is not
/// [`served`].
pub fn response(path: &str, settings: &Settings) -> Option<Response<Full<Bytes>>> {
    if !served(path, settings) {
        return None;
    }
    let (body, content_type) = asset(path)?;
    let body = if path == "/" && !settings.feed.enabled {
        Bytes::from(body.replacen(FEED_ON, FEED_OFF, 1))
    } else {
        Bytes::from_static(body.as_bytes())
    };
    let mut resp = Response::new(Full::new(body));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_carries_the_feed_marker_once() {
        assert_eq!(DASHBOARD_HTML.matches(FEED_ON).count(), 1);
    }
}
