//! TLS: toward upstreams, rustls with the system's roots plus an optional CA file; on
//! the proxy listener, the certificate and key files, read again by every reload.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or holds no PEM certificate.
    #[error("{path}: {why}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// The listener's certificate chain or key could not be used.
    #[error("{path}: {why}")]
    Identity {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A certificate was rejected by the root store.
    #[error("{path}: certificate rejected: {source}")]
    BadCert {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        source: rustls::Error,
    },
}

/// The PEM certificates in `path`, which must hold at least one.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::CaFile {
        path: path.to_path_buf(),
        why,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// The system's trusted roots, loaded once per process (missing or unreadable system
/// stores leave it empty: a CA file can still be configured).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "could not load some system root certificates");
        }
        found.certs
    })
}

/// A client configuration trusting the system roots and, if given, the CAs in `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    match ca_file {
        None => Ok(system_client_config()),
        Some(path) => build_client_config(Some(path)),
    }
}

/// The client configuration trusting the system roots alone, which every route without a
/// CA file shares (the store is built once, not once per route and reload).
pub fn system_client_config() -> Arc<ClientConfig> {
    static SYSTEM_ONLY: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    SYSTEM_ONLY
        .get_or_init(|| build_client_config(None).expect("no CA file to read"))
        .clone()
}

fn build_client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    // Some system stores carry a certificate rustls cannot parse; skip those alone.
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|source| TlsError::BadCert {
                path: path.to_path_buf(),
                source,
            })?;
        }
    }
    Ok(Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// The proxy listener's certificate: the files it came from and what was built of them.
/// Each (re)load of the configuration reads the files anew, so a reload serves a rotated
/// certificate to the connections accepted after it.
#[derive(Clone)]
pub struct ServerIdentity {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// The server configuration handshakes use.
    pub config: Arc<rustls::ServerConfig>,
    /// When the certificate (the leaf) expires: its `notAfter`, in Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The TLS listener's identity: the chain in `cert_file`, the key in `key_file` (PEM),
/// and ALPN offering h2 then http/1.1.
pub fn server_identity(cert_file: &Path, key_file: &Path) -> Result<ServerIdentity, TlsError> {
    // The reader's error already names the file: keep its reason, not its text.
    let certs = read_ca_file(cert_file).map_err(|e| match e {
        TlsError::CaFile { path, why } => TlsError::Identity { path, why },
        other => other,
    })?;
    let not_after = leaf_not_after(&certs).map_err(|why| TlsError::Identity {
        path: cert_file.to_path_buf(),
        why,
    })?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        TlsError::Identity {
            path: key_file.to_path_buf(),
            why: format!("not a PEM private key: {e}"),
        }
    })?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Identity {
            path: cert_file.to_path_buf(),
            why: format!("certificate and key do not match or are unusable: {e}"),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = sessions();
    Ok(ServerIdentity {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        config: Arc::new(config),
        not_after,
    })
}

/// The session cache every identity shares (rustls' default size), so clients still
/// resume after a reload built a new server configuration, as nginx's shared cache does.
fn sessions() -> Arc<dyn rustls::server::StoresServerSessions> {
    static CACHE: OnceLock<Arc<dyn rustls::server::StoresServerSessions>> = OnceLock::new();
    CACHE
        .get_or_init(|| rustls::server::ServerSessionMemoryCache::new(256))
        .clone()
}

/// The leaf's `notAfter` (the first certificate of `chain`), Unix seconds, as Traefik and
/// cert-manager report it: a full-chain file may carry a cross-signed certificate that
/// expires first while clients verify through a shorter path, which must not page.
/// Every certificate must still be X.509: a broken one would fail clients' handshakes.
fn leaf_not_after(chain: &[CertificateDer<'_>]) -> Result<i64, String> {
    let mut leaf = None;
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate {} of the chain is not X.509: {e}", i + 1))?;
        leaf.get_or_insert(cert.validity().not_after.timestamp());
    }
    leaf.ok_or_else(|| "no certificate".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// A leaf expiring 2031-01-02 and the CA that signed it, expiring 2030-06-01 (DER).
    fn chain() -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.not_after = rcgen::date_time_ymd(2030, 6, 1);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let leaf = leaf
            .signed_by(&KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        (leaf.der().clone(), ca_cert.der().clone())
    }

    #[test]
    fn the_expiry_is_the_leafs_and_every_certificate_must_be_x509() {
        let (leaf, ca) = chain();
        // 2031-01-02 and 2030-06-01, 00:00 UTC: the leaf's date even where the CA's is
        // earlier (a cross-signed root in a full-chain file).
        assert_eq!(
            leaf_not_after(std::slice::from_ref(&leaf)),
            Ok(1_925_078_400)
        );
        assert_eq!(
            leaf_not_after(&[leaf.clone(), ca.clone()]),
            Ok(1_925_078_400)
        );
        assert_eq!(leaf_not_after(&[ca, leaf.clone()]), Ok(1_906_502_400));
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let err = leaf_not_after(&[leaf, junk]).unwrap_err();
        assert!(
            err.starts_with("certificate 2 of the chain is not X.509"),
            "{err}"
        );
    }
}
