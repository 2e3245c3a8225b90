//! Key and certificate rotation without a restart: the JWKS fetched from `auth.jwt.jwks_url`
//! (served here by a local HTTPS identity provider with its own CA), the TLS certificate and
//! the API keys reloaded when their files change, and SIGHUP on the real binary.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

/// Reloads follow file changes within the watch interval (2 s); a loaded machine gets slack.
const ROTATION_WAIT: Duration = Duration::from_secs(15);

/// An HTTP/1.1 client connection (kept alive) over `stream`.
async fn http_client<S>(stream: S) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    sender
}

async fn get_status(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, path: &str) -> u16 {
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    let resp = tokio::time::timeout(RECV_TIMEOUT, sender.send_request(req))
        .await
        .expect("HTTPS request timed out")
        .expect("HTTPS request failed");
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    status
}

// ---------------------------------------------------------------------------------------------
// A local identity provider: its JWKS over HTTPS
// ---------------------------------------------------------------------------------------------

/// What the identity provider answers to every request.
#[derive(Clone)]
enum Answer {
    Jwks(Value),
    Status(u16),
    Garbage,
}

struct Idp {
    url: String,
    /// The PEM certificate of the provider, for `auth.jwt.jwks_ca_file`.
    ca_file: PathBuf,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(answer: Answer) -> Idp {
        let cert = certificate();
        let dir = scratch("idp");
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, &cert.cert_pem).unwrap();
        let acceptor = cert.acceptor();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new(answer));
        let requests = Arc::new(AtomicUsize::new(0));
        let (a, r) = (answer.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, a, r) = (acceptor.clone(), a.clone(), r.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                        r.fetch_add(1, Ordering::SeqCst);
                        let answer = a.lock().unwrap().clone();
                        let (status, body) = match answer {
                            Answer::Jwks(set) => (200, set.to_string()),
                            Answer::Status(status) => (status, "{}".to_string()),
                            Answer::Garbage => (200, "<html>surprise</html>".to_string()),
                        };
                        let resp = Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Idp {
            url,
            ca_file,
            answer,
            requests,
        }
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn toml(&self, refresh: &str) -> String {
        format!(
            "[auth]\nmode = \"jwt\"\n[auth.jwt]\nleeway = \"0s\"\njwks_url = \"{}\"\n\
             jwks_ca_file = \"{}\"\njwks_refresh = \"{refresh}\"\n",
            self.url,
            self.ca_file.display()
        )
    }
}

/// The public half of fixture key `index` of `jwks.json` (0: RSA, 1: EC P-256) under `kid`.
fn jwk(index: usize, kid: &str) -> Value {
    let set: Value = serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let mut key = set["keys"][index].clone();
    key["kid"] = json!(kid);
    key
}

fn jwks(keys: &[Value]) -> Answer {
    Answer::Jwks(json!({ "keys": keys }))
}

/// Key A (RSA, kid "a") and key B (EC, kid "b"): their JWKs and signed tokens.
struct Keys {
    a: Value,
    b: Value,
    token_a: String,
    token_b: String,
}

fn keys() -> Keys {
    let c = claims("carol", &["prices.>"], &[], 300);
    let rs = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap();
    let es = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap();
    Keys {
        a: jwk(0, "a"),
        b: jwk(1, "b"),
        token_a: sign(&c, Algorithm::RS256, &rs, Some("a")),
        token_b: sign(&c, Algorithm::ES256, &es, Some("b")),
    }
}

async fn accepted(addr: SocketAddr, token: &str) -> bool {
    match try_connect(addr, &format!("/ws?token={token}"), &[]).await {
        Ok(mut ws) => {
            assert_usable(&mut ws, 1).await;
            true
        }
        Err(r) => {
            r.assert(401, "unauthorized");
            false
        }
    }
}

fn refreshes(m: &Scrape, result: &str) -> f64 {
    m.get("tickwire_jwks_refresh_total", &[("result", result)])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_new_kid_makes_the_server_fetch_the_rotated_jwks() {
    let k = keys();
    let idp = Idp::start(jwks(std::slice::from_ref(&k.a))).await;
    // No periodic refresh during the test: only start-up and unknown kids fetch.
    let server = start(&idp.toml("1h")).await;
    let addr = server.addr;
    assert!(accepted(addr, &k.token_a).await, "key A, fetched at start-up");
    let m = scrape(addr).await;
    assert_eq!(refreshes(&m, "ok"), 1.0);
    assert_eq!(m.value("tickwire_jwks_keys", &[]), 1.0);
    assert_eq!(idp.requests(), 1);

    // The provider rotates: B is published next to A. The first token signed with B names a
    // kid the server does not know: it fetches the set and accepts the token, first try.
    idp.answer(jwks(&[k.a.clone(), k.b.clone()]));
    assert!(
        accepted(addr, &k.token_b).await,
        "key B, after a kid-triggered fetch"
    );
    assert!(accepted(addr, &k.token_a).await, "key A, still in the set");
    let m = scrape(addr).await;
    assert_eq!(refreshes(&m, "ok"), 2.0);
    assert_eq!(m.value("tickwire_jwks_keys", &[]), 2.0);
    assert_eq!(idp.requests(), 2);

    // Made-up kids are refused without a fetch each: unknown-kid fetches are rate-limited.
    let c = claims("mallory", &[">"], &[], 60);
    let es = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec-private.pem")).unwrap()).unwrap();
    for kid in ["x", "y", "z"] {
        assert!(!accepted(addr, &sign(&c, Algorithm::ES256, &es, Some(kid))).await);
    }
    assert_eq!(idp.requests(), 2, "no fetch per unknown kid");
    assert_eq!(refreshes(&scrape(addr).await, "ok"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_last_good_jwks() {
    let k = keys();
    let idp = Idp::start(jwks(&[k.a.clone(), k.b.clone()])).await;
    let server = start(&idp.toml("1s")).await;
    let addr = server.addr;
    assert!(accepted(addr, &k.token_a).await);
    assert!(accepted(addr, &k.token_b).await);

    // A leaves the set: its tokens are accepted only until the next refresh.
    idp.answer(jwks(std::slice::from_ref(&k.b)));
    eventually("key A refused once it left the set", ROTATION_WAIT, || async {
        !accepted(addr, &k.token_a).await
    })
    .await;
    assert!(accepted(addr, &k.token_b).await);
    let m = scrape(addr).await;
    assert_eq!(m.value("tickwire_jwks_keys", &[]), 1.0);
    assert_eq!(refreshes(&m, "error"), 0.0);

    // The provider fails (500, then a body that is no JWKS): the last good set stays in use,
    // and every failure is counted.
    for answer in [Answer::Status(500), Answer::Garbage] {
        let before = refreshes(&scrape(addr).await, "error");
        idp.answer(answer);
        // Two more errors: at least one whole fetch saw the new answer.
        eventually("refresh errors counted", ROTATION_WAIT, || async {
            refreshes(&scrape(addr).await, "error") >= before + 2.0
        })
        .await;
        assert!(accepted(addr, &k.token_b).await, "the last good set is kept");
        assert!(!accepted(addr, &k.token_a).await);
        assert_eq!(scrape(addr).await.value("tickwire_jwks_keys", &[]), 1.0);
    }
}

#[test]
fn check_config_checks_the_jwks_url_without_fetching_it() {
    let run = |url: &str| {
        tickwire_command()
            .args(["check-config"])
            .env("TICKWIRE__AUTH__MODE", "jwt")
            .env("TICKWIRE__AUTH__JWT__JWKS_URL", url)
            .output()
            .unwrap()
    };
    // Nobody listens there: valid all the same, nothing is fetched.
    let ok = run("https://127.0.0.1:9/jwks.json");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let plain = run("http://127.0.0.1:9/jwks.json");
    assert_eq!(plain.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&plain.stderr).contains("auth.jwt.jwks_url"));
}

// ---------------------------------------------------------------------------------------------
// Reloading files: TLS certificate, API keys
// ---------------------------------------------------------------------------------------------

fn reloads(m: &Scrape, result: &str) -> f64 {
    m.get("tickwire_config_reload_total", &[("result", result)])
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_reaches_new_handshakes_and_spares_open_connections() {
    let (dir, first) = certificate_files("rotate-tls");
    let second = certificate();
    let (der1, der2) = (&first.der, &second.der);
    let (server, admin) = start_with_admin(&tls_toml(&dir, "")).await;
    let addr = server.addr;
    let mut open = http_client(tls_connect(addr, der1).await.expect("certificate 1")).await;
    assert_eq!(get_status(&mut open, "/api/v1/topics").await, 200);

    second.write(&dir);
    eventually("new handshakes get certificate 2", ROTATION_WAIT, || async {
        tls_connect(addr, der2).await.is_ok()
    })
    .await;
    assert!(
        tls_connect(addr, der1).await.is_err(),
        "certificate 1 is no longer served"
    );
    assert_eq!(
        get_status(&mut open, "/api/v1/topics").await,
        200,
        "a connection opened before the rotation is untouched"
    );
    assert!(reloads(&scrape(admin).await, "ok") >= 1.0);

    // A broken key file: logged and counted, and certificate 2 stays.
    let errors = reloads(&scrape(admin).await, "error");
    std::fs::write(dir.join("key.pem"), "-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
    eventually("the bad key is counted", ROTATION_WAIT, || async {
        reloads(&scrape(admin).await, "error") > errors
    })
    .await;
    let mut new = http_client(tls_connect(addr, der2).await.expect("certificate 2 kept")).await;
    assert_eq!(get_status(&mut new, "/api/v1/topics").await, 200);
}

/// A config file with the feed off, `listen` and one API key per digest.
fn config_with_keys(listen: &str, digests: &[&str]) -> String {
    let mut toml = format!("[server]\nlisten = \"{listen}\"\n[feed]\nenabled = false\n");
    for (i, d) in digests.iter().enumerate() {
        toml.push_str(&format!(
            "[[auth.api_keys]]\nname = \"k{i}\"\nsha256 = \"{d}\"\npublish = [\">\"]\n"
        ));
    }
    toml
}

async fn publish_with(addr: SocketAddr, key: &str) -> u16 {
    let auth = format!("Bearer {key}");
    let body = json!({"topic": "prices.X", "data": 1}).to_string();
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    http_request(addr, "POST", "/api/v1/publish", &headers, Some(body.as_bytes()))
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_follow_the_config_file_and_a_bad_file_keeps_them() {
    let (one, two) = (
        tickwire::apikey::generate().unwrap(),
        tickwire::apikey::generate().unwrap(),
    );
    let dir = scratch("rotate-keys");
    let file = dir.join("tickwire.toml");
    std::fs::write(&file, config_with_keys("127.0.0.1:0", &[&one.sha256])).unwrap();
    let settings = tickwire::settings::Settings::load(Some(&file)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tickwire::server::run(listener, settings, async {
        let _ = stopped.await;
    }));
    assert_eq!(publish_with(addr, &one.key).await, 200);
    assert_eq!(publish_with(addr, &two.key).await, 401);

    std::fs::write(&file, config_with_keys("127.0.0.1:0", &[&two.sha256])).unwrap();
    eventually("the new key is accepted", ROTATION_WAIT, || async {
        publish_with(addr, &two.key).await == 200
    })
    .await;
    assert_eq!(
        publish_with(addr, &one.key).await,
        401,
        "the removed key is refused"
    );

    // Not a digest: the file is refused whole and the keys in use stay.
    std::fs::write(&file, config_with_keys("127.0.0.1:0", &["not-a-digest"])).unwrap();
    eventually("the bad file is counted", ROTATION_WAIT, || async {
        reloads(&scrape(addr).await, "error") >= 1.0
    })
    .await;
    assert_eq!(publish_with(addr, &two.key).await, 200);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_api_keys_of_the_binary() {
    let (one, two) = (
        tickwire::apikey::generate().unwrap(),
        tickwire::apikey::generate().unwrap(),
    );
    let dir = scratch("sighup");
    let file = dir.join("tickwire.toml");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(&file, config_with_keys(&addr.to_string(), &[&one.sha256])).unwrap();
    let log = dir.join("log");
    let mut child = tickwire_command()
        .args(["serve", "--config"])
        .arg(&file)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("err")).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    eventually("the server answers", ROTATION_WAIT, || async {
        TcpStream::connect(addr).await.is_ok() && publish_with(addr, &one.key).await == 200
    })
    .await;
    assert_eq!(publish_with(addr, &two.key).await, 401);

    // The new file has the old one's size and modification time: the file watch cannot see
    // the change, only SIGHUP can.
    let old = std::fs::metadata(&file).unwrap();
    let next = dir.join("next.toml");
    std::fs::write(&next, config_with_keys(&addr.to_string(), &[&two.sha256])).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&next)
        .unwrap()
        .set_modified(old.modified().unwrap())
        .unwrap();
    std::fs::rename(&next, &file).unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().len(), old.len());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        publish_with(addr, &two.key).await,
        401,
        "no reload without SIGHUP"
    );

    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually("SIGHUP reloads the keys", ROTATION_WAIT, || async {
        publish_with(addr, &two.key).await == 200
    })
    .await;
    assert_eq!(publish_with(addr, &one.key).await, 401);
    assert_eq!(child.try_wait().unwrap(), None, "SIGHUP does not stop the server");
    let m = scrape(addr).await;
    assert_eq!(reloads(&m, "ok"), 1.0);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_jwks_file_is_read_again() {
    let k = keys();
    let dir = scratch("rotate-jwks-file");
    let file = dir.join("jwks.json");
    let write = |keys: &[Value]| std::fs::write(&file, json!({ "keys": keys }).to_string()).unwrap();
    write(std::slice::from_ref(&k.a));
    let server = start(&format!(
        "[auth]\nmode = \"jwt\"\n[auth.jwt]\njwks_file = \"{}\"\n",
        file.display()
    ))
    .await;
    let addr = server.addr;
    assert!(accepted(addr, &k.token_a).await);
    assert!(!accepted(addr, &k.token_b).await);

    write(std::slice::from_ref(&k.b));
    eventually("key B accepted from the new file", ROTATION_WAIT, || async {
        accepted(addr, &k.token_b).await
    })
    .await;
    assert!(!accepted(addr, &k.token_a).await, "key A left the file");

    // Not a JWKS: the set in use stays.
    std::fs::write(&file, "{\"keys\": 7}").unwrap();
    eventually("the bad file is counted", ROTATION_WAIT, || async {
        reloads(&scrape(addr).await, "error") >= 1.0
    })
    .await;
    assert!(accepted(addr, &k.token_b).await);
}
