//! The Grafana dashboard only queries metrics the server exports.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/tickwire.json");

/// Every string under a key named `key`, at any depth.
fn strings_under(v: &Value, key: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                if k == key {
                    if let Value::String(s) = child {
                        out.push(s.clone());
                    }
                }
                strings_under(child, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|c| strings_under(c, key, out)),
        _ => {}
    }
}

/// Tokens `<prefix>[a-z_]+` that start at a word boundary.
fn metric_tokens(expr: &str, prefix: &str, out: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut from = 0;
    while let Some(pos) = expr[from..].find(prefix) {
        let start = from + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b':')
        };
        let end = start
            + prefix.len()
            + expr[start + prefix.len()..]
                .bytes()
                .take_while(|c| c.is_ascii_lowercase() || *c == b'_')
                .count();
        if boundary && end > start + prefix.len() {
            out.insert(expr[start..end].to_string());
        }
        from = end.max(start + 1);
    }
}

#[test]
fn token_extraction() {
    let mut got = BTreeSet::new();
    metric_tokens(
        "sum(rate(tickwire_a_total{x=\"y\"}[1m])) / process_open_fds + my_tickwire_b + tickwire_",
        "tickwire_",
        &mut got,
    );
    metric_tokens("process_open_fds", "process_", &mut got);
    let want: BTreeSet<String> = ["tickwire_a_total", "process_open_fds"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    // A webhook receiver, so that `tickwire_webhook_requests_total{event,result}` gets a
    // label set.
    let receiver = common::webhook::Receiver::start(&[]).await;
    let server = start(&format!(
        "[[webhooks]]\nurl = \"http://{}/hook\"\nevents = [\"occupied\"]\nsecret = \"dash\"\n",
        receiver.addr
    ))
    .await;
    let addr = server.addr;
    // Exercise every labelled family at least once: HTTP publish, WS subscribe + delivery (and
    // the topic's `occupied` webhook), a scrape (labelled HTTP families only appear once a route
    // has been used).
    let mut ws = connect(addr).await;
    subscribe(&mut ws, 1, &["dash.x"]).await;
    publish(addr, "dash.x", json!(1)).await;
    assert_update(&recv_json(&mut ws).await, "dash.x");
    let webhook = [("event", "occupied"), ("result", "ok")];
    wait_metric(addr, "tickwire_webhook_requests_total", &webhook, "1", |v| {
        v == 1.0
    })
    .await;
    scrape(addr).await;
    let exported = scrape(addr).await.names();

    let text = std::fs::read_to_string(DASHBOARD).expect("read dashboards/tickwire.json");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    let mut exprs = Vec::new();
    strings_under(&dashboard, "expr", &mut exprs);
    assert!(
        exprs.len() >= 20,
        "only {} expr found in the dashboard",
        exprs.len()
    );
    // Template variable queries too (e.g. label_values(tickwire_connections, instance)).
    strings_under(&dashboard["templating"], "query", &mut exprs);
    strings_under(&dashboard["templating"], "definition", &mut exprs);

    let mut used = BTreeSet::new();
    for e in &exprs {
        metric_tokens(e, "tickwire_", &mut used);
        metric_tokens(e, "process_", &mut used);
    }
    assert!(used.len() >= 15, "suspiciously few metric names: {used:?}");
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics that /metrics does not export: {missing:?}\nexported: {exported:?}"
    );
    eprintln!("dashboard uses {} metric names, all exported", used.len());
}

#[test]
fn dashboard_has_a_datasource_variable_used_by_its_panels() {
    let text = std::fs::read_to_string(DASHBOARD).expect("read dashboards/tickwire.json");
    let d: Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let ds = vars
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("a templating variable named `datasource`");
    assert_eq!(ds["type"], "datasource", "{ds}");
    assert_eq!(ds["query"], "prometheus", "{ds}");
    assert!(
        d.get("__inputs").is_none(),
        "no __inputs: the datasource variable replaces them"
    );
    // Every panel with queries points at the variable, not at a fixed data source uid.
    fn panels(v: &Value, out: &mut Vec<Value>) {
        if let Some(list) = v["panels"].as_array() {
            for p in list {
                out.push(p.clone());
                panels(p, out);
            }
        }
    }
    let mut all = Vec::new();
    panels(&d, &mut all);
    let with_targets: Vec<&Value> = all.iter().filter(|p| p["targets"].is_array()).collect();
    assert!(!with_targets.is_empty());
    for p in with_targets {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {:?} does not use the datasource variable",
            p["title"]
        );
    }
}
