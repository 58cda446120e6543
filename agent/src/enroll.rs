//! `gait-agent enroll`: join the fleet with a join token instead of copying a key and certificate by hand.
//!
//! The agent makes its own ECDSA P-256 key (it never leaves the host), builds a CSR with it and sends the CSR
//! with the token to the aggregator's HTTPS API (`POST /v1/enroll`). The aggregator decides the tenancy from
//! the token and answers with the certificate chain and the CA bundle to trust it with. The three files are
//! written where the agent's configuration expects them (`tls.key` mode 0600, `tls.cert`, `tls.ca`), each
//! atomically, key first, so `gait-agent run` can start right away. A refused token writes nothing.
//!
//! [`new_key_and_csr`] is shared with certificate renewal, which sends a CSR over the agent's authenticated
//! connection instead.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use gait_identity::{AgentId, Tenant};
use gait_runtime::http::client::{Client, ClientError};
use rcgen::{CertificateParams, DnType, KeyPair, SanType};
use serde::Deserialize;

use crate::identity::AgentIdentity;

/// How long the enrollment call may take, connection and TLS handshake included.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the enrolled files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// CA bundle the aggregator is verified with (`tls.ca`).
    pub ca: PathBuf,
    /// The agent's certificate chain (`tls.cert`).
    pub cert: PathBuf,
    /// The agent's private key (`tls.key`), mode 0600.
    pub key: PathBuf,
}

/// What `enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// The join token (`gjt1_…`), as printed by `gait-aggregator join-token create`.
    pub token: String,
    /// Base URL of the aggregator's HTTP API, `https://host:port` (`http://` only for a loopback API).
    pub aggregator: String,
    /// CA certificate the HTTPS API is verified with (no system roots are trusted).
    pub ca_file: Option<PathBuf>,
    /// The agent id to ask for.
    pub agent_id: AgentId,
    /// The tenancy the agent means to join: a token for another is refused without using it.
    pub expect: Option<Tenant>,
    /// Where to write the key, certificate and CA bundle.
    pub paths: TlsPaths,
}

/// A finished enrollment.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The identity certified.
    pub identity: AgentIdentity,
    /// Certificate serial.
    pub serial: String,
    /// Certificate expiry (Unix seconds).
    pub not_after_unix: i64,
    /// Where the files are.
    pub paths: TlsPaths,
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The aggregator URL is not http(s).
    #[error(
        "--aggregator `{url}` must be an https:// URL of the aggregator's HTTP API (http:// only on loopback)"
    )]
    Url {
        /// The URL given.
        url: String,
    },
    /// An https:// URL but no CA to verify the server with.
    #[error(
        "--aggregator is https:// but no CA certificate was given to verify it: pass --ca-file with the \
         deployment CA (<data-dir>/pki/ca.pem on the aggregator host)"
    )]
    NoCa,
    /// The CA file could not be used.
    #[error("--ca-file {}: {source}", path.display())]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why (boxed: the error is large and this path is cold).
        source: Box<gait_runtime::http::tls::TlsConfigError>,
    },
    /// Key or CSR generation failed.
    #[error("cannot make the agent key or its CSR: {0}")]
    Key(#[from] rcgen::Error),
    /// The aggregator could not be reached.
    #[error("cannot reach the aggregator at {url}: {source}")]
    Transport {
        /// The URL called.
        url: String,
        /// What failed.
        source: ClientError,
    },
    /// The aggregator refused the token (expired, used up, revoked, unknown, another scope).
    #[error("enrollment refused: {message}")]
    Refused {
        /// The aggregator's reason.
        message: String,
    },
    /// The aggregator refused the request as malformed (the CSR, the agent id).
    #[error("enrollment request refused ({status}): {message}")]
    BadRequest {
        /// HTTP status.
        status: u16,
        /// The aggregator's reason.
        message: String,
    },
    /// The aggregator failed.
    #[error("the aggregator failed the enrollment ({status}): {message}; retry later")]
    Server {
        /// HTTP status.
        status: u16,
        /// The aggregator's message.
        message: String,
    },
    /// The answer is not what enrollment returns, or does not certify this agent's key.
    #[error("the aggregator's answer is unusable: {0}")]
    Answer(String),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl EnrollError {
    /// The process exit code: 65 (data error) when the token or request was refused, 69 (unavailable) when
    /// the aggregator could not be reached or failed, 78 (config) for bad options, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        use gait_runtime::exit;
        match self {
            Self::Refused { .. } | Self::BadRequest { .. } => exit::DATAERR,
            Self::Transport { .. } | Self::Server { .. } => exit::UNAVAILABLE,
            Self::Url { .. } | Self::NoCa | Self::Ca { .. } => exit::CONFIG,
            Self::Key(_) | Self::Answer(_) | Self::Write { .. } => exit::FAILURE,
        }
    }
}

/// A fresh P-256 key and a CSR signed by it (PEM and DER); the CSR carries `uri` as its one URI SAN when
/// given (renewal names the identity it renews) and `common_name` as its subject.
pub fn new_key_and_csr(
    common_name: &str,
    uri: Option<&str>,
) -> Result<(KeyPair, String, Vec<u8>), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    if let Some(uri) = uri {
        params.subject_alt_names = vec![SanType::URI(uri.try_into()?)];
    }
    let csr = params.serialize_request(&key)?;
    let der = csr.der().to_vec();
    Ok((key, csr.pem()?, der))
}

#[derive(Deserialize)]
struct Answer {
    serial: String,
    not_after_unix: i64,
    certificate_chain_pem: String,
    ca_bundle_pem: String,
}

/// Enrolls: key, CSR, `POST /v1/enroll`, then the files. Nothing is written unless a certificate for this
/// agent's key came back.
pub async fn enroll(opts: EnrollOptions) -> Result<Enrolled, EnrollError> {
    let base = opts.aggregator.trim_end_matches('/');
    let tls = if base.starts_with("https://") {
        let ca = opts.ca_file.as_ref().ok_or(EnrollError::NoCa)?;
        Some(
            gait_runtime::http::tls::client_config(ca).map_err(|source| EnrollError::Ca {
                path: ca.clone(),
                source: Box::new(source),
            })?,
        )
    } else if base.starts_with("http://") {
        None
    } else {
        return Err(EnrollError::Url {
            url: opts.aggregator.clone(),
        });
    };
    let (key, csr_pem, _) = new_key_and_csr(opts.agent_id.as_str(), None)?;
    let mut body = serde_json::json!({
        "token": opts.token.trim(),
        "csr_pem": csr_pem,
        "agent_id": opts.agent_id.as_str(),
    });
    if let Some(t) = &opts.expect {
        body["expect"] = serde_json::json!({
            "org": t.org.as_str(), "project": t.project.as_str(), "env": t.env.as_str(),
        });
    }
    let url = format!("{base}/v1/enroll");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let response = Client::new(tls, CALL_TIMEOUT)
        .request(
            http::Method::POST,
            &url,
            headers,
            Bytes::from(body.to_string()),
        )
        .await
        .map_err(|source| EnrollError::Transport {
            url: url.clone(),
            source,
        })?;
    let status = response.status();
    if !status.is_success() {
        let answer: serde_json::Value = serde_json::from_slice(response.body()).unwrap_or_default();
        let message = answer["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| {
                String::from_utf8_lossy(response.body())
                    .chars()
                    .take(512)
                    .collect()
            });
        return Err(match status.as_u16() {
            403 => EnrollError::Refused { message },
            code @ 400..=499 => EnrollError::BadRequest {
                status: code,
                message,
            },
            code => EnrollError::Server {
                status: code,
                message,
            },
        });
    }
    let answer: Answer =
        serde_json::from_slice(response.body()).map_err(|e| EnrollError::Answer(e.to_string()))?;
    let identity = AgentIdentity::from_cert_pem(answer.certificate_chain_pem.as_bytes())
        .map_err(|e| EnrollError::Answer(e.to_string()))?;
    check_certifies(&answer.certificate_chain_pem, &key)?;
    if let Some(t) = &opts.expect
        && identity.tenant() != *t
    {
        return Err(EnrollError::Answer(format!(
            "the certificate is for {}, not {t}",
            identity.tenant()
        )));
    }
    write_files(
        &opts.paths,
        &key,
        &answer.certificate_chain_pem,
        &answer.ca_bundle_pem,
    )?;
    Ok(Enrolled {
        identity,
        serial: answer.serial,
        not_after_unix: answer.not_after_unix,
        paths: opts.paths,
    })
}

/// Refuses a chain whose leaf does not certify `key`.
pub fn check_certifies(chain_pem: &str, key: &KeyPair) -> Result<(), EnrollError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    use x509_parser::prelude::{FromDer as _, X509Certificate};
    let leaf = CertificateDer::from_pem_slice(chain_pem.as_bytes())
        .map_err(|e| EnrollError::Answer(format!("certificate chain: {e}")))?;
    let (_, cert) = X509Certificate::from_der(&leaf)
        .map_err(|e| EnrollError::Answer(format!("certificate: {e}")))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(EnrollError::Answer(
            "the certificate does not certify this agent's key".to_owned(),
        ));
    }
    Ok(())
}

/// Writes key (0600), certificate chain and CA bundle, each atomically, key first: a crash in between leaves
/// a key without its certificate, never a certificate without its key.
pub fn write_files(
    paths: &TlsPaths,
    key: &KeyPair,
    chain_pem: &str,
    ca_bundle_pem: &str,
) -> Result<(), EnrollError> {
    let write = |path: &Path, bytes: &[u8]| {
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| EnrollError::Write {
                path: parent.to_owned(),
                source,
            })?;
        }
        crate::gate::files::write_atomic(path, bytes).map_err(|source| EnrollError::Write {
            path: path.to_owned(),
            source,
        })
    };
    write(&paths.key, key.serialize_pem().as_bytes())?;
    write(&paths.cert, chain_pem.as_bytes())?;
    write(&paths.ca, ca_bundle_pem.as_bytes())?;
    Ok(())
}

/// A default agent id: `agent-` and 12 random hex digits.
pub fn random_agent_id() -> Result<AgentId, EnrollError> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).map_err(|e| EnrollError::Answer(format!("random source: {e}")))?;
    format!("agent-{}", hex::encode(bytes))
        .parse()
        .map_err(|e: gait_identity::IdError| EnrollError::Answer(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csr_carries_the_identity_asked_for_and_verifies() -> Result<(), rcgen::Error> {
        let uri = "spiffe://gait.local/org/a/project/b/env/c/agent/d";
        let (key, pem, der) = new_key_and_csr("d", Some(uri))?;
        assert!(!der.is_empty());
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(key.serialize_pem().contains("PRIVATE KEY"));
        Ok(())
    }

    #[test]
    fn random_agent_ids_follow_the_identifier_rule() -> Result<(), EnrollError> {
        let a = random_agent_id()?;
        assert!(a.as_str().starts_with("agent-") && a.as_str().len() == 18);
        assert_ne!(a, random_agent_id()?);
        Ok(())
    }
}
