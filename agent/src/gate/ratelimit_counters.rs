//! The daemon's rate-limit counters: Gait's counting ([`RateLimitState`], contract §3.4) in memory under one
//! mutex, bounded by [`KeyBound`] (`gate.rate_limit.max_keys`), and durable in the agent database (redb table
//! `gate_rate_limits`: counter key → count). `gait-agent gait gate eval` keeps Gait's JSON file
//! ([`super::ratelimit_state`]); only the daemon counts here.
//!
//! # Durability rule
//! A decision never pays an fsync of its own for its counters. Every counter a decision changes is marked
//! dirty in memory under the same lock as the change, and the outbox committer takes the dirty counters
//! ([`DaemonCounters::take_changes`]) after it has gathered the group's records and makes them durable with
//! that group: in its frame of the outbox's write-ahead log (`outbox/wal.rs`), from which the applier writes
//! them to redb and a replay writes them again, or in its durable redb transaction when the group cannot be
//! logged (a rewrite of the table, keys removed, cannot be replayed from values). A decision's record is
//! queued only after it counted, so its count is durable in the same fsync as its record, before the
//! decision is answered. A crash can therefore lose only counts of decisions that were never answered
//! (their callers got no verdict and fail closed); a window that was enforced is never reset by a restart.
//! A commit that fails gives its counters back as dirty ([`DaemonCounters::restore`]); a clean stop writes
//! whatever is still dirty ([`DaemonCounters::flush`]).
//!
//! Buckets that are over are pruned at most once per second (and by the bound before it evicts anything).
//! A counter removed from memory other than by being counted (a pruned bucket, Gait dropping a window's older
//! buckets when it counts a new one, an eviction) makes the next write rewrite the table from memory.
//!
//! # Migration
//! A daemon data directory from before this table kept its counters in Gait's file
//! (`<data_dir>/gate_rate_limits.json`). [`DaemonCounters::open`] imports it once: merged into the table by
//! the larger count and committed, then the file is renamed `gate_rate_limits.json.imported`. A crash between
//! the commit and the rename imports the same file again at the next start, which changes nothing. An
//! unreadable file is set aside as before ([`ratelimit_state::set_aside`]) and counting starts afresh.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use gait_policy::gate::{RateLimitError, RateLimitState};
use gait_policy::gotime::GoTime;
use gait_policy::policy::RateLimitPolicy;
use redb::{ReadableTable as _, TableDefinition};

use super::ratelimit_bound::{Counted, KeyBound};
use super::ratelimit_state::{self, LOCK_TIMEOUT, RateLimitStore, StateError};
use crate::db::{AgentDb, DbError};

/// The counters' table in the agent database: counter key (`window|scope|bucket|scope_key`) → count.
const COUNTERS: TableDefinition<'static, &str, i64> = TableDefinition::new("gate_rate_limits");
/// Suffix of the legacy state file once imported.
pub const IMPORTED_SUFFIX: &str = ".imported";
/// Seconds between two prunes of expired buckets.
const PRUNE_EVERY_SECS: i64 = 1;

/// The counters could not be loaded, or the legacy state file not imported.
#[derive(Debug, thiserror::Error)]
pub enum CountersError {
    /// The agent database failed.
    #[error("rate-limit counters: {0}")]
    Db(#[from] DbError),
    /// The legacy state file exists but could not be locked or read (an unreadable one is set aside instead).
    #[error(
        "rate-limit state file {}: {source}; stop the process holding it (a `gait` CLI pointed at the agent's \
         data directory) and start the agent again",
        path.display()
    )]
    Import {
        /// The legacy state file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: StateError,
    },
    /// The imported file could not be renamed (it would be imported again, harmlessly, at the next start).
    #[error("cannot rename the imported rate-limit state file {} to {}: {source}", from.display(), to.display())]
    Rename {
        /// The legacy state file.
        from: PathBuf,
        /// Its new name.
        to: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The daemon's counters (see the module docs). Shared by every decision and the outbox committer.
#[derive(Debug)]
pub struct DaemonCounters {
    /// Where they are durable; `None` keeps them in memory only (tests, an engine not yet given a database).
    db: Option<AgentDb>,
    bound: KeyBound,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: RateLimitState,
    /// Keys whose count changed since the last write (a count of 0: removed).
    dirty: HashSet<String>,
    /// Keys were removed without being marked: the next write rewrites the table from memory.
    rewrite: bool,
    /// Unix seconds of the last prune of expired buckets.
    pruned_at: i64,
}

/// What one [`DaemonCounters::write_changes`] took; given back with [`DaemonCounters::restore`] when the
/// transaction it was written in did not commit.
#[derive(Debug, Default)]
#[must_use = "give the changes back with DaemonCounters::restore if the transaction does not commit"]
pub struct Changes {
    keys: Vec<String>,
    rewrite: bool,
    /// What is written: the count of each of `keys`, or every counter on a rewrite (a count of zero or less
    /// removes the key).
    values: Vec<(String, i64)>,
}

impl Changes {
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.rewrite
    }

    /// The written counters, for the outbox's write-ahead log; `None` when the table was rewritten (keys
    /// removed that a replay of these values would not remove), so the commit must be durable in redb.
    pub(crate) fn logged_values(&self) -> Option<Vec<(String, i64)>> {
        (!self.rewrite).then(|| self.values.clone())
    }
}

/// Writes counters replayed from the outbox's write-ahead log: key → count, a count of zero or less removes
/// the key. [`DaemonCounters::write_taken`] writes its values through it too.
pub(crate) fn write_logged(
    db: &AgentDb,
    txn: &redb::WriteTransaction,
    values: &[(String, i64)],
) -> Result<(), DbError> {
    let mut table = txn.open_table(COUNTERS).map_err(|e| db.err(e))?;
    for (key, count) in values {
        if *count > 0 {
            table.insert(key.as_str(), *count).map_err(|e| db.err(e))?;
        } else {
            table.remove(key.as_str()).map_err(|e| db.err(e))?;
        }
    }
    Ok(())
}

impl DaemonCounters {
    /// Counters in memory only, bounded to `max_keys`.
    pub fn new(max_keys: usize) -> DaemonCounters {
        DaemonCounters {
            db: None,
            bound: KeyBound::new(max_keys),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Loads the counters from `db`, imports the legacy state file `legacy_file` when there is one (module
    /// docs, "Migration"), and bounds them to `max_keys`. Blocking.
    pub fn open(
        db: &AgentDb,
        legacy_file: &Path,
        max_keys: usize,
    ) -> Result<DaemonCounters, CountersError> {
        let mut counters = load(db)?;
        import_legacy(db, legacy_file, &mut counters)?;
        let mut state = RateLimitState::from_counters(counters);
        let loaded = state.len();
        let now = now();
        let pruned = state.prune_expired(now);
        if loaded > 0 {
            tracing::info!(
                counters = loaded - pruned,
                expired = pruned,
                "rate-limit counters loaded"
            );
        }
        Ok(DaemonCounters {
            db: Some(db.clone()),
            bound: KeyBound::new(max_keys),
            inner: Mutex::new(Inner {
                state,
                dirty: HashSet::new(),
                rewrite: pruned > 0,
                pruned_at: now.unix_timestamp(),
            }),
        })
    }

    /// Most counters held (`gate.rate_limit.max_keys`).
    pub fn max_keys(&self) -> usize {
        self.bound.max_keys()
    }

    /// Takes the counters for one decision (its rate limit and destructive budget count under one hold),
    /// pruning expired buckets first when the last prune is a second old.
    pub fn hold(&self, now: GoTime) -> Held<'_> {
        let mut inner = self.lock();
        let secs = now.unix_timestamp();
        if secs.saturating_sub(inner.pruned_at) >= PRUNE_EVERY_SECS {
            inner.pruned_at = secs;
            if inner.state.prune_expired(now) > 0 && self.db.is_some() {
                inner.rewrite = true;
            }
        }
        Held {
            counters: self,
            inner,
        }
    }

    /// A copy of the counters now.
    pub fn snapshot(&self) -> RateLimitState {
        self.lock().state.clone()
    }

    /// Writes the counters changed since the last write into `txn` (the outbox committer's transaction, so
    /// they commit with the records of the decisions that counted them). Give the result back with
    /// [`DaemonCounters::restore`] if `txn` does not commit. Nothing to do without a database.
    pub fn write_changes(&self, txn: &redb::WriteTransaction) -> Result<Changes, DbError> {
        let changes = self.take_changes();
        match self.write_taken(txn, &changes) {
            Ok(()) => Ok(changes),
            Err(e) => {
                self.restore(changes);
                Err(e)
            }
        }
    }

    /// Takes the counters changed since the last take, without writing them: the outbox committer logs them
    /// with a group ([`Changes::logged_values`]), or writes them with [`DaemonCounters::write_taken`] in a
    /// durable commit. Give them back with [`DaemonCounters::restore`] if neither happened.
    pub fn take_changes(&self) -> Changes {
        if self.db.is_none() {
            return Changes::default();
        }
        let mut inner = self.lock();
        if inner.dirty.is_empty() && !inner.rewrite {
            return Changes::default();
        }
        let rewrite = std::mem::take(&mut inner.rewrite);
        let keys: Vec<String> = inner.dirty.drain().collect();
        let values: Vec<(String, i64)> = if rewrite {
            inner
                .state
                .counters()
                .map(|(k, c)| (k.to_owned(), c))
                .collect()
        } else {
            keys.iter()
                .map(|k| (k.clone(), inner.state.count(k)))
                .collect()
        };
        Changes {
            keys,
            rewrite,
            values,
        }
    }

    /// Writes changes [`DaemonCounters::take_changes`] took into `txn`. On an error the caller gives them back.
    pub fn write_taken(
        &self,
        txn: &redb::WriteTransaction,
        changes: &Changes,
    ) -> Result<(), DbError> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        if changes.is_empty() {
            return Ok(());
        }
        if changes.rewrite {
            let mut table = txn.open_table(COUNTERS).map_err(|e| db.err(e))?;
            let keep: HashSet<&str> = changes.values.iter().map(|(k, _)| k.as_str()).collect();
            let mut gone = Vec::new();
            for entry in table.iter().map_err(|e| db.err(e))? {
                let (key, _) = entry.map_err(|e| db.err(e))?;
                if !keep.contains(key.value()) {
                    gone.push(key.value().to_owned());
                }
            }
            for key in gone {
                table.remove(key.as_str()).map_err(|e| db.err(e))?;
            }
        }
        write_logged(db, txn, &changes.values)
    }

    /// Gives back changes whose transaction did not commit: they are written with the next one.
    pub fn restore(&self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        inner.rewrite |= changes.rewrite;
        inner.dirty.extend(changes.keys);
    }

    /// Writes the changed counters in a durable transaction of their own (a clean stop). Blocking.
    pub fn flush(&self) -> Result<(), DbError> {
        let Some(db) = &self.db else {
            return Ok(());
        };
        let txn = db.redb().begin_write().map_err(|e| db.err(e))?;
        let changes = self.write_changes(&txn)?;
        if changes.is_empty() {
            return txn.abort().map_err(|e| db.err(e));
        }
        match txn.commit() {
            Ok(()) => Ok(()),
            Err(e) => {
                self.restore(changes);
                Err(db.err(e))
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The counters held for one decision.
pub struct Held<'a> {
    counters: &'a DaemonCounters,
    inner: MutexGuard<'a, Inner>,
}

impl Held<'_> {
    /// Counts one request of `tool_name` by `identity` against `limit` at `now` within the bound: Gait's
    /// [`RateLimitState::enforce`] through [`KeyBound::enforce`], and marks what changed for the next write.
    pub fn enforce(
        &mut self,
        limit: &RateLimitPolicy,
        tool_name: &str,
        identity: &str,
        now: GoTime,
    ) -> Result<Counted, RateLimitError> {
        let inner = &mut *self.inner;
        let key = RateLimitState::counter_key(limit, tool_name, identity, now)?;
        let len_before = inner.state.len();
        let before = key.as_deref().map_or(0, |k| inner.state.count(k));
        let counted =
            self.counters
                .bound
                .enforce(&mut inner.state, limit, tool_name, identity, now)?;
        if self.counters.db.is_some()
            && let Some(key) = key
        {
            let after = inner.state.count(&key);
            let added = usize::from(before == 0 && after > 0);
            if inner.state.len() != len_before + added {
                inner.rewrite = true;
            }
            if after != before {
                inner.dirty.insert(key);
            }
        }
        Ok(counted)
    }
}

impl std::fmt::Debug for Held<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("counters", &self.inner.state.len())
            .finish()
    }
}

fn now() -> GoTime {
    GoTime::from_offset_date_time(crate::clock::now_utc())
}

/// Every counter in the table.
pub(crate) fn load(db: &AgentDb) -> Result<BTreeMap<String, i64>, DbError> {
    let read = db.redb().begin_read().map_err(|e| db.err(e))?;
    let table = match read.open_table(COUNTERS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
        Err(e) => return Err(db.err(e)),
    };
    let mut counters = BTreeMap::new();
    for entry in table.iter().map_err(|e| db.err(e))? {
        let (key, count) = entry.map_err(|e| db.err(e))?;
        counters.insert(key.value().to_owned(), count.value());
    }
    Ok(counters)
}

/// Imports `file` into the table (merged by the larger count) and into `counters`, then renames it; nothing
/// when there is no file.
fn import_legacy(
    db: &AgentDb,
    file: &Path,
    counters: &mut BTreeMap<String, i64>,
) -> Result<(), CountersError> {
    if std::fs::symlink_metadata(file).is_err() {
        return Ok(());
    }
    let import_err = |source| CountersError::Import {
        path: file.to_path_buf(),
        source,
    };
    let store = match RateLimitStore::open(file, LOCK_TIMEOUT) {
        Ok(store) => store,
        Err(e @ (StateError::Parse(_) | StateError::Read(_))) => {
            ratelimit_state::set_aside(file, &e).map_err(import_err)?;
            return Ok(());
        }
        Err(e) => return Err(import_err(e)),
    };
    let mut imported = 0usize;
    for (key, count) in store.state.counters() {
        let held = counters.entry(key.to_owned()).or_insert(0);
        if count > *held {
            *held = count;
            imported += 1;
        }
    }
    let txn = db.redb().begin_write().map_err(|e| db.err(e))?;
    {
        let mut table = txn.open_table(COUNTERS).map_err(|e| db.err(e))?;
        for (key, count) in counters.iter() {
            table.insert(key.as_str(), *count).map_err(|e| db.err(e))?;
        }
    }
    txn.commit().map_err(|e| db.err(e))?;
    let mut name = file.as_os_str().to_owned();
    name.push(IMPORTED_SUFFIX);
    let to = PathBuf::from(name);
    std::fs::rename(file, &to).map_err(|source| CountersError::Rename {
        from: file.to_path_buf(),
        to: to.clone(),
        source,
    })?;
    // Nothing to write back: dropping the store releases its lock.
    drop(store);
    tracing::info!(
        file = %file.display(),
        moved_to = %to.display(),
        counters = imported,
        "rate-limit state file imported into the agent database"
    );
    Ok(())
}

#[cfg(test)]
mod tests;
