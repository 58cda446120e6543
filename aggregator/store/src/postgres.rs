//! The PostgreSQL backend, for several aggregator replicas sharing one database; and the SQL that only
//! PostgreSQL speaks (row and advisory locks, `UNNEST` of array parameters). Portable queries live in the
//! domain modules.
//!
//! Concurrency: `commit_batch` locks the agent's row (`SELECT ... FOR UPDATE`), so two replicas committing for
//! the same agent serialise and each sees the other's cursor; `publish_bundle` takes a transaction-scoped
//! advisory lock per tenant so concurrent publishes cannot land out of epoch order. Records are inserted with one
//! statement per batch that UNNESTs parallel arrays, whatever the batch size.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::PgConnection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::batch::PlannedGap;
use crate::conn::{Pooled, Tx, agent_where, bind_key};
use crate::error::{StoreError, db};
use crate::model::{AgentCursor, AgentKey, NewRecord, Tenant, to_i64};
use crate::rows;

static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Connections per aggregator process.
const MAX_CONNECTIONS: u32 = 10;
/// How long a caller waits for a free connection before a (retryable) pool timeout.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL backend. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database named by a `postgres://` URL and applies migrations (migrations take an
    /// advisory lock, so replicas starting together apply them once).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
            backend: "postgres",
            source,
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect {
                backend: "postgres",
                source,
            })?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|source| StoreError::Migrate {
                backend: "postgres",
                source,
            })?;
        Ok(Self { pool })
    }

    /// The options the pool connects with (for a dedicated connection, e.g. a leader lease).
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn connect_options(&self) -> PgConnectOptions {
        (*self.pool.connect_options()).clone()
    }

    /// Starts a transaction (read committed; the operations take the row and advisory locks they need).
    pub(crate) async fn begin(&self, op: &'static str) -> Result<Tx, StoreError> {
        let tx = self.pool.begin().await.map_err(db(op))?;
        Ok(Tx::Postgres(tx))
    }

    /// Checks a connection out of the pool, for reads outside a transaction.
    pub(crate) async fn acquire(&self) -> Result<Pooled, StoreError> {
        let conn = self.pool.acquire().await.map_err(db("acquire"))?;
        Ok(Pooled::Postgres(conn))
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// The agent's cursor, or `None` without a row, with the row locked (`FOR UPDATE`) until the transaction ends:
/// two replicas committing for the same agent serialise and each sees the other's cursor.
pub(crate) async fn lock_cursor(
    c: &mut PgConnection,
    key: &AgentKey,
) -> Result<Option<AgentCursor>, StoreError> {
    const SQL: &str = concat!(
        "SELECT committed_seq, committed_hash FROM agents",
        agent_where!(),
        " FOR UPDATE"
    );
    let row = bind_key(sqlx::query(SQL), key)
        .fetch_optional(&mut *c)
        .await
        .map_err(db("commit_batch: cursor"))?;
    row.as_ref().map(rows::cursor_row).transpose()
}

/// The stored hash of each of the agent's seqs in `seqs` that is stored (one `int8[]` parameter).
pub(crate) async fn stored_hashes(
    c: &mut PgConnection,
    key: &AgentKey,
    seqs: &[i64],
) -> Result<HashMap<u64, [u8; 32]>, StoreError> {
    const SQL: &str = concat!(
        "SELECT seq, record_hash FROM records",
        agent_where!(),
        " AND seq = ANY($5)"
    );
    let found = bind_key(sqlx::query(SQL), key)
        .bind(seqs)
        .fetch_all(&mut *c)
        .await
        .map_err(db("commit_batch: lookup"))?;
    rows::stored_hashes(&found)
}

/// Inserts records with one statement that UNNESTs parallel arrays, whatever the batch size.
pub(crate) async fn insert_records(
    c: &mut PgConnection,
    key: &AgentKey,
    now_ms: i64,
    records: &[&NewRecord],
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO records (org, project, env, agent_id, received_unix_ms, seq, class, kind, \
         record_hash, prev_hash, created_unix_ms, bundle_epoch, bundle_digest, bundle_since_ms, payload) \
         SELECT $1, $2, $3, $4, $5, r.seq, r.class, r.kind, r.record_hash, r.prev_hash, r.created_unix_ms, \
         r.bundle_epoch, r.bundle_digest, r.bundle_since_ms, r.payload \
         FROM UNNEST($6::int8[], $7::text[], $8::text[], $9::bytea[], $10::bytea[], $11::int8[], $12::int8[], \
         $13::text[], $14::int8[], $15::bytea[]) \
         AS r(seq, class, kind, record_hash, prev_hash, created_unix_ms, bundle_epoch, bundle_digest, \
         bundle_since_ms, payload)";
    let mut seqs = Vec::with_capacity(records.len());
    let mut epochs = Vec::with_capacity(records.len());
    for r in records {
        seqs.push(to_i64("records.seq", r.seq)?);
        epochs.push(
            r.bundle_epoch
                .map(|e| to_i64("records.bundle_epoch", e))
                .transpose()?,
        );
    }
    fn column<'a, T>(records: &[&'a NewRecord], f: impl Fn(&'a NewRecord) -> T) -> Vec<T> {
        records.iter().map(|r| f(r)).collect()
    }
    bind_key(sqlx::query(SQL), key)
        .bind(now_ms)
        .bind(seqs)
        .bind(column(records, |r| r.class.as_str()))
        .bind(column(records, |r| r.kind.as_str()))
        .bind(column(records, |r| r.hash.as_slice()))
        .bind(column(records, |r| r.prev_hash.as_slice()))
        .bind(column(records, |r| r.created_unix_ms))
        .bind(epochs)
        .bind(column(records, |r| r.bundle_digest.as_deref()))
        .bind(column(records, |r| r.bundle_since_ms))
        .bind(column(records, |r| r.payload.as_slice()))
        .execute(&mut *c)
        .await
        .map_err(db("commit_batch: insert records"))?;
    Ok(())
}

/// Inserts gap rows in one statement that UNNESTs parallel arrays.
pub(crate) async fn insert_gaps(
    c: &mut PgConnection,
    key: &AgentKey,
    now_ms: i64,
    gaps: &[PlannedGap],
) -> Result<(), StoreError> {
    const SQL: &str = "INSERT INTO record_gaps (org, project, env, agent_id, first_seq, last_seq, kind, \
         detected_unix_ms) SELECT $1, $2, $3, $4, g.first_seq, g.last_seq, g.kind, $5 \
         FROM UNNEST($6::int8[], $7::int8[], $8::text[]) AS g(first_seq, last_seq, kind)";
    let mut firsts = Vec::with_capacity(gaps.len());
    let mut lasts = Vec::with_capacity(gaps.len());
    for g in gaps {
        firsts.push(to_i64("gap.first_seq", g.first_seq)?);
        lasts.push(to_i64("gap.last_seq", g.last_seq)?);
    }
    bind_key(sqlx::query(SQL), key)
        .bind(now_ms)
        .bind(firsts)
        .bind(lasts)
        .bind(gaps.iter().map(|g| g.kind.as_str()).collect::<Vec<_>>())
        .execute(&mut *c)
        .await
        .map_err(db("commit_batch: insert gaps"))?;
    Ok(())
}

/// Takes the tenant's transaction-scoped advisory lock for bundle publishing, so concurrent publishes cannot
/// land out of epoch order (SQLite needs none: its write transactions are serial).
pub(crate) async fn lock_tenant_bundles(
    c: &mut PgConnection,
    tenant: &Tenant,
) -> Result<(), StoreError> {
    const SQL: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
    // Length-prefixed parts, so no two tenants share a lock key by concatenation.
    let lock_key = format!(
        "gait-store/bundles/{}:{}/{}:{}/{}:{}",
        tenant.org.len(),
        tenant.org,
        tenant.project.len(),
        tenant.project,
        tenant.env.len(),
        tenant.env
    );
    sqlx::query(SQL)
        .bind(lock_key)
        .execute(&mut *c)
        .await
        .map_err(db("publish_bundle: lock"))?;
    Ok(())
}
