//! The embedded web pages: `/`, `/chat`, `/console` and `/tickwire.js`, `web.enabled`, and what
//! a page can learn about a refused token (the browser test is web/e2e).

mod common;

use common::*;

const HTML: &str = "text/html; charset=utf-8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_module_are_served_with_their_content_types() {
    let server = start("").await;
    for (path, content_type, needle) in [
        ("/", HTML, "import { TickwireClient } from '/tickwire.js'"),
        ("/chat", HTML, "import { TickwireClient } from '/tickwire.js'"),
        ("/console", HTML, "paste the README's snippet"),
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
    assert_eq!(web("200"), 4.0);
    assert_eq!(web("405"), 1.0);
    server.stop().await.expect("clean stop");
}

/// The console page is where the README sends a reader to paste its snippet: it must say so,
/// and the snippet must connect to the page's own server (any host and port), not to a fixed
/// address that a console page on another port would miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_sends_the_browser_snippet_to_the_console_page() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let section = readme
        .split("\n### Subscribe from a browser\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README has a 'Subscribe from a browser' section");
    assert!(section.contains("http://localhost:8080/console"), "{section}");
    let snippet = section
        .split("```js\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a js block");
    assert!(snippet.contains("location.origin"), "{snippet}");
    assert!(!snippet.contains("localhost"), "{snippet}");

    let server = start("").await;
    let r = http_get(server.addr, "/console").await;
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body).expect("UTF-8");
    assert!(body.contains("Open the devtools console"), "{body}");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_answer_404_when_web_is_disabled() {
    let server = start("[web]\nenabled = false\n").await;
    for path in ["/", "/chat", "/console"] {
        let r = http_get(server.addr, path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.json()["error"]["code"], "not_found", "{path}");
    }
    assert_eq!(http_post(server.addr, "/chat", b"x").await.status, 404);
    // The client module is a library, not a page: an application's own pages may import it.
    assert_eq!(http_get(server.addr, "/tickwire.js").await.status, 200);

    let m = scrape(server.addr).await;
    let count = |route, status| {
        m.value(
            "tickwire_http_requests_total",
            &[("route", route), ("status", status)],
        )
    };
    assert_eq!(count("not_found", "404"), 4.0);
    assert_eq!(count("web", "200"), 1.0);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_told_whether_the_feed_runs() {
    let off = start("").await; // the harness turns the feed off
    let body = String::from_utf8(http_get(off.addr, "/").await.body).expect("UTF-8");
    assert!(body.contains(r#"<html lang="en" data-feed="off">"#), "feed off");
    assert!(body.contains("the built-in feed is off"));
    off.stop().await.expect("clean stop");

    let on = start("[feed]\nenabled = true\nsymbols = [\"A\"]\nupdates_per_second = 1.0\n").await;
    let body = String::from_utf8(http_get(on.addr, "/").await.body).expect("UTF-8");
    assert!(body.contains(r#"<html lang="en" data-feed="on">"#), "feed on");
    on.stop().await.expect("clean stop");
}

/// A browser sees a refused upgrade as close 1006 whatever the reason, so tickwire.js asks again
/// with a plain GET and the same token: that answers the token's 401 (with the reason) where a
/// good token, or no auth, still gets the 426.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_get_of_ws_says_why_a_token_is_refused() {
    let server = start(JWT_TOML).await;
    let r = http_get(server.addr, "/ws").await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Bearer")));
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("missing token")),
        "{:?}",
        r.json()
    );
    let expired = token(&claims("ann", &[">"], &[], -60));
    let r = http_get(server.addr, &format!("/ws?token={expired}")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["message"], "token expired");
    let valid = token(&claims("ann", &[">"], &[], 600));
    let r = http_get(server.addr, &format!("/ws?token={valid}")).await;
    assert_eq!(r.status, 426);

    let m = scrape(server.addr).await;
    let rejected = |reason| m.value("tickwire_connections_rejected_total", &[("reason", reason)]);
    assert_eq!(rejected("auth"), 2.0);
    assert_eq!(rejected("bad_handshake"), 1.0);
    server.stop().await.expect("clean stop");
}
