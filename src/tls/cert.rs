//! The client certificate a connection presents: fixed, or read from PEM files and read
//! again when they change ([`Watched`]), as cert-manager or a SPIFFE agent rotates
//! short-lived ones.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::watch::Watched;

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("no PEM certificate in {0}")]
    NoCertificate(String),
    #[error("no PEM private key in {0}")]
    NoKey(String),
    #[error("the private key does not match the certificate, or its type is not supported")]
    Key(#[source] rustls::Error),
}

/// Parses a PEM chain (leaf first) and key into a key rustls signs with. The key must
/// match the leaf's public key.
pub(crate) fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
    origin: &str,
) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate(origin.to_owned()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertError::NoKey(origin.to_owned()))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(CertError::Key)?;
    key.keys_match().map_err(CertError::Key)?;
    Ok(key)
}

/// Presents a service's client certificate, whatever the server asks for: a mesh's
/// servers trust the mesh's CA, not a list of names.
#[derive(Debug)]
pub(crate) struct Resolver(pub(crate) Arc<Watched<CertifiedKey>>);

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The certificate in `cert` and the key in `key`, read now (an error if they cannot be
/// used) and again when either file changes.
pub(crate) fn from_files(
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
) -> Result<Watched<CertifiedKey>, String> {
    let files = vec![cert.clone(), key.clone()];
    let load = move || {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let origin = cert.display().to_string();
        certified_key(&read(&cert)?, &read(&key)?, &provider, &origin).map_err(|e| e.to_string())
    };
    Watched::new(
        "client certificate",
        crate::names::TLS_CERT_RELOADS,
        files,
        load,
    )
}
