//! The upload spool: artifact bytes waiting to go to the aggregator's blob store.
//!
//! Design:
//! - **A copy, not a reference.** [`enqueue`] copies the file into `<data_dir>/uploads/<sha256 hex>` while
//!   hashing it, and refuses it when its size or SHA-256 differ from what the caller recorded. A CI job's
//!   workspace is deleted after the job and a watched directory may be rotated; a path would dangle. The copy
//!   is written to a temporary name, synced and renamed, so a crash leaves either no entry or a whole one.
//! - **One table, `upload_spool`**, in the agent's redb file: SHA-256 -> [`SpoolEntry`] (size, when it was
//!   queued, and the refusal when the aggregator refused it for good). The row is written after the file is in
//!   place; a file without a row (a crash in between) is overwritten by the next enqueue of that digest.
//! - **Bounded**: the pending bytes at most [`MAX_SPOOL_BYTES`]; [`enqueue`] refuses beyond it.
//! - **Sending** (the daemon's `upload` task) runs on each connection of the daemon: oldest entry first, `BlobOffer` then
//!   `BlobChunk`s from the offset the aggregator answers, so an upload cut off by a lost connection or a
//!   restart goes on from the bytes the aggregator kept. `BlobStored` deletes the row and the copy; a
//!   permanent refusal (`Forbidden`, `TooLarge`, `BadRequest`) deletes the copy and keeps the row as refused
//!   (ERROR log), so `push` can report it; a retryable one is tried again later.
//!
//! All functions but [`wait_uploaded`] block on disk I/O: async callers run them on `spawn_blocking`.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::db::{AgentDb, DbError};

/// SHA-256 -> JSON [`SpoolEntry`].
const SPOOL: TableDefinition<'static, [u8; 32], &[u8]> = TableDefinition::new("upload_spool");

/// Most bytes waiting in the spool: 4 GiB.
pub const MAX_SPOOL_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// The spool directory under the data directory.
pub const SPOOL_DIR: &str = "uploads";

/// One spooled artifact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpoolEntry {
    /// Its length in bytes.
    pub size: u64,
    /// When it was queued, milliseconds since the Unix epoch.
    pub enqueued_unix_ms: i64,
    /// Set when the aggregator refused it for good: `<wire code>: <message>`. The copy is gone then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// What [`enqueue`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// Copied into the spool; the daemon uploads it.
    Queued,
    /// Already waiting in the spool; nothing copied.
    AlreadyQueued,
}

/// Why an artifact could not be spooled or a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The digest is not 64 lowercase hex characters.
    #[error("sha256 `{0}` is not 64 lowercase hex characters")]
    BadDigest(String),
    /// The file's length is not the recorded size.
    #[error(
        "{path} is {actual} bytes, not the recorded {expected}: it changed after it was recorded"
    )]
    SizeMismatch {
        /// The file.
        path: PathBuf,
        /// The recorded size.
        expected: u64,
        /// Its length now.
        actual: u64,
    },
    /// The file's content does not hash to the recorded digest.
    #[error(
        "{path} hashes to {actual}, not the recorded {expected}: it changed after it was recorded"
    )]
    DigestMismatch {
        /// The file.
        path: PathBuf,
        /// The recorded digest.
        expected: String,
        /// What it hashes to.
        actual: String,
    },
    /// The spool is full.
    #[error(
        "the upload spool holds {pending} bytes; {size} more would pass its {limit} byte limit: \
         let the agent reach the aggregator to drain it"
    )]
    SpoolFull {
        /// Bytes waiting.
        pending: u64,
        /// The artifact's size.
        size: u64,
        /// [`MAX_SPOOL_BYTES`].
        limit: u64,
    },
    /// Reading the artifact or writing the spool copy failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A spool row does not decode.
    #[error("upload_spool row for {sha256} is corrupt: {detail}")]
    Corrupt {
        /// Its key.
        sha256: String,
        /// What is wrong.
        detail: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UploadError + '_ {
    move |source| UploadError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Parses 64 lowercase hex characters.
pub fn parse_digest(sha256: &str) -> Result<[u8; 32], UploadError> {
    let mut raw = [0u8; 32];
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        || hex::decode_to_slice(sha256, &mut raw).is_err()
    {
        return Err(UploadError::BadDigest(sha256.chars().take(80).collect()));
    }
    Ok(raw)
}

/// The spool directory of `db`'s data directory.
pub fn spool_dir(db: &AgentDb) -> PathBuf {
    db.path()
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(SPOOL_DIR)
}

/// The spool copy of `sha256`.
pub(crate) fn spool_file(db: &AgentDb, sha256: &[u8; 32]) -> PathBuf {
    spool_dir(db).join(hex::encode(sha256))
}

/// Queues the artifact at `path` (`size` bytes, SHA-256 `sha256` as recorded in its `artifact.*` record) for
/// upload: copies it into the spool, checking size and digest on the way. Call it when the bundle in force
/// says `settings.upload_artifacts`. Blocking.
pub fn enqueue(
    db: &AgentDb,
    sha256: &str,
    path: &Path,
    size: u64,
) -> Result<Enqueued, UploadError> {
    spool(db, sha256, Source::File(path), size)
}

/// [`enqueue`] for an artifact whose bytes the caller holds (`gait-agent push` through the daemon's local
/// API hands the daemon bytes, not a path). `name` only labels errors. Blocking.
pub fn enqueue_bytes(
    db: &AgentDb,
    sha256: &str,
    name: &Path,
    bytes: &[u8],
) -> Result<Enqueued, UploadError> {
    spool(
        db,
        sha256,
        Source::Bytes { name, bytes },
        bytes.len() as u64,
    )
}

/// Where the bytes to spool come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    File(&'a Path),
    Bytes { name: &'a Path, bytes: &'a [u8] },
}

impl Source<'_> {
    fn name(&self) -> &Path {
        match self {
            Source::File(path) => path,
            Source::Bytes { name, .. } => name,
        }
    }
}

fn spool(
    db: &AgentDb,
    sha256: &str,
    source: Source<'_>,
    size: u64,
) -> Result<Enqueued, UploadError> {
    let path = source.name();
    let digest = parse_digest(sha256)?;
    if let Some(queued) = get(db, &digest)?.filter(|e| e.refused.is_none())
        && spool_file(db, &digest).is_file()
    {
        if queued.size != size {
            return Err(UploadError::SizeMismatch {
                path: path.to_owned(),
                expected: size,
                actual: queued.size,
            });
        }
        return Ok(Enqueued::AlreadyQueued);
    }
    let pending = pending_bytes(db)?;
    if pending.saturating_add(size) > MAX_SPOOL_BYTES {
        return Err(UploadError::SpoolFull {
            pending,
            size,
            limit: MAX_SPOOL_BYTES,
        });
    }
    let dir = spool_dir(db);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let target = spool_file(db, &digest);
    let tmp = dir.join(format!("{sha256}.tmp"));
    let copied = copy_checked(source, &tmp, &digest, size);
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &target).map_err(io(&target))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    put(
        db,
        &digest,
        &SpoolEntry {
            size,
            enqueued_unix_ms: crate::clock::unix_ms(),
            refused: None,
        },
    )?;
    tracing::debug!(sha256, size, "artifact queued for upload");
    Ok(Enqueued::Queued)
}

/// Copies `from` to `to`, hashing on the way; refuses a size or digest other than recorded.
fn copy_checked(
    source: Source<'_>,
    to: &Path,
    digest: &[u8; 32],
    size: u64,
) -> Result<(), UploadError> {
    let from = source.name();
    let (mut src, actual): (Box<dyn std::io::Read + '_>, u64) = match source {
        Source::File(path) => {
            let file = std::fs::File::open(path).map_err(io(path))?;
            let len = file.metadata().map_err(io(path))?.len();
            (Box::new(file), len)
        }
        Source::Bytes { bytes, .. } => (Box::new(bytes), bytes.len() as u64),
    };
    if actual != size {
        return Err(UploadError::SizeMismatch {
            path: from.to_owned(),
            expected: size,
            actual,
        });
    }
    let mut dst = std::fs::File::create(to).map_err(io(to))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut copied = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(io(from))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(io(to))?;
        copied += n as u64;
    }
    let got: [u8; 32] = hasher.finalize().into();
    if copied != size {
        return Err(UploadError::SizeMismatch {
            path: from.to_owned(),
            expected: size,
            actual: copied,
        });
    }
    if got != *digest {
        return Err(UploadError::DigestMismatch {
            path: from.to_owned(),
            expected: hex::encode(digest),
            actual: hex::encode(got),
        });
    }
    dst.sync_all().map_err(io(to))
}

/// The spool entry of `sha256`, if any (pending or refused; uploaded ones are gone).
pub fn get(db: &AgentDb, sha256: &[u8; 32]) -> Result<Option<SpoolEntry>, UploadError> {
    let read = db.redb().begin_read().map_err(|e| db.err(e))?;
    let table = match read.open_table(SPOOL) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(db.err(e).into()),
    };
    let Some(value) = table.get(sha256).map_err(|e| db.err(e))? else {
        return Ok(None);
    };
    decode(sha256, value.value()).map(Some)
}

/// Every spool entry, oldest first.
pub fn entries(db: &AgentDb) -> Result<Vec<([u8; 32], SpoolEntry)>, UploadError> {
    let read = db.redb().begin_read().map_err(|e| db.err(e))?;
    let table = match read.open_table(SPOOL) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db.err(e).into()),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(|e| db.err(e))? {
        let (key, value) = row.map_err(|e| db.err(e))?;
        let key = key.value();
        out.push((key, decode(&key, value.value())?));
    }
    out.sort_by_key(|(key, e)| (e.enqueued_unix_ms, *key));
    Ok(out)
}

/// The entries still to upload, oldest first.
pub fn pending(db: &AgentDb) -> Result<Vec<([u8; 32], SpoolEntry)>, UploadError> {
    Ok(entries(db)?
        .into_iter()
        .filter(|(_, e)| e.refused.is_none())
        .collect())
}

fn pending_bytes(db: &AgentDb) -> Result<u64, UploadError> {
    Ok(pending(db)?.iter().map(|(_, e)| e.size).sum())
}

/// The aggregator stored `sha256`: drops its row and its copy.
pub fn mark_uploaded(db: &AgentDb, sha256: &[u8; 32]) -> Result<(), UploadError> {
    let write = db.redb().begin_write().map_err(|e| db.err(e))?;
    {
        let mut table = write.open_table(SPOOL).map_err(|e| db.err(e))?;
        table.remove(sha256).map_err(|e| db.err(e))?;
    }
    write.commit().map_err(|e| db.err(e))?;
    remove_copy(db, sha256)
}

/// The aggregator refused `sha256` for good: keeps the row as refused (with `why`) and drops the copy.
pub fn mark_refused(db: &AgentDb, sha256: &[u8; 32], why: &str) -> Result<(), UploadError> {
    if let Some(mut entry) = get(db, sha256)? {
        entry.refused = Some(why.chars().take(512).collect());
        put(db, sha256, &entry)?;
    }
    remove_copy(db, sha256)
}

fn remove_copy(db: &AgentDb, sha256: &[u8; 32]) -> Result<(), UploadError> {
    let path = spool_file(db, sha256);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&path)(e)),
    }
}

fn put(db: &AgentDb, sha256: &[u8; 32], entry: &SpoolEntry) -> Result<(), UploadError> {
    let bytes = serde_json::to_vec(entry).map_err(|e| UploadError::Corrupt {
        sha256: hex::encode(sha256),
        detail: e.to_string(),
    })?;
    let write = db.redb().begin_write().map_err(|e| db.err(e))?;
    {
        let mut table = write.open_table(SPOOL).map_err(|e| db.err(e))?;
        table
            .insert(sha256, bytes.as_slice())
            .map_err(|e| db.err(e))?;
    }
    write.commit().map_err(|e| db.err(e))?;
    Ok(())
}

fn decode(sha256: &[u8; 32], bytes: &[u8]) -> Result<SpoolEntry, UploadError> {
    serde_json::from_slice(bytes).map_err(|e| UploadError::Corrupt {
        sha256: hex::encode(sha256),
        detail: e.to_string(),
    })
}

/// How [`wait_uploaded`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Every digest is uploaded.
    Uploaded,
    /// Some were refused for good: (sha256 hex, why).
    Refused(Vec<(String, String)>),
    /// Still pending when the time was up: their sha256 hex.
    TimedOut(Vec<String>),
}

/// Waits until none of `digests` (hex) is pending in the spool, at most `within`: what `gait-agent push`
/// without `--no-wait` does before it exits, so a CI job's workspace can go.
pub async fn wait_uploaded(
    db: &AgentDb,
    digests: &[String],
    within: Duration,
) -> Result<WaitOutcome, UploadError> {
    let mut raw = Vec::with_capacity(digests.len());
    for d in digests {
        raw.push(parse_digest(d)?);
    }
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let db2 = db.clone();
        let raw2 = raw.clone();
        let states = tokio::task::spawn_blocking(move || {
            raw2.iter()
                .map(|d| get(&db2, d).map(|e| (*d, e)))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| UploadError::Io {
            path: spool_dir(db),
            source: std::io::Error::other(e),
        })??;
        let waiting: Vec<String> = states
            .iter()
            .filter(|(_, e)| e.as_ref().is_some_and(|e| e.refused.is_none()))
            .map(|(d, _)| hex::encode(d))
            .collect();
        if waiting.is_empty() {
            let refused: Vec<(String, String)> = states
                .into_iter()
                .filter_map(|(d, e)| Some((hex::encode(d), e?.refused?)))
                .collect();
            return Ok(if refused.is_empty() {
                WaitOutcome::Uploaded
            } else {
                WaitOutcome::Refused(refused)
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(WaitOutcome::TimedOut(waiting));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, AgentDb) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = AgentDb::open(dir.path().join("agent.redb")).expect("db");
        (dir, db)
    }

    #[test]
    fn enqueue_copies_checks_and_dedups() {
        let (dir, db) = db();
        let file = dir.path().join("runpack.zip");
        std::fs::write(&file, b"runpack bytes").expect("write");
        let sha = hex::encode(Sha256::digest(b"runpack bytes"));
        assert_eq!(
            enqueue(&db, &sha, &file, 13).expect("queued"),
            Enqueued::Queued
        );
        // The source may go: the spool holds a copy.
        std::fs::remove_file(&file).expect("rm");
        let raw = parse_digest(&sha).expect("digest");
        assert_eq!(
            std::fs::read(spool_file(&db, &raw)).expect("copy"),
            b"runpack bytes"
        );
        std::fs::write(&file, b"runpack bytes").expect("write");
        assert_eq!(
            enqueue(&db, &sha, &file, 13).expect("again"),
            Enqueued::AlreadyQueued
        );
        assert_eq!(pending(&db).expect("pending").len(), 1);

        // A size or digest other than recorded is refused and leaves nothing behind.
        let err = enqueue(&db, &"ab".repeat(32), &file, 13).expect_err("digest");
        assert!(matches!(err, UploadError::DigestMismatch { .. }), "{err}");
        let err = enqueue(&db, &sha, &file, 12).expect_err("size");
        assert!(matches!(err, UploadError::SizeMismatch { .. }), "{err}");
        assert!(matches!(
            enqueue(&db, "ABC", &file, 13),
            Err(UploadError::BadDigest(_))
        ));
        let names: Vec<_> = std::fs::read_dir(spool_dir(&db))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(&sha)]);

        mark_refused(&db, &raw, "too_large: above the cap").expect("refused");
        assert!(pending(&db).expect("pending").is_empty());
        assert!(!spool_file(&db, &raw).exists());
        assert_eq!(
            get(&db, &raw)
                .expect("get")
                .and_then(|e| e.refused)
                .as_deref(),
            Some("too_large: above the cap")
        );
        // Queued again after a refusal (e.g. uploads re-enabled): pending once more.
        assert_eq!(
            enqueue(&db, &sha, &file, 13).expect("requeued"),
            Enqueued::Queued
        );
        mark_uploaded(&db, &raw).expect("uploaded");
        assert!(get(&db, &raw).expect("get").is_none());
        assert!(!spool_file(&db, &raw).exists());
    }

    #[tokio::test]
    async fn wait_uploaded_reports_pending_refused_and_uploaded() {
        let (dir, db) = db();
        let mut digests = Vec::new();
        for content in [&b"first"[..], &b"second"[..]] {
            let file = dir.path().join("artifact");
            std::fs::write(&file, content).expect("write");
            let sha = hex::encode(Sha256::digest(content));
            enqueue(&db, &sha, &file, content.len() as u64).expect("queued");
            digests.push(sha);
        }
        let within = Duration::from_millis(50);
        assert_eq!(
            wait_uploaded(&db, &digests, within).await.expect("wait"),
            WaitOutcome::TimedOut(digests.clone())
        );
        let raw: Vec<[u8; 32]> = digests
            .iter()
            .map(|d| parse_digest(d).expect("hex"))
            .collect();
        mark_uploaded(&db, &raw[0]).expect("uploaded");
        mark_refused(&db, &raw[1], "forbidden: uploads are not enabled").expect("refused");
        assert_eq!(
            wait_uploaded(&db, &digests, within).await.expect("wait"),
            WaitOutcome::Refused(vec![(
                digests[1].clone(),
                "forbidden: uploads are not enabled".to_owned()
            )])
        );
        assert_eq!(
            wait_uploaded(&db, &digests[..1], within)
                .await
                .expect("wait"),
            WaitOutcome::Uploaded
        );
    }
}
