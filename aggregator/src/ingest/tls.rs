//! Mutual-TLS QUIC server configuration: agent identity in the certificate, revocation, transport tuning.
//!
//! Every agent presents a client certificate issued by the deployment CA (see [`crate::pki`]). The handshake
//! is refused unless the certificate chains to that CA (webpki: signature, validity window, ClientAuth EKU)
//! and, on top of webpki, carries exactly one agent URI SAN of the form
//! `spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<agent-id>` and a serial that is not in
//! the [`RevocationSet`]. After the handshake, [`peer_identity`] reads the tenancy from the verified
//! certificate; the aggregator authorizes every message against it and never against what a message claims.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::pki;

/// ALPN protocol spoken on agent connections (defined by the wire crate).
pub use gait_wire::ALPN;

/// Largest PEM file (certificate chain or key) read from disk; real files are a few KiB.
const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// URI scheme of agent identities.
const SPIFFE_SCHEME: &str = "spiffe://";

/// The rule every tenancy identifier (org, project, env, agent id) must satisfy.
pub const IDENTIFIER_RULE: &str = "^[a-z0-9][a-z0-9._-]{0,62}$";

/// The rule a trust domain must satisfy (SPIFFE trust domain characters, lowercase).
pub const TRUST_DOMAIN_RULE: &str = "^[a-z0-9][a-z0-9._-]{0,254}$";

/// Identity and tenancy of an agent, as carried by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// SPIFFE trust domain of the deployment, e.g. `gait.local`.
    pub trust_domain: String,
    /// Organisation the agent belongs to.
    pub org: String,
    /// Project within the organisation.
    pub project: String,
    /// Environment within the project (e.g. `prod`).
    pub env: String,
    /// Agent identifier, unique within the environment.
    pub agent_id: String,
    /// Certificate serial, canonical lowercase hex (see [`pki::canonical_serial_hex`]).
    pub serial_hex: String,
    /// Certificate `notAfter` as Unix seconds.
    pub not_after_unix: i64,
}

impl AgentIdentity {
    /// An identity to issue a certificate for: serial and expiry are decided at issuance, so they are
    /// left empty here. An empty `trust_domain` means "the trust domain of the CA".
    pub fn for_issuance(
        trust_domain: impl Into<String>,
        org: impl Into<String>,
        project: impl Into<String>,
        env: impl Into<String>,
        agent_id: impl Into<String>,
    ) -> Self {
        Self {
            trust_domain: trust_domain.into(),
            org: org.into(),
            project: project.into(),
            env: env.into(),
            agent_id: agent_id.into(),
            serial_hex: String::new(),
            not_after_unix: 0,
        }
    }

    /// The agent URI SAN for this identity.
    pub fn uri(&self) -> String {
        format!(
            "{SPIFFE_SCHEME}{}/org/{}/project/{}/env/{}/agent/{}",
            self.trust_domain, self.org, self.project, self.env, self.agent_id
        )
    }

    /// Checks every tenancy field and the trust domain against their rules.
    pub fn validate(&self) -> Result<(), IdentityError> {
        validate_trust_domain(&self.trust_domain)?;
        validate_identifier("org", &self.org)?;
        validate_identifier("project", &self.project)?;
        validate_identifier("env", &self.env)?;
        validate_identifier("agent_id", &self.agent_id)
    }
}

/// Why an agent identity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The connection carries no peer certificate (handshake not finished, or no client auth).
    #[error("the connection has no verified peer certificate")]
    NoPeerCertificate,
    /// The certificate is not valid DER X.509.
    #[error("peer certificate is not a valid X.509 certificate: {0}")]
    BadCertificate(String),
    /// The certificate has no URI SAN.
    #[error(
        "certificate has no agent URI SAN (expected spiffe://<trust-domain>/org/.../agent/<id>)"
    )]
    NoAgentUri,
    /// The certificate has more than one URI SAN.
    #[error("certificate has {count} URI SANs; an agent certificate must have exactly one")]
    MultipleUris {
        /// Number of URI SANs found.
        count: usize,
    },
    /// The URI is not an agent URI.
    #[error("`{uri}` is not an agent URI: {reason}")]
    InvalidUri {
        /// The offending URI.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tenancy identifier breaks the identifier rule.
    #[error("invalid {field} `{value}`: must match {IDENTIFIER_RULE}")]
    InvalidIdentifier {
        /// Which field (`org`, `project`, `env`, `agent_id`).
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// The trust domain breaks the trust domain rule.
    #[error("invalid trust domain `{value}`: must match {TRUST_DOMAIN_RULE}")]
    InvalidTrustDomain {
        /// The offending value.
        value: String,
    },
    /// The agent URI names a trust domain other than the CA's.
    #[error("agent trust domain `{found}` does not match the CA trust domain `{expected}`")]
    ForeignTrustDomain {
        /// Trust domain of the CA.
        expected: String,
        /// Trust domain in the agent certificate.
        found: String,
    },
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {}: {source}; run `gait-aggregator pki init` to create the PKI", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM file is larger than any real certificate or key.
    #[error("{} is larger than {MAX_PEM_BYTES} bytes; it is not a certificate or key file", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A PEM file is malformed.
    #[error("{} is not valid PEM: {detail}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser reported.
        detail: String,
    },
    /// A certificate file holds no certificate.
    #[error("{} holds no CERTIFICATE block", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{} holds no private key block (PKCS#8, SEC1 or PKCS#1)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
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

/// Checks a tenancy identifier against [`IDENTIFIER_RULE`]; the error names `field`.
pub fn validate_identifier(field: &'static str, value: &str) -> Result<(), IdentityError> {
    let bytes = value.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && bytes.len() <= 63 {
        Ok(())
    } else {
        Err(IdentityError::InvalidIdentifier {
            field,
            value: value.to_owned(),
        })
    }
}

/// Checks a trust domain against [`TRUST_DOMAIN_RULE`].
pub fn validate_trust_domain(value: &str) -> Result<(), IdentityError> {
    let bytes = value.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && bytes.len() <= 255 {
        Ok(())
    } else {
        Err(IdentityError::InvalidTrustDomain {
            value: value.to_owned(),
        })
    }
}

/// Parses an agent URI strictly into `(trust_domain, org, project, env, agent_id)`.
///
/// Accepted form: `spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<agent-id>`, with no
/// port, user info, query, fragment, percent-encoding, empty or extra segments.
pub fn parse_agent_uri(
    uri: &str,
) -> Result<(String, String, String, String, String), IdentityError> {
    let invalid = |reason: &str| IdentityError::InvalidUri {
        uri: uri.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = uri
        .strip_prefix(SPIFFE_SCHEME)
        .ok_or_else(|| invalid("scheme must be spiffe://"))?;
    let (trust_domain, path) = rest
        .split_once('/')
        .ok_or_else(|| invalid("missing path /org/<org>/project/<project>/env/<env>/agent/<id>"))?;
    validate_trust_domain(trust_domain)?;
    let segments: Vec<&str> = path.split('/').collect();
    let [
        org_key,
        org,
        project_key,
        project,
        env_key,
        env,
        agent_key,
        agent_id,
    ] = segments[..]
    else {
        return Err(invalid(
            "path must be exactly /org/<org>/project/<project>/env/<env>/agent/<id>",
        ));
    };
    if org_key != "org" || project_key != "project" || env_key != "env" || agent_key != "agent" {
        return Err(invalid(
            "path must be exactly /org/<org>/project/<project>/env/<env>/agent/<id>",
        ));
    }
    validate_identifier("org", org)?;
    validate_identifier("project", project)?;
    validate_identifier("env", env)?;
    validate_identifier("agent_id", agent_id)?;
    Ok((
        trust_domain.to_owned(),
        org.to_owned(),
        project.to_owned(),
        env.to_owned(),
        agent_id.to_owned(),
    ))
}

/// Reads the agent identity from a DER certificate: exactly one URI SAN, a valid agent URI, the serial and
/// the expiry. Does not verify the certificate; callers pass only verified certificates.
pub fn identity_from_cert_der(der: &[u8]) -> Result<AgentIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris[..] {
        [] => return Err(IdentityError::NoAgentUri),
        [uri] => uri,
        _ => return Err(IdentityError::MultipleUris { count: uris.len() }),
    };
    let (trust_domain, org, project, env, agent_id) = parse_agent_uri(uri)?;
    Ok(AgentIdentity {
        trust_domain,
        org,
        project,
        env,
        agent_id,
        serial_hex: pki::canonical_serial_hex(cert.raw_serial()),
        not_after_unix: cert.validity().not_after.timestamp(),
    })
}

/// The trust domain a CA certificate declares in its `spiffe://<trust-domain>` URI SAN, if any.
pub fn ca_trust_domain(ca_der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(ca_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => {
            let domain = uri.strip_prefix(SPIFFE_SCHEME)?;
            validate_trust_domain(domain).ok()?;
            Some(domain.to_owned())
        }
        _ => None,
    })
}

/// Revoked certificate serials, shared between the handshake verifier and whoever maintains the list.
///
/// Cloning is cheap and every clone sees the same set. Serials are stored in canonical form (see
/// [`pki::normalize_serial_hex`]), so `AB:CD`, `0abcd` and `abcd` name the same certificate.
#[derive(Clone, Debug, Default)]
pub struct RevocationSet {
    serials: Arc<RwLock<HashSet<String>>>,
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `serial` revoked. Returns `false` if it was already revoked.
    pub fn insert(&self, serial: &str) -> bool {
        let serial = pki::normalize_serial_hex(serial);
        self.write().insert(serial)
    }

    /// Replaces the whole set (e.g. after reloading it from the store).
    pub fn replace_all(&self, serials: Vec<String>) {
        let fresh: HashSet<String> = serials
            .iter()
            .map(|s| pki::normalize_serial_hex(s))
            .collect();
        *self.write() = fresh;
    }

    /// Whether `serial` is revoked.
    pub fn contains(&self, serial: &str) -> bool {
        let serial = pki::normalize_serial_hex(serial);
        self.read().contains(&serial)
    }

    /// Number of revoked serials.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no serial is revoked.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    // A panic while holding the lock cannot leave the set half-updated (every update is one call), so a
    // poisoned lock still holds a consistent set.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashSet<String>> {
        self.serials.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<String>> {
        self.serials.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// QUIC transport knobs for the agent-facing endpoint.
///
/// Defaults suit many mostly idle agents: a connection holds little more than its crypto and congestion
/// state, and the windows cap what a busy one may buffer (64 KiB in, 64 KiB out). Throughput per connection
/// is about window / RTT (≈ 640 KB/s at 100 ms), ample for record batches and policy bundles.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportTuning {
    /// Connection closed after this long without any packet. Must exceed `keep_alive`.
    pub idle_timeout: Duration,
    /// Keep-alive interval agents should use (client side; the server sends none).
    pub keep_alive: Duration,
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
            keep_alive: Duration::from_secs(15),
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
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return Err(tuning(
                "keep_alive",
                "must be non-zero and shorter than idle_timeout",
            ));
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
            && *expected != identity.trust_domain
        {
            tracing::warn!(
                uri = %identity.uri(),
                serial = %identity.serial_hex,
                expected_trust_domain = %expected,
                "client certificate refused: foreign trust domain"
            );
            return Err(refusal(CertificateError::ApplicationVerificationFailure));
        }
        if self.revoked.contains(&identity.serial_hex) {
            tracing::warn!(
                uri = %identity.uri(),
                serial = %identity.serial_hex,
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

/// Reads a file of at most [`MAX_PEM_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_owned(),
        source,
    };
    let file = fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// All certificates in a PEM file, in file order; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_bounded(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            detail: other.to_string(),
        },
    })
}

/// The crypto provider every TLS configuration in this crate uses.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_agent_uri_accepts_the_canonical_form() {
        let parsed =
            parse_agent_uri("spiffe://gait.local/org/acme/project/web/env/prod/agent/ci-runner-7");
        assert_eq!(
            parsed.ok(),
            Some((
                "gait.local".to_owned(),
                "acme".to_owned(),
                "web".to_owned(),
                "prod".to_owned(),
                "ci-runner-7".to_owned()
            ))
        );
    }

    #[test]
    fn parse_agent_uri_rejects_every_deviation() {
        let bad = [
            "https://gait.local/org/a/project/b/env/c/agent/d",
            "spiffe://gait.local",
            "spiffe://gait.local/",
            "spiffe://gait.local/org/a/project/b/env/c/agent/d/",
            "spiffe://gait.local/org/a/project/b/env/c/agent/d/extra",
            "spiffe://gait.local/org/a/project/b/env/c/agent",
            "spiffe://gait.local//org/a/project/b/env/c/agent/d",
            "spiffe://gait.local/org/a/project/b/env/c/agnt/d",
            "spiffe://gait.local/org/A/project/b/env/c/agent/d",
            "spiffe://gait.local/org/a/project/b/env/c/agent/d?x=1",
            "spiffe://gait.local/org/a/project/b/env/c/agent/d#f",
            "spiffe://gait.local/org/a/project/b/env/c/agent/%64",
            "spiffe://gait.local:443/org/a/project/b/env/c/agent/d",
            "spiffe://user@gait.local/org/a/project/b/env/c/agent/d",
            "spiffe://Gait.Local/org/a/project/b/env/c/agent/d",
            "spiffe:///org/a/project/b/env/c/agent/d",
            "spiffe://gait.local/org/-a/project/b/env/c/agent/d",
            "spiffe://gait.local/org/a/project/b/env/c/agent/.d",
        ];
        for uri in bad {
            assert!(parse_agent_uri(uri).is_err(), "accepted {uri}");
        }
    }

    #[test]
    fn identifier_rule_bounds_length_and_alphabet() {
        assert!(validate_identifier("org", "a").is_ok());
        assert!(validate_identifier("org", "0a._-z").is_ok());
        assert!(validate_identifier("org", &"a".repeat(63)).is_ok());
        assert!(validate_identifier("org", &"a".repeat(64)).is_err());
        assert!(validate_identifier("org", "").is_err());
        assert!(validate_identifier("org", "_a").is_err());
        assert!(validate_identifier("org", "a/b").is_err());
        assert!(validate_identifier("org", "é").is_err());
        let message = validate_identifier("project", "Bad").map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err(format!(
                "invalid project `Bad`: must match {IDENTIFIER_RULE}"
            ))
        );
    }

    #[test]
    fn revocation_set_is_shared_between_clones_and_normalizes_serials() {
        let set = RevocationSet::new();
        let clone = set.clone();
        assert!(set.insert("0A:BC"));
        assert!(clone.contains("abc"));
        assert!(clone.contains("000abc"));
        assert!(!clone.contains("abd"));
        clone.replace_all(vec!["ff".to_owned()]);
        assert!(!set.contains("0abc"));
        assert!(set.contains("FF"));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn default_tuning_is_valid_and_small() {
        let tuning = TransportTuning::default();
        assert!(tuning.validate().is_ok());
        assert!(u64::from(tuning.receive_window) + tuning.send_window <= 128 * 1024);
        let bad = TransportTuning {
            keep_alive: tuning.idle_timeout,
            ..tuning
        };
        assert!(matches!(
            bad.validate(),
            Err(TlsError::Tuning {
                field: "keep_alive",
                ..
            })
        ));
    }
}
