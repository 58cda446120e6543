//! Group commit for producer appends: concurrent producers share one durable outbox commit.
//!
//! Every append must be durable (fsync) before its producer is answered, and one fsync costs a fraction of a
//! millisecond to milliseconds, so committing each record alone caps a busy sidecar at a few thousand records
//! per second. Appends are committed in groups by a *leader*: the producer that finds no commit under way
//! commits its own record and everything queued behind it (up to [`MAX_GROUP`]), on its own thread, and
//! answers each queued producer. A producer that arrives while a commit is under way queues its record and
//! waits; when the commit ends, the leader hands the queue to its oldest producer, which leads the next group.
//! So no thread hand-off lies on a lone producer's path (it commits its own record where it runs), and under
//! load each group costs one wake-up of the next leader, not two thread crossings per record through a commit
//! thread. At most one commit runs at a time.
//!
//! A group is made durable by one synced frame of the outbox's write-ahead log ([`crate::outbox::wal`]: one
//! sequential write and `fdatasync`, where a durable redb commit syncs every page it copied) and answered; a
//! thread of its own, the applier, moves the logged groups into redb behind it, so no redb commit is on a
//! producer's path. When a group cannot be committed as a whole (quota reached, one record invalid) each
//! record of it is appended on its own, so every producer gets exactly the answer a single append would have
//! given.
//!
//! The leader blocks its thread for the commit: on the async runtime, one worker, while the others keep serving
//! requests (and take the tasks queued on it), and every request that needs the commit waits for it anyway.
//! Usually that is a write and an `fdatasync` of the log, well under a millisecond. Rarely it is longer: a durable
//! redb commit when the log moves to its other file while the applier is a whole file behind, or every group
//! while the log is unusable and groups commit durably in redb; the commit thread used to take those waits.
//!
//! The daemon's rate-limit counters ride along: every commit also logs the counters changed since the last
//! one, in the same frame (or the same transaction when it commits in redb), taken after the group was
//! gathered, so a decision's count is durable with its record before it is answered
//! ([`crate::gate::ratelimit_counters`], "Durability rule"). When the committer is dropped, counters still
//! changed are written in a last commit of their own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use crate::gate::ratelimit_counters::DaemonCounters;
use crate::local_api::decision_metrics::CommitMetrics;
use crate::outbox::{AppendOutcome, GroupDurability, NewRecord, Outbox, OutboxError};

/// Most records committed together.
pub(crate) const MAX_GROUP: usize = 512;

type Outcome = Result<AppendOutcome, OutboxError>;

/// What a queued producer is told when the commit ahead of it ends.
enum Answer {
    /// Its record was committed (or refused): the outcome.
    Done(Outcome),
    /// Lead the next group: its record comes back, first of that group.
    Lead(NewRecord),
}

type Reply = oneshot::Sender<Answer>;

/// Records waiting for the commit under way, and whether one is.
#[derive(Default)]
struct Queue {
    /// Oldest first. Empty whenever `leading` is false.
    waiting: VecDeque<(NewRecord, Reply)>,
    /// A producer is committing (or has been handed the queue and is about to).
    leading: bool,
}

/// Commits appends in groups (see the module docs). Dropping it writes the last checkpoint of the log and the
/// counters still changed, and joins the applier, so the outbox (and the database file lock it holds) is
/// released by the time the drop returns.
pub(crate) struct Committer {
    group: Group,
    queue: Mutex<Queue>,
    /// Applies the logged groups to redb behind the commits ([`Outbox::run_applier`]).
    applier: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Nothing can be committing: a leader borrows the committer for its whole commit.
        // The groups first: their counters are older than the ones still to flush.
        if let Err(error) = self.group.outbox.checkpoint_log() {
            tracing::warn!(%error, "outbox log not checkpointed at stop; it is replayed at the next start");
        }
        if let Some(counters) = &self.group.counters
            && let Err(error) = counters.flush()
        {
            tracing::warn!(%error, "rate-limit counters of unanswered decisions not written at stop");
        }
        // The last checkpoint applied every group; the applier has nothing left.
        self.group.outbox.stop_applier();
        if let Some(applier) = self.applier.take() {
            let _ = applier.join();
        }
    }
}

impl Committer {
    /// Opens the outbox's write-ahead log and starts the applier; `counters` (the daemon's rate-limit counters)
    /// are written with every commit. Blocking (the log's files may be created).
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
        if let Err(error) = outbox.enable_log(log_capacity) {
            tracing::warn!(%error, "outbox log not available: every group commits durably in the database");
        }
        outbox.restart_applier();
        let applier = {
            let outbox = outbox.clone();
            std::thread::Builder::new()
                .name("gait-outbox-apply".into())
                .spawn(move || outbox.run_applier())?
        };
        Ok(Self {
            group: Group {
                outbox,
                counters,
                metrics,
            },
            queue: Mutex::new(Queue::default()),
            applier: Some(applier),
        })
    }

    /// Commits `record` durably (or refuses it), in a group with whatever other producers are waiting.
    ///
    /// Await it to the end or drop it; never keep it unpolled (pinned across a `select!` loop, say): a producer
    /// handed the lead commits the queue behind it only when its future is polled or dropped.
    pub(crate) async fn append(&self, record: NewRecord) -> Outcome {
        let mut waiting = {
            let mut queue = self.queue();
            if queue.leading {
                let (reply, answer) = oneshot::channel();
                queue.waiting.push_back((record, reply));
                Waiting {
                    committer: self,
                    answer,
                }
            } else {
                queue.leading = true;
                drop(queue);
                return self.lead(record);
            }
        };
        match (&mut waiting.answer).await {
            Ok(Answer::Done(outcome)) => outcome,
            Ok(Answer::Lead(record)) => {
                let mut handed = Handed {
                    committer: self,
                    record: Some(record),
                };
                // Let the producers the last commit answered write their answers (and requests that arrived
                // meanwhile queue their records) before this thread blocks on the next commit.
                tokio::task::yield_now().await;
                match handed.record.take() {
                    Some(record) => self.lead(record),
                    None => no_outcome(),
                }
            }
            // The leader answers every record it takes; a sender dropped unanswered means a commit panicked.
            Err(_) => Err(OutboxError::Corrupt {
                path: String::new(),
                seq: 0,
                detail: "an outbox commit ended without answering a queued record".into(),
            }),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits `own` with the records queued behind it, answers theirs, hands the queue on, and returns
    /// `own`'s outcome. The caller holds the lead (`leading` was set for it).
    fn lead(&self, own: NewRecord) -> Outcome {
        let mut leading = Leading {
            committer: self,
            armed: true,
        };
        let mut own = Some(own);
        let mut mine = None;
        while let Some(first) = own.take() {
            let mut records = vec![first];
            let replies = {
                let mut queue = self.queue();
                let take = queue.waiting.len().min(MAX_GROUP - 1);
                let mut replies = Vec::with_capacity(take);
                for (record, reply) in queue.waiting.drain(..take) {
                    records.push(record);
                    replies.push(reply);
                }
                replies
            };
            let mut outcomes = self.group.commit(records).into_iter();
            // The first outcome is this producer's (or, after a hand-off nobody took, that producer's).
            let first = outcomes.next();
            mine = mine.or(first);
            for (reply, outcome) in replies.into_iter().zip(outcomes) {
                // A producer that stopped waiting (its request was dropped) still has its record committed.
                let _ = reply.send(Answer::Done(outcome));
            }
            // Hand the queue to its oldest producer, or end the lead when nothing waits.
            let mut queue = self.queue();
            let Some((next, reply)) = queue.waiting.pop_front() else {
                queue.leading = false;
                break;
            };
            drop(queue);
            if let Err(Answer::Lead(record)) = reply.send(Answer::Lead(next)) {
                // That producer stopped waiting: its record leads the next group here.
                own = Some(record);
            }
        }
        leading.armed = false;
        mine.unwrap_or_else(no_outcome)
    }
}

/// A queued producer's wait. Dropped before its answer was taken (the request was cancelled), it stops the
/// answer from coming and, if it was handed the lead already, leads in its place: otherwise the records behind
/// it would wait for a leader that never comes.
struct Waiting<'a> {
    committer: &'a Committer,
    answer: oneshot::Receiver<Answer>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // After `close`, a leader's `send` fails and it keeps the lead itself; a `Lead` sent before is here.
        self.answer.close();
        if let Ok(Answer::Lead(record)) = self.answer.try_recv() {
            let _ = self.committer.lead(record);
        }
    }
}

/// A producer handed the lead, until it leads. Dropped first (the request was cancelled while it yielded), it
/// leads in its drop, for the same reason as [`Waiting`].
struct Handed<'a> {
    committer: &'a Committer,
    record: Option<NewRecord>,
}

impl Drop for Handed<'_> {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            let _ = self.committer.lead(record);
        }
    }
}

fn no_outcome() -> Outcome {
    Err(OutboxError::Corrupt {
        path: String::new(),
        seq: 0,
        detail: "append produced no outcome".into(),
    })
}

/// Held by a leader, disarmed when its lead ends normally. Dropped armed (its commit panicked), it gives up the
/// lead and answers every queued producer with an error, so later appends are not left waiting for a lead that
/// never ends. (Not `std::thread::panicking()`: a lead can run in a drop during another panic's unwinding and
/// end normally there.)
struct Leading<'a> {
    committer: &'a Committer,
    armed: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut queue = self.committer.queue();
        queue.leading = false;
        for (_, reply) in queue.waiting.drain(..) {
            let _ = reply.send(Answer::Done(Err(OutboxError::Corrupt {
                path: String::new(),
                seq: 0,
                detail:
                    "an outbox commit failed unexpectedly; the record was not committed, retry it"
                        .into(),
            })));
        }
    }
}

/// What every commit writes to.
struct Group {
    outbox: Outbox,
    counters: Option<Arc<DaemonCounters>>,
    /// Observed for every commit (the daemon's; none in unit tests).
    metrics: Option<CommitMetrics>,
}

impl Group {
    /// Commits `records` as one group; when the group cannot be committed whole, each record on its own. One
    /// outcome per record, in order.
    fn commit(&self, records: Vec<NewRecord>) -> Vec<Outcome> {
        if records.len() == 1 {
            return records
                .into_iter()
                .map(|record| self.append_one(record))
                .collect();
        }
        let count = records.len();
        match self.append(records.clone()) {
            Ok(outcomes) if outcomes.len() == count => outcomes.into_iter().map(Ok).collect(),
            // All-or-nothing failed (or an unexpected answer): give every record its own verdict.
            _ => records
                .into_iter()
                .map(|record| self.append_one(record))
                .collect(),
        }
    }

    fn append_one(&self, record: NewRecord) -> Outcome {
        let mut outcomes = self.append(vec![record])?;
        outcomes.pop().map_or_else(no_outcome, Ok)
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

    fn open_outbox(dir: &std::path::Path) -> Outbox {
        let db = AgentDb::open(dir.join("agent.redb")).expect("db");
        Outbox::open(
            &db,
            OutboxLimits {
                max_records: 100_000,
                max_bytes: 1 << 30,
            },
        )
        .expect("outbox")
    }

    /// Polls `future` once, with a waker that does nothing.
    fn poll_once<F: std::future::Future>(
        future: std::pin::Pin<&mut F>,
    ) -> std::task::Poll<F::Output> {
        future.poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    }

    /// A committer over a fresh outbox, with a commit under way: the next producer queues.
    fn mid_commit(dir: &std::path::Path) -> (Outbox, Committer) {
        let outbox = open_outbox(dir);
        let committer = Committer::spawn(outbox.clone(), None, None).expect("spawn");
        committer.queue().leading = true;
        (outbox, committer)
    }

    /// What the commit under way does when it ends: hands the lead to the oldest queued producer.
    fn hand_on(committer: &Committer) {
        let (next, reply) = committer.queue().waiting.pop_front().expect("queued");
        assert!(reply.send(Answer::Lead(next)).is_ok());
    }

    fn appended(outcome: Outcome) -> u64 {
        match outcome.expect("append") {
            AppendOutcome::Appended { seq } => seq,
            AppendOutcome::Shed => panic!("block records are never shed"),
        }
    }

    #[test]
    fn a_producer_cancelled_after_it_was_handed_the_lead_still_commits_and_releases_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (outbox, committer) = mid_commit(dir.path());
        let mut waiting = Box::pin(committer.append(record(1)));
        assert!(
            poll_once(waiting.as_mut()).is_pending(),
            "queued behind the commit"
        );
        // The commit ends and hands the queue on, but the producer's request is dropped before it runs.
        hand_on(&committer);
        drop(waiting);
        assert_eq!(
            outbox.stats().depth,
            1,
            "the cancelled producer's record was committed"
        );
        assert!(!committer.queue().leading, "and the lead was released");
        // The next producer leads at once.
        let mut next = Box::pin(committer.append(record(2)));
        match poll_once(next.as_mut()) {
            std::task::Poll::Ready(outcome) => assert_eq!(appended(outcome), 2),
            std::task::Poll::Pending => panic!("the next append waited for a lead nobody holds"),
        }
    }

    #[test]
    fn a_producer_cancelled_while_it_holds_the_lead_still_commits_and_releases_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (outbox, committer) = mid_commit(dir.path());
        let mut waiting = Box::pin(committer.append(record(1)));
        assert!(
            poll_once(waiting.as_mut()).is_pending(),
            "queued behind the commit"
        );
        hand_on(&committer);
        // It takes the lead and yields before committing; its request is dropped there.
        assert!(
            poll_once(waiting.as_mut()).is_pending(),
            "yields before it leads"
        );
        assert_eq!(outbox.stats().depth, 0, "nothing committed yet");
        drop(waiting);
        assert_eq!(
            outbox.stats().depth,
            1,
            "the cancelled leader's record was committed"
        );
        assert!(!committer.queue().leading, "and the lead was released");
    }

    #[test]
    fn a_lead_that_ends_normally_during_another_panics_unwinding_keeps_the_hand_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (outbox, committer) = mid_commit(dir.path());
        // A, then a full group behind it, then Z.
        let mut a = Box::pin(committer.append(record(0)));
        assert!(poll_once(a.as_mut()).is_pending());
        let mut behind: Vec<_> = (1..=MAX_GROUP)
            .map(|i| Box::pin(committer.append(record(i as u32))))
            .collect();
        for w in &mut behind {
            assert!(poll_once(w.as_mut()).is_pending());
        }
        hand_on(&committer);
        // A's task panics elsewhere; A is dropped while the thread unwinds and leads there: its group is A and the
        // next MAX_GROUP - 1, and it hands the lead to Z, the last one.
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _a = a;
            panic!("a panic in the task that held A (expected by this test)");
        }));
        assert!(unwound.is_err());
        assert_eq!(
            outbox.stats().depth,
            MAX_GROUP as u64,
            "A's group was committed"
        );
        assert!(
            committer.queue().leading,
            "Z holds the lead A handed it; the lead was not given up as if A's commit had panicked"
        );
        let mut z = behind.pop().expect("Z");
        assert!(
            poll_once(z.as_mut()).is_pending(),
            "Z yields before it leads"
        );
        match poll_once(z.as_mut()) {
            std::task::Poll::Ready(outcome) => assert_eq!(appended(outcome), MAX_GROUP as u64 + 1),
            std::task::Poll::Pending => panic!("Z did not lead"),
        }
        assert!(!committer.queue().leading);
    }

    #[test]
    fn a_hand_off_nobody_takes_is_led_by_the_leader_and_every_queued_record_is_answered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (outbox, committer) = mid_commit(dir.path());
        let queued = MAX_GROUP + 10;
        let mut waiting: Vec<_> = (0..queued)
            .map(|i| Box::pin(committer.append(record(i as u32))))
            .collect();
        for w in &mut waiting {
            assert!(poll_once(w.as_mut()).is_pending());
        }
        // The leader's group takes MAX_GROUP - 1 of them; the next one, handed the lead, was cancelled.
        let cancelled = waiting.remove(MAX_GROUP - 1);
        drop(cancelled);
        let own = committer.lead(record(9_999));
        assert_eq!(appended(own), 1, "the leader's record is first");
        assert!(
            !committer.queue().leading,
            "the lead ended with the queue empty"
        );
        let stored = payloads(&outbox);
        assert_eq!(
            stored.len(),
            queued + 1,
            "every record committed, the cancelled producer's included"
        );
        assert_eq!(stored[&1], 9_999, "the leader's own record");
        assert_eq!(
            stored[&(MAX_GROUP as u64 + 1)],
            (MAX_GROUP - 1) as u32,
            "the cancelled producer's record leads the second group, in queue order"
        );
        let producers = (0..queued).filter(|i| *i != MAX_GROUP - 1);
        for (i, mut w) in producers.zip(waiting) {
            match poll_once(w.as_mut()) {
                std::task::Poll::Ready(outcome) => {
                    let seq = appended(outcome);
                    assert_eq!(
                        stored[&seq], i as u32,
                        "producer {i} was answered seq {seq}, which is not its record"
                    );
                }
                std::task::Poll::Pending => panic!("a queued producer was never answered"),
            }
        }
    }

    /// The stored records' `i` by seq.
    fn payloads(outbox: &Outbox) -> std::collections::BTreeMap<u64, u32> {
        outbox
            .peek_batch(0, 100_000, usize::MAX)
            .expect("read")
            .into_iter()
            .map(|r| {
                let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("payload");
                (r.seq, v["i"].as_u64().expect("i") as u32)
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_producers_each_get_their_own_durable_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = open_outbox(dir.path());
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
        let stored = payloads(&outbox);
        for (i, &seq) in seqs.iter().enumerate() {
            assert_eq!(
                stored[&seq], i as u32,
                "producer {i} was answered seq {seq}, which holds another producer's record"
            );
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
