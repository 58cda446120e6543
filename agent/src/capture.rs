//! Gait artifacts a run or a CI job produced, captured as evidence: runpacks, signed traces, regress results
//! and their JUnit reports.
//!
//! - [`verify`]: one file's bytes -> a verified [`ArtifactRecord`](gait_artifact::evidence::ArtifactRecord)
//!   (kind detected from content, verified as `gait` does, §7 projection) or the reason it is invalid.
//! - [`import`]: verified records enqueued as `artifact.*` outbox records exactly once, by SHA-256, in the
//!   same commit as the digest table; shared by every way in.
//! - [`push`]: `gait-agent push FILE|DIR…` — through the running daemon's local API (`POST /v1/artifacts`,
//!   then `GET /v1/outbox` until committed), or, with no daemon, straight into the agent database and through
//!   an in-process uplink until the aggregator committed the records.
//! - [`watch`]: the daemon task that imports new artifacts from `capture.watch` directories.
//! - When the bundle in force says `settings.upload_artifacts`, the bytes of every newly enqueued artifact are
//!   also copied into the upload spool ([`crate::upload`]), which the daemon sends to the aggregator's blob
//!   store ([`spool_uploads`]). The record goes first and alone decides "captured": an upload that cannot be
//!   spooled is logged and counted, never a reason to lose the record.
//!
//! Dependency direction: `verify` and `import` depend on protocol crates, the outbox and the database only, so
//! the local API and the daemon use them. `push` is the command side (used by `main`, like
//! [`crate::bundle_import`]): it is the one part that starts a [`crate::daemon::Daemon`], in process.

pub mod import;
pub mod push;
pub mod verify;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use import::{FileResult, Offered, Outcome};
pub use verify::{InvalidArtifact, MAX_ARTIFACT_BYTES, TraceKeys};

use crate::config::Config;
use crate::outbox::OutboxError;
use crate::state::AgentState;
use gait_artifact::evidence::ArtifactSource;

/// Artifacts enqueued since start (push through the daemon and watched directories).
pub static IMPORTED: AtomicU64 = AtomicU64::new(0);
/// Invalid artifacts found in watched directories since start (each file version counted once).
pub static WATCH_INVALID: AtomicU64 = AtomicU64::new(0);

/// Metric names.
pub mod metric {
    /// Artifacts enqueued since start.
    pub const IMPORTED: &str = "gait_agent_capture_imported_total";
    /// Invalid artifacts found in watched directories since start.
    pub const WATCH_INVALID: &str = "gait_agent_capture_watch_invalid_total";
}

/// A trace key file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{key}: cannot load the public key {path}: {detail}")]
pub struct KeyLoadError {
    /// The dotted config key.
    pub key: String,
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub detail: String,
}

/// The keys artifact signatures are checked with: the agent's own trace key (from `gate.signing_key`, else
/// `<data_dir>/keys/trace_public.key` when the daemon generated it) and `capture.trace_public_keys`.
pub fn load_trace_keys(config: &Config) -> Result<TraceKeys, KeyLoadError> {
    use gait_canon::sign::{load_private_key_file, load_public_key_file};
    let mut keys = Vec::new();
    match &config.gate.signing_key {
        Some(path) => keys.push(
            load_private_key_file(path)
                .map_err(|e| KeyLoadError {
                    key: "gate.signing_key".to_owned(),
                    path: path.clone(),
                    detail: e.to_string(),
                })?
                .public_key(),
        ),
        None => {
            let path = config
                .data_dir
                .join("keys")
                .join(crate::gate::engine::TRACE_PUBLIC_KEY);
            if path.is_file() {
                keys.push(load_public_key_file(&path).map_err(|e| KeyLoadError {
                    key: "data_dir".to_owned(),
                    path: path.clone(),
                    detail: e.to_string(),
                })?);
            }
        }
    }
    for (i, path) in config.capture.trace_public_keys.iter().enumerate() {
        keys.push(load_public_key_file(path).map_err(|e| KeyLoadError {
            key: format!("capture.trace_public_keys[{i}]"),
            path: path.clone(),
            detail: e.to_string(),
        })?);
    }
    Ok(TraceKeys::new(keys))
}

/// Why artifacts could not be imported into the running agent (nothing of the call was stored).
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The outbox refused or failed the commit (full, storage failing).
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The blocking import task panicked or was cancelled.
    #[error("artifact import task failed: {0}")]
    Task(String),
}

/// Imports `offered` into the running agent's outbox (verification and the commit on the blocking pool), then
/// wakes the shipper.
pub async fn import_into(
    state: &Arc<AgentState>,
    offered: Vec<Offered>,
    source: ArtifactSource,
) -> Result<Vec<(String, Outcome)>, ImportError> {
    let outbox = state.outbox().clone();
    let keys = state.trace_keys();
    let active = state.active_bundle();
    let bundle = active.as_ref().map(|a| a.bundle_ref());
    let upload = active
        .as_ref()
        .is_some_and(|a| a.bundle.manifest.settings.upload_artifacts);
    let db = state.db().clone();
    let now = crate::state::now_unix_ms();
    let outcomes = tokio::task::spawn_blocking(move || {
        let outcomes = import::import(&outbox, &offered, source, &keys, bundle, now)?;
        if upload {
            spool_uploads(&db, &offered, &outcomes);
        }
        Ok::<_, OutboxError>(
            offered
                .into_iter()
                .map(|o| o.name)
                .zip(outcomes)
                .collect::<Vec<_>>(),
        )
    })
    .await
    .map_err(|e| ImportError::Task(e.to_string()))??;
    let enqueued = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Enqueued { .. }))
        .count() as u64;
    if enqueued > 0 {
        IMPORTED.fetch_add(enqueued, Ordering::Relaxed);
        state.wake_shipper();
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests;

/// Artifacts whose bytes could not be copied into the upload spool (their records were enqueued).
pub static SPOOL_FAILED: AtomicU64 = AtomicU64::new(0);

/// Copies the bytes of every artifact `outcomes` newly enqueued into the upload spool (blocking). Returns the
/// SHA-256 of each one spooled (or already waiting there). A failure is logged at ERROR and counted in
/// [`SPOOL_FAILED`]: the record is already durable, and only the bytes' optional copy is missing.
pub fn spool_uploads(
    db: &crate::db::AgentDb,
    offered: &[Offered],
    outcomes: &[Outcome],
) -> Vec<String> {
    let mut spooled = Vec::new();
    for (file, outcome) in offered.iter().zip(outcomes) {
        let Outcome::Enqueued { record, .. } = outcome else {
            continue;
        };
        let name = std::path::Path::new(&file.name);
        match crate::upload::enqueue_bytes(db, &record.sha256, name, &file.bytes) {
            Ok(_) => spooled.push(record.sha256.clone()),
            Err(error) => {
                SPOOL_FAILED.fetch_add(1, Ordering::Relaxed);
                tracing::error!(file = %file.name, sha256 = %record.sha256, %error,
                    "artifact recorded, but its bytes could not be queued for upload");
            }
        }
    }
    spooled
}

/// Whether the bundle cached as active in `db` asks for artifact uploads, re-verified with the trust root and
/// scope of `config` (what `gait-agent push` decides with when no daemon runs). Anything unverifiable means
/// no: the aggregator refuses uploads its environment did not enable anyway.
pub fn uploads_enabled_offline(config: &Config, db: &crate::db::AgentDb) -> bool {
    let verified = || -> Result<bool, String> {
        let cache = crate::bundle_cache::BundleCache::open(db).map_err(|e| e.to_string())?;
        let Some(cached) = cache.active().map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let identity = crate::identity::AgentIdentity::from_cert_file(&config.tls.cert)
            .map_err(|e| e.to_string())?;
        let scope = gait_bundle::Scope {
            org: identity.org.clone(),
            project: identity.project.clone(),
            env: identity.env.clone(),
        };
        let trust =
            crate::daemon::activation::load_trust(&config.trust.registry_public_keys, &cache)?;
        let since = cached
            .activated_at_unix_ms
            .unwrap_or(cached.received_at_unix_ms);
        let bundle = gait_bundle::verify_with(
            &cached.raw,
            &trust.options(&scope, None, since.div_euclid(1000)),
        )
        .map_err(|e| e.to_string())?;
        Ok(bundle.digest == cached.digest && bundle.manifest.settings.upload_artifacts)
    };
    verified().unwrap_or_else(|reason| {
        tracing::warn!(%reason, "cannot read the active bundle's upload setting; artifact bytes are not uploaded");
        false
    })
}
