//! The agent's identity and tenancy, read from the URI SAN of its OWN client certificate
//! (`spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<id>`).
//!
//! This is the scope every offered policy bundle is checked against. It never comes from the aggregator: a
//! compromised or misconfigured server must not be able to make an agent enforce another tenant's policy.
//! Segments follow the SPIFFE ID character rules (letters, digits, `.`, `-`, `_`); anything else is refused
//! rather than normalised, so the agent and the aggregator can never disagree about what a segment says.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

/// URI scheme of agent identities.
const SCHEME: &str = "spiffe://";

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
    /// More than one URI SAN names an agent, so the identity is ambiguous.
    #[error("the agent certificate names more than one agent identity: {0} and {1}")]
    Ambiguous(String, String),
    /// A URI looked like an agent identity but is malformed.
    #[error("invalid agent identity uri {uri:?}: {reason}")]
    BadUri { uri: String, reason: &'static str },
}

/// Who this agent is and which tenancy scope it enforces, as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentIdentity {
    /// The full SPIFFE URI from the certificate.
    pub uri: String,
    /// SPIFFE trust domain (the deployment's CA namespace).
    pub trust_domain: String,
    /// Organisation.
    pub org: String,
    /// Project inside the organisation.
    pub project: String,
    /// Environment inside the project.
    pub env: String,
    /// This agent's id.
    pub agent_id: String,
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

    /// Extracts the identity from a DER certificate: exactly one URI SAN must be an agent identity.
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
        let mut found: Option<AgentIdentity> = None;
        let mut first_error = None;
        for uri in &uris {
            match Self::from_uri(uri) {
                Ok(id) => {
                    if let Some(prev) = &found {
                        return Err(IdentityError::Ambiguous(prev.uri.clone(), id.uri));
                    }
                    found = Some(id);
                }
                Err(e) => {
                    if uri.starts_with(SCHEME) && first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
        match (found, first_error) {
            (Some(mut id), _) => {
                id.cert_not_after_unix = cert.validity().not_after.timestamp();
                Ok(id)
            }
            (None, Some(e)) => Err(e),
            (None, None) => Err(IdentityError::NoAgentUri {
                found: if uris.is_empty() {
                    " (it has none)".to_owned()
                } else {
                    format!(" (found {})", uris.join(", "))
                },
            }),
        }
    }

    /// Parses `spiffe://<td>/org/<o>/project/<p>/env/<e>/agent/<id>`.
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let bad = |reason| IdentityError::BadUri {
            uri: uri.to_owned(),
            reason,
        };
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| bad("scheme is not spiffe://"))?;
        let mut parts = rest.split('/');
        let trust_domain = parts.next().unwrap_or_default();
        if trust_domain.is_empty()
            || !trust_domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(bad(
                "trust domain must be non-empty lowercase letters, digits, '.', '-' or '_'",
            ));
        }
        let segments: Vec<&str> = parts.collect();
        let labels = ["org", "project", "env", "agent"];
        if segments.len() != labels.len() * 2 {
            return Err(bad("path must be /org/<o>/project/<p>/env/<e>/agent/<id>"));
        }
        let mut values = Vec::with_capacity(labels.len());
        for (pair, label) in segments.chunks(2).zip(labels) {
            if pair[0] != label {
                return Err(bad("path must be /org/<o>/project/<p>/env/<e>/agent/<id>"));
            }
            let value = pair[1];
            if value.is_empty()
                || !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(bad(
                    "segments must be non-empty letters, digits, '.', '-' or '_'",
                ));
            }
            if value == "." || value == ".." {
                return Err(bad("segments must not be '.' or '..'"));
            }
            values.push(value.to_owned());
        }
        let [org, project, env, agent_id] = <[String; 4]>::try_from(values)
            .map_err(|_| bad("path must be /org/<o>/project/<p>/env/<e>/agent/<id>"))?;
        Ok(AgentIdentity {
            uri: uri.to_owned(),
            trust_domain: trust_domain.to_owned(),
            org,
            project,
            env,
            agent_id,
            cert_not_after_unix: 0,
        })
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
    fn identity_comes_from_the_certificate_uri_san() {
        let der = cert_with_sans(&[
            "urn:example:other",
            "spiffe://td/org/o1/project/p1/env/e1/agent/x9",
        ]);
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
    fn a_certificate_naming_two_agents_is_ambiguous() {
        let der = cert_with_sans(&[
            "spiffe://td/org/o/project/p/env/e/agent/a",
            "spiffe://td/org/o/project/p/env/e/agent/b",
        ]);
        assert!(matches!(
            AgentIdentity::from_cert_der(&der),
            Err(IdentityError::Ambiguous(..))
        ));
    }

    #[test]
    fn pem_without_a_certificate_is_an_error_not_a_panic() {
        assert!(AgentIdentity::from_cert_pem(b"not pem").is_err());
    }
}
