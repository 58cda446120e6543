//! The store's typed error, with the retry predicate callers use instead of matching on messages.

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no supported backend (the URL itself is not echoed: it may hold a password).
    #[error(
        "unsupported database url scheme {scheme:?}: use sqlite://<path> (embedded) or postgres://user@host/db"
    )]
    UnsupportedUrl { scheme: String },
    /// The database could not be opened or reached.
    #[error("cannot open the {backend} database: {source}")]
    Connect {
        backend: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// Applying the embedded migrations failed.
    #[error("cannot migrate the {backend} schema: {source}")]
    Migrate {
        backend: &'static str,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed; `op` names the store operation.
    #[error("database error in {op}: {source}")]
    Database {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The shared commit of a group of SQLite write transactions failed (see the SQLite backend's group
    /// commit): nothing the transaction wrote was kept. `reason` is the commit's own error.
    #[error("database error in {op}: the group commit failed: {reason}")]
    GroupCommit {
        op: &'static str,
        reason: String,
        retryable: bool,
    },
    /// A bundle was published with an epoch that does not exceed the latest one of its tenant.
    #[error(
        "bundle epoch {epoch} does not exceed the latest epoch {latest} of {tenant}: publish epoch {next} or later"
    )]
    EpochConflict {
        tenant: String,
        epoch: u64,
        latest: u64,
        next: u64,
    },
    /// The caller passed a value the store refuses; `field` is the dotted name of the offending input.
    #[error("invalid {field}: {reason}")]
    InvalidInput { field: String, reason: String },
    /// A record of a batch breaks the wire rule of one record ([`gait_wire::Record::validate`]); `index` is
    /// its place in the batch.
    #[error("invalid records[{index}] (seq {seq}): {source}")]
    InvalidRecord {
        index: usize,
        seq: u64,
        #[source]
        source: gait_wire::RecordError,
    },
    /// A record of a batch passes the wire rule but breaks one of the store's own input rules (its class
    /// label, its bundle digest); `field` names the record's field, `index` its place in the batch.
    #[error("invalid records[{index}].{field} (seq {seq}): {reason}")]
    InvalidRecordField {
        index: usize,
        seq: u64,
        field: &'static str,
        reason: String,
    },
    /// The agent has no row yet: call `agent_connected` first.
    #[error("unknown agent {agent}: agent_connected must run before this operation")]
    UnknownAgent { agent: String },
    /// A database file could not be created private or narrowed to mode 0600.
    #[error("cannot make {path} private to this user (mode 0600): {source}")]
    Permissions {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored row holds a value the store never writes (edited by hand, or a bug).
    #[error("corrupt row in {table}: {reason}")]
    Corrupt { table: &'static str, reason: String },
}

impl StoreError {
    /// Whether the same call may succeed if retried later (busy database, lost connection, serialization
    /// failure). Input, conflict and corruption errors are never retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { source, .. } | Self::Database { source, .. } => {
                sqlx_is_transient(source)
            }
            Self::GroupCommit { retryable, .. } => *retryable,
            Self::Migrate { source, .. } => match source {
                sqlx::migrate::MigrateError::Execute(e) => sqlx_is_transient(e),
                _ => false,
            },
            Self::UnsupportedUrl { .. }
            | Self::EpochConflict { .. }
            | Self::InvalidInput { .. }
            | Self::InvalidRecord { .. }
            | Self::InvalidRecordField { .. }
            | Self::UnknownAgent { .. }
            | Self::Permissions { .. }
            | Self::Corrupt { .. } => false,
        }
    }

    /// For an error that names one record of the batch: its index in the batch and the refusal code the
    /// aggregator answers with: the wire rule's own code ([`StoreError::InvalidRecord`]) or
    /// [`gait_wire::RefusalCode::RecordStoreRefused`] for the store's own rules
    /// ([`StoreError::InvalidRecordField`]). `None` for every error that names no record.
    pub fn refusal_code(&self) -> Option<(usize, gait_wire::RefusalCode)> {
        match self {
            Self::InvalidRecord { index, source, .. } => Some((*index, source.refusal_code())),
            Self::InvalidRecordField { index, .. } => {
                Some((*index, gait_wire::RefusalCode::RecordStoreRefused))
            }
            _ => None,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn corrupt(table: &'static str, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            table,
            reason: reason.into(),
        }
    }
}

/// Wraps a sqlx error with the name of the operation that failed.
pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Database { op, source }
}

/// Whether a sqlx error is a transient condition rather than a fault of the request or the schema.
pub(crate) fn sqlx_is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                pg_code_is_transient(pg.code())
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                db.code()
                    .is_some_and(|code| sqlite_code_is_transient(&code))
            } else {
                false
            }
        }
        _ => false,
    }
}

/// Transient PostgreSQL SQLSTATEs: serialization/lock conflicts, shutdowns, connection exceptions.
fn pg_code_is_transient(code: &str) -> bool {
    const TRANSIENT: &[&str] = &[
        "40001", // serialization_failure
        "40P01", // deadlock_detected
        "55P03", // lock_not_available
        "57P01", // admin_shutdown
        "57P02", // crash_shutdown
        "57P03", // cannot_connect_now
        "53300", // too_many_connections
    ];
    TRANSIENT.contains(&code) || code.starts_with("08")
}

/// SQLite reports its extended result code as a decimal string; the low byte is the primary code, and
/// SQLITE_BUSY (5) and SQLITE_LOCKED (6) are the transient ones.
fn sqlite_code_is_transient(code: &str) -> bool {
    code.parse::<i32>().is_ok_and(|n| matches!(n & 0xff, 5 | 6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_serialization_codes_are_transient_but_constraint_codes_are_not() {
        assert!(pg_code_is_transient("40001"));
        assert!(pg_code_is_transient("40P01"));
        assert!(pg_code_is_transient("08006"));
        assert!(!pg_code_is_transient("23505")); // unique_violation
        assert!(!pg_code_is_transient("42501")); // insufficient_privilege: low byte 5 if read as a number
        assert!(sqlite_code_is_transient("5"));
        assert!(sqlite_code_is_transient("517")); // SQLITE_BUSY_SNAPSHOT
        assert!(sqlite_code_is_transient("262")); // SQLITE_LOCKED_SHAREDCACHE
        assert!(!sqlite_code_is_transient("2067")); // SQLITE_CONSTRAINT_UNIQUE
        assert!(!sqlite_code_is_transient("19"));
    }

    #[test]
    fn input_and_conflict_errors_are_not_retryable() {
        assert!(!StoreError::invalid("records[0].seq", "must be at least 1").is_retryable());
        let conflict = StoreError::EpochConflict {
            tenant: "a/b/c".into(),
            epoch: 1,
            latest: 2,
            next: 3,
        };
        assert!(!conflict.is_retryable());
        let timeout = StoreError::Database {
            op: "ping",
            source: sqlx::Error::PoolTimedOut,
        };
        assert!(timeout.is_retryable());
    }
}
