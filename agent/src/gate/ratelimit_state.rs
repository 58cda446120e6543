//! The rate-limit state file of the gate (`gate eval`: `.gait-out/gate_rate_limits.json`;
//! `gait.gate.rate_limit_state`) under an exclusive lock, so concurrent `gate eval` processes never lose or
//! double-count a request. The daemon counts in memory and in its database instead
//! ([`super::ratelimit_counters`]) and only reads a `<data_dir>/gate_rate_limits.json` an older agent left, once,
//! to import it.
//!
//! The lock is `<state>.lock`, shared with Gait's protocol: an exclusive `flock` (fs4) guards it between
//! `gait-agent` processes, the holder writes Gait's lock metadata into it (so a Gait process sees a live lock and
//! waits) and deletes it before unlocking (so an idle state leaves no lock file behind, as with Gait). A lock
//! file found non-empty after the flock was won belongs to a Gait process (live if younger than 15 s) or to a
//! crashed holder (taken over). Waiting is bounded: 3 s, then `acquire rate limit lock: timeout` (exit 1).
//! Counting itself is [`gait_policy::gate::RateLimitState`]'s; this module only loads, locks and saves.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gait_policy::gate::{MAX_RATE_LIMIT_STATE_BYTES, RateLimitError, RateLimitState};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::gate::files;

/// How long a process waits for the lock.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between lock attempts.
const LOCK_RETRY: Duration = Duration::from_millis(15);
/// Age after which a foreign lock file counts as abandoned (Gait's rule).
const LOCK_STALE_AFTER: Duration = Duration::from_secs(15);
/// Marker written by this implementation; Gait ignores unknown fields.
const HOLDER: &str = "gait-agent";

/// The state file could not be locked, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process held the lock for longer than [`LOCK_TIMEOUT`].
    #[error("acquire rate limit lock: timeout")]
    LockTimeout,
    /// The lock file could not be created or locked.
    #[error("acquire rate limit lock: {0}")]
    Lock(String),
    /// The state file exists but could not be read.
    #[error("read rate limit state: {0}")]
    Read(String),
    /// The state file is not a rate-limit state document.
    #[error(transparent)]
    Parse(#[from] RateLimitError),
    /// The new state could not be written.
    #[error("write rate limit state: {0}")]
    Write(String),
}

/// Gait's lock metadata (`gait.gate.rate_limit_lock`), plus this implementation's holder marker.
#[derive(Debug, Serialize, Deserialize)]
struct LockMetadata {
    #[serde(default)]
    schema_id: String,
    #[serde(default)]
    schema_version: String,
    #[serde(default)]
    pid: u32,
    #[serde(default)]
    created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<String>,
}

/// The state file opened under its lock. Dropping it without [`RateLimitStore::commit`] discards changes.
#[derive(Debug)]
pub struct RateLimitStore {
    path: PathBuf,
    lock: LockGuard,
    loaded: RateLimitState,
    /// The counters; mutate them through [`RateLimitState::enforce`].
    pub state: RateLimitState,
}

impl RateLimitStore {
    /// Lock `<path>.lock` (waiting up to `timeout`) and read `path` (a missing file is an empty state).
    pub fn open(path: &Path, timeout: Duration) -> Result<RateLimitStore, StateError> {
        let lock = LockGuard::acquire(&lock_path(path), timeout)?;
        let state = match fs::File::open(path) {
            Ok(file) => {
                let mut bytes = Vec::new();
                let cap = u64::try_from(MAX_RATE_LIMIT_STATE_BYTES)
                    .unwrap_or(u64::MAX)
                    .saturating_add(1);
                file.take(cap)
                    .read_to_end(&mut bytes)
                    .map_err(|e| StateError::Read(files::go_path_error("read", path, &e)))?;
                RateLimitState::from_json(&bytes)?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => RateLimitState::new(),
            Err(e) => return Err(StateError::Read(files::go_path_error("open", path, &e))),
        };
        Ok(RateLimitStore {
            path: path.to_path_buf(),
            lock,
            loaded: state.clone(),
            state,
        })
    }

    /// Write the state (atomically, mode 0600) when it changed, then release the lock.
    pub fn commit(self) -> Result<(), StateError> {
        if self.state != self.loaded {
            files::create_parent_dirs(&self.path)
                .and_then(|()| files::write_atomic(&self.path, &self.state.to_json_pretty()))
                .map_err(|e| StateError::Write(files::go_reason(&e)))?;
        }
        self.lock.release();
        Ok(())
    }
}

/// Unreadable rate-limit state files set aside since start (the agent's `gait_agent_rate_limit_state_resets_total`).
pub static STATE_RESETS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Moves an unreadable state file aside (`<state>.unreadable-<unix ms>`, kept for inspection) so counting
/// starts afresh, logs an ERROR naming both paths and the cause, and counts it in [`STATE_RESETS`]. Counters
/// reset: requests already counted in the current buckets are allowed again once, which is what an operator
/// deleting the file (the only remedy before) did too.
pub fn set_aside(path: &Path, cause: &StateError) -> Result<(), StateError> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".unreadable-{}", crate::clock::unix_ms()));
    let aside = PathBuf::from(name);
    fs::rename(path, &aside)
        .map_err(|e| StateError::Write(files::go_path_error("rename", path, &e)))?;
    STATE_RESETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::error!(
        state = %path.display(),
        moved_to = %aside.display(),
        cause = %cause,
        "rate-limit state was unreadable: set aside, counting starts afresh (decisions go on)"
    );
    Ok(())
}

/// `<state>.lock`, the lock file Gait uses.
pub fn lock_path(state_path: &Path) -> PathBuf {
    let mut name = state_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// An exclusive lock on a lock file; released (and the file removed) on drop.
#[derive(Debug)]
struct LockGuard {
    path: PathBuf,
    file: Option<File>,
}

impl LockGuard {
    fn acquire(path: &Path, timeout: Duration) -> Result<LockGuard, StateError> {
        files::create_parent_dirs(path).map_err(|e| StateError::Lock(files::go_reason(&e)))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(file) = try_acquire(path)? {
                return Ok(LockGuard {
                    path: path.to_path_buf(),
                    file: Some(file),
                });
            }
            if Instant::now() >= deadline {
                return Err(StateError::LockTimeout);
            }
            std::thread::sleep(LOCK_RETRY);
        }
    }

    fn release(mut self) {
        self.unlock();
    }

    fn unlock(&mut self) {
        if let Some(file) = self.file.take() {
            // Remove while still holding the flock: a waiter that then wins the flock on the old inode sees the
            // path gone (or replaced) and retries on the current file.
            let _ = fs::remove_file(&self.path);
            let _ = fs4::FileExt::unlock(&file);
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.unlock();
    }
}

/// One attempt: `Some(file)` when this process now owns the lock.
fn try_acquire(path: &Path) -> Result<Option<File>, StateError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| StateError::Lock(files::go_path_error("open", path, &e)))?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => {}
        Err(fs4::TryLockError::WouldBlock) => return Ok(None),
        Err(fs4::TryLockError::Error(e)) => {
            return Err(StateError::Lock(files::go_reason(&e)));
        }
    }
    if !still_at_path(&file, path) || held_by_live_foreign_process(&mut file) {
        let _ = fs4::FileExt::unlock(&file);
        return Ok(None);
    }
    write_metadata(&mut file).map_err(|e| StateError::Lock(files::go_reason(&e)))?;
    Ok(Some(file))
}

/// Whether the locked file is still the one at `path` (the previous holder may have removed it meanwhile).
fn still_at_path(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// A non-empty lock file whose flock we won was written either by a crashed `gait-agent` (our holders keep the
/// flock until they delete the file) or by a Gait process, which does not flock: honour the latter while it
/// is younger than [`LOCK_STALE_AFTER`].
fn held_by_live_foreign_process(file: &mut File) -> bool {
    let mut content = String::new();
    if file.read_to_string(&mut content).is_err() || content.trim().is_empty() {
        return false;
    }
    let metadata: Option<LockMetadata> = serde_json::from_str(content.trim()).ok();
    if metadata
        .as_ref()
        .and_then(|m| m.holder.as_deref())
        .is_some_and(|h| h == HOLDER)
    {
        return false;
    }
    let now = crate::clock::now_utc();
    let created = metadata
        .and_then(|m| OffsetDateTime::parse(m.created_at.trim(), &Rfc3339).ok())
        .or_else(|| {
            file.metadata()
                .and_then(|m| m.modified())
                .ok()
                .map(OffsetDateTime::from)
        });
    let stale_after = i64::try_from(LOCK_STALE_AFTER.as_secs()).unwrap_or(i64::MAX);
    created.is_some_and(|t| (now - t).whole_seconds() <= stale_after)
}

fn write_metadata(file: &mut File) -> io::Result<()> {
    let metadata = LockMetadata {
        schema_id: "gait.gate.rate_limit_lock".into(),
        schema_version: "1.0.0".into(),
        pid: std::process::id(),
        created_at: crate::clock::now_utc()
            .format(&Rfc3339)
            .map_err(io::Error::other)?,
        holder: Some(HOLDER.into()),
    };
    let mut line = serde_json::to_vec(&metadata).map_err(io::Error::other)?;
    line.push(b'\n');
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&line)?;
    file.sync_data()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock
    use super::*;
    use gait_policy::gotime::GoTime;
    use gait_policy::policy::RateLimitPolicy;

    fn limit(requests: i64) -> RateLimitPolicy {
        RateLimitPolicy {
            requests,
            window: "hour".into(),
            scope: "tool".into(),
        }
    }

    #[test]
    fn counts_persist_across_opens_and_the_lock_file_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".gait-out/gate_rate_limits.json");
        let now = GoTime::parse_rfc3339("2026-02-05T10:30:00Z").unwrap();
        for _ in 0..2 {
            let mut store = RateLimitStore::open(&path, LOCK_TIMEOUT).unwrap();
            assert!(
                store
                    .state
                    .enforce(&limit(5), "t", "a", now)
                    .unwrap()
                    .allowed
            );
            store.commit().unwrap();
        }
        let store = RateLimitStore::open(&path, LOCK_TIMEOUT).unwrap();
        assert_eq!(store.state.count("hour|tool|2026-02-05T10:00:00Z|t"), 2);
        drop(store);
        assert!(!lock_path(&path).exists(), "idle state leaves no lock file");
    }

    #[test]
    fn a_held_lock_times_out_and_a_released_one_is_acquired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let held = RateLimitStore::open(&path, LOCK_TIMEOUT).unwrap();
        let err = RateLimitStore::open(&path, Duration::from_millis(60)).expect_err("held");
        assert!(matches!(err, StateError::LockTimeout));
        assert_eq!(err.to_string(), "acquire rate limit lock: timeout");
        drop(held);
        assert!(RateLimitStore::open(&path, Duration::from_millis(60)).is_ok());
    }

    #[test]
    fn a_fresh_gait_lock_file_is_honoured_and_a_stale_one_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let fresh = format!(
            "{{\"schema_id\":\"gait.gate.rate_limit_lock\",\"schema_version\":\"1.0.0\",\"pid\":1,\"created_at\":\"{}\"}}\n",
            OffsetDateTime::now_utc().format(&Rfc3339).unwrap()
        );
        fs::write(lock_path(&path), fresh).unwrap();
        assert!(matches!(
            RateLimitStore::open(&path, Duration::from_millis(60)),
            Err(StateError::LockTimeout)
        ));
        fs::write(
            lock_path(&path),
            "{\"schema_id\":\"gait.gate.rate_limit_lock\",\"pid\":1,\"created_at\":\"2020-01-01T00:00:00Z\"}\n",
        )
        .unwrap();
        assert!(RateLimitStore::open(&path, Duration::from_millis(60)).is_ok());
    }

    #[test]
    fn a_lock_left_by_a_crashed_gait_agent_is_taken_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let mut file = File::create(lock_path(&path)).unwrap();
        write_metadata(&mut file).unwrap();
        drop(file);
        assert!(RateLimitStore::open(&path, Duration::from_millis(60)).is_ok());
    }

    #[test]
    fn a_corrupt_state_file_is_a_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "not json").unwrap();
        let err = RateLimitStore::open(&path, LOCK_TIMEOUT).expect_err("corrupt");
        assert!(
            err.to_string().starts_with("parse rate limit state:"),
            "{err}"
        );
    }
}
