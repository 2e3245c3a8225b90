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
}

impl RedisServer {
    /// A fresh server; with `persist`, every write is fsynced to an AOF that a restart reads.
    pub fn start(persist: bool) -> RedisServer {
        Self::start_with(persist, None)
    }

    /// A fresh server that requires `password` (AUTH) when given.
    pub fn start_with(persist: bool, password: Option<&str>) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("tickwire-redis-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("redis test dir");
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir,
            persist,
            password: password.map(str::to_string),
            tls: None,
        };
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
