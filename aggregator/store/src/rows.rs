//! Column access shared by both backends, and the decoding of result rows into the public row types.
//! Both schemas use the same column names, so one decoder per row type serves SQLite and PostgreSQL.

use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::error::{StoreError, db};
use crate::model::{
    ActiveBundle, AgentCursor, AgentRow, BundleRef, GapKind, GapRow, Refusal, RefusedRecord,
    StoredBundle, StoredRecord, Tenant, to_hash, to_u64,
};

/// Typed column reads by name, implemented for both backends' rows. A failed read (missing column, wrong type)
/// is reported as a database error of the "decode row" operation; sqlx's message names the column.
pub(crate) trait Columns {
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    fn text(&self, col: &str) -> Result<String, StoreError>;
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

macro_rules! impl_columns {
    ($row:ty) => {
        impl Columns for $row {
            fn int(&self, col: &str) -> Result<i64, StoreError> {
                self.try_get(col).map_err(db("decode row"))
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
                self.try_get(col).map_err(db("decode row"))
            }
            fn text(&self, col: &str) -> Result<String, StoreError> {
                self.try_get(col).map_err(db("decode row"))
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
                self.try_get(col).map_err(db("decode row"))
            }
            fn bytes(&self, col: &str) -> Result<Vec<u8>, StoreError> {
                self.try_get(col).map_err(db("decode row"))
            }
            fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>, StoreError> {
                self.try_get(col).map_err(db("decode row"))
            }
        }
    };
}

impl_columns!(SqliteRow);
impl_columns!(PgRow);

/// The columns `agent_row` reads, as a literal for `concat!` in SELECT statements.
macro_rules! agent_columns {
    () => {
        "org, project, env, agent_id, cert_serial, cert_not_after_unix_ms, cert_issuer, first_seen_unix_ms, \
     last_seen_unix_ms, remote_addr, agent_version, active_bundle_epoch, active_bundle_digest, \
     active_bundle_since_ms, received_bundle_epoch, received_bundle_digest, last_refusal_code, \
     last_refusal_message, last_refusal_epoch, last_refusal_unix_ms, committed_seq, committed_hash, \
     outbox_depth, shed_total, gap_count, instance_id, conflict_count"
    };
}
pub(crate) use agent_columns;

pub(crate) fn agent_row(row: &impl Columns) -> Result<AgentRow, StoreError> {
    const T: &str = "agents";
    let active_bundle = match (
        row.opt_int("active_bundle_epoch")?,
        row.opt_text("active_bundle_digest")?,
    ) {
        (Some(epoch), Some(digest)) => Some(ActiveBundle {
            epoch: to_u64(T, "active_bundle_epoch", epoch)?,
            digest,
            since_unix_ms: row.opt_int("active_bundle_since_ms")?.unwrap_or(0),
        }),
        _ => None,
    };
    let received_bundle = match (
        row.opt_int("received_bundle_epoch")?,
        row.opt_text("received_bundle_digest")?,
    ) {
        (Some(epoch), Some(digest)) => Some(BundleRef {
            epoch: to_u64(T, "received_bundle_epoch", epoch)?,
            digest,
        }),
        _ => None,
    };
    let last_refusal = match (
        row.opt_text("last_refusal_code")?,
        row.opt_int("last_refusal_epoch")?,
    ) {
        (Some(code), Some(epoch)) => Some(Refusal {
            code,
            message: row.opt_text("last_refusal_message")?.unwrap_or_default(),
            epoch: to_u64(T, "last_refusal_epoch", epoch)?,
            at_unix_ms: row.opt_int("last_refusal_unix_ms")?.unwrap_or(0),
        }),
        _ => None,
    };
    Ok(AgentRow {
        tenant: Tenant::new(
            stored_id(T, "org", row.text("org")?)?,
            stored_id(T, "project", row.text("project")?)?,
            stored_id(T, "env", row.text("env")?)?,
        ),
        agent_id: stored_id(T, "agent_id", row.text("agent_id")?)?,
        cert_serial: crate::revocations::stored_serial(T, &row.text("cert_serial")?)?,
        cert_not_after_unix_ms: row.opt_int("cert_not_after_unix_ms")?,
        cert_issuer: row.opt_text("cert_issuer")?,
        first_seen_unix_ms: row.int("first_seen_unix_ms")?,
        last_seen_unix_ms: row.int("last_seen_unix_ms")?,
        remote_addr: row.text("remote_addr")?,
        agent_version: row.text("agent_version")?,
        active_bundle,
        received_bundle,
        last_refusal,
        committed_seq: to_u64(T, "committed_seq", row.int("committed_seq")?)?,
        committed_hash: to_hash(T, "committed_hash", row.bytes("committed_hash")?)?,
        outbox_depth: to_u64(T, "outbox_depth", row.int("outbox_depth")?)?,
        shed_total: to_u64(T, "shed_total", row.int("shed_total")?)?,
        gap_count: to_u64(T, "gap_count", row.int("gap_count")?)?,
        instance_id: row.text("instance_id")?,
        conflict_count: to_u64(T, "conflict_count", row.int("conflict_count")?)?,
    })
}

/// An identifier read back from the database, parsed by its `gait-identity` type; a value that breaks the
/// identifier rule was not written by this store and is reported as [`StoreError::Corrupt`].
pub(crate) fn stored_id<T>(table: &'static str, column: &str, text: String) -> Result<T, StoreError>
where
    T: TryFrom<String, Error = gait_identity::IdError>,
{
    T::try_from(text).map_err(|e| StoreError::corrupt(table, format!("{column}: {e}")))
}

/// The columns `record_row` reads, as a literal for `concat!` in SELECT statements.
macro_rules! record_columns {
    () => {
        "seq, class, kind, record_hash, prev_hash, created_unix_ms, bundle_epoch, \
     bundle_digest, bundle_since_ms, payload, received_unix_ms"
    };
}
pub(crate) use record_columns;

pub(crate) fn record_row(row: &impl Columns) -> Result<StoredRecord, StoreError> {
    const T: &str = "records";
    Ok(StoredRecord {
        seq: to_u64(T, "seq", row.int("seq")?)?,
        class: row.text("class")?,
        kind: row.text("kind")?,
        record_hash: to_hash(T, "record_hash", row.bytes("record_hash")?)?,
        prev_hash: to_hash(T, "prev_hash", row.bytes("prev_hash")?)?,
        created_unix_ms: row.int("created_unix_ms")?,
        bundle_epoch: row
            .opt_int("bundle_epoch")?
            .map(|e| to_u64(T, "bundle_epoch", e))
            .transpose()?,
        bundle_digest: row.opt_text("bundle_digest")?,
        bundle_since_ms: row.opt_int("bundle_since_ms")?,
        payload: row.bytes("payload")?,
        received_unix_ms: row.int("received_unix_ms")?,
    })
}

pub(crate) fn gap_row(row: &impl Columns) -> Result<GapRow, StoreError> {
    const T: &str = "record_gaps";
    Ok(GapRow {
        first_seq: to_u64(T, "first_seq", row.int("first_seq")?)?,
        last_seq: to_u64(T, "last_seq", row.int("last_seq")?)?,
        kind: GapKind::parse(&row.text("kind")?)?,
        detected_unix_ms: row.int("detected_unix_ms")?,
    })
}

pub(crate) fn refused_row(row: &impl Columns) -> Result<RefusedRecord, StoreError> {
    Ok(RefusedRecord {
        seq: to_u64("record_refusals", "seq", row.int("seq")?)?,
        code: row.text("code")?,
        message: row.text("message")?,
        refused_unix_ms: row.int("refused_unix_ms")?,
    })
}

pub(crate) fn bundle_row(row: &impl Columns) -> Result<StoredBundle, StoreError> {
    Ok(StoredBundle {
        epoch: to_u64("bundles", "epoch", row.int("epoch")?)?,
        digest: row.text("digest")?,
        bytes: row.bytes("bytes")?,
        created_unix_ms: row.int("created_at")?,
        created_by: row.text("created_by")?,
    })
}

/// The cursor columns (`committed_seq`, `committed_hash`) of an agents row.
pub(crate) fn cursor_row(row: &impl Columns) -> Result<AgentCursor, StoreError> {
    Ok(AgentCursor {
        committed_seq: to_u64("agents", "committed_seq", row.int("committed_seq")?)?,
        committed_hash: to_hash("agents", "committed_hash", row.bytes("committed_hash")?)?,
    })
}

/// `(seq, record_hash)` rows as the map `batch::plan` takes.
pub(crate) fn stored_hashes<R: Columns>(
    rows: &[R],
) -> Result<std::collections::HashMap<u64, [u8; 32]>, StoreError> {
    rows.iter()
        .map(|row| {
            Ok((
                to_u64("records", "seq", row.int("seq")?)?,
                to_hash("records", "record_hash", row.bytes("record_hash")?)?,
            ))
        })
        .collect()
}
