//! The storage healer: while the agent database is failing (a full disk, an I/O error), re-open it about
//! every second (backing off to [`MAX_PAUSE`]) until a durable probe commit succeeds, then clear the failure so
//! `/healthz`, `/readyz` and decisions recover by themselves. See [`crate::db`] ("Healing") for why a
//! re-open is needed at all: redb latches the first failed write.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::AgentState;

/// Pause between checks while healthy, and the first pause after a failure.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Longest pause between heal attempts while the storage keeps failing.
pub const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Runs until `shutdown`: heals the agent database whenever it is marked failing.
pub(crate) async fn run(state: Arc<AgentState>, shutdown: CancellationToken) {
    let mut pause = CHECK_EVERY;
    let mut attempts = 0u64;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        if state.storage_error().is_none() {
            pause = CHECK_EVERY;
            attempts = 0;
            continue;
        }
        match state.heal_storage().await {
            Ok(()) => {
                pause = CHECK_EVERY;
                attempts = 0;
            }
            Err(error) => {
                attempts += 1;
                // Every attempt fails the same way while the disk is full: one line at the first, then sparse.
                if attempts.is_power_of_two() {
                    tracing::warn!(%error, attempts, "agent database storage still failing; will retry");
                } else {
                    tracing::debug!(%error, attempts, "agent database storage still failing");
                }
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}
