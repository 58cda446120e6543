//! Group commit for producer appends: concurrent producers share one durable outbox commit.
//!
//! Every append must be durable (fsync) before its producer is answered, and one fsync costs milliseconds, so
//! committing each record alone caps a busy sidecar at a few hundred records per second. A dedicated thread
//! takes whatever appends are waiting (up to [`MAX_GROUP`]), commits them together, and answers each
//! producer. A group is made durable by one synced frame of the outbox's write-ahead log
//! ([`crate::outbox::wal`]: one sequential write and `fdatasync`, where a durable redb commit syncs every page
//! it copied) and answered; a second thread, the applier, moves the logged groups into redb behind it, so no
//! redb commit is on a producer's path. A lone producer pays one frame; many concurrent producers share
//! frames. When a group cannot be committed as a whole (quota reached, one record invalid) each record of it
//! is appended on its own, so every producer gets exactly the answer a single append would have given.
//!
//! The daemon's rate-limit counters ride along: every commit also logs the counters changed since the last
//! one, in the same frame (or the same transaction when it commits in redb), taken after the group was
//! gathered, so a decision's count is durable with
//! its record before it is answered ([`crate::gate::ratelimit_counters`], "Durability rule"). When the queue
//! closes, counters still changed are written in a last commit of their own.

use std::sync::{Arc, mpsc};

use tokio::sync::oneshot;

use crate::gate::ratelimit_counters::DaemonCounters;
use crate::local_api::decision_metrics::CommitMetrics;
use crate::outbox::{AppendOutcome, GroupDurability, NewRecord, Outbox, OutboxError};

/// Most records committed together.
pub(crate) const MAX_GROUP: usize = 512;

type Reply = oneshot::Sender<Result<AppendOutcome, OutboxError>>;

/// Handle to the committer thread. Dropping it closes the queue and joins the thread, so the outbox (and the
/// database file lock it holds) is released by the time the drop returns.
pub(crate) struct Committer {
    tx: Option<mpsc::Sender<(NewRecord, Reply)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Applies the logged groups to redb behind the committer ([`Outbox::run_applier`]).
    applier: Option<std::thread::JoinHandle<()>>,
    outbox: Outbox,
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The committer's last checkpoint applied every group; the applier has nothing left.
        self.outbox.stop_applier();
        if let Some(applier) = self.applier.take() {
            let _ = applier.join();
        }
    }
}

impl Committer {
    /// Starts the commit thread; `counters` (the daemon's rate-limit counters) are written with every commit.
    pub(crate) fn spawn(
        outbox: Outbox,
        counters: Option<Arc<DaemonCounters>>,
        metrics: Option<CommitMetrics>,
    ) -> std::io::Result<Self> {
        Self::spawn_with_log(
            outbox,
            counters,
            metrics,
            crate::outbox::wal::DEFAULT_CAPACITY,
        )
    }

    /// [`Committer::spawn`] with a write-ahead log of `log_capacity` bytes (tests use small ones).
    pub(crate) fn spawn_with_log(
        outbox: Outbox,
        counters: Option<Arc<DaemonCounters>>,
        metrics: Option<CommitMetrics>,
        log_capacity: u64,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<(NewRecord, Reply)>();
        outbox.restart_applier();
        let applier = {
            let outbox = outbox.clone();
            std::thread::Builder::new()
                .name("gait-outbox-apply".into())
                .spawn(move || outbox.run_applier())?
        };
        let handle = outbox.clone();
        let spawned = std::thread::Builder::new()
            .name("gait-outbox-commit".into())
            .spawn(move || {
                run(
                    &Group {
                        outbox,
                        counters,
                        metrics,
                    },
                    rx,
                    log_capacity,
                )
            });
        let thread = match spawned {
            Ok(thread) => thread,
            Err(e) => {
                handle.stop_applier();
                let _ = applier.join();
                return Err(e);
            }
        };
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            applier: Some(applier),
            outbox: handle,
        })
    }

    /// Queue `record`; the answer arrives once it is durable (or refused).
    pub(crate) async fn append(&self, record: NewRecord) -> Result<AppendOutcome, OutboxError> {
        let (reply, answer) = oneshot::channel();
        let gone = || OutboxError::Corrupt {
            path: String::new(),
            seq: 0,
            detail: "the outbox commit thread stopped".into(),
        };
        let tx = self.tx.as_ref().ok_or_else(gone)?;
        tx.send((record, reply)).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// What every commit writes to.
struct Group {
    outbox: Outbox,
    counters: Option<Arc<DaemonCounters>>,
    /// Observed for every commit (the daemon's; none in unit tests).
    metrics: Option<CommitMetrics>,
}

fn run(group_to: &Group, rx: mpsc::Receiver<(NewRecord, Reply)>, log_capacity: u64) {
    if let Err(error) = group_to.outbox.enable_log(log_capacity) {
        tracing::warn!(%error, "outbox log not available: every group commits durably in the database");
    }
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        group_to.commit(group);
    }
    // The groups first: their counters are older than the ones still to flush.
    if let Err(error) = group_to.outbox.checkpoint_log() {
        tracing::warn!(%error, "outbox log not checkpointed at stop; it is replayed at the next start");
    }
    if let Some(counters) = &group_to.counters
        && let Err(error) = counters.flush()
    {
        tracing::warn!(%error, "rate-limit counters of unanswered decisions not written at stop");
    }
}

impl Group {
    fn commit(&self, group: Vec<(NewRecord, Reply)>) {
        if group.len() == 1 {
            for (record, reply) in group {
                let _ = reply.send(self.append_one(record));
            }
            return;
        }
        let records: Vec<NewRecord> = group.iter().map(|(r, _)| r.clone()).collect();
        match self.append(records) {
            Ok(outcomes) if outcomes.len() == group.len() => {
                for ((_, reply), outcome) in group.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            // All-or-nothing failed (or an unexpected answer): give every record its own verdict.
            _ => {
                for (record, reply) in group {
                    let _ = reply.send(self.append_one(record));
                }
            }
        }
    }

    fn append_one(&self, record: NewRecord) -> Result<AppendOutcome, OutboxError> {
        let mut outcomes = self.append(vec![record])?;
        outcomes.pop().ok_or_else(|| OutboxError::Corrupt {
            path: String::new(),
            seq: 0,
            detail: "append produced no outcome".into(),
        })
    }

    /// One durable commit of `records` and the counters changed since the last commit, observed in the
    /// commit histograms.
    fn append(&self, records: Vec<NewRecord>) -> Result<Vec<AppendOutcome>, OutboxError> {
        let started = std::time::Instant::now();
        let count = records.len();
        let result = self.commit_records(records);
        if let Some(metrics) = &self.metrics {
            metrics.duration.observe(started.elapsed().as_secs_f64());
            metrics.records.observe(count as f64);
        }
        result
    }

    fn commit_records(&self, records: Vec<NewRecord>) -> Result<Vec<AppendOutcome>, OutboxError> {
        let result = match &self.counters {
            None => self
                .outbox
                .append_logged(records, Some(Vec::new()), |_| Ok(())),
            Some(counters) => {
                let changes = counters.take_changes();
                let result = self
                    .outbox
                    .append_logged(records, changes.logged_values(), |txn| {
                        counters
                            .write_taken(txn, &changes)
                            .map_err(OutboxError::from)
                    });
                if result.is_err() {
                    counters.restore(changes);
                }
                result
            }
        };
        let (outcomes, durability) = result?;
        if let Some(metrics) = &self.metrics {
            let by = match durability {
                GroupDurability::Log => &metrics.through_log,
                GroupDurability::Database => &metrics.through_database,
            };
            by.inc();
        }
        Ok(outcomes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock
    use super::*;
    use crate::db::AgentDb;
    use crate::outbox::OutboxLimits;
    use gait_wire::RecordClass;

    fn record(i: u32) -> NewRecord {
        NewRecord {
            class: RecordClass::Block,
            kind: "gate.decision".into(),
            created_unix_ms: 1,
            bundle: None,
            payload: format!("{{\"i\":{i}}}").into_bytes(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producers_each_get_their_own_durable_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = AgentDb::open(dir.path().join("agent.redb")).expect("db");
        let outbox = Outbox::open(
            &db,
            OutboxLimits {
                max_records: 100_000,
                max_bytes: 1 << 30,
            },
        )
        .expect("outbox");
        let committer =
            std::sync::Arc::new(Committer::spawn(outbox.clone(), None, None).expect("spawn"));
        let mut tasks = Vec::new();
        for i in 0..400 {
            let c = committer.clone();
            tasks.push(tokio::spawn(async move { c.append(record(i)).await }));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            match t.await.expect("join").expect("append") {
                AppendOutcome::Appended { seq } => seqs.push(seq),
                AppendOutcome::Shed => panic!("block records are never shed"),
            }
        }
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (1..=400).collect::<Vec<u64>>(),
            "every producer got a distinct seq, none lost"
        );
        assert_eq!(outbox.stats().depth, 400);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decisions_count_is_durable_once_its_record_is_committed() {
        use crate::gate::ratelimit_counters::DaemonCounters;
        use gait_policy::gate::RateLimitState;
        use gait_policy::gotime::GoTime;
        use gait_policy::policy::RateLimitPolicy;

        let dir = tempfile::tempdir().expect("tempdir");
        let legacy = dir.path().join("gate_rate_limits.json");
        let db = AgentDb::open(dir.path().join("agent.redb")).expect("db");
        let outbox = Outbox::open(&db, OutboxLimits::default()).expect("outbox");
        let counters =
            std::sync::Arc::new(DaemonCounters::open(&db, &legacy, 1024).expect("counters"));
        let committer =
            Committer::spawn(outbox, Some(std::sync::Arc::clone(&counters)), None).expect("spawn");
        let limit = RateLimitPolicy {
            requests: 10,
            window: "hour".into(),
            scope: "tool".into(),
        };
        let now = GoTime::from_offset_date_time(crate::clock::now_utc());
        let key = RateLimitState::counter_key(&limit, "t", "a", now)
            .expect("key")
            .expect("counted");
        for i in 1..=3_i64 {
            counters
                .hold(now)
                .enforce(&limit, "t", "a", now)
                .expect("counts");
            committer.append(record(0)).await.expect("append");
            // What a restart would find now, while the committer still runs (no clean stop): the count as the
            // database holds it, unless a frame of the outbox's log (replayed at open) has a newer one.
            let mut logged = Vec::new();
            for path in [
                crate::outbox::wal::path_for(db.path()),
                crate::outbox::wal::spare_path_for(db.path()),
            ] {
                if let Some(mut wal) = crate::outbox::wal::Wal::open_existing(&path).expect("log") {
                    let generation = wal.generation();
                    logged.extend(
                        wal.frames()
                            .expect("frames")
                            .into_iter()
                            .map(|f| (generation, f)),
                    );
                }
            }
            logged.sort_by_key(|(generation, _)| *generation);
            let from_log = logged
                .iter()
                .flat_map(|(_, frame)| frame.counters.iter())
                .filter(|(k, _)| *k == key)
                .map(|(_, count)| *count)
                .next_back();
            let on_disk = DaemonCounters::open(&db, &legacy, 1024).expect("reload");
            assert_eq!(
                from_log.unwrap_or_else(|| on_disk.snapshot().count(&key)),
                i,
                "after decision {i}"
            );
        }
    }
}
