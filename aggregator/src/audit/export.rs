//! Export of the audit log for offline verification: `DIR/checkpoint` (a freshly signed checkpoint),
//! `DIR/entries.jsonl` (the stored entry lines up to its size, one per line) and, when the auditor's older
//! checkpoint is given, `DIR/consistency-from-<old size>` (the RFC 9162 proof that the new checkpoint extends
//! it). Entries are written exactly as stored, tampered or not: judging them is the verifier's job.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use gait_audit::{Checkpoint, ConsistencyProof};

use super::{AuditError, AuditLog};

/// Name of the checkpoint file of an export.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// Name of the entries file of an export.
pub const ENTRIES_FILE: &str = "entries.jsonl";
/// Entries read from the store per page.
const PAGE: u32 = 1000;

/// The name of the consistency proof file from a checkpoint of `old_size` entries.
pub fn consistency_file(old_size: u64) -> String {
    format!("consistency-from-{old_size}")
}

/// What an export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportSummary {
    /// The log's origin.
    pub origin: String,
    /// The checkpoint's size.
    pub size: u64,
    /// The checkpoint's root hash, hex.
    pub root: String,
    /// Entry lines written (fewer than `size` only if stored rows are missing).
    pub entries: u64,
    /// The checkpoint file.
    pub checkpoint: PathBuf,
    /// The entries file.
    pub entries_file: PathBuf,
    /// The consistency proof file, when an older checkpoint was given.
    pub consistency: Option<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl AuditLog {
    /// Writes an export to `dir` (created if missing; its files replaced). `since` is the path of an older
    /// checkpoint of this log: it must verify under the log's key and not be larger than the log.
    pub async fn export(
        &self,
        dir: &Path,
        since: Option<&Path>,
    ) -> Result<ExportSummary, AuditError> {
        let older = match since {
            Some(path) => Some(self.read_older(path)?),
            None => None,
        };
        let cp = self.sign_checkpoint().await?;
        std::fs::create_dir_all(dir).map_err(io(dir))?;

        let entries_file = dir.join(ENTRIES_FILE);
        let written = self.write_entries(&entries_file, cp.size).await?;

        let consistency = match older {
            Some((path, old)) => {
                if old.size > cp.size {
                    return Err(AuditError::Since {
                        path,
                        reason: format!(
                            "it covers {} entries and the log now holds {}: the log lost entries",
                            old.size, cp.size
                        ),
                    });
                }
                let proof = ConsistencyProof {
                    old: old.size,
                    new: cp.size,
                    hashes: self
                        .store()
                        .audit_consistency_proof(old.size, cp.size)
                        .await?,
                };
                let file = dir.join(consistency_file(old.size));
                crate::secrets::write_atomic(
                    &file,
                    proof.to_text().as_bytes(),
                    crate::secrets::Access::Public,
                )
                .map_err(io(&file))?;
                Some(file)
            }
            None => None,
        };
        let checkpoint = dir.join(CHECKPOINT_FILE);
        crate::secrets::write_atomic(
            &checkpoint,
            cp.note.as_bytes(),
            crate::secrets::Access::Public,
        )
        .map_err(io(&checkpoint))?;
        Ok(ExportSummary {
            origin: self.origin().to_owned(),
            size: cp.size,
            root: hex::encode(cp.root),
            entries: written,
            checkpoint,
            entries_file,
            consistency,
        })
    }

    fn read_older(&self, path: &Path) -> Result<(PathBuf, Checkpoint), AuditError> {
        let note = std::fs::read_to_string(path).map_err(io(path))?;
        let old = Checkpoint::open(&self.verifier(), &note).map_err(|e| AuditError::Since {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok((path.to_path_buf(), old))
    }

    /// Streams the stored lines of entries `0..size` to `path`; returns how many were written.
    async fn write_entries(&self, path: &Path, size: u64) -> Result<u64, AuditError> {
        let tmp = path.with_extension("jsonl.partial");
        let file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut out = std::io::BufWriter::new(file);
        let mut from = 0u64;
        let mut written = 0u64;
        'pages: while from < size {
            let rows = self.store().audit_entries(from, PAGE).await?;
            let Some(last) = rows.last() else { break };
            from = last.seq + 1;
            for row in rows {
                if row.seq >= size {
                    break 'pages;
                }
                out.write_all(&row.line).map_err(io(&tmp))?;
                out.write_all(b"\n").map_err(io(&tmp))?;
                written += 1;
            }
        }
        let file = out.into_inner().map_err(|e| AuditError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        Ok(written)
    }
}
