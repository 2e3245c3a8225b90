//! rawstorm, the reconnect storm's reference server, stays one the load tool can measure: the
//! `reconnect` scenario against it brings every client back recovered, for every stream.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tickwire_loadtest::opts::parse_ws_url;
use tickwire_loadtest::scenario::reconnect::{self, ReconnectConfig};
use tickwire_loadtest::scenario::topics::TopicsConfig;
use tickwire_loadtest::scenario::Common;

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn reconnect_against_rawstorm_brings_every_client_back() -> anyhow::Result<()> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rawstorm"))
        .arg("127.0.0.1:0")
        .stderr(Stdio::piped())
        .spawn()?;
    let stderr = child.stderr.take().expect("piped");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line)?;
    let addr = (line.trim().strip_prefix("rawstorm listening on "))
        .ok_or_else(|| anyhow::anyhow!("unexpected first line {line:?}"))?;

    let mut load = TopicsConfig::new(Common::new(parse_ws_url(&format!("ws://{addr}/ws"))?));
    load.connections = 30;
    load.topics = 100;
    load.subs_per_conn = 3;
    load.patterns_per_conn = 1;
    load.group = 10;
    load.rate = 200.0;
    load.warmup = Duration::from_millis(300);
    load.duration = Duration::from_millis(300);
    load.drain = Duration::from_millis(200);
    load.topic_prefix = "it.raw.".into();
    let cfg = ReconnectConfig {
        load,
        recover_timeout: Duration::from_secs(20),
    };
    let r = reconnect::run(&cfg)?;
    let s = &r.storm;
    assert_eq!(
        (s.connections, s.recovered, s.reset, s.failed, s.timed_out),
        (30, 30, 0, 0, false),
        "{s:?}"
    );
    // Every stream (exact names and the group pattern's topics) named in `since` and recovered.
    let streams = cfg.load.plan().subscribers_per_topic(30).iter().sum::<u64>();
    assert_eq!((s.topics_recovered, s.topics_reset), (streams, 0));
    // It delivers nothing: every publication is missing, which is why the report shows no gaps
    // for it.
    assert_eq!(r.gaps.received, 0);
    drop(server);
    Ok(())
}
