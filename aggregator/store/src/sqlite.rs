//! The embedded SQLite backend: one database file in WAL mode, durable at commit.
//!
//! Durability: `synchronous=FULL`. In WAL mode NORMAL only syncs the WAL at checkpoints, so a commit that was
//! acknowledged to an agent (which then deletes the records) could be lost on power failure; FULL syncs the WAL
//! on every commit, which is what "commit, then acknowledge" needs. The price is one fsync per commit (3.1 ms on
//! the reference machine): `benches/ingest.rs` measured ~22-36k records/s with FULL against ~39-72k with NORMAL
//! for 100-record batches, and no clear difference for 1,000-record batches (~68-80k/s, CPU-bound), so agents
//! should send large batches.
//!
//! Concurrency: write transactions start with `BEGIN IMMEDIATE`, so they take the write lock up front and wait
//! on `busy_timeout` instead of failing with SQLITE_BUSY when they upgrade from a read; readers never block the
//! writer in WAL mode.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::LazyLock;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::batch::{self, PlannedGap};
use crate::error::{StoreError, db};
use crate::model::{
    AgentCursor, AgentFilter, AgentHello, AgentKey, AgentRow, BatchOutcome, BundleReportRow,
    GapRow, NewRecord, Revocation, StoredBundle, StoredRecord, Tenant, to_hash, to_i64, to_u64,
};
use crate::rows::{self, Columns, agent_columns, record_columns};

static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another connection's write lock before failing with SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in the pool: WAL lets readers run beside the single writer.
const MAX_CONNECTIONS: u32 = 4;

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

/// The SQLite backend. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
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
        Ok(Self { pool })
    }

    async fn begin_write(
        &self,
        op: &'static str,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db(op))
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db("ping"))?;
        Ok(())
    }

    /// Upserts every agent's row from its hello in one transaction (one commit for a burst of reconnects) and
    /// returns each agent's cursor, in input order. Inputs are validated by the caller.
    pub(crate) async fn agents_connected(
        &self,
        hellos: &[(&AgentKey, &AgentHello, String)],
        now_ms: i64,
    ) -> Result<Vec<AgentCursor>, StoreError> {
        const SQL: &str = "INSERT INTO agents (org, project, env, agent_id, cert_serial, first_seen_unix_ms, \
             last_seen_unix_ms, remote_addr, agent_version, active_bundle_epoch, active_bundle_digest, \
             active_bundle_since_ms, received_bundle_epoch, received_bundle_digest, outbox_depth, shed_total) \
             VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (org, project, env, agent_id) DO UPDATE SET \
             cert_serial = excluded.cert_serial, \
             last_seen_unix_ms = max(agents.last_seen_unix_ms, excluded.last_seen_unix_ms), \
             remote_addr = excluded.remote_addr, agent_version = excluded.agent_version, \
             active_bundle_epoch = excluded.active_bundle_epoch, \
             active_bundle_digest = excluded.active_bundle_digest, \
             active_bundle_since_ms = excluded.active_bundle_since_ms, \
             received_bundle_epoch = excluded.received_bundle_epoch, \
             received_bundle_digest = excluded.received_bundle_digest, \
             outbox_depth = excluded.outbox_depth, shed_total = excluded.shed_total \
             RETURNING committed_seq, committed_hash";
        let mut tx = self.begin_write("agents_connected: begin").await?;
        let mut cursors = Vec::with_capacity(hellos.len());
        for (key, hello, serial) in hellos {
            let active = hello.active_bundle.as_ref();
            let received = hello.received_bundle.as_ref();
            let row = sqlx::query(SQL)
                .bind(&key.tenant.org)
                .bind(&key.tenant.project)
                .bind(&key.tenant.env)
                .bind(&key.agent_id)
                .bind(serial)
                .bind(now_ms)
                .bind(&hello.remote_addr)
                .bind(&hello.agent_version)
                .bind(
                    active
                        .map(|b| to_i64("hello.active_bundle.epoch", b.epoch))
                        .transpose()?,
                )
                .bind(active.map(|b| b.digest.as_str()))
                .bind(active.map(|b| b.since_unix_ms))
                .bind(
                    received
                        .map(|b| to_i64("hello.received_bundle.epoch", b.epoch))
                        .transpose()?,
                )
                .bind(received.map(|b| b.digest.as_str()))
                .bind(to_i64("hello.outbox_depth", hello.outbox_depth)?)
                .bind(to_i64("hello.shed_total", hello.shed_total)?)
                .fetch_one(&mut *tx)
                .await
                .map_err(db("agents_connected"))?;
            cursors.push(rows::cursor_row(&row)?);
        }
        tx.commit().await.map_err(db("agents_connected: commit"))?;
        Ok(cursors)
    }

    /// Moves `last_seen` forward for every agent in one transaction; returns how many rows exist.
    pub(crate) async fn agents_seen(
        &self,
        keys: &[&AgentKey],
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        const SQL: &str = "UPDATE agents SET last_seen_unix_ms = max(last_seen_unix_ms, $5) \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
        let mut tx = self.begin_write("agents_seen: begin").await?;
        let mut found = 0;
        for key in keys {
            let done = bind_key(sqlx::query(SQL), key)
                .bind(now_ms)
                .execute(&mut *tx)
                .await
                .map_err(db("agents_seen"))?;
            found += done.rows_affected();
        }
        tx.commit().await.map_err(db("agents_seen: commit"))?;
        Ok(found)
    }

    pub(crate) async fn record_bundle_report(
        &self,
        key: &AgentKey,
        report: &BundleReportRow,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        const RECEIVED: &str = "UPDATE agents SET received_bundle_epoch = $5, received_bundle_digest = $6, \
             last_seen_unix_ms = max(last_seen_unix_ms, $7) \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
        const ACTIVATED: &str = "UPDATE agents SET active_bundle_epoch = $5, active_bundle_digest = $6, \
             active_bundle_since_ms = $7, last_seen_unix_ms = max(last_seen_unix_ms, $8) \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
        const REFUSED: &str = "UPDATE agents SET last_refusal_epoch = $5, last_refusal_code = $6, \
             last_refusal_message = $7, last_refusal_unix_ms = $8, last_seen_unix_ms = max(last_seen_unix_ms, $8) \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
        let query = match report {
            BundleReportRow::Received(b) => bind_key(sqlx::query(RECEIVED), key)
                .bind(to_i64("report.epoch", b.epoch)?)
                .bind(b.digest.as_str())
                .bind(now_ms),
            BundleReportRow::Activated(b) => bind_key(sqlx::query(ACTIVATED), key)
                .bind(to_i64("report.epoch", b.epoch)?)
                .bind(b.digest.as_str())
                .bind(b.since_unix_ms)
                .bind(now_ms),
            BundleReportRow::Refused {
                epoch,
                code,
                message,
            } => bind_key(sqlx::query(REFUSED), key)
                .bind(to_i64("report.epoch", *epoch)?)
                .bind(code.as_str())
                .bind(crate::model::truncate_utf8(
                    message,
                    crate::model::MAX_REFUSAL_MESSAGE_BYTES,
                ))
                .bind(now_ms),
        };
        let done = query
            .execute(&self.pool)
            .await
            .map_err(db("record_bundle_report"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Commits a validated batch in one transaction; `None` when the agent has no row.
    pub(crate) async fn commit_batch(
        &self,
        key: &AgentKey,
        records: &[NewRecord],
        now_ms: i64,
    ) -> Result<Option<BatchOutcome>, StoreError> {
        const CURSOR: &str = "SELECT committed_seq, committed_hash FROM agents \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
        const STORED: &str = "SELECT seq, record_hash FROM records \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4 \
             AND seq IN (SELECT value FROM json_each($5))";
        const GAPS: &str = "INSERT INTO record_gaps (org, project, env, agent_id, first_seq, last_seq, kind, \
             detected_unix_ms) SELECT $1, $2, $3, $4, json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
             json_extract(value, '$[2]'), $5 FROM json_each($6)";
        const ADVANCE: &str = "UPDATE agents SET committed_seq = $5, committed_hash = $6, \
             gap_count = gap_count + $7, last_seen_unix_ms = max(last_seen_unix_ms, $8) \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";

        let mut tx = self.begin_write("commit_batch: begin").await?;
        let Some(row) = bind_key(sqlx::query(CURSOR), key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db("commit_batch: cursor"))?
        else {
            return Ok(None);
        };
        let cursor = rows::cursor_row(&row)?;
        let prepared = batch::prepare(records);
        let lookup = prepared.seqs_to_look_up(cursor.committed_seq);
        let mut stored = HashMap::new();
        if !lookup.is_empty() {
            let json = serde_json::to_string(&lookup).map_err(|e| {
                StoreError::invalid("records", format!("cannot encode seq list: {e}"))
            })?;
            let found = bind_key(sqlx::query(STORED), key)
                .bind(json)
                .fetch_all(&mut *tx)
                .await
                .map_err(db("commit_batch: lookup"))?;
            for row in &found {
                stored.insert(
                    to_u64("records", "seq", row.int("seq")?)?,
                    to_hash("records", "record_hash", row.bytes("record_hash")?)?,
                );
            }
        }
        let plan = batch::plan(cursor, prepared, &stored);

        let mut rest: &[&NewRecord] = &plan.insert;
        while !rest.is_empty() {
            let (index, size) = INSERT_CHUNKS
                .iter()
                .enumerate()
                .find(|(_, size)| **size <= rest.len())
                .map(|(i, s)| (i, *s))
                .unwrap_or((INSERT_CHUNKS.len() - 1, 1));
            let (chunk, tail) = rest.split_at(size);
            insert_chunk(
                &mut tx,
                key,
                now_ms,
                INSERT_RECORDS_SQL[index].as_str(),
                chunk,
            )
            .await?;
            rest = tail;
        }

        if !plan.gaps.is_empty() {
            bind_key(sqlx::query(GAPS), key)
                .bind(now_ms)
                .bind(gaps_json(&plan.gaps)?)
                .execute(&mut *tx)
                .await
                .map_err(db("commit_batch: insert gaps"))?;
        }
        bind_key(sqlx::query(ADVANCE), key)
            .bind(to_i64("committed_seq", plan.outcome.committed_seq)?)
            .bind(plan.outcome.committed_hash.as_slice())
            .bind(plan.gaps.len() as i64)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(db("commit_batch: advance cursor"))?;
        tx.commit().await.map_err(db("commit_batch: commit"))?;
        Ok(Some(plan.outcome))
    }

    pub(crate) async fn publish_bundle(
        &self,
        tenant: &Tenant,
        epoch: i64,
        digest_hex: &str,
        bytes: &[u8],
        created_by: &str,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        const LATEST: &str =
            "SELECT max(epoch) FROM bundles WHERE org = $1 AND project = $2 AND env = $3";
        const INSERT: &str = "INSERT INTO bundles (org, project, env, epoch, digest, bytes, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let mut tx = self.begin_write("publish_bundle: begin").await?;
        let latest: Option<i64> = sqlx::query_scalar(LATEST)
            .bind(&tenant.org)
            .bind(&tenant.project)
            .bind(&tenant.env)
            .fetch_one(&mut *tx)
            .await
            .map_err(db("publish_bundle: latest"))?;
        if let Some(latest) = latest.filter(|l| *l >= epoch) {
            return Ok(Some(latest));
        }
        sqlx::query(INSERT)
            .bind(&tenant.org)
            .bind(&tenant.project)
            .bind(&tenant.env)
            .bind(epoch)
            .bind(digest_hex)
            .bind(bytes)
            .bind(now_ms)
            .bind(created_by)
            .execute(&mut *tx)
            .await
            .map_err(db("publish_bundle: insert"))?;
        tx.commit().await.map_err(db("publish_bundle: commit"))?;
        Ok(None)
    }

    pub(crate) async fn latest_bundle(
        &self,
        tenant: &Tenant,
    ) -> Result<Option<StoredBundle>, StoreError> {
        const SQL: &str = "SELECT epoch, digest, bytes, created_at, created_by FROM bundles \
             WHERE org = $1 AND project = $2 AND env = $3 ORDER BY epoch DESC LIMIT 1";
        let row = sqlx::query(SQL)
            .bind(&tenant.org)
            .bind(&tenant.project)
            .bind(&tenant.env)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("latest_bundle"))?;
        row.as_ref().map(rows::bundle_row).transpose()
    }

    pub(crate) async fn list_agents(
        &self,
        filter: &AgentFilter,
    ) -> Result<Vec<AgentRow>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            agent_columns!(),
            " FROM agents WHERE org = $1 AND ($2 IS NULL OR project = $2) \
             AND ($3 IS NULL OR env = $3) \
             AND ($4 IS NULL OR (project, env, agent_id) > ($4, $5, $6)) \
             ORDER BY project, env, agent_id LIMIT $7"
        );
        let after = filter.after.as_ref();
        let found = sqlx::query(SQL)
            .bind(&filter.org)
            .bind(filter.project.as_deref())
            .bind(filter.env.as_deref())
            .bind(after.map(|a| a.project.as_str()))
            .bind(after.map(|a| a.env.as_str()))
            .bind(after.map(|a| a.agent_id.as_str()))
            .bind(i64::from(filter.page_size()))
            .fetch_all(&self.pool)
            .await
            .map_err(db("list_agents"))?;
        found.iter().map(rows::agent_row).collect()
    }

    pub(crate) async fn count_records(&self, key: &AgentKey) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT count(*) AS n FROM records WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
        let row = bind_key(sqlx::query(SQL), key)
            .fetch_one(&self.pool)
            .await
            .map_err(db("count_records"))?;
        row.int("n")
    }

    pub(crate) async fn records(
        &self,
        key: &AgentKey,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            record_columns!(),
            " FROM records WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4 AND seq > $5 \
             ORDER BY seq LIMIT $6"
        );
        let found = bind_key(sqlx::query(SQL), key)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db("records"))?;
        found.iter().map(rows::record_row).collect()
    }

    pub(crate) async fn gaps(&self, key: &AgentKey) -> Result<Vec<GapRow>, StoreError> {
        const SQL: &str = "SELECT first_seq, last_seq, kind, detected_unix_ms FROM record_gaps \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4 ORDER BY first_seq, id";
        let found = bind_key(sqlx::query(SQL), key)
            .fetch_all(&self.pool)
            .await
            .map_err(db("gaps"))?;
        found.iter().map(rows::gap_row).collect()
    }

    pub(crate) async fn revoke(
        &self,
        rev: &Revocation,
        serial: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO revocations (cert_serial, org, project, env, agent_id, reason, \
             revoked_unix_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (cert_serial) DO NOTHING";
        sqlx::query(SQL)
            .bind(serial)
            .bind(&rev.tenant.org)
            .bind(&rev.tenant.project)
            .bind(&rev.tenant.env)
            .bind(&rev.agent_id)
            .bind(&rev.reason)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(db("revoke"))?;
        Ok(())
    }

    pub(crate) async fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT cert_serial FROM revocations ORDER BY cert_serial";
        sqlx::query_scalar(SQL)
            .fetch_all(&self.pool)
            .await
            .map_err(db("revoked_serials"))
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

fn bind_key<'q>(query: SqliteQuery<'q>, key: &'q AgentKey) -> SqliteQuery<'q> {
    query
        .bind(&key.tenant.org)
        .bind(&key.tenant.project)
        .bind(&key.tenant.env)
        .bind(&key.agent_id)
}

async fn insert_chunk(
    tx: &mut Transaction<'static, Sqlite>,
    key: &AgentKey,
    now_ms: i64,
    sql: &'static str,
    chunk: &[&NewRecord],
) -> Result<(), StoreError> {
    let mut query = sqlx::query(sql);
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
        .execute(&mut **tx)
        .await
        .map_err(db("commit_batch: insert records"))?;
    Ok(())
}

/// Gap rows as the JSON array of `[first_seq, last_seq, kind]` the gap INSERT unpacks with `json_each`.
fn gaps_json(gaps: &[PlannedGap]) -> Result<String, StoreError> {
    let rows: Vec<(u64, u64, &str)> = gaps
        .iter()
        .map(|g| (g.first_seq, g.last_seq, g.kind.as_str()))
        .collect();
    serde_json::to_string(&rows)
        .map_err(|e| StoreError::invalid("records", format!("cannot encode gap list: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
