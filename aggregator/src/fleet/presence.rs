//! Agent presence writes, group-committed.
//!
//! Every connection starts with a `Hello` that upserts the agent's row and reads back its cursor, and every
//! active agent refreshes its `last_seen` every minute ([`SEEN_REFRESH`]). One transaction each is fine for a handful of
//! agents, but when a whole fleet reconnects after an aggregator restart, 10,000 hellos arrive within seconds:
//! on SQLite each would cost a commit (an fsync with `synchronous=FULL`) and a turn at the single writer, and
//! on PostgreSQL a pool connection each. This module funnels them through one writer task instead:
//!
//! - hellos queue on a bounded channel; the writer takes every hello waiting (up to [`MAX_GROUP`]) and writes
//!   them in one transaction, then answers each caller with its own cursor or error. While it writes, the next
//!   group queues, so the group size follows the load on its own, and a lone hello is written at once.
//! - last-seen refreshes are advisory: they are coalesced per agent and flushed every [`SEEN_FLUSH`]. When the
//!   queue is full a refresh is dropped (the agent sends another a few seconds later); a hello never is.
//!
//! A hello is acknowledged (`Welcome`) only after its row is committed, as before.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use gait_store::{AgentCursor, AgentHello, AgentKey, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::clock::unix_ms;
use crate::metrics::Metrics;

/// Most hellos written in one transaction.
pub const MAX_GROUP: usize = 512;
/// How often coalesced last-seen refreshes are written.
pub const SEEN_FLUSH: Duration = Duration::from_secs(1);
/// Least time between two last-seen refreshes of one connected agent. A refresh rides on a finished request, so an
/// idle agent's next one comes with its first long-poll renewal after this (at most [`crate::ingest::MAX_POLL_WAIT`]
/// later) and is written within [`SEEN_FLUSH`]: together well inside the time after which the inventory calls an
/// agent stale, so a connected agent never looks stale, while an idle fleet of 50,000 writes ~1,000 rows a second
/// rather than the 2,000 a refresh at every renewal cost (docs/benchmarks.md).
pub const SEEN_REFRESH: Duration = Duration::from_secs(45);
const _: () = assert!(
    (SEEN_REFRESH.as_millis()
        + crate::ingest::MAX_POLL_WAIT.as_millis()
        + 2 * SEEN_FLUSH.as_millis())
        < super::inventory::STALE_AFTER_MS as u128
);
/// Requests that may wait for the writer.
const QUEUE: usize = 16 * 1024;

enum Request {
    Hello {
        key: AgentKey,
        hello: AgentHello,
        reply: oneshot::Sender<Result<AgentCursor, Arc<StoreError>>>,
    },
    Seen(AgentKey),
}

/// Why a hello could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("presence writer stopped")]
    Stopped,
}

/// Handle to the presence writer; cheap to clone. The writer stops once every handle is dropped, after
/// flushing what is queued.
#[derive(Clone)]
pub struct Presence {
    tx: mpsc::Sender<Request>,
}

impl Presence {
    /// Start the writer as an essential task of `tasks` (a writer that panics stops the process).
    pub fn spawn(store: Store, metrics: Arc<Metrics>, tasks: &gait_runtime::Tasks) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tasks.spawn_essential("presence-writer", async move {
            run(store, metrics, rx).await;
            Ok::<(), std::convert::Infallible>(())
        });
        Self { tx }
    }

    /// Upsert the agent's row from its hello (group-committed) and return its cursor.
    pub async fn connected(
        &self,
        key: AgentKey,
        hello: AgentHello,
    ) -> Result<AgentCursor, PresenceError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Hello { key, hello, reply })
            .await
            .map_err(|_| PresenceError::Stopped)?;
        answer
            .await
            .map_err(|_| PresenceError::Stopped)?
            .map_err(PresenceError::Store)
    }

    /// Note that the agent was seen now; written within [`SEEN_FLUSH`], or dropped under overload (`false`: the
    /// caller should try again at its next request rather than wait a whole [`SEEN_REFRESH`]).
    pub fn seen(&self, key: &AgentKey) -> bool {
        if self.tx.try_send(Request::Seen(key.clone())).is_err() {
            debug!(agent = %key, "presence queue full; last-seen refresh dropped");
            return false;
        }
        true
    }
}

async fn run(store: Store, metrics: Arc<Metrics>, mut rx: mpsc::Receiver<Request>) {
    let mut seen: HashSet<AgentKey> = HashSet::new();
    let mut tick = tokio::time::interval(SEEN_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            request = rx.recv() => {
                let Some(first) = request else { break };
                let mut hellos = Vec::new();
                sort(first, &mut hellos, &mut seen);
                while hellos.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(request) => sort(request, &mut hellos, &mut seen),
                        Err(_) => break,
                    }
                }
                if !hellos.is_empty() {
                    write_hellos(&store, &metrics, hellos).await;
                }
            }
            _ = tick.tick() => flush_seen(&store, &metrics, &mut seen).await,
        }
    }
    flush_seen(&store, &metrics, &mut seen).await;
}

type PendingHello = (
    AgentKey,
    AgentHello,
    oneshot::Sender<Result<AgentCursor, Arc<StoreError>>>,
);

fn sort(request: Request, hellos: &mut Vec<PendingHello>, seen: &mut HashSet<AgentKey>) {
    match request {
        Request::Hello { key, hello, reply } => hellos.push((key, hello, reply)),
        Request::Seen(key) => {
            seen.insert(key);
        }
    }
}

async fn write_hellos(store: &Store, metrics: &Metrics, hellos: Vec<PendingHello>) {
    let batch: Vec<(&AgentKey, &AgentHello)> = hellos.iter().map(|(k, h, _)| (k, h)).collect();
    let outcome = store.agents_connected(&batch, unix_ms()).await;
    drop(batch);
    metrics.presence_commits.inc();
    match outcome {
        Ok(results) => {
            for ((_, _, reply), result) in hellos.into_iter().zip(results) {
                let _ = reply.send(result.map_err(Arc::new));
            }
        }
        Err(e) => {
            warn!(error = %e, hellos = hellos.len(), "agent hellos could not be written; agents will retry");
            let e = Arc::new(e);
            for (_, _, reply) in hellos {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

async fn flush_seen(store: &Store, metrics: &Metrics, seen: &mut HashSet<AgentKey>) {
    if seen.is_empty() {
        return;
    }
    let keys: Vec<&AgentKey> = seen.iter().collect();
    let result = store.agents_seen(&keys, unix_ms()).await;
    drop(keys);
    metrics.presence_commits.inc();
    match result {
        Ok(_) => seen.clear(),
        // Kept for the next flush; the set is bounded by the number of connected agents.
        Err(e) => debug!(error = %e, agents = seen.len(), "last-seen refresh failed; retrying"),
    }
}
