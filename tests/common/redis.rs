//! A real `redis-server` process for the cluster tests: started on a free loopback port with
//! no persistence unless asked, stopped (killed) on drop. Never a mock, never the machine's own
//! Redis: a missing `redis-server` binary fails the test (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::free_port;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// Where an append-only file lives when the server persists (so a restart keeps data).
    dir: PathBuf,
    persist: bool,
    /// `requirepass`, when set.
    password: Option<String>,
    /// Serves TLS only (no plain port), with this PEM certificate and key.
    tls: Option<(PathBuf, PathBuf)>,
    /// More command-line arguments (e.g. `--replicaof`).
    extra: Vec<String>,
}

impl RedisServer {
    /// A fresh server; with `persist`, every write is fsynced to an AOF that a restart reads.
    pub fn start(persist: bool) -> RedisServer {
        Self::start_with(persist, None)
    }

    /// A fresh server that requires `password` (AUTH) when given.
    pub fn start_with(persist: bool, password: Option<&str>) -> RedisServer {
        Self::launch(persist, password, &[])
    }

    fn launch(persist: bool, password: Option<&str>, extra: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("tickwire-redis-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("redis test dir");
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir,
            persist,
            password: password.map(str::to_string),
            tls: None,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        server.restart();
        server
    }

    /// A fresh server run with `extra` arguments from its first start.
    pub fn start_args(extra: &[&str]) -> RedisServer {
        Self::launch(false, None, extra)
    }

    /// A fresh server replicating `primary`.
    pub fn start_replica_of(primary: &RedisServer) -> RedisServer {
        let mut server = RedisServer::start(false);
        server.extra = ["--replicaof", "127.0.0.1", &primary.port.to_string()]
            .map(str::to_string)
            .to_vec();
        server.restart();
        server
    }

    /// A fresh server speaking only TLS, with a self-signed certificate for 127.0.0.1 and
    /// localhost; returns it and the certificate's PEM path (the CA a client must trust).
    pub fn start_tls() -> (RedisServer, PathBuf) {
        let mut server = RedisServer::start(false);
        server.kill();
        let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let ck = rcgen::generate_simple_self_signed(names).expect("rcgen certificate");
        let (cert, key) = (server.dir.join("cert.pem"), server.dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        server.tls = Some((cert.clone(), key));
        server.restart();
        (server, cert)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `[broker]` settings for a node of a cluster on this server.
    pub fn broker_toml(&self, prefix: &str) -> String {
        format!(
            "[broker]\nkind = \"redis\"\nredis_url = \"{}\"\nprefix = \"{prefix}\"\nreconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n",
            self.url()
        )
    }

    /// Kills the process (SIGKILL: nothing flushed beyond what the AOF already has).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("redis-server is running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{signal} redis-server");
    }

    /// Starts the process again on the same port, waiting until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let (aof, fsync) = if self.persist {
            ("yes", "always")
        } else {
            ("no", "no")
        };
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", aof, "--appendfsync", fsync])
            .arg("--dir")
            .arg(&self.dir)
            .args(self.password.iter().flat_map(|p| ["--requirepass", p.as_str()]))
            .args(self.tls_args())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server; .ci/run does it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }

    /// Later `--port 0` wins over the plain port given before: TLS only.
    fn tls_args(&self) -> Vec<String> {
        let Some((cert, key)) = &self.tls else {
            return Vec::new();
        };
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let port = self.port.to_string();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
        ];
        (args.into_iter().map(str::to_string))
            .chain(["--tls-auth-clients".to_string(), "no".to_string()])
            .collect()
    }

    /// Runs one command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(
                self.password
                    .iter()
                    .flat_map(|p| ["--no-auth-warning", "-a", p.as_str()]),
            )
            .args(self.tls.iter().flat_map(|(cert, _)| {
                [
                    "--tls".to_string(),
                    "--cacert".to_string(),
                    cert.display().to_string(),
                ]
            }))
            .args(args)
            .output()
            .expect("redis-cli must be installed with redis-server");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Redis Sentinel on loopback: a primary, one replica and three sentinels (quorum 2) that
/// monitor it as `master_name`, with a 1 s down-after so that a test's failover takes seconds.
pub struct SentinelSet {
    pub master_name: &'static str,
    pub primary: RedisServer,
    pub replica: RedisServer,
    /// Sentinel processes and their ports.
    sentinels: Vec<(Child, u16)>,
    dir: PathBuf,
}

impl SentinelSet {
    /// Starts everything and waits until every sentinel sees the replica and the other two
    /// sentinels (what a failover needs).
    pub fn start() -> SentinelSet {
        let master_name = "tw";
        let primary = RedisServer::start(false);
        let replica = RedisServer::start_replica_of(&primary);
        let dir = std::env::temp_dir().join(format!(
            "tickwire-sentinel-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("sentinel test dir");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            let text = format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor {master_name} 127.0.0.1 {} 2\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 sentinel failover-timeout {master_name} 5000\nsentinel parallel-syncs {master_name} 1\n",
                dir.display(),
                primary.port
            );
            std::fs::write(&conf, text).expect("sentinel config");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server must be installed (it runs the sentinels too)");
            sentinels.push((child, port));
        }
        let set = SentinelSet {
            master_name,
            primary,
            replica,
            sentinels,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = set.sentinel_ports().iter().all(|&port| {
                let master = sentinel_cli(port, &["SENTINEL", "MASTER", master_name]);
                field(&master, "num-slaves") == Some("1")
                    && field(&master, "num-other-sentinels") == Some("2")
            });
            if ready {
                return set;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinels did not discover each other and the replica within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|(_, port)| *port).collect()
    }

    /// `[broker]` settings for a node finding the primary through these sentinels.
    pub fn broker_toml(&self, prefix: &str) -> String {
        let urls: Vec<String> = (self.sentinel_ports().iter())
            .map(|p| format!("\"redis://127.0.0.1:{p}\""))
            .collect();
        format!(
            "{}sentinel = {{ master_name = \"{}\", urls = [{}] }}\n",
            self.primary.broker_toml(prefix),
            self.master_name,
            urls.join(", ")
        )
    }

    /// The primary's port as the first sentinel names it.
    pub fn primary_port(&self) -> Option<u16> {
        let out = sentinel_cli(
            self.sentinels[0].1,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name],
        );
        out.lines().nth(1).and_then(|p| p.trim().parse().ok())
    }
}

/// `redis-cli` against a sentinel.
fn sentinel_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed with redis-server");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value after `name` in redis-cli's one-item-per-line output of a flat map.
fn field<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let mut lines = out.lines();
    while let Some(line) = lines.next() {
        if line.trim() == name {
            return lines.next().map(str::trim);
        }
    }
    None
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster on loopback: three primaries and one replica each (`redis-cli --cluster
/// create … --cluster-replicas 1`), a 1 s node timeout so that a test's failover takes seconds.
/// Every process is killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes, joins them and waits until every node says `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
        ];
        let nodes: Vec<RedisServer> = (0..6).map(|_| RedisServer::start_args(&args)).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed with redis-server");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(cluster.nodes.iter()).all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")) {
            assert!(
                Instant::now() < deadline,
                "the cluster did not reach cluster_state:ok within 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// `[broker]` settings for a tickwire node on this cluster, seeded with every node.
    pub fn broker_toml(&self, prefix: &str) -> String {
        let urls: Vec<String> = (self.nodes.iter()).map(|n| format!("\"{}\"", n.url())).collect();
        format!(
            "[broker]\nkind = \"redis-cluster\"\nredis_cluster_urls = [{}]\nprefix = \"{prefix}\"\n\
             reconnect_min = \"20ms\"\nreconnect_max = \"200ms\"\n",
            urls.join(", ")
        )
    }

    /// The primary serving `key`'s slot now: the live node whose own `CLUSTER NODES` line
    /// lists a slot range holding it.
    pub fn primary_of(&self, key: &str) -> &RedisServer {
        let slot: u16 = (self
            .live()
            .next()
            .expect("a live node")
            .cli(&["CLUSTER", "KEYSLOT", key]))
        .trim()
        .parse()
        .expect("CLUSTER KEYSLOT answers a number");
        self.live()
            .find(|n| {
                let nodes = n.cli(&["CLUSTER", "NODES"]);
                let Some(me) = nodes.lines().find(|l| l.contains("myself")) else {
                    return false;
                };
                me.contains("master")
                    && me.split_whitespace().skip(8).any(|range| {
                        let mut ends = range.split('-').map(|p| p.parse::<u16>().ok());
                        match (ends.next().flatten(), ends.next()) {
                            (Some(a), Some(Some(b))) => (a..=b).contains(&slot),
                            (Some(a), None) => a == slot,
                            _ => false,
                        }
                    })
            })
            .expect("a primary serves the slot")
    }

    /// The replica of `primary`.
    pub fn replica_of(&self, primary: &RedisServer) -> &RedisServer {
        let port = format!("{}", primary.port);
        self.live()
            .find(|n| {
                let role = n.cli(&["ROLE"]);
                let mut lines = role.lines();
                lines.next() == Some("slave") && lines.nth(1) == Some(port.as_str())
            })
            .expect("the primary has a replica")
    }

    /// Waits until the replica on `replica_port` has everything its primary on `primary_port`
    /// wrote (equal replication offsets: a replica answers reads of its slots only after
    /// READONLY).
    pub fn wait_replicated(&self, primary_port: u16, replica_port: u16) {
        let offset = |port: u16| {
            let node = self
                .nodes
                .iter()
                .find(|n| n.port == port)
                .expect("a node on that port");
            let info = node.cli(&["INFO", "replication"]);
            (info.lines())
                .find_map(|l| l.strip_prefix("master_repl_offset:"))
                .map(|o| o.trim().to_string())
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while offset(replica_port) != offset(primary_port) {
            assert!(
                Instant::now() < deadline,
                "the replica did not catch up within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node on that port")
    }

    /// Nodes whose process runs.
    pub fn live(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }
}
