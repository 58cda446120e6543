//! The durable outbox: every record the agent produces (decisions, artifact digests, status) waits here,
//! hash-chained and sequence-numbered, until the aggregator acknowledges it as committed.
//!
//! # On-disk format
//! Two tables in the agent's redb file ([`crate::db::AgentDb`]):
//! - `outbox_records`: key = `seq` as 8 bytes big-endian (so byte order is numeric order), value = the
//!   postcard encoding of a [`gait_wire::Record`] exactly as it is sent on the wire (seq, prev_hash and hash
//!   included). Changing that encoding means bumping [`crate::db::FORMAT_VERSION`] and migrating.
//! - `outbox_meta`: one key, `state`, holding a postcard-encoded, versioned `Meta`: `last_seq`, `last_hash`,
//!   `shed_total`, `acked_through` and `bytes` (sum of the stored value sizes). Meta is never deleted, so it
//!   survives the deletion of every record.
//! - `outbox_quarantine` and `outbox_quarantine_meta`: records the aggregator refused for good, see
//!   [`quarantine`].
//! - Beside the database, `agent.wal` and `agent.wal.1`: the write-ahead log of group commits, see
//!   `outbox/wal.rs`.
//!
//! # Invariants (checked on open, and fully by [`Outbox::verify_chain`])
//! - Sequence numbers start at 1 and strictly increase; a number is never reused, even after its record was
//!   deleted (`last_seq` lives in meta, not in the records table).
//! - Hash chain: each record's `prev_hash` is the `hash` of the record appended just before it
//!   ([`gait_wire::GENESIS_HASH`] for seq 1) and its `hash` is [`gait_wire::Record::compute_hash`]. `last_hash`
//!   in meta is the hash of record `last_seq`, so the chain continues across deletions and restarts.
//! - The records table holds exactly the seqs `acked_through + 1 ..= last_seq`: no gaps, nothing below the
//!   acknowledged point. `acked_through` is "acknowledged by the aggregator, or quarantined": a record leaves
//!   the records table for the quarantine only when it is the oldest one waiting ([`Outbox::quarantine_oldest`]),
//!   so quarantining moves `acked_through` by one and keeps this invariant.
//! - Every stored record passes [`gait_wire::Record::validate`] when it is appended (the one rule the
//!   aggregator applies too); a record stored by an older build under older limits is quarantined by the
//!   shipper before it is sent.
//!
//! # Ack/delete rule
//! A record is deleted only by [`Outbox::ack_with_conflicts`] (a `BatchAck`) or [`Outbox::ack_through`] (a
//! `Welcome`), and only when the aggregator committed it: the aggregator acknowledges only after its store
//! committed the batch. A record the aggregator did not commit because it holds a different record at that
//! seq (listed in `BatchAck.conflicts`: another instance of this identity wrote the seq) is moved into the
//! quarantine, never deleted. The sync loop acknowledges a `BatchAck` at most through the last seq of that
//! batch, and a `Welcome`'s `committed_seq` only when this outbox's record at that seq has the aggregator's
//! `committed_hash` (the hash chain then proves every record before it is the one the aggregator holds).
//! Both are idempotent, and an ack beyond `last_seq` is refused.
//!
//! # Crash rules
//! - Each `append` / `append_many` is one redb write transaction committed with fsync ("immediate"
//!   durability) before it returns; the producer learns its seq only after that.
//! - The committer's group commits (`Outbox::append_logged`) are made durable by one synced frame of the
//!   write-ahead log alone (`outbox/wal.rs`): no redb transaction is on the decision path. The sealed group
//!   waits in memory (`Pending`) until the applier thread (`Outbox::run_applier`), or the next ack,
//!   quarantine or durable append, moves it into redb in its own transaction; reads (`peek_batch`,
//!   `hash_at`, `verify_chain`) see pending groups as if they were stored. The log is two files, `agent.wal`
//!   and `agent.wal.1`; when the active one is full the other becomes active, and it is reused only once redb
//!   durably holds every group it logged (the rotation applies them with fsync first if the applier is
//!   behind). Opening the outbox replays both files in generation order, skipping what redb already holds
//!   (`log_position` in meta). So after a crash (process kill or power loss, provided the disk honours
//!   fsync) every record ever acknowledged to a producer is present, unless the aggregator acknowledged it
//!   first.
//! - Downgrade: a build older than the two-file log reads only `agent.wal`. Stop the agent cleanly before
//!   downgrading (a clean stop checkpoints the log into redb), or groups logged only in `agent.wal.1` are
//!   not replayed by the older build.
//! - A crash in the middle of a transaction leaves the last committed state: redb's copy-on-write commit
//!   either happened or did not; an interrupted `ack_through` deletes everything it was asked to or nothing.
//! - Sending is at-least-once: a batch sent but not yet acknowledged when the agent died is sent again. The
//!   aggregator deduplicates by (agent, seq) and can check the chain, so redelivery never doubles a record.
//!
//! # Quota
//! [`OutboxLimits`] is a soft quota (`max_records`, `max_bytes` of stored values); the hard ceiling is twice
//! that. Above the soft quota a NEW `Allow` record is shed: it is dropped before it gets a seq, counted in
//! `shed_total` (persisted, and reported to the aggregator in `Hello`), and the producer is told
//! [`AppendOutcome::Shed`]. Records that already have a seq are never evicted, since a hole in the sequence
//! would be indistinguishable from loss. `Block`, `Approval`, `ArtifactDigest` and `Status` records are
//! accepted up to the hard ceiling; beyond it `append` returns [`OutboxError::Full`] and stores nothing. The
//! producer was not acknowledged, so nothing it was promised is lost: it decides (e.g. fail closed). One
//! record's payload is capped at [`MAX_PAYLOAD_BYTES`].
//!
//! # Upgrade from protocol version 1
//! Records written by a build that spoke protocol version 1 carry a SHA-256 hash. [`Outbox::open`] re-seals
//! every waiting record whose hash is a valid version 1 hash with the BLAKE3 hash of version 2, in one
//! durable commit, keeping the first one's `prev_hash` (the aggregator's stored hash of the record before
//! it), so the chain still links at the aggregator. A record the old build sent but that was not yet
//! acknowledged is stored by the aggregator under its old hash; its resend is counted there as a conflict
//! and acknowledged.
//!
//! All methods block on disk I/O (each commit waits for fsync): async callers use `spawn_blocking`. Writers
//! are serialised by a mutex that also keeps the in-memory [`OutboxStats`] in step with the file.
//!
//! The model check in `outbox/tests.rs` drives this type and an in-memory queue with the same operations
//! directly, so there is no storage trait: it would exist only for the test.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use gait_wire::{BundleRef, GENESIS_HASH, Record, RecordClass, RecordError};
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::db::{AgentDb, DbError};

pub mod quarantine;
#[cfg(test)]
mod tests;
pub(crate) mod wal;

pub use gait_wire::limits::{MAX_KIND_BYTES, MAX_PAYLOAD_BYTES};
pub use quarantine::{
    AckOutcome, QuarantineLimits, QuarantineOutcome, QuarantineStats, QuarantinedRecord,
};

const RECORDS: TableDefinition<'static, [u8; 8], &[u8]> = TableDefinition::new("outbox_records");
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("outbox_meta");
const META_KEY: &str = "state";
/// Key in `outbox_meta` holding the write-ahead log position ([`wal::Position`]) of the newest logged group,
/// or one past every frame after a durable commit: what of the log redb's durable state already holds.
const LOG_POSITION_KEY: &str = "log_position";
/// How long the applier lets logged groups gather before it applies them to redb in one transaction. They are
/// durable in the log and answered already, and every reader that needs them applies them itself
/// ([`Outbox::apply_pending`]), so the wait delays no one.
const APPLY_GATHER: std::time::Duration = std::time::Duration::from_millis(2);
/// Logged groups that end the applier's gathering early (and wake it).
const APPLY_GATHER_GROUPS: usize = 128;

/// Soft quota of the outbox; the hard ceiling is twice each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Records waiting for acknowledgement above which `Allow` records are shed.
    pub max_records: u64,
    /// Stored bytes (postcard-encoded records) above which `Allow` records are shed.
    pub max_bytes: u64,
}

impl Default for OutboxLimits {
    /// 100k records / 256 MiB soft, so 200k / 512 MiB hard.
    fn default() -> Self {
        OutboxLimits {
            max_records: 100_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

impl OutboxLimits {
    fn hard_records(&self) -> u64 {
        self.max_records.saturating_mul(2)
    }

    fn hard_bytes(&self) -> u64 {
        self.max_bytes.saturating_mul(2)
    }
}

/// A record as a producer hands it in; the outbox assigns `seq`, `prev_hash` and `hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Priority class; only `Allow` may be shed.
    pub class: RecordClass,
    /// What the payload is, e.g. `"gate.decision"` (the kind rule of [`gait_wire::limits`]).
    pub kind: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// The policy bundle in force when the record was made.
    pub bundle: Option<BundleRef>,
    /// JSON document bytes (at most [`MAX_PAYLOAD_BYTES`]).
    pub payload: Vec<u8>,
}

/// What happened to one record handed to [`Outbox::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Durably stored under this sequence number.
    Appended { seq: u64 },
    /// Dropped under quota pressure (an `Allow` record above the soft quota); counted in `shed_total`.
    Shed,
}

/// One record sealed by [`Outbox::seal_next`].
enum Sealed {
    Shed,
    Appended {
        seq: u64,
        hash: [u8; 32],
        value: Vec<u8>,
    },
}

/// A snapshot of the outbox counters, as of the last committed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    /// Records waiting for acknowledgement.
    pub depth: u64,
    /// Stored bytes of those records.
    pub bytes: u64,
    /// Newest sequence number ever assigned (0 = none).
    pub last_seq: u64,
    /// Hash of record `last_seq` ([`GENESIS_HASH`] when none).
    pub last_hash: [u8; 32],
    /// `Allow` records shed since the file was created.
    pub shed_total: u64,
    /// Oldest waiting record, if any.
    pub oldest_seq: Option<u64>,
    /// Highest seq the aggregator acknowledged (0 = none).
    pub acked_through: u64,
}

/// How a group of [`Outbox::append_logged`] was made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupDurability {
    /// One synced frame of the write-ahead log; redb committed without fsync.
    Log,
    /// A durable redb commit (a checkpoint, a full or failed log, or a change the log cannot carry).
    Database,
}

/// Result of a full [`Outbox::verify_chain`] scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainReport {
    /// Records checked.
    pub records: u64,
    /// First and last seq present, if any.
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

/// Outbox failures. `Full` and storage I/O are retryable; the others need a fix or an operator.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Opening or writing the redb file failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The hard ceiling is reached: the record was not stored and its producer must not treat it as kept.
    #[error(
        "outbox {path} is full ({depth} records, {bytes} bytes; hard ceiling {hard_records} records, \
         {hard_bytes} bytes): the {class} record was not stored; it drains once the aggregator acknowledges \
         older records"
    )]
    Full {
        path: String,
        class: RecordClass,
        depth: u64,
        bytes: u64,
        hard_records: u64,
        hard_bytes: u64,
    },
    /// The record breaks a limit of [`gait_wire::limits`] ([`gait_wire::Record::validate`]); nothing was
    /// stored. `kind` is the record's kind (cut to [`MAX_KIND_BYTES`]) so the producer can be found.
    #[error("{kind:?} record refused: {source}")]
    InvalidRecord {
        kind: String,
        #[source]
        source: RecordError,
    },
    /// [`Outbox::quarantine_oldest`] was asked to move a record that is not the oldest one waiting.
    #[error(
        "cannot quarantine seq {seq}: only the oldest waiting record ({oldest:?}) may leave the outbox \
         before it is acknowledged"
    )]
    NotOldest { seq: u64, oldest: Option<u64> },
    /// The aggregator acknowledged a seq this outbox never assigned.
    #[error(
        "aggregator acknowledged seq {acked} but this outbox has only assigned up to {last_seq}: the agent's \
         file was replaced or the aggregator confused two agents; nothing was deleted"
    )]
    AckBeyondLastSeq { acked: u64, last_seq: u64 },
    /// The aggregator knows more records than this outbox holds and this outbox is not empty.
    #[error(
        "aggregator has committed through seq {committed} but this outbox ends at {last_seq} with {depth} \
         records waiting: two agents share one identity, or the file was restored from a backup"
    )]
    Diverged {
        committed: u64,
        last_seq: u64,
        depth: u64,
    },
    /// The file's content breaks an outbox invariant (undecodable record, broken chain, wrong counters).
    #[error(
        "outbox {path} is inconsistent at seq {seq}: {detail}; keep the file for analysis and start the \
         agent with a fresh data directory"
    )]
    Corrupt {
        path: String,
        seq: u64,
        detail: String,
    },
    /// `OutboxLimits` values that cannot work.
    #[error("invalid outbox limits: {0}")]
    InvalidLimits(&'static str),
    /// All 2^64 sequence numbers are used.
    #[error("outbox sequence numbers are exhausted")]
    SeqExhausted,
}

impl OutboxError {
    /// True when the same call may succeed later without intervention (the outbox drains, I/O recovers).
    pub fn is_retryable(&self) -> bool {
        match self {
            OutboxError::Full { .. } => true,
            OutboxError::Db(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Versioned meta record; postcard encodes the variant index first.
#[derive(Serialize, Deserialize)]
enum MetaOnDisk {
    V1(Meta),
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    last_seq: u64,
    last_hash: [u8; 32],
    shed_total: u64,
    acked_through: u64,
    bytes: u64,
}

impl Meta {
    const EMPTY: Meta = Meta {
        last_seq: 0,
        last_hash: GENESIS_HASH,
        shed_total: 0,
        acked_through: 0,
        bytes: 0,
    };

    fn depth(&self) -> u64 {
        self.last_seq - self.acked_through
    }

    fn stats(&self) -> OutboxStats {
        OutboxStats {
            depth: self.depth(),
            bytes: self.bytes,
            last_seq: self.last_seq,
            last_hash: self.last_hash,
            shed_total: self.shed_total,
            oldest_seq: (self.depth() > 0).then_some(self.acked_through + 1),
            acked_through: self.acked_through,
        }
    }
}

/// Handle to the outbox. Clone it freely; all clones share one writer lock and one stats snapshot.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    db: AgentDb,
    limits: OutboxLimits,
    quarantine_limits: QuarantineLimits,
    /// Quarantine counters as of the last commit; written under the `meta` lock.
    quarantine: Mutex<quarantine::QMeta>,
    /// Meta as of the last commit. Held for the whole of every write transaction, so it is updated in
    /// commit order and only after a commit succeeded.
    meta: Mutex<Meta>,
    /// The counters of `meta`, published (under the `meta` lock) after each commit. [`Outbox::stats`] reads
    /// this one, so a reader on an async task never waits behind a writer's fsync.
    stats: Mutex<OutboxStats>,
    /// Serialises the writers of redb's outbox tables: whoever holds it folds the groups still [`Pending`] into
    /// its own transaction first. Taken after `meta` (never before it), and before `log`.
    apply: Mutex<()>,
    /// The write-ahead log of group commits ([`wal`]); locked after `meta` and `apply`, never before them. The
    /// committer never takes `apply` while it holds `log`.
    log: Mutex<LogSlot>,
    /// Groups answered through the log that redb does not hold yet ([`Outbox::append_logged`]); a short lock,
    /// taken last, never held across I/O.
    pending: Mutex<Pending>,
    /// Signalled when a group is queued, when redb caught up with the log, and at stop.
    pending_cv: Condvar,
}

/// A group the committer answered through the log, waiting for redb ([`Outbox::apply_pending`]).
#[derive(Debug)]
struct LoggedGroup {
    /// Each appended record: its seq, its hash and its postcard encoding as stored in `outbox_records`.
    records: Vec<(u64, [u8; 32], Vec<u8>)>,
    /// The rate-limit counters the group changed (key → count).
    counters: Vec<(String, i64)>,
    /// The outbox's `shed_total` after the group.
    shed_total: u64,
    /// Its frame's place in the log.
    position: wal::Position,
}

/// What of the log redb holds, as far as this process made it so.
#[derive(Debug, Default)]
struct Pending {
    /// Logged groups redb does not hold yet, in log order.
    groups: VecDeque<Arc<LoggedGroup>>,
    /// The newest log position redb's durable state holds: frames up to it are never needed again, so a file
    /// of the pair whose frames all lie at or before it may be started over.
    durable: Option<wal::Position>,
    /// The last frame of a file the committer moved off: the commit that applies it must be durable.
    seal: Option<wal::Position>,
    /// The background applier stops ([`Outbox::stop_applier`]).
    stop: bool,
}

/// The outbox's side of its write-ahead log.
#[derive(Debug, Default)]
struct LogSlot {
    /// The file groups are logged to. Open once the log was replayed at open (if there was one) or created by
    /// [`Outbox::enable_log`].
    wal: Option<wal::Wal>,
    /// The pair's other file (`agent.wal.1`): the committer moves to it when `wal` is full or due for a
    /// checkpoint, once redb's durable state holds every frame in it.
    spare: Option<wal::Wal>,
    /// The database's re-open count ([`AgentDb::reopens`]) when the log was last replayed: a re-open after a
    /// storage failure takes redb back to its last durable commit, so the log is replayed again.
    replayed_at_reopen: u64,
}

impl LogSlot {
    /// The position a durable commit stores to make every frame of both files redundant: the generation
    /// after the newest of them. `None` without a log.
    fn superseded(&self) -> Option<wal::Position> {
        let newest = [self.wal.as_ref(), self.spare.as_ref()]
            .into_iter()
            .flatten()
            .map(wal::Wal::generation)
            .max()?;
        Some(wal::Position {
            generation: newest.wrapping_add(1).max(1),
            frame: 0,
        })
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.inner.db.path())
            .field("limits", &self.inner.limits)
            .field("stats", &self.stats())
            .finish()
    }
}

type RecordsTable<'t> = redb::Table<'t, [u8; 8], &'static [u8]>;

impl Outbox {
    /// Opens the outbox tables in `db` (creating them on first use) and checks the invariants that are
    /// cheap to check: meta agrees with the first and last stored record and the record count.
    ///
    /// Open one `Outbox` per [`AgentDb`] and clone it: clones share the writer lock and the stats
    /// snapshot, two separately opened handles would not see each other's stats.
    pub fn open(db: &AgentDb, limits: OutboxLimits) -> Result<Self, OutboxError> {
        Self::open_inner(db, limits, QuarantineLimits::default())
    }

    fn open_inner(
        db: &AgentDb,
        limits: OutboxLimits,
        quarantine_limits: QuarantineLimits,
    ) -> Result<Self, OutboxError> {
        if limits.max_records == 0 {
            return Err(OutboxError::InvalidLimits("max_records must be at least 1"));
        }
        if limits.max_bytes == 0 {
            return Err(OutboxError::InvalidLimits("max_bytes must be at least 1"));
        }
        let this = Outbox {
            inner: Arc::new(Inner {
                db: db.clone(),
                limits,
                quarantine_limits,
                quarantine: Mutex::new(quarantine::QMeta::EMPTY),
                meta: Mutex::new(Meta::EMPTY),
                stats: Mutex::new(Meta::EMPTY.stats()),
                apply: Mutex::new(()),
                log: Mutex::new(LogSlot::default()),
                pending: Mutex::new(Pending::default()),
                pending_cv: Condvar::new(),
            }),
        };
        {
            let mut cached = this.lock();
            let replayed = this.replay_log(Some(&mut *cached))?;
            if replayed > 0 {
                tracing::info!(
                    replayed,
                    log = %wal::path_for(db.path()).display(),
                    "outbox records acknowledged before an unclean stop were restored from the outbox log"
                );
            }
        }
        let mut resealed = 0u64;
        let mut qmeta = quarantine::QMeta::EMPTY;
        let meta = this.write_txn(true, |txn, records, meta| {
            resealed = this.reseal_v1_records(records, meta)?;
            this.check_against_records(records, meta)?;
            qmeta = this.open_quarantine(txn)?;
            Ok(())
        })?;
        *this.qlock() = qmeta;
        if resealed > 0 {
            tracing::warn!(
                resealed,
                "outbox records written under protocol version 1 were re-sealed with the version 2 (BLAKE3) hash"
            );
        }
        tracing::debug!(
            path = %db.path().display(),
            depth = meta.depth(),
            last_seq = meta.last_seq,
            shed_total = meta.shed_total,
            "outbox opened"
        );
        Ok(this)
    }

    /// The limits this handle enforces.
    pub fn limits(&self) -> OutboxLimits {
        self.inner.limits
    }

    /// Appends one record in its own durable commit.
    pub fn append(&self, rec: NewRecord) -> Result<AppendOutcome, OutboxError> {
        let mut out = self.append_many(vec![rec])?;
        out.pop()
            .ok_or_else(|| self.corrupt(0, "append produced no outcome"))
    }

    /// Appends records in order in ONE durable commit (group commit): one fsync for the whole batch.
    /// All-or-nothing: if any non-sheddable record would cross the hard ceiling, or any record breaks
    /// [`gait_wire::Record::validate`], nothing of the batch is stored and no shed is counted.
    pub fn append_many(&self, recs: Vec<NewRecord>) -> Result<Vec<AppendOutcome>, OutboxError> {
        self.append_many_with(recs, |_| Ok(()))
    }

    /// [`Outbox::append_many`] that also runs `also` in the same write transaction, after the records, so
    /// changes to another table commit (or not) together with them (the daemon's rate-limit counters with
    /// the decisions that counted them). `also` does not run when the batch is refused before any write.
    pub(crate) fn append_many_with(
        &self,
        recs: Vec<NewRecord>,
        also: impl FnOnce(&redb::WriteTransaction) -> Result<(), OutboxError>,
    ) -> Result<Vec<AppendOutcome>, OutboxError> {
        recs.iter().try_for_each(check_content)?;
        if recs.is_empty() {
            return Ok(Vec::new());
        }
        let mut outcomes = Vec::with_capacity(recs.len());
        self.write_txn(false, |txn, records, meta| {
            for rec in recs {
                outcomes.push(self.append_one(records, meta, rec)?);
            }
            also(txn)
        })?;
        let shed = outcomes
            .iter()
            .filter(|o| **o == AppendOutcome::Shed)
            .count();
        if shed > 0 {
            tracing::debug!(shed, "outbox over soft quota, allow records shed");
        }
        Ok(outcomes)
    }

    /// Appends records chosen by `f` in ONE durable commit together with `f`'s changes to other tables of the
    /// transaction (e.g. an index of what was appended), so both land or neither does. `f` gets the write
    /// transaction and an `append` function that assigns the next seq (all [`Outbox::append_many`] rules apply).
    /// If `f` fails, nothing of the transaction is stored. If `f` appends nothing, its other changes are not
    /// committed either.
    pub fn append_in_transaction<R>(
        &self,
        f: impl FnOnce(
            &redb::WriteTransaction,
            &mut dyn FnMut(NewRecord) -> Result<AppendOutcome, OutboxError>,
        ) -> Result<R, OutboxError>,
    ) -> Result<R, OutboxError> {
        let mut out = None;
        self.write_txn(false, |txn, records, meta| {
            let mut append = |rec: NewRecord| {
                check_content(&rec)?;
                self.append_one(records, meta, rec)
            };
            out = Some(f(txn, &mut append)?);
            Ok(())
        })?;
        out.ok_or_else(|| self.corrupt(0, "append transaction produced no outcome"))
    }

    /// One record of a write transaction: seals it with the next seq, or sheds it, or refuses it at the hard
    /// ceiling ([`Outbox::seal_next`]), and stores it.
    fn append_one(
        &self,
        records: &mut RecordsTable<'_>,
        meta: &mut Meta,
        rec: NewRecord,
    ) -> Result<AppendOutcome, OutboxError> {
        match self.seal_next(meta, rec)? {
            Sealed::Shed => Ok(AppendOutcome::Shed),
            Sealed::Appended { seq, value, .. } => {
                records
                    .insert(seq.to_be_bytes(), value.as_slice())
                    .map_err(|e| self.db_err(e))?;
                Ok(AppendOutcome::Appended { seq })
            }
        }
    }

    /// Seals `rec` with the next seq of `meta` and moves `meta` past it, or sheds it (counted in `meta`), or
    /// refuses it at the hard ceiling (`meta` unchanged). Stores nothing.
    fn seal_next(&self, meta: &mut Meta, rec: NewRecord) -> Result<Sealed, OutboxError> {
        let limits = self.inner.limits;
        let seq = meta
            .last_seq
            .checked_add(1)
            .ok_or(OutboxError::SeqExhausted)?;
        let record = Record::sealed(
            seq,
            meta.last_hash,
            rec.class,
            rec.kind,
            rec.created_unix_ms,
            rec.bundle,
            rec.payload,
        );
        record
            .validate()
            .map_err(|source| invalid(&record.kind, source))?;
        let value = postcard::to_allocvec(&record)
            .map_err(|e| self.corrupt(seq, format!("cannot encode record: {e}")))?;
        let size = value.len() as u64;
        let depth_after = meta.depth() + 1;
        let bytes_after = meta.bytes.saturating_add(size);
        if rec.class.is_sheddable()
            && (depth_after > limits.max_records || bytes_after > limits.max_bytes)
        {
            meta.shed_total = meta.shed_total.saturating_add(1);
            return Ok(Sealed::Shed);
        }
        if depth_after > limits.hard_records() || bytes_after > limits.hard_bytes() {
            return Err(OutboxError::Full {
                path: self.path_string(),
                class: rec.class,
                depth: meta.depth(),
                bytes: meta.bytes,
                hard_records: limits.hard_records(),
                hard_bytes: limits.hard_bytes(),
            });
        }
        meta.last_seq = seq;
        meta.last_hash = record.hash;
        meta.bytes = bytes_after;
        Ok(Sealed::Appended {
            seq,
            hash: record.hash,
            value,
        })
    }

    /// Records with `seq > after_seq`, oldest first: at most `max_records`, and at most `max_bytes` of
    /// encoded records, except that the first record is always returned, whatever its size, so one large
    /// record cannot stall delivery. Reads a consistent snapshot of redb, then the groups answered through the
    /// log that redb does not hold yet; does not block writers.
    pub fn peek_batch(
        &self,
        after_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, OutboxError> {
        let Some(from) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        if max_records == 0 {
            return Ok(Vec::new());
        }
        // The tail first: a group applied after this snapshot is in the redb snapshot below, so nothing falls
        // between the two (a seq in both is taken once).
        let tail = self.pending_snapshot();
        let mut out = Vec::new();
        let mut total = 0usize;
        // Takes one record if it fits; `false` once the batch is full.
        let mut take =
            |out: &mut Vec<Record>, seq: u64, bytes: &[u8]| -> Result<bool, OutboxError> {
                if !out.is_empty() && total.saturating_add(bytes.len()) > max_bytes {
                    return Ok(false);
                }
                total = total.saturating_add(bytes.len());
                out.push(self.decode(seq, bytes)?);
                Ok(out.len() < max_records)
            };
        let read = self.db().redb().begin_read().map_err(|e| self.db_err(e))?;
        let open = match read.open_table(RECORDS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(self.db_err(e)),
        };
        let mut more = true;
        if let Some(table) = open {
            for entry in table
                .range(from.to_be_bytes()..)
                .map_err(|e| self.db_err(e))?
            {
                let (key, value) = entry.map_err(|e| self.db_err(e))?;
                if !take(&mut out, u64::from_be_bytes(key.value()), value.value())? {
                    more = false;
                    break;
                }
            }
        }
        if more {
            let next = out.last().map_or(from, |r| r.seq + 1);
            'tail: for group in &tail {
                for (seq, _, bytes) in &group.records {
                    if *seq < next {
                        continue;
                    }
                    if !take(&mut out, *seq, bytes)? {
                        break 'tail;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes every record with `seq <= seq`, in one durable commit, and returns how many were deleted.
    /// Call it only with a seq the aggregator acknowledged as committed. Acknowledging an already
    /// acknowledged seq deletes nothing and writes nothing.
    pub fn ack_through(&self, seq: u64) -> Result<u64, OutboxError> {
        let current = self.stats();
        if seq <= current.acked_through {
            return Ok(0);
        }
        let mut deleted = 0u64;
        self.write(false, |records, meta| {
            if seq > meta.last_seq {
                return Err(OutboxError::AckBeyondLastSeq {
                    acked: seq,
                    last_seq: meta.last_seq,
                });
            }
            if seq <= meta.acked_through {
                return Ok(());
            }
            let mut freed = 0u64;
            let extracted = records
                .extract_from_if(..=seq.to_be_bytes(), |_, _| true)
                .map_err(|e| self.db_err(e))?;
            for entry in extracted {
                let (_, value) = entry.map_err(|e| self.db_err(e))?;
                freed += value.value().len() as u64;
                deleted += 1;
            }
            let expected = seq - meta.acked_through;
            if deleted != expected {
                return Err(self.corrupt(
                    seq,
                    format!("ack deleted {deleted} records, expected {expected}"),
                ));
            }
            meta.bytes = meta.bytes.checked_sub(freed).ok_or_else(|| {
                self.corrupt(seq, "byte counter is smaller than the stored records")
            })?;
            meta.acked_through = seq;
            Ok(())
        })?;
        Ok(deleted)
    }

    /// Continues the sequence after the aggregator's committed head when this outbox is empty and behind
    /// it: the agent's file was lost or reset while the aggregator kept its records. Without this, new
    /// records would reuse seqs the aggregator already holds and be dropped as duplicates. Returns `true`
    /// if the head was adopted, `false` if the aggregator is not ahead (the normal case: call
    /// [`Outbox::ack_through`] with `committed_seq` instead).
    pub fn adopt_committed_head(
        &self,
        committed_seq: u64,
        committed_hash: [u8; 32],
    ) -> Result<bool, OutboxError> {
        if committed_seq <= self.stats().last_seq {
            return Ok(false);
        }
        let mut adopted = false;
        self.write(false, |_, meta| {
            if committed_seq <= meta.last_seq {
                return Ok(());
            }
            if meta.depth() > 0 {
                return Err(OutboxError::Diverged {
                    committed: committed_seq,
                    last_seq: meta.last_seq,
                    depth: meta.depth(),
                });
            }
            meta.last_seq = committed_seq;
            meta.acked_through = committed_seq;
            meta.last_hash = committed_hash;
            adopted = true;
            Ok(())
        })?;
        if adopted {
            tracing::warn!(
                committed_seq,
                "outbox was behind the aggregator; sequence continues after its committed head"
            );
        }
        Ok(adopted)
    }

    /// Counters as of the last committed write.
    pub fn stats(&self) -> OutboxStats {
        *self.inner.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records answered through the write-ahead log that redb does not hold yet: how far the applier is
    /// behind. Bounded by what the log's two files hold (the committer applies a file before reusing it).
    pub fn unapplied_records(&self) -> u64 {
        let pending = self.pending_lock();
        pending.groups.iter().map(|g| g.records.len() as u64).sum()
    }

    /// Scans every stored record: decodes it, checks its hash, that seqs are contiguous, that each
    /// `prev_hash` links to its predecessor, and that the last one matches meta. O(depth) reads.
    pub fn verify_chain(&self) -> Result<ChainReport, OutboxError> {
        self.apply_pending()?;
        let read = self.db().redb().begin_read().map_err(|e| self.db_err(e))?;
        let meta = match read.open_table(META) {
            Ok(t) => read_meta(&t).map_err(|e| self.meta_err(e))?,
            Err(redb::TableError::TableDoesNotExist(_)) => Meta::EMPTY,
            Err(e) => return Err(self.db_err(e)),
        };
        let mut report = ChainReport {
            records: 0,
            first_seq: None,
            last_seq: None,
        };
        let table = match read.open_table(RECORDS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) if meta.depth() == 0 => return Ok(report),
            Err(e) => return Err(self.db_err(e)),
        };
        let mut prev: Option<(u64, [u8; 32])> = None;
        for entry in table.iter().map_err(|e| self.db_err(e))? {
            let (key, value) = entry.map_err(|e| self.db_err(e))?;
            let seq = u64::from_be_bytes(key.value());
            let record = self.decode(seq, value.value())?;
            if !record.verify_hash() {
                return Err(self.corrupt(seq, "record hash does not match its content"));
            }
            let expected_prev = match prev {
                Some((p, h)) if p + 1 == seq => Some(h),
                Some((p, _)) => {
                    return Err(self.corrupt(seq, format!("gap after seq {p}")));
                }
                None if seq == 1 => Some(GENESIS_HASH),
                None => None,
            };
            if let Some(h) = expected_prev
                && record.prev_hash != h
            {
                return Err(self.corrupt(seq, "prev_hash does not link to the previous record"));
            }
            report.first_seq.get_or_insert(seq);
            report.last_seq = Some(seq);
            report.records += 1;
            prev = Some((seq, record.hash));
        }
        if report.records != meta.depth()
            || report
                .first_seq
                .is_some_and(|f| f != meta.acked_through + 1)
        {
            return Err(self.corrupt(
                meta.last_seq,
                format!(
                    "{} records stored, meta expects seqs {}..={}",
                    report.records,
                    meta.acked_through + 1,
                    meta.last_seq
                ),
            ));
        }
        if let Some((seq, hash)) = prev
            && (seq != meta.last_seq || hash != meta.last_hash)
        {
            return Err(self.corrupt(seq, "last record does not match last_seq/last_hash in meta"));
        }
        Ok(report)
    }

    /// Runs `f` inside one write transaction with the records table and a copy of meta, writes meta back
    /// and commits durably. A transaction that changed nothing is aborted (no fsync) unless `always_commit`
    /// (used by `open`, so the tables exist for readers). On error the transaction is aborted and the cached
    /// meta is left unchanged.
    fn write(
        &self,
        always_commit: bool,
        f: impl FnOnce(&mut RecordsTable<'_>, &mut Meta) -> Result<(), OutboxError>,
    ) -> Result<Meta, OutboxError> {
        self.write_txn(always_commit, |_, records, meta| f(records, meta))
    }

    /// [`Outbox::write`] that also hands `f` the transaction, for changes to other tables (the quarantine)
    /// that must commit together with the records and meta. A change to another table alone does not make
    /// the transaction commit: `f` must change meta too, or `always_commit` must be set.
    fn write_txn(
        &self,
        always_commit: bool,
        f: impl FnOnce(
            &redb::WriteTransaction,
            &mut RecordsTable<'_>,
            &mut Meta,
        ) -> Result<(), OutboxError>,
    ) -> Result<Meta, OutboxError> {
        self.write_txn_with(redb::Durability::Immediate, always_commit, f)
    }

    /// [`Outbox::write_txn`] at a chosen durability. [`redb::Durability::None`] is for writes whose loss in
    /// a crash is harmless because they are redone (an acknowledgement: the records come back and are sent
    /// again, and the aggregator answers them as duplicates); the next durable commit makes them durable too.
    /// The groups answered through the log that redb does not hold yet are applied first, in the same
    /// transaction, so `f` sees every record a producer was answered for.
    fn write_txn_with(
        &self,
        durability: redb::Durability,
        always_commit: bool,
        f: impl FnOnce(
            &redb::WriteTransaction,
            &mut RecordsTable<'_>,
            &mut Meta,
        ) -> Result<(), OutboxError>,
    ) -> Result<Meta, OutboxError> {
        let mut cached = self.lock();
        let _apply = self.apply_lock();
        let txn = self.begin_replayed(Some(&mut *cached))?;
        let groups = self.pending_snapshot();
        let durability = self.durability_for(&groups, durability);
        let mut at = None;
        let meta = self.run_txn(
            txn,
            durability,
            always_commit || !groups.is_empty(),
            |txn, records, meta, position| {
                self.apply_groups(txn, records, meta, position, &groups)?;
                f(txn, records, meta)?;
                at = *position;
                Ok(())
            },
        )?;
        self.applied(groups.len(), durability, at);
        self.publish(&mut cached, meta);
        Ok(meta)
    }

    /// Runs `f` in `txn` with the records table, meta and the stored log position ([`LOG_POSITION_KEY`]) as
    /// stored, writes back what `f` changed and commits at `durability` (or aborts, when nothing changed and
    /// not `always_commit`). The caller holds the `meta` lock and publishes the returned meta.
    fn run_txn(
        &self,
        mut txn: redb::WriteTransaction,
        durability: redb::Durability,
        always_commit: bool,
        f: impl FnOnce(
            &redb::WriteTransaction,
            &mut RecordsTable<'_>,
            &mut Meta,
            &mut Option<wal::Position>,
        ) -> Result<(), OutboxError>,
    ) -> Result<Meta, OutboxError> {
        self.set_durability(&mut txn, durability)?;
        let result = (|| {
            let mut records = txn.open_table(RECORDS).map_err(|e| self.db_err(e))?;
            let mut meta_table = txn.open_table(META).map_err(|e| self.db_err(e))?;
            let before = read_meta(&meta_table).map_err(|e| self.meta_err(e))?;
            let stored = self.read_position(&meta_table)?;
            let mut meta = before;
            let mut position = stored;
            f(&txn, &mut records, &mut meta, &mut position)?;
            if meta != before {
                self.write_meta(&mut meta_table, &meta)?;
            }
            if position != stored
                && let Some(position) = position
            {
                self.write_position(&mut meta_table, position)?;
            }
            Ok::<_, OutboxError>((meta, meta != before || position != stored))
        })();
        match result {
            Ok((meta, changed)) => {
                if changed || always_commit {
                    txn.commit().map_err(|e| self.db_err(e))?;
                } else {
                    txn.abort().map_err(|e| self.db_err(e))?;
                }
                Ok(meta)
            }
            Err(e) => {
                if let Err(abort) = txn.abort() {
                    tracing::warn!(error = %abort, "outbox transaction abort failed");
                }
                Err(e)
            }
        }
    }

    fn set_durability(
        &self,
        txn: &mut redb::WriteTransaction,
        durability: redb::Durability,
    ) -> Result<(), OutboxError> {
        txn.set_durability(durability)
            .map_err(|e| self.corrupt(0, format!("cannot set the commit durability: {e}")))
    }

    /// Publishes `meta` as the cached meta and the stats snapshot (under the `meta` lock).
    fn publish(&self, cached: &mut Meta, meta: Meta) {
        *cached = meta;
        *self.inner.stats.lock().unwrap_or_else(|p| p.into_inner()) = meta.stats();
    }

    fn write_meta(
        &self,
        table: &mut redb::Table<'_, &'static str, &'static [u8]>,
        meta: &Meta,
    ) -> Result<(), OutboxError> {
        let encoded = postcard::to_allocvec(&MetaOnDisk::V1(*meta))
            .map_err(|e| self.corrupt(meta.last_seq, format!("cannot encode meta: {e}")))?;
        table
            .insert(META_KEY, encoded.as_slice())
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    fn read_position<T: ReadableTable<&'static str, &'static [u8]>>(
        &self,
        table: &T,
    ) -> Result<Option<wal::Position>, OutboxError> {
        let Some(value) = table.get(LOG_POSITION_KEY).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        postcard::from_bytes(value.value())
            .map(Some)
            .map_err(|e| self.corrupt(0, format!("outbox log position: {e}")))
    }

    fn write_position(
        &self,
        table: &mut redb::Table<'_, &'static str, &'static [u8]>,
        position: wal::Position,
    ) -> Result<(), OutboxError> {
        let encoded = postcard::to_allocvec(&position)
            .map_err(|e| self.corrupt(0, format!("cannot encode the log position: {e}")))?;
        table
            .insert(LOG_POSITION_KEY, encoded.as_slice())
            .map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Creates (or opens) the pair of write-ahead log files [`Outbox::append_logged`] commits through,
    /// `capacity` bytes each. The committer calls it once, before its first group; until then (or if it
    /// fails) groups commit durably in redb.
    pub(crate) fn enable_log(&self, capacity: u64) -> Result<(), OutboxError> {
        let _cached = self.lock();
        let _apply = self.apply_lock();
        let mut slot = self.log_lock();
        let stored = {
            let read = self.db().redb().begin_read().map_err(|e| self.db_err(e))?;
            match read.open_table(META) {
                Ok(table) => self.read_position(&table)?,
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(self.db_err(e)),
            }
        };
        let floor = stored.map_or(0, |p| p.generation);
        let open = |current: Option<wal::Wal>, path: std::path::PathBuf| {
            let ready = match current {
                Some(wal) if wal.capacity() >= capacity => Ok(wal),
                // A log open since the replay holds no frame redb's durable state lacks (the replay applied
                // them and stored a position past them), so creating it again at the larger size loses nothing.
                _ => wal::Wal::open_or_create(&path, capacity),
            };
            let mut wal = ready.map_err(|e| self.log_err(&path, e))?;
            // A log created afresh starts at generation 1; it must continue above the stored position, or a
            // replay would take its frames for ones redb already holds.
            wal.adopt_floor(floor);
            Ok::<_, OutboxError>(wal)
        };
        let active = open(slot.wal.take(), wal::path_for(self.db().path()))?;
        slot.wal = Some(active);
        let spare = open(slot.spare.take(), wal::spare_path_for(self.db().path()))?;
        slot.spare = Some(spare);
        let mut pending = self.pending_lock();
        pending.durable = pending.durable.max(stored);
        Ok(())
    }

    /// Appends `recs` as one group made durable by one synced frame of the write-ahead log ([`wal`]): the
    /// records are sealed against the outbox's counters, the frame is written and synced, and the group is
    /// answered. redb takes the group later, on the applier's thread ([`Outbox::apply_pending`]) or in the
    /// next write that needs it, so no redb commit (and no checkpoint) lies on a producer's path.
    ///
    /// `counters` are the rate-limit counters the group changed, logged with it; `None` when they cannot be
    /// logged (a rewrite of the table). The group then commits durably in redb, with `durable` writing the
    /// counters in that transaction, as it does when the log is not enabled, failed, or cannot take the
    /// frame; that commit stores a position past every frame of both files, which start over.
    pub(crate) fn append_logged(
        &self,
        recs: Vec<NewRecord>,
        counters: Option<Vec<(String, i64)>>,
        durable: impl FnOnce(&redb::WriteTransaction) -> Result<(), OutboxError>,
    ) -> Result<(Vec<AppendOutcome>, GroupDurability), OutboxError> {
        recs.iter().try_for_each(check_content)?;
        if recs.is_empty() {
            return Ok((Vec::new(), GroupDurability::Database));
        }
        let mut cached = self.lock();
        let Some(counters) = counters else {
            return self.append_durably(&mut cached, recs, durable);
        };
        {
            let slot = self.log_lock();
            let usable = slot.wal.as_ref().is_some_and(|w| !w.is_failed());
            // A re-open took redb back to its last durable commit: the durable path replays the log first.
            // While the database's storage is failing, appends are refused as before (the durable path
            // fails): the log is not grown with groups redb could not take.
            if !usable
                || slot.replayed_at_reopen != self.db().reopens()
                || self.db().failure().is_some()
            {
                drop(slot);
                return self.append_durably(&mut cached, recs, durable);
            }
        }
        let mut meta = *cached;
        let mut outcomes = Vec::with_capacity(recs.len());
        let mut sealed = Vec::with_capacity(recs.len());
        let mut frame = wal::Frame::default();
        for rec in recs {
            match self.seal_next(&mut meta, rec)? {
                Sealed::Shed => outcomes.push(AppendOutcome::Shed),
                Sealed::Appended { seq, hash, value } => {
                    outcomes.push(AppendOutcome::Appended { seq });
                    sealed.push((seq, hash));
                    frame.records.push(value);
                }
            }
        }
        frame.shed_total = meta.shed_total;
        frame.counters = counters;
        let Some(position) = self.log_frame(&frame)? else {
            // The frame cannot be logged: the same records, committed durably in redb instead.
            let recs = frame
                .records
                .iter()
                .zip(&sealed)
                .map(|(bytes, (seq, _))| self.decode(*seq, bytes).map(unseal))
                .collect::<Result<Vec<_>, _>>()?;
            return self.append_durably(&mut cached, recs, durable);
        };
        let group = LoggedGroup {
            records: sealed
                .into_iter()
                .zip(frame.records)
                .map(|((seq, hash), bytes)| (seq, hash, bytes))
                .collect(),
            counters: frame.counters,
            shed_total: frame.shed_total,
            position,
        };
        let mut pending = self.pending_lock();
        pending.groups.push_back(Arc::new(group));
        // Wake the applier only when it has something new to do: the first group after it emptied the queue,
        // a full gathering, or a sealed file to make durable (`run_applier` lets the rest gather).
        let wake = pending.groups.len() == 1
            || pending.groups.len() >= APPLY_GATHER_GROUPS
            || pending.seal.is_some();
        drop(pending);
        if wake {
            self.inner.pending_cv.notify_all();
        }
        self.publish(&mut cached, meta);
        Ok((outcomes, GroupDurability::Log))
    }

    /// Writes and syncs `frame` to the log (the caller holds the `meta` lock, so frames go in seal order):
    /// `Some(position)` once it is durable, `None` when the log cannot take it (failed, or the frame is larger
    /// than an empty file). A file that is full or due for a checkpoint is left for the other one, first
    /// making redb hold every frame of that other one if it does not yet.
    fn log_frame(&self, frame: &wal::Frame) -> Result<Option<wal::Position>, OutboxError> {
        let mut slot = self.log_lock();
        loop {
            let (sealed_at, generation) = {
                let Some(wal) = slot.wal.as_mut().filter(|w| !w.is_failed()) else {
                    return Ok(None);
                };
                if let Some((payload, position)) = wal.plan(frame) {
                    return match wal.append_planned(&payload) {
                        Ok(()) => Ok(Some(position)),
                        Err(error) => {
                            tracing::warn!(
                                %error,
                                log = %wal.path().display(),
                                "outbox log write failed; committing durably in the database instead"
                            );
                            Ok(None)
                        }
                    };
                }
                if wal.frame_count() == 0 {
                    return Ok(None);
                }
                (wal.last_position(), wal.generation())
            };
            let Some(spare) = slot.spare.as_ref() else {
                return Ok(None);
            };
            let durable = self.pending_lock().durable;
            if spare.frame_count() > 0 && durable < Some(spare.last_position()) {
                // redb's durable state lacks frames of the other file (the applier is behind): make it hold
                // everything logged so far. Never with `log` held (the applier takes `apply` before `log`).
                drop(slot);
                self.apply_pending_with(redb::Durability::Immediate)?;
                slot = self.log_lock();
                continue;
            }
            let generation = generation.max(spare.generation()) + 1;
            let Some(mut spare) = slot.spare.take() else {
                return Ok(None);
            };
            if let Err(error) = spare.reset_to(generation) {
                tracing::warn!(
                    %error,
                    log = %spare.path().display(),
                    "outbox log could not be started over; committing durably in the database instead"
                );
                slot.spare = Some(spare);
                return Ok(None);
            }
            slot.spare = slot.wal.replace(spare);
            let mut pending = self.pending_lock();
            pending.seal = pending.seal.max(Some(sealed_at));
        }
    }

    /// Appends `recs` in one durable redb commit, with the groups still pending before them and `durable`'s
    /// changes, storing a position past every frame of the log, which then starts over. The caller holds the
    /// `meta` lock.
    fn append_durably(
        &self,
        cached: &mut Meta,
        recs: Vec<NewRecord>,
        durable: impl FnOnce(&redb::WriteTransaction) -> Result<(), OutboxError>,
    ) -> Result<(Vec<AppendOutcome>, GroupDurability), OutboxError> {
        let _apply = self.apply_lock();
        let txn = self.begin_replayed(Some(&mut *cached))?;
        let groups = self.pending_snapshot();
        let mut slot = self.log_lock();
        let superseded = slot.superseded();
        let mut outcomes = Vec::with_capacity(recs.len());
        let mut at = None;
        let meta = self.run_txn(
            txn,
            redb::Durability::Immediate,
            true,
            |txn, records, meta, position| {
                self.apply_groups(txn, records, meta, position, &groups)?;
                for rec in recs {
                    outcomes.push(self.append_one(records, meta, rec)?);
                }
                durable(txn)?;
                if superseded.is_some() {
                    *position = superseded;
                }
                at = *position;
                Ok(())
            },
        )?;
        self.applied(groups.len(), redb::Durability::Immediate, at);
        self.reset_log(&mut slot);
        drop(slot);
        self.publish(cached, meta);
        Ok((outcomes, GroupDurability::Database))
    }

    /// Applies the groups still pending to redb in one transaction, durable when `durability` says so or
    /// when the groups reach the last frame of a file the committer moved off (so that file may start over);
    /// a durable call commits even with nothing pending, making earlier commits without fsync durable.
    pub(crate) fn apply_pending_with(
        &self,
        durability: redb::Durability,
    ) -> Result<(), OutboxError> {
        let _apply = self.apply_lock();
        let txn = self.begin_replayed(None)?;
        let groups = self.pending_snapshot();
        let must = matches!(durability, redb::Durability::Immediate);
        if groups.is_empty() && !must {
            return txn.abort().map_err(|e| self.db_err(e));
        }
        let durability = self.durability_for(&groups, durability);
        let mut at = None;
        self.run_txn(txn, durability, true, |txn, records, meta, position| {
            self.apply_groups(txn, records, meta, position, &groups)?;
            at = *position;
            Ok(())
        })?;
        self.applied(groups.len(), durability, at);
        Ok(())
    }

    /// [`Outbox::apply_pending_with`] without fsync unless a file of the log must start over: what readers
    /// and the applier's thread call.
    pub(crate) fn apply_pending(&self) -> Result<(), OutboxError> {
        self.apply_pending_with(redb::Durability::None)
    }

    /// The applier's thread: applies the pending groups as they come until [`Outbox::stop_applier`]. A failed
    /// apply is retried after a pause (the groups stay in the log and in memory meanwhile, and every write
    /// that needs them applies them itself).
    pub(crate) fn run_applier(&self) {
        loop {
            {
                let mut pending = self.pending_lock();
                while pending.groups.is_empty() && !pending.stop {
                    pending = self
                        .inner
                        .pending_cv
                        .wait(pending)
                        .unwrap_or_else(|p| p.into_inner());
                }
                if pending.stop {
                    return;
                }
                // Let more groups gather (each one logged and answered already) so one transaction applies
                // many: under load the committer logs a group every few hundred microseconds, and applying
                // each alone cost a wake-up and a redb commit per group.
                let _ = self
                    .inner
                    .pending_cv
                    .wait_timeout_while(pending, APPLY_GATHER, |p| {
                        !p.stop && p.seal.is_none() && p.groups.len() < APPLY_GATHER_GROUPS
                    });
            }
            if let Err(error) = self.apply_pending() {
                tracing::warn!(%error, "outbox groups not applied to the database yet; retrying");
                let pending = self.pending_lock();
                let _ = self.inner.pending_cv.wait_timeout_while(
                    pending,
                    std::time::Duration::from_secs(1),
                    |p| !p.stop,
                );
            }
        }
    }

    /// Makes [`Outbox::run_applier`] return (the committer's stop, after its last checkpoint).
    pub(crate) fn stop_applier(&self) {
        self.pending_lock().stop = true;
        self.inner.pending_cv.notify_all();
    }

    /// Lets a new [`Outbox::run_applier`] run after a stop.
    pub(crate) fn restart_applier(&self) {
        self.pending_lock().stop = false;
    }

    /// The commit durability for applying `groups`: durable when they reach a sealed file's last frame.
    fn durability_for(
        &self,
        groups: &[Arc<LoggedGroup>],
        asked: redb::Durability,
    ) -> redb::Durability {
        let seal = self.pending_lock().seal;
        let reaches = match (seal, groups.last()) {
            (Some(seal), Some(last)) => last.position >= seal,
            _ => false,
        };
        if reaches {
            redb::Durability::Immediate
        } else {
            asked
        }
    }

    /// Writes `groups` (in order) into a transaction: each record after redb's `last_seq`, the shed count,
    /// the counters, and the group's position. A group at or before the stored position is already held (a
    /// replay applied it) and is skipped whole, counters included, so a counter never goes back.
    fn apply_groups(
        &self,
        txn: &redb::WriteTransaction,
        records: &mut RecordsTable<'_>,
        meta: &mut Meta,
        position: &mut Option<wal::Position>,
        groups: &[Arc<LoggedGroup>],
    ) -> Result<(), OutboxError> {
        for group in groups {
            if position.is_some_and(|p| p >= group.position) {
                continue;
            }
            for (seq, hash, bytes) in &group.records {
                if *seq != meta.last_seq + 1 {
                    return Err(self.corrupt(
                        *seq,
                        format!(
                            "a group answered through the log does not continue the stored records (last seq {})",
                            meta.last_seq
                        ),
                    ));
                }
                records
                    .insert(seq.to_be_bytes(), bytes.as_slice())
                    .map_err(|e| self.db_err(e))?;
                meta.last_seq = *seq;
                meta.last_hash = *hash;
                meta.bytes = meta.bytes.saturating_add(bytes.len() as u64);
            }
            meta.shed_total = meta.shed_total.max(group.shed_total);
            if !group.counters.is_empty() {
                crate::gate::ratelimit_counters::write_logged(self.db(), txn, &group.counters)?;
            }
            *position = Some(group.position);
        }
        Ok(())
    }

    /// After a commit that applied the first `count` pending groups: drops them, and records how far the
    /// durable state reaches when the commit was durable (`at`: the position it stored).
    fn applied(&self, count: usize, durability: redb::Durability, at: Option<wal::Position>) {
        let mut pending = self.pending_lock();
        let count = count.min(pending.groups.len());
        pending.groups.drain(..count);
        if matches!(durability, redb::Durability::Immediate) && at.is_some() {
            pending.durable = pending.durable.max(at);
            if pending.seal.is_some() && pending.seal <= pending.durable {
                pending.seal = None;
            }
        }
        drop(pending);
        self.inner.pending_cv.notify_all();
    }

    fn pending_snapshot(&self) -> Vec<Arc<LoggedGroup>> {
        self.pending_lock().groups.iter().cloned().collect()
    }

    /// The hash of record `seq` if it is in a group redb does not hold yet.
    pub(crate) fn pending_hash(&self, seq: u64) -> Option<[u8; 32]> {
        let pending = self.pending_lock();
        pending
            .groups
            .iter()
            .flat_map(|g| g.records.iter())
            .find(|(s, _, _)| *s == seq)
            .map(|(_, hash, _)| *hash)
    }

    fn pending_lock(&self) -> MutexGuard<'_, Pending> {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply_lock(&self) -> MutexGuard<'_, ()> {
        self.inner.apply.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes everything answered so far durable in redb and starts the log over (the committer's clean
    /// stop). Nothing to do when the log is empty.
    pub(crate) fn checkpoint_log(&self) -> Result<(), OutboxError> {
        let mut cached = self.lock();
        let logged = self
            .log_lock()
            .wal
            .as_ref()
            .is_some_and(wal::Wal::needs_reset);
        if !logged && self.pending_lock().groups.is_empty() {
            return Ok(());
        }
        // A durable commit of no records: it applies the pending groups and starts the log over.
        self.append_durably(&mut cached, Vec::new(), |_| Ok(()))
            .map(drop)
    }

    /// Starts the log over after a durable commit stored a position past every frame of both files: the file
    /// groups go to takes the next generation (the other one's frames all lie before the stored position, so
    /// it is free). A failure leaves it failed (the next group commits durably and tries again).
    fn reset_log(&self, slot: &mut LogSlot) {
        let Some(generation) = slot.superseded().map(|p| p.generation) else {
            return;
        };
        if let Some(wal) = slot.wal.as_mut()
            && (wal.needs_reset() || wal.generation() < generation)
            && let Err(error) = wal.reset_to(generation)
        {
            tracing::warn!(%error, log = %wal.path().display(), "outbox log could not be reset; groups commit durably in the database until it can");
        }
    }

    /// Begins a write transaction, first replaying the log if the database was re-opened since the last
    /// replay ([`LogSlot::replayed_at_reopen`]). The count is read after the transaction began: a re-open
    /// cannot complete while a write transaction is alive, and the count moves before the new database is
    /// handed out, so a transaction on a re-opened database always sees the new count. Until a replay
    /// succeeds, every write fails. The caller holds `apply` (and `meta` when it passes `cached`).
    fn begin_replayed(
        &self,
        mut cached: Option<&mut Meta>,
    ) -> Result<redb::WriteTransaction, OutboxError> {
        loop {
            let txn = self.db().redb().begin_write().map_err(|e| self.db_err(e))?;
            if self.log_lock().replayed_at_reopen == self.db().reopens() {
                return Ok(txn);
            }
            txn.abort().map_err(|e| self.db_err(e))?;
            let replayed = self.replay_log(cached.as_deref_mut())?;
            if replayed > 0 {
                tracing::warn!(
                    replayed,
                    "the agent database was re-opened after a storage failure; outbox records committed \
                     since its last durable commit were restored from the outbox log"
                );
            }
        }
    }

    /// Re-applies the frames redb's durable state lacks (those after the stored position, in both files,
    /// oldest generation first) in one durable commit, stores a position past all of them, starts the log
    /// over, and forgets the pending groups (the log held every one of them). Publishes the meta as stored
    /// when given `cached` (at open, and by writers holding the `meta` lock; the committer's counters are
    /// otherwise ahead of redb and stay so). Returns how many records it restored. The re-open count is
    /// marked replayed only once this succeeded.
    fn replay_log(&self, cached: Option<&mut Meta>) -> Result<u64, OutboxError> {
        let reopens = self.db().reopens();
        let mut slot = self.log_lock();
        let paths = [
            wal::path_for(self.db().path()),
            wal::spare_path_for(self.db().path()),
        ];
        if slot.wal.is_none() {
            slot.wal =
                wal::Wal::open_existing(&paths[0]).map_err(|e| self.log_err(&paths[0], e))?;
        }
        if slot.spare.is_none() {
            slot.spare =
                wal::Wal::open_existing(&paths[1]).map_err(|e| self.log_err(&paths[1], e))?;
        }
        // Both files' frames, oldest generation first.
        let logs = &mut *slot;
        let mut files = Vec::new();
        for wal in [logs.wal.as_mut(), logs.spare.as_mut()]
            .into_iter()
            .flatten()
        {
            let path = wal.path().to_path_buf();
            let frames = wal.frames().map_err(|e| self.log_err(&path, e))?;
            files.push((wal.generation(), frames, path));
        }
        files.sort_by_key(|(generation, _, _)| *generation);
        let mut restored = 0u64;
        let mut stored_at = None;
        let txn = self.db().redb().begin_write().map_err(|e| self.db_err(e));
        let applied = txn.and_then(|txn| {
            self.run_txn(
                txn,
                redb::Durability::Immediate,
                false,
                |txn, records, meta, stored| {
                    let from = stored.unwrap_or(wal::Position {
                        generation: 0,
                        frame: 0,
                    });
                    let pending: Vec<_> = files
                        .iter()
                        .flat_map(|(generation, frames, path)| {
                            let skip = match generation.cmp(&from.generation) {
                                std::cmp::Ordering::Less => frames.len(),
                                std::cmp::Ordering::Equal => {
                                    usize::try_from(from.frame).unwrap_or(usize::MAX)
                                }
                                std::cmp::Ordering::Greater => 0,
                            };
                            frames.iter().skip(skip).map(move |f| (f, path))
                        })
                        .collect();
                    for (i, (frame, path)) in pending.iter().enumerate() {
                        let last = i + 1 == pending.len();
                        if !self.replay_frame(
                            txn,
                            records,
                            meta,
                            frame,
                            last,
                            path,
                            &mut restored,
                        )? {
                            break;
                        }
                    }
                    for wal in [logs.wal.as_mut(), logs.spare.as_mut()]
                        .into_iter()
                        .flatten()
                    {
                        wal.adopt_floor(from.generation);
                    }
                    let logged = logs.wal.as_ref().is_some_and(wal::Wal::needs_reset);
                    if !pending.is_empty() || logged {
                        *stored = logs.superseded();
                    }
                    stored_at = *stored;
                    Ok(())
                },
            )
        });
        let meta = applied?;
        if let Some(cached) = cached {
            self.publish(cached, meta);
        }
        self.reset_log(&mut slot);
        slot.replayed_at_reopen = reopens;
        drop(slot);
        let mut pending = self.pending_lock();
        pending.groups.clear();
        pending.durable = pending.durable.max(stored_at);
        pending.seal = None;
        drop(pending);
        self.inner.pending_cv.notify_all();
        Ok(restored)
    }

    /// Applies one frame's records and counters; `Ok(false)` when the frame, the last one pending, does not
    /// continue the stored records: its group's commit failed after the frame was synced (its producers were
    /// told so) and another write took its seqs, so it is superseded. Anywhere else that is corruption.
    #[allow(clippy::too_many_arguments)]
    fn replay_frame(
        &self,
        txn: &redb::WriteTransaction,
        records: &mut RecordsTable<'_>,
        meta: &mut Meta,
        frame: &wal::Frame,
        last: bool,
        path: &std::path::Path,
        restored: &mut u64,
    ) -> Result<bool, OutboxError> {
        let mut decoded = Vec::with_capacity(frame.records.len());
        for bytes in &frame.records {
            let record: Record = postcard::from_bytes(bytes).map_err(|e| {
                self.corrupt(
                    meta.last_seq,
                    format!(
                        "a record in the outbox log {} does not decode: {e}",
                        path.display()
                    ),
                )
            })?;
            decoded.push(record);
        }
        let mut link = (meta.last_seq, meta.last_hash);
        for record in decoded.iter().filter(|r| r.seq > meta.last_seq) {
            if record.seq != link.0 + 1 || record.prev_hash != link.1 || !record.verify_hash() {
                if last {
                    tracing::warn!(
                        seq = record.seq,
                        log = %path.display(),
                        "the last frame of the outbox log does not continue the stored records: its group's \
                         commit had failed and was refused to its producers; it is left out"
                    );
                    return Ok(false);
                }
                return Err(self.corrupt(
                    record.seq,
                    format!(
                        "the outbox log {} holds seq {} that does not continue the stored records (last seq {})",
                        path.display(),
                        record.seq,
                        link.0
                    ),
                ));
            }
            link = (record.seq, record.hash);
        }
        for (record, bytes) in decoded.iter().zip(&frame.records) {
            if record.seq <= meta.last_seq {
                continue;
            }
            records
                .insert(record.seq.to_be_bytes(), bytes.as_slice())
                .map_err(|e| self.db_err(e))?;
            meta.last_seq = record.seq;
            meta.last_hash = record.hash;
            meta.bytes = meta.bytes.saturating_add(bytes.len() as u64);
            *restored += 1;
        }
        meta.shed_total = meta.shed_total.max(frame.shed_total);
        if !frame.counters.is_empty() {
            crate::gate::ratelimit_counters::write_logged(self.db(), txn, &frame.counters)?;
        }
        Ok(true)
    }

    fn log_lock(&self) -> MutexGuard<'_, LogSlot> {
        self.inner.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log_err(&self, path: &std::path::Path, e: std::io::Error) -> OutboxError {
        OutboxError::Corrupt {
            path: path.display().to_string(),
            seq: 0,
            detail: format!(
                "the outbox log cannot be read or written ({e}); records acknowledged since the last durable \
                 commit live in it: keep it, free the disk or fix its permissions, and start the agent again"
            ),
        }
    }

    /// Re-seals waiting records that carry a valid protocol version 1 (SHA-256) hash with the version 2
    /// hash, relinking each `prev_hash` to its predecessor's new hash (module docs, "Upgrade"). Returns how
    /// many records were re-sealed; a record valid under neither hash is left for the checks to report.
    fn reseal_v1_records(
        &self,
        records: &mut RecordsTable<'_>,
        meta: &mut Meta,
    ) -> Result<u64, OutboxError> {
        if meta.depth() == 0 {
            return Ok(0);
        }
        let Some(newest) = records
            .get(meta.last_seq.to_be_bytes())
            .map_err(|e| self.db_err(e))?
            .map(|v| v.value().to_vec())
        else {
            return Ok(0);
        };
        let newest = self.decode(meta.last_seq, &newest)?;
        if newest.verify_hash() || newest.compute_hash_v1() != newest.hash {
            return Ok(0);
        }
        let mut resealed = 0u64;
        let mut relinked: Option<[u8; 32]> = None;
        for seq in meta.acked_through + 1..=meta.last_seq {
            let Some(bytes) = records
                .get(seq.to_be_bytes())
                .map_err(|e| self.db_err(e))?
                .map(|v| v.value().to_vec())
            else {
                return Err(self.corrupt(seq, "record missing below last_seq"));
            };
            let mut record = self.decode(seq, &bytes)?;
            let prev = relinked.unwrap_or(record.prev_hash);
            if record.verify_hash() && record.prev_hash == prev {
                relinked = Some(record.hash);
                continue;
            }
            if record.compute_hash_v1() != record.hash {
                return Err(self.corrupt(
                    seq,
                    "record hash matches neither protocol version 2 nor version 1",
                ));
            }
            record.prev_hash = prev;
            record.hash = record.compute_hash();
            let value = postcard::to_allocvec(&record)
                .map_err(|e| self.corrupt(seq, format!("cannot encode record: {e}")))?;
            meta.bytes = meta
                .bytes
                .saturating_sub(bytes.len() as u64)
                .saturating_add(value.len() as u64);
            records
                .insert(seq.to_be_bytes(), value.as_slice())
                .map_err(|e| self.db_err(e))?;
            if seq == meta.last_seq {
                meta.last_hash = record.hash;
            }
            relinked = Some(record.hash);
            resealed += 1;
        }
        Ok(resealed)
    }

    fn check_against_records(
        &self,
        records: &RecordsTable<'_>,
        meta: &Meta,
    ) -> Result<(), OutboxError> {
        let len = records.len().map_err(|e| self.db_err(e))?;
        if meta.acked_through > meta.last_seq || len != meta.depth() {
            return Err(self.corrupt(
                meta.last_seq,
                format!(
                    "{len} records stored, meta expects seqs {}..={}",
                    meta.acked_through + 1,
                    meta.last_seq
                ),
            ));
        }
        let first = records.first().map_err(|e| self.db_err(e))?;
        if let Some((key, _)) = first {
            let seq = u64::from_be_bytes(key.value());
            if seq != meta.acked_through + 1 {
                return Err(self.corrupt(
                    seq,
                    format!("oldest record should be {}", meta.acked_through + 1),
                ));
            }
        }
        let last = records.last().map_err(|e| self.db_err(e))?;
        if let Some((key, value)) = last {
            let seq = u64::from_be_bytes(key.value());
            let record = self.decode(seq, value.value())?;
            if seq != meta.last_seq || record.hash != meta.last_hash || !record.verify_hash() {
                return Err(self.corrupt(
                    seq,
                    "newest record does not match last_seq/last_hash in meta",
                ));
            }
        }
        Ok(())
    }

    fn decode(&self, seq: u64, bytes: &[u8]) -> Result<Record, OutboxError> {
        let record: Record = postcard::from_bytes(bytes)
            .map_err(|e| self.corrupt(seq, format!("record does not decode: {e}")))?;
        if record.seq != seq {
            return Err(self.corrupt(
                seq,
                format!("stored under seq {seq} but says {}", record.seq),
            ));
        }
        Ok(record)
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        // The cached meta is replaced only after a successful commit, so it is valid even if a writer
        // panicked while holding the lock.
        self.inner.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The database this outbox lives in (for tables written in the same commit as records).
    pub(crate) fn db(&self) -> &AgentDb {
        &self.inner.db
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> OutboxError {
        OutboxError::Db(self.db().err(e))
    }

    fn meta_err(&self, e: MetaError) -> OutboxError {
        match e {
            MetaError::Db(e) => self.db_err(e),
            MetaError::Decode(detail) => self.corrupt(0, format!("outbox meta: {detail}")),
        }
    }

    fn path_string(&self) -> String {
        self.db().path().display().to_string()
    }

    fn corrupt(&self, seq: u64, detail: impl Into<String>) -> OutboxError {
        OutboxError::Corrupt {
            path: self.path_string(),
            seq,
            detail: detail.into(),
        }
    }
}

enum MetaError {
    Db(redb::StorageError),
    Decode(String),
}

fn read_meta<T: ReadableTable<&'static str, &'static [u8]>>(table: &T) -> Result<Meta, MetaError> {
    let Some(value) = table.get(META_KEY).map_err(MetaError::Db)? else {
        return Ok(Meta::EMPTY);
    };
    match postcard::from_bytes::<MetaOnDisk>(value.value()) {
        Ok(MetaOnDisk::V1(meta)) => Ok(meta),
        Err(e) => Err(MetaError::Decode(e.to_string())),
    }
}

/// The record a producer handed in, back from its sealed form (to append it again another way).
fn unseal(record: Record) -> NewRecord {
    NewRecord {
        class: record.class,
        kind: record.kind,
        created_unix_ms: record.created_unix_ms,
        bundle: record.bundle,
        payload: record.payload,
    }
}

/// The content limits of [`gait_wire::limits`] every record is checked against before it gets a seq.
fn check_content(rec: &NewRecord) -> Result<(), OutboxError> {
    gait_wire::record::check_content(0, &rec.kind, rec.payload.len())
        .map_err(|source| invalid(&rec.kind, source))
}

/// The error for a record that breaks [`gait_wire::Record::validate`], naming its (cut) kind.
fn invalid(kind: &str, source: RecordError) -> OutboxError {
    let mut end = kind.len().min(MAX_KIND_BYTES);
    while !kind.is_char_boundary(end) {
        end -= 1;
    }
    OutboxError::InvalidRecord {
        kind: kind[..end].to_owned(),
        source,
    }
}
