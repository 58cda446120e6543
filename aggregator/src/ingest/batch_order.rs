//! The order in which a connection's pipelined record batches are committed.

use std::sync::Mutex;
use std::time::Duration;

/// Commits a connection's pipelined batches in `batch_id` order.
///
/// An agent may have several batches in flight on separate streams, and QUIC delivers streams independently,
/// so batch 3 can arrive before batch 2. Committing it first would make the store see a sequence gap that is
/// not a loss. Batch ids start at 1 on every connection.
///
/// A batch waits without a deadline while every earlier batch has *arrived* (they are being checked or
/// committed and will finish). Only while an earlier batch is still missing does the wait time out, after
/// [`BATCH_ORDER_WAIT`] without progress: a predecessor whose stream was lost never arrives, and the store then
/// records the gap it leaves. Committing time under load therefore never turns into false gaps.
pub(super) struct BatchOrder {
    inner: Mutex<OrderState>,
    turn: tokio::sync::Notify,
}

struct OrderState {
    /// Every batch id below this one is committed (or was given up on).
    next: u64,
    /// Batch ids that have arrived and are not committed yet.
    arrived: std::collections::BTreeSet<u64>,
}

impl OrderState {
    /// Whether a batch id in `next..batch_id` has not arrived yet.
    fn predecessor_missing(&self, batch_id: u64) -> bool {
        let waiting = batch_id.saturating_sub(self.next);
        let present = self.arrived.range(self.next..batch_id).count() as u64;
        present < waiting
    }
}

/// Longest a batch waits, without any progress, for an earlier batch of the same connection to arrive.
const BATCH_ORDER_WAIT: Duration = Duration::from_secs(2);

/// Longest a batch waits for arrived predecessors to commit: only a safety net against a stuck store call,
/// well above the store's own timeouts.
const BATCH_COMMIT_WAIT: Duration = Duration::from_secs(120);

impl BatchOrder {
    pub(super) fn new() -> Self {
        Self {
            inner: Mutex::new(OrderState {
                next: 1,
                arrived: std::collections::BTreeSet::new(),
            }),
            turn: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OrderState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait until every earlier batch is committed, or until an earlier one is given up on. The returned guard
    /// marks `batch_id` committed when it is dropped, also when the request is abandoned halfway.
    pub(super) async fn wait_turn(&self, batch_id: u64) -> OrderTurn<'_> {
        self.lock().arrived.insert(batch_id);
        // From here on the guard owns the arrival: abandoning the wait marks the batch done.
        let turn = OrderTurn {
            order: self,
            batch_id,
        };
        // Other waiters may be waiting for this one to arrive.
        self.turn.notify_waiters();
        loop {
            let notified = self.turn.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let state = self.lock();
                if state.next >= batch_id {
                    break;
                }
                if state.predecessor_missing(batch_id) {
                    BATCH_ORDER_WAIT
                } else {
                    BATCH_COMMIT_WAIT
                }
            };
            // Any progress (an arrival or a commit) wakes us and restarts the wait.
            if tokio::time::timeout(wait, notified).await.is_err() {
                break;
            }
        }
        turn
    }

    fn done(&self, batch_id: u64) {
        let mut state = self.lock();
        state.arrived.remove(&batch_id);
        if state.next <= batch_id {
            state.next = batch_id + 1;
        }
        drop(state);
        self.turn.notify_waiters();
    }
}

/// A batch's place in [`BatchOrder`]; dropping it marks the batch done.
pub(super) struct OrderTurn<'a> {
    order: &'a BatchOrder,
    batch_id: u64,
}

impl Drop for OrderTurn<'_> {
    fn drop(&mut self) {
        self.order.done(self.batch_id);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Run batch `id` through the order: wait for its turn, "commit" for `commit`, record the commit order.
    async fn run_batch(
        order: Arc<BatchOrder>,
        log: Arc<Mutex<Vec<u64>>>,
        id: u64,
        commit: Duration,
    ) {
        let turn = order.wait_turn(id).await;
        log.lock().unwrap().push(id);
        tokio::time::sleep(commit).await;
        drop(turn);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_commit_of_an_arrived_predecessor_is_waited_for() {
        let order = Arc::new(BatchOrder::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        // Batch 1 arrives first and takes far longer than BATCH_ORDER_WAIT to commit.
        let first = tokio::spawn(run_batch(
            order.clone(),
            log.clone(),
            1,
            Duration::from_secs(30),
        ));
        tokio::task::yield_now().await;
        let second = tokio::spawn(run_batch(order.clone(), log.clone(), 2, Duration::ZERO));
        let third = tokio::spawn(run_batch(order.clone(), log.clone(), 3, Duration::ZERO));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            *log.lock().unwrap(),
            vec![1],
            "2 and 3 must wait for 1's commit"
        );
        for t in [first, second, third] {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_predecessor_that_never_arrives_is_given_up_after_the_wait() {
        let order = Arc::new(BatchOrder::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let started = tokio::time::Instant::now();
        // Batch 1 is lost; batch 2 must go ahead after BATCH_ORDER_WAIT, not wait for the commit safety net.
        run_batch(order.clone(), log.clone(), 2, Duration::ZERO).await;
        let waited = started.elapsed();
        assert!(
            waited >= BATCH_ORDER_WAIT && waited < BATCH_ORDER_WAIT * 2,
            "{waited:?}"
        );
        // A late batch 1 is not held back by anything.
        let late = tokio::time::Instant::now();
        run_batch(order.clone(), log.clone(), 1, Duration::ZERO).await;
        assert_eq!(late.elapsed(), Duration::ZERO);
        assert_eq!(*log.lock().unwrap(), vec![2, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_arrival_restarts_the_wait_and_keeps_order() {
        let order = Arc::new(BatchOrder::new());
        let log = Arc::new(Mutex::new(Vec::new()));
        let third = tokio::spawn(run_batch(order.clone(), log.clone(), 3, Duration::ZERO));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // 1 and 2 arrive just before 3 would give up; 1 then commits for 10 s.
        let first = tokio::spawn(run_batch(
            order.clone(),
            log.clone(),
            1,
            Duration::from_secs(10),
        ));
        let second = tokio::spawn(run_batch(order.clone(), log.clone(), 2, Duration::ZERO));
        for t in [third, first, second] {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_wait_does_not_block_later_batches() {
        let order = Arc::new(BatchOrder::new());
        let count = Arc::new(AtomicUsize::new(0));
        // Batch 2 arrives and its request is dropped while waiting for the missing batch 1.
        let abandoned = {
            let order = order.clone();
            tokio::spawn(async move {
                let _turn = order.wait_turn(2).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        abandoned.abort();
        let _ = abandoned.await;
        let started = tokio::time::Instant::now();
        let c = count.clone();
        let turn = order.wait_turn(3).await;
        c.fetch_add(1, Ordering::SeqCst);
        drop(turn);
        // Dropping batch 2's wait gave up on batch 1 as a timeout would have, so batch 3 goes at once.
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
