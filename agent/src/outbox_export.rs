//! `gait-agent outbox export --out FILE`: every record still waiting in the outbox, sealed into one file
//! signed with the agent's own mTLS key ([`gait_wire::export`]), for sites with no network path. An operator
//! carries the file out and commits it with `gait-aggregator ingest-file`; the agent deletes the records only
//! when the aggregator acknowledges them at its next connection (`Welcome.committed_seq`), as after any
//! delivery. Exporting removes nothing.
//!
//! Two paths, as for `bundle import` (redb takes an exclusive lock on the agent database):
//! - **No daemon running**: the command opens the database itself and reads the outbox.
//! - **The daemon holds the database**: it asks the daemon's local API (`POST /v1/outbox/export`), which
//!   seals the same file from its outbox with the certificate and key it was started with.
//!
//! A file holds at most [`gait_wire::export::MAX_EXPORT_RECORDS`] records and about [`READ_BYTES`] of them;
//! an outbox holding more is exported in several files (`--after-seq` = the previous file's last seq).

use std::path::{Path, PathBuf};
use std::time::Duration;

use gait_wire::export::{self, OutboxExport, SignatureAlgorithm};
use rustls::SignatureScheme;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

use crate::config::Config;
use crate::db::{AgentDb, DbError};
use crate::local_api::Endpoint;
use crate::outbox::Outbox;

/// How long the command waits for a running daemon's answer.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(300);

/// Encoded outbox bytes read into one file at most: with base64 and hex in the JSON form a file then stays
/// under [`export::MAX_EXPORT_BYTES`].
pub const READ_BYTES: usize = 64 * 1024 * 1024;

/// Where the export was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The command opened the agent database itself (no daemon was running).
    Database,
    /// The running daemon sealed it (its local API).
    Daemon,
}

/// What an export holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Exported {
    /// The agent's SPIFFE URI (from its certificate).
    pub agent_uri: String,
    /// First seq in the file.
    pub first_seq: u64,
    /// Last seq in the file.
    pub last_seq: u64,
    /// Records in the file.
    pub count: u64,
    /// Records still waiting after `last_seq` that did not fit (export them with `--after-seq last_seq`).
    pub remaining: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, hex (the digest the aggregator's audit entry names).
    pub sha256: String,
    /// When the export was sealed, on the agent's clock.
    pub created_unix_ms: i64,
}

/// A sealed export and its summary.
#[derive(Debug)]
pub struct Sealed {
    /// The file bytes.
    pub bytes: Vec<u8>,
    /// What it holds.
    pub summary: Exported,
}

/// Why `gait-agent outbox export` wrote no file.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Nothing is waiting in the outbox (after `after_seq`).
    #[error(
        "the outbox holds no record waiting for the aggregator{after}: every record was acknowledged; \
         nothing to export",
        after = if *after_seq > 0 { format!(" after seq {after_seq}") } else { String::new() }
    )]
    Empty {
        /// The `--after-seq` asked for.
        after_seq: u64,
    },
    /// The certificate or key cannot be used to sign (configuration).
    #[error("{0}")]
    Config(String),
    /// The agent database failed.
    #[error("the agent database failed: {0}")]
    Storage(String),
    /// The records read from the outbox could not be sealed (a record breaks the format).
    #[error("the outbox records cannot be exported: {0}")]
    Seal(#[from] export::ExportError),
    /// The file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon holds the database but its local API does not answer, or answers with an error.
    #[error(
        "a running gait-agent holds the database, but its local api at {endpoint} did not export ({detail}); \
         check `gait-agent status --config …` and retry"
    )]
    Unreachable {
        /// The API endpoint tried.
        endpoint: Endpoint,
        /// The client error or the agent's answer.
        detail: String,
    },
}

impl ExportError {
    /// The exit code (sysexits): 66 nothing to export, 69 daemon unreachable, 74 storage or writing, 65 a
    /// record the format refuses, 78 configuration.
    pub fn exit_code(&self) -> u8 {
        use gait_runtime::exit;
        match self {
            ExportError::Empty { .. } => exit::NOINPUT,
            ExportError::Config(_) => exit::CONFIG,
            ExportError::Storage(_) | ExportError::Write { .. } => exit::IOERR,
            ExportError::Seal(_) => exit::DATAERR,
            ExportError::Unreachable { .. } => exit::UNAVAILABLE,
        }
    }

    /// The local API's error code for this error.
    pub fn api_code(&self) -> &'static str {
        match self {
            ExportError::Empty { .. } => "outbox_empty",
            ExportError::Storage(_) => "agent_storage_error",
            _ => "internal",
        }
    }
}

/// Seals the records waiting in `outbox` after `after_seq` (oldest first, bounded by the file caps) with
/// the certificate chain in `cert` and the private key in `key`, at `now_ms`. Blocks on disk reads.
pub fn seal_from_outbox(
    outbox: &Outbox,
    cert: &Path,
    key: &Path,
    after_seq: u64,
    now_ms: i64,
) -> Result<Sealed, ExportError> {
    let signer = ExportSigner::load(cert, key)?;
    let records = outbox
        .peek_batch(after_seq, export::MAX_EXPORT_RECORDS, READ_BYTES)
        .map_err(|e| ExportError::Storage(e.to_string()))?;
    if records.is_empty() {
        return Err(ExportError::Empty { after_seq });
    }
    let last_waiting = outbox.stats().last_seq;
    let sealed = OutboxExport::seal(
        signer.agent_uri.clone(),
        records,
        now_ms,
        signer.chain.clone(),
        signer.algorithm,
        |input| signer.signer.sign(input),
    )?;
    // A key that does not belong to the certificate (e.g. a renewal half written) must not make a file the
    // aggregator refuses later, far from here.
    sealed.verify_signature().map_err(|e| {
        ExportError::Config(format!(
            "{} does not sign for the certificate in {}: {e}",
            key.display(),
            cert.display()
        ))
    })?;
    let bytes = sealed.encode();
    if bytes.len() as u64 > export::MAX_EXPORT_BYTES {
        return Err(ExportError::Seal(export::ExportError::TooLarge {
            size: bytes.len() as u64,
        }));
    }
    let summary = summary_of(&sealed, &bytes, last_waiting);
    Ok(Sealed { bytes, summary })
}

fn summary_of(sealed: &OutboxExport, bytes: &[u8], last_waiting: u64) -> Exported {
    Exported {
        agent_uri: sealed.header.agent_uri.clone(),
        first_seq: sealed.header.first_seq,
        last_seq: sealed.header.last_seq,
        count: sealed.header.count,
        remaining: last_waiting.saturating_sub(sealed.header.last_seq),
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        created_unix_ms: sealed.header.created_unix_ms,
    }
}

/// The agent's certificate chain and a signer of its private key.
struct ExportSigner {
    agent_uri: String,
    chain: Vec<Vec<u8>>,
    algorithm: SignatureAlgorithm,
    signer: Box<dyn rustls::sign::Signer>,
}

impl ExportSigner {
    fn load(cert: &Path, key: &Path) -> Result<Self, ExportError> {
        let config = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
            ExportError::Config(format!("cannot read {what} {}: {e}", path.display()))
        };
        let identity = crate::identity::AgentIdentity::from_cert_file(cert)
            .map_err(|e| ExportError::Config(e.to_string()))?;
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| config("the agent certificate", cert, &e))?
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| config("the agent certificate", cert, &e))?;
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| config("the agent key", key, &e))?;
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(|e| config("the agent key", key, &e))?;
        let signer = signing_key
            .choose_scheme(&[
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::ECDSA_NISTP384_SHA384,
                SignatureScheme::ED25519,
            ])
            .ok_or_else(|| {
                ExportError::Config(format!(
                    "the agent key {} is not an ECDSA P-256/P-384 or Ed25519 key",
                    key.display()
                ))
            })?;
        let algorithm = match signer.scheme() {
            SignatureScheme::ECDSA_NISTP256_SHA256 => SignatureAlgorithm::EcdsaP256Sha256,
            SignatureScheme::ECDSA_NISTP384_SHA384 => SignatureAlgorithm::EcdsaP384Sha384,
            _ => SignatureAlgorithm::Ed25519,
        };
        Ok(ExportSigner {
            agent_uri: identity.uri,
            chain,
            algorithm,
            signer,
        })
    }
}

/// Exports the outbox of the agent of `config` (records after `after_seq`) into `out`: directly when no daemon
/// holds the database, else through the daemon's local API. The file is written atomically with mode 0600.
pub async fn export(
    config: &Config,
    out: &Path,
    after_seq: u64,
) -> Result<(Exported, Via), ExportError> {
    let cfg = config.clone();
    let offline = tokio::task::spawn_blocking(move || export_offline(&cfg, after_seq))
        .await
        .map_err(|e| ExportError::Storage(e.to_string()))?;
    let (sealed, via) = match offline {
        Ok(sealed) => (sealed, Via::Database),
        Err(Offline::Locked) => (via_daemon(config, after_seq).await?, Via::Daemon),
        Err(Offline::Failed(e)) => return Err(e),
    };
    let path = out.to_path_buf();
    let bytes = sealed.bytes;
    tokio::task::spawn_blocking(move || crate::gate::files::write_atomic(&path, &bytes))
        .await
        .map_err(|e| ExportError::Storage(e.to_string()))?
        .map_err(|source| ExportError::Write {
            path: out.to_path_buf(),
            source,
        })?;
    Ok((sealed.summary, via))
}

enum Offline {
    Locked,
    Failed(ExportError),
}

fn export_offline(config: &Config, after_seq: u64) -> Result<Sealed, Offline> {
    let db = match AgentDb::open(config.db_path()) {
        Ok(db) => db,
        Err(DbError::Locked { .. }) => return Err(Offline::Locked),
        Err(e) => return Err(Offline::Failed(ExportError::Storage(e.to_string()))),
    };
    let outbox = Outbox::open(&db, config.outbox.limits())
        .map_err(|e| Offline::Failed(ExportError::Storage(e.to_string())))?;
    seal_from_outbox(
        &outbox,
        &config.tls.cert,
        &config.tls.key,
        after_seq,
        crate::state::now_unix_ms(),
    )
    .map_err(Offline::Failed)
}

async fn via_daemon(config: &Config, after_seq: u64) -> Result<Sealed, ExportError> {
    let endpoint = Endpoint::of(config).map_err(|e| ExportError::Config(e.to_string()))?;
    let token = match &endpoint {
        Endpoint::Unix(_) => None,
        Endpoint::Tcp(_) => {
            let token_path = config.api_token_path();
            let token = std::fs::read_to_string(&token_path).map_err(|e| {
                ExportError::Config(format!(
                    "cannot read the local api token {}: {e}",
                    token_path.display()
                ))
            })?;
            Some(token.trim().to_owned())
        }
    };
    let unreachable = |detail: String| ExportError::Unreachable {
        endpoint: endpoint.clone(),
        detail,
    };
    let answer =
        crate::local_api::request_export(&endpoint, token.as_deref(), after_seq, DAEMON_TIMEOUT)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
    let (bytes, remaining) = match answer {
        Ok(ok) => ok,
        Err((code, _)) if code == "outbox_empty" => return Err(ExportError::Empty { after_seq }),
        Err((code, message)) if code == "agent_storage_error" => {
            return Err(ExportError::Storage(message));
        }
        Err((code, message)) => return Err(unreachable(format!("{code}: {message}"))),
    };
    // Check what the daemon sealed before writing it where an operator will carry it.
    let sealed = OutboxExport::decode(&bytes)?;
    sealed.verify_signature()?;
    let mut summary = summary_of(&sealed, &bytes, 0);
    summary.remaining = remaining;
    Ok(Sealed { bytes, summary })
}
