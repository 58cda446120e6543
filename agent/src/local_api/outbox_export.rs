//! `POST /v1/outbox/export`: the running agent seals the records waiting in its outbox into an outbox export
//! file (`gait-agent outbox export` asks it when the daemon holds the database), and the client side of it.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::{ApiError, AppState, Endpoint};
use crate::outbox_export::{self, ExportError};

/// Response header carrying how many waiting records did not fit into the file.
pub const REMAINING_HEADER: &str = "gait-outbox-remaining";

/// Request body: `{}` or `{"after_seq": N}` (records after seq N only, to continue a previous file).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    #[serde(default)]
    after_seq: u64,
}

/// 200 with the file bytes (`application/json`) and [`REMAINING_HEADER`]; 409 `outbox_empty`; 503
/// `agent_storage_error`; 500 when the certificate or key cannot sign; 400 for a bad body.
pub(super) async fn handle_export(State(state): State<AppState>, body: Bytes) -> Response {
    let request: ExportRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ExportRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return ApiError {
                    status: StatusCode::BAD_REQUEST,
                    code: "bad_request",
                    message: format!("body must be {{}} or {{\"after_seq\": N}}: {e}"),
                    field: Some("after_seq"),
                }
                .into_response();
            }
        }
    };
    let Some((cert, key)) = state.tls_files().cloned() else {
        return error(ExportError::Config(
            "this agent was started without its certificate files".into(),
        ));
    };
    let sealing = state.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        outbox_export::seal_from_outbox(
            sealing.outbox(),
            &cert,
            &key,
            request.after_seq,
            crate::state::now_unix_ms(),
        )
    })
    .await;
    match sealed {
        Ok(Ok(sealed)) => {
            tracing::info!(
                first_seq = sealed.summary.first_seq,
                last_seq = sealed.summary.last_seq,
                count = sealed.summary.count,
                bytes = sealed.summary.bytes,
                "outbox exported to a file"
            );
            let mut response = sealed.bytes.into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(REMAINING_HEADER, sealed.summary.remaining.into());
            response
        }
        Ok(Err(e)) => error(e),
        Err(e) => error(ExportError::Storage(e.to_string())),
    }
}

fn error(e: ExportError) -> Response {
    let status = match &e {
        ExportError::Empty { .. } => StatusCode::CONFLICT,
        ExportError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "outbox export failed");
    }
    ApiError {
        status,
        code: e.api_code(),
        message: e.to_string(),
        field: None,
    }
    .into_response()
}

/// Asks a running agent's `POST /v1/outbox/export` for an export of the records after `after_seq` (`token`:
/// the bearer token, needed on TCP). The outer error is the transport's; the inner one the agent's error
/// code and message. On success: the file bytes and how many records did not fit.
pub async fn request_export(
    endpoint: &Endpoint,
    token: Option<&str>,
    after_seq: u64,
    timeout: Duration,
) -> Result<Result<(Vec<u8>, u64), (String, String)>, reqwest::Error> {
    let (client, base) = endpoint.client(timeout)?;
    let mut request = client
        .post(format!("{base}/v1/outbox/export"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(serde_json::json!({ "after_seq": after_seq }).to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    if status.is_success() {
        let remaining = response
            .headers()
            .get(REMAINING_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return Ok(Ok((response.bytes().await?.to_vec(), remaining)));
    }
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the agent answered {status}"));
    Ok(Err((code, message)))
}
