//! The agent's one durable file: a redb database holding the outbox, the verified-bundle cache and local
//! counters, owned by exactly one `gait-agent` process.
//!
//! redb takes an exclusive lock on the file when it opens it, so a second agent pointed at the same data
//! directory fails fast with [`DbError::Locked`] instead of corrupting the first one's state. Every
//! write transaction the agent commits uses redb's default durability (`fsync` before `commit()` returns);
//! modules that own tables (`outbox`, `bundle_cache`) rely on that and document their own crash rules.
//!
//! The file holds the arguments of every intent the agent decided, so it is private to the agent's user: the
//! data directory holding it is 0700 and the file 0600, both created so and narrowed on open when an older
//! build left them open to group or others (0755/0644).
//!
//! All methods block on disk I/O: async callers run them on `tokio::task::spawn_blocking`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, TableDefinition};

/// Version of the table layout this build writes. Bumped when a table changes shape; an older agent refuses
/// a file written by a newer one instead of misreading it.
pub const FORMAT_VERSION: u64 = 1;

/// Page cache redb may use. The agent's working set is a few MiB (a bounded outbox and a handful of
/// bundles); redb's own default (1 GiB) is sized for servers.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Key/value table describing the file itself (`format` -> [`FORMAT_VERSION`]).
const FILE_META: TableDefinition<'static, &str, u64> = TableDefinition::new("agent_file_meta");
const FORMAT_KEY: &str = "format";

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
    /// True when retrying the same operation later may succeed (transient I/O, e.g. a full disk). Lock
    /// contention, corruption and format mismatches need an operator.
    pub fn is_retryable(&self) -> bool {
        match self {
            DbError::Storage { source, .. } => matches!(
                source,
                redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::TransactionInProgress
            ),
            _ => false,
        }
    }
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
    db: redb::Database,
    path: PathBuf,
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
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| classify(&path, e.into()))?;
        let this = AgentDb {
            inner: Arc::new(Inner { db, path }),
        };
        this.check_format()?;
        Ok(this)
    }

    /// The file this handle has open.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The underlying redb database, for modules that own tables in this file.
    pub(crate) fn redb(&self) -> &redb::Database {
        &self.inner.db
    }

    /// Wraps a redb failure into a [`DbError`] naming this file.
    pub(crate) fn err(&self, source: impl Into<redb::Error>) -> DbError {
        classify(&self.inner.path, source.into())
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
