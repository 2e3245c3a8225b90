//! TLS for the tests: self-signed certificates, the files and `[tls]` section a server reads
//! them from, and client connections that trust exactly one certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::time::RECV_TIMEOUT;

/// A fresh scratch directory, unique in this process.
pub fn scratch(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tickwire-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A self-signed certificate for `localhost` and 127.0.0.1.
pub struct Certificate {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

pub fn certificate() -> Certificate {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let ck = rcgen::generate_simple_self_signed(names).expect("rcgen");
    Certificate {
        cert_pem: ck.cert.pem(),
        key_pem: ck.key_pair.serialize_pem(),
        der: ck.cert.der().clone(),
    }
}

/// A private CA (only its certificate is handed out) and a server certificate it signed, for
/// `localhost` and 127.0.0.1: what a client trusts through a CA file.
pub struct PrivateCa {
    pub ca_pem: String,
    pub server: Certificate,
}

pub fn private_ca(name: &str) -> PrivateCa {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let ca = params.self_signed(&ca_key).expect("CA certificate");
    let key = rcgen::KeyPair::generate().expect("server key");
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let server = (rcgen::CertificateParams::new(names).expect("server params"))
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    PrivateCa {
        ca_pem: ca.pem(),
        server: Certificate {
            cert_pem: server.pem(),
            key_pem: key.serialize_pem(),
            der: server.der().clone(),
        },
    }
}

impl Certificate {
    /// A TLS acceptor serving this certificate (HTTP/1.1 servers of the tests).
    pub fn acceptor(&self) -> TlsAcceptor {
        let chain = vec![CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    /// Writes `cert.pem` and `key.pem` into `dir` (replacing what is there: a rotation).
    pub fn write(&self, dir: &Path) {
        std::fs::write(dir.join("cert.pem"), &self.cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), &self.key_pem).unwrap();
    }
}

/// A fresh certificate written into a fresh directory; returns (dir, certificate).
pub fn certificate_files(name: &str) -> (PathBuf, Certificate) {
    let (dir, cert) = (scratch(name), certificate());
    cert.write(&dir);
    (dir, cert)
}

/// The `[tls]` section serving the files [`Certificate::write`] put in `dir`, then `extra`.
pub fn tls_toml(dir: &Path, extra: &str) -> String {
    format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    )
}

/// A client configuration that accepts only `trusted` as the server's certificate.
pub fn client_config(trusted: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to `addr` (as `localhost`) that accepts only `trusted` as the server's
/// certificate; the handshake is bounded by `RECV_TIMEOUT`.
pub async fn tls_connect(
    addr: SocketAddr,
    trusted: &CertificateDer<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tls_handshake(tcp, trusted).await
}

/// The client's TLS handshake on an open connection (after a PROXY header, say).
pub async fn tls_handshake(
    tcp: TcpStream,
    trusted: &CertificateDer<'static>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from("localhost").unwrap();
    let connector = TlsConnector::from(client_config(trusted));
    tokio::time::timeout(RECV_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}
