//! The `curl` examples of README.md and docs/protocol.md, run as written against a live server,
//! in the order the document gives them (each document on a fresh server), with the real
//! `curl`. Each answer must have the documented shape: the same status when the document gives
//! one, the same JSON keys and value types throughout, the same error `code`, and for `curl -i`
//! the documented headers. Values that depend on the moment (seqs, epochs, times) are not
//! compared. A streaming example (`curl -N`, Server-Sent Events) runs for 2 s: it must answer
//! 200 with the documented first line, and each `data:` must be the JSON of its event's `type`.
//! An example for another host (`https://push.example.com`) is not run; the test says how many
//! ran so that a document that loses its examples is noticed.

mod common;

use common::*;
use serde_json::Value;

/// One documented command and what the document shows it answers.
#[derive(Debug)]
struct Example {
    line: usize,
    command: String,
    /// The documented answer: body text (JSON), with the status line and headers for `-i`.
    expected: Vec<String>,
}

/// Commands of fenced code blocks: README style (`curl …` then `# → answer`) and protocol
/// style (`$ curl …` then the answer, a trailing `(status…)` note, until a blank line or a
/// `(…)` line that describes another setup).
fn examples(doc: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut in_block = false;
    let lines: Vec<&str> = doc.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            i += 1;
            continue;
        }
        let start = line.strip_prefix("$ ").unwrap_or(line);
        if !in_block || !start.starts_with("curl ") {
            i += 1;
            continue;
        }
        let first = i + 1;
        let mut command = start.to_string();
        while command.ends_with('\\') && i + 1 < lines.len() {
            command.pop();
            i += 1;
            command.push_str(lines[i].trim_start());
        }
        i += 1;
        let mut expected = Vec::new();
        while i < lines.len() {
            let next = lines[i];
            // `# →` alone: a blank line of the answer (between two events of a stream).
            if let Some(answer) = next.strip_prefix("# → ").or((next == "# →").then_some("")) {
                expected.push(answer.to_string());
            } else if line.starts_with("$ ") && !ends_an_answer(next, &expected) {
                expected.push(next.to_string());
            } else {
                break;
            }
            i += 1;
        }
        out.push(Example {
            line: first,
            command,
            expected,
        });
    }
    out
}

/// A protocol-style answer ends at the next command, a `(…)` line describing another setup, the
/// block's end, or the blank line after its JSON body (a blank line before it ends `-i` headers).
fn ends_an_answer(next: &str, so_far: &[String]) -> bool {
    next.starts_with("$ ")
        || next.starts_with('(')
        || next.starts_with("```")
        || (next.is_empty() && so_far.iter().any(|l| l.starts_with('{')))
}

/// Whether `actual` has the shape of `documented`: objects with the same keys, values of the
/// same JSON types (or `null`, which stands for a value that may be absent), arrays both empty
/// or both not (their first items alike), and error codes equal.
fn same_shape(documented: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (documented, actual) {
        (Value::Object(d), Value::Object(a)) => {
            let (dk, ak): (Vec<_>, Vec<_>) = (d.keys().collect(), a.keys().collect());
            if dk != ak {
                return Err(format!("{path}: keys {dk:?} documented, {ak:?} answered"));
            }
            for (k, v) in d {
                if path.ends_with("error") && k == "code" && v != &a[k] {
                    return Err(format!("{path}.code: {v} documented, {} answered", a[k]));
                }
                same_shape(v, &a[k], &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(a)) => match (d.first(), a.first()) {
            (Some(d), Some(a)) => same_shape(d, a, &format!("{path}[0]")),
            (None, None) => Ok(()),
            _ => Err(format!(
                "{path}: {} items documented, {} answered",
                d.len(),
                a.len()
            )),
        },
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, _)
        | (_, Value::Null) => Ok(()), // a value that may be absent (`next` on a last page)
        _ => Err(format!("{path}: {documented} documented, {actual} answered")),
    }
}

/// Splits a documented answer into (status, header names, JSON body).
fn documented(expected: &[String]) -> (Option<u16>, Vec<String>, Option<Value>) {
    let mut status = None;
    let mut headers = Vec::new();
    let mut body = None;
    for line in expected {
        if let Some(rest) = line.strip_prefix("HTTP/1.1 ") {
            status = rest.get(..3).and_then(|s| s.parse().ok());
        } else if line.starts_with('{') {
            // A trailing note: `{...}   (200)` or `(403, why)`.
            let (json, note) = match line.rfind("   (") {
                Some(at) => (&line[..at], Some(&line[at + 4..])),
                None => (line.as_str(), None),
            };
            // `…` stands for any value in the documents.
            let json = json.replace('…', "null");
            body = Some(
                serde_json::from_str(json.trim())
                    .unwrap_or_else(|e| panic!("documented answer is not JSON ({e}): {json}")),
            );
            if let Some(note) = note {
                status = status.or_else(|| note.get(..3).and_then(|s| s.parse().ok()));
            }
        } else if let Some((name, _)) = line.split_once(": ") {
            if body.is_none() && !name.contains(' ') {
                headers.push(name.to_ascii_lowercase());
            }
        }
    }
    (status, headers, body)
}

/// A Server-Sent Events answer: the documented first line, then events whose `data:` is the JSON
/// of a frame of the event's name (`subscribed`, `snapshot`, …).
fn check_stream(here: &str, expected: &[String], answer: &str) {
    let first = expected
        .first()
        .map(String::as_str)
        .unwrap_or("event: subscribed");
    assert_eq!(answer.lines().next(), Some(first), "{here}: first line\n{answer}");
    let mut name = "message";
    let mut events = 0;
    for line in answer.lines() {
        if let Some(event) = line.strip_prefix("event: ") {
            name = event;
        } else if let Some(data) = line.strip_prefix("data: ") {
            let frame: Value = serde_json::from_str(data)
                .unwrap_or_else(|e| panic!("{here}: a data line is not JSON ({e}): {data}"));
            assert_eq!(frame["type"], name, "{here}: {line}");
            events += 1;
        }
    }
    assert!(events > 0, "{here}: no event in\n{answer}");
}

async fn run_document(name: &str, text: &str, min_run: usize) {
    let server = start("").await;
    let base = format!("http://{}", server.addr);
    let mut ran = 0;
    for example in examples(text) {
        let here = format!("{name}:{}: {}", example.line, example.command);
        if !(example.command.contains("http://localhost:8080")
            || example.command.contains("http://127.0.0.1:8080"))
        {
            continue;
        }
        let streaming = example.command.split_whitespace().any(|w| w == "-N");
        let max_time = if streaming { 2 } else { 10 };
        let command = (example.command)
            .replace("http://localhost:8080", &base)
            .replace("http://127.0.0.1:8080", &base)
            .replacen(
                "curl ",
                &format!("curl -sS --max-time {max_time} -w '\\n%{{http_code}}' "),
                1,
            );
        let out = tokio::process::Command::new("sh")
            .args(["-c", &command])
            .output()
            .await
            .expect("run sh");
        // A stream never ends by itself: curl's timeout (28) is its end.
        assert!(
            out.status.success() || (streaming && out.status.code() == Some(28)),
            "{here}: curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).expect("UTF-8 answer");
        let (answer, code) = stdout.rsplit_once('\n').expect("the status line curl adds");
        let code: u16 = code.parse().expect("status");
        if streaming {
            assert_eq!(code, 200, "{here}: status\n{answer}");
            check_stream(&here, &example.expected, answer);
            ran += 1;
            continue;
        }
        let (status, headers, body) = documented(&example.expected);
        assert_eq!(code, status.unwrap_or(200), "{here}: status\n{answer}");
        let head_end = answer.find("\r\n\r\n").map(|at| at + 4);
        let with_head = example.command.split_whitespace().any(|w| w == "-i");
        let (head, answer_body) = match (with_head, head_end) {
            (true, Some(at)) => (&answer[..at], &answer[at..]),
            _ => ("", answer),
        };
        for h in headers {
            let wanted = format!("\n{h}:");
            assert!(
                head.to_ascii_lowercase().contains(&wanted),
                "{here}: no {h} header in\n{head}"
            );
        }
        let actual: Value = serde_json::from_str(answer_body.trim())
            .unwrap_or_else(|e| panic!("{here}: the answer is not JSON ({e}): {answer_body}"));
        if let Some(body) = body {
            if let Err(e) = same_shape(&body, &actual, "") {
                panic!("{here}: {e}\ndocumented: {body}\nanswered:   {actual}");
            }
        }
        ran += 1;
    }
    println!("{name}: {ran} curl examples ran");
    assert!(ran >= min_run, "{name}: only {ran} curl examples found and run");
    server.stop().await.expect("server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_curl_examples_answer_as_documented() {
    let readme = include_str!("../README.md");
    run_document("README.md", readme, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_curl_examples_answer_as_documented() {
    let protocol = include_str!("../docs/protocol.md");
    run_document("docs/protocol.md", protocol, 12).await;
}

#[test]
fn the_parser_reads_both_styles() {
    let doc = "```sh\ncurl -X POST http://localhost:8080/a \\\n     -d '{}'\n# → {\"a\":1}\n```\n\
               ```\n$ curl -i http://127.0.0.1:8080/b\nHTTP/1.1 426 Upgrade Required\nupgrade: websocket\n\n\
               {\"error\":{\"code\":\"x\"}}\n\n$ curl http://127.0.0.1:8080/c\n{\"b\":2}   (404)\n(other setup)\n{}\n```\n";
    let found = examples(doc);
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[0].command, "curl -X POST http://localhost:8080/a -d '{}'");
    assert_eq!(
        documented(&found[0].expected).2,
        Some(serde_json::json!({"a": 1}))
    );
    let (status, headers, body) = documented(&found[1].expected);
    assert_eq!((status, headers), (Some(426), vec!["upgrade".to_string()]));
    assert!(body.is_some());
    assert_eq!(documented(&found[2].expected).0, Some(404));
    assert!(same_shape(
        &serde_json::json!({"error":{"code":"x"}}),
        &serde_json::json!({"error":{"code":"y"}}),
        ""
    )
    .is_err());
    assert!(same_shape(&serde_json::json!({"seq":1}), &serde_json::json!({"seq":7}), "").is_ok());
}
