//! The PostgreSQL backend, for several aggregator replicas sharing one database.
//!
//! Concurrency: `commit_batch` locks the agent's row (`SELECT ... FOR UPDATE`), so two replicas committing for
//! the same agent serialise and each sees the other's cursor; `publish_bundle` takes a transaction-scoped
//! advisory lock per tenant so concurrent publishes cannot land out of epoch order. Records are inserted with one
//! statement per batch that UNNESTs parallel arrays, whatever the batch size.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::batch;
use crate::error::{StoreError, db};
use crate::model::{
    AgentCursor, AgentFilter, AgentHello, AgentKey, AgentRow, BatchOutcome, BundleReportRow,
    GapRow, NewRecord, Revocation, StoredBundle, StoredRecord, Tenant, to_hash, to_i64, to_u64,
};
use crate::rows::{self, Columns, agent_columns, record_columns};

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
             cert_serial = EXCLUDED.cert_serial, \
             last_seen_unix_ms = GREATEST(agents.last_seen_unix_ms, EXCLUDED.last_seen_unix_ms), \
             remote_addr = EXCLUDED.remote_addr, agent_version = EXCLUDED.agent_version, \
             active_bundle_epoch = EXCLUDED.active_bundle_epoch, \
             active_bundle_digest = EXCLUDED.active_bundle_digest, \
             active_bundle_since_ms = EXCLUDED.active_bundle_since_ms, \
             received_bundle_epoch = EXCLUDED.received_bundle_epoch, \
             received_bundle_digest = EXCLUDED.received_bundle_digest, \
             outbox_depth = EXCLUDED.outbox_depth, shed_total = EXCLUDED.shed_total \
             RETURNING committed_seq, committed_hash";
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(db("agents_connected: begin"))?;
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
        const SQL: &str = "UPDATE agents SET last_seen_unix_ms = GREATEST(last_seen_unix_ms, $5) \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
        let mut tx = self.pool.begin().await.map_err(db("agents_seen: begin"))?;
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
             last_seen_unix_ms = GREATEST(last_seen_unix_ms, $7) \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
        const ACTIVATED: &str = "UPDATE agents SET active_bundle_epoch = $5, active_bundle_digest = $6, \
             active_bundle_since_ms = $7, last_seen_unix_ms = GREATEST(last_seen_unix_ms, $8) \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";
        const REFUSED: &str = "UPDATE agents SET last_refusal_epoch = $5, last_refusal_code = $6, \
             last_refusal_message = $7, last_refusal_unix_ms = $8, \
             last_seen_unix_ms = GREATEST(last_seen_unix_ms, $8) \
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
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4 FOR UPDATE";
        const STORED: &str = "SELECT seq, record_hash FROM records \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4 AND seq = ANY($5)";
        const INSERT: &str = "INSERT INTO records (org, project, env, agent_id, received_unix_ms, seq, class, kind, \
             record_hash, prev_hash, created_unix_ms, bundle_epoch, bundle_digest, bundle_since_ms, payload) \
             SELECT $1, $2, $3, $4, $5, r.seq, r.class, r.kind, r.record_hash, r.prev_hash, r.created_unix_ms, \
             r.bundle_epoch, r.bundle_digest, r.bundle_since_ms, r.payload \
             FROM UNNEST($6::int8[], $7::text[], $8::text[], $9::bytea[], $10::bytea[], $11::int8[], $12::int8[], \
             $13::text[], $14::int8[], $15::bytea[]) \
             AS r(seq, class, kind, record_hash, prev_hash, created_unix_ms, bundle_epoch, bundle_digest, \
             bundle_since_ms, payload)";
        const GAPS: &str = "INSERT INTO record_gaps (org, project, env, agent_id, first_seq, last_seq, kind, \
             detected_unix_ms) SELECT $1, $2, $3, $4, g.first_seq, g.last_seq, g.kind, $5 \
             FROM UNNEST($6::int8[], $7::int8[], $8::text[]) AS g(first_seq, last_seq, kind)";
        const ADVANCE: &str = "UPDATE agents SET committed_seq = $5, committed_hash = $6, \
             gap_count = gap_count + $7, last_seen_unix_ms = GREATEST(last_seen_unix_ms, $8) \
             WHERE org = $1 AND project = $2 AND env = $3 AND agent_id = $4";

        let mut tx: Transaction<'static, Postgres> =
            self.pool.begin().await.map_err(db("commit_batch: begin"))?;
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
            let found = bind_key(sqlx::query(STORED), key)
                .bind(&lookup)
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

        if !plan.insert.is_empty() {
            let n = plan.insert.len();
            let mut seqs = Vec::with_capacity(n);
            let mut epochs = Vec::with_capacity(n);
            for r in &plan.insert {
                seqs.push(to_i64("records.seq", r.seq)?);
                epochs.push(
                    r.bundle_epoch
                        .map(|e| to_i64("records.bundle_epoch", e))
                        .transpose()?,
                );
            }
            bind_key(sqlx::query(INSERT), key)
                .bind(now_ms)
                .bind(seqs)
                .bind(
                    plan.insert
                        .iter()
                        .map(|r| r.class.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    plan.insert
                        .iter()
                        .map(|r| r.kind.as_str())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    plan.insert
                        .iter()
                        .map(|r| r.hash.as_slice())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    plan.insert
                        .iter()
                        .map(|r| r.prev_hash.as_slice())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    plan.insert
                        .iter()
                        .map(|r| r.created_unix_ms)
                        .collect::<Vec<_>>(),
                )
                .bind(epochs)
                .bind(
                    plan.insert
                        .iter()
                        .map(|r| r.bundle_digest.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    plan.insert
                        .iter()
                        .map(|r| r.bundle_since_ms)
                        .collect::<Vec<_>>(),
                )
                .bind(
                    plan.insert
                        .iter()
                        .map(|r| r.payload.as_slice())
                        .collect::<Vec<_>>(),
                )
                .execute(&mut *tx)
                .await
                .map_err(db("commit_batch: insert records"))?;
        }
        if !plan.gaps.is_empty() {
            let mut firsts = Vec::with_capacity(plan.gaps.len());
            let mut lasts = Vec::with_capacity(plan.gaps.len());
            for g in &plan.gaps {
                firsts.push(to_i64("gap.first_seq", g.first_seq)?);
                lasts.push(to_i64("gap.last_seq", g.last_seq)?);
            }
            bind_key(sqlx::query(GAPS), key)
                .bind(now_ms)
                .bind(firsts)
                .bind(lasts)
                .bind(
                    plan.gaps
                        .iter()
                        .map(|g| g.kind.as_str())
                        .collect::<Vec<_>>(),
                )
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
        const LOCK: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";
        const LATEST: &str =
            "SELECT max(epoch) FROM bundles WHERE org = $1 AND project = $2 AND env = $3";
        const INSERT: &str = "INSERT INTO bundles (org, project, env, epoch, digest, bytes, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
        let mut tx: Transaction<'static, Postgres> = self
            .pool
            .begin()
            .await
            .map_err(db("publish_bundle: begin"))?;
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
        sqlx::query(LOCK)
            .bind(lock_key)
            .execute(&mut *tx)
            .await
            .map_err(db("publish_bundle: lock"))?;
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
            " FROM agents WHERE org = $1 AND ($2::text IS NULL OR project = $2) \
             AND ($3::text IS NULL OR env = $3) \
             AND ($4::text IS NULL OR (project, env, agent_id) > ($4::text, $5::text, $6::text)) \
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

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

fn bind_key<'q>(query: PgQuery<'q>, key: &'q AgentKey) -> PgQuery<'q> {
    query
        .bind(&key.tenant.org)
        .bind(&key.tenant.project)
        .bind(&key.tenant.env)
        .bind(&key.agent_id)
}
