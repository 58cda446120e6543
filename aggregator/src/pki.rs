//! Deployment-private PKI: the CA, the aggregator's server certificate and agent client certificates.
//!
//! Layout of a PKI directory (written by [`init`]):
//! - `ca.pem` / `ca.key`: self-signed ECDSA P-256 CA. Its subject names the trust domain and it carries the
//!   URI SAN `spiffe://<trust-domain>`, which is where later commands read the trust domain from.
//! - `server.pem` / `server.key`: the aggregator's certificate (EKU ServerAuth, DNS/IP SANs).
//!
//! [`issue_agent`] writes `agent.pem`, `agent.key` and a copy of `ca.pem` into an output directory; the agent
//! certificate (EKU ClientAuth) has exactly one URI SAN,
//! `spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<agent-id>`, and a random 128-bit
//! serial. Keys are PKCS#8 PEM, written with mode 0600. Files are replaced atomically (temp file + rename).

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

pub mod identity;
pub mod pem;

use crate::secrets::{self, Access};
use identity::{AgentIdentity, IdentityError, canonical_serial_hex, identity_from_cert_der};
use pem::PemError;

/// CA certificate file name in a PKI directory (and in an agent's output directory).
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key file name.
pub const CA_KEY_FILE: &str = "ca.key";
/// Aggregator server certificate file name.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// Aggregator server private key file name.
pub const SERVER_KEY_FILE: &str = "server.key";
/// Agent certificate file name in an output directory.
pub const AGENT_CERT_FILE: &str = "agent.pem";
/// Agent private key file name in an output directory.
pub const AGENT_KEY_FILE: &str = "agent.key";

/// Default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "gait.local";

/// Clock skew tolerated by freshly issued certificates: `notBefore` is backdated by this much.
const BACKDATE: Duration = Duration::minutes(5);

/// Options of [`init`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitOptions {
    /// SPIFFE trust domain recorded in the CA and in every agent URI.
    pub trust_domain: String,
    /// DNS names and IP addresses the aggregator is reached at (server certificate SANs).
    pub server_names: Vec<String>,
    /// CA lifetime in days.
    pub ca_validity_days: u32,
    /// Server certificate lifetime in days.
    pub server_validity_days: u32,
    /// Replace an existing CA (every certificate issued by the old one stops being accepted).
    pub force: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            server_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ca_validity_days: 3650,
            server_validity_days: 825,
            force: false,
        }
    }
}

/// What [`init`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    /// Trust domain recorded in the CA.
    pub trust_domain: String,
    /// `dir/ca.pem`.
    pub ca_cert_path: PathBuf,
    /// `dir/ca.key`.
    pub ca_key_path: PathBuf,
    /// `dir/server.pem`.
    pub server_cert_path: PathBuf,
    /// `dir/server.key`.
    pub server_key_path: PathBuf,
    /// CA expiry.
    pub ca_not_after: OffsetDateTime,
    /// Server certificate expiry.
    pub server_not_after: OffsetDateTime,
    /// Server certificate serial (canonical hex).
    pub server_serial_hex: String,
}

/// Validity window of an issued certificate. May lie entirely in the past (tests of expired certificates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// Valid from a few minutes ago (clock skew) for `days` days from now, capped at the RFC 5280
    /// "no well-defined expiration" date 9999-12-31T23:59:59Z.
    pub fn days(days: u32) -> Self {
        let now = now_seconds();
        let latest = time::macros::datetime!(9999-12-31 23:59:59 UTC);
        Self {
            not_before: now - BACKDATE,
            not_after: now
                .checked_add(Duration::days(i64::from(days)))
                .map_or(latest, |t| t.min(latest)),
        }
    }

    /// An explicit window, `not_before` < `not_after` (checked at issuance).
    pub fn between(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        Self {
            not_before,
            not_after,
        }
    }

    fn check(&self) -> Result<(), PkiError> {
        if self.not_before < self.not_after {
            Ok(())
        } else {
            Err(PkiError::Validity {
                not_before: self.not_before,
                not_after: self.not_after,
            })
        }
    }
}

/// An agent certificate written by [`issue_agent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedAgent {
    /// Certificate serial (canonical hex): what `revoke` takes.
    pub serial_hex: String,
    /// The agent URI SAN.
    pub uri: String,
    /// Certificate expiry.
    pub not_after: OffsetDateTime,
    /// `out_dir/agent.pem`.
    pub cert_path: PathBuf,
    /// `out_dir/agent.key`.
    pub key_path: PathBuf,
    /// `out_dir/ca.pem`.
    pub ca_path: PathBuf,
}

/// Why a PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// `init` would replace an existing CA.
    #[error(
        "{} already exists; pass --force to replace the CA (agents holding certificates from the old CA will be refused)",
        path.display()
    )]
    AlreadyInitialized {
        /// The existing CA file.
        path: PathBuf,
    },
    /// No CA in the PKI directory.
    #[error("no CA at {}; run `gait-aggregator pki init --dir {}` first", path.display(), dir.display())]
    NotInitialized {
        /// The missing file.
        path: PathBuf,
        /// The PKI directory.
        dir: PathBuf,
    },
    /// A file or directory could not be read or written.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An identity field or the trust domain is invalid.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A PEM file could not be loaded.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// The identity names a trust domain other than the CA's.
    #[error("trust domain `{requested}` does not match the CA's trust domain `{ca}`")]
    TrustDomainMismatch {
        /// Trust domain of the CA.
        ca: String,
        /// Trust domain requested.
        requested: String,
    },
    /// The CA certificate does not declare a trust domain.
    #[error("{} declares no spiffe://<trust-domain> URI SAN; it was not created by `gait-aggregator pki init`", path.display())]
    NoTrustDomain {
        /// The CA file.
        path: PathBuf,
    },
    /// `server_names` is empty.
    #[error("at least one server name (DNS name or IP address) is required")]
    NoServerNames,
    /// A server name is neither an IP address nor a DNS name.
    #[error(
        "invalid server name `{name}`: expected an IP address or a DNS name of letters, digits, '-' and '.'"
    )]
    ServerName {
        /// The offending name.
        name: String,
    },
    /// The validity window is empty or inverted.
    #[error("invalid validity: not_before {not_before} is not before not_after {not_after}")]
    Validity {
        /// Requested start.
        not_before: OffsetDateTime,
        /// Requested end.
        not_after: OffsetDateTime,
    },
    /// A certificate file is not a parsable X.509 certificate.
    #[error("{} is not a valid X.509 certificate: {detail}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        detail: String,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("{} does not hold the private key of {}; restore the matching pair or re-run `pki init --force`", key.display(), cert.display())]
    KeyMismatch {
        /// The CA certificate.
        cert: PathBuf,
        /// The CA key.
        key: PathBuf,
    },
    /// A key could not be loaded from PEM.
    #[error("{} is not a usable private key: {source}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What rcgen reported.
        source: rcgen::Error,
    },
    /// Certificate generation failed.
    #[error("cannot generate the {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// What rcgen reported.
        source: rcgen::Error,
    },
    /// The operating system's random source failed.
    #[error("cannot read random bytes for a certificate serial: {0}")]
    Random(String),
}

/// Creates the CA and the server certificate in `dir` (created if missing).
pub fn init(dir: &Path, opts: &InitOptions) -> Result<InitReport, PkiError> {
    identity::validate_trust_domain(&opts.trust_domain)?;
    let sans = server_sans(&opts.server_names)?;
    let ca_cert_path = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    if !opts.force {
        for path in [&ca_cert_path, &ca_key_path] {
            if path.try_exists().map_err(|source| io_error(path, source))? {
                return Err(PkiError::AlreadyInitialized { path: path.clone() });
            }
        }
    }
    create_private_dir(dir)?;

    let ca_validity = Validity::days(opts.ca_validity_days);
    ca_validity.check()?;
    let ca_key = generate_key("CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Gait fleet");
        dn.push(
            DnType::CommonName,
            format!("Gait fleet CA {}", opts.trust_domain),
        );
        dn
    };
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://{}", opts.trust_domain)
            .try_into()
            .map_err(|source| PkiError::Generate {
                what: "CA trust domain URI",
                source,
            })?,
    )];
    ca_params.serial_number = Some(random_serial()?);
    ca_params.not_before = ca_validity.not_before;
    ca_params.not_after = ca_validity.not_after;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| PkiError::Generate {
            what: "CA certificate",
            source,
        })?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_validity = Validity::days(opts.server_validity_days);
    server_validity.check()?;
    let server_key = generate_key("server key")?;
    let mut server_params = leaf_params("gait-aggregator", server_validity)?;
    server_params.subject_alt_names = sans;
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_serial_hex = serial_hex_of(&server_params);
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(|source| PkiError::Generate {
            what: "server certificate",
            source,
        })?;

    let server_cert_path = dir.join(SERVER_CERT_FILE);
    let server_key_path = dir.join(SERVER_KEY_FILE);
    // Keys first, certificates last: a crash leaves no certificate without its key.
    write_atomic(&ca_key_path, issuer.key().serialize_pem().as_bytes(), true)?;
    write_atomic(
        &server_key_path,
        server_key.serialize_pem().as_bytes(),
        true,
    )?;
    write_atomic(&server_cert_path, server_cert.pem().as_bytes(), false)?;
    write_atomic(&ca_cert_path, ca_cert.pem().as_bytes(), false)?;

    Ok(InitReport {
        trust_domain: opts.trust_domain.clone(),
        ca_cert_path,
        ca_key_path,
        server_cert_path,
        server_key_path,
        ca_not_after: ca_validity.not_after,
        server_not_after: server_validity.not_after,
        server_serial_hex,
    })
}

/// The trust domain of the CA in PKI directory `dir`.
pub fn trust_domain(dir: &Path) -> Result<String, PkiError> {
    let ca_cert_path = existing(dir, CA_CERT_FILE)?;
    let ca_der = first_cert(&ca_cert_path)?;
    identity::ca_trust_domain(&ca_der).ok_or(PkiError::NoTrustDomain { path: ca_cert_path })
}

/// Issues a client certificate for agent `id` with the CA in `dir`, writing `agent.pem`, `agent.key` and
/// `ca.pem` into `out_dir` (created if missing; existing files are replaced).
///
/// Only the tenancy fields of `id` are used; `serial_hex` and `not_after_unix` are decided here and
/// returned in [`IssuedAgent`]. An empty `id.trust_domain` means the CA's; any other value must equal it.
pub fn issue_agent(
    dir: &Path,
    id: &AgentIdentity,
    out_dir: &Path,
    validity: Validity,
) -> Result<IssuedAgent, PkiError> {
    validity.check()?;
    let ca_cert_path = existing(dir, CA_CERT_FILE)?;
    let ca_key_path = existing(dir, CA_KEY_FILE)?;
    let ca_der = first_cert(&ca_cert_path)?;
    let ca_trust_domain =
        identity::ca_trust_domain(&ca_der).ok_or_else(|| PkiError::NoTrustDomain {
            path: ca_cert_path.clone(),
        })?;
    if !id.trust_domain.is_empty() && id.trust_domain != ca_trust_domain {
        return Err(PkiError::TrustDomainMismatch {
            ca: ca_trust_domain,
            requested: id.trust_domain.clone(),
        });
    }
    let identity = AgentIdentity {
        trust_domain: ca_trust_domain,
        ..id.clone()
    };
    identity.validate()?;

    let ca_key = load_key_pair(&ca_key_path)?;
    check_key_matches(&ca_cert_path, &ca_der, &ca_key_path, &ca_key)?;
    let issuer = Issuer::from_ca_cert_der(&ca_der.as_slice().into(), ca_key).map_err(|e| {
        PkiError::BadCertificate {
            path: ca_cert_path.clone(),
            detail: e.to_string(),
        }
    })?;

    let uri = identity.uri();
    let agent_key = generate_key("agent key")?;
    let mut params = leaf_params(&identity.agent_id, validity)?;
    params.subject_alt_names = vec![SanType::URI(uri.clone().try_into().map_err(|source| {
        PkiError::Generate {
            what: "agent URI",
            source,
        }
    })?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let serial_hex = serial_hex_of(&params);
    let cert = params
        .signed_by(&agent_key, &issuer)
        .map_err(|source| PkiError::Generate {
            what: "agent certificate",
            source,
        })?;

    fs::create_dir_all(out_dir).map_err(|source| io_error(out_dir, source))?;
    let ca_pem = fs::read(&ca_cert_path).map_err(|source| io_error(&ca_cert_path, source))?;
    let cert_path = out_dir.join(AGENT_CERT_FILE);
    let key_path = out_dir.join(AGENT_KEY_FILE);
    let ca_path = out_dir.join(CA_CERT_FILE);
    write_atomic(&key_path, agent_key.serialize_pem().as_bytes(), true)?;
    write_atomic(&cert_path, cert.pem().as_bytes(), false)?;
    write_atomic(&ca_path, &ca_pem, false)?;

    Ok(IssuedAgent {
        serial_hex,
        uri,
        not_after: validity.not_after,
        cert_path,
        key_path,
        ca_path,
    })
}

/// Serial of the first certificate in a PEM file, canonical hex (see [`canonical_serial_hex`]).
pub fn cert_serial_hex(cert_pem: &Path) -> Result<String, PkiError> {
    let der = first_cert(cert_pem)?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| PkiError::BadCertificate {
        path: cert_pem.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(canonical_serial_hex(cert.raw_serial()))
}

/// The agent identity carried by the first certificate in a PEM file (its URI SAN, serial and expiry); the
/// error names the file. Does not verify the certificate against the CA.
pub fn cert_agent(cert_pem: &Path) -> Result<AgentIdentity, PkiError> {
    let der = first_cert(cert_pem)?;
    identity_from_cert_der(&der).map_err(|e| PkiError::BadCertificate {
        path: cert_pem.to_owned(),
        detail: e.to_string(),
    })
}

fn now_seconds() -> OffsetDateTime {
    let now = crate::clock::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn io_error(path: &Path, source: std::io::Error) -> PkiError {
    PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn existing(dir: &Path, name: &str) -> Result<PathBuf, PkiError> {
    let path = dir.join(name);
    match path.try_exists() {
        Ok(true) => Ok(path),
        Ok(false) => Err(PkiError::NotInitialized {
            path,
            dir: dir.to_owned(),
        }),
        Err(source) => Err(io_error(&path, source)),
    }
}

fn first_cert(path: &Path) -> Result<Vec<u8>, PkiError> {
    let certs = pem::load_certs(path)?;
    certs
        .into_iter()
        .next()
        .map(|c| c.to_vec())
        .ok_or_else(|| PkiError::BadCertificate {
            path: path.to_owned(),
            detail: "no certificate".to_owned(),
        })
}

fn load_key_pair(path: &Path) -> Result<KeyPair, PkiError> {
    let pem = fs::read_to_string(path).map_err(|source| io_error(path, source))?;
    KeyPair::from_pem(&pem).map_err(|source| PkiError::BadKey {
        path: path.to_owned(),
        source,
    })
}

fn check_key_matches(
    cert_path: &Path,
    cert_der: &[u8],
    key_path: &Path,
    key: &KeyPair,
) -> Result<(), PkiError> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| PkiError::BadCertificate {
        path: cert_path.to_owned(),
        detail: e.to_string(),
    })?;
    if cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw() {
        Ok(())
    } else {
        Err(PkiError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        })
    }
}

fn generate_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|source| PkiError::Generate { what, source })
}

/// 128 random bits, encoded by rcgen as a positive DER integer.
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| PkiError::Random(e.to_string()))?;
    Ok(SerialNumber::from_slice(&bytes))
}

fn serial_hex_of(params: &CertificateParams) -> String {
    params
        .serial_number
        .as_ref()
        .map(|s| canonical_serial_hex(&s.to_bytes()))
        .unwrap_or_default()
}

/// Parameters shared by server and agent certificates: CN, random serial, validity, digital signature.
fn leaf_params(common_name: &str, validity: Validity) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn
    };
    params.serial_number = Some(random_serial()?);
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn server_sans(names: &[String]) -> Result<Vec<SanType>, PkiError> {
    if names.is_empty() {
        return Err(PkiError::NoServerNames);
    }
    names
        .iter()
        .map(|name| {
            if let Ok(ip) = name.parse::<IpAddr>() {
                return Ok(SanType::IpAddress(ip));
            }
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            let bad = || PkiError::ServerName { name: name.clone() };
            if !valid {
                return Err(bad());
            }
            Ok(SanType::DnsName(
                name.to_ascii_lowercase().try_into().map_err(|_| bad())?,
            ))
        })
        .collect()
}

fn create_private_dir(dir: &Path) -> Result<(), PkiError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| io_error(dir, source))
}

/// Writes a CA file through the one secrets writer (atomic; private keys 0600).
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), PkiError> {
    let access = if private {
        Access::Private
    } else {
        Access::Public
    };
    secrets::write_atomic(path, bytes, access).map_err(|source| io_error(path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_private_keys_and_refuses_to_replace_the_ca()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("pki");
        let opts = InitOptions {
            trust_domain: "fleet.example".to_owned(),
            ..InitOptions::default()
        };
        let report = init(&dir, &opts)?;
        assert_eq!(trust_domain(&dir)?, "fleet.example");
        assert_eq!(
            report.server_serial_hex,
            cert_serial_hex(&report.server_cert_path)?
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for key in [&report.ca_key_path, &report.server_key_path] {
                assert_eq!(fs::metadata(key)?.permissions().mode() & 0o777, 0o600);
            }
        }
        let ca_before = fs::read(&report.ca_cert_path)?;
        assert!(matches!(
            init(&dir, &opts),
            Err(PkiError::AlreadyInitialized { .. })
        ));
        assert_eq!(fs::read(&report.ca_cert_path)?, ca_before);
        init(
            &dir,
            &InitOptions {
                force: true,
                ..opts
            },
        )?;
        assert_ne!(fs::read(&report.ca_cert_path)?, ca_before);
        Ok(())
    }

    #[test]
    fn issue_agent_writes_the_bundle_and_validates_identifiers()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("pki");
        let out = tmp.path().join("agent");
        init(&dir, &InitOptions::default())?;
        let id = AgentIdentity::for_issuance("", "acme", "web", "prod", "a-1");
        let issued = issue_agent(&dir, &id, &out, Validity::days(1))?;
        assert_eq!(
            issued.uri,
            "spiffe://gait.local/org/acme/project/web/env/prod/agent/a-1"
        );
        assert_eq!(issued.serial_hex, cert_serial_hex(&issued.cert_path)?);
        assert_eq!(
            fs::read(&issued.ca_path)?,
            fs::read(dir.join(CA_CERT_FILE))?
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&issued.key_path)?.permissions().mode() & 0o777,
                0o600
            );
        }
        let second = issue_agent(&dir, &id, &out, Validity::days(1))?;
        assert_ne!(second.serial_hex, issued.serial_hex);

        let bad = AgentIdentity::for_issuance("", "acme", "Web", "prod", "a-1");
        let message = issue_agent(&dir, &bad, &out, Validity::days(1))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("invalid project `Web`"), "{message}");
        assert!(message.contains(identity::IDENTIFIER_RULE), "{message}");

        let foreign = AgentIdentity::for_issuance("other.example", "acme", "web", "prod", "a-1");
        assert!(matches!(
            issue_agent(&dir, &foreign, &out, Validity::days(1)),
            Err(PkiError::TrustDomainMismatch { .. })
        ));
        let now = now_seconds();
        assert!(matches!(
            issue_agent(&dir, &id, &out, Validity::between(now, now)),
            Err(PkiError::Validity { .. })
        ));
        Ok(())
    }

    #[test]
    fn issue_agent_without_a_ca_says_to_run_init() {
        let message = issue_agent(
            Path::new("/nonexistent/pki"),
            &AgentIdentity::for_issuance("", "a", "b", "c", "d"),
            Path::new("/nonexistent/out"),
            Validity::days(1),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(message.contains("gait-aggregator pki init"), "{message}");
    }

    #[test]
    fn issue_agent_detects_a_ca_key_that_does_not_match() -> Result<(), Box<dyn std::error::Error>>
    {
        let tmp = tempfile::tempdir()?;
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        init(&a, &InitOptions::default())?;
        init(&b, &InitOptions::default())?;
        fs::copy(b.join(CA_KEY_FILE), a.join(CA_KEY_FILE))?;
        let id = AgentIdentity::for_issuance("", "a", "b", "c", "d");
        assert!(matches!(
            issue_agent(&a, &id, &tmp.path().join("out"), Validity::days(1)),
            Err(PkiError::KeyMismatch { .. })
        ));
        Ok(())
    }

    #[test]
    fn validity_days_never_overflows() {
        let validity = Validity::days(u32::MAX);
        assert_eq!(validity.not_after.year(), 9999);
    }

    #[test]
    fn server_names_become_ip_and_dns_sans() {
        let sans = server_sans(&["localhost".to_owned(), "::1".to_owned()]);
        assert!(matches!(
            sans.as_deref(),
            Ok([SanType::DnsName(_), SanType::IpAddress(_)])
        ));
        assert!(matches!(
            server_sans(&["bad name".to_owned()]),
            Err(PkiError::ServerName { .. })
        ));
        assert!(matches!(server_sans(&[]), Err(PkiError::NoServerNames)));
    }
}
