//! Optional TLS for the API (rustls), with certificates re-read on SIGHUP.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfigError, TlsFiles};

/// Loads the configured files once, as `check-config`, start and a reload
/// do before they accept a configuration: a problem is `api.tls`.
pub fn check(files: Option<&TlsFiles>) -> Result<(), ConfigError> {
    match files.map(load) {
        Some(Err(message)) => Err(ConfigError::single("api.tls", message)),
        _ => Ok(()),
    }
}

/// Reads and checks the files into a rustls configuration. Errors name the
/// file, never key material.
///
/// Both files are read through [`crate::file_checks::read_limited`]: a
/// FIFO, a device or an oversized file is refused at once instead of
/// blocking the reload (and with it the signal loop) in `open` or `read`.
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let read = |path: &std::path::Path| {
        crate::file_checks::read_limited(path, crate::file_checks::MAX_PEM_BYTES).map_err(|error| {
            format!(
                "{} {error}",
                crate::log_safe::LogSafe::new(&path.to_string_lossy())
            )
        })
    };
    let cert_pem = read(&files.cert)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|error| {
            format!(
                "{} is not a PEM certificate chain: {error}",
                files.cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", files.cert.display()));
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| format!("{} is not a PEM private key: {error}", files.key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|error| format!("certificate and key do not fit: {error}"))?;
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
    pub fn new(files: TlsFiles) -> Result<TlsReloader, String> {
        let config = load(&files)?;
        Ok(TlsReloader {
            files,
            current: Arc::new(ArcSwap::new(config)),
        })
    }

    pub fn reload(&self) -> Result<(), String> {
        let config = load(&self.files)?;
        self.current.store(config);
        Ok(())
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}
