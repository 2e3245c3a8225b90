//! The embedded web pages: `/`, `/chat` and `/tickwire.js` (the browser test is web/e2e).

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_module_are_served_with_their_content_types() {
    let server = start("").await;
    for (path, content_type, needle) in [
        (
            "/",
            "text/html; charset=utf-8",
            "import { TickwireClient } from '/tickwire.js'",
        ),
        (
            "/chat",
            "text/html; charset=utf-8",
            "import { TickwireClient } from '/tickwire.js'",
        ),
        (
            "/tickwire.js",
            "text/javascript; charset=utf-8",
            "export class TickwireClient",
        ),
    ] {
        let r = http_get(server.addr, path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        let body = String::from_utf8(r.body).expect("UTF-8");
        assert!(body.contains(needle), "{path} lacks {needle:?}");
    }
    // Other paths are still 404, and other methods 405.
    assert_eq!(http_get(server.addr, "/index.html").await.status, 404);
    assert_eq!(http_post(server.addr, "/chat", b"x").await.status, 405);

    let m = scrape(server.addr).await;
    let web = |status| {
        m.value(
            "tickwire_http_requests_total",
            &[("route", "web"), ("status", status)],
        )
    };
    assert_eq!(web("200"), 3.0);
    assert_eq!(web("405"), 1.0);
    server.stop().await.expect("clean stop");
}
