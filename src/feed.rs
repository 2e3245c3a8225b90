//! The built-in price feed: simulated quotes on `prices.<SYMBOL>`, so a fresh server has live
//! data to show. It publishes through the node exactly like an HTTP publisher: each tick
//! is one batch (in a cluster, one Redis round trip).
//!
//! Prices follow a geometric random walk (lognormal steps, ~60% annualized volatility compressed
//! into minutes so dashboards visibly move); bid/ask sit around the last trade at a few basis
//! points of spread; volume accumulates.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

use crate::cluster::node::Node;
use crate::metrics::Source;
use crate::settings::FeedSettings;
use crate::topic::Topic;

/// Volatility per square root of second of a step: large enough to see moves every tick.
const SIGMA_PER_SQRT_SEC: f64 = 0.002;
/// Half the bid/ask spread, as a fraction of the price.
const HALF_SPREAD: f64 = 0.0002;

struct Instrument {
    topic: Topic,
    symbol: String,
    last: f64,
    volume: f64,
}

#[derive(Serialize)]
struct Quote<'a> {
    symbol: &'a str,
    bid: f64,
    ask: f64,
    last: f64,
    volume: f64,
    ts: u64,
}

/// A plausible starting price for well-known symbols; a stable made-up one for others.
fn initial_price(symbol: &str) -> f64 {
    match symbol {
        "BTC-USD" => 97_000.0,
        "ETH-USD" => 3_500.0,
        "SOL-USD" => 180.0,
        "XRP-USD" => 2.3,
        "DOGE-USD" => 0.35,
        "AAPL" => 230.0,
        "MSFT" => 430.0,
        "GOOGL" => 175.0,
        "AMZN" => 205.0,
        "NVDA" => 140.0,
        "META" => 580.0,
        "TSLA" => 340.0,
        "NFLX" => 880.0,
        "AMD" => 135.0,
        "INTC" => 24.0,
        "EUR-USD" => 1.05,
        "GBP-USD" => 1.26,
        "USD-JPY" => 154.0,
        "XAU-USD" => 2_650.0,
        "SPX" => 5_950.0,
        other => 10.0 + (other.bytes().map(u64::from).sum::<u64>() % 490) as f64,
    }
}

/// Rounds to 4 significant decimals for cheap symbols and to cents for expensive ones.
fn round_price(p: f64) -> f64 {
    let scale = if p >= 100.0 { 100.0 } else { 10_000.0 };
    (p * scale).round() / scale
}

/// A standard normal sample (Box–Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Publishes quotes for every symbol at `updates_per_second` until the task is aborted.
pub async fn run(node: Arc<Node>, settings: FeedSettings) {
    let mut rng = StdRng::from_os_rng();
    let mut instruments: Vec<Instrument> = (settings.symbols.iter())
        .filter_map(|s| {
            Some(Instrument {
                topic: Topic::parse(&format!("prices.{s}")).ok()?,
                symbol: s.clone(),
                last: initial_price(s),
                volume: 0.0,
            })
        })
        .collect();
    let period = Duration::from_secs_f64(1.0 / settings.updates_per_second);
    let step = SIGMA_PER_SQRT_SEC * period.as_secs_f64().sqrt();
    let mut ticker = tokio::time::interval(period);
    let mut failing = false;
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let ts = crate::protocol::now_ms();
        let mut batch = Vec::with_capacity(instruments.len());
        for inst in &mut instruments {
            inst.last *= (step * normal(&mut rng) - 0.5 * step * step).exp();
            inst.volume += (rng.random::<f64>() * 10.0).round();
            let quote = Quote {
                symbol: &inst.symbol,
                bid: round_price(inst.last * (1.0 - HALF_SPREAD)),
                ask: round_price(inst.last * (1.0 + HALF_SPREAD)),
                last: round_price(inst.last),
                volume: inst.volume,
                ts,
            };
            let json = serde_json::to_string(&quote).expect("a quote always serializes");
            let data = RawValue::from_string(json).expect("serde_json output is valid JSON");
            batch.push((inst.topic.clone(), Arc::from(data)));
        }
        // Quotes are perishable: a tick that cannot be published is skipped, said once per outage.
        match (node.publish(&batch, Source::Feed).await, failing) {
            (Ok(_), true) => {
                info!("price feed publishing again");
                failing = false;
            }
            (Err(e), false) => {
                warn!(error = %e, "price feed cannot publish; skipping ticks until it can");
                failing = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_stays_positive_and_spread_is_ordered() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut p = initial_price("DOGE-USD");
        for _ in 0..100_000 {
            p *= (0.002 * normal(&mut rng) - 0.000002).exp();
            assert!(p > 0.0 && p.is_finite());
        }
        let bid = round_price(p * (1.0 - HALF_SPREAD));
        let ask = round_price(p * (1.0 + HALF_SPREAD));
        assert!(bid <= ask);
    }
}
