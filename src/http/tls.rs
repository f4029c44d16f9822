//! Optional TLS for the API (rustls), with certificates re-read on SIGHUP.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, TlsFiles};

/// Why the TLS files cannot serve; names the file, never key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{} {error}", crate::log_safe::LogSafe::new(.path))]
    Read {
        path: String,
        error: crate::file_checks::FileError,
    },
    #[error("{path} is not a PEM certificate chain: {reason}")]
    NotCertificates { path: String, reason: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("{path} is not a PEM private key: {reason}")]
    NotKey { path: String, reason: String },
    #[error("{0}")]
    Protocols(tokio_rustls::rustls::Error),
    #[error("certificate and key do not fit: {0}")]
    Mismatch(tokio_rustls::rustls::Error),
}

/// Loads the configured files once, as `check-config`, start and a reload
/// do before they accept a configuration: a problem is `api.tls`.
pub fn check(files: Option<&TlsFiles>) -> Result<(), ConfigError> {
    match files.map(load) {
        Some(Err(error)) => Err(ConfigError::single("api.tls", error.to_string())),
        _ => Ok(()),
    }
}

/// Reads and checks the files into a rustls configuration. Errors name the
/// file, never key material.
///
/// Both files are read through [`crate::file_checks::read_limited`]: a
/// FIFO, a device or an oversized file is refused at once instead of
/// blocking the reload (and with it the signal loop) in `open` or `read`.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |path: &std::path::Path| {
        crate::file_checks::read_limited(path, crate::file_checks::MAX_PEM_BYTES).map_err(|error| {
            TlsError::Read {
                path: path.to_string_lossy().into_owned(),
                error,
            }
        })
    };
    let cert_pem = read(&files.cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|error| TlsError::NotCertificates {
            path: files.cert.display().to_string(),
            reason: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.display().to_string(),
        });
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| TlsError::NotKey {
        path: files.key.display().to_string(),
        reason: error.to_string(),
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(TlsError::Mismatch)?;
    // HTTP/1.1 only: the server refuses HTTP/2 (see `server`).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The live TLS configuration; [`TlsReloader::reload`] swaps in new
/// certificates for the next handshakes, keeping the old ones on error.
#[derive(Clone)]
pub struct TlsReloader {
    files: TlsFiles,
    current: Arc<ArcSwap<ServerConfig>>,
}

impl TlsReloader {
    pub fn new(files: TlsFiles) -> Result<TlsReloader, TlsError> {
        let config = load(&files)?;
        Ok(TlsReloader {
            files,
            current: Arc::new(ArcSwap::new(config)),
        })
    }

    pub fn reload(&self) -> Result<(), TlsError> {
        let config = load(&self.files)?;
        self.current.store(config);
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}
