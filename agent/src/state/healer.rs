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

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock
    use super::*;
    use crate::db::AgentDb;
    use crate::outbox::{Outbox, OutboxLimits};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    async fn state(dir: &std::path::Path) -> Arc<AgentState> {
        let db = AgentDb::open(dir.join("agent.redb")).expect("db");
        let outbox = Outbox::open(&db, OutboxLimits::default()).expect("outbox");
        let identity = crate::identity::AgentIdentity::from_uri(
            "spiffe://fleet.example/org/acme/project/pay/env/prod/agent/a-1",
        )
        .expect("identity");
        let gate = crate::gate::engine::GateEngine::open(dir, None).expect("gate");
        AgentState::open(
            identity,
            "127.0.0.1:7443".into(),
            db,
            outbox,
            gait_bundle::TrustRoot::from_public_keys(Vec::new()),
            Arc::new(gate),
        )
        .await
        .expect("state")
    }

    async fn call(state: &Arc<AgentState>, method: &str, uri: &str) -> (StatusCode, String) {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1");
        let body = if method == "POST" {
            request = request.header("content-type", "application/json");
            Body::from(include_str!("../../../examples/intents/read-report.json"))
        } else {
            Body::empty()
        };
        let response = crate::local_api::router(state.clone())
            .oneshot(request.body(body).expect("request"))
            .await
            .expect("answer");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_storage_answers_503_storage_failing_everywhere_and_the_healer_recovers_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state(dir.path()).await;
        let (status, _) = call(&state, "POST", "/v1/gate/evaluate").await;
        assert_eq!(status, StatusCode::OK, "a healthy agent decides");

        // The database fails as a full disk leaves it: closed until re-opened. A decision does not touch the
        // database (its record is durable in the outbox's log), so the failure shows once the outbox's applier
        // tries to write the record there; until then a decision is answered through the log.
        state.db.close_for_test();
        let (status, body) = call(&state, "POST", "/v1/gate/evaluate").await;
        let answered_while_failing = u64::from(status == StatusCode::OK);
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "{body}"
        );
        gait_testkit::wait_until("the storage failure noticed", || {
            state.storage_error().is_some()
        })
        .await
        .expect("the failure was never noticed");
        let (status, body) = call(&state, "POST", "/v1/gate/evaluate").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("\"storage_failing\""), "{body}");
        let (status, body) = call(&state, "GET", "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("storage_failing"), "{body}");
        let (status, body) = call(&state, "GET", "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("storage failing"), "{body}");
        let (_, metrics) = call(&state, "GET", "/metrics").await;
        assert!(
            metrics.contains("\ngait_agent_storage_failing 1\n"),
            "{metrics}"
        );

        let shutdown = CancellationToken::new();
        let healer = tokio::spawn(run(state.clone(), shutdown.clone()));
        gait_testkit::wait_until("the storage healed", || state.storage_error().is_none())
            .await
            .expect("the healer never healed the storage");
        let (status, body) = call(&state, "GET", "/healthz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = call(&state, "POST", "/v1/gate/evaluate").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "decisions resume by themselves: {body}"
        );
        let (_, metrics) = call(&state, "GET", "/metrics").await;
        assert!(
            metrics.contains("\ngait_agent_storage_failing 0\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("\ngait_agent_storage_reopens_total 1\n"),
            "{metrics}"
        );
        assert_eq!(
            state.outbox().stats().last_seq,
            2 + answered_while_failing,
            "every answered decision is in the outbox"
        );
        assert_eq!(
            state.outbox().verify_chain().expect("chain").records,
            2 + answered_while_failing,
            "and in the database, the one answered through the log while it failed too"
        );
        shutdown.cancel();
        healer.await.expect("healer");
    }
}
