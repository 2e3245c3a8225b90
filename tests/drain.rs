//! Graceful drain of the real binary on SIGTERM.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 1000;
const TOPIC: &str = "chat.drain"; // queue policy: every update must arrive, none conflated
const MESSAGES: u64 = 5;

/// What one client saw until its connection ended.
#[derive(Debug)]
struct Outcome {
    messages: Vec<Value>,
    close: Option<(u16, String)>,
    ended: Option<String>,
}

async fn read_to_close(mut ws: Ws, wait: Duration) -> Outcome {
    let deadline = tokio::time::Instant::now() + wait;
    let mut messages = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next_incoming(&mut ws, left).await {
            Incoming::Json(v) => messages.push(v),
            Incoming::Close(close) => {
                return Outcome {
                    messages,
                    close: Some(close.unwrap_or((0, "no close code".into()))),
                    ended: None,
                }
            }
            Incoming::Ended(e) => {
                return Outcome {
                    messages,
                    close: None,
                    ended: Some(e),
                }
            }
            Incoming::Timeout => {
                return Outcome {
                    messages,
                    close: None,
                    ended: Some("timeout".into()),
                }
            }
        }
    }
}

/// GET /readyz on a fresh connection: Ok(status), or Err when the port refuses or resets.
async fn probe_readyz(addr: SocketAddr) -> Result<u16, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        let head = String::from_utf8_lossy(&buf);
        head.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))
    };
    tokio::time::timeout(Duration::from_secs(2), fut)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_flushes_1000_clients_closes_1001_and_exits_0() {
    let limit = rlimit::increase_nofile_limit(u64::MAX).expect("raise the fd limit");
    assert!(
        limit >= CLIENTS as u64 + 200,
        "open files limit {limit} too low for {CLIENTS} clients"
    );
    let mut proc =
        ServerProcess::start(&[("TICKWIRE__SERVER__SHUTDOWN_TIMEOUT", "5s"), ("NO_COLOR", "1")]).await;
    let addr = proc.addr;

    let t = Instant::now();
    let clients: Vec<Ws> = stream::iter(0..CLIENTS)
        .map(|_| async move {
            let mut ws = connect(addr).await;
            subscribe(&mut ws, 1, &[TOPIC]).await;
            ws
        })
        .buffer_unordered(100)
        .collect()
        .await;
    eprintln!("{CLIENTS} clients connected and subscribed in {:?}", t.elapsed());
    let m = scrape(addr).await;
    assert_eq!(m.value("tickwire_connections", &[]), CLIENTS as f64);
    assert_eq!(m.value("tickwire_subscriptions", &[]), CLIENTS as f64);

    let readers: Vec<_> = clients
        .into_iter()
        .map(|ws| tokio::spawn(read_to_close(ws, Duration::from_secs(20))))
        .collect();

    // Publish, then SIGTERM straight away: the updates may still be queued when the drain
    // starts, and must be flushed before the close.
    for i in 1..=MESSAGES {
        assert_eq!(publish(addr, TOPIC, json!({"i": i})).await, i);
    }
    proc.sigterm();
    let term = Instant::now();

    // Readiness during the drain: 503, or the port refuses (the listener is closed).
    let mut readiness = None;
    while term.elapsed() < Duration::from_secs(2) {
        match probe_readyz(addr).await {
            Ok(200) => tokio::time::sleep(Duration::from_millis(5)).await, // signal not yet handled
            Ok(503) => {
                readiness = Some("503".to_string());
                break;
            }
            Ok(s) => panic!("/readyz answered {s} during the drain"),
            Err(e) => {
                readiness = Some(format!("refused ({e})"));
                break;
            }
        }
    }
    let readiness = readiness.expect("/readyz still 200 two seconds after SIGTERM");
    eprintln!("/readyz during the drain: {readiness} after {:?}", term.elapsed());

    let status = proc.wait_exit(Duration::from_secs(6)).await;
    let exit_after = term.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "tickwire still running 6 s after SIGTERM (shutdown_timeout 5s): {}",
            proc.logs()
        )
    });
    eprintln!("exited with {status} {exit_after:?} after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status; logs:\n{}", proc.logs());

    let mut failures = Vec::new();
    for (k, reader) in readers.into_iter().enumerate() {
        let o = reader.await.expect("reader task");
        let seqs: Vec<u64> = o.messages.iter().map(|m| assert_update(m, TOPIC)).collect();
        let want: Vec<u64> = (1..=MESSAGES).collect();
        let close_ok =
            o.close.as_ref().map(|(c, r)| (*c, r.as_str())) == Some((1001, "server shutting down"));
        if seqs != want || !close_ok {
            failures.push(format!(
                "client {k}: seqs {seqs:?}, close {:?}, ended {:?}",
                o.close, o.ended
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {CLIENTS} clients did not get all {MESSAGES} updates then 1001 \"server shutting down\", e.g.:\n{}",
        failures.len(),
        failures.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
    let logs = proc.logs();
    assert!(
        logs.contains("drained") && !logs.contains("shutdown timeout"),
        "clients that answer the close should let the drain complete before the timeout:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_with_stalled_clients_exits_0_within_shutdown_timeout() {
    const STALLED: usize = 20;
    const BATCH: u64 = 500;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut proc = ServerProcess::start(&[
        ("TICKWIRE__SERVER__SHUTDOWN_TIMEOUT", "2s"),
        ("TICKWIRE__ADMIN__LISTEN", &admin.to_string()),
        ("TICKWIRE__HTTP__MAX_BODY_BYTES", "4194304"),
        ("NO_COLOR", "1"),
    ])
    .await;
    let addr = proc.addr;

    // Clients with a tiny receive window that subscribe, then never read (or answer) again.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let mut ws = connect_small_rcvbuf(addr, 4096).await;
        subscribe(&mut ws, 1, &["prices.STALL"]).await;
        stalled.push(ws);
    }
    // Fill their socket buffers until every server-side writer is blocked mid-write: then
    // (nearly) every update of a batch is conflated for every client. Such a writer can only
    // give up on its own after CLOSE_GRACE (5 s) + CLOSE_LINGER (2 s), so only the
    // shutdown timeout (2 s) can make the process exit in time.
    let pad = "p".repeat(2048);
    let mut total = 0.0;
    let mut all_blocked = false;
    for round in 0..30u64 {
        let msgs: Vec<(&str, Value)> = (0..BATCH)
            .map(|k| ("prices.STALL", json!({"i": round * BATCH + k, "pad": pad})))
            .collect();
        publish_batch(addr, &msgs).await;
        let now = scrape(admin)
            .await
            .value("tickwire_messages_conflated_total", &[]);
        let in_batch = now - total;
        total = now;
        if in_batch >= 0.95 * (BATCH as f64) * STALLED as f64 {
            all_blocked = true;
            eprintln!("all writers blocked after {} batches", round + 1);
            break;
        }
    }
    assert!(
        all_blocked,
        "the stalled clients' writers never all blocked ({total} conflations)"
    );
    assert_eq!(http_get(admin, "/readyz").await.status, 200);

    proc.sigterm();
    let term = Instant::now();
    // The admin listener keeps answering during the drain: not ready.
    let mut saw_503 = false;
    while term.elapsed() < Duration::from_millis(1500) {
        match probe_readyz(admin).await {
            Ok(200) => tokio::time::sleep(Duration::from_millis(5)).await,
            Ok(503) => {
                saw_503 = true;
                break;
            }
            other => panic!("admin /readyz during the drain: {other:?}"),
        }
    }
    assert!(saw_503, "admin /readyz never turned 503 during the drain");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the main listener still accepts during the drain"
    );

    let status = proc.wait_exit(Duration::from_secs(3)).await;
    let exit_after = term.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "tickwire still running 3 s after SIGTERM (shutdown_timeout 2s) with {STALLED} stalled clients: {}",
            proc.logs()
        )
    });
    eprintln!("exited with {status} {exit_after:?} after SIGTERM");
    assert_eq!(status.code(), Some(0), "exit status; logs:\n{}", proc.logs());
    drop(stalled);
}
