//! Mutual-TLS QUIC client configuration: the agent's certificate, and the aggregator verified against the
//! deployment CA only.
//!
//! The certificate files come from `gait-agent enroll` (a join token; the key is made here) or from
//! `gait-aggregator pki issue-agent`, which writes `agent.pem`, `agent.key` and `ca.pem` together. Renewal
//! ([`renew_at`]) replaces them while the agent runs; the next connection uses the new ones. TLS 1.3 only; the ALPN is [`gait_wire::ALPN`]. Note that with TLS 1.3 a client
//! certificate the aggregator refuses is not reported by the handshake on this side: the connection fails
//! on its first read instead.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gait_runtime::pem::{PemError, load_certs, load_key};
use quinn::crypto::rustls::QuicClientConfig;

/// What an operator runs to produce the agent's certificate files.
const ISSUE_HINT: &str = "enroll the agent (`gait-agent enroll --token ...`), or run `gait-aggregator pki issue-agent ...` and copy agent.pem, agent.key and ca.pem to the agent";

/// Why the agent's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read, is too large, or holds no item of the expected kind.
    #[error("{source}; {ISSUE_HINT}")]
    Pem {
        /// What the shared PEM loader reported (it names the file).
        #[from]
        source: PemError,
    },
    /// The CA certificate is unusable as a trust anchor.
    #[error("{} is not a usable CA certificate: {source}; {ISSUE_HINT}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// rustls refused the certificate/key pair or the protocol settings.
    #[error("tls configuration refused ({}, {}): {source}; check that the key belongs to the certificate or {ISSUE_HINT}", cert.display(), key.display())]
    Config {
        /// The agent certificate file.
        cert: PathBuf,
        /// The agent key file.
        key: PathBuf,
        /// What rustls reported.
        source: rustls::Error,
    },
    /// The configuration cannot be used for QUIC.
    #[error("tls configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The certificate file holds no parsable certificate.
    #[error("{} is not a usable certificate: {detail}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        detail: String,
    },
    /// The keep-alive interval is unusable.
    #[error("invalid keep-alive {keep_alive:?}: must be between 1 s and 10 min")]
    KeepAlive {
        /// The rejected interval.
        keep_alive: Duration,
    },
}

/// TLS alert `no_application_protocol` (RFC 8446 §6.2, RFC 7301 §3.2): the peers share no ALPN.
const ALERT_NO_APPLICATION_PROTOCOL: u8 = 120;

/// Whether a failed handshake means the aggregator speaks another protocol version: the ALPN changes with
/// [`gait_wire::PROTOCOL_VERSION`], so peers of different versions share no ALPN and the handshake ends with
/// TLS alert `no_application_protocol`, whichever side noticed it.
pub fn is_version_skew(error: &quinn::ConnectionError) -> bool {
    let code = match error {
        quinn::ConnectionError::TransportError(e) => e.code,
        quinn::ConnectionError::ConnectionClosed(close) => close.error_code,
        _ => return false,
    };
    code == quinn::TransportErrorCode::crypto(ALERT_NO_APPLICATION_PROTOCOL)
}

/// Why the aggregator refused this agent's certificate, read from how the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateRefusal {
    /// The certificate's serial is revoked (TLS alert `certificate_revoked`, or closed with
    /// [`gait_wire::close::CLOSE_REVOKED`] after a resumed handshake).
    Revoked,
    /// The certificate is outside its validity window (TLS alert `certificate_expired`).
    Expired,
    /// Refused for another reason: unknown CA, bad or missing certificate, or no usable agent identity
    /// ([`gait_wire::close::CLOSE_UNAUTHORIZED`]).
    Rejected,
}

impl CertificateRefusal {
    /// What happened and what the operator does about it, for the ERROR log line.
    pub fn advice(self) -> &'static str {
        match self {
            CertificateRefusal::Revoked => {
                "the aggregator refused this agent's certificate: it is REVOKED. Enroll the agent again \
                 (`gait-agent enroll` with a new join token) or issue a new certificate (`gait-aggregator pki \
                 issue-agent`), point tls.cert/tls.key at it and restart the agent"
            }
            CertificateRefusal::Expired => {
                "the aggregator refused this agent's certificate: it has EXPIRED (or is not yet valid: check \
                 the clock). A connected agent renews it before expiry; one that stayed offline past it must \
                 be enrolled again (`gait-agent enroll` with a new join token, or `gait-aggregator pki \
                 issue-agent`) and restarted"
            }
            CertificateRefusal::Rejected => {
                "the aggregator refused this agent's certificate (not issued by its CA, or no usable agent \
                 identity). Check tls.ca/tls.cert against the aggregator's `pki` directory"
            }
        }
    }
}

/// TLS alerts (RFC 8446 §6.2) that refuse the client certificate.
const ALERT_BAD_CERTIFICATE: u8 = 42;
const ALERT_UNSUPPORTED_CERTIFICATE: u8 = 43;
const ALERT_CERTIFICATE_REVOKED: u8 = 44;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_CERTIFICATE_UNKNOWN: u8 = 46;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

/// Whether the connection ended because the aggregator refused this agent's certificate, and why.
pub fn certificate_refusal(error: &quinn::ConnectionError) -> Option<CertificateRefusal> {
    use gait_wire::close::{CLOSE_REVOKED, CLOSE_UNAUTHORIZED};
    let alert = |code: quinn::TransportErrorCode| {
        [
            (ALERT_CERTIFICATE_REVOKED, CertificateRefusal::Revoked),
            (ALERT_CERTIFICATE_EXPIRED, CertificateRefusal::Expired),
            (ALERT_BAD_CERTIFICATE, CertificateRefusal::Rejected),
            (ALERT_UNSUPPORTED_CERTIFICATE, CertificateRefusal::Rejected),
            (ALERT_CERTIFICATE_UNKNOWN, CertificateRefusal::Rejected),
            (ALERT_UNKNOWN_CA, CertificateRefusal::Rejected),
            (ALERT_CERTIFICATE_REQUIRED, CertificateRefusal::Rejected),
        ]
        .into_iter()
        .find(|(a, _)| code == quinn::TransportErrorCode::crypto(*a))
        .map(|(_, why)| why)
    };
    match error {
        quinn::ConnectionError::TransportError(e) => alert(e.code),
        quinn::ConnectionError::ConnectionClosed(close) => alert(close.error_code),
        quinn::ConnectionError::ApplicationClosed(close) => {
            let code = close.error_code.into_inner();
            if code == u64::from(CLOSE_REVOKED) {
                Some(CertificateRefusal::Revoked)
            } else if code == u64::from(CLOSE_UNAUTHORIZED) {
                let reason = String::from_utf8_lossy(&close.reason);
                Some(if reason.contains("expired") {
                    CertificateRefusal::Expired
                } else {
                    CertificateRefusal::Rejected
                })
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Builds the agent's QUIC client configuration: TLS 1.3, ALPN, this agent's certificate for client
/// authentication, and the aggregator's certificate verified against `ca_pem` only (no system roots).
///
/// The connection sends a keep-alive every `keep_alive` and gives up after three missed intervals (at least
/// 10 s); the aggregator's own idle timeout also applies, so `keep_alive` must be shorter than it.
pub fn client_config(
    ca_pem: &Path,
    cert_pem: &Path,
    key_pem: &Path,
    keep_alive: Duration,
) -> Result<quinn::ClientConfig, TlsError> {
    if keep_alive < Duration::from_secs(1) || keep_alive > Duration::from_secs(600) {
        return Err(TlsError::KeepAlive { keep_alive });
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca_pem)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: ca_pem.to_owned(),
            source,
        })?;
    }
    let chain = load_certs(cert_pem)?;
    let key = load_key(key_pem)?;
    let config_error = |source| TlsError::Config {
        cert: cert_pem.to_owned(),
        key: key_pem.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(config_error)?;
    tls.alpn_protocols = vec![gait_wire::ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls)?;

    let idle = (keep_alive * 3).max(Duration::from_secs(10));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The validity window (`notBefore`, `notAfter`, Unix seconds) of the first certificate in a PEM file.
pub fn certificate_validity(cert_pem: &Path) -> Result<(i64, i64), TlsError> {
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let chain = load_certs(cert_pem)?;
    let leaf = chain.first().ok_or_else(|| TlsError::BadCertificate {
        path: cert_pem.to_owned(),
        detail: "no certificate".to_owned(),
    })?;
    let (_, cert) = X509Certificate::from_der(leaf).map_err(|e| TlsError::BadCertificate {
        path: cert_pem.to_owned(),
        detail: e.to_string(),
    })?;
    let validity = cert.validity();
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// When a certificate valid from `not_before` to `not_after` is renewed: once less than a third of its
/// validity is left (Unix seconds).
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    not_after.saturating_sub(not_after.saturating_sub(not_before) / 3)
}

/// Whether the certificate is due for renewal at `now` (false when its window is unknown).
pub fn renewal_due(not_before: i64, not_after: i64, now: i64) -> bool {
    not_before > 0 && not_before < not_after && now >= renew_at(not_before, not_after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn renewal_is_due_once_a_third_of_the_validity_is_left() {
        // 90 days from t=0 (as Unix seconds 1000..): due at day 60.
        let (nb, na) = (1_000, 1_000 + 90 * 86_400);
        assert_eq!(renew_at(nb, na), 1_000 + 60 * 86_400);
        assert!(!renewal_due(nb, na, 1_000 + 60 * 86_400 - 1));
        assert!(renewal_due(nb, na, 1_000 + 60 * 86_400));
        assert!(renewal_due(nb, na, na + 10));
        assert!(!renewal_due(0, na, na), "an unknown window is never due");
    }

    #[test]
    fn missing_files_are_named_with_the_command_that_creates_them() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca.pem");
        let result = client_config(
            &ca,
            &dir.path().join("agent.pem"),
            &dir.path().join("agent.key"),
            Duration::from_secs(15),
        );
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(&ca.display().to_string()), "{message}");
        assert!(
            message.contains("gait-aggregator pki issue-agent"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn a_file_without_certificates_is_refused_with_its_path() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ca = dir.path().join("ca.pem");
        fs::write(&ca, "not a pem file\n")?;
        let result = client_config(&ca, &ca, &ca, Duration::from_secs(15));
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("holds no valid CERTIFICATE block"),
            "{message}"
        );
        assert!(message.contains(&ca.display().to_string()), "{message}");
        Ok(())
    }

    #[test]
    fn an_unusable_keep_alive_is_refused() {
        let result = client_config(
            Path::new("ca.pem"),
            Path::new("agent.pem"),
            Path::new("agent.key"),
            Duration::ZERO,
        );
        assert!(matches!(result, Err(TlsError::KeepAlive { .. })));
    }
}
