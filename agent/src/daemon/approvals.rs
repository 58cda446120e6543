//! Fetching issued approvals: on each connection, `FetchApprovals` -> `Approvals` once a second while an
//! approval request raised by this agent waits upstream, and every [`IDLE_INTERVAL`] otherwise (a request
//! raised before a restart is still delivered). Delivered tokens go to the gate's approval store, where the
//! next decision of the same intent presents them to the pipeline. An aggregator that does not know the
//! exchange answers `Error(Unsupported)`; the loop then ends for this connection.

use std::sync::Arc;
use std::time::Duration;

use gait_runtime::Tasks;
use gait_wire::{AgentMsg, AgentMsgV2, ErrorCode, FetchApprovals, ServerMsg, ServerMsgV2};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::AgentState;
use super::exchange;
use super::session::REPLY_TIMEOUT;
use crate::state::now_unix_ms;

/// Pause between fetches while a request waits.
pub(crate) const FETCH_INTERVAL: Duration = Duration::from_secs(1);
/// Pause between fetches while none waits.
pub(crate) const IDLE_INTERVAL: Duration = Duration::from_secs(30);

/// Runs the fetch loop of one connection until `token` is cancelled (or the handle is dropped).
pub(super) fn spawn_fetch_loop(
    tasks: &Tasks,
    state: Arc<AgentState>,
    conn: quinn::Connection,
    token: CancellationToken,
) -> AbortOnDropHandle<()> {
    tasks.spawn_owned(async move { fetch_loop(state, conn, token).await })
}

async fn fetch_loop(state: Arc<AgentState>, conn: quinn::Connection, token: CancellationToken) {
    let approvals = state.gate().approvals();
    // Each sweep pages through every approval still valid (ids ascending, a full page continues after its last
    // id), so a request approved after a newer one was delivered is still picked up; tokens already stored are
    // skipped by name.
    let mut cursor = 0u64;
    loop {
        let msg = AgentMsg::V2(AgentMsgV2::FetchApprovals(FetchApprovals {
            after_request_id: cursor,
        }));
        let reply = tokio::select! {
            r = exchange::request(&conn, &msg, REPLY_TIMEOUT) => r,
            _ = token.cancelled() => return,
        };
        match reply {
            Ok(ServerMsg::V2(ServerMsgV2::Approvals(delivery))) => {
                let full = delivery.approvals.len() >= gait_wire::approval::MAX_DELIVERED_APPROVALS;
                cursor = match delivery.approvals.last() {
                    Some(last) if full => last.request_id,
                    _ => 0,
                };
                for approval in &delivery.approvals {
                    match approvals.store(approval) {
                        Ok(0) => {}
                        Ok(new) => tracing::info!(request = approval.request_id,
                            intent_digest = %approval.intent_digest, tokens = new, "approval received"),
                        Err(e) => tracing::error!(request = approval.request_id, error = %e,
                            "approval tokens could not be stored; asking again"),
                    }
                }
                if cursor != 0 {
                    continue;
                }
            }
            Ok(ServerMsg::V2(ServerMsgV2::Error(e))) if e.code == ErrorCode::Unsupported => {
                tracing::info!(message = %e.message, "the aggregator does not deliver approvals");
                return;
            }
            Ok(ServerMsg::V2(ServerMsgV2::Error(e))) => {
                tracing::debug!(code = %e.code, message = %e.message, "approval fetch refused; retrying");
            }
            Ok(_) => {
                tracing::warn!(
                    "unexpected reply to FetchApprovals; approvals are not fetched on this connection"
                );
                return;
            }
            Err(e) => {
                // The session notices a lost connection; this loop just stops asking.
                tracing::debug!(error = %e, "approval fetch failed");
                return;
            }
        }
        let pause = if approvals.outstanding(now_unix_ms()) {
            FETCH_INTERVAL
        } else {
            IDLE_INTERVAL
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = approvals.raised() => {
                // Give the request's record a moment to ship before asking.
                tokio::select! {
                    _ = tokio::time::sleep(FETCH_INTERVAL) => {}
                    _ = token.cancelled() => return,
                }
            }
            _ = token.cancelled() => return,
        }
    }
}
