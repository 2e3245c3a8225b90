//! `tickwire publish`: one message from the arguments, or NDJSON from stdin in batches, over
//! the HTTP API with an `Idempotency-Key` per request.

use std::io::IsTerminal as _;

use tickwire_client::{Error, HttpPublisher, Outgoing, RawValue, TokenProvider};
use tokio::io::AsyncBufReadExt;

use super::target::Target;
use super::{print_json, runtime, Failure, PublishArgs};

pub(crate) async fn run(args: PublishArgs) -> Result<(), Failure> {
    let target = Target::resolve(args.server.url.as_deref(), args.server.config.as_deref())?;
    let mut http = HttpPublisher::new(&target.http)
        .map_err(|e| Failure::Usage(e.to_string()))?
        .attempts(args.attempts);
    let key_given = args.api_key.is_some();
    if let Some(key) = args.api_key {
        http = http.token_provider(TokenProvider::fixed(key));
    }
    let failed = |e: Error| target.publish_failure(&e, key_given);
    let mut stdout = std::io::stdout();
    if let (Some(topic), Some(data)) = (args.topic, args.data) {
        let data = RawValue::from_string(data)
            .map_err(|e| Failure::Usage(format!("DATA is not valid JSON: {e}")))?;
        let published = (http.publish(&topic, &*data).await).map_err(|e| Failure::Runtime(failed(e)))?;
        print_json(&mut stdout, &published).map_err(runtime)?;
        return Ok(());
    }
    if std::io::stdin().is_terminal() {
        // Otherwise a user who forgot TOPIC and DATA sees a command that seems to hang.
        eprintln!(
            "tickwire: reading NDJSON from stdin, one {{\"topic\":..,\"data\":..}} per line; \
             end with Ctrl-D (or pass TOPIC DATA)"
        );
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let batch_size = args.batch_size as usize;
    let mut batch: Vec<Outgoing> = Vec::with_capacity(batch_size);
    let (mut line_no, mut first_line, mut sent, mut requests) = (0usize, 1usize, 0usize, 0usize);
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| runtime(format!("reading stdin: {e}")))?;
        let done = line.is_none();
        if let Some(line) = line {
            line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            let message: Outgoing = serde_json::from_str(&line).map_err(|e| {
                Failure::Usage(format!(
                    "stdin line {line_no}: expected {{\"topic\":..,\"data\":..}}: {e} ({} published before)",
                    count(sent, "message")
                ))
            })?;
            if batch.is_empty() {
                first_line = line_no;
            }
            batch.push(message);
        }
        if batch.len() >= batch_size || (done && !batch.is_empty()) {
            let results = http.publish_batch(&batch).await.map_err(|e| {
                runtime(format!(
                    "batch of stdin lines {first_line}-{line_no} rejected: {} ({} published before)",
                    failed(e),
                    count(sent, "message")
                ))
            })?;
            for published in &results {
                print_json(&mut stdout, published).map_err(runtime)?;
            }
            sent += results.len();
            requests += 1;
            batch.clear();
        }
        if done {
            break;
        }
    }
    eprintln!(
        "tickwire: published {} in {}",
        count(sent, "message"),
        count(requests, "request")
    );
    Ok(())
}

/// `n` and `noun`, plural unless `n` is 1: "1 message", "0 messages".
fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}
