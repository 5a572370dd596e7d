//! TLS: rustls with the ring provider, TLS 1.2 and 1.3, ALPN h2 and http/1.1; the serving certificate re-read when
//! its files change; optional verification of the API server's client certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    #[error("{path}: not a PEM private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{cert} and {key} do not make a usable pair: {reason}")]
    Pair { cert: PathBuf, key: PathBuf, reason: String },
    #[error("client CA {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// Where the serving certificate and key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// A certificate and key, checked to belong together, with the certificate's `notAfter`.
pub struct LoadedPair {
    pub key: Arc<CertifiedKey>,
    pub not_after: Option<i64>,
    /// The files' bytes, to tell when they change.
    contents: Vec<u8>,
}

impl TlsFiles {
    fn contents(&self) -> Result<Vec<u8>, TlsError> {
        let mut bytes = read(&self.cert)?;
        bytes.extend(read(&self.key)?);
        Ok(bytes)
    }

    pub fn load(&self) -> Result<LoadedPair, TlsError> {
        let cert_pem = read(&self.cert)?;
        let key_pem = read(&self.key)?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(&cert_pem).filter_map(Result::ok).collect();
        if chain.is_empty() {
            return Err(TlsError::NoCertificate(self.cert.clone()));
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::Key { path: self.key.clone(), reason: e.to_string() })?;
        let pair = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Pair {
            cert: self.cert.clone(),
            key: self.key.clone(),
            reason: e.to_string(),
        })?;
        let not_after = crate::certs::not_after(&cert_pem);
        let mut contents = cert_pem;
        contents.extend(key_pem);
        Ok(LoadedPair { key: Arc::new(pair), not_after, contents })
    }
}

/// The serving certificate in use; swapped whole when the files change, so that every handshake sees one pair.
#[derive(Debug)]
pub struct CertificateStore {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

impl CertificateStore {
    /// Loads the pair; fails if it is unusable, since there is nothing to serve yet.
    pub fn open(files: TlsFiles, metrics: &Metrics) -> Result<(Arc<CertificateStore>, Vec<u8>), TlsError> {
        let loaded = files.load()?;
        if let Some(t) = loaded.not_after {
            metrics.set_certificate_expiry(t);
        }
        let store = Arc::new(CertificateStore { files, current: RwLock::new(loaded.key) });
        Ok((store, loaded.contents))
    }

    /// Re-reads the files every `interval` and swaps in a changed pair. A pair that does not load is logged and
    /// counted, once per change of the files, and the pair in service stays.
    pub async fn watch(self: Arc<Self>, mut last: Vec<u8>, interval: Duration, metrics: Metrics) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let files = self.files.clone();
            // File reads and PEM parsing stay off the runtime's worker threads.
            let seen = tokio::task::spawn_blocking(move || files.contents().map(|c| (files, c))).await;
            let Ok(Ok((files, contents))) = seen else { continue };
            if contents == last {
                continue;
            }
            let loaded = tokio::task::spawn_blocking(move || files.load()).await;
            match loaded {
                Ok(Ok(pair)) => {
                    *self.current.write().unwrap_or_else(|e| e.into_inner()) = pair.key;
                    if let Some(t) = pair.not_after {
                        metrics.set_certificate_expiry(t);
                    }
                    metrics.tls_reload(true);
                    tracing::info!(cert = %self.files.cert.display(), not_after = pair.not_after, "serving certificate reloaded");
                    last = pair.contents;
                }
                Ok(Err(e)) => {
                    metrics.tls_reload(false);
                    tracing::error!(error = %e, "new serving certificate rejected; the previous one stays in service");
                    last = contents;
                }
                Err(_) => continue,
            }
        }
    }
}

/// The server's TLS configuration. With `client_ca`, client certificates are verified against it when presented;
/// whether one is required is decided per endpoint, so that probes without one still reach `/healthz`.
pub fn server_config(store: Arc<CertificateStore>, client_ca: Option<&Path>) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem = read(path)?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| TlsError::ClientCa { path: path.to_owned(), reason: e.to_string() })?;
                roots.add(cert).map_err(|e| TlsError::ClientCa { path: path.to_owned(), reason: e.to_string() })?;
            }
            if roots.is_empty() {
                return Err(TlsError::ClientCa { path: path.to_owned(), reason: "no certificate in it".into() });
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa { path: path.to_owned(), reason: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
