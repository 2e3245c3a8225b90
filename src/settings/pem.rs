//! Reading the PEM certificates a setting names: one reader for `tls` and `jwks`, so every
//! such file fails with the same message, naming its key.

use std::fmt;
use std::path::Path;

use crate::settings::error::SettingsError;

/// The PEM certificates in `path`, at least one, for the setting `key` (the served chain of
/// `tls.cert`, the trusted CAs of `auth.jwt.jwks_ca_file`).
pub(crate) fn pem_certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, SettingsError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let bad = |e: &dyn fmt::Display| SettingsError::invalid(key, format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in the file"));
    }
    Ok(certs)
}
