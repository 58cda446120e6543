//! Records carried in on a file (`gait-aggregator ingest-file`): an agent's outbox export
//! ([`gait_wire::export`]) verified and committed exactly as if its records had arrived over QUIC.
//!
//! Verification, in order (any failure refuses the whole file and commits nothing):
//! 1. size (before reading), format, every record's rule and hash, the hash chain, the header's digest;
//! 2. the signature, with the key of the embedded agent certificate;
//! 3. the export time: not more than [`MAX_CLOCK_SKEW_MS`] in the future;
//! 4. the certificate chain against the CAs this aggregator trusts agents with (`ca-bundle.pem` during a CA
//!    rotation, so the previous CA too), for client authentication, **at the export time** (a file may be
//!    carried out after the certificate expired; ADR 0005 `s22-offline`);
//! 5. the agent rules of the handshake: one agent URI SAN in the CA's trust domain, equal to the header's
//!    `agent_uri`, a serial not revoked now;
//! 6. each record under the aggregator's payload limit (`ingest.max_record_payload_bytes`).
//!
//! The identity (org, project, env, agent id) is the verified certificate's, never the file's. The records
//! then go through the store's batch commit, the same one QUIC ingest uses ([`gait_store::StoreTx::commit_batch`],
//! rules in the store's `batch` module), in one transaction with the `records.ingest_file` audit entry: a
//! record already stored with the same hash counts as a duplicate, one stored with another hash as a conflict
//! (the stored one is kept), a skipped seq as a gap; the agent's committed head moves as for a batch, so its
//! next `Welcome` acknowledges what the file carried and the agent deletes those records from its outbox.
//! Decision and artifact records are indexed, and trace key announcements registered, as for a QUIC batch.

use std::path::{Path, PathBuf};

use gait_store::{AgentKey, CertSerial, NewRecord, Store, StoreError};
use gait_wire::export::{self, ExportError, OutboxExport};
use sha2::{Digest as _, Sha256};

use crate::audit::AuditError;
use crate::pki::identity::{AgentIdentity, ca_trust_domain, identity_from_cert_der};

/// The audit action of an ingested file.
pub const ACTION: &str = "records.ingest_file";

/// How far in the future (by this aggregator's clock) a file's export time may be.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// Why a file was not ingested.
#[derive(Debug, thiserror::Error)]
pub enum IngestFileError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is refused by the export format (size, format, record, chain, digest, signature or
    /// certificate).
    #[error("{path}: refused ({}): {source}", source.what())]
    Export {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: ExportError,
    },
    /// The export time is in the future.
    #[error(
        "{path}: refused (time): the export claims to be made at {created_unix_ms} ms, more than {} s after \
         this aggregator's clock ({now_ms} ms); check the agent host's clock",
        MAX_CLOCK_SKEW_MS / 1000
    )]
    FromTheFuture {
        /// The file.
        path: PathBuf,
        /// The header's time.
        created_unix_ms: i64,
        /// This aggregator's time.
        now_ms: i64,
    },
    /// The certificate is not an agent certificate of this deployment's trust domain.
    #[error("{path}: refused (certificate): {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificate is revoked.
    #[error(
        "{path}: refused (revoked): the certificate {serial} of {uri} is revoked; its records are not \
         accepted (re-issue the agent and export again from the new certificate only if the site is trusted)"
    )]
    Revoked {
        /// The file.
        path: PathBuf,
        /// The agent URI.
        uri: String,
        /// The serial.
        serial: CertSerial,
    },
    /// The header names another agent than the certificate.
    #[error(
        "{path}: refused (tenancy): the header names {header_uri} but the certificate is {cert_uri}"
    )]
    Tenancy {
        /// The file.
        path: PathBuf,
        /// What the header says.
        header_uri: String,
        /// What the certificate says.
        cert_uri: String,
    },
    /// A record is over this aggregator's payload limit.
    #[error(
        "{path}: refused (record): record {seq} payload is {len} bytes, over this aggregator's limit of \
         {max} bytes (ingest.max_record_payload_bytes)"
    )]
    PayloadTooLarge {
        /// The file.
        path: PathBuf,
        /// The record.
        seq: u64,
        /// Its payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The trusted CA certificates cannot be loaded.
    #[error("the CA certificates agents are trusted with cannot be read: {0}")]
    Trust(String),
    /// The aggregator's database cannot be opened (none there, wrong options).
    #[error("{0}")]
    Database(String),
    /// The store failed; nothing was committed.
    #[error("the store failed; nothing was committed: {0}")]
    Store(#[from] StoreError),
    /// The audit entry could not be appended; nothing was committed.
    #[error("the audit entry could not be written; nothing was committed: {0}")]
    Audit(#[from] AuditError),
}

impl IngestFileError {
    /// One word for what failed: `read`, `size`, `format`, `record`, `chain`, `digest`, `signature`,
    /// `certificate`, `time`, `revoked`, `tenancy`, `trust`, `database`, `store`, `audit`.
    pub fn what(&self) -> &'static str {
        match self {
            IngestFileError::Read { .. } => "read",
            IngestFileError::Export { source, .. } => source.what(),
            IngestFileError::FromTheFuture { .. } => "time",
            IngestFileError::Certificate { .. } => "certificate",
            IngestFileError::Revoked { .. } => "revoked",
            IngestFileError::Tenancy { .. } => "tenancy",
            IngestFileError::PayloadTooLarge { .. } => "record",
            IngestFileError::Trust(_) => "trust",
            IngestFileError::Database(_) => "database",
            IngestFileError::Store(_) => "store",
            IngestFileError::Audit(_) => "audit",
        }
    }

    /// The exit code (sysexits): 66 unreadable file, 65 a refused file, 78 unreadable CA files, 69 the store
    /// is unavailable (retry), 74 another store or audit failure, 78 no usable database or CA files.
    pub fn exit_code(&self) -> u8 {
        use gait_runtime::exit;
        match self {
            IngestFileError::Read { .. } => exit::NOINPUT,
            IngestFileError::Trust(_) | IngestFileError::Database(_) => exit::CONFIG,
            IngestFileError::Store(e) if e.is_retryable() => exit::UNAVAILABLE,
            IngestFileError::Store(_) | IngestFileError::Audit(_) => exit::IOERR,
            _ => exit::DATAERR,
        }
    }
}

/// What an ingested file did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IngestReport {
    /// The agent, from its verified certificate.
    pub org: String,
    /// Project.
    pub project: String,
    /// Environment.
    pub env: String,
    /// Agent id.
    pub agent_id: String,
    /// Serial of the certificate that signed the file.
    pub cert_serial: String,
    /// First seq in the file.
    pub first_seq: u64,
    /// Last seq in the file.
    pub last_seq: u64,
    /// Records in the file.
    pub count: u64,
    /// Records newly committed.
    pub committed: u64,
    /// Records already stored with the same hash.
    pub duplicates: u64,
    /// Seqs already stored with another hash (the stored records are kept; the agent quarantines its own at
    /// its next connection).
    pub conflicts: Vec<u64>,
    /// Seqs missing before the file's records, as inclusive ranges (the chain cannot be checked across them).
    pub gaps: Vec<(u64, u64)>,
    /// Seqs whose `prev_hash` is not the stored record's hash before them.
    pub chain_breaks: Vec<u64>,
    /// The agent's committed head after the file.
    pub committed_seq: u64,
    /// When the agent sealed the file (its clock).
    pub created_unix_ms: i64,
    /// SHA-256 of the file, hex.
    pub file_sha256: String,
    /// Whether this file created the agent's row (it never connected).
    pub new_agent: bool,
}

/// Reads an export file, refusing one over [`export::MAX_EXPORT_BYTES`] before reading it.
pub fn read_file(path: &Path) -> Result<Vec<u8>, IngestFileError> {
    let read = |source| IngestFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > export::MAX_EXPORT_BYTES {
        return Err(IngestFileError::Export {
            path: path.to_path_buf(),
            source: ExportError::TooLarge { size },
        });
    }
    use std::io::Read as _;
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    std::fs::File::open(path)
        .map_err(read)?
        .take(export::MAX_EXPORT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read)?;
    if bytes.len() as u64 > export::MAX_EXPORT_BYTES {
        return Err(IngestFileError::Export {
            path: path.to_path_buf(),
            source: ExportError::TooLarge {
                size: bytes.len() as u64,
            },
        });
    }
    Ok(bytes)
}

/// A file whose signature, certificate and records verified, and the identity it speaks for.
#[derive(Debug)]
pub struct VerifiedFile {
    /// The decoded export.
    pub export: OutboxExport,
    /// The agent, from the verified certificate.
    pub identity: AgentIdentity,
    /// SHA-256 of the file bytes.
    pub sha256: [u8; 32],
}

/// Verifies `bytes` (steps 1–6 of the module docs but revocation) against the DER CA certificates
/// `trust_anchors` at `now_ms`; `path` names the file in errors. CPU-bound (hashes every record): call it
/// off the async workers for big files.
pub fn verify(
    path: &Path,
    bytes: &[u8],
    trust_anchors: &[Vec<u8>],
    max_payload: usize,
    now_ms: i64,
) -> Result<VerifiedFile, IngestFileError> {
    let refused = |source| IngestFileError::Export {
        path: path.to_path_buf(),
        source,
    };
    let export = OutboxExport::decode(bytes).map_err(refused)?;
    export.verify_signature().map_err(refused)?;
    let created = export.header.created_unix_ms;
    if created > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
        return Err(IngestFileError::FromTheFuture {
            path: path.to_path_buf(),
            created_unix_ms: created,
            now_ms,
        });
    }
    let at = u64::try_from(created.div_euclid(1000)).unwrap_or(0);
    export
        .verify_certificate_chain(trust_anchors, at)
        .map_err(refused)?;
    let certificate = |reason: String| IngestFileError::Certificate {
        path: path.to_path_buf(),
        reason,
    };
    let leaf = export
        .certificate_chain
        .first()
        .ok_or_else(|| certificate("no certificate".into()))?;
    let identity = identity_from_cert_der(leaf)
        .map_err(|e| certificate(format!("not an agent certificate: {e}")))?;
    if let Some(expected) = trust_anchors.iter().find_map(|ca| ca_trust_domain(ca))
        && expected != identity.spiffe.trust_domain.as_str()
    {
        return Err(certificate(format!(
            "{} is outside this deployment's trust domain {expected}",
            identity.uri()
        )));
    }
    if export.header.agent_uri != identity.uri() {
        return Err(IngestFileError::Tenancy {
            path: path.to_path_buf(),
            header_uri: export.header.agent_uri.clone(),
            cert_uri: identity.uri(),
        });
    }
    if let Some(r) = export
        .records
        .iter()
        .find(|r| r.payload.len() > max_payload)
    {
        return Err(IngestFileError::PayloadTooLarge {
            path: path.to_path_buf(),
            seq: r.seq,
            len: r.payload.len(),
            max: max_payload,
        });
    }
    Ok(VerifiedFile {
        export,
        identity,
        sha256: Sha256::digest(bytes).into(),
    })
}

/// Refuses a file whose certificate is revoked in `store` now; `path` names the file in errors.
pub async fn check_not_revoked(
    store: &Store,
    path: &Path,
    file: &VerifiedFile,
) -> Result<(), IngestFileError> {
    let serial = &file.identity.serial;
    if store.revoked_serials().await?.iter().any(|s| s == serial) {
        return Err(IngestFileError::Revoked {
            path: path.to_path_buf(),
            uri: file.identity.uri(),
            serial: serial.clone(),
        });
    }
    Ok(())
}

/// Commits the records of a verified (and not revoked) file through the store's batch commit, in one
/// transaction with the `records.ingest_file` audit entry by `actor`, at `now_ms`.
pub async fn commit(
    store: &Store,
    file: &VerifiedFile,
    actor: &str,
    now_ms: i64,
) -> Result<IngestReport, IngestFileError> {
    let key: AgentKey = file.identity.key();
    let rows: Vec<NewRecord> = file.export.records.iter().map(row_of).collect();
    let header = &file.export.header;
    let identity = &file.identity;
    let file_sha256 = hex::encode(file.sha256);
    let not_after_ms = identity.not_after_unix.checked_mul(1000);
    store
        .transaction(async |tx| {
            let new_agent = tx
                .ensure_agent(
                    &key,
                    &identity.serial,
                    not_after_ms,
                    &identity.issuer,
                    header.created_unix_ms,
                )
                .await?;
            let mut report = IngestReport {
                org: key.tenant.org.to_string(),
                project: key.tenant.project.to_string(),
                env: key.tenant.env.to_string(),
                agent_id: key.agent_id.to_string(),
                cert_serial: identity.serial.to_string(),
                first_seq: header.first_seq,
                last_seq: header.last_seq,
                count: header.count,
                committed: 0,
                duplicates: 0,
                conflicts: Vec::new(),
                gaps: Vec::new(),
                chain_breaks: Vec::new(),
                committed_seq: 0,
                created_unix_ms: header.created_unix_ms,
                file_sha256: file_sha256.clone(),
                new_agent,
            };
            for chunk in rows.chunks(gait_store::MAX_BATCH_RECORDS) {
                // Indexed as QUIC ingest indexes a batch (`Intake::commit_batch`), in the same transaction.
                let index = crate::evidence::index::entries(chunk);
                let outcome = tx.commit_batch_indexed(&key, chunk, &index, now_ms).await?;
                // Trace key announcements the file carried register as over QUIC, bound to the certificate the
                // file was verified with.
                let (keys, refused) = super::trace_keys::announcements(chunk, &identity.serial);
                for error in &refused {
                    tracing::warn!(agent = %key, %error, "trace key announcement in an outbox file not registered; its record is stored as sent");
                }
                super::trace_keys::register(tx, &key, &outcome, &keys, now_ms).await?;
                report.committed += outcome.inserted;
                report.duplicates += outcome.duplicates;
                report.conflicts.extend(outcome.conflict_seqs);
                report.gaps.extend(outcome.gaps);
                report.chain_breaks.extend(outcome.chain_breaks);
                report.committed_seq = outcome.committed_seq;
            }
            let mut details = serde_json::Map::new();
            for (k, v) in [
                ("agent_id", serde_json::json!(report.agent_id)),
                ("cert_serial", serde_json::json!(report.cert_serial)),
                ("file_sha256", serde_json::json!(report.file_sha256)),
                ("first_seq", serde_json::json!(report.first_seq)),
                ("last_seq", serde_json::json!(report.last_seq)),
                ("count", serde_json::json!(report.count)),
                ("committed", serde_json::json!(report.committed)),
                ("duplicates", serde_json::json!(report.duplicates)),
                ("conflicts", serde_json::json!(report.conflicts.len())),
                ("gaps", serde_json::json!(report.gaps.len())),
                ("created_unix_ms", serde_json::json!(report.created_unix_ms)),
            ] {
                details.insert(k.to_owned(), v);
            }
            let draft = gait_audit::EntryDraft {
                actor: actor.to_owned(),
                action: ACTION.into(),
                target: crate::audit::tenant_target(&key.tenant, "agent", key.agent_id.as_str()),
                before: None,
                after: None,
                details: Some(details),
            };
            crate::audit::append_draft(tx, draft).await?;
            Ok::<_, IngestFileError>(report)
        })
        .await
}

fn row_of(r: &gait_wire::Record) -> NewRecord {
    NewRecord {
        seq: r.seq,
        prev_hash: r.prev_hash,
        hash: r.hash,
        class: r.class.as_str().to_owned(),
        kind: r.kind.clone(),
        created_unix_ms: r.created_unix_ms,
        bundle_epoch: r.bundle.as_ref().map(|b| b.epoch),
        bundle_digest: r.bundle.as_ref().map(|b| hex::encode(b.digest)),
        bundle_since_ms: r.bundle.as_ref().map(|b| b.since_unix_ms),
        payload: r.payload.clone(),
    }
}
