//! Online backup of the SQLite database, and the counts a backup and a restore report.
//!
//! `VACUUM INTO` writes a transactionally consistent copy of the whole database from one read transaction: in
//! WAL mode the server keeps committing while it runs, and the copy holds exactly what was committed when the
//! read began (every record of an agent up to its committed head, the audit log up to its head, nothing half
//! written). PostgreSQL is backed up with its own tools (`pg_dump`); see `docs/operations/backup.md`.

use std::path::Path;

use crate::Store;
use crate::conn::{Conn, db_run};
use crate::error::{StoreError, db};

/// Row counts of the tables a restore drill compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupCounts {
    /// Committed agent records.
    pub records: u64,
    /// Audit log entries.
    pub audit_entries: u64,
    /// Agents known.
    pub agents: u64,
}

impl Store {
    /// SQLite only: writes a consistent copy of the live database to `dest`, which must not exist. The copy is
    /// a plain, compacted SQLite file (no WAL to carry along).
    pub async fn snapshot_sqlite_into(&self, dest: &Path) -> Result<(), StoreError> {
        let Store::Sqlite(_) = self else {
            return Err(StoreError::invalid(
                "backup",
                "the database is PostgreSQL: back it up with pg_dump (docs/operations/backup.md)",
            ));
        };
        // An empty file is allowed as the target of VACUUM INTO: made first, private, and only if new.
        let mut create = std::fs::OpenOptions::new();
        create.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut create, 0o600);
        create.open(dest).map_err(|e| {
            StoreError::invalid(
                "backup",
                format!("cannot create {}: {e} (give a new path)", dest.display()),
            )
        })?;
        let dest = dest
            .to_str()
            .ok_or_else(|| StoreError::invalid("backup", "the backup path is not valid UTF-8"))?;
        let mut pooled = self.acquire().await?;
        let Conn::Sqlite(c) = pooled.conn() else {
            unreachable!("a SQLite store hands out SQLite connections")
        };
        sqlx::query("VACUUM INTO $1")
            .bind(dest)
            .execute(&mut *c)
            .await
            .map_err(db("backup: VACUUM INTO"))?;
        Ok(())
    }

    /// SQLite only: `PRAGMA integrity_check`; `Ok(())` when the database reads back whole.
    pub async fn check_integrity(&self) -> Result<(), StoreError> {
        let mut pooled = self.acquire().await?;
        let Conn::Sqlite(c) = pooled.conn() else {
            return Ok(());
        };
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&mut *c)
            .await
            .map_err(db("integrity_check"))?;
        if rows.len() == 1 && rows[0] == "ok" {
            Ok(())
        } else {
            Err(StoreError::invalid(
                "database",
                format!("integrity check failed: {}", rows.join("; ")),
            ))
        }
    }

    /// The row counts a backup reports and a restore compares.
    pub async fn backup_counts(&self) -> Result<BackupCounts, StoreError> {
        let mut pooled = self.acquire().await?;
        let mut conn = pooled.conn();
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let (records, audit_entries, agents): (i64, i64, i64);
        db_run!(conn, |c| {
            let row: (i64, i64, i64) = sqlx::query_as(
                "SELECT (SELECT COUNT(*) FROM records), (SELECT COUNT(*) FROM audit_entries), \
                 (SELECT COUNT(*) FROM agents)",
            )
            .fetch_one(&mut *c)
            .await
            .map_err(db("backup_counts"))?;
            (records, audit_entries, agents) = row;
        });
        Ok(BackupCounts {
            records: count(records),
            audit_entries: count(audit_entries),
            agents: count(agents),
        })
    }
}
