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
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

mod ca;
pub mod csr;
pub mod identity;
mod issue;
pub mod pem;
pub mod retire;
pub mod revocation;
pub mod rotation;

pub use ca::{
    InitOptions, InitReport, ReissuedServer, init, reissue_server, server_cert_names, trust_domain,
    uncovered_server_names,
};
pub use csr::{CsrError, SignedAgent, VerifiedCsr, sign_agent_csr};
pub use issue::{IssuedAgent, Validity, cert_agent, cert_serial_hex, issue_agent};
pub use retire::{RetireError, RetireReport, RetiredCaHolder, retire_ca};
pub use rotation::{
    RotationPhase, RotationReport, rotate_ca_finish, rotate_ca_start, rotation_phase,
    trust_bundle_path,
};

use crate::secrets::{self, Access};
use identity::{IdentityError, canonical_serial_hex};
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
    /// An agent's certificate signing request was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// `rotate-ca` while a rotation is in progress.
    #[error(
        "a CA rotation is in progress ({} exists): finish it first with `gait-aggregator pki rotate-ca --finish`",
        path.display()
    )]
    RotationInProgress {
        /// The retired CA's key, present until the rotation finishes.
        path: PathBuf,
    },
    /// `rotate-ca` after a finished rotation whose retired CA is still trusted.
    #[error(
        "the CA retired by the previous rotation is still trusted ({} exists): run `gait-aggregator pki retire-ca` \
         before rotating again (a new rotation would drop it without checking which agents still hold its certificates)",
        path.display()
    )]
    PreviousNotRetired {
        /// The retired CA's certificate.
        path: PathBuf,
    },
    /// `rotate-ca --finish` without a rotation in progress.
    #[error("no CA rotation is in progress in {}: start one with `gait-aggregator pki rotate-ca`", dir.display())]
    NoRotation {
        /// The PKI directory.
        dir: PathBuf,
    },
    /// The operating system's random source failed.
    #[error("cannot read random bytes for a certificate serial: {0}")]
    Random(String),
    /// `retire-ca` while the rotation is not finished (the server certificate is still the retired CA's).
    #[error(
        "the CA rotation in {} is not finished: the server certificate still comes from the CA to retire; run \
         `gait-aggregator pki rotate-ca --finish`, restart the aggregator, then retire",
        dir.display()
    )]
    RotationNotFinished {
        /// The PKI directory.
        dir: PathBuf,
    },
    /// `retire-ca` with no retired CA left to drop.
    #[error(
        "no retired CA in {} (no {} file): nothing to retire; a rotation starts with `gait-aggregator pki rotate-ca`",
        dir.display(), rotation::PREVIOUS_CA_CERT_FILE
    )]
    NothingToRetire {
        /// The PKI directory.
        dir: PathBuf,
    },
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

/// The CA of a PKI directory, loaded to sign certificates: its certificate (path and DER) and an issuer whose
/// key was checked against the certificate.
struct SigningCa {
    cert_path: PathBuf,
    der: Vec<u8>,
    issuer: rcgen::Issuer<'static, KeyPair>,
}

/// Loads `dir/ca.pem` and `dir/ca.key`, refusing a key that does not belong to the certificate.
fn load_signing_ca(dir: &Path) -> Result<SigningCa, PkiError> {
    let cert_path = existing(dir, CA_CERT_FILE)?;
    let key_path = existing(dir, CA_KEY_FILE)?;
    let der = first_cert(&cert_path)?;
    let key = load_key_pair(&key_path)?;
    check_key_matches(&cert_path, &der, &key_path, &key)?;
    let issuer = rcgen::Issuer::from_ca_cert_der(&der.as_slice().into(), key).map_err(|e| {
        PkiError::BadCertificate {
            path: cert_path.clone(),
            detail: e.to_string(),
        }
    })?;
    Ok(SigningCa {
        cert_path,
        der,
        issuer,
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
    use super::identity::AgentToIssue;
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
        let id = AgentToIssue::parse("", "acme", "web", "prod", "a-1")?;
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

        let message = AgentToIssue::parse("", "acme", "Web", "prod", "a-1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("invalid project \"Web\""), "{message}");
        assert!(message.contains(identity::IDENTIFIER_RULE), "{message}");

        let foreign = AgentToIssue::parse("other.example", "acme", "web", "prod", "a-1")?;
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
            &AgentToIssue::parse("", "a", "b", "c", "d").expect("valid"),
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
        let id = AgentToIssue::parse("", "a", "b", "c", "d")?;
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
}
