//! The admin bearer-token gate in front of every `/v1` route.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::{ApiError, AppState};
use crate::metrics;

pub(super) async fn require_admin(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let reason = match presented {
        Some(token)
            if gait_runtime::http::constant_time_eq(
                state.admin_token.as_bytes(),
                token.as_bytes(),
            ) =>
        {
            return next.run(req).await;
        }
        Some(_) => "invalid",
        None => "missing",
    };
    metrics::inc_labelled(&state.metrics.auth_failures, "reason", reason);
    FAILURE_LOG.note(reason, req.method().as_str(), req.uri().path());
    match reason {
        "invalid" => ApiError::unauthorized("the bearer token is not valid").into_response(),
        _ => ApiError::unauthorized(
            "send `Authorization: Bearer <token>`; the admin token is in <data-dir>/admin.token",
        )
        .into_response(),
    }
}

/// Failed authentication is logged at WARN at most once per [`FAILURE_LOG_EVERY_MS`], with how many were
/// refused in between, so a client guessing tokens cannot flood the log; the metric counts every one.
static FAILURE_LOG: FailureLog = FailureLog {
    last_ms: AtomicI64::new(i64::MIN),
    suppressed: AtomicU64::new(0),
};

/// Shortest interval between two WARN lines about refused tokens.
pub const FAILURE_LOG_EVERY_MS: i64 = 10_000;

struct FailureLog {
    last_ms: AtomicI64,
    suppressed: AtomicU64,
}

impl FailureLog {
    fn note(&self, reason: &str, method: &str, path: &str) {
        let now = crate::clock::unix_ms();
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= FAILURE_LOG_EVERY_MS;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                reason,
                method,
                path,
                suppressed_since_last = suppressed,
                "HTTP API request refused: admin token {reason}"
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
