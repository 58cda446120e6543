//! The bearer-token gate in front of every `/v1` route: the admin token, or — when `auth.oidc` is configured —
//! an operator's JWT, verified by [`crate::auth::oidc`] and put into the request's extensions as an
//! [`OperatorIdentity`] (every route lets it through for now; RBAC will narrow that). A refused JWT is 401 with
//! its reason in the body (`error.reason`) and in `WWW-Authenticate` (RFC 6750).

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::{ApiError, AppState};
use crate::auth::oidc::{OperatorIdentity, TokenError};
use crate::metrics;

pub(super) async fn require_admin(
    State(state): State<AppState>,
    headers: HeaderMap,
    mut req: Request,
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
        Some(token) if let Some(oidc) = &state.oidc => match oidc.verify(token).await {
            Ok(identity) => {
                req.extensions_mut().insert::<OperatorIdentity>(identity);
                return next.run(req).await;
            }
            Err(error) => {
                metrics::inc_labelled(&state.metrics.auth_failures, "reason", error.reason());
                FAILURE_LOG.note(error.reason(), req.method().as_str(), req.uri().path());
                return token_refused(&error);
            }
        },
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

/// 401 for a refused operator token: the usual error shape plus `reason`, and the RFC 6750 challenge.
fn token_refused(error: &TokenError) -> Response {
    let body = json!({"error": {
        "code": "unauthorized",
        "reason": error.reason(),
        "message": error.to_string(),
    }});
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        error.reason()
    );
    let mut response = (axum::http::StatusCode::UNAUTHORIZED, Json(body)).into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
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
                "HTTP API request refused: bearer token {reason}"
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
