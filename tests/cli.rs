//! Configuration errors in the real binary: exit code 2, the offending key named, nothing bound.

mod common;

use std::process::Output;
use std::time::Duration;

use common::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tickwire_command();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn tickwire");
    // Bounded: a `serve` that wrongly starts would otherwise run forever.
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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn check_config_accepts_the_defaults() {
    let o = run(&["check-config"], &[]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("configuration is valid"));
}

#[test]
fn check_config_rejects_an_unknown_env_key() {
    let o = run(&["check-config"], &[("TICKWIRE__SERVER__NOPE", "1")]);
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("nope"),
        "stderr must name the key: {}",
        stderr(&o)
    );
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("configuration is valid"),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn check_config_rejects_idle_timeout_shorter_than_ping_interval() {
    let o = run(&["check-config"], &[("TICKWIRE__SERVER__IDLE_TIMEOUT", "1s")]);
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(
        stderr(&o).contains("server.idle_timeout"),
        "stderr must name server.idle_timeout: {}",
        stderr(&o)
    );
    // Consistent with ping_interval: fine.
    let o = run(
        &["check-config"],
        &[
            ("TICKWIRE__SERVER__IDLE_TIMEOUT", "1s"),
            ("TICKWIRE__SERVER__PING_INTERVAL", "500ms"),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
}

#[test]
fn serve_with_invalid_config_exits_2_before_binding() {
    // The configured port is held by us: a server that tried to bind before validating would
    // fail with "cannot bind" and exit 1, not 2.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let free = free_port();
    let admin = format!("127.0.0.1:{free}");
    let o = run(
        &["serve"],
        &[
            ("TICKWIRE__SERVER__LISTEN", &addr),
            ("TICKWIRE__ADMIN__LISTEN", &admin),
            ("TICKWIRE__FEED__ENABLED", "false"),
            ("TICKWIRE__SERVER__IDLE_TIMEOUT", "1s"),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("server.idle_timeout"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("bind"), "{}", stderr(&o));
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("listening"),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    // Control: the same, with a valid config, does try to bind and fails with exit 1.
    let o = run(
        &["serve"],
        &[
            ("TICKWIRE__SERVER__LISTEN", &addr),
            ("TICKWIRE__FEED__ENABLED", "false"),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("cannot bind"), "{}", stderr(&o));
    drop(held);
}

#[test]
fn serve_with_unknown_key_exits_2() {
    let o = run(
        &["serve"],
        &[
            ("TICKWIRE__SERVER__LISTEN", "127.0.0.1:0"),
            ("TICKWIRE__FEED__ENABLED", "false"),
            ("TICKWIRE__SERVER__NOPE", "1"),
        ],
    );
    assert_eq!(o.status.code(), Some(2), "stderr: {}", stderr(&o));
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
}
