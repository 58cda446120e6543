//! The agent's one durable file: a redb database holding the outbox, the verified-bundle cache and local
//! counters, owned by exactly one `gait-agent` process.
//!
//! redb takes an exclusive lock on the file when it opens it, so a second agent pointed at the same data
//! directory fails fast with [`DbError::Locked`] instead of corrupting the first one's state. Write
//! transactions use redb's default durability (`fsync` before `commit()` returns) except two, which say why
//! they may skip it: plain acknowledgements (redone after a crash) and the outbox committer's groups (durable
//! in the outbox's write-ahead log first, `crate::outbox::wal`, replayed on open and after a re-open). Modules
//! that own tables (`outbox`, `bundle_cache`) document their own crash rules.
//!
//! The file holds the arguments of every intent the agent decided, so it is private to the agent's user: the
//! data directory holding it is 0700 and the file 0600, both created so and narrowed on open when an older
//! build left them open to group or others (0755/0644).
//!
//! # Healing after a storage failure
//! redb latches the first failed write or fsync (a full disk, an I/O error): from then on every operation of
//! that `redb::Database` answers `PreviousIo` ("close and re-open the database"), even once space is back.
//! So every redb error that means "storage failed" ([`DbError::is_storage_failure`]) marks this handle as
//! failing ([`AgentDb::failure`], counted in [`StorageHealth::errors`]), and [`AgentDb::heal`] (run by the
//! daemon about every second while failing) closes the latched database, opens the file again (redb
//! repairs it from its last durable commit, so nothing committed is lost and nothing uncommitted appears)
//! and proves the disk takes writes with one durable probe commit before it clears the mark. Every clone of
//! the handle shares the one slot, so the outbox, the bundle cache and the state continue on the re-opened
//! database without being rebuilt; an operation that arrives while the slot is empty (between the close and
//! a successful open) gets redb's `DatabaseClosed`, a storage failure like the others.
//!
//! All methods block on disk I/O: async callers run them on `tokio::task::spawn_blocking`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// Version of the table layout this build writes. Bumped when a table changes shape; an older agent refuses
/// a file written by a newer one instead of misreading it.
pub const FORMAT_VERSION: u64 = 1;

/// Page cache redb may use. The agent's working set is a few MiB (a bounded outbox and a handful of
/// bundles); redb's own default (1 GiB) is sized for servers.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Key/value table describing the file itself (`format` -> [`FORMAT_VERSION`]).
const FILE_META: TableDefinition<'static, &str, u64> = TableDefinition::new("agent_file_meta");
const FORMAT_KEY: &str = "format";
/// Key in [`FILE_META`] counting the probe commits [`AgentDb::heal`] made (one small write per heal).
const PROBE_KEY: &str = "storage_probes";

/// Errors opening or using the agent database. Every variant names the file so an operator knows which one.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Another process holds redb's exclusive lock on the file.
    #[error(
        "another gait-agent holds {path}: stop that agent, or give this one a different data directory"
    )]
    Locked { path: PathBuf },
    /// The parent directory could not be created.
    #[error("cannot create the data directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data directory or the database file could not be made private to this user (0700 / 0600).
    #[error("cannot make {path} private to this user (mode {mode:o}): {source}")]
    Permissions {
        path: PathBuf,
        mode: u32,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a redb database, or redb's checksums found damage it cannot repair.
    #[error(
        "{path} is corrupted ({detail}): move it aside and restart the agent; records it held that the \
         aggregator had not acknowledged are lost, and the agent will pull its bundle again"
    )]
    Corrupted { path: PathBuf, detail: String },
    /// The file was written by a redb version with an older on-disk format.
    #[error(
        "{path} uses redb file format {version}, which this gait-agent cannot open: upgrade it with the \
         gait-agent release that wrote it, or move it aside"
    )]
    UpgradeRequired { path: PathBuf, version: u8 },
    /// The file was written by a newer gait-agent with a table layout this build does not know.
    #[error(
        "{path} has agent table format {found}, this gait-agent understands up to {supported}: run the \
         newer gait-agent, or move the file aside"
    )]
    NewerFormat {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    /// Any other redb failure (I/O error, full disk, poisoned transaction).
    #[error("agent database {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
}

impl DbError {
    /// True when retrying the same operation later may succeed (transient I/O, e.g. a full disk, or the
    /// database closed while it is re-opened). Lock contention, corruption and format mismatches need an
    /// operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::Storage { source, .. } => {
                is_io_failure(source) || matches!(source, redb::Error::TransactionInProgress)
            }
            _ => false,
        }
    }

    /// True when the storage under the database failed (an I/O error such as a full disk, redb's latched
    /// `PreviousIo` after one, or the database closed for re-opening): the handle needs [`AgentDb::heal`].
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, DbError::Storage { source, .. } if is_io_failure(source))
    }
}

/// The redb errors that mean the storage failed, not the request or the file's content.
fn is_io_failure(source: &redb::Error) -> bool {
    matches!(
        source,
        redb::Error::Io(_)
            | redb::Error::PreviousIo
            | redb::Error::DatabaseClosed
            | redb::Error::Backend(_)
    )
}

/// Creates `dir` (and missing parents) with mode 0700 and narrows an existing one open to group or others.
fn create_private_dir(dir: &Path) -> Result<(), DbError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| DbError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    narrow(dir, 0o700)
}

/// Creates the database file with mode 0600 when it is missing (redb initialises an empty file) and narrows
/// an existing one open to group or others.
fn create_private_file(path: &Path) -> Result<(), DbError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(DbError::Permissions {
                    path: path.to_path_buf(),
                    mode: 0o600,
                    source,
                });
            }
        }
    }
    narrow(path, 0o600)
}

/// Sets `path` to `mode` when its group or others have any access; logs that it did.
fn narrow(path: &Path, mode: u32) -> Result<(), DbError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let fail = |source| DbError::Permissions {
            path: path.to_path_buf(),
            mode,
            source,
        };
        let was = std::fs::metadata(path).map_err(fail)?.permissions().mode() & 0o777;
        if was & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)?;
            tracing::warn!(path = %path.display(), was = format!("{was:o}"), now = format!("{mode:o}"),
                "agent data was open to group or others; narrowed");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Shared handle to the agent's redb file. Cheap to clone; the file closes when the last clone drops.
#[derive(Clone)]
pub struct AgentDb {
    inner: Arc<Inner>,
}

struct Inner {
    /// The open database; `None` between closing a latched one and opening the file again.
    db: RwLock<Option<Arc<redb::Database>>>,
    path: PathBuf,
    /// The storage failure that marked this handle, until [`AgentDb::heal`] succeeds.
    failure: Mutex<Option<String>>,
    errors: AtomicU64,
    reopens: AtomicU64,
    /// Serialises [`AgentDb::heal`] calls.
    heal: Mutex<()>,
    /// Tests only: while set, every write and sync of the file fails (an injected storage failure).
    #[cfg(test)]
    fail_writes: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Storage failure counters of one [`AgentDb`] (for `/metrics` and `status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageHealth {
    /// The failure that is not healed yet, if any.
    pub failure: Option<String>,
    /// Database operations that failed on storage since start.
    pub errors: u64,
    /// Times the database was closed and opened again after a failure since start.
    pub reopens: u64,
}

/// A counted reference to the open database for one operation. `begin_read` / `begin_write` answer redb's
/// `DatabaseClosed` while the handle is between a close and a re-open, so callers handle that like any other
/// storage error.
pub(crate) struct Redb(Option<Arc<redb::Database>>);

impl Redb {
    fn closed() -> redb::TransactionError {
        redb::TransactionError::Storage(redb::StorageError::DatabaseClosed)
    }

    /// [`redb::Database::begin_read`].
    pub(crate) fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        self.0.as_ref().ok_or_else(Self::closed)?.begin_read()
    }

    /// [`redb::Database::begin_write`].
    pub(crate) fn begin_write(&self) -> Result<redb::WriteTransaction, redb::TransactionError> {
        self.0.as_ref().ok_or_else(Self::closed)?.begin_write()
    }
}

impl fmt::Debug for AgentDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentDb")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl AgentDb {
    /// Opens the database at `path`, creating the file (and its parent directories) if missing. After an
    /// unclean shutdown redb repairs the file from its last durable commit before this returns.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DbError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        create_private_file(&path)?;
        let db = open_redb(&path)?;
        let this = AgentDb {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(Arc::new(db))),
                path,
                failure: Mutex::new(None),
                errors: AtomicU64::new(0),
                reopens: AtomicU64::new(0),
                heal: Mutex::new(()),
                #[cfg(test)]
                fail_writes: None,
            }),
        };
        this.check_format()?;
        Ok(this)
    }

    /// Opens `path` on a file backend whose writes and syncs fail while `fail` is set (so are those of every
    /// re-open), to test what a storage failure does.
    #[cfg(test)]
    pub(crate) fn open_failable(
        path: impl AsRef<Path>,
        fail: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Self, DbError> {
        let path = path.as_ref().to_path_buf();
        let db = open_failable_redb(&path, &fail)?;
        let this = AgentDb {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(Arc::new(db))),
                path,
                failure: Mutex::new(None),
                errors: AtomicU64::new(0),
                reopens: AtomicU64::new(0),
                heal: Mutex::new(()),
                fail_writes: Some(fail),
            }),
        };
        this.check_format()?;
        Ok(this)
    }

    /// The file this handle has open.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The underlying redb database, for modules that own tables in this file.
    pub(crate) fn redb(&self) -> Redb {
        Redb(
            self.inner
                .db
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }

    /// Wraps a redb failure into a [`DbError`] naming this file; a storage failure marks the handle as
    /// failing until [`AgentDb::heal`] succeeds.
    pub(crate) fn err(&self, source: impl Into<redb::Error>) -> DbError {
        let error = classify(&self.inner.path, source.into());
        if error.is_storage_failure() {
            self.inner.errors.fetch_add(1, Ordering::Relaxed);
            let mut failure = lock(&self.inner.failure);
            if failure.is_none() {
                tracing::error!(path = %self.inner.path.display(), error = %error,
                    "agent database storage failed: decisions are refused until it heals (free space on \
                     its filesystem; the agent re-opens the database by itself)");
                *failure = Some(error.to_string());
            }
        }
        error
    }

    /// The storage failure not healed yet, if any.
    pub fn failure(&self) -> Option<String> {
        lock(&self.inner.failure).clone()
    }

    /// Failure counters.
    pub fn health(&self) -> StorageHealth {
        StorageHealth {
            failure: self.failure(),
            errors: self.inner.errors.load(Ordering::Relaxed),
            reopens: self.inner.reopens.load(Ordering::Relaxed),
        }
    }

    /// How many times the database was re-opened after a storage failure (each one took redb back to its last
    /// durable commit).
    pub fn reopens(&self) -> u64 {
        self.inner.reopens.load(Ordering::Acquire)
    }

    /// After a storage failure: closes the latched database, opens the file again (redb recovers its last
    /// durable commit) and commits one small probe durably. `Ok(true)` when the handle was failing and is
    /// healthy again, `Ok(false)` when nothing was failing, an error (retry later) while the storage still
    /// fails. Blocking; concurrent calls are serialised.
    pub fn heal(&self) -> Result<bool, DbError> {
        let _one = lock(&self.inner.heal);
        if self.failure().is_none() {
            return Ok(false);
        }
        // A probe on the current database first: it succeeds when the failure was one that did not latch
        // (e.g. a read error) or the database was already re-opened.
        if self.probe().is_err() {
            self.reopen()?;
            self.probe()?;
        }
        *lock(&self.inner.failure) = None;
        tracing::info!(path = %self.inner.path.display(), "agent database storage healed: decisions resume");
        Ok(true)
    }

    /// Closes the current database (if no operation still holds it) and opens the file again.
    fn reopen(&self) -> Result<(), DbError> {
        let mut slot = self
            .inner
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = slot.take() {
            match Arc::try_unwrap(current) {
                Ok(db) => {
                    // A write transaction still alive defers the close to its end; the open below then
                    // fails as locked and the next heal tries again.
                    if let Err(e) = db.close() {
                        tracing::debug!(error = %e, "closing the failed agent database");
                    }
                }
                Err(still_used) => {
                    *slot = Some(still_used);
                    return Err(DbError::Storage {
                        path: self.inner.path.clone(),
                        source: redb::Error::TransactionInProgress,
                    });
                }
            }
        }
        #[cfg(test)]
        let db = match &self.inner.fail_writes {
            Some(fail) => open_failable_redb(&self.inner.path, fail)?,
            None => open_redb(&self.inner.path)?,
        };
        #[cfg(not(test))]
        let db = open_redb(&self.inner.path)?;
        // Counted before the new database is handed out (both under the slot's write lock): the outbox reads
        // the count after beginning a write transaction to know whether to replay its log.
        self.inner.reopens.fetch_add(1, Ordering::AcqRel);
        *slot = Some(Arc::new(db));
        tracing::info!(path = %self.inner.path.display(), "agent database re-opened after a storage failure");
        Ok(())
    }

    /// Closes the database as a storage failure leaves it (every operation fails until [`AgentDb::heal`]).
    #[cfg(test)]
    pub(crate) fn close_for_test(&self) {
        let mut slot = self
            .inner
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = slot.take().and_then(|db| Arc::try_unwrap(db).ok()) {
            let _ = db.close();
        }
    }

    /// One durable write: proves the storage takes commits again.
    fn probe(&self) -> Result<(), DbError> {
        let write = self.redb().begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = write.open_table(FILE_META).map_err(|e| self.err(e))?;
            let probes = table
                .get(PROBE_KEY)
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value());
            table
                .insert(PROBE_KEY, probes.wrapping_add(1))
                .map_err(|e| self.err(e))?;
        }
        write.commit().map_err(|e| self.err(e))
    }

    /// Stamps a fresh file with [`FORMAT_VERSION`], or refuses a file from a newer agent.
    fn check_format(&self) -> Result<(), DbError> {
        let read = self.redb().begin_read().map_err(|e| self.err(e))?;
        let found = match read.open_table(FILE_META) {
            Ok(table) => table
                .get(FORMAT_KEY)
                .map_err(|e| self.err(e))?
                .map(|v| v.value()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(self.err(e)),
        };
        drop(read);
        match found {
            Some(v) if v > FORMAT_VERSION => Err(DbError::NewerFormat {
                path: self.inner.path.clone(),
                found: v,
                supported: FORMAT_VERSION,
            }),
            Some(_) => Ok(()),
            None => {
                let write = self.redb().begin_write().map_err(|e| self.err(e))?;
                {
                    let mut table = write.open_table(FILE_META).map_err(|e| self.err(e))?;
                    table
                        .insert(FORMAT_KEY, FORMAT_VERSION)
                        .map_err(|e| self.err(e))?;
                }
                write.commit().map_err(|e| self.err(e))
            }
        }
    }
}

/// Opens (creating if missing) the redb file at `path` with the agent's settings.
fn open_redb(path: &Path) -> Result<redb::Database, DbError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|e| classify(path, e.into()))
}

#[cfg(test)]
fn open_failable_redb(
    path: &Path,
    fail: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<redb::Database, DbError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| classify(path, redb::Error::Io(e)))?;
    let inner = redb::backends::FileBackend::new(file).map_err(|e| classify(path, e.into()))?;
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true)
        .create_with_backend(failable::Failable {
            inner,
            fail: Arc::clone(fail),
        })
        .map_err(|e| classify(path, e.into()))
}

/// A file backend whose writes and syncs fail on demand (tests of storage failures).
#[cfg(test)]
mod failable {
    use std::ops::Bound;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use redb::{BackendError, StorageBackend};

    #[derive(Debug)]
    pub(super) struct Failable {
        pub(super) inner: redb::backends::FileBackend,
        pub(super) fail: Arc<AtomicBool>,
    }

    impl Failable {
        fn check(&self) -> std::io::Result<()> {
            if self.fail.load(Ordering::Acquire) {
                return Err(std::io::Error::other("injected storage failure"));
            }
            Ok(())
        }
    }

    impl StorageBackend for Failable {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.inner.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.inner.close()
        }
        fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.try_lock_shared_range(start, end)
        }
        fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.lock_range(start, end)
        }
        fn lock_shared_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<(), BackendError> {
            self.inner.lock_shared_range(start, end)
        }
        fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
            self.inner.unlock_range(start, end)
        }
        fn query_lock_range(
            &self,
            start: Bound<u64>,
            end: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.query_lock_range(start, end)
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn classify(path: &Path, source: redb::Error) -> DbError {
    let path = path.to_path_buf();
    match source {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            DbError::Locked { path }
        }
        redb::Error::Corrupted(detail) => DbError::Corrupted { path, detail },
        redb::Error::UpgradeRequired(version) => DbError::UpgradeRequired { path, version },
        source => DbError::Storage { path, source },
    }
}

/// `capture_imported`: the SHA-256 (64 lowercase hex) of every artifact file the agent enqueued as an
/// `artifact.*` record (`gait-agent push`, watched directories) -> the record's seq and the import time (Unix
/// ms), both 8 bytes big-endian. Written in the same commit as the record ([`crate::capture::import`]), so a
/// digest is here exactly when its record was enqueued; never deleted (about 100 bytes a file).
pub(crate) const CAPTURE_IMPORTED: TableDefinition<'static, &str, [u8; 16]> =
    TableDefinition::new("capture_imported");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_of_the_same_file_is_refused_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        let _first = AgentDb::open(&path).unwrap();
        let err = AgentDb::open(&path).unwrap_err();
        assert!(matches!(err, DbError::Locked { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("another gait-agent holds"), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
    }

    #[test]
    fn file_can_be_reopened_after_the_last_handle_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/dir/agent.redb");
        let db = AgentDb::open(&path).unwrap();
        let clone = db.clone();
        drop(db);
        assert!(matches!(AgentDb::open(&path), Err(DbError::Locked { .. })));
        drop(clone);
        AgentDb::open(&path).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_database_is_reported_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = AgentDb::open(&path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_failed_database_is_marked_counted_and_healed_by_reopening_keeping_its_commits() {
        use crate::outbox::{NewRecord, Outbox, OutboxError, OutboxLimits};
        let dir = tempfile::tempdir().unwrap();
        let db = AgentDb::open(dir.path().join("agent.redb")).unwrap();
        let outbox = Outbox::open(&db, OutboxLimits::default()).unwrap();
        let record = |i: u32| NewRecord {
            class: gait_wire::RecordClass::Block,
            kind: "gate.decision".into(),
            created_unix_ms: 1,
            bundle: None,
            payload: format!("{{\"i\":{i}}}").into_bytes(),
        };
        outbox.append(record(1)).unwrap();
        assert!(!db.heal().unwrap(), "nothing to heal while healthy");

        db.close_for_test();
        let err = outbox.append(record(2)).unwrap_err();
        assert!(
            matches!(&err, OutboxError::Db(e) if e.is_storage_failure() && e.is_retryable()),
            "{err:?}"
        );
        let health = db.health();
        assert!(health.failure.is_some(), "{health:?}");
        assert!(health.errors >= 1, "{health:?}");
        assert_eq!(health.reopens, 0);

        assert!(db.heal().unwrap());
        let health = db.health();
        assert_eq!(health.failure, None);
        assert_eq!(health.reopens, 1);
        outbox.append(record(3)).unwrap();
        let stats = outbox.stats();
        assert_eq!(
            (stats.depth, stats.last_seq),
            (2, 2),
            "the commit before the failure kept, seq continues"
        );
        assert!(outbox.verify_chain().is_ok());
    }

    #[test]
    fn a_file_from_a_newer_agent_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.redb");
        {
            let db = AgentDb::open(&path).unwrap();
            let write = db.redb().begin_write().unwrap();
            write
                .open_table(FILE_META)
                .unwrap()
                .insert(FORMAT_KEY, FORMAT_VERSION + 1)
                .unwrap();
            write.commit().unwrap();
        }
        let err = AgentDb::open(&path).unwrap_err();
        assert!(matches!(err, DbError::NewerFormat { .. }), "{err:?}");
    }
}
