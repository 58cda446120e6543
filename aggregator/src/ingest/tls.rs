//! Mutual-TLS QUIC server configuration: agent identity in the certificate, revocation, transport tuning.
//!
//! Every agent presents a client certificate issued by the deployment CA (see [`crate::pki`]). The handshake
//! is refused unless the certificate chains to that CA (webpki: signature, validity window, ClientAuth EKU)
//! and, on top of webpki, carries exactly one agent URI SAN of the form
//! `spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<agent-id>` and a serial that is not in
//! the [`RevocationSet`]. After the handshake, [`peer_identity`] reads the tenancy from the verified
//! certificate; the aggregator authorizes every message against it and never against what a message claims.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::pki::identity::{AgentIdentity, IdentityError, ca_trust_domain, identity_from_cert_der};
use crate::pki::pem::{PemError, load_certs, load_key};
/// The revoked serials the handshake refuses (kept with the CA in [`crate::pki::revocation`]).
pub use crate::pki::revocation::RevocationSet;

/// ALPN protocol spoken on agent connections (defined by the wire crate).
pub use gait_wire::ALPN;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be loaded.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The CA certificate was refused as a trust anchor.
    #[error("{} is not a usable CA certificate: {source}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// The client verifier could not be built.
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("tls configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// The rustls configuration cannot be used for QUIC.
    #[error("tls configuration unusable for QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A transport tuning value is out of range.
    #[error("invalid transport tuning `{field}`: {reason}")]
    Tuning {
        /// The field name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// QUIC transport knobs for the agent-facing endpoint.
///
/// Defaults suit many mostly idle agents: a connection holds little more than its crypto and congestion
/// state, and the windows cap what a busy one may buffer (64 KiB in, 64 KiB out). Throughput per connection
/// is about window / RTT (≈ 640 KB/s at 100 ms), ample for record batches and policy bundles.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportTuning {
    /// Connection closed after this long without any packet. The server sends no keep-alives: agents do, every
    /// `gait_agent::daemon::KEEP_ALIVE` (10 s), well inside this.
    pub idle_timeout: Duration,
    /// Bidirectional streams an agent may have open at once.
    pub max_concurrent_bidi_streams: u32,
    /// Unidirectional streams an agent may have open at once.
    pub max_concurrent_uni_streams: u32,
    /// Bytes the server buffers per stream before the agent must wait.
    pub stream_receive_window: u32,
    /// Bytes the server buffers per connection across all streams.
    pub receive_window: u32,
    /// Unacknowledged bytes the server keeps per connection for sending.
    pub send_window: u64,
    /// Connection attempts waiting for the accept loop before new ones are refused.
    pub max_incoming: usize,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            max_concurrent_bidi_streams: 8,
            max_concurrent_uni_streams: 4,
            stream_receive_window: 64 * 1024,
            receive_window: 64 * 1024,
            send_window: 64 * 1024,
            max_incoming: 4096,
        }
    }
}

impl TransportTuning {
    /// Checks the values are usable together.
    pub fn validate(&self) -> Result<(), TlsError> {
        let tuning = |field, reason: &str| TlsError::Tuning {
            field,
            reason: reason.to_owned(),
        };
        if self.idle_timeout.is_zero() {
            return Err(tuning("idle_timeout", "must be non-zero"));
        }
        if quinn::IdleTimeout::try_from(self.idle_timeout).is_err() {
            return Err(tuning("idle_timeout", "too large"));
        }
        if self.max_concurrent_bidi_streams == 0 {
            return Err(tuning("max_concurrent_bidi_streams", "must be at least 1"));
        }
        if self.stream_receive_window < 1024 || self.receive_window < self.stream_receive_window {
            return Err(tuning(
                "receive_window",
                "stream_receive_window must be at least 1024 and receive_window at least stream_receive_window",
            ));
        }
        if self.send_window < 1024 {
            return Err(tuning("send_window", "must be at least 1024"));
        }
        if self.max_incoming == 0 {
            return Err(tuning("max_incoming", "must be at least 1"));
        }
        Ok(())
    }

    /// The server-side quinn transport configuration.
    pub fn server_transport(&self) -> Result<quinn::TransportConfig, TlsError> {
        self.validate()?;
        let idle =
            quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| TlsError::Tuning {
                field: "idle_timeout",
                reason: "too large".to_owned(),
            })?;
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(None)
            .max_concurrent_bidi_streams(self.max_concurrent_bidi_streams.into())
            .max_concurrent_uni_streams(self.max_concurrent_uni_streams.into())
            .stream_receive_window(self.stream_receive_window.into())
            .receive_window(self.receive_window.into())
            .send_window(self.send_window)
            .datagram_receive_buffer_size(None)
            .datagram_send_buffer_size(0);
        Ok(transport)
    }
}

/// Builds the agent-facing QUIC server configuration: TLS 1.3 only, ALPN [`ALPN`], client certificates
/// required, chained to the CA in `ca_pem`, carrying one agent URI SAN and not revoked in `revoked`.
/// With `tickets`, every handshake hands the agent one session ticket so its next connection (also to a
/// restarted aggregator with the same ticket secret) resumes without a certificate handshake
/// ([`crate::ingest::tickets`]); the caller must then re-check revocation and expiry after each handshake, as
/// [`crate::ingest`] does.
pub fn server_config(
    ca_pem: &Path,
    cert_pem: &Path,
    key_pem: &Path,
    revoked: RevocationSet,
    transport: &TransportTuning,
    tickets: Option<Arc<crate::ingest::tickets::SessionTickets>>,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = crypto_provider();
    let ca_certs = load_certs(ca_pem)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in &ca_certs {
        roots.add(cert.clone()).map_err(|source| TlsError::BadCa {
            path: ca_pem.to_owned(),
            source,
        })?;
    }
    let trust_domain = ca_certs.iter().find_map(|c| ca_trust_domain(c));
    let inner =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let verifier = AgentCertVerifier {
        inner,
        revoked,
        trust_domain,
    };
    let chain = load_certs(cert_pem)?;
    let key = load_key(key_pem)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    match tickets {
        Some(tickets) => {
            tls.ticketer = tickets;
            tls.send_tls13_tickets = 1;
        }
        None => tls.send_tls13_tickets = 0,
    }
    let crypto = QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config
        .transport_config(Arc::new(transport.server_transport()?))
        .max_incoming(transport.max_incoming);
    Ok(config)
}

/// The identity of the agent on `conn`, read from the certificate the handshake verified.
pub fn peer_identity(conn: &quinn::Connection) -> Result<AgentIdentity, IdentityError> {
    let any = conn
        .peer_identity()
        .ok_or(IdentityError::NoPeerCertificate)?;
    let chain = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoPeerCertificate)?;
    identity_from_cert_der(leaf)
}

/// webpki verification plus the agent rules: one valid agent URI SAN in the CA's trust domain, serial not
/// revoked.
#[derive(Debug)]
struct AgentCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: RevocationSet,
    trust_domain: Option<String>,
}

impl AgentCertVerifier {
    fn check_agent_rules(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let identity = match identity_from_cert_der(end_entity) {
            Ok(identity) => identity,
            Err(error) => {
                tracing::warn!(reason = %error, "client certificate refused: no valid agent identity");
                return Err(refusal(CertificateError::ApplicationVerificationFailure));
            }
        };
        if let Some(expected) = &self.trust_domain
            && *expected != identity.spiffe.trust_domain.as_str()
        {
            tracing::warn!(
                uri = %identity.uri(),
                serial = %identity.serial,
                expected_trust_domain = %expected,
                "client certificate refused: foreign trust domain"
            );
            return Err(refusal(CertificateError::ApplicationVerificationFailure));
        }
        if self.revoked.contains(identity.serial.as_str()) {
            tracing::warn!(
                uri = %identity.uri(),
                serial = %identity.serial,
                "client certificate refused: revoked"
            );
            return Err(refusal(CertificateError::Revoked));
        }
        Ok(())
    }
}

fn refusal(error: CertificateError) -> rustls::Error {
    rustls::Error::InvalidCertificate(error)
}

impl ClientCertVerifier for AgentCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|error| {
                tracing::warn!(reason = %error, "client certificate refused by chain verification");
            })?;
        self.check_agent_rules(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The crypto provider every TLS configuration in this crate uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_set_is_shared_between_clones_and_normalizes_serials() {
        let set = RevocationSet::new();
        let clone = set.clone();
        assert!(set.insert("0A:BC"));
        assert!(clone.contains("abc"));
        assert!(clone.contains("000abc"));
        assert!(!clone.contains("abd"));
        let serial = |s: &str| gait_identity::CertSerial::parse(s).expect("valid serial");
        // A reload that brings a serial not held before says so (live connections are checked again)...
        assert!(clone.replace_all(vec![serial("ff")]));
        assert!(!set.contains("0abc"));
        assert!(set.contains("FF"));
        assert_eq!(set.len(), 1);
        // ...one that brings nothing new does not (the same list, or one with a serial dropped).
        assert!(!set.replace_all(vec![serial("FF")]));
        assert!(set.replace_all(vec![serial("ff"), serial("10")]));
        assert!(!set.replace_all(vec![serial("10")]));
        assert!(!set.contains("ff"));
    }

    #[test]
    fn default_tuning_is_valid_and_small() {
        let tuning = TransportTuning::default();
        assert!(tuning.validate().is_ok());
        assert!(u64::from(tuning.receive_window) + tuning.send_window <= 128 * 1024);
        let bad = TransportTuning {
            idle_timeout: Duration::ZERO,
            ..tuning
        };
        assert!(matches!(
            bad.validate(),
            Err(TlsError::Tuning {
                field: "idle_timeout",
                ..
            })
        ));
    }
}
