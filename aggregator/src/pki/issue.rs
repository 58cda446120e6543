//! Agent certificates: `pki issue-agent` signs a client certificate for one agent identity with the CA, and
//! the helpers that read a serial or an identity back from a certificate file.

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{ExtendedKeyUsagePurpose, SanType};
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use gait_identity::{SpiffeId, TrustDomain};

use super::identity::{AgentIdentity, AgentToIssue, canonical_serial_hex, identity_from_cert_der};
use super::*;

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

    pub(super) fn check(&self) -> Result<(), PkiError> {
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

/// Issues a client certificate for agent `id` with the CA in `dir`, writing `agent.pem`, `agent.key` and
/// `ca.pem` into `out_dir` (created if missing; existing files are replaced). Serial and expiry are decided
/// here and returned in [`IssuedAgent`]; `id.trust_domain`, when given, must be the CA's.
pub fn issue_agent(
    dir: &Path,
    id: &AgentToIssue,
    out_dir: &Path,
    validity: Validity,
) -> Result<IssuedAgent, PkiError> {
    validity.check()?;
    let ca = load_signing_ca(dir)?;
    let ca_trust_domain = identity::ca_trust_domain(&ca.der)
        .and_then(|domain| TrustDomain::parse(&domain).ok())
        .ok_or_else(|| PkiError::NoTrustDomain {
            path: ca.cert_path.clone(),
        })?;
    if let Some(requested) = &id.trust_domain
        && *requested != ca_trust_domain
    {
        return Err(PkiError::TrustDomainMismatch {
            ca: ca_trust_domain.to_string(),
            requested: requested.to_string(),
        });
    }
    let spiffe = SpiffeId::new(
        ca_trust_domain,
        id.agent.tenant.clone(),
        id.agent.agent_id.clone(),
    );

    let uri = spiffe.to_string();
    let agent_key = generate_key("agent key")?;
    let mut params = leaf_params(spiffe.agent_id.as_str(), validity)?;
    params.subject_alt_names = vec![SanType::URI(uri.clone().try_into().map_err(|source| {
        PkiError::Generate {
            what: "agent URI",
            source,
        }
    })?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let serial_hex = serial_hex_of(&params);
    let cert = params
        .signed_by(&agent_key, &ca.issuer)
        .map_err(|source| PkiError::Generate {
            what: "agent certificate",
            source,
        })?;

    fs::create_dir_all(out_dir).map_err(|source| io_error(out_dir, source))?;
    // During and after a CA rotation the agent gets both CAs (see `rotation`).
    let bundle = super::rotation::trust_bundle_path(dir);
    let ca_pem = fs::read(&bundle).map_err(|source| io_error(&bundle, source))?;
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
