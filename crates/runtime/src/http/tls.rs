//! TLS for the HTTP servers and clients: rustls with the ring provider only (never aws-lc-rs), configured from
//! PEM files loaded by [`crate::pem`].
//!
//! - [`server_config`]: a certificate chain and its key, TLS 1.2 and 1.3, ALPN `http/1.1`; no client
//!   certificates (the HTTP API authenticates with bearer tokens). [`crate::http::serve_tls`] runs the
//!   handshake inside the connection cap and under the header timeout.
//! - [`client_config`]: trusts exactly the certificates of one CA file (the deployment CA), no system roots,
//!   so an HTTPS client reaches only servers that CA vouches for.
//! - [`client_config_public_roots`]: trusts the public web PKI (webpki-roots), for an OpenID provider on the
//!   internet.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;

use crate::pem::{PemError, load_certs, load_key};

/// Makes ring the process's default rustls provider (idempotent; a provider already installed stays).
///
/// reqwest is built with `rustls-no-provider` (the evidence blob store's S3 client needs TLS, and reqwest's own
/// `rustls` feature would compile aws-lc-rs): Cargo unifies that feature across the workspace, so *every*
/// `reqwest::Client` builder in a process panics unless a default provider is installed first. Call this before
/// building one; both daemons call it at start.
pub fn install_ring_default() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// ALPN protocol the HTTP servers and clients speak (HTTP/1.1 only).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A client configuration that trusts the public web PKI (the Mozilla root programme, as compiled into
/// `webpki-roots`), for HTTPS to parties outside the deployment such as an OpenID provider.
pub fn client_config_public_roots() -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A certificate, key or CA file could not be loaded.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// rustls refused the certificate and key (typically: the key does not belong to the certificate).
    #[error("{} and {} do not make a usable server certificate: {source}", cert.display(), key.display())]
    Pair {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
    /// A certificate of the CA file is not usable as a trust anchor.
    #[error("{} is not a usable CA certificate: {source}", path.display())]
    BadCa {
        /// The CA file.
        path: PathBuf,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
    /// The protocol versions were refused by the provider (cannot happen with ring).
    #[error("tls protocol versions refused: {0}")]
    Versions(#[source] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server configuration presenting the chain in `cert` with the key in `key`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let chain = load_certs(cert)?;
    let private = load_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Versions)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|source| TlsConfigError::Pair {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration that trusts the certificates in `ca_file` and nothing else.
pub fn client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots.add(cert).map_err(|source| TlsConfigError::BadCa {
            path: ca_file.to_owned(),
            source,
        })?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// Why a client's TLS handshake failed, as far as the operator can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The server's certificate does not name the host the client dialled.
    NameMismatch,
    /// The server's certificate does not chain to the trusted CA.
    UntrustedCertificate,
    /// The server's certificate is expired or not yet valid.
    Expired,
    /// Anything else (protocol error, the server is not speaking TLS, ...).
    Other,
}

/// Classifies a handshake error returned by `tokio_rustls` (an I/O error wrapping a [`rustls::Error`]).
pub fn classify_handshake_error(error: &std::io::Error) -> HandshakeFailure {
    use rustls::CertificateError as C;
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return HandshakeFailure::Other;
    };
    match tls {
        rustls::Error::InvalidCertificate(cert) => match cert {
            C::NotValidForName | C::NotValidForNameContext { .. } => HandshakeFailure::NameMismatch,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => HandshakeFailure::Expired,
            C::UnknownIssuer | C::BadSignature | C::BadEncoding => {
                HandshakeFailure::UntrustedCertificate
            }
            _ => HandshakeFailure::Other,
        },
        _ => HandshakeFailure::Other,
    }
}
