//! Group commit for SQLite: write transactions that run at the same time share one database transaction and
//! so one commit — one fsync with `synchronous=FULL` — instead of paying one each.
//!
//! SQLite has a single writer, so write transactions always ran one after the other; what group commit changes
//! is only when they become durable. Each logical transaction (a [`Member`]) runs, alone, inside a savepoint of
//! the group's open `BEGIN IMMEDIATE` transaction:
//!
//! - **begin**: count the member as pending, take the group lock (a fair FIFO mutex, held for the member's whole
//!   run exactly like the database's write lock was), open the group's transaction if none is open, then
//!   `SAVEPOINT`.
//! - **commit**: `RELEASE` the savepoint (the member's writes join the group), leave the pending count, let go of
//!   the lock — and if no other member is pending (or the group has reached [`MAX_MEMBERS`]), hand the group to a
//!   finishing task that commits it. Every member then waits for that commit's outcome, so a member reports
//!   success only once its writes are durable, as before.
//! - **rollback** (or an error in the member's body): `ROLLBACK TO` its savepoint; the others are untouched.
//!
//! A member's future may be dropped anywhere (a cancelled request). Dropped while running, it leaves its
//! savepoint open: the next holder of the lock rolls it back before doing anything else. Dropped while others
//! wait on it, it still leaves the pending count, and starts the finishing task when it was the last one. The
//! finishing task itself runs on the store's own task tracker, so a cancelled caller can never cut a commit in
//! half, and [`GroupCommit::close`] waits for it.
//!
//! When the group's transaction fails as a whole (the commit, or a savepoint that cannot be rolled back), every
//! member in it gets an error: none of their writes were kept, which is what each was told.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, SqliteConnection, Transaction};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard, watch};
use tokio_util::task::TaskTracker;

use crate::error::{StoreError, db, sqlx_is_transient};

/// Most members one commit takes: bounds how long the first of them waits under a continuous stream.
pub(crate) const MAX_MEMBERS: usize = 64;

/// The savepoint each member runs in. One name is enough: members run one at a time.
const SAVEPOINT: &str = "SAVEPOINT gait_member";
const RELEASE: &str = "RELEASE gait_member";
const ROLLBACK_TO: &str = "ROLLBACK TO gait_member";

/// The group committer of one SQLite pool. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pool: SqlitePool,
    group: Arc<Mutex<Group>>,
    /// Members that began and have not yet released or rolled back their work (running, or waiting for the lock).
    pending: AtomicUsize,
    /// The finishing tasks; [`GroupCommit::close`] waits for them.
    tasks: TaskTracker,
    /// Member transactions committed, and the database commits that made them durable.
    committed_members: AtomicU64,
    commits: AtomicU64,
}

/// What the SQLite group commit has done since the store opened ([`crate::Store::group_commit_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Write transactions committed.
    pub transactions: u64,
    /// Database commits (fsyncs) that made them durable: `transactions / commits` is the mean group size.
    pub commits: u64,
    /// Write transactions begun and not yet released or rolled back (running, or waiting for their turn).
    pub pending: usize,
}

#[derive(Debug, Default)]
struct Group {
    open: Option<OpenGroup>,
}

/// The group's open database transaction and what its members need to know about it.
#[derive(Debug)]
pub(crate) struct OpenGroup {
    tx: Transaction<'static, Sqlite>,
    /// Members whose writes were released into `tx` and wait for its commit.
    released: usize,
    /// A member's savepoint is open: it is running, or its future was dropped while it ran.
    savepoint_open: bool,
    /// Why `tx` can no longer commit (a savepoint could not be rolled back); it is rolled back instead.
    broken: Option<String>,
    /// How the commit of `tx` ended, for every member released into it.
    outcome: watch::Sender<Option<Outcome>>,
}

/// How a group's commit ended.
#[derive(Clone, Debug)]
enum Outcome {
    Committed,
    Failed { reason: String, retryable: bool },
}

impl GroupCommit {
    pub(crate) fn new(pool: SqlitePool) -> Self {
        Self {
            shared: Arc::new(Shared {
                pool,
                group: Arc::new(Mutex::new(Group::default())),
                pending: AtomicUsize::new(0),
                tasks: TaskTracker::new(),
                committed_members: AtomicU64::new(0),
                commits: AtomicU64::new(0),
            }),
        }
    }

    /// Starts a member transaction; `op` names the caller's operation in errors.
    pub(crate) async fn begin(&self, op: &'static str) -> Result<Member, StoreError> {
        let pending = Pending::enter(&self.shared);
        let mut group = self.shared.group.clone().lock_owned().await;
        if let Err(e) = self.shared.prepare(&mut group, op).await {
            drop(group);
            pending.leave();
            return Err(e);
        }
        let open = OwnedMutexGuard::try_map(group, |g| g.open.as_mut()).map_err(|_| {
            StoreError::invalid("transaction", "group commit: no open group (store bug)")
        })?;
        let outcome = open.outcome.subscribe();
        Ok(Member {
            open,
            pending,
            outcome,
        })
    }

    /// What the group commit has done so far.
    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            transactions: self.shared.committed_members.load(Ordering::Relaxed),
            commits: self.shared.commits.load(Ordering::Relaxed),
            pending: self.shared.pending.load(Ordering::SeqCst),
        }
    }

    /// Waits until the last group's commit has finished (after the callers stopped beginning transactions).
    pub(crate) async fn close(&self) {
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

impl Shared {
    /// With the lock held: clear what an abandoned member left behind, fail a broken group, open a group if none
    /// is open, and open the new member's savepoint.
    async fn prepare(&self, group: &mut Group, op: &'static str) -> Result<(), StoreError> {
        if let Some(open) = group.open.as_mut() {
            open.roll_back_abandoned().await;
            if open.broken.is_some()
                && let Some(open) = group.open.take()
            {
                open.finish(self).await;
            }
        }
        if group.open.is_none() {
            let tx = self
                .pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(db(op))?;
            group.open = Some(OpenGroup {
                tx,
                released: 0,
                savepoint_open: false,
                broken: None,
                outcome: watch::Sender::new(None),
            });
        }
        let Some(open) = group.open.as_mut() else {
            return Err(StoreError::invalid(
                "transaction",
                "group commit: no open group (store bug)",
            ));
        };
        if let Err(e) = sqlx::query(SAVEPOINT).execute(&mut *open.tx).await {
            open.broken = Some(format!("cannot open a savepoint: {e}"));
            if let Some(open) = group.open.take() {
                open.finish(self).await;
            }
            return Err(db(op)(e));
        }
        open.savepoint_open = true;
        Ok(())
    }

    /// Commits (or, when nothing in it can be kept, rolls back) the open group, if any, and tells its members.
    async fn finish_open_group(self: Arc<Self>) {
        let mut group = self.group.clone().lock_owned().await;
        if let Some(mut open) = group.open.take() {
            open.roll_back_abandoned().await;
            open.finish(&self).await;
        }
    }

    /// Hands the open group to a finishing task on the tracker (so no caller's cancellation can cut it short).
    fn spawn_finish(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left (the process is ending): dropping the open transaction rolls it back, and nobody
            // is told it committed.
            return;
        };
        self.tasks
            .spawn_on(Arc::clone(self).finish_open_group(), &runtime);
    }
}

impl OpenGroup {
    /// Rolls back the savepoint of a member whose future was dropped while it ran; the group breaks if that fails.
    async fn roll_back_abandoned(&mut self) {
        if !self.savepoint_open {
            return;
        }
        self.savepoint_open = false;
        if let Err(e) = self.roll_back_savepoint().await {
            self.broken
                .get_or_insert_with(|| format!("cannot roll back an abandoned transaction: {e}"));
        }
    }

    async fn roll_back_savepoint(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query(ROLLBACK_TO).execute(&mut *self.tx).await?;
        sqlx::query(RELEASE).execute(&mut *self.tx).await?;
        Ok(())
    }

    /// Ends the group's transaction and publishes the outcome to its members.
    async fn finish(self, shared: &Shared) {
        let OpenGroup {
            tx,
            released,
            broken,
            outcome,
            ..
        } = self;
        let result = match broken {
            Some(reason) => {
                if let Err(e) = tx.rollback().await {
                    tracing::warn!(error = %e, "rolling back a broken group transaction failed");
                }
                Outcome::Failed {
                    reason,
                    retryable: false,
                }
            }
            None if released == 0 => {
                // Nothing to keep (every member rolled back): no commit, no fsync.
                if let Err(e) = tx.rollback().await {
                    tracing::warn!(error = %e, "rolling back an empty group transaction failed");
                }
                Outcome::Committed
            }
            None => match tx.commit().await {
                Ok(()) => {
                    shared.commits.fetch_add(1, Ordering::Relaxed);
                    shared.committed_members.fetch_add(
                        u64::try_from(released).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    Outcome::Committed
                }
                Err(e) => Outcome::Failed {
                    retryable: sqlx_is_transient(&e),
                    reason: e.to_string(),
                },
            },
        };
        outcome.send_replace(Some(result));
    }
}

/// A member transaction: holds the group lock from begin until [`Member::commit`] or [`Member::rollback`]
/// (dropping it without either rolls its work back, see the module docs).
#[derive(Debug)]
pub(crate) struct Member {
    open: OwnedMappedMutexGuard<Group, OpenGroup>,
    pending: Pending,
    outcome: watch::Receiver<Option<Outcome>>,
}

impl Member {
    /// The connection, inside the member's savepoint.
    pub(crate) fn connection(&mut self) -> &mut SqliteConnection {
        &mut self.open.tx
    }

    /// Releases the member's writes into the group and returns once the group's commit made them durable.
    pub(crate) async fn commit(self, op: &'static str) -> Result<(), StoreError> {
        let Member {
            mut open,
            pending,
            mut outcome,
        } = self;
        if let Err(e) = sqlx::query(RELEASE).execute(&mut *open.tx).await {
            // The member's writes cannot join the group; take them out so the others can still commit.
            open.savepoint_open = true;
            open.roll_back_abandoned().await;
            drop(open);
            pending.leave();
            return Err(db(op)(e));
        }
        open.savepoint_open = false;
        open.released += 1;
        let full = open.released >= MAX_MEMBERS;
        drop(open);
        let shared = pending.leave();
        if full {
            shared.spawn_finish();
        }
        match outcome.wait_for(Option::is_some).await {
            Ok(result) => match result.as_ref() {
                Some(Outcome::Committed) => Ok(()),
                Some(Outcome::Failed { reason, retryable }) => Err(StoreError::GroupCommit {
                    op,
                    reason: reason.clone(),
                    retryable: *retryable,
                }),
                None => Err(unknown(op)),
            },
            Err(_) => Err(unknown(op)),
        }
    }

    /// Discards the member's writes; the rest of the group is untouched.
    pub(crate) async fn rollback(self, op: &'static str) -> Result<(), StoreError> {
        let Member {
            mut open, pending, ..
        } = self;
        open.savepoint_open = false;
        let result = open.roll_back_savepoint().await;
        if let Err(e) = &result {
            open.broken
                .get_or_insert_with(|| format!("cannot roll back a transaction: {e}"));
        }
        drop(open);
        pending.leave();
        result.map_err(db(op))
    }
}

fn unknown(op: &'static str) -> StoreError {
    StoreError::GroupCommit {
        op,
        reason: "the store closed before the commit finished; the writes may not be durable"
            .to_owned(),
        retryable: false,
    }
}

/// A member's place in the pending count. Leaving it — explicitly, or by being dropped with an abandoned
/// member — starts the group's commit when it was the last pending member.
#[derive(Debug)]
struct Pending {
    shared: Arc<Shared>,
    counted: bool,
}

impl Pending {
    fn enter(shared: &Arc<Shared>) -> Self {
        shared.pending.fetch_add(1, Ordering::SeqCst);
        Self {
            shared: Arc::clone(shared),
            counted: true,
        }
    }

    /// Leaves the count (and finishes the group if nobody else is pending); returns the shared state.
    fn leave(mut self) -> Arc<Shared> {
        self.counted = false;
        Self::left(&self.shared);
        Arc::clone(&self.shared)
    }

    fn left(shared: &Arc<Shared>) {
        if shared.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
            shared.spawn_finish();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.counted {
            Self::left(&self.shared);
        }
    }
}
