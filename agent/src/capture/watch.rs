//! The daemon task that imports Gait artifacts from watched directories (`capture.watch`).
//!
//! Polling, every `capture.poll_interval_ms` (see docs/adr/0005-edge.md for why not inotify): each scan lists
//! the artifact-looking files ([`super::push::is_artifact_name`]) under every watched directory, recursively.
//! A file is read only once its size and modification time were the same in two scans in a row, and it is
//! imported only if they are still the same after reading, so a file being written is never imported half-way.
//! Import goes through [`super::import`], which enqueues each digest once across restarts (the digest table
//! lives in the agent database), so a restart re-reads stable files but enqueues nothing again.
//!
//! A stable file that is not a valid artifact is logged at WARN and counted
//! ([`super::metric::WATCH_INVALID`]) once per version (size, mtime); it is looked at again only when it
//! changes. Files that are not Gait artifacts at all (another JSON document) are ignored the same way, at
//! DEBUG. Memory: one small entry per file seen, dropped when the file disappears.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use gait_artifact::evidence::ArtifactSource;
use tokio_util::sync::CancellationToken;

use super::import::{Offered, Outcome};
use crate::state::AgentState;

/// Most bytes of files read in one import commit.
const BATCH_BYTES: u64 = 16 * 1024 * 1024;

/// What a scan saw of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    size: u64,
    modified: Option<SystemTime>,
}

/// Per-file memory of the watcher.
#[derive(Debug, Default)]
struct Seen {
    /// The version seen at the last scan.
    last: Option<Version>,
    /// The version already handled (imported, found a duplicate, or reported invalid).
    done: Option<Version>,
}

/// Spawns the watcher on `tasks` (nothing when `dirs` is empty).
pub fn spawn(
    tasks: &gait_runtime::Tasks,
    state: Arc<AgentState>,
    dirs: Vec<PathBuf>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if dirs.is_empty() {
        return;
    }
    tasks.spawn("capture-watch", run(state, dirs, interval, shutdown));
}

/// Scans until `shutdown` is cancelled.
pub async fn run(
    state: Arc<AgentState>,
    dirs: Vec<PathBuf>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    tracing::info!(dirs = ?dirs, interval_ms = interval.as_millis() as u64, "watching directories for gait artifacts");
    let mut seen: BTreeMap<PathBuf, Seen> = BTreeMap::new();
    loop {
        let listing = {
            let dirs = dirs.clone();
            tokio::task::spawn_blocking(move || list(&dirs)).await
        };
        match listing {
            Ok(listing) => scan_once(&state, &mut seen, listing).await,
            Err(e) => tracing::warn!(error = %e, "watched directory scan failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Every artifact-looking file under `dirs` with its version.
fn list(dirs: &[PathBuf]) -> Vec<(PathBuf, Version)> {
    let mut out = Vec::new();
    for dir in dirs {
        let mut skipped = Vec::new();
        super::push::walk(dir, &mut out, &mut skipped);
    }
    out.into_iter()
        .filter_map(|path| {
            let meta = std::fs::metadata(&path).ok()?;
            Some((
                path,
                Version {
                    size: meta.len(),
                    modified: meta.modified().ok(),
                },
            ))
        })
        .collect()
}

async fn scan_once(
    state: &Arc<AgentState>,
    seen: &mut BTreeMap<PathBuf, Seen>,
    listing: Vec<(PathBuf, Version)>,
) {
    let present: BTreeSet<PathBuf> = listing.iter().map(|(p, _)| p.clone()).collect();
    seen.retain(|path, _| present.contains(path));
    let mut ready = Vec::new();
    for (path, version) in listing {
        let entry = seen.entry(path.clone()).or_default();
        let stable = entry.last == Some(version);
        entry.last = Some(version);
        if stable && entry.done != Some(version) {
            ready.push((path, version));
        }
    }
    let mut batch: Vec<(PathBuf, Version, Offered)> = Vec::new();
    let mut bytes = 0u64;
    for (path, version) in ready {
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || read_stable(&path, version)).await
        };
        let Ok(Some(content)) = read else {
            // Changed while it was read, vanished, or unreadable: looked at again at the next scans.
            continue;
        };
        bytes += content.len() as u64;
        batch.push((
            path.clone(),
            version,
            Offered {
                name: path.display().to_string(),
                bytes: content,
            },
        ));
        if bytes >= BATCH_BYTES {
            import_batch(state, seen, std::mem::take(&mut batch)).await;
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        import_batch(state, seen, batch).await;
    }
}

/// The file's bytes if its version is still `version` after reading them; `None` if it changed (still being
/// written), vanished or is too large.
fn read_stable(path: &Path, version: Version) -> Option<Vec<u8>> {
    if version.size > super::MAX_ARTIFACT_BYTES {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    let meta = std::fs::metadata(path).ok()?;
    let after = Version {
        size: meta.len(),
        modified: meta.modified().ok(),
    };
    (after == version && bytes.len() as u64 == version.size).then_some(bytes)
}

async fn import_batch(
    state: &Arc<AgentState>,
    seen: &mut BTreeMap<PathBuf, Seen>,
    batch: Vec<(PathBuf, Version, Offered)>,
) {
    let (keys, offered): (Vec<(PathBuf, Version)>, Vec<Offered>) =
        batch.into_iter().map(|(p, v, o)| ((p, v), o)).unzip();
    let outcomes = match super::import_into(state, offered, ArtifactSource::Watch).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            // Nothing was stored; the files stay candidates and are tried again at the next scan.
            tracing::warn!(error = %e, files = keys.len(), "watched artifacts could not be enqueued; retrying at the next scan");
            return;
        }
    };
    for ((path, version), (_, outcome)) in keys.into_iter().zip(outcomes) {
        match &outcome {
            Outcome::Enqueued { seq, record } => tracing::info!(
                file = %path.display(),
                seq,
                kind = record.artifact_kind.as_str(),
                sha256 = %record.sha256,
                "watched artifact enqueued"
            ),
            Outcome::Duplicate { seq, .. } => {
                tracing::debug!(file = %path.display(), seq, "watched artifact already enqueued")
            }
            Outcome::Invalid(e) if e.is_unknown_kind() => {
                tracing::debug!(file = %path.display(), reason = %e, "not a gait artifact; ignored")
            }
            Outcome::Invalid(e) => {
                super::WATCH_INVALID.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %path.display(), reason = %e, "invalid gait artifact in a watched directory; not enqueued");
            }
        }
        if let Some(entry) = seen.get_mut(&path) {
            entry.done = Some(version);
        }
    }
}
