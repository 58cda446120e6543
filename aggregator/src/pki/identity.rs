//! Agent identity as carried by its certificate: the tenancy identifier and trust-domain rules, the SPIFFE
//! agent URI, and the canonical form of certificate serials.
//!
//! Moved here as it was from `tls.rs` and `pki.rs` so the CA side and the QUIC server side share one copy
//! without importing each other; the `gait-identity` crate is to replace it.

use gait_identity::{AgentKey, CertSerial, SpiffeId, Tenant};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// URI scheme of agent identities.
const SPIFFE_SCHEME: &str = "spiffe://";

/// The rule every tenancy identifier (org, project, env, agent id) must satisfy.
pub use gait_identity::IDENTIFIER_RULE;

/// The rule a trust domain must satisfy (SPIFFE trust domain characters, lowercase).
pub use gait_identity::TRUST_DOMAIN_RULE;

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
    /// Certificate serial, canonical lowercase hex (see [`canonical_serial_hex`]).
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

    /// The store key and certificate serial of this identity as `gait-identity` types (the tenancy parts
    /// and the serial are parsed again under the shared rule).
    pub fn typed(&self) -> Result<(AgentKey, CertSerial), IdentityError> {
        let key = AgentKey::new(
            Tenant::from_parts(&self.org, &self.project, &self.env)?,
            self.agent_id.parse()?,
        );
        let serial = CertSerial::parse(&self.serial_hex).map_err(|e| {
            IdentityError::BadCertificate(format!("serial {:?}: {e}", self.serial_hex))
        })?;
        Ok((key, serial))
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

/// Parses an agent URI strictly into `(trust_domain, org, project, env, agent_id)` with
/// [`SpiffeId::parse`], the one SPIFFE parser of the project.
///
/// Accepted form: `spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<agent-id>`, with no
/// port, user info, query, fragment, percent-encoding, empty or extra segments.
pub fn parse_agent_uri(
    uri: &str,
) -> Result<(String, String, String, String, String), IdentityError> {
    let id = SpiffeId::parse(uri).map_err(|e| IdentityError::InvalidUri {
        uri: uri.chars().take(256).collect(),
        reason: e.to_string(),
    })?;
    Ok((
        id.trust_domain.to_string(),
        id.tenant.org.into_string(),
        id.tenant.project.into_string(),
        id.tenant.env.into_string(),
        id.agent_id.into_string(),
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
        serial_hex: canonical_serial_hex(cert.raw_serial()),
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
    fn canonical_serials_are_gait_identity_serials() {
        assert_eq!(canonical_serial_hex(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(canonical_serial_hex(&[0x0a, 0xbc]), "0abc");
        assert_eq!(canonical_serial_hex(&[0, 0]), "00");
        assert_eq!(canonical_serial_hex(&[0x01; 21]), "01".repeat(21));
    }
}
