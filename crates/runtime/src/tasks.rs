//! Owned tasks: nothing is fire-and-forget. Every long-lived task is spawned through [`Tasks`], which tracks it
//! for the shutdown drain; an *essential* task (a server, the ingest endpoint, the outbox committer) that fails,
//! panics or ends before shutdown was requested cancels the root token and marks the process failed, so it exits
//! 1 instead of running on half alive.

use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::exit;

/// The process's task owner: a tracker for the drain, the root shutdown token, and the first essential failure.
#[derive(Clone, Debug)]
pub struct Tasks {
    tracker: TaskTracker,
    root: CancellationToken,
    failure: Arc<Mutex<Option<String>>>,
}

/// How a drain ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drain {
    /// Every tracked task finished within the grace period.
    pub clean: bool,
    /// The first essential task failure (`"<task>: <error>"`), if any.
    pub failure: Option<String>,
}

impl Drain {
    /// 0 after a clean drain with no failure, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.clean && self.failure.is_none() {
            exit::OK
        } else {
            exit::FAILURE
        }
    }
}

impl Tasks {
    /// Tasks under `root`: cancelling it asks every task to stop.
    pub fn new(root: CancellationToken) -> Self {
        Self {
            tracker: TaskTracker::new(),
            root,
            failure: Arc::new(Mutex::new(None)),
        }
    }

    /// The root shutdown token.
    pub fn token(&self) -> &CancellationToken {
        &self.root
    }

    /// The first essential task failure so far.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Spawns a tracked task that may end on its own (a per-connection handler, a one-off job).
    #[allow(clippy::disallowed_methods)] // the one place tasks are spawned
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = tokio::spawn(task);
        self.tracker.spawn(async move {
            if let Err(e) = inner.await
                && e.is_panic()
            {
                tracing::error!(task = name, "task panicked");
            }
        });
    }

    /// Spawns a tracked task whose result the caller awaits (a per-connection loop, one request in flight).
    /// Dropping the handle aborts the task, so a caller that goes away leaves nothing running; the drain still
    /// waits for it like any other task.
    pub fn spawn_owned<F>(&self, task: F) -> AbortOnDropHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        AbortOnDropHandle::new(self.tracker.spawn(task))
    }

    /// Spawns a tracked essential task. If it returns an error, panics, or returns before the root token was
    /// cancelled, the failure is recorded, logged at ERROR, and the root token is cancelled (the process then
    /// drains and exits 1).
    #[allow(clippy::disallowed_methods)] // the one place tasks are spawned
    pub fn spawn_essential<F, E>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let inner = tokio::spawn(task);
        let root = self.root.clone();
        let failure = Arc::clone(&self.failure);
        self.tracker.spawn(async move {
            let reason = match inner.await {
                Ok(Ok(())) if root.is_cancelled() => return,
                Ok(Ok(())) => "ended before shutdown was requested".to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(e) if e.is_panic() => "panicked".to_owned(),
                Err(_) => "was cancelled".to_owned(),
            };
            tracing::error!(task = name, reason = %reason, "essential task failed; stopping the process");
            failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(|| format!("{name}: {reason}"));
            root.cancel();
        });
    }

    /// Waits for the root token, then for every tracked task, at most `grace` after the token was cancelled.
    pub async fn wait(&self, grace: Duration) -> Drain {
        self.root.cancelled().await;
        self.drain(grace).await
    }

    /// Stops accepting the idea of new work and waits up to `grace` for every tracked task to finish.
    pub async fn drain(&self, grace: Duration) -> Drain {
        self.tracker.close();
        let clean = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if clean {
            tracing::info!("all tasks stopped");
        } else {
            tracing::warn!(
                still_running = self.tracker.len(),
                grace_ms = grace.as_millis() as u64,
                "tasks still running after the grace period"
            );
        }
        Drain {
            clean,
            failure: self.failure(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_essential_task_cancels_the_root_and_fails_the_drain() {
        let tasks = Tasks::new(CancellationToken::new());
        let token = tasks.token().clone();
        let watcher = tasks.clone();
        tasks.spawn("watcher", async move { token.cancelled().await });
        tasks.spawn_essential("server", async { Err::<(), _>("bind failed") });
        let drain = watcher.wait(Duration::from_secs(30)).await;
        assert!(drain.clean);
        assert_eq!(drain.failure.as_deref(), Some("server: bind failed"));
        assert_eq!(drain.exit_code(), 1);
    }

    #[tokio::test]
    async fn a_panicking_essential_task_is_a_failure() {
        let tasks = Tasks::new(CancellationToken::new());
        let explode = std::hint::black_box(true);
        tasks.spawn_essential("committer", async move {
            if explode {
                panic!("boom");
            }
            Ok::<(), String>(())
        });
        let drain = tasks.wait(Duration::from_secs(30)).await;
        assert_eq!(drain.failure.as_deref(), Some("committer: panicked"));
    }

    #[tokio::test]
    async fn an_essential_task_ending_early_is_a_failure_but_ending_after_shutdown_is_not() {
        let tasks = Tasks::new(CancellationToken::new());
        tasks.spawn_essential("http", async { Ok::<(), String>(()) });
        let drain = tasks.wait(Duration::from_secs(30)).await;
        assert_eq!(
            drain.failure.as_deref(),
            Some("http: ended before shutdown was requested")
        );

        let tasks = Tasks::new(CancellationToken::new());
        let token = tasks.token().clone();
        tasks.spawn_essential("http", async move {
            token.cancelled().await;
            Ok::<(), String>(())
        });
        tasks.token().cancel();
        let drain = tasks.wait(Duration::from_secs(30)).await;
        assert_eq!(
            drain,
            Drain {
                clean: true,
                failure: None
            }
        );
        assert_eq!(drain.exit_code(), 0);
    }

    #[tokio::test]
    async fn an_owned_task_returns_its_result_and_is_aborted_when_its_handle_is_dropped() {
        let tasks = Tasks::new(CancellationToken::new());
        assert_eq!(tasks.spawn_owned(async { 7 }).await.ok(), Some(7));

        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tasks.spawn_owned(async move {
            let _keep = tx;
            std::future::pending::<()>().await
        });
        drop(handle);
        // The sender is dropped with the aborted task, so the receiver sees the channel close.
        assert!(rx.await.is_err());
        tasks.token().cancel();
        let drain = tasks.wait(Duration::from_secs(30)).await;
        assert_eq!(drain.exit_code(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ignores_shutdown_makes_the_drain_unclean_after_the_grace_period() {
        let tasks = Tasks::new(CancellationToken::new());
        tasks.spawn("stuck", std::future::pending());
        tasks.token().cancel();
        let drain = tasks.wait(Duration::from_secs(5)).await;
        assert!(!drain.clean);
        assert_eq!(drain.exit_code(), 1);
    }
}
