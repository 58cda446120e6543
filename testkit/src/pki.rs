//! PKI fixtures minted with the aggregator's own `pki` module: a deployment CA with its server certificate,
//! agent certificates for a tenant (valid or expired), a foreign CA (simply a second [`Pki`]), and
//! certificates with arbitrary SANs that the real tool never writes, for handshake refusal tests.

use std::path::{Path, PathBuf};

use gait_aggregator::pki::identity::AgentToIssue;
use gait_aggregator::pki::{self, InitOptions, Validity};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};

use crate::{Tenant, TestkitError};

/// Days an agent certificate from [`Pki::issue_agent`] stays valid.
const AGENT_VALIDITY_DAYS: u32 = 30;

/// A deployment CA directory (`ca.pem`, `ca.key`, `server.pem`, `server.key`), as `pki init` writes it and as
/// the aggregator reads it from `<data_dir>/pki`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    dir: PathBuf,
}

/// An agent's TLS material in one directory: its certificate and key, and the CA that issued the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCerts {
    /// The directory holding the three files.
    pub dir: PathBuf,
    /// `dir/ca.pem`: the CA the agent trusts for the aggregator's certificate.
    pub ca: PathBuf,
    /// `dir/agent.pem`.
    pub cert: PathBuf,
    /// `dir/agent.key`.
    pub key: PathBuf,
    /// Certificate serial, canonical hex (what a revocation names). Empty for [`Pki::issue_raw`].
    pub serial_hex: String,
    /// The agent URI SAN. Empty for [`Pki::issue_raw`].
    pub uri: String,
    /// Certificate expiry; `None` for [`Pki::issue_raw`].
    pub not_after: Option<time::OffsetDateTime>,
}

impl Pki {
    /// Creates a new CA with a server certificate for `localhost` and `127.0.0.1` in `dir`, under
    /// `trust_domain`. Two calls give two unrelated CAs (one is "foreign" to the other).
    pub fn create(dir: &Path, trust_domain: &str) -> Result<Pki, TestkitError> {
        let opts = InitOptions {
            trust_domain: trust_domain.to_owned(),
            ..InitOptions::default()
        };
        pki::init(dir, &opts)?;
        Ok(Pki {
            dir: dir.to_owned(),
        })
    }

    /// The CA already in `dir` (for example the one an aggregator created in `<data_dir>/pki`).
    pub fn open(dir: &Path) -> Pki {
        Pki {
            dir: dir.to_owned(),
        }
    }

    /// The CA directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join(pki::CA_CERT_FILE)
    }

    /// The aggregator's server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join(pki::SERVER_CERT_FILE)
    }

    /// The aggregator's server key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join(pki::SERVER_KEY_FILE)
    }

    /// The trust domain recorded in the CA.
    pub fn trust_domain(&self) -> Result<String, TestkitError> {
        Ok(pki::trust_domain(&self.dir)?)
    }

    /// Issues a certificate for `agent_id` in `tenant`, valid for 30 days, into `out` (`agent.pem`,
    /// `agent.key`, `ca.pem`).
    pub fn issue_agent(
        &self,
        out: &Path,
        tenant: &Tenant,
        agent_id: &str,
    ) -> Result<AgentCerts, TestkitError> {
        self.issue_agent_with(out, tenant, agent_id, Validity::days(AGENT_VALIDITY_DAYS))
    }

    /// [`Pki::issue_agent`] with an explicit validity window (which may lie in the past).
    pub fn issue_agent_with(
        &self,
        out: &Path,
        tenant: &Tenant,
        agent_id: &str,
        validity: Validity,
    ) -> Result<AgentCerts, TestkitError> {
        let id = AgentToIssue::new(crate::agent_key(tenant, agent_id)?);
        let issued = pki::issue_agent(&self.dir, &id, out, validity)?;
        Ok(AgentCerts {
            dir: out.to_owned(),
            ca: issued.ca_path,
            cert: issued.cert_path,
            key: issued.key_path,
            serial_hex: issued.serial_hex,
            uri: issued.uri,
            not_after: Some(issued.not_after),
        })
    }

    /// A certificate for `agent_id` that expired a day ago (valid for nine days before that), measured from
    /// `now`.
    pub fn issue_expired_agent(
        &self,
        out: &Path,
        tenant: &Tenant,
        agent_id: &str,
        now: time::OffsetDateTime,
    ) -> Result<AgentCerts, TestkitError> {
        let validity = Validity::between(
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        );
        self.issue_agent_with(out, tenant, agent_id, validity)
    }

    /// A client certificate with arbitrary SANs, signed by this CA but bypassing `issue_agent`'s checks: for
    /// handshake tests with certificates the real tool never writes.
    pub fn issue_raw(&self, out: &Path, sans: Vec<SanType>) -> Result<AgentCerts, TestkitError> {
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| TestkitError::io(path, source))
        };
        let ca_key = KeyPair::from_pem(&read(self.dir.join(pki::CA_KEY_FILE))?)?;
        let ca_pem = read(self.ca_cert())?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::create_dir_all(out).map_err(|source| TestkitError::io(out, source))?;
        let certs = AgentCerts {
            dir: out.to_owned(),
            ca: out.join(pki::CA_CERT_FILE),
            cert: out.join(pki::AGENT_CERT_FILE),
            key: out.join(pki::AGENT_KEY_FILE),
            serial_hex: String::new(),
            uri: String::new(),
            not_after: None,
        };
        for (path, text) in [
            (&certs.cert, cert.pem()),
            (&certs.key, key.serialize_pem()),
            (&certs.ca, ca_pem),
        ] {
            std::fs::write(path, text).map_err(|source| TestkitError::io(path, source))?;
        }
        Ok(certs)
    }
}
