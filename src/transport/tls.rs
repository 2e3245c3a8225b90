//! TLS for the main listener (wss:// and https:// on one port), with rustls and the ring
//! provider.
//!
//! The certificate and key are loaded at start-up, where a bad file stops the server with the
//! key named. A reload (`reload.rs`: SIGHUP or a changed file) reads them again and swaps the
//! pair in the acceptor's resolver: new handshakes get the new certificate, established
//! connections keep theirs, and a bad new pair leaves the old one in place. The handshake
//! itself runs in each connection's task (see `listener.rs`), never in the accept loop, so a
//! client that stalls mid-handshake delays nobody else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::settings::SettingsError;
use crate::settings::TlsSettings;
use crate::swap::Swap;

/// The TLS side of the main listener.
pub struct Tls {
    pub acceptor: TlsAcceptor,
    /// What a reload swaps.
    pub certificate: Arc<Certificate>,
}

/// The certificate and key new handshakes present, and the files they come from.
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: Swap<CertifiedKey>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load())
    }
}

impl Certificate {
    /// Reads `tls.cert` and `tls.key` again; on error the pair in use stays.
    pub fn reload(&self) -> Result<(), SettingsError> {
        self.current
            .store(certified_key(&self.cert, &self.key, &self.provider)?);
        Ok(())
    }
}

/// The acceptor for `tls.cert` and `tls.key`; `None` when both are empty (plain TCP).
pub fn acceptor(s: &TlsSettings) -> Result<Option<Tls>, SettingsError> {
    let (cert, key) = match (&s.cert, &s.key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => return Err(SettingsError::invalid("tls.key", "must be set when tls.cert is")),
        (None, Some(_)) => return Err(SettingsError::invalid("tls.cert", "must be set when tls.key is")),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certificate = Arc::new(Certificate {
        cert: cert.clone(),
        key: key.clone(),
        current: Swap::new(certified_key(cert, key, &provider)?),
        provider: provider.clone(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SettingsError::invalid("tls.cert", e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    // Only HTTP/1.1 is served (WebSocket upgrades need it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        certificate,
    }))
}

/// The chain in `cert` with the private key in `key`, checked to belong together.
fn certified_key(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, SettingsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        SettingsError::invalid("tls.key", format!("no PEM private key in {}: {e}", key.display()))
    })?;
    CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| SettingsError::invalid("tls.key", format!("does not fit tls.cert: {e}")))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    crate::settings::pem_certificates("tls.cert", path)
}
