//! TLS for the main listener (wss:// and https:// on one port), with rustls and the ring
//! provider.
//!
//! The certificate and key are loaded once, at start-up, where a bad file stops the server with
//! the key named. The handshake itself runs in each connection's task (see `server.rs`), never
//! in the accept loop, so a client that stalls mid-handshake delays nobody else.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::error::SettingsError;
use crate::settings::TlsSettings;

fn invalid(key: &'static str, message: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        message: message.into(),
    }
}

/// The acceptor for `tls.cert` and `tls.key`; `None` when both are empty (plain TCP).
pub fn acceptor(s: &TlsSettings) -> Result<Option<TlsAcceptor>, SettingsError> {
    let (cert, key) = match (&s.cert, &s.key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => return Err(invalid("tls.key", "must be set when tls.cert is")),
        (None, Some(_)) => return Err(invalid("tls.cert", "must be set when tls.key is")),
    };
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid("tls.key", format!("no PEM private key in {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls.cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("tls.key", format!("does not fit tls.cert: {e}")))?;
    // Only HTTP/1.1 is served (WebSocket upgrades need it).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, SettingsError> {
    let bad = |e: &dyn std::fmt::Display| invalid("tls.cert", format!("{}: {e}", path.display()));
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if chain.is_empty() {
        return Err(bad(&"no PEM certificate in the file"));
    }
    Ok(chain)
}
