//! Agent identity as carried by its certificate: the tenancy identifier and trust-domain rules, the SPIFFE
//! agent URI, and the canonical form of certificate serials.
//!
//! The types and rules themselves are `gait-identity`'s ([`SpiffeId`], [`CertSerial`], the identifier rule);
//! this module reads them out of X.509 certificates for the CA side and the QUIC server side.

use gait_identity::{AgentKey, CertSerial, SpiffeId, Tenant, TrustDomain};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// URI scheme of agent identities.
const SPIFFE_SCHEME: &str = "spiffe://";

/// The rule every tenancy identifier (org, project, env, agent id) must satisfy.
pub use gait_identity::IDENTIFIER_RULE;

/// The rule a trust domain must satisfy (SPIFFE trust domain characters, lowercase).
pub use gait_identity::TRUST_DOMAIN_RULE;

/// Identity and tenancy of an agent, as carried by its verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The agent's SPIFFE id (trust domain, tenant, agent id): the certificate's one URI SAN.
    pub spiffe: SpiffeId,
    /// Certificate serial.
    pub serial: CertSerial,
    /// Certificate `notAfter` as Unix seconds.
    pub not_after_unix: i64,
    /// The issuer's distinguished name (RFC 4514 text, [`issuer_name`]): the CA the certificate chains to.
    pub issuer: String,
}

impl AgentIdentity {
    /// The agent URI SAN.
    pub fn uri(&self) -> String {
        self.spiffe.to_string()
    }

    /// The agent's store key (tenant and agent id).
    pub fn key(&self) -> AgentKey {
        self.spiffe.agent_key()
    }

    /// The tenant the agent belongs to.
    pub fn tenant(&self) -> &Tenant {
        &self.spiffe.tenant
    }
}

/// The agent a certificate is to be issued for ([`crate::pki::issue_agent`]): serial and expiry are decided at
/// issuance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentToIssue {
    /// The trust domain to issue under; `None` means the CA's (any other value must equal it).
    pub trust_domain: Option<TrustDomain>,
    /// Tenant and agent id.
    pub agent: AgentKey,
}

impl AgentToIssue {
    /// An agent under the CA's trust domain.
    pub fn new(agent: AgentKey) -> Self {
        AgentToIssue {
            trust_domain: None,
            agent,
        }
    }

    /// From text, each part checked under the `gait-identity` rules; an empty `trust_domain` means the CA's.
    pub fn parse(
        trust_domain: &str,
        org: &str,
        project: &str,
        env: &str,
        agent_id: &str,
    ) -> Result<Self, IdentityError> {
        let trust_domain =
            match trust_domain {
                "" => None,
                text => Some(TrustDomain::parse(text).map_err(|_| {
                    IdentityError::InvalidTrustDomain {
                        value: text.to_owned(),
                    }
                })?),
            };
        Ok(AgentToIssue {
            trust_domain,
            agent: AgentKey::new(Tenant::from_parts(org, project, env)?, agent_id.parse()?),
        })
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
    /// A tenancy identifier breaks the shared `gait-identity` rule.
    #[error(transparent)]
    Identifier(#[from] gait_identity::IdError),
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

/// Checks a tenancy identifier against [`IDENTIFIER_RULE`]; the error names `field`.
pub fn validate_identifier(field: &'static str, value: &str) -> Result<(), IdentityError> {
    // Org, project, env and agent id share one rule; gait-identity owns it.
    gait_identity::Org::parse(value)
        .map(drop)
        .map_err(|_| IdentityError::InvalidIdentifier {
            field,
            value: value.to_owned(),
        })
}

/// Checks a trust domain against [`TRUST_DOMAIN_RULE`].
pub fn validate_trust_domain(value: &str) -> Result<(), IdentityError> {
    gait_identity::TrustDomain::parse(value)
        .map(drop)
        .map_err(|_| IdentityError::InvalidTrustDomain {
            value: value.to_owned(),
        })
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
    let spiffe = SpiffeId::parse(uri).map_err(|e| IdentityError::InvalidUri {
        uri: uri.chars().take(256).collect(),
        reason: e.to_string(),
    })?;
    let serial = CertSerial::from_der_bytes(cert.raw_serial())
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    Ok(AgentIdentity {
        spiffe,
        serial,
        not_after_unix: cert.validity().not_after.timestamp(),
        issuer: issuer_name(&cert),
    })
}

/// The distinguished name of the CA that issued `cert`, as RFC 4514 text. Certificates chain by name, so this
/// equals [`subject_name`] of the CA certificate that signed it; the store records it to tell which CA an
/// agent's certificate depends on.
pub fn issuer_name(cert: &X509Certificate<'_>) -> String {
    cert.issuer().to_string()
}

/// The subject distinguished name of a DER certificate (a CA's, to compare with [`issuer_name`]).
pub fn subject_name(der: &[u8]) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    Ok(cert.subject().to_string())
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

/// Canonical text form of a certificate serial from its DER INTEGER content ([`CertSerial::from_der_bytes`]).
/// A serial longer than RFC 5280 allows keeps its full hex so it still names that certificate (and matches no
/// canonical revocation).
pub fn canonical_serial_hex(raw: &[u8]) -> String {
    match CertSerial::from_der_bytes(raw) {
        Ok(serial) => serial.as_str().to_owned(),
        Err(_) => hex::encode(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_uris_parse_into_their_parts() {
        let id =
            SpiffeId::parse("spiffe://gait.local/org/acme/project/web/env/prod/agent/ci-runner-7")
                .expect("canonical form");
        assert_eq!(id.trust_domain.as_str(), "gait.local");
        assert_eq!(id.tenant.to_string(), "acme/web/prod");
        assert_eq!(id.agent_id.as_str(), "ci-runner-7");
    }

    #[test]
    fn agent_uris_with_any_deviation_are_refused() {
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
            assert!(SpiffeId::parse(uri).is_err(), "accepted {uri}");
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
    fn canonical_serials_are_gait_identity_serials() {
        assert_eq!(canonical_serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(canonical_serial_hex(&[0x0a, 0xbc]), "0abc");
        assert_eq!(canonical_serial_hex(&[0, 0]), "00");
        assert_eq!(canonical_serial_hex(&[0x01; 21]), "01".repeat(21));
    }
}
