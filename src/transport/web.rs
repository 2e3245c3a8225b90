//! The browser side: the live price dashboard (`GET /`), the chat page (`GET /chat`) and the
//! JavaScript client module they import (`GET /tickwire.js`).
//!
//! The files live in `web/` and are compiled into the binary with `include_str!`, so the server
//! needs no files at run time and there is no build step. See docs/web.md.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

/// The price dashboard served at `/`.
pub const DASHBOARD_HTML: &str = include_str!("../../web/index.html");
/// The chat page served at `/chat`.
pub const CHAT_HTML: &str = include_str!("../../web/chat.html");
/// The ES module client served at `/tickwire.js`.
pub const CLIENT_JS: &str = include_str!("../../web/tickwire.js");

/// The embedded page or module for a path, with its content type.
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" => Some((DASHBOARD_HTML, "text/html; charset=utf-8")),
        "/chat" => Some((CHAT_HTML, "text/html; charset=utf-8")),
        "/tickwire.js" => Some((CLIENT_JS, "text/javascript; charset=utf-8")),
        _ => None,
    }
}

/// A `200 OK` response with the embedded asset of `path`, or `None` for any other path.
pub fn response(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, content_type) = asset(path)?;
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(resp)
}
