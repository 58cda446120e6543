//! Signing an agent's certificate signing request (enrollment and renewal): the agent made its key itself and
//! sends only a CSR; the CA signs a client certificate for the identity the aggregator decided (from the join
//! token, or from the verified certificate being renewed), never for what the CSR asks.
//!
//! The CSR's signature is checked (proof that the sender holds the private key of the public key it wants
//! certified); its subject and extensions are ignored except that a URI SAN, if present, must be exactly the
//! identity being issued (an agent asking for another identity is refused, not silently corrected).

use rcgen::{CertificateSigningRequestParams, ExtendedKeyUsagePurpose, PublicKeyData, SanType};
use rustls::pki_types::CertificateSigningRequestDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use gait_identity::{AgentKey, CertSerial, SpiffeId, TrustDomain};

use super::*;

/// Largest CSR accepted, in bytes (a P-256 CSR is about 300 bytes; RSA-4096 about 1,700).
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a CSR was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Not a parsable PKCS#10 request, or larger than [`MAX_CSR_BYTES`].
    #[error("the CSR is not a valid PKCS#10 certificate signing request: {0}")]
    Malformed(String),
    /// The CSR's signature does not verify against its own public key: no proof of possession.
    #[error(
        "the CSR's signature does not verify against its public key (no proof of possession of the key)"
    )]
    BadSignature,
    /// A key type the agents and the aggregator do not use.
    #[error("the CSR's key type is not accepted: use an ECDSA P-256 or P-384 or an Ed25519 key")]
    KeyType,
    /// The CSR asks for an identity other than the one the aggregator issues.
    #[error("the CSR asks for `{requested}`, but this request can only be issued `{issued}`")]
    Identity {
        /// The URI SAN in the CSR.
        requested: String,
        /// The identity the aggregator decided.
        issued: String,
    },
}

/// A CSR whose signature verified: the public key to certify and the URI SANs it asked for.
pub struct VerifiedCsr {
    params: CertificateSigningRequestParams,
    requested_uris: Vec<String>,
}

impl std::fmt::Debug for VerifiedCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCsr")
            .field("requested_uris", &self.requested_uris)
            .finish_non_exhaustive()
    }
}

impl VerifiedCsr {
    /// Parses a DER CSR and checks its signature and key type.
    pub fn from_der(der: &[u8]) -> Result<Self, CsrError> {
        if der.len() > MAX_CSR_BYTES {
            return Err(CsrError::Malformed(format!(
                "{} bytes, more than the {MAX_CSR_BYTES} accepted",
                der.len()
            )));
        }
        let params =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
                .map_err(|e| match e {
                    rcgen::Error::InvalidCertificationRequestSignature => CsrError::BadSignature,
                    rcgen::Error::UnsupportedSignatureAlgorithm => CsrError::KeyType,
                    other => CsrError::Malformed(other.to_string()),
                })?;
        let alg = params.public_key.algorithm();
        let accepted = [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ];
        if !accepted.contains(&alg) {
            return Err(CsrError::KeyType);
        }
        let requested_uris = params
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str().to_owned()),
                _ => None,
            })
            .collect();
        Ok(Self {
            params,
            requested_uris,
        })
    }

    /// Parses a PEM CSR (`-----BEGIN CERTIFICATE REQUEST-----`).
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        use rustls::pki_types::pem::PemObject as _;
        if pem.len() > 2 * MAX_CSR_BYTES {
            return Err(CsrError::Malformed(format!(
                "{} bytes of PEM, more than accepted",
                pem.len()
            )));
        }
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        Self::from_der(&der)
    }

    /// The raw public key the CSR asks to certify (compared with the key of the certificate being renewed).
    pub fn public_key_raw(&self) -> &[u8] {
        self.params.public_key.der_bytes()
    }

    /// Refuses the CSR if it names an identity other than `uri`.
    fn check_identity(&self, uri: &str) -> Result<(), CsrError> {
        match self.requested_uris.iter().find(|u| u.as_str() != uri) {
            Some(other) => Err(CsrError::Identity {
                requested: other.chars().take(256).collect(),
                issued: uri.to_owned(),
            }),
            None => Ok(()),
        }
    }
}

/// An agent certificate signed for a CSR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAgent {
    /// The identity certified.
    pub spiffe: SpiffeId,
    /// Its serial.
    pub serial: CertSerial,
    /// Its expiry.
    pub not_after: OffsetDateTime,
    /// The certificate chain, leaf first, PEM.
    pub chain_pem: String,
    /// The CA certificates the agent trusts the aggregator with, PEM.
    pub ca_bundle_pem: String,
    /// The issuing CA's subject (RFC 4514 text, [`identity::subject_name`]).
    pub issuer: String,
}

/// Signs a client certificate for `agent` (under the CA's trust domain) certifying the key of `csr`, with the
/// CA in `dir`. The CSR may name no identity or exactly this one.
pub fn sign_agent_csr(
    dir: &Path,
    csr: VerifiedCsr,
    agent: &AgentKey,
    validity: Validity,
) -> Result<SignedAgent, PkiError> {
    validity.check()?;
    let ca = load_signing_ca(dir)?;
    let trust_domain = identity::ca_trust_domain(&ca.der)
        .and_then(|domain| TrustDomain::parse(&domain).ok())
        .ok_or_else(|| PkiError::NoTrustDomain {
            path: ca.cert_path.clone(),
        })?;
    let spiffe = SpiffeId::new(trust_domain, agent.tenant.clone(), agent.agent_id.clone());
    let uri = spiffe.to_string();
    csr.check_identity(&uri)?;
    let mut params = leaf_params(spiffe.agent_id.as_str(), validity)?;
    params.subject_alt_names = vec![SanType::URI(uri.clone().try_into().map_err(|source| {
        PkiError::Generate {
            what: "agent URI",
            source,
        }
    })?)];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let serial_hex = serial_hex_of(&params);
    let request = CertificateSigningRequestParams {
        params,
        public_key: csr.params.public_key,
    };
    let cert = request
        .signed_by(&ca.issuer)
        .map_err(|source| PkiError::Generate {
            what: "agent certificate",
            source,
        })?;
    let serial = CertSerial::parse(&serial_hex).map_err(|e| PkiError::Random(e.to_string()))?;
    // During and after a CA rotation the agent gets both CAs (see `rotation`).
    let bundle = super::rotation::trust_bundle_path(dir);
    let ca_bundle_pem = fs::read_to_string(&bundle).map_err(|source| io_error(&bundle, source))?;
    let issuer = identity::subject_name(&ca.der).map_err(|e| PkiError::BadCertificate {
        path: ca.cert_path.clone(),
        detail: e.to_string(),
    })?;
    Ok(SignedAgent {
        spiffe,
        serial,
        not_after: validity.not_after,
        chain_pem: cert.pem(),
        ca_bundle_pem,
        issuer,
    })
}

/// The raw subject public key of a DER certificate (to compare with a CSR's key).
pub fn cert_public_key_raw(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(cert.public_key().subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn csr_der(uri: Option<&str>) -> Vec<u8> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().expect("uri"))];
        }
        params.serialize_request(&key).expect("csr").der().to_vec()
    }

    #[test]
    fn a_csr_whose_signature_does_not_verify_proves_nothing() {
        let mut der = csr_der(None);
        assert!(VerifiedCsr::from_der(&der).is_ok());
        // The last bytes are the signature's.
        let last = der.len() - 3;
        der[last] ^= 0x01;
        assert!(matches!(
            VerifiedCsr::from_der(&der),
            Err(CsrError::BadSignature | CsrError::Malformed(_))
        ));
        assert!(matches!(
            VerifiedCsr::from_der(&[0u8; MAX_CSR_BYTES + 1]),
            Err(CsrError::Malformed(_))
        ));
    }

    #[test]
    fn the_certificate_names_the_decided_identity_and_certifies_the_csr_key()
    -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        init(tmp.path(), &InitOptions::default())?;
        let agent = AgentKey::new(
            gait_identity::Tenant::from_parts("acme", "web", "prod")?,
            "a-1".parse()?,
        );
        let uri = "spiffe://gait.local/org/acme/project/web/env/prod/agent/a-1";
        let der = csr_der(Some(uri));
        let csr = VerifiedCsr::from_der(&der)?;
        let key = csr.public_key_raw().to_vec();
        let signed = sign_agent_csr(tmp.path(), csr, &agent, Validity::days(1))?;
        assert_eq!(signed.spiffe.to_string(), uri);
        let leaf = {
            use rustls::pki_types::pem::PemObject as _;
            rustls::pki_types::CertificateDer::from_pem_slice(signed.chain_pem.as_bytes())?.to_vec()
        };
        assert_eq!(cert_public_key_raw(&leaf).as_deref(), Some(key.as_slice()));
        assert_eq!(
            identity::identity_from_cert_der(&leaf)?.serial,
            signed.serial
        );

        let foreign = VerifiedCsr::from_der(&csr_der(Some(
            "spiffe://gait.local/org/acme/project/web/env/prod/agent/other",
        )))?;
        assert!(matches!(
            sign_agent_csr(tmp.path(), foreign, &agent, Validity::days(1)),
            Err(PkiError::Csr(CsrError::Identity { .. }))
        ));
        Ok(())
    }
}
