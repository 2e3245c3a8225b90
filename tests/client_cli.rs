//! The `tickwire subscribe` and `tickwire publish` commands (the client side of the binary): the
//! real binary against an in-process server.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::jwt::{claims, token, JWT_TOML};
use common::proxy::Proxy;
use common::{eventually, free_port, start, tickwire_command, RECV_TIMEOUT};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout, Command};

fn tickwire(args: &[&str]) -> Command {
    let mut cmd = Command::from(tickwire_command());
    cmd.env_remove("TICKWIRE_URL")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs a command to completion: (exit code, stdout, stderr).
async fn run(mut cmd: Command, stdin: Option<String>) -> (i32, String, String) {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn tickwire");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).await.unwrap();
        drop(pipe);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("tickwire did not finish")
        .unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = tokio::time::timeout(RECV_TIMEOUT, lines.next_line())
        .await
        .expect("no output from tickwire subscribe")
        .unwrap()
        .expect("tickwire subscribe closed its stdout");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

/// Waits until the server lists `topic` with a subscriber.
async fn wait_subscribed(addr: std::net::SocketAddr, topic: &str) {
    let what = format!("{topic} has a subscriber");
    eventually(&what, RECV_TIMEOUT, || async move {
        let row = common::topic_listing(addr, topic).await;
        row.is_some_and(|row| row["subscribers"].as_u64() > Some(0))
    })
    .await;
}

fn interrupt(child: &Child) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_what_publish_sent() {
    let server = start("").await;
    let ws = format!("ws://{}/ws", server.addr);
    let http = format!("http://{}", server.addr);
    common::publish(server.addr, "chat.cli", json!({"before": true})).await;

    let mut sub = tickwire(&["subscribe", "--url", &ws, "chat.cli", "chat.batch.*"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(
        next_line(&mut lines).await,
        json!({"type": "snapshot", "topic": "chat.cli", "seq": 1, "ts": common::get_topic(server.addr, "chat.cli").await.unwrap()["ts"], "data": {"before": true}})
    );
    wait_subscribed(server.addr, "chat.cli").await;

    // One message from the arguments: its data arrives byte for byte.
    let (code, out, err) = run(
        tickwire(&[
            "publish",
            "--url",
            &http,
            "chat.cli",
            r#"{"text": "hi", "n": 1.50}"#,
        ]),
        None,
    )
    .await;
    assert_eq!(code, 0, "stderr: {err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({"topic": "chat.cli", "seq": 2})
    );
    let line = tokio::time::timeout(RECV_TIMEOUT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        line.starts_with(r#"{"type":"update","topic":"chat.cli","seq":2,"ts":"#)
            && line.ends_with(r#","data":{"text": "hi", "n": 1.50}}"#),
        "{line}"
    );

    // NDJSON on stdin, in batches of 500: 1,100 messages over two topics, and blank lines.
    let mut input = String::new();
    for i in 0..1100 {
        let topic = if i % 2 == 0 {
            "chat.batch.a"
        } else {
            "chat.batch.b"
        };
        input.push_str(&json!({"topic": topic, "data": {"i": i}}).to_string());
        input.push('\n');
        if i == 600 {
            input.push_str("\n  \n");
        }
    }
    let (code, out, err) = run(tickwire(&["publish", "--url", &http]), Some(input)).await;
    assert_eq!(code, 0, "stderr: {err}");
    assert!(err.contains("published 1100 messages in 3 requests"), "{err}");
    let results: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(results.len(), 1100);
    assert_eq!(results[1099], json!({"topic": "chat.batch.b", "seq": 550}));

    let mut next = [0u64; 2];
    for _ in 0..1100 {
        let v = next_line(&mut lines).await;
        assert_eq!(v["type"], "update", "{v}");
        let i = v["data"]["i"].as_u64().unwrap();
        let (slot, topic) = if i % 2 == 0 {
            (0, "chat.batch.a")
        } else {
            (1, "chat.batch.b")
        };
        assert_eq!(v["topic"], topic, "{v}");
        next[slot] += 1;
        assert_eq!(v["seq"].as_u64(), Some(next[slot]), "in order, none missing: {v}");
        assert_eq!(i, (next[slot] - 1) * 2 + slot as u64, "{v}");
    }

    // Ctrl-C ends it cleanly.
    interrupt(&sub);
    let status = tokio::time::timeout(RECV_TIMEOUT, sub.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "subscribe exited with {status}");
    assert!(lines.next_line().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_errors_exit_non_zero_with_the_servers_message() {
    let server = start("").await;
    let http = format!("http://{}", server.addr);

    let (code, out, err) = run(tickwire(&["publish", "--url", &http, "bad..topic", "1"]), None).await;
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert!(
        err.starts_with("tickwire: HTTP 400: invalid_topic: invalid topic \"bad..topic\""),
        "{err}"
    );

    let (code, _, err) = run(
        tickwire(&["publish", "--url", &http, "chat.x", "{not json"]),
        None,
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("DATA is not valid JSON"), "{err}");

    // A bad batch is rejected whole; the batches before it went through.
    let input = format!(
        "{}\n{}\n{}\n",
        json!({"topic": "chat.ok", "data": 1}),
        json!({"topic": "chat.ok", "data": 2}),
        json!({"topic": "chat.*", "data": 3})
    );
    let (code, out, err) = run(
        tickwire(&["publish", "--url", &http, "--batch-size", "2"]),
        Some(input),
    )
    .await;
    assert_eq!(code, 1, "stderr: {err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(
        err.contains("stdin lines 3-3 rejected: HTTP 400: invalid_topic"),
        "{err}"
    );
    assert!(err.contains("(2 messages published before)"), "{err}");

    let (code, _, err) = run(
        tickwire(&["publish", "--url", &http]),
        Some("{\"topic\":\"chat.x\"}\n".into()),
    )
    .await;
    assert_eq!(code, 2);
    assert!(
        err.contains("stdin line 1") && err.contains("missing field `data`"),
        "{err}"
    );

    let unused = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = run(
        tickwire(&["publish", "--url", &format!("http://{unused}"), "chat.x", "1"]),
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_reports_refusals_and_lost_connections() {
    let server = start("").await;
    let ws = format!("ws://{}/ws", server.addr);

    let (code, out, err) = run(tickwire(&["subscribe", "--url", &ws, "a..b"]), None).await;
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.contains("subscribe failed: server error invalid_topic"),
        "{err}"
    );

    let unused = format!("127.0.0.1:{}", free_port());
    let (code, _, err) = run(
        tickwire(&["subscribe", "--url", &format!("ws://{unused}/ws"), "x"]),
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect"), "{err}");

    // --no-reconnect: the server shutting down ends the command with its close code.
    let sub = tickwire(&["subscribe", "--no-reconnect", "--url", &ws, "chat.x"])
        .spawn()
        .unwrap();
    wait_subscribed(server.addr, "chat.x").await;
    server.stop().await.unwrap();
    let out = tokio::time::timeout(RECV_TIMEOUT, sub.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connection closed: 1001 server shutting down"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_table_shows_quotes() {
    let server = start("").await;
    let ws = format!("ws://{}/ws", server.addr);
    let quote =
        |bid: f64, ask: f64, last: f64| json!({"symbol": "ACME", "bid": bid, "ask": ask, "last": last});
    common::publish(server.addr, "prices.ACME", quote(99.5, 100.5, 100.0)).await;
    let mut sub = tickwire(&["subscribe", "--table", "--url", &ws, "prices.*"])
        .spawn()
        .unwrap();
    wait_subscribed(server.addr, "prices.ACME").await;
    common::publish(server.addr, "prices.ACME", quote(101.0, 102.0, 101.5)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    interrupt(&sub);
    let mut out = String::new();
    tokio::io::AsyncReadExt::read_to_string(sub.stdout.as_mut().unwrap(), &mut out)
        .await
        .unwrap();
    assert!(sub.wait().await.unwrap().success());
    let screen = out.rsplit("\x1b[2J").next().unwrap();
    let rows: Vec<Vec<&str>> = screen.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["SYMBOL", "BID", "ASK", "LAST", "CHANGE"], "{screen}");
    assert_eq!(
        rows[1],
        ["ACME", "101.00", "102.00", "101.50", "+1.50", "(+1.50%)"],
        "{screen}"
    );
}

/// Version `i` of a JSON document of 24 fields (over `delta.min_bytes`, 128): two fields differ
/// from version `i - 1`. Strings mix multi-byte UTF-8 and JSON escapes; the text keeps its spaces,
/// to compare byte for byte.
fn document(i: usize) -> String {
    const WORDS: [&str; 6] = ["é", "мир", "🟢", "中文", r#"\"q\""#, r"a\nb\tc\\d"];
    let fields: Vec<String> = (0..24)
        .map(|k| {
            if k == i % 24 {
                format!("\"k{k}\": \"{} #{i}\"", WORDS[i % WORDS.len()])
            } else {
                format!("\"k{k}\": \"{}{k}\"", WORDS[k % WORDS.len()])
            }
        })
        .collect();
    format!("{{{}}}", fields.join(", "))
}

/// Reads `subscribe` lines until the one of `topic` #`seq`; returns them as text.
async fn lines_until(lines: &mut Lines<BufReader<ChildStdout>>, topic: &str, seq: u64) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        let line = tokio::time::timeout(RECV_TIMEOUT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line for {topic} #{seq}; got {got:?}"))
            .unwrap()
            .expect("tickwire subscribe closed its stdout");
        let v: Value = serde_json::from_str(&line).unwrap();
        got.push(line);
        if v["topic"] == topic && v["seq"] == seq {
            return got;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_takes_max_rate_and_delta_and_prints_full_data() {
    let server = start("").await;
    let addr = server.addr;
    let ws = format!("ws://{addr}/ws");
    let (code, out, err) = run(
        tickwire(&["subscribe", "--url", &ws, "--max-rate", "0", "doc.x"]),
        None,
    )
    .await;
    assert_eq!((code, out.as_str()), (2, ""), "{err}");
    assert!(
        err.contains("--max-rate") && err.contains("from 0.01 to 1000"),
        "{err}"
    );

    // --delta: the server sends deltas, the command prints every document whole, as published.
    let publish_text = |data: String| async move {
        let body = format!("{{\"topic\":\"doc.c\",\"data\":{data}}}");
        let response = common::http_post(addr, "/api/v1/publish", body.as_bytes()).await;
        assert_eq!(response.status, 200);
        response.json()["seq"].as_u64().unwrap()
    };
    publish_text(document(0)).await;
    let mut sub = tickwire(&["subscribe", "--url", &ws, "--delta", "doc.*"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let snapshot = lines_until(&mut lines, "doc.c", 1).await;
    assert!(
        snapshot[0].ends_with(&format!(r#","data":{}}}"#, document(0))),
        "{snapshot:?}"
    );
    let before = common::metric(addr, "tickwire_delta_frames_total")
        .await
        .unwrap_or(0.0);
    for i in 1..=60 {
        let seq = publish_text(document(i)).await;
        let got = lines_until(&mut lines, "doc.c", seq).await;
        let line = got.last().unwrap();
        assert!(
            line.starts_with(&format!(r#"{{"type":"update","topic":"doc.c","seq":{seq},"#)),
            "{line}"
        );
        assert!(
            line.ends_with(&format!(r#","data":{}}}"#, document(i))),
            "#{i}: {line}"
        );
    }
    let deltas = common::metric(addr, "tickwire_delta_frames_total")
        .await
        .unwrap_or(0.0)
        - before;
    assert!(deltas >= 55.0, "{deltas} of 60 updates were sent as deltas");
    interrupt(&sub);
    assert!(sub.wait().await.unwrap().success());

    // --max-rate 2: a burst of 500 arrives as a few lines, the last one the newest.
    let mut sub = subscribed(
        addr,
        &["subscribe", "--url", &ws, "--max-rate", "2", "rate.c"],
        &[],
        "rate.c",
    )
    .await;
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let burst: Vec<(&str, Value)> = (0..500).map(|i| ("rate.c", json!({"i": i}))).collect();
    common::publish_batch(addr, &burst).await;
    let got = lines_until(&mut lines, "rate.c", 500).await;
    assert!(got.len() <= 4, "{} lines for a burst at --max-rate 2", got.len());
    assert!(got.last().unwrap().ends_with(r#","data":{"i":499}}"#), "{got:?}");
    interrupt(&sub);
    assert!(sub.wait().await.unwrap().success());
}

/// Starts `tickwire subscribe` with `args` and `env`, and waits until the server sees its
/// subscription to `topic`.
async fn subscribed(addr: std::net::SocketAddr, args: &[&str], env: &[(&str, &str)], topic: &str) -> Child {
    let mut cmd = tickwire(args);
    cmd.envs(env.iter().copied());
    let child = cmd.spawn().unwrap();
    wait_subscribed(addr, topic).await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_commands_find_the_server_from_any_base_url_or_the_configuration() {
    let server = start("").await;
    let addr = server.addr;
    let port = addr.port().to_string();
    let listen = format!("0.0.0.0:{port}");
    let config = std::env::temp_dir().join(format!("tickwire-cli-{}-{port}.toml", std::process::id()));
    let config_listen = format!("[server]\nlisten = \"{listen}\"\n");
    std::fs::write(&config, &config_listen).unwrap();
    let config = config.to_str().unwrap().to_string();

    // subscribe: a ws:// base without /ws, an http:// base from TICKWIRE_URL, and no URL at
    // all (server.listen from TICKWIRE__SERVER__LISTEN, or from --config).
    let subs = vec![
        subscribed(
            addr,
            &["subscribe", "--url", &format!("ws://{addr}"), "chat.a"],
            &[],
            "chat.a",
        )
        .await,
        subscribed(
            addr,
            &["subscribe", "chat.b"],
            &[("TICKWIRE_URL", &format!("http://{addr}/"))],
            "chat.b",
        )
        .await,
        subscribed(
            addr,
            &["subscribe", "chat.c"],
            &[("TICKWIRE__SERVER__LISTEN", &listen)],
            "chat.c",
        )
        .await,
        subscribed(addr, &["subscribe", "--config", &config, "chat.d"], &[], "chat.d").await,
    ];

    // publish: a ws:// URL with /ws, TICKWIRE_URL, the configured listen address.
    let publishes = [
        ("chat.a", vec!["--url".into(), format!("ws://{addr}/ws")], vec![]),
        ("chat.b", vec![], vec![("TICKWIRE_URL", format!("ws://{addr}"))]),
        (
            "chat.c",
            vec![],
            vec![("TICKWIRE__SERVER__LISTEN", listen.clone())],
        ),
        ("chat.d", vec!["--config".into(), config.clone()], vec![]),
    ];
    for (topic, flags, env) in publishes {
        let mut args = vec!["publish"];
        args.extend(flags.iter().map(String::as_str));
        args.extend([topic, r#"{"n":1}"#]);
        let mut cmd = tickwire(&args);
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let (code, out, err) = run(cmd, None).await;
        assert_eq!(code, 0, "{args:?}: {err}");
        assert_eq!(
            serde_json::from_str::<Value>(&out).unwrap(),
            json!({"topic": topic, "seq": 1})
        );
    }
    for (mut sub, topic) in subs.into_iter().zip(["chat.a", "chat.b", "chat.c", "chat.d"]) {
        let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
        let update = next_line(&mut lines).await;
        assert_eq!(
            (update["topic"].as_str(), update["seq"].as_u64()),
            (Some(topic), Some(1))
        );
        interrupt(&sub);
        assert!(sub.wait().await.unwrap().success());
    }

    // The configured address says where it came from when nothing answers there, and a
    // configuration that cannot be loaded is a usage error.
    let mut cmd = tickwire(&["publish", "chat.x", "1"]);
    let unused = format!("127.0.0.1:{}", free_port());
    cmd.env("TICKWIRE__SERVER__LISTEN", &unused);
    let (code, _, err) = run(cmd, None).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot connect to http://{unused}")),
        "{err}"
    );
    assert!(err.contains("from server.listen in the configuration"), "{err}");
    let mut cmd = tickwire(&["subscribe", "chat.x"]);
    cmd.env("TICKWIRE__SERVER__LISTEN", "nope");
    let (code, _, err) = run(cmd, None).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no --url or TICKWIRE_URL"), "{err}");
    std::fs::remove_file(&config).unwrap();
}

/// A plain HTTP server that answers every request with an HTML page, like a web server or a
/// dashboard at the wrong address.
async fn html_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await;
                let body = "<!doctype html>\n<html>\n<body>\n<h1>Welcome</h1>\n</body>\n</html>\n";
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_reaches_something_else_gets_a_one_line_error() {
    let html = html_server().await;
    let (code, out, err) = run(
        tickwire(&["subscribe", "--url", &format!("http://{html}"), "x"]),
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    for part in [&format!("ws://{html}/ws"), "HTTP 200", "text/html", "--url"] {
        assert!(err.contains(part), "{part:?} missing: {err}");
    }
    assert!(!err.contains("doctype"), "{err}");

    let (code, _, err) = run(
        tickwire(&["publish", "--url", &format!("ws://{html}"), "chat.x", "1"]),
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    for part in [&format!("http://{html}/api/v1/publish"), "--url"] {
        assert!(err.contains(part), "{part:?} missing: {err}");
    }

    // A tickwire server under a path it does not have.
    let server = start("").await;
    let (code, _, err) = run(
        tickwire(&["subscribe", "--url", &format!("http://{}/push", server.addr), "x"]),
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not a tickwire WebSocket endpoint") && err.contains("HTTP 404"),
        "{err}"
    );
}

/// Waits until the server lists `topic` with `n` subscribers.
async fn wait_subscribers(addr: std::net::SocketAddr, topic: &str, n: u64) {
    let what = format!("{topic} has {n} subscribers");
    eventually(&what, RECV_TIMEOUT, || async move {
        let row = common::topic_listing(addr, topic).await;
        row.is_some_and(|row| row["subscribers"].as_u64() == Some(n))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sse_prints_what_websocket_prints_and_recovers_across_a_cut() {
    let server = start("").await;
    let addr = server.addr;
    let publish_text = |data: String| async move {
        let body = format!("{{\"topic\":\"doc.s\",\"data\":{data}}}");
        let response = common::http_post(addr, "/api/v1/publish", body.as_bytes()).await;
        assert_eq!(response.status, 200);
        response.json()["seq"].as_u64().unwrap()
    };
    publish_text(document(0)).await;
    // The SSE stream goes through a proxy the test can cut; WebSocket goes straight.
    let proxy = Proxy::start(addr).await;
    let direct = format!("http://{addr}");
    let proxied = format!("http://{}", proxy.addr);
    let mut ws = tickwire(&["subscribe", "--url", &direct, "--delta", "doc.*"])
        .spawn()
        .unwrap();
    let mut sse = tickwire(&["subscribe", "--url", &proxied, "--sse", "--delta", "doc.*"])
        .spawn()
        .unwrap();
    let mut ws_lines = BufReader::new(ws.stdout.take().unwrap()).lines();
    let mut sse_lines = BufReader::new(sse.stdout.take().unwrap()).lines();
    wait_subscribers(addr, "doc.s", 2).await;

    // The same lines, byte for byte: the snapshot, then updates sent as deltas and printed whole.
    for i in 1..=20 {
        publish_text(document(i)).await;
    }
    let over_ws = lines_until(&mut ws_lines, "doc.s", 21).await;
    let over_sse = lines_until(&mut sse_lines, "doc.s", 21).await;
    assert_eq!(over_sse.len(), 21, "{over_sse:?}");
    assert_eq!(over_sse, over_ws);
    assert!(over_sse[20].ends_with(&format!(r#","data":{}}}"#, document(20))));

    // The stream is cut, and the proxy refuses connections while 50 publications go by: the
    // reconnect's Last-Event-ID recovers exactly those 50, then live, without a reset.
    proxy.set_open(false);
    proxy.cut();
    wait_subscribers(addr, "doc.s", 1).await;
    for i in 21..71 {
        publish_text(document(i)).await;
    }
    proxy.set_open(true);
    wait_subscribers(addr, "doc.s", 2).await;
    let live = publish_text(document(71)).await;
    assert_eq!(live, 72);
    let over_sse = lines_until(&mut sse_lines, "doc.s", 72).await;
    let seqs: Vec<u64> = (over_sse.iter())
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (22..=72).collect::<Vec<u64>>(), "{over_sse:?}");
    assert_eq!(over_sse, lines_until(&mut ws_lines, "doc.s", 72).await);
    assert!(proxy
        .request_lines()
        .iter()
        .all(|l| l.starts_with("GET /sse?topics=doc.*&delta=fossil ")));

    interrupt(&sse);
    let out = tokio::time::timeout(RECV_TIMEOUT, sse.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("connection closed (1006 ), reconnecting")
            && err.contains("tickwire: reconnected to http://"),
        "{err}"
    );
    interrupt(&ws);
    assert!(ws.wait().await.unwrap().success());

    // Refusals before anything is streamed end the command as over WebSocket.
    let (code, out, err) = run(tickwire(&["subscribe", "--url", &direct, "--sse", "a..b"]), None).await;
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.contains("subscribe failed: server error invalid_topic"),
        "{err}"
    );
    let unused = format!("http://127.0.0.1:{}", free_port());
    let (code, _, err) = run(tickwire(&["subscribe", "--url", &unused, "--sse", "x"]), None).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_sse_takes_the_token_and_reports_refusals() {
    let server = start(JWT_TOML).await;
    let url = format!("http://{}", server.addr);
    let (code, _, err) = run(tickwire(&["subscribe", "--url", &url, "--sse", "chat.x"]), None).await;
    assert_eq!(code, 1);
    assert!(err.contains("requires a token") && err.contains("/sse"), "{err}");
    let expired = token(&claims("ann", &["chat.>"], &[], -10));
    let args = ["subscribe", "--url", &url, "--sse", "--token", &expired, "chat.x"];
    let (code, _, err) = run(tickwire(&args), None).await;
    assert_eq!(code, 1);
    assert!(err.contains("token expired") && err.contains("--token"), "{err}");
    let narrow = token(&claims("ann", &["chat.>"], &[], 60));
    let args = [
        "subscribe",
        "--url",
        &url,
        "--sse",
        "--token",
        &narrow,
        "prices.*",
    ];
    let (code, _, err) = run(tickwire(&args), None).await;
    assert_eq!(code, 1);
    assert!(err.contains("subscribe failed: server error forbidden"), "{err}");

    // A token that expires while streaming: `event: close` 4003 ends the command.
    let short = token(&claims("ann", &["chat.>"], &[], 2));
    let args = ["subscribe", "--url", &url, "--sse", "--token", &short, "chat.x"];
    let sub = subscribed(server.addr, &args, &[], "chat.x").await;
    common::publish(server.addr, "chat.x", json!("hi")).await;
    let out = tokio::time::timeout(RECV_TIMEOUT, sub.wait_with_output())
        .await
        .expect("subscribe still running after its token expired")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(r#"{"type":"update","topic":"chat.x","seq":1,"#),
        "{stdout}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("4003 token expired") && err.contains("--token"),
        "{err}"
    );
    assert!(!err.contains("reconnecting"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_or_expiring_tokens_end_subscribe_with_the_reason() {
    let server = start(JWT_TOML).await;
    let ws = format!("ws://{}", server.addr);
    let expired = token(&claims("ann", &["chat.>"], &[], -10));
    let started = std::time::Instant::now();
    let (code, _, err) = run(
        tickwire(&["subscribe", "--url", &ws, "--token", &expired, "chat.x"]),
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("token expired") && err.contains("--token"), "{err}");
    let (code, _, err) = run(tickwire(&["subscribe", "--url", &ws, "chat.x"]), None).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("requires a token") && err.contains("--token"),
        "{err}"
    );

    // A token that expires while subscribed: the server closes with 4003, and the command
    // ends instead of reconnecting with it forever.
    let short = token(&claims("ann", &["chat.>"], &[], 2));
    let sub = subscribed(
        server.addr,
        &["subscribe", "--url", &ws, "--token", &short, "chat.x"],
        &[],
        "chat.x",
    )
    .await;
    let out = tokio::time::timeout(RECV_TIMEOUT, sub.wait_with_output())
        .await
        .expect("subscribe still running after its token expired")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("4003 token expired") && err.contains("--token"),
        "{err}"
    );
    assert!(!err.contains("reconnecting"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_takes_the_api_key_and_says_which_flag_was_wrong() {
    let key = tickwire::apikey::generate().unwrap();
    let server = start(&format!(
        "[[auth.api_keys]]\nname = \"p\"\nsha256 = \"{}\"\npublish = [\">\"]\n",
        key.sha256
    ))
    .await;
    let http = format!("http://{}", server.addr);
    let (code, _, err) = run(tickwire(&["publish", "--url", &http, "chat.k", "1"]), None).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("HTTP 401") && err.contains("pass the publisher's API key with --api-key"),
        "{err}"
    );
    let (code, _, err) = run(
        tickwire(&["publish", "--url", &http, "--api-key", "nope", "chat.k", "1"]),
        None,
    )
    .await;
    assert_eq!(code, 1);
    assert!(err.contains("the key given with --api-key was refused"), "{err}");
    for flag in ["--api-key", "--token"] {
        let (code, out, err) = run(
            tickwire(&["publish", "--url", &http, flag, &key.key, "chat.k", "1"]),
            None,
        )
        .await;
        assert_eq!(code, 0, "{flag}: {err}");
        assert!(out.contains("\"topic\":\"chat.k\""), "{out}");
    }
    // Singular when it is one.
    let (code, _, err) = run(
        tickwire(&["publish", "--url", &http, "--api-key", &key.key]),
        Some(format!("{}\n", json!({"topic": "chat.k", "data": 3}))),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("published 1 message in 1 request\n"), "{err}");
    assert!(
        !err.contains("reading NDJSON"),
        "not said when stdin is a pipe: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_at_a_terminal_says_it_reads_stdin() {
    let server = start("").await;
    let line = format!("{}\n", json!({"topic": "chat.tty", "data": 1}));
    // `script` gives the command a terminal, forwards our stdin to it (and its end as Ctrl-D),
    // and copies what the command writes to the terminal to its stdout.
    let command = format!(
        "{} publish --url http://{}",
        env!("CARGO_BIN_EXE_tickwire"),
        server.addr
    );
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &command, "/dev/null"])
        .current_dir(std::env::temp_dir())
        .env_remove("TICKWIRE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let (code, out, err) = run(cmd, Some(line)).await;
    assert_eq!(code, 0, "{out} {err}");
    assert!(out.contains("tickwire: reading NDJSON from stdin"), "{out}");
    assert!(out.contains("published 1 message in 1 request"), "{out}");
}
