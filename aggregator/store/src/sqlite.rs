//! The embedded SQLite backend: one database file in WAL mode, durable at commit; and the SQL that only
//! SQLite speaks (multi-row `VALUES` inserts, JSON lists where PostgreSQL takes arrays). Portable queries live
//! in the domain modules.
//!
//! Durability: `synchronous=FULL`. In WAL mode NORMAL only syncs the WAL at checkpoints, so a commit that was
//! acknowledged to an agent (which then deletes the records) could be lost on power failure; FULL syncs the WAL
//! on every commit, which is what "commit, then acknowledge" needs. The price is one fsync per commit (3.1 ms on
//! the reference machine): `benches/ingest.rs` measured ~22-36k records/s with FULL against ~39-72k with NORMAL
//! for 100-record batches, and no clear difference for 1,000-record batches (~68-80k/s, CPU-bound), so agents
//! should send large batches.
//!
//! File modes: the database holds every agent's records, so the database file and its `-wal` and `-shm`
//! files are private to the aggregator's user (0600). The file is created 0600 before SQLite opens it (SQLite
//! gives the `-wal` and `-shm` files it creates the database file's mode), and files an older build left
//! readable by others are narrowed to 0600 on open.
//!
//! Concurrency: write transactions run one at a time, each in a savepoint of a shared `BEGIN IMMEDIATE`
//! transaction that commits once for all the transactions that ran while it was open (group commit, see
//! [`group`]): one fsync for many operations, and no transaction is reported committed before that fsync.
//! `BEGIN IMMEDIATE` takes the write lock up front, so another process writing to the same file (an operator
//! command) makes it wait on `busy_timeout` instead of failing with SQLITE_BUSY; readers never block the writer
//! in WAL mode.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::SqliteConnection;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::batch::PlannedGap;
use crate::conn::{Pooled, Tx, agent_where, bind_key};
use crate::error::{StoreError, db};
use crate::model::{AgentCursor, AgentKey, NewRecord, to_i64};
use crate::rows;

mod group;

use group::GroupCommit;
pub use group::GroupCommitStats;
pub(crate) use group::Member;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another connection's write lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in the pool: WAL lets readers run beside the single writer. Two replays at once walk on two
/// connections each (`replay::corpus`), which leaves two for ingest and the API.
const MAX_CONNECTIONS: u32 = 6;

/// Rows per multi-row INSERT statement, largest first. A batch is cut into statements of these sizes (like a
/// binary expansion of its length), so only a handful of distinct statements are ever prepared.
/// 256 rows x 15 parameters stays far below SQLite's 32,766-parameter limit.
const INSERT_CHUNKS: [usize; 9] = [256, 128, 64, 32, 16, 8, 4, 2, 1];

/// `INSERT INTO records` for each size in `INSERT_CHUNKS`. Generated once from placeholders only: the text
/// never contains input, which is bound as parameters, 15 per row. The placeholders are anonymous `?` on
/// purpose: with numbered ones (`$N`, `?N`) sqlx asks SQLite for each parameter's name, a linear search in
/// SQLite, which made binding quadratic in the statement size (about half the CPU of a 256-row insert).
static INSERT_RECORDS_SQL: LazyLock<Vec<String>> = LazyLock::new(|| {
    INSERT_CHUNKS
        .iter()
        .map(|&rows| {
            let mut sql = String::from(
                "INSERT INTO records (org, project, env, agent_id, received_unix_ms, seq, class, kind, \
                 record_hash, prev_hash, created_unix_ms, bundle_epoch, bundle_digest, bundle_since_ms, \
                 payload) VALUES ",
            );
            for row in 0..rows {
                if row > 0 {
                    sql.push(',');
                }
                sql.push_str("(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
            }
            sql
        })
        .collect()
});

/// Makes the database at `path` and its `-wal` and `-shm` files private (0600): creates the database file
/// with that mode when `create` and it is missing (a missing directory is left for SQLite to report), and
/// narrows any of the three that its group or others may access.
fn make_private(path: &Path, create: bool) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let fail = |path: &Path, source| StoreError::Permissions {
            path: path.to_path_buf(),
            source,
        };
        if create {
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path);
            match created {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotFound
                    ) => {}
                Err(e) => return Err(fail(path, e)),
            }
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let file = std::path::PathBuf::from(file);
            let mode = match std::fs::metadata(&file) {
                Ok(meta) => meta.permissions().mode(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(fail(&file, e)),
            };
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(&file, e))?;
                tracing::warn!(path = %file.display(), was = format!("{:o}", mode & 0o777),
                    "database file was open to group or others; now mode 0600");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, create);
    Ok(())
}

/// The SQLite backend. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    writes: GroupCommit,
}

impl SqliteStore {
    /// Opens (creating if needed) the database named by a `sqlite://<path>` URL and applies migrations.
    /// In-memory databases are refused: each pooled connection would see its own empty database.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::invalid(
                "database url",
                "in-memory SQLite is not supported: give a file path, e.g. sqlite:///var/lib/gait/aggregator.db",
            ));
        }
        let options =
            SqliteConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
                backend: "sqlite",
                source,
            })?;
        Self::open(options).await
    }

    /// Opens (creating if needed) the database file at `path`, creating its directory, and applies migrations.
    pub async fn open_file(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await.map_err(|e| {
                StoreError::invalid(
                    "database path",
                    format!("cannot create directory {}: {e}", dir.display()),
                )
            })?;
        }
        Self::open(SqliteConnectOptions::new().filename(path)).await
    }

    async fn open(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let path = options.get_filename().to_path_buf();
        make_private(&path, true)?;
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                backend: "sqlite",
                source,
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: "sqlite",
                source,
            })?;
        make_private(&path, false)?;
        let writes = GroupCommit::new(pool.clone());
        Ok(Self { pool, writes })
    }

    /// Starts a write transaction: a member of the group commit (see [`group`] and the module docs).
    pub(crate) async fn begin(&self, op: &'static str) -> Result<Tx, StoreError> {
        Ok(Tx::Sqlite(self.writes.begin(op).await?))
    }

    /// Checks a connection out of the pool, for reads outside a transaction.
    pub(crate) async fn acquire(&self) -> Result<Pooled, StoreError> {
        let conn = self.pool.acquire().await.map_err(db("acquire"))?;
        Ok(Pooled::Sqlite(conn))
    }

    /// What the group commit has done since the store opened.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.writes.stats()
    }

    pub(crate) async fn close(&self) {
        self.writes.close().await;
        self.pool.close().await;
    }
}

/// The agent's cursor, or `None` without a row. No row lock is needed: the transaction began `IMMEDIATE`, so
/// it already holds the database's write lock.
pub(crate) async fn lock_cursor(
    c: &mut SqliteConnection,
    key: &AgentKey,
) -> Result<Option<AgentCursor>, StoreError> {
    const SQL: &str = concat!(
        "SELECT committed_seq, committed_hash FROM agents",
        agent_where!()
    );
    let row = bind_key(sqlx::query(SQL), key)
        .fetch_optional(&mut *c)
        .await
        .map_err(db("commit_batch: cursor"))?;
    row.as_ref().map(rows::cursor_row).transpose()
}

/// The stored hash of each of the agent's seqs in `seqs` that is stored. The seq list travels as one JSON
/// parameter unpacked by `json_each` (SQLite has no array parameters).
pub(crate) async fn stored_hashes(
    c: &mut SqliteConnection,
    key: &AgentKey,
    seqs: &[i64],
) -> Result<HashMap<u64, [u8; 32]>, StoreError> {
    const SQL: &str = concat!(
        "SELECT seq, record_hash FROM records",
        agent_where!(),
        " AND seq IN (SELECT value FROM json_each($5))"
    );
    let json = serde_json::to_string(seqs)
        .map_err(|e| StoreError::invalid("records", format!("cannot encode seq list: {e}")))?;
    let found = bind_key(sqlx::query(SQL), key)
        .bind(json)
        .fetch_all(&mut *c)
        .await
        .map_err(db("commit_batch: lookup"))?;
    rows::stored_hashes(&found)
}

/// Inserts records with multi-row `VALUES` statements cut to the sizes of `INSERT_CHUNKS`.
pub(crate) async fn insert_records(
    c: &mut SqliteConnection,
    key: &AgentKey,
    now_ms: i64,
    records: &[&NewRecord],
) -> Result<(), StoreError> {
    let mut rest = records;
    while !rest.is_empty() {
        let (index, size) = INSERT_CHUNKS
            .iter()
            .enumerate()
            .find(|(_, size)| **size <= rest.len())
            .map(|(i, s)| (i, *s))
            .unwrap_or((INSERT_CHUNKS.len() - 1, 1));
        let (chunk, tail) = rest.split_at(size);
        let mut query = sqlx::query(INSERT_RECORDS_SQL[index].as_str());
        for r in chunk {
            query = bind_key(query, key)
                .bind(now_ms)
                .bind(to_i64("records.seq", r.seq)?)
                .bind(r.class.as_str())
                .bind(r.kind.as_str())
                .bind(r.hash.as_slice())
                .bind(r.prev_hash.as_slice())
                .bind(r.created_unix_ms)
                .bind(
                    r.bundle_epoch
                        .map(|e| to_i64("records.bundle_epoch", e))
                        .transpose()?,
                )
                .bind(r.bundle_digest.as_deref())
                .bind(r.bundle_since_ms)
                .bind(r.payload.as_slice());
        }
        query
            .execute(&mut *c)
            .await
            .map_err(db("commit_batch: insert records"))?;
        rest = tail;
    }
    Ok(())
}

/// Inserts gap rows in one statement: a JSON array of `[first_seq, last_seq, kind]` unpacked by `json_each`.
pub(crate) async fn insert_gaps(
    c: &mut SqliteConnection,
    key: &AgentKey,
    now_ms: i64,
    gaps: &[PlannedGap],
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO record_gaps (org, project, env, agent_id, first_seq, last_seq, kind, \
         detected_unix_ms) SELECT $1, $2, $3, $4, json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
         json_extract(value, '$[2]'), $5 FROM json_each($6)";
    let rows: Vec<(u64, u64, &str)> = gaps
        .iter()
        .map(|g| (g.first_seq, g.last_seq, g.kind.as_str()))
        .collect();
    let json = serde_json::to_string(&rows)
        .map_err(|e| StoreError::invalid("records", format!("cannot encode gap list: {e}")))?;
    bind_key(sqlx::query(SQL), key)
        .bind(now_ms)
        .bind(json)
        .execute(&mut *c)
        .await
        .map_err(db("commit_batch: insert gaps"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pooled connection's `mmap_size`, holding all of them at once so each is seen.
    async fn pooled_mmap_sizes(store: &SqliteStore) -> anyhow::Result<Vec<i64>> {
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(store.pool.acquire().await?);
        }
        let mut sizes = Vec::new();
        for conn in &mut held {
            sizes.push(
                sqlx::query_scalar("PRAGMA mmap_size")
                    .fetch_one(&mut **conn)
                    .await?,
            );
        }
        Ok(sizes)
    }

    #[tokio::test]
    async fn a_replay_walk_leaves_no_pooled_connection_mapped_finished_or_dropped()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let sqlite = SqliteStore::open_file(&dir.path().join("aggregator.db")).await?;
        let store = crate::Store::Sqlite(sqlite.clone());
        let scope = crate::CorpusScope {
            org: "acme".parse()?,
            project: None,
            env: None,
        };
        // A walk that runs to its end.
        let (tx, _rx) = tokio::sync::mpsc::channel(4);
        store
            .replay_corpus_groups_to(&scope, 10, 5, false, crate::Shard::WHOLE, &tx)
            .await?;
        assert!(pooled_mmap_sizes(&sqlite).await?.iter().all(|s| *s == 0));
        // Walks dropped after one poll, a few times (wherever each stopped: acquiring, mapping, reading).
        for _ in 0..8 {
            let walk =
                store.replay_corpus_groups_to(&scope, 10, 5, false, crate::Shard::WHOLE, &tx);
            tokio::select! {
                biased;
                _ = walk => {}
                () = std::future::ready(()) => {}
            }
            tokio::task::yield_now().await;
        }
        assert!(pooled_mmap_sizes(&sqlite).await?.iter().all(|s| *s == 0));
        // An invalid shard is refused, not walked.
        let bad = crate::Shard { index: 2, of: 2 };
        assert!(
            store
                .replay_corpus_groups_to(&scope, 10, 5, false, bad, &tx)
                .await
                .is_err()
        );
        Ok(())
    }

    #[tokio::test]
    async fn every_pooled_connection_is_wal_full_sync_with_foreign_keys() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = SqliteStore::open_file(&dir.path().join("nested/data/aggregator.db")).await?;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(store.pool.acquire().await?);
        }
        for conn in &mut held {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(&mut **conn)
                .await?;
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(&mut **conn)
                .await?;
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(&mut **conn)
                .await?;
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(&mut **conn)
                .await?;
            assert_eq!(mode, "wal");
            assert_eq!(sync, 2, "synchronous must be FULL (2)");
            assert_eq!(fk, 1);
            assert_eq!(busy, BUSY_TIMEOUT.as_millis() as i64);
        }
        Ok(())
    }

    #[test]
    fn generated_inserts_have_fifteen_placeholders_per_row() {
        for (sql, rows) in INSERT_RECORDS_SQL.iter().zip(INSERT_CHUNKS) {
            assert_eq!(sql.matches('?').count(), rows * 15);
            assert!(
                !sql.contains('$'),
                "numbered placeholders make sqlx binding quadratic"
            );
        }
    }
}
