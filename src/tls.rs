//! TLS with rustls (ring provider): termination on listeners and TLS to upstreams.
//!
//! Listeners: PEM chain + key, optional SNI host → certificate map, ALPN `h2` and `http/1.1`,
//! TLS 1.3 and 1.2 only. Certificates are reloaded when their files change: a new handshake
//! uses the new certificate, connections already established keep theirs, and a bad new
//! certificate keeps the old one and is reported like a bad config.

use crate::config::{FieldError, HostMatch, TlsFiles, UpstreamTls};
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One TLS listener's certificates, swappable at runtime.
pub struct TlsListener {
    files: TlsFiles,
    /// Field path of this listener's `tls` section, for error messages.
    field: String,
    current: ArcSwap<ServerConfig>,
    /// Hash of the certificate and key file contents last read, good or bad, so an
    /// unchanged file is neither rebuilt nor reported twice.
    seen: Mutex<u64>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("files", &self.files)
            .finish()
    }
}

impl TlsListener {
    pub fn load(files: &TlsFiles, field: &str) -> Result<TlsListener, FieldError> {
        let (config, hash) = build_server(files, field)?;
        Ok(TlsListener {
            files: files.clone(),
            field: field.to_string(),
            current: ArcSwap::from_pointee(config),
            seen: Mutex::new(hash),
        })
    }

    /// The config for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Every file this listener reads, for the watcher.
    pub fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.files.cert.as_path(), self.files.key.as_path()];
        for s in &self.files.sni {
            v.push(&s.cert);
            v.push(&s.key);
        }
        v
    }

    /// Re-read the files; swap in new certificates if they changed and are valid.
    /// Ok(true) = swapped, Ok(false) = unchanged since last read; Err = kept the old ones.
    pub fn reload(&self) -> Result<bool, FieldError> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let hash = hash_files(&self.files, &self.field)?;
        if *seen == hash {
            return Ok(false);
        }
        *seen = hash;
        let (config, _) = build_server(&self.files, &self.field)?;
        self.current.store(Arc::new(config));
        Ok(true)
    }
}

fn hash_files(files: &TlsFiles, field: &str) -> Result<u64, FieldError> {
    let mut h = DefaultHasher::new();
    read(&files.cert, &format!("{field}.cert"), &mut h)?;
    read(&files.key, &format!("{field}.key"), &mut h)?;
    for (i, s) in files.sni.iter().enumerate() {
        read(&s.cert, &format!("{field}.sni[{i}].cert"), &mut h)?;
        read(&s.key, &format!("{field}.sni[{i}].key"), &mut h)?;
    }
    Ok(h.finish())
}

fn read(path: &Path, field: &str, hasher: &mut DefaultHasher) -> Result<Vec<u8>, FieldError> {
    let bytes = std::fs::read(path).map_err(|e| FieldError {
        field: field.to_string(),
        message: format!("cannot read {}: {e}", path.display()),
    })?;
    bytes.hash(hasher);
    Ok(bytes)
}

/// Parse a chain and key and check that they belong together.
fn certified_key(
    cert: &Path,
    key: &Path,
    field: &str,
    hasher: &mut DefaultHasher,
) -> Result<Arc<CertifiedKey>, FieldError> {
    let cert_pem = read(cert, &format!("{field}.cert"), hasher)?;
    let key_pem = read(key, &format!("{field}.key"), hasher)?;
    let err = |f: &str, m: String| FieldError {
        field: format!("{field}.{f}"),
        message: m,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            err(
                "cert",
                format!("{} is not a PEM certificate chain: {e}", cert.display()),
            )
        })?;
    if chain.is_empty() {
        return Err(err(
            "cert",
            format!("{} contains no certificate", cert.display()),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        err(
            "key",
            format!(
                "{} is not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                key.display()
            ),
        )
    })?;
    let ck = CertifiedKey::from_der(chain, key_der, &provider()).map_err(|e| {
        err(
            "key",
            format!(
                "{} does not match the certificate {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(Arc::new(ck))
}

fn build_server(files: &TlsFiles, field: &str) -> Result<(ServerConfig, u64), FieldError> {
    let mut hasher = DefaultHasher::new();
    let default = certified_key(&files.cert, &files.key, field, &mut hasher)?;
    let mut by_host = Vec::new();
    for (i, s) in files.sni.iter().enumerate() {
        let ck = certified_key(&s.cert, &s.key, &format!("{field}.sni[{i}]"), &mut hasher)?;
        by_host.push((s.host.clone(), ck));
    }
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| FieldError {
            field: field.to_string(),
            message: format!("TLS setup failed: {e}"),
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { default, by_host }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, hasher.finish()))
}

/// Picks the certificate by SNI: the first matching `sni` entry, else the default.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_host: Vec<(HostMatch, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            if let Some((_, ck)) = self.by_host.iter().find(|(h, _)| h.matches(name)) {
                return Some(ck.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// Client config for TLS upstreams: the CA bundle or the web PKI roots. ALPN is left empty:
/// hyper-rustls sets it from the enabled protocols (and panics if it is already set).
pub fn client_config(tls: &UpstreamTls) -> Result<ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read CA bundle {}: {e}", path.display()))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| format!("{} is not a PEM CA bundle: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{} contains no certificate", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
