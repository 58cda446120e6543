//! `gait-store`: the aggregator's storage — agents, their record streams and gaps, policy bundles and
//! certificate revocations — on embedded SQLite (the default) or PostgreSQL (the scale path).
//!
//! All SQL of the aggregator lives in this crate: `sqlite` and `postgres` hold one module per backend with
//! runtime queries (no compile-time macros, so no database at build time) and each backend embeds its own
//! migrations (`migrations/sqlite`, `migrations/postgres`). [`Store`] dispatches to a backend by enum and checks
//! every input before any SQL runs, so both backends refuse the same inputs with the same errors.
//!
//! Every row is scoped by a [`Tenant`] (org, project, env); agents are keyed by tenant plus agent id.
//! The record stream rules (dedup, conflicts, gaps, cursor) are in the `batch` module.

mod batch;
mod error;
mod model;
mod postgres;
mod rows;
mod sqlite;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

use std::path::Path;

pub use error::StoreError;
pub use model::{
    ActiveBundle, AgentCursor, AgentFilter, AgentHello, AgentKey, AgentPosition, AgentRow,
    BatchOutcome, BundleRef, BundleReportRow, DEFAULT_AGENT_PAGE, GapKind, GapRow, MAX_AGENT_PAGE,
    MAX_BATCH_RECORDS, MAX_LABEL_BYTES, MAX_NAME_BYTES, MAX_RECORDS_PAGE,
    MAX_REFUSAL_MESSAGE_BYTES, MAX_SERIAL_HEX, MAX_TEXT_BYTES, NewRecord, Refusal, Revocation,
    StoredBundle, StoredRecord, Tenant, normalize_cert_serial,
};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use model::{check_digest, check_name, check_text, to_i64, to_u64};

/// The aggregator's store: one of the two backends. Cheap to clone (a pool handle).
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

macro_rules! dispatch {
    ($store:expr, $backend:ident => $call:expr) => {
        match $store {
            Store::Sqlite($backend) => $call,
            Store::Postgres($backend) => $call,
        }
    };
}

impl Store {
    /// Opens the store named by `url` and applies pending migrations (idempotent):
    /// `sqlite://<path>` (created if missing, e.g. `sqlite:///var/lib/gait/aggregator.db?mode=rwc`) or
    /// `postgres://user[:password]@host[:port]/database`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let scheme = url
            .split_once(':')
            .map(|(scheme, _)| scheme)
            .unwrap_or_default();
        match scheme {
            "sqlite" => Ok(Store::Sqlite(SqliteStore::connect(url).await?)),
            "postgres" | "postgresql" => Ok(Store::Postgres(PgStore::connect(url).await?)),
            other => Err(StoreError::UnsupportedUrl {
                scheme: model::truncate_utf8(other, 32).to_owned(),
            }),
        }
    }

    /// Opens (creating if missing, with its directory) the SQLite database file at `path`.
    pub async fn open_sqlite_file(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(SqliteStore::open_file(path).await?))
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// One round trip to the database (readiness checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }

    /// Closes the pool: waits for checked-out connections to return, then closes them all.
    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }

    /// Creates or refreshes the agent's row from its hello and returns what is already committed of its stream,
    /// so the agent can drop acknowledged records and resume from `committed_seq + 1`.
    pub async fn agent_connected(
        &self,
        key: &AgentKey,
        hello: &AgentHello,
        now_ms: i64,
    ) -> Result<AgentCursor, StoreError> {
        let mut results = self.agents_connected(&[(key, hello)], now_ms).await?;
        results.pop().unwrap_or_else(|| {
            Err(StoreError::invalid(
                "hello",
                "no result for the agent (store bug)",
            ))
        })
    }

    /// [`Store::agent_connected`] for many agents at once: the valid hellos are written in one transaction, so a
    /// burst of reconnects costs one commit instead of one each. Returns one result per input, in order: an
    /// invalid hello gets its own validation error and does not affect the others. The outer error means the
    /// transaction itself failed and nothing was written.
    pub async fn agents_connected(
        &self,
        hellos: &[(&AgentKey, &AgentHello)],
        now_ms: i64,
    ) -> Result<Vec<Result<AgentCursor, StoreError>>, StoreError> {
        let mut results: Vec<Result<AgentCursor, StoreError>> = Vec::with_capacity(hellos.len());
        let mut valid = Vec::with_capacity(hellos.len());
        for (key, hello) in hellos {
            match key.validate().and_then(|()| hello.validate()) {
                Ok(serial) => {
                    valid.push((*key, *hello, serial));
                    // Placeholder, replaced by the cursor below.
                    results.push(Ok(AgentCursor {
                        committed_seq: 0,
                        committed_hash: [0; 32],
                    }));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if valid.is_empty() {
            return Ok(results);
        }
        let cursors = dispatch!(self, s => s.agents_connected(&valid, now_ms).await)?;
        let mut cursors = cursors.into_iter();
        for slot in results.iter_mut().filter(|r| r.is_ok()) {
            match cursors.next() {
                Some(cursor) => *slot = Ok(cursor),
                None => {
                    return Err(StoreError::invalid(
                        "hello",
                        "fewer cursors than hellos (store bug)",
                    ));
                }
            }
        }
        Ok(results)
    }

    /// Moves the agent's `last_seen` forward (never backward).
    pub async fn agent_seen(&self, key: &AgentKey, now_ms: i64) -> Result<(), StoreError> {
        key.validate()?;
        let found = dispatch!(self, s => s.agents_seen(&[key], now_ms).await)?;
        if found > 0 {
            Ok(())
        } else {
            Err(StoreError::UnknownAgent {
                agent: key.to_string(),
            })
        }
    }

    /// Moves `last_seen` forward for many agents in one transaction; unknown agents are skipped. Returns how
    /// many agents were found.
    pub async fn agents_seen(&self, keys: &[&AgentKey], now_ms: i64) -> Result<u64, StoreError> {
        for key in keys {
            key.validate()?;
        }
        if keys.is_empty() {
            return Ok(0);
        }
        dispatch!(self, s => s.agents_seen(keys, now_ms).await)
    }

    /// Records what the agent did with a bundle: received, activated, or refused (with the reason).
    pub async fn record_bundle_report(
        &self,
        key: &AgentKey,
        report: &BundleReportRow,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        key.validate()?;
        match report {
            BundleReportRow::Received(b) => {
                to_i64("report.epoch", b.epoch)?;
                check_digest("report.digest", &b.digest)?;
            }
            BundleReportRow::Activated(b) => {
                to_i64("report.epoch", b.epoch)?;
                check_digest("report.digest", &b.digest)?;
            }
            BundleReportRow::Refused { epoch, code, .. } => {
                to_i64("report.epoch", *epoch)?;
                check_name("report.code", code)?;
                check_text("report.code", code, model::MAX_LABEL_BYTES)?;
            }
        }
        let found = dispatch!(self, s => s.record_bundle_report(key, report, now_ms).await)?;
        if found {
            Ok(())
        } else {
            Err(StoreError::UnknownAgent {
                agent: key.to_string(),
            })
        }
    }

    /// Stores a batch of the agent's records in one transaction, then returns what was stored and the new cursor.
    /// Only acknowledge the batch to the agent after this returns `Ok`. Redelivered records are counted as
    /// duplicates, a seq stored with another hash as a conflict (the stored record is kept); skipped seqs and
    /// broken hash chains become gap rows. The rules are in the `batch` module docs. Batches of one agent must be
    /// committed in the order the agent sent them (a later batch committed first makes the earlier one's seqs
    /// look like a gap). At most [`MAX_BATCH_RECORDS`] records per call.
    pub async fn commit_batch(
        &self,
        key: &AgentKey,
        records: &[NewRecord],
        now_ms: i64,
    ) -> Result<BatchOutcome, StoreError> {
        key.validate()?;
        if records.len() > MAX_BATCH_RECORDS {
            return Err(StoreError::invalid(
                "records",
                format!(
                    "batch of {} records exceeds the limit of {MAX_BATCH_RECORDS}: split it",
                    records.len()
                ),
            ));
        }
        for (index, record) in records.iter().enumerate() {
            record.validate(index)?;
        }
        let outcome = dispatch!(self, s => s.commit_batch(key, records, now_ms).await)?
            .ok_or_else(|| StoreError::UnknownAgent {
                agent: key.to_string(),
            })?;
        if outcome.conflicts > 0 {
            tracing::warn!(agent = %key, conflicts = outcome.conflicts, first_seq = outcome.conflict_seqs.first(),
                "records redelivered with a different hash; the stored records were kept");
        }
        if !outcome.gaps.is_empty() || !outcome.chain_breaks.is_empty() {
            tracing::warn!(agent = %key, missing = ?outcome.gaps, chain_breaks = ?outcome.chain_breaks,
                "gaps in the agent's record stream");
        }
        Ok(outcome)
    }

    /// Stores a published bundle. `epoch` must exceed the tenant's latest epoch, else
    /// [`StoreError::EpochConflict`] (which names the next free epoch); concurrent publishes are serialised.
    pub async fn publish_bundle(
        &self,
        tenant: &Tenant,
        epoch: u64,
        digest_hex: &str,
        bytes: &[u8],
        created_by: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        tenant.validate()?;
        if epoch == 0 {
            return Err(StoreError::invalid("epoch", "bundle epochs start at 1"));
        }
        let epoch_i64 = to_i64("epoch", epoch)?;
        check_digest("digest", digest_hex)?;
        check_text("created_by", created_by, model::MAX_TEXT_BYTES)?;
        let refused = dispatch!(self, s => s.publish_bundle(tenant, epoch_i64, digest_hex, bytes, created_by, now_ms).await)?;
        match refused {
            None => Ok(()),
            Some(latest) => {
                let latest = to_u64("bundles", "epoch", latest)?;
                Err(StoreError::EpochConflict {
                    tenant: tenant.to_string(),
                    epoch,
                    latest,
                    next: latest + 1,
                })
            }
        }
    }

    /// The tenant's bundle with the highest epoch.
    pub async fn latest_bundle(&self, tenant: &Tenant) -> Result<Option<StoredBundle>, StoreError> {
        tenant.validate()?;
        dispatch!(self, s => s.latest_bundle(tenant).await)
    }

    /// One page of the agents of one org, optionally narrowed to a project and env, ordered by (project, env,
    /// agent_id), starting after `filter.after`.
    pub async fn list_agents(&self, filter: &AgentFilter) -> Result<Vec<AgentRow>, StoreError> {
        check_name("filter.org", &filter.org)?;
        if let Some(after) = &filter.after {
            check_name("filter.after.project", &after.project)?;
            check_name("filter.after.env", &after.env)?;
            check_name("filter.after.agent_id", &after.agent_id)?;
        }
        if let Some(project) = &filter.project {
            check_name("filter.project", project)?;
        }
        if let Some(env) = &filter.env {
            check_name("filter.env", env)?;
        }
        dispatch!(self, s => s.list_agents(filter).await)
    }

    /// How many records of the agent are stored.
    pub async fn count_records(&self, key: &AgentKey) -> Result<u64, StoreError> {
        key.validate()?;
        let n = dispatch!(self, s => s.count_records(key).await)?;
        to_u64("records", "count", n)
    }

    /// The agent's records with seq above `after_seq`, ascending; at most `limit`, clamped to
    /// [`MAX_RECORDS_PAGE`]. Page by passing the last seq returned.
    pub async fn records(
        &self,
        key: &AgentKey,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        key.validate()?;
        let after = to_i64("after_seq", after_seq)?;
        let limit = limit.min(MAX_RECORDS_PAGE);
        if limit == 0 {
            return Ok(Vec::new());
        }
        dispatch!(self, s => s.records(key, after, i64::from(limit)).await)
    }

    /// The agent's recorded gaps, by first seq.
    pub async fn gaps(&self, key: &AgentKey) -> Result<Vec<GapRow>, StoreError> {
        key.validate()?;
        dispatch!(self, s => s.gaps(key).await)
    }

    /// Revokes a certificate. Revoking an already revoked serial is a no-op that keeps the first record.
    pub async fn revoke(&self, rev: &Revocation, now_ms: i64) -> Result<(), StoreError> {
        let serial = normalize_cert_serial("revocation.cert_serial", &rev.cert_serial)?;
        rev.tenant.validate()?;
        check_name("revocation.agent_id", &rev.agent_id)?;
        check_text("revocation.reason", &rev.reason, model::MAX_TEXT_BYTES)?;
        dispatch!(self, s => s.revoke(rev, &serial, now_ms).await)
    }

    /// Every revoked serial (normalised lowercase hex), sorted.
    pub async fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        dispatch!(self, s => s.revoked_serials().await)
    }
}
