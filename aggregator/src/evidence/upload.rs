//! Artifact uploads from agents into the blob store, resumable ([`gait_wire::blob`]).
//!
//! Design:
//! - **Who**: the uploader is the agent of the connection's verified certificate ([`AgentKey`]), never a
//!   field. Every partial upload lives in that agent's own directory, `<data_dir>/uploads/<h>/` with `h` the
//!   SHA-256 of the agent key, so one agent can neither read, extend nor complete another's upload.
//! - **Partial uploads**: `<h>/<sha256 hex>.<size>.part`, appended chunk by chunk (each chunk synced before it
//!   is acknowledged), so its length is the offset every offer answers after a dropped connection or a restart.
//!   A chunk whose offset is not that length is not applied; the reply carries the length to continue from.
//! - **Bounds**: the offered size at most `evidence.blobs.max_blob_bytes` and
//!   `evidence.uploads.max_partial_bytes_per_agent`; per agent at most `max_partials_per_agent` partial
//!   uploads whose offered sizes sum to at most `max_partial_bytes_per_agent`; a partial upload untouched for
//!   `partial_ttl_seconds` is deleted (at the agent's next offer and by [`Uploads::sweep`]).
//! - **Completion**: when the last byte arrives, the whole content is hashed and compared with the offer
//!   (SHA-256 and size); a mismatch deletes the partial upload and stores nothing. Then [`BlobStore::put`]
//!   checks again, and a row of `artifact_uploads` records the agent (its environment is the tenancy the
//!   content route reads through).
//! - **Setting**: the environment's current bundle must say `settings.upload_artifacts`; an offer from an
//!   environment whose bundle does not is refused (`Forbidden`), so an operator who turns uploads off stops
//!   them at the aggregator too, without waiting for every agent to apply the bundle.
//! - **Already there**: an offer is answered `Stored` without bytes only when an agent of the same environment
//!   already uploaded that digest and the blob store holds it. A digest uploaded by another environment must
//!   be uploaded again (and is then hashed): knowing a digest never grants its content to a new tenant.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gait_store::{AgentKey, ArtifactUpload, Store, StoreError, Tenant};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

use super::blob::{BlobDigest, BlobError, BlobStore};
use crate::auth::Authorized;
use crate::metrics::{self, Metrics};
use crate::registry::Registry;

/// Default of `evidence.uploads.max_partials_per_agent`.
pub const DEFAULT_MAX_PARTIALS_PER_AGENT: u32 = 4;
/// Default of `evidence.uploads.max_partial_bytes_per_agent`: 1 GiB.
pub const DEFAULT_MAX_PARTIAL_BYTES_PER_AGENT: u64 = 1024 * 1024 * 1024;
/// Default of `evidence.uploads.partial_ttl_seconds`: a day.
pub const DEFAULT_PARTIAL_TTL_SECONDS: u64 = 86_400;

/// Values of the `reason` label of [`crate::metrics::BLOB_UPLOADS_REFUSED`].
pub const REFUSAL_REASONS: [&str; 6] = [
    "disabled",
    "too_large",
    "quota",
    "digest_mismatch",
    "bad_chunk",
    "unknown_agent",
];

/// `evidence.uploads.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Partial uploads one agent may hold at a time (1 to 1024). Default 4.
    pub max_partials_per_agent: u32,
    /// Sum of the offered sizes of one agent's partial uploads, in bytes (at least 1). Default 1073741824.
    pub max_partial_bytes_per_agent: u64,
    /// A partial upload untouched this long is deleted (60 to 2592000). Default 86400.
    pub partial_ttl_seconds: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            max_partials_per_agent: DEFAULT_MAX_PARTIALS_PER_AGENT,
            max_partial_bytes_per_agent: DEFAULT_MAX_PARTIAL_BYTES_PER_AGENT,
            partial_ttl_seconds: DEFAULT_PARTIAL_TTL_SECONDS,
        }
    }
}

impl UploadConfig {
    /// The problems of `evidence.uploads.*`, as (dotted key below `evidence.`, message).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !(1..=1024).contains(&self.max_partials_per_agent) {
            out.push((
                "uploads.max_partials_per_agent".into(),
                format!("is {}; must be 1 to 1024", self.max_partials_per_agent),
            ));
        }
        if self.max_partial_bytes_per_agent == 0 {
            out.push((
                "uploads.max_partial_bytes_per_agent".into(),
                "must be at least 1".into(),
            ));
        }
        if !(60..=2_592_000).contains(&self.partial_ttl_seconds) {
            out.push((
                "uploads.partial_ttl_seconds".into(),
                format!(
                    "is {}; must be 60 to 2592000 (30 days)",
                    self.partial_ttl_seconds
                ),
            ));
        }
        out
    }
}

/// Where an upload stands after an offer or a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The aggregator holds this many bytes: continue from there.
    Have(u64),
    /// Verified, stored and recorded; nothing more to send.
    Stored {
        /// The content's length.
        size: u64,
    },
}

/// Why an upload step was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The environment's current bundle does not enable uploads.
    #[error(
        "artifact uploads are not enabled for this environment: publish its bundle with \
         `gait-aggregator publish --upload-artifacts` (manifest.settings.upload_artifacts)"
    )]
    Disabled,
    /// Larger than the blob size cap or the agent's partial quota.
    #[error("the upload is {size} bytes, above {key} ({limit})")]
    TooLarge {
        /// The offered size.
        size: u64,
        /// The dotted config key of the limit.
        key: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The agent holds as many partial uploads (or bytes) as it may; retry when one completes or expires.
    #[error(
        "the agent holds {partials} partial uploads of {bytes} bytes, the most evidence.uploads allows; \
         finish or let one expire, then retry"
    )]
    Quota {
        /// Partial uploads held.
        partials: usize,
        /// Their offered sizes, summed.
        bytes: u64,
    },
    /// The complete content does not match the offer; nothing was stored and the partial upload is gone.
    #[error(
        "the uploaded content hashes to {actual} ({size} bytes), not to the offered {offered}: nothing stored"
    )]
    DigestMismatch {
        /// The offered digest.
        offered: BlobDigest,
        /// What the bytes hash to.
        actual: BlobDigest,
        /// Bytes received.
        size: u64,
    },
    /// A chunk that cannot belong to the upload (too large, past the offered size).
    #[error("bad chunk: {0}")]
    BadChunk(String),
    /// No upload of this digest is in progress for this agent (never offered, completed, or expired).
    #[error(
        "no upload of {0} is in progress for this agent (expired or never offered): offer it again"
    )]
    NotInProgress(BlobDigest),
    /// The uploading agent has no row (it never said hello).
    #[error("the agent is unknown to the store")]
    UnknownAgent,
    /// A partial upload file could not be read or written.
    #[error("partial upload {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The blob store failed or refused the content.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The environment's bundle could not be read.
    #[error("the environment's bundle could not be read: {0}")]
    Registry(String),
}

impl UploadError {
    /// The `reason` label when this error is a refusal of the agent's upload, `None` for a server failure.
    pub fn refusal_reason(&self) -> Option<&'static str> {
        match self {
            Self::Disabled => Some("disabled"),
            Self::TooLarge { .. } | Self::Blob(BlobError::TooLarge { .. }) => Some("too_large"),
            Self::Quota { .. } => Some("quota"),
            Self::DigestMismatch { .. } | Self::Blob(BlobError::DigestMismatch { .. }) => {
                Some("digest_mismatch")
            }
            Self::BadChunk(_) | Self::NotInProgress(_) => Some("bad_chunk"),
            Self::UnknownAgent => Some("unknown_agent"),
            Self::Io { .. } | Self::Blob(_) | Self::Store(_) | Self::Registry(_) => None,
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

impl From<StoreError> for UploadError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownAgent { .. } => Self::UnknownAgent,
            other => Self::Store(other),
        }
    }
}

/// Serialises the steps of one (agent, digest) upload.
type UploadLock = Arc<tokio::sync::Mutex<()>>;

/// One kept partial upload.
#[derive(Debug)]
struct Partial {
    path: PathBuf,
    digest: BlobDigest,
    size: u64,
    have: u64,
}

/// The upload service: partial uploads under the data directory, the blob store, the upload rows.
pub struct Uploads {
    dir: PathBuf,
    config: UploadConfig,
    blobs: BlobStore,
    store: Store,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    /// One lock per (agent, digest): chunks of one upload are applied one at a time; (agent, `None`) orders one
    /// agent's offers, so its quota is checked against a stable set of partial uploads.
    locks: Mutex<HashMap<(AgentKey, Option<BlobDigest>), UploadLock>>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

impl Uploads {
    /// Partial uploads kept under `data_dir/uploads`, completed ones stored in `blobs` and recorded in `store`;
    /// `registry` tells whether an environment enables uploads.
    pub fn new(
        data_dir: &Path,
        config: UploadConfig,
        blobs: BlobStore,
        store: Store,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            dir: data_dir.join("uploads"),
            config,
            blobs,
            store,
            registry,
            metrics,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The blob store completed uploads go to.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Agent `agent` offers `size` bytes hashing to `sha256`: where to continue from, or `Stored`.
    pub async fn offer(
        &self,
        agent: &AgentKey,
        sha256: [u8; 32],
        size: u64,
    ) -> Result<Progress, UploadError> {
        let out = self
            .offer_inner(agent, BlobDigest::from_raw(sha256), size)
            .await;
        self.count(agent, &out);
        out
    }

    /// Bytes `offset..` of the upload of `sha256` by `agent`: where to continue from, or `Stored`.
    pub async fn chunk(
        &self,
        agent: &AgentKey,
        sha256: [u8; 32],
        offset: u64,
        bytes: &[u8],
    ) -> Result<Progress, UploadError> {
        let out = self
            .chunk_inner(agent, BlobDigest::from_raw(sha256), offset, bytes)
            .await;
        self.count(agent, &out);
        out
    }

    fn count(&self, agent: &AgentKey, out: &Result<Progress, UploadError>) {
        if let Err(e) = out {
            match e.refusal_reason() {
                Some(reason) => {
                    metrics::inc_labelled(&self.metrics.blob_uploads, "outcome", "refused");
                    metrics::inc_labelled(&self.metrics.blob_uploads_refused, "reason", reason);
                    warn!(%agent, reason, error = %e, "artifact upload refused");
                }
                None => warn!(%agent, error = %e, "artifact upload failed"),
            }
        }
    }

    async fn offer_inner(
        &self,
        agent: &AgentKey,
        digest: BlobDigest,
        size: u64,
    ) -> Result<Progress, UploadError> {
        let cap = self.blobs.max_bytes();
        if size > cap {
            return Err(UploadError::TooLarge {
                size,
                key: "evidence.blobs.max_blob_bytes",
                limit: cap,
            });
        }
        if size > self.config.max_partial_bytes_per_agent {
            return Err(UploadError::TooLarge {
                size,
                key: "evidence.uploads.max_partial_bytes_per_agent",
                limit: self.config.max_partial_bytes_per_agent,
            });
        }
        if !self.enabled(&agent.tenant).await? {
            return Err(UploadError::Disabled);
        }
        // Offers of one agent are counted against its quota one at a time (the agent-wide lock), and the
        // steps of one upload are applied one at a time (the per-digest lock).
        let agent_lock = self.lock(agent, None);
        let _agent_held = agent_lock.lock().await;
        let lock = self.lock(agent, Some(digest));
        let _held = lock.lock().await;
        if let Some(done) = self.already_stored(&agent.tenant, &digest, size).await? {
            return Ok(done);
        }
        let dir = self.agent_dir(agent);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(UploadError::io(&dir))?;
        let mut others = Vec::new();
        let mut found = None;
        for partial in self.partials(&dir).await? {
            if partial.digest != digest {
                others.push(partial);
            } else if partial.size == size && partial.have <= size {
                found = Some(partial);
            } else {
                // The same digest offered with another size: the old bytes cannot be the same content.
                remove(&partial.path).await?;
            }
        }
        if let Some(partial) = found {
            if partial.have > 0 {
                metrics::inc_labelled(&self.metrics.blob_uploads, "outcome", "resumed");
                info!(%agent, sha256 = %digest, have = partial.have, size, "artifact upload resumed");
            }
            touch(&partial.path).await?;
            return self.finish_if_complete(agent, &partial).await;
        }
        let held: u64 = others.iter().map(|p| p.size).sum();
        if others.len() >= self.config.max_partials_per_agent as usize
            || held.saturating_add(size) > self.config.max_partial_bytes_per_agent
        {
            return Err(UploadError::Quota {
                partials: others.len(),
                bytes: held,
            });
        }
        let path = dir.join(format!("{}.{size}.part", digest.hex()));
        tokio::fs::File::create(&path)
            .await
            .map_err(UploadError::io(&path))?;
        metrics::inc_labelled(&self.metrics.blob_uploads, "outcome", "started");
        self.finish_if_complete(
            agent,
            &Partial {
                path,
                digest,
                size,
                have: 0,
            },
        )
        .await
    }

    async fn chunk_inner(
        &self,
        agent: &AgentKey,
        digest: BlobDigest,
        offset: u64,
        bytes: &[u8],
    ) -> Result<Progress, UploadError> {
        if bytes.len() > gait_wire::MAX_BLOB_CHUNK_BYTES {
            return Err(UploadError::BadChunk(format!(
                "{} bytes, above the {} byte chunk limit",
                bytes.len(),
                gait_wire::MAX_BLOB_CHUNK_BYTES
            )));
        }
        let lock = self.lock(agent, Some(digest));
        let _held = lock.lock().await;
        let dir = self.agent_dir(agent);
        let partial = self
            .partials(&dir)
            .await?
            .into_iter()
            .find(|p| p.digest == digest)
            .ok_or(UploadError::NotInProgress(digest))?;
        if offset != partial.have {
            return Ok(Progress::Have(partial.have));
        }
        let len = bytes.len() as u64;
        if partial.have.saturating_add(len) > partial.size {
            remove(&partial.path).await?;
            return Err(UploadError::BadChunk(format!(
                "bytes {offset}..{} run past the offered size {}; the upload is dropped, offer it again",
                offset.saturating_add(len),
                partial.size
            )));
        }
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&partial.path)
            .await
            .map_err(UploadError::io(&partial.path))?;
        file.write_all(bytes)
            .await
            .map_err(UploadError::io(&partial.path))?;
        file.sync_data()
            .await
            .map_err(UploadError::io(&partial.path))?;
        drop(file);
        self.metrics.blob_upload_bytes.inc_by(len);
        let partial = Partial {
            have: partial.have + len,
            ..partial
        };
        self.finish_if_complete(agent, &partial).await
    }

    /// Verifies and stores a partial upload that holds every byte; otherwise reports its offset.
    async fn finish_if_complete(
        &self,
        agent: &AgentKey,
        partial: &Partial,
    ) -> Result<Progress, UploadError> {
        if partial.have < partial.size {
            return Ok(Progress::Have(partial.have));
        }
        let bytes = tokio::fs::read(&partial.path)
            .await
            .map_err(UploadError::io(&partial.path))?;
        let size = bytes.len() as u64;
        let actual = BlobDigest::from_raw(Sha256::digest(&bytes).into());
        if actual != partial.digest || size != partial.size {
            remove(&partial.path).await?;
            return Err(UploadError::DigestMismatch {
                offered: partial.digest,
                actual,
                size,
            });
        }
        self.blobs.put(&partial.digest, Bytes::from(bytes)).await?;
        self.store
            .record_artifact_upload(agent, &partial.digest.hex(), size, crate::clock::unix_ms())
            .await?;
        remove(&partial.path).await?;
        metrics::inc_labelled(&self.metrics.blob_uploads, "outcome", "completed");
        info!(%agent, sha256 = %partial.digest, size, backend = self.blobs.backend(), "artifact uploaded");
        Ok(Progress::Stored { size })
    }

    /// `Stored` when an agent of `tenant` already uploaded `digest` with this size and the blob store holds it.
    async fn already_stored(
        &self,
        tenant: &Tenant,
        digest: &BlobDigest,
        size: u64,
    ) -> Result<Option<Progress>, UploadError> {
        let Some(row) = self.store.artifact_upload(tenant, &digest.hex()).await? else {
            return Ok(None);
        };
        if row.size_bytes != size {
            return Ok(None);
        }
        Ok((self.blobs.size(digest).await? == Some(size)).then_some(Progress::Stored { size }))
    }

    async fn enabled(&self, tenant: &Tenant) -> Result<bool, UploadError> {
        let Some(bundle) = self
            .registry
            .latest(tenant)
            .await
            .map_err(|e| UploadError::Registry(e.to_string()))?
        else {
            return Ok(false);
        };
        let manifest = gait_bundle::inspect(&bundle.bytes)
            .map_err(|e| UploadError::Registry(e.to_string()))?;
        Ok(manifest.settings.upload_artifacts)
    }

    /// The lock of one upload (`Some(digest)`) or of all of one agent's offers (`None`).
    fn lock(&self, agent: &AgentKey, digest: Option<BlobDigest>) -> UploadLock {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Drop the locks nobody holds, so the map stays as small as the uploads in flight.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry((agent.clone(), digest)).or_default().clone()
    }

    fn agent_dir(&self, agent: &AgentKey) -> PathBuf {
        self.dir
            .join(hex::encode(Sha256::digest(agent.to_string().as_bytes())))
    }

    /// The partial uploads in `dir`, deleting those untouched for longer than the TTL and any stray file.
    async fn partials(&self, dir: &Path) -> Result<Vec<Partial>, UploadError> {
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(UploadError::io(dir)(e)),
        };
        let now_ms = crate::clock::unix_ms();
        while let Some(entry) = entries.next_entry().await.map_err(UploadError::io(dir))? {
            let path = entry.path();
            let meta = entry.metadata().await.map_err(UploadError::io(&path))?;
            let parsed = entry.file_name().to_str().and_then(parse_partial_name);
            let Some((digest, size)) = parsed.filter(|_| meta.is_file()) else {
                warn!(path = %path.display(), "stray file among partial uploads; removed");
                remove(&path).await?;
                continue;
            };
            if self.expired(&meta, now_ms) {
                info!(path = %path.display(), "partial upload expired; removed");
                remove(&path).await?;
                continue;
            }
            out.push(Partial {
                path,
                digest,
                size,
                have: meta.len(),
            });
        }
        Ok(out)
    }

    fn expired(&self, meta: &std::fs::Metadata, now_ms: i64) -> bool {
        let Ok(modified) = meta.modified() else {
            return false;
        };
        let Ok(since) = modified.duration_since(std::time::UNIX_EPOCH) else {
            return false;
        };
        let modified_ms = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
        let ttl_ms =
            i64::try_from(self.config.partial_ttl_seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
        now_ms.saturating_sub(modified_ms) > ttl_ms
    }

    /// Deletes every partial upload untouched for longer than `evidence.uploads.partial_ttl_seconds`, of every
    /// agent (an agent that never comes back does not keep its bytes). Returns how many were deleted.
    pub async fn sweep(&self) -> Result<usize, UploadError> {
        let mut entries = match tokio::fs::read_dir(&self.dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(UploadError::io(&self.dir)(e)),
        };
        let now_ms = crate::clock::unix_ms();
        let mut removed = 0;
        while let Some(agent_dir) = entries
            .next_entry()
            .await
            .map_err(UploadError::io(&self.dir))?
        {
            let dir = agent_dir.path();
            let mut files = match tokio::fs::read_dir(&dir).await {
                Ok(files) => files,
                Err(_) => continue,
            };
            let mut left = 0;
            while let Some(file) = files.next_entry().await.map_err(UploadError::io(&dir))? {
                let path = file.path();
                match file.metadata().await {
                    Ok(meta) if self.expired(&meta, now_ms) => {
                        remove(&path).await?;
                        removed += 1;
                    }
                    _ => left += 1,
                }
            }
            if left == 0 {
                let _ = tokio::fs::remove_dir(&dir).await;
            }
        }
        Ok(removed)
    }

    /// The bytes of `sha256` as an agent of the caller's environment uploaded them, checked against the digest
    /// on the way out; `None` when no agent of that environment uploaded it (or the store lost it).
    pub async fn content(
        &self,
        caller: &Authorized<Tenant>,
        sha256: &str,
    ) -> Result<Option<(ArtifactUpload, Bytes)>, UploadError> {
        let digest = BlobDigest::parse(sha256)?;
        let Some(row) = self
            .store
            .artifact_upload(caller.target(), &digest.hex())
            .await?
        else {
            return Ok(None);
        };
        Ok(self.blobs.get(&digest).await?.map(|bytes| (row, bytes)))
    }
}

/// `<64 hex>.<size>.part` -> (digest, size).
fn parse_partial_name(name: &str) -> Option<(BlobDigest, u64)> {
    let rest = name.strip_suffix(".part")?;
    let (hex, size) = rest.split_once('.')?;
    Some((BlobDigest::parse(hex).ok()?, size.parse().ok()?))
}

async fn remove(path: &Path) -> Result<(), UploadError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(UploadError::io(path)(e)),
    }
}

/// Refreshes a partial upload's modification time, so an upload in progress does not expire.
async fn touch(path: &Path) -> Result<(), UploadError> {
    let file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .await
        .map_err(UploadError::io(path))?;
    let std_file = file.into_std().await;
    let now = std::fs::FileTimes::new().set_modified(crate::clock::system_now());
    tokio::task::spawn_blocking(move || std_file.set_times(now))
        .await
        .map_err(|e| UploadError::io(path)(std::io::Error::other(e)))?
        .map_err(UploadError::io(path))
}

/// How often [`Uploads::sweep`] runs in the background.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// Runs [`Uploads::sweep`] every [`SWEEP_INTERVAL`] until `token` is cancelled.
pub fn spawn_sweeper(
    tasks: &gait_runtime::Tasks,
    uploads: Arc<Uploads>,
    token: tokio_util::sync::CancellationToken,
) {
    tasks.spawn("upload-sweeper", async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => match uploads.sweep().await {
                    Ok(0) => {}
                    Ok(n) => info!(removed = n, "expired partial uploads removed"),
                    Err(e) => warn!(error = %e, "partial upload sweep failed"),
                },
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_names_round_trip_and_strays_are_not_partials() {
        let d = BlobDigest::of(b"x");
        let name = format!("{}.{}.part", d.hex(), 42);
        assert_eq!(parse_partial_name(&name), Some((d, 42)));
        assert_eq!(parse_partial_name(&format!("{}.part", d.hex())), None);
        assert_eq!(parse_partial_name(&format!("{}.x.part", d.hex())), None);
        assert_eq!(parse_partial_name("../etc.1.part"), None);
        assert_eq!(parse_partial_name(&format!("{}.1.tmp", d.hex())), None);
    }

    #[test]
    fn config_problems_name_the_key() {
        assert!(UploadConfig::default().problems().is_empty());
        let bad = UploadConfig {
            max_partials_per_agent: 0,
            max_partial_bytes_per_agent: 0,
            partial_ttl_seconds: 1,
        };
        let keys: Vec<String> = bad.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "uploads.max_partials_per_agent",
                "uploads.max_partial_bytes_per_agent",
                "uploads.partial_ttl_seconds"
            ]
        );
    }
}
