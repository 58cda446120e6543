//! Liveness, readiness, Prometheus metrics and the OpenAPI document.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{AppState, OPENAPI_JSON};

pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(Duration::from_secs(2), state.fleet.ping()).await {
        Ok(Ok(backend)) => Json(json!({"status": "ready", "store": backend})).into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "not_ready", "reason": "store unreachable"})),
            )
                .into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": "store timeout"})),
        )
            .into_response(),
    }
}

/// `GET /metrics`: OpenMetrics when the scraper asks for it (Prometheus does), the text format 0.0.4 otherwise.
pub(super) async fn render_metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) =
        gait_runtime::metrics::negotiate(state.metrics.render_openmetrics(), accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}
