//! The outbox quarantine: records the aggregator refused for good (a permanent [`gait_wire::RefusalCode`])
//! or that break [`gait_wire::Record::validate`] when the shipper is about to send them. Such a record can
//! never be delivered as it is; left in the outbox it would be resent forever and stall every record after
//! it. It is moved here instead, kept, counted, logged at ERROR and exportable
//! (`gait-agent quarantine list|export`), and the stream goes on.
//!
//! # On-disk format
//! Two tables in the agent's redb file, next to the outbox tables:
//! - `outbox_quarantine`: key = `seq` as 8 bytes big-endian, value = postcard `EntryOnDisk::V1` holding the
//!   record exactly as it was stored in the outbox, the refusal code, the refusal message and when it was
//!   quarantined.
//! - `outbox_quarantine_meta`: one key, `state`, postcard `QMetaOnDisk::V1`: records held, their bytes,
//!   records quarantined since the file was created, and records dropped from the quarantine.
//!
//! # Rules
//! - Only the oldest waiting outbox record may move ([`Outbox::quarantine_oldest`]); the move deletes it from
//!   the records table, inserts it here and advances the outbox's `acked_through` by one, all in one durable
//!   commit. So after a crash a record is in exactly one of the two places.
//! - The quarantine is bounded ([`QuarantineLimits`]). When a new entry would exceed a bound the oldest
//!   entries are dropped, each with an ERROR log and the `dropped` counter.
//! - The aggregator never receives a quarantined record: it sees a one-record gap at its seq (the chain
//!   checks again from the next record, whose `prev_hash` is the quarantined record's hash).
//! - A record the aggregator did NOT commit because it already holds a different record at that seq (a
//!   `BatchAck.conflicts` entry: another instance of this identity wrote the seq) is never deleted:
//!   [`Outbox::ack_with_conflicts`] moves it here with code `record_seq_conflict` in the same durable commit
//!   that deletes the committed records around it.

use gait_wire::Record;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{Outbox, OutboxError};
use crate::db::AgentDb;

const QUARANTINE: TableDefinition<'static, [u8; 8], &[u8]> =
    TableDefinition::new("outbox_quarantine");
const QUARANTINE_META: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("outbox_quarantine_meta");
const QMETA_KEY: &str = "state";

/// The quarantine table opened in a write transaction.
type QuarantineTable<'txn> = redb::Table<'txn, [u8; 8], &'static [u8]>;

/// Longest refusal message kept with a quarantined record, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Bounds of the quarantine; above either the oldest entries are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantineLimits {
    /// Records kept.
    pub max_records: u64,
    /// Stored bytes (postcard-encoded entries) kept.
    pub max_bytes: u64,
}

impl Default for QuarantineLimits {
    /// 10,000 records / 64 MiB: refusals are rare, and an operator is told about each one.
    fn default() -> Self {
        QuarantineLimits {
            max_records: 10_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Quarantine counters, as of the last commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct QuarantineStats {
    /// Records held now.
    pub held: u64,
    /// Stored bytes of those records.
    pub bytes: u64,
    /// Records quarantined since the file was created.
    pub total: u64,
    /// Records dropped from the quarantine to respect its bounds.
    pub dropped: u64,
}

/// What [`Outbox::ack_with_conflicts`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckOutcome {
    /// Committed records deleted from the outbox.
    pub deleted: u64,
    /// Conflicting records moved into the quarantine, by seq.
    pub quarantined: Vec<u64>,
    /// Older quarantine entries dropped to make room.
    pub dropped: u64,
}

/// What [`Outbox::quarantine_oldest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuarantineOutcome {
    /// The record moved to the quarantine; `dropped` older entries were dropped to make room.
    Quarantined { seq: u64, dropped: u64 },
    /// The seq is no longer waiting (already acknowledged or quarantined): nothing changed.
    NotWaiting,
}

/// One quarantined record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRecord {
    /// The record exactly as the outbox stored it.
    pub record: Record,
    /// Refusal code ([`gait_wire::RefusalCode`] string, or a code the agent did not know).
    pub code: String,
    /// Refusal detail.
    pub message: String,
    /// When it was quarantined, milliseconds since the Unix epoch.
    pub quarantined_unix_ms: i64,
}

impl QuarantinedRecord {
    /// JSON projection for `gait-agent quarantine export`: digests in hex, the payload as the JSON document
    /// it should be (or `payload_hex` when it does not parse as JSON).
    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.record;
        let mut v = serde_json::json!({
            "seq": r.seq,
            "prev_hash": hex::encode(r.prev_hash),
            "hash": hex::encode(r.hash),
            "class": r.class.as_str(),
            "kind": r.kind,
            "created_unix_ms": r.created_unix_ms,
            "bundle": r.bundle.as_ref().map(|b| serde_json::json!({
                "epoch": b.epoch,
                "digest": hex::encode(b.digest),
                "since_unix_ms": b.since_unix_ms,
            })),
            "code": self.code,
            "message": self.message,
            "quarantined_unix_ms": self.quarantined_unix_ms,
        });
        match serde_json::from_slice::<serde_json::Value>(&r.payload) {
            Ok(payload) => v["payload"] = payload,
            Err(_) => v["payload_hex"] = hex::encode(&r.payload).into(),
        }
        v
    }
}

#[derive(Serialize, Deserialize)]
enum EntryOnDisk {
    V1(Entry),
}

#[derive(Serialize, Deserialize)]
struct Entry {
    record: Record,
    code: String,
    message: String,
    quarantined_unix_ms: i64,
}

#[derive(Serialize, Deserialize)]
enum QMetaOnDisk {
    V1(QMeta),
}

/// Persisted quarantine counters.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QMeta {
    held: u64,
    bytes: u64,
    total: u64,
    dropped: u64,
}

impl QMeta {
    pub(super) const EMPTY: QMeta = QMeta {
        held: 0,
        bytes: 0,
        total: 0,
        dropped: 0,
    };

    fn stats(&self) -> QuarantineStats {
        QuarantineStats {
            held: self.held,
            bytes: self.bytes,
            total: self.total,
            dropped: self.dropped,
        }
    }
}

impl Outbox {
    /// Opens a handle like [`Outbox::open`] with explicit quarantine bounds.
    pub fn open_with_quarantine(
        db: &AgentDb,
        limits: super::OutboxLimits,
        quarantine: QuarantineLimits,
    ) -> Result<Self, OutboxError> {
        if quarantine.max_records == 0 || quarantine.max_bytes == 0 {
            return Err(OutboxError::InvalidLimits(
                "quarantine max_records and max_bytes must be at least 1",
            ));
        }
        Self::open_inner(db, limits, quarantine)
    }

    /// Moves record `seq` from the outbox into the quarantine, with the refusal `code` and `message`, in one
    /// durable commit, and logs it at ERROR. Only the oldest waiting record may move (module docs); a seq
    /// that is no longer waiting is [`QuarantineOutcome::NotWaiting`].
    pub fn quarantine_oldest(
        &self,
        seq: u64,
        code: &str,
        message: &str,
        now_unix_ms: i64,
    ) -> Result<QuarantineOutcome, OutboxError> {
        let limits = self.inner.quarantine_limits;
        let mut outcome = QuarantineOutcome::NotWaiting;
        let mut qmeta_after = None;
        let mut kind = String::new();
        let mut dropped_seqs = Vec::new();
        self.write_txn(false, |txn, records, meta| {
            if seq <= meta.acked_through {
                return Ok(());
            }
            if seq != meta.acked_through + 1 || seq > meta.last_seq {
                return Err(OutboxError::NotOldest {
                    seq,
                    oldest: (meta.depth() > 0).then_some(meta.acked_through + 1),
                });
            }
            let bytes = records
                .remove(seq.to_be_bytes())
                .map_err(|e| self.db_err(e))?
                .map(|v| v.value().to_vec())
                .ok_or_else(|| self.corrupt(seq, "oldest waiting record is missing"))?;
            let record = self.decode(seq, &bytes)?;
            kind = record.kind.clone();
            meta.bytes = meta.bytes.checked_sub(bytes.len() as u64).ok_or_else(|| {
                self.corrupt(seq, "byte counter is smaller than the stored records")
            })?;
            meta.acked_through = seq;

            let mut table = txn.open_table(QUARANTINE).map_err(|e| self.db_err(e))?;
            let mut meta_table = txn
                .open_table(QUARANTINE_META)
                .map_err(|e| self.db_err(e))?;
            let mut q = read_qmeta(&meta_table).map_err(|e| self.qmeta_err(e))?;
            self.insert_entry(&mut table, &mut q, record, code, message, now_unix_ms)?;
            dropped_seqs = self.trim_to_limits(&mut table, &mut q)?;
            self.write_qmeta(&mut meta_table, seq, q)?;
            qmeta_after = Some(q);
            outcome = QuarantineOutcome::Quarantined {
                seq,
                dropped: dropped_seqs.len() as u64,
            };
            Ok(())
        })?;
        if let Some(q) = qmeta_after {
            *self.qlock() = q;
            tracing::error!(
                seq,
                code,
                kind = %kind,
                message,
                quarantined_total = q.total,
                "record refused for good; moved to the outbox quarantine (export it with \
                 `gait-agent quarantine export`), later records continue"
            );
            log_dropped(limits, &dropped_seqs);
        }
        Ok(outcome)
    }

    /// Settles a `BatchAck`: every waiting record with `seq <= through` leaves the outbox in one commit, the
    /// ones whose seq lies in `conflicts` into the quarantine (code `record_seq_conflict`, `message`), the
    /// others deleted. Call it with `through` at most the last seq of the acknowledged batch (the
    /// aggregator's `committed_through` may be ahead of this outbox when another instance wrote the
    /// identity's records). Acknowledging an already acknowledged seq changes nothing.
    ///
    /// A plain acknowledgement (no conflicts) commits without fsync ([`redb::Durability::None`]); the next
    /// append's durable commit, or closing the database, makes it durable. Lost in a crash, it only brings the
    /// acknowledged records back: the next session settles them from the aggregator's `Welcome` head, or
    /// sends them again and the aggregator answers them as duplicates. Producers' appends, which must be
    /// durable before a decision is answered, so no longer wait behind an acknowledgement's fsync. A move
    /// into the quarantine stays durable.
    pub fn ack_with_conflicts(
        &self,
        through: u64,
        conflicts: &[gait_wire::SeqRange],
        message: &str,
        now_unix_ms: i64,
    ) -> Result<AckOutcome, OutboxError> {
        let code = gait_wire::RefusalCode::RecordSeqConflict.as_str();
        let limits = self.inner.quarantine_limits;
        let is_conflict = |seq: u64| conflicts.iter().any(|r| r.first <= seq && seq <= r.last);
        let mut outcome = AckOutcome::default();
        let mut qmeta_after = None;
        let mut dropped_seqs = Vec::new();
        if through <= self.stats().acked_through {
            return Ok(outcome);
        }
        let durability = if conflicts.is_empty() {
            redb::Durability::None
        } else {
            redb::Durability::Immediate
        };
        self.write_txn_with(durability, false, |txn, records, meta| {
            if through > meta.last_seq {
                return Err(OutboxError::AckBeyondLastSeq {
                    acked: through,
                    last_seq: meta.last_seq,
                });
            }
            if through <= meta.acked_through {
                return Ok(());
            }
            let mut table = txn.open_table(QUARANTINE).map_err(|e| self.db_err(e))?;
            let mut meta_table = txn
                .open_table(QUARANTINE_META)
                .map_err(|e| self.db_err(e))?;
            let mut q = read_qmeta(&meta_table).map_err(|e| self.qmeta_err(e))?;
            for seq in meta.acked_through + 1..=through {
                let bytes = records
                    .remove(seq.to_be_bytes())
                    .map_err(|e| self.db_err(e))?
                    .map(|v| v.value().to_vec())
                    .ok_or_else(|| self.corrupt(seq, "acknowledged record is missing"))?;
                meta.bytes = meta.bytes.checked_sub(bytes.len() as u64).ok_or_else(|| {
                    self.corrupt(seq, "byte counter is smaller than the stored records")
                })?;
                if !is_conflict(seq) {
                    outcome.deleted += 1;
                    continue;
                }
                let record = self.decode(seq, &bytes)?;
                self.insert_entry(&mut table, &mut q, record, code, message, now_unix_ms)?;
                outcome.quarantined.push(seq);
            }
            meta.acked_through = through;
            dropped_seqs = self.trim_to_limits(&mut table, &mut q)?;
            if !outcome.quarantined.is_empty() || !dropped_seqs.is_empty() {
                self.write_qmeta(&mut meta_table, through, q)?;
                qmeta_after = Some(q);
            }
            Ok(())
        })?;
        outcome.dropped = dropped_seqs.len() as u64;
        if let Some(q) = qmeta_after {
            *self.qlock() = q;
        }
        log_dropped(limits, &dropped_seqs);
        Ok(outcome)
    }

    /// The hash of waiting record `seq`, or `None` when it is not waiting (acknowledged, or never written).
    pub fn hash_at(&self, seq: u64) -> Result<Option<gait_wire::Digest>, OutboxError> {
        let stats = self.stats();
        if seq <= stats.acked_through || seq > stats.last_seq {
            return Ok(None);
        }
        if let Some(hash) = self.pending_hash(seq) {
            return Ok(Some(hash));
        }
        let txn = self.db().redb().begin_read().map_err(|e| self.db_err(e))?;
        let records = txn.open_table(super::RECORDS).map_err(|e| self.db_err(e))?;
        let found = records
            .get(seq.to_be_bytes())
            .map_err(|e| self.db_err(e))?
            .map(|v| v.value().to_vec());
        match found {
            Some(bytes) => Ok(Some(self.decode(seq, &bytes)?.hash)),
            None => Ok(None),
        }
    }

    /// Quarantine counters as of the last commit.
    pub fn quarantine_stats(&self) -> QuarantineStats {
        self.qlock().stats()
    }

    /// Creates the quarantine tables if missing and reads their counters, checking them against the table.
    pub(super) fn open_quarantine(
        &self,
        txn: &redb::WriteTransaction,
    ) -> Result<QMeta, OutboxError> {
        let table = txn.open_table(QUARANTINE).map_err(|e| self.db_err(e))?;
        let meta_table = txn
            .open_table(QUARANTINE_META)
            .map_err(|e| self.db_err(e))?;
        let q = read_qmeta(&meta_table).map_err(|e| self.qmeta_err(e))?;
        let len = table.len().map_err(|e| self.db_err(e))?;
        if len != q.held {
            return Err(self.corrupt(
                0,
                format!("quarantine holds {len} records, its meta says {}", q.held),
            ));
        }
        Ok(q)
    }

    pub(super) fn qlock(&self) -> std::sync::MutexGuard<'_, QMeta> {
        // Replaced only after a successful commit, so valid even if a holder panicked.
        self.inner
            .quarantine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts `record` into the quarantine `table` with its refusal (both cut to [`MAX_MESSAGE_BYTES`]) and
    /// counts it in `q`. The caller trims ([`Self::trim_to_limits`]) and writes `q` in the same transaction.
    fn insert_entry(
        &self,
        table: &mut QuarantineTable<'_>,
        q: &mut QMeta,
        record: Record,
        code: &str,
        message: &str,
        now_unix_ms: i64,
    ) -> Result<(), OutboxError> {
        let seq = record.seq;
        let entry = EntryOnDisk::V1(Entry {
            record,
            code: cut(code, MAX_MESSAGE_BYTES).to_owned(),
            message: cut(message, MAX_MESSAGE_BYTES).to_owned(),
            quarantined_unix_ms: now_unix_ms,
        });
        let value = postcard::to_allocvec(&entry)
            .map_err(|e| self.corrupt(seq, format!("cannot encode quarantine entry: {e}")))?;
        table
            .insert(seq.to_be_bytes(), value.as_slice())
            .map_err(|e| self.db_err(e))?;
        q.held += 1;
        q.bytes = q.bytes.saturating_add(value.len() as u64);
        q.total = q.total.saturating_add(1);
        Ok(())
    }

    /// Drops the oldest entries of the quarantine `table` while `q` is above this handle's
    /// [`QuarantineLimits`], counting them in `q`; returns their seqs, oldest first, for [`log_dropped`]
    /// once the transaction has committed.
    fn trim_to_limits(
        &self,
        table: &mut QuarantineTable<'_>,
        q: &mut QMeta,
    ) -> Result<Vec<u64>, OutboxError> {
        let limits = self.inner.quarantine_limits;
        let mut dropped = Vec::new();
        while q.held > limits.max_records || q.bytes > limits.max_bytes {
            let Some((old_seq, old_len)) = table
                .pop_first()
                .map_err(|e| self.db_err(e))?
                .map(|(k, v)| (u64::from_be_bytes(k.value()), v.value().len() as u64))
            else {
                break;
            };
            q.held -= 1;
            q.bytes = q.bytes.saturating_sub(old_len);
            q.dropped = q.dropped.saturating_add(1);
            dropped.push(old_seq);
        }
        Ok(dropped)
    }

    /// Writes the quarantine counters `q`; `seq` names the record in an encoding error.
    fn write_qmeta(
        &self,
        meta_table: &mut redb::Table<'_, &'static str, &'static [u8]>,
        seq: u64,
        q: QMeta,
    ) -> Result<(), OutboxError> {
        let encoded = postcard::to_allocvec(&QMetaOnDisk::V1(q))
            .map_err(|e| self.corrupt(seq, format!("cannot encode quarantine meta: {e}")))?;
        meta_table
            .insert(QMETA_KEY, encoded.as_slice())
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    fn qmeta_err(&self, e: QMetaError) -> OutboxError {
        match e {
            QMetaError::Db(e) => self.db_err(e),
            QMetaError::Decode(detail) => self.corrupt(0, format!("quarantine meta: {detail}")),
        }
    }
}

/// Reads the quarantine of `db` without writing anything (for `gait-agent quarantine`, with the agent
/// stopped): its counters and every record it holds, oldest first.
pub fn read(db: &AgentDb) -> Result<(QuarantineStats, Vec<QuarantinedRecord>), OutboxError> {
    let path = db.path().display().to_string();
    let corrupt = |seq: u64, detail: String| OutboxError::Corrupt {
        path: path.clone(),
        seq,
        detail,
    };
    let read = db
        .redb()
        .begin_read()
        .map_err(|e| OutboxError::Db(db.err(e)))?;
    let stats = match read.open_table(QUARANTINE_META) {
        Ok(t) => match read_qmeta(&t) {
            Ok(q) => q.stats(),
            Err(QMetaError::Db(e)) => return Err(OutboxError::Db(db.err(e))),
            Err(QMetaError::Decode(d)) => return Err(corrupt(0, format!("quarantine meta: {d}"))),
        },
        Err(redb::TableError::TableDoesNotExist(_)) => QuarantineStats::default(),
        Err(e) => return Err(OutboxError::Db(db.err(e))),
    };
    let table = match read.open_table(QUARANTINE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok((stats, Vec::new())),
        Err(e) => return Err(OutboxError::Db(db.err(e))),
    };
    let mut out = Vec::new();
    for entry in table.iter().map_err(|e| OutboxError::Db(db.err(e)))? {
        let (key, value) = entry.map_err(|e| OutboxError::Db(db.err(e)))?;
        let seq = u64::from_be_bytes(key.value());
        match postcard::from_bytes::<EntryOnDisk>(value.value()) {
            Ok(EntryOnDisk::V1(e)) => out.push(QuarantinedRecord {
                record: e.record,
                code: e.code,
                message: e.message,
                quarantined_unix_ms: e.quarantined_unix_ms,
            }),
            Err(e) => {
                return Err(corrupt(
                    seq,
                    format!("quarantine entry does not decode: {e}"),
                ));
            }
        }
    }
    Ok((stats, out))
}

enum QMetaError {
    Db(redb::StorageError),
    Decode(String),
}

fn read_qmeta<T: ReadableTable<&'static str, &'static [u8]>>(
    table: &T,
) -> Result<QMeta, QMetaError> {
    let Some(value) = table.get(QMETA_KEY).map_err(QMetaError::Db)? else {
        return Ok(QMeta::EMPTY);
    };
    match postcard::from_bytes::<QMetaOnDisk>(value.value()) {
        Ok(QMetaOnDisk::V1(q)) => Ok(q),
        Err(e) => Err(QMetaError::Decode(e.to_string())),
    }
}

/// Logs each quarantine entry [`Outbox::trim_to_limits`] dropped, after its commit: the record is lost.
fn log_dropped(limits: QuarantineLimits, dropped_seqs: &[u64]) {
    for &dropped in dropped_seqs {
        tracing::error!(
            seq = dropped,
            max_records = limits.max_records,
            max_bytes = limits.max_bytes,
            "outbox quarantine full: oldest quarantined record dropped and lost"
        );
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
