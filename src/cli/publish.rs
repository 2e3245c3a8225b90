//! `tickwire publish`: one message from the arguments, or NDJSON from stdin in batches, over
//! the HTTP API with an `Idempotency-Key` per request.

use tickwire_client::{HttpPublisher, Outgoing, RawValue, TokenProvider};
use tokio::io::AsyncBufReadExt;

use super::{print_json, runtime, Failure, PublishArgs};

pub(crate) async fn run(args: PublishArgs) -> Result<(), Failure> {
    let mut http = HttpPublisher::new(&args.url)
        .map_err(|e| Failure::Usage(e.to_string()))?
        .attempts(args.attempts);
    if let Some(token) = args.token {
        http = http.token_provider(TokenProvider::fixed(token));
    }
    let mut stdout = std::io::stdout();
    if let (Some(topic), Some(data)) = (args.topic, args.data) {
        let data = RawValue::from_string(data)
            .map_err(|e| Failure::Usage(format!("DATA is not valid JSON: {e}")))?;
        let published = http.publish(&topic, &*data).await.map_err(runtime)?;
        print_json(&mut stdout, &published).map_err(runtime)?;
        return Ok(());
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
                    "stdin line {line_no}: expected {{\"topic\":..,\"data\":..}}: {e} ({sent} messages published before)"
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
                    "batch of stdin lines {first_line}-{line_no} rejected: {e} ({sent} messages published before)"
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
    eprintln!("tickwire: published {sent} messages in {requests} requests");
    Ok(())
}
