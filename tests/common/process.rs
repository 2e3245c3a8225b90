//! Processes: the real `tickwire` binary (clean environment, `serve` as a child killed on drop),
//! free ports for it, and this test process's resident memory for the memory tests.
//!
//! Part of the shared harness; not every test binary uses every helper.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A mebibyte, for the memory tests' bounds and messages.
pub const MIB: f64 = 1024.0 * 1024.0;

/// Resident set size of this process in bytes (Linux).
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// The `tickwire` binary with a clean environment: no inherited `TICKWIRE__*` variables and
/// a scratch working directory (so no `config/default.toml` is picked up).
pub fn tickwire_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TICKWIRE__") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd.current_dir(std::env::temp_dir());
    cmd
}

/// Runs `tickwire args` with `env` on top of a clean environment ([`tickwire_command`]) and
/// collects its output. Bounded: a `serve` that wrongly starts fails the test after 10 s.
#[allow(dead_code)]
pub fn run_tickwire(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    use std::process::Stdio;
    let mut cmd = tickwire_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = (cmd.stdin(Stdio::null()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tickwire");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("try_wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "tickwire {args:?} still running after 10 s; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("collect output")
}

/// A `tickwire serve` child process; killed on drop if still running.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub log: std::path::PathBuf,
}

impl ServerProcess {
    /// Starts `tickwire serve` on 127.0.0.1:<free port> with the feed off and `env` on top,
    /// and waits until `/healthz` answers (on `TICKWIRE__ADMIN__LISTEN` when `env` sets it).
    pub async fn start(env: &[(&str, &str)]) -> ServerProcess {
        ServerProcess::start_with_args(&[], env).await
    }

    /// [`start`](ServerProcess::start) with more arguments after `serve` (`--config FILE`).
    pub async fn start_with_args(args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::env::temp_dir().join(format!("tickwire-test-{}-{port}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).expect("create log file");
        let mut cmd = tickwire_command();
        cmd.arg("serve")
            .args(args)
            .env("TICKWIRE__SERVER__LISTEN", addr.to_string())
            .env("TICKWIRE__FEED__ENABLED", "false")
            .stdin(std::process::Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn tickwire");
        // With an admin listener, /healthz lives there.
        let probe: SocketAddr = env
            .iter()
            .find(|(k, _)| *k == "TICKWIRE__ADMIN__LISTEN")
            .map_or(addr, |(_, v)| v.parse().expect("TICKWIRE__ADMIN__LISTEN"));
        let mut proc = ServerProcess { child, addr, log };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("tickwire exited at start-up with {status}: {}", proc.logs());
            }
            if let Ok(Ok(mut s)) =
                tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(probe)).await
            {
                let ok = async {
                    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .await
                        .ok()?;
                    let mut buf = Vec::new();
                    s.read_to_end(&mut buf).await.ok()?;
                    Some(buf.starts_with(b"HTTP/1.1 200"))
                };
                if tokio::time::timeout(Duration::from_secs(1), ok).await == Ok(Some(true)) {
                    return proc;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "tickwire did not answer /healthz on {probe} within 10 s: {}",
                proc.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM to this child (by pid).
    pub fn sigterm(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits (polling) up to `wait` for the process to exit.
    pub async fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The process's output so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
