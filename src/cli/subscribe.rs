//! `tickwire subscribe`: prints every update and snapshot as a JSON line, or a live price table
//! (`--table`), until Ctrl-C. `--max-rate` and `--delta` are the subscription's options; deltas
//! are applied by the client, so the output always shows full data. `--sse` takes the same
//! subscription over `GET /sse` (`cli::sse`), with the same output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;

use tickwire_client::{
    Client, ClientOptions, Error, Event, Events, SubscribeOptions, SubscriptionState, TokenProvider, Update,
};
use tickwire_proto::close::TOKEN_EXPIRED;

use super::sse::Stream;
use super::target::Target;
use super::{print_json, runtime, Failure, Interrupt, SubscribeArgs};

/// Where the events come from: the WebSocket client, or the SSE stream (`--sse`).
enum Source {
    Ws(Client, Events),
    Sse(tokio::sync::mpsc::UnboundedReceiver<Event>),
}

impl Source {
    async fn recv(&mut self) -> Option<Event> {
        match self {
            Source::Ws(_, events) => events.recv().await,
            Source::Sse(events) => events.recv().await,
        }
    }

    async fn close(self) {
        if let Source::Ws(client, _) = self {
            client.close().await;
        }
    }
}

pub(crate) async fn run(args: SubscribeArgs) -> Result<(), Failure> {
    let target = Target::resolve(args.server.url.as_deref(), args.server.config.as_deref())?;
    let mut interrupt = Interrupt::new()?;
    let (url, kind) = match args.sse {
        true => (target.sse(), "SSE"),
        false => (target.ws.clone(), "WebSocket"),
    };
    let mut events = tokio::select! {
        started = start(&args, &target, &url) => started?,
        () = interrupt.wait() => return Ok(()),
    };
    let mut out = Output {
        table: args.table.then(Table::default),
        stdout: std::io::stdout(),
        last_close: None,
        refused: None,
        url: &url,
        kind,
        reconnects: !args.no_reconnect,
    };
    let mut redraw = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = interrupt.wait() => break,
            _ = redraw.tick(), if out.table.is_some() => {
                if let Some(table) = out.table.as_mut() {
                    if table.draw(&mut out.stdout).is_err() {
                        break;
                    }
                }
            }
            event = events.recv() => {
                let Some(event) = event else {
                    return Err(Failure::Runtime(out.ended(&target, args.token.is_some())));
                };
                if out.show(event).is_err() {
                    break; // stdout is gone (e.g. `| head`): nothing left to do
                }
            }
        }
    }
    events.close().await;
    Ok(())
}

/// Connects and subscribes; the events are taken before the subscribe so none is missed.
async fn start(args: &SubscribeArgs, target: &Target, url: &str) -> Result<Source, Failure> {
    if args.sse {
        let stream = Stream {
            url: Stream::url(&target.http, &args.topics, args.max_rate, args.delta),
            token: args.token.clone(),
            reconnect: !args.no_reconnect,
            delta: args.delta,
        };
        return match stream.start().await {
            Ok(events) => Ok(Source::Sse(events)),
            // Refused before anything streamed: the subscription, as over WebSocket.
            Err(Error::Http {
                status,
                code,
                message,
            }) if status != 404 && status != 405 && !code.starts_with("http_") => Err(runtime(format!(
                "subscribe failed: server error {code}: {message}"
            ))),
            Err(e) => Err(Failure::Runtime(target.connect_failure_to(
                url,
                "SSE",
                &e,
                args.token.is_some(),
            ))),
        };
    }
    let mut options = ClientOptions::default();
    if args.no_reconnect {
        options = options.no_reconnect();
    }
    if let Some(token) = args.token.clone() {
        options = options.token_provider(TokenProvider::fixed(token));
    }
    let client = Client::connect(target.ws.as_str(), options)
        .await
        .map_err(|e| Failure::Runtime(target.connect_failure(&e, args.token.is_some())))?;
    let events = client.events().expect("a new client's events are not taken yet");
    let subscribe = SubscribeOptions {
        max_rate: args.max_rate,
        delta: args.delta,
        ..SubscribeOptions::default()
    };
    match client.subscribe_with(args.topics.clone(), subscribe).await {
        Ok(_) => {}
        // Refused for now (a cluster node without Redis): the client retries it and the
        // events below report how that goes.
        Err(e) if matches!(e.code(), Some("unavailable" | "rate_limited")) => {}
        Err(e) => return Err(runtime(format!("subscribe failed: {e}"))),
    }
    Ok(Source::Ws(client, events))
}

/// Where the events go: data to stdout (JSON lines or the table), the connection's story to
/// stderr.
struct Output<'a> {
    table: Option<Table>,
    stdout: std::io::Stdout,
    /// The last close, reported when the events end.
    last_close: Option<(u16, String)>,
    /// A reconnect refused for its credentials: the client stops, and this is why.
    refused: Option<Error>,
    url: &'a str,
    /// `WebSocket` or `SSE`, for the messages.
    kind: &'static str,
    reconnects: bool,
}

impl Output<'_> {
    /// Why the client stopped, once its events have ended.
    fn ended(&mut self, target: &Target, token_given: bool) -> String {
        if let Some(e) = self.refused.take() {
            return target.connect_failure_to(self.url, self.kind, &e, token_given);
        }
        match self.last_close.take() {
            Some((TOKEN_EXPIRED, reason)) => {
                format!("connection closed: {TOKEN_EXPIRED} {reason}; pass a fresh token with --token")
            }
            Some((code, reason)) => format!("connection closed: {code} {reason}"),
            None => "connection closed: 1006".into(),
        }
    }

    /// Shows one event; an error means stdout is gone.
    fn show(&mut self, event: Event) -> std::io::Result<()> {
        match event {
            Event::Update(update) | Event::Snapshot(update) => match self.table.as_mut() {
                Some(table) => {
                    table.apply(&update);
                    Ok(())
                }
                None => print_json(&mut self.stdout, &update),
            },
            Event::Reset { topic } => match self.table.as_mut() {
                Some(table) => {
                    table.reset(&topic);
                    Ok(())
                }
                None => print_json(
                    &mut self.stdout,
                    &serde_json::json!({"type": "reset", "topic": topic}),
                ),
            },
            Event::Open => {
                self.refused = None;
                if self.last_close.is_some() {
                    eprintln!("tickwire: reconnected to {}", self.url);
                }
                Ok(())
            }
            Event::Close { code, reason } => {
                // An expired token is not reconnected with: the events end next.
                if self.reconnects && code != TOKEN_EXPIRED {
                    eprintln!("tickwire: connection closed ({code} {reason}), reconnecting");
                }
                self.last_close = Some((code, reason));
                Ok(())
            }
            // Final: reported once, when the events end.
            Event::Error(e @ Error::Unauthorized { .. }) => {
                self.refused = Some(e);
                Ok(())
            }
            Event::Error(e) => {
                eprintln!("tickwire: {e}");
                Ok(())
            }
            Event::Subscription { topics, state } => {
                subscription(&topics.join(" "), state);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

fn subscription(topics: &str, state: SubscriptionState) {
    match state {
        SubscriptionState::Retrying { error, delay, .. } => {
            eprintln!("tickwire: subscribe {topics} refused ({error}), retrying in {delay:.1?}");
        }
        SubscriptionState::Subscribed => eprintln!("tickwire: subscribed {topics}"),
        SubscriptionState::Failed { error } => {
            eprintln!("tickwire: subscribe {topics} failed: {error}");
        }
        _ => {}
    }
}

/// The live price table of `subscribe --table`.
#[derive(Default)]
struct Table {
    rows: BTreeMap<String, Quote>,
    dirty: bool,
}

#[derive(Default)]
struct Quote {
    bid: Option<f64>,
    ask: Option<f64>,
    last: Option<f64>,
    /// The first `last` seen, for the change column.
    first: Option<f64>,
}

/// A price with cents for expensive instruments and 4 decimals for cheap ones (like the feed).
fn price(p: Option<f64>) -> String {
    match p {
        Some(p) => format!("{p:.*}", decimals(p)),
        None => "-".into(),
    }
}

fn decimals(p: f64) -> usize {
    if p.abs() >= 100.0 {
        2
    } else {
        4
    }
}

impl Table {
    fn apply(&mut self, update: &Update) {
        let Ok(value) = update.decode::<serde_json::Value>() else {
            return;
        };
        let fallback = update.topic.strip_prefix("prices.").unwrap_or(&update.topic);
        let symbol = value["symbol"].as_str().unwrap_or(fallback).to_string();
        let row = self.rows.entry(symbol).or_default();
        row.bid = value["bid"].as_f64().or(row.bid);
        row.ask = value["ask"].as_f64().or(row.ask);
        row.last = value["last"].as_f64().or(row.last);
        if row.first.is_none() {
            row.first = row.last;
        }
        self.dirty = true;
    }

    fn reset(&mut self, topic: &str) {
        let symbol = topic.strip_prefix("prices.").unwrap_or(topic);
        if let Some(row) = self.rows.get_mut(symbol) {
            row.first = None;
        }
    }

    fn draw(&mut self, out: &mut std::io::Stdout) -> std::io::Result<()> {
        if !std::mem::take(&mut self.dirty) {
            return Ok(());
        }
        // Home the cursor and clear the screen, then print the whole table.
        let mut screen = String::from("\x1b[H\x1b[2J");
        let _ = writeln!(
            screen,
            "{:<12} {:>14} {:>14} {:>14} {:>24}",
            "SYMBOL", "BID", "ASK", "LAST", "CHANGE"
        );
        for (symbol, q) in &self.rows {
            let change = match (q.last, q.first) {
                (Some(last), Some(first)) if first != 0.0 => {
                    let delta = last - first;
                    let sign = if delta >= 0.0 { "+" } else { "" };
                    let percent = delta / first * 100.0;
                    format!("{sign}{delta:.*} ({percent:+.2}%)", decimals(last))
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                screen,
                "{symbol:<12} {:>14} {:>14} {:>14} {change:>24}",
                price(q.bid),
                price(q.ask),
                price(q.last)
            );
        }
        let mut out = out.lock();
        out.write_all(screen.as_bytes())?;
        out.flush()
    }
}
