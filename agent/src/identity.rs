//! The agent's identity and tenancy, read from the URI SAN of its OWN client certificate
//! (`spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<id>`).
//!
//! This is the scope every offered policy bundle is checked against. It never comes from the aggregator: a
//! compromised or misconfigured server must not be able to make an agent enforce another tenant's policy.
//! This module only reads the certificate; the URI grammar is `gait_identity::SpiffeId`, the same parser the
//! aggregator's CA and handshake use, so the two ends can never disagree about what a segment says.

use std::path::{Path, PathBuf};

use gait_identity::{
    AgentId, Env, Org, Project, SPIFFE_SCHEME, SpiffeId, SpiffeIdError, Tenant, TrustDomain,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// Errors reading the agent's identity from its certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The certificate file could not be read or holds no PEM certificate.
    #[error("cannot read a PEM certificate from {path}: {detail}")]
    Pem { path: PathBuf, detail: String },
    /// The DER bytes are not an X.509 certificate.
    #[error("the agent certificate is not valid X.509: {0}")]
    X509(String),
    /// The certificate has no URI SAN of the agent form.
    #[error(
        "the agent certificate has no URI SAN of the form \
         spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<id>{found}"
    )]
    NoAgentUri { found: String },
    /// The certificate has more than one URI SAN. An X.509 SVID carries exactly one (SPIFFE X509-SVID
    /// section 2), and the aggregator refuses any other certificate at the handshake.
    #[error(
        "the agent certificate has {count} URI SANs ({found}); an agent certificate must have exactly one, \
         its spiffe:// agent id (issue one with `gait-aggregator pki issue-agent`)"
    )]
    MultipleUris { count: usize, found: String },
    /// A URI looked like an agent identity but is malformed.
    #[error("invalid agent identity uri {uri:?}: {source}")]
    BadUri {
        uri: String,
        #[source]
        source: SpiffeIdError,
    },
}

/// Who this agent is and which tenancy scope it enforces, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    /// The full SPIFFE URI from the certificate.
    pub uri: String,
    /// SPIFFE trust domain (the deployment's CA namespace).
    pub trust_domain: TrustDomain,
    /// Organisation.
    pub org: Org,
    /// Project inside the organisation.
    pub project: Project,
    /// Environment inside the project.
    pub env: Env,
    /// This agent's id.
    pub agent_id: AgentId,
    /// Certificate expiry, seconds since the Unix epoch (0 when parsed from a bare URI).
    pub cert_not_after_unix: i64,
}

impl AgentIdentity {
    /// Reads the first certificate of a PEM file (the leaf of a chain) and extracts the identity.
    pub fn from_cert_file(path: &Path) -> Result<Self, IdentityError> {
        let pem = std::fs::read(path).map_err(|e| IdentityError::Pem {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
        Self::from_cert_pem(&pem).map_err(|e| match e {
            IdentityError::Pem { detail, .. } => IdentityError::Pem {
                path: path.to_path_buf(),
                detail,
            },
            other => other,
        })
    }

    /// Extracts the identity from the first certificate in PEM text.
    pub fn from_cert_pem(pem: &[u8]) -> Result<Self, IdentityError> {
        let der = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or_else(|| IdentityError::Pem {
                path: PathBuf::from("<memory>"),
                detail: "no CERTIFICATE block".to_owned(),
            })?
            .map_err(|e| IdentityError::Pem {
                path: PathBuf::from("<memory>"),
                detail: e.to_string(),
            })?;
        Self::from_cert_der(&der)
    }

    /// Extracts the identity from a DER certificate: it must have exactly one URI SAN, the agent's SPIFFE id
    /// (the aggregator's rule, so a certificate the aggregator would refuse is refused here at start-up).
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::X509(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::X509(e.to_string()))?;
        let uris: Vec<&str> = san
            .map(|ext| {
                ext.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::URI(uri) => Some(*uri),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let uri = match uris[..] {
            [uri] => uri,
            [] => {
                return Err(IdentityError::NoAgentUri {
                    found: " (it has none)".to_owned(),
                });
            }
            _ => {
                return Err(IdentityError::MultipleUris {
                    count: uris.len(),
                    found: uris.join(", "),
                });
            }
        };
        if !uri.starts_with(SPIFFE_SCHEME) {
            return Err(IdentityError::NoAgentUri {
                found: format!(" (found {uri})"),
            });
        }
        let mut id = Self::from_uri(uri)?;
        id.cert_not_after_unix = cert.validity().not_after.timestamp();
        Ok(id)
    }

    /// Parses `spiffe://<td>/org/<o>/project/<p>/env/<e>/agent/<id>` with [`SpiffeId::parse`].
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let id = SpiffeId::parse(uri).map_err(|source| IdentityError::BadUri {
            uri: uri.to_owned(),
            source,
        })?;
        Ok(Self::from_spiffe_id(id))
    }

    /// The identity named by a parsed SPIFFE id (no certificate, so `cert_not_after_unix` is 0).
    pub fn from_spiffe_id(id: SpiffeId) -> Self {
        AgentIdentity {
            uri: id.to_string(),
            trust_domain: id.trust_domain,
            org: id.tenant.org,
            project: id.tenant.project,
            env: id.tenant.env,
            agent_id: id.agent_id,
            cert_not_after_unix: 0,
        }
    }

    /// The tenancy scope this agent enforces.
    pub fn tenant(&self) -> Tenant {
        Tenant::new(self.org.clone(), self.project.clone(), self.env.clone())
    }

    /// The SPIFFE id of this agent.
    pub fn spiffe_id(&self) -> SpiffeId {
        SpiffeId::new(
            self.trust_domain.clone(),
            self.tenant(),
            self.agent_id.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_agent_uri_yields_every_segment() {
        let id = AgentIdentity::from_uri(
            "spiffe://fleet.example/org/acme/project/pay/env/prod/agent/a-1",
        )
        .unwrap();
        assert_eq!(id.trust_domain, "fleet.example");
        assert_eq!(
            (&*id.org, &*id.project, &*id.env, &*id.agent_id),
            ("acme", "pay", "prod", "a-1")
        );
    }

    #[test]
    fn malformed_agent_uris_are_refused() {
        for uri in [
            "https://fleet.example/org/a/project/b/env/c/agent/d",
            "spiffe:///org/a/project/b/env/c/agent/d",
            "spiffe://Fleet/org/a/project/b/env/c/agent/d",
            "spiffe://fleet/org/a/project/b/env/c",
            "spiffe://fleet/org/a/project/b/env/c/agent/d/extra",
            "spiffe://fleet/org/a/proj/b/env/c/agent/d",
            "spiffe://fleet/org//project/b/env/c/agent/d",
            "spiffe://fleet/org/a%2f/project/b/env/c/agent/d",
            "spiffe://fleet/org/../project/b/env/c/agent/d",
            "spiffe://fleet/org/a/project/b/env/c/agent/d/",
            "spiffe://fleet/org/Acme/project/b/env/c/agent/d",
            "spiffe://fleet/org/_a/project/b/env/c/agent/d",
            "spiffe://fleet:8443/org/a/project/b/env/c/agent/d",
        ] {
            assert!(AgentIdentity::from_uri(uri).is_err(), "{uri} was accepted");
        }
    }

    fn cert_with_sans(sans: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.subject_alt_names = sans
            .iter()
            .map(|s| rcgen::SanType::URI((*s).try_into().unwrap()))
            .collect();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_bad_uri_error_says_what_is_wrong() {
        let err = AgentIdentity::from_uri("spiffe://td/org/a/project/B/env/c/agent/d")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid project \"B\""), "{err}");
    }

    #[test]
    fn the_identity_serializes_with_plain_string_fields() {
        let id = AgentIdentity::from_uri("spiffe://td/org/o/project/p/env/e/agent/a-1").unwrap();
        let json = serde_json::to_value(&id).unwrap();
        assert_eq!(json["org"], "o");
        assert_eq!(json["agent_id"], "a-1");
        assert_eq!(json["uri"], "spiffe://td/org/o/project/p/env/e/agent/a-1");
        let back: AgentIdentity = serde_json::from_value(json).unwrap();
        assert_eq!(back, id);
        assert_eq!(id.spiffe_id().to_string(), id.uri);
        assert_eq!(id.tenant().to_string(), "o/p/e");
    }

    #[test]
    fn identity_comes_from_the_certificate_uri_san() {
        let der = cert_with_sans(&["spiffe://td/org/o1/project/p1/env/e1/agent/x9"]);
        let id = AgentIdentity::from_cert_der(&der).unwrap();
        assert_eq!(id.agent_id, "x9");
        assert_eq!(id.org, "o1");
        assert!(id.cert_not_after_unix > 0);
    }

    #[test]
    fn a_certificate_without_an_agent_uri_is_refused_listing_what_it_has() {
        let der = cert_with_sans(&["urn:example:other"]);
        let err = AgentIdentity::from_cert_der(&der).unwrap_err().to_string();
        assert!(err.contains("urn:example:other"), "{err}");
    }

    #[test]
    fn a_certificate_with_a_second_uri_san_is_refused_naming_both() {
        for sans in [
            [
                "spiffe://td/org/o/project/p/env/e/agent/a",
                "spiffe://td/org/o/project/p/env/e/agent/b",
            ],
            [
                "urn:example:other",
                "spiffe://td/org/o/project/p/env/e/agent/a",
            ],
        ] {
            let err = AgentIdentity::from_cert_der(&cert_with_sans(&sans)).unwrap_err();
            assert!(
                matches!(err, IdentityError::MultipleUris { count: 2, .. }),
                "{err}"
            );
            let text = err.to_string();
            assert!(text.contains(sans[0]) && text.contains(sans[1]), "{text}");
        }
    }

    #[test]
    fn pem_without_a_certificate_is_an_error_not_a_panic() {
        assert!(AgentIdentity::from_cert_pem(b"not pem").is_err());
    }
}

/// Name of the file in the agent's data directory that holds its instance id.
pub const INSTANCE_ID_FILE: &str = "instance_id";

/// Errors loading or creating the agent's instance id file.
#[derive(Debug, thiserror::Error)]
pub enum InstanceIdError {
    /// The file exists but could not be read.
    #[error("cannot read the agent instance id from {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file does not hold 32 hex digits.
    #[error(
        "{path} does not hold an agent instance id (32 hex digits); it was damaged or edited. Delete it to \
         make a new one: the aggregator will then see a new instance of this agent (and raise an alert if \
         its records are behind)"
    )]
    Invalid { path: PathBuf },
    /// No randomness was available.
    #[error("cannot draw a random agent instance id: {0}")]
    Random(String),
    /// The new file could not be written.
    #[error("cannot write the agent instance id to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The instance id of the agent data directory `data_dir`: read from its [`INSTANCE_ID_FILE`], or drawn at
/// random (128 bits) and written there (mode 0600, atomically) at the first start. The id says "this data
/// directory", so a second process with the same certificate but another data directory is told apart; a
/// copied data directory copies the id too and cannot be told apart by it (its records then conflict).
pub fn load_or_create_instance_id(
    data_dir: &Path,
) -> Result<gait_wire::InstanceId, InstanceIdError> {
    let path = data_dir.join(INSTANCE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return gait_wire::InstanceId::from_hex(text.trim())
                .ok_or(InstanceIdError::Invalid { path });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(InstanceIdError::Read { path, source }),
    }
    let mut bytes = [0u8; gait_wire::INSTANCE_ID_LEN];
    getrandom::fill(&mut bytes).map_err(|e| InstanceIdError::Random(e.to_string()))?;
    let id = gait_wire::InstanceId(bytes);
    let write = |path: &Path| -> std::io::Result<()> {
        crate::gate::files::create_parent_dirs(path)?;
        crate::gate::files::write_atomic(path, format!("{}\n", id.to_hex()).as_bytes())
    };
    write(&path).map_err(|source| InstanceIdError::Write {
        path: path.clone(),
        source,
    })?;
    tracing::info!(instance_id = %id, path = %path.display(), "made this agent data directory's instance id");
    Ok(id)
}

#[cfg(test)]
mod instance_id_tests {
    use super::*;

    #[test]
    fn the_instance_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_instance_id(dir.path()).unwrap();
        let again = load_or_create_instance_id(dir.path()).unwrap();
        assert_eq!(first, again, "a restart keeps the instance id");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(INSTANCE_ID_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            load_or_create_instance_id(other.path()).unwrap(),
            first,
            "another data directory is another instance"
        );
    }

    #[test]
    fn a_damaged_instance_id_file_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INSTANCE_ID_FILE), "not hex\n").unwrap();
        let e = load_or_create_instance_id(dir.path()).unwrap_err();
        assert!(matches!(e, InstanceIdError::Invalid { .. }));
        assert!(e.to_string().contains(INSTANCE_ID_FILE), "{e}");
    }
}
