//! `POST /v1/artifacts` (Gait artifacts handed to the running agent by `gait-agent push`) and `GET /v1/outbox`
//! (how far the aggregator acknowledged the outbox, which push waits on), with their clients.
//!
//! `POST /v1/artifacts` body: `{"artifacts":[{"file_name":"gait-out/trace.json","content_base64":"…"}]}`, at
//! most [`MAX_FILES`] files and [`MAX_BODY_BYTES`] bytes. The daemon verifies each file and enqueues the valid
//! ones once by digest ([`crate::capture::import`], the same code the command runs when no daemon does), and
//! answers 200 `{"results":[…]}` with one [`FileResult`] per file in order — invalid files are results with
//! `status: "invalid"` and a `reason`, not an HTTP error. 400 for a malformed body, 413 over the size limit,
//! 503 `storage_failing`, 507 `outbox_full` (nothing of the request was stored).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use gait_artifact::evidence::ArtifactSource;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Endpoint};
use crate::capture::{FileResult, ImportError, Offered};

/// Most files in one `POST /v1/artifacts`.
pub const MAX_FILES: usize = 1_000;
/// Largest `POST /v1/artifacts` body: one artifact of the largest size, base64-encoded, plus the envelope.
pub const MAX_BODY_BYTES: usize =
    (crate::capture::MAX_ARTIFACT_BYTES as usize) / 3 * 4 + 1024 * 1024;
/// How long a client waits for one answer.
pub const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ArtifactsBody {
    artifacts: Vec<ArtifactFile>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ArtifactFile {
    file_name: String,
    content_base64: String,
}

#[derive(Debug, Deserialize, Serialize)]
struct ArtifactsAnswer {
    results: Vec<FileResult>,
}

/// `GET /v1/outbox`: the outbox's sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxProgress {
    /// Newest seq assigned (0: none).
    pub last_seq: u64,
    /// Every seq up to this one was committed by the aggregator (or quarantined after its refusal).
    pub acked_through: u64,
    /// Records waiting.
    pub depth: u64,
    /// Connected to the aggregator now.
    pub connected: bool,
    /// Artifacts whose bytes wait in the upload spool (`settings.upload_artifacts`); absent from older agents.
    #[serde(default)]
    pub uploads_pending: u64,
}

/// `POST /v1/artifacts`.
pub(super) async fn post_artifacts(State(state): State<AppState>, body: Bytes) -> Response {
    match handle(&state, &body).await {
        Ok(results) => Json(ArtifactsAnswer { results }).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn handle(state: &AppState, body: &[u8]) -> Result<Vec<FileResult>, ApiError> {
    let parsed: ArtifactsBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("body is not an artifacts request: {e}")))?;
    if parsed.artifacts.is_empty() {
        return Err(ApiError::bad("artifacts", "list at least one artifact"));
    }
    if parsed.artifacts.len() > MAX_FILES {
        return Err(ApiError::bad(
            "artifacts",
            format!(
                "{} artifacts in one request; at most {MAX_FILES}",
                parsed.artifacts.len()
            ),
        ));
    }
    let mut offered = Vec::with_capacity(parsed.artifacts.len());
    for (i, file) in parsed.artifacts.into_iter().enumerate() {
        if file.file_name.is_empty() || file.file_name.len() > 4096 {
            return Err(ApiError::bad(
                "file_name",
                format!("artifacts[{i}].file_name must be 1 to 4096 bytes"),
            ));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(file.content_base64.as_bytes())
            .map_err(|e| {
                ApiError::bad(
                    "content_base64",
                    format!("artifacts[{i}].content_base64 is not standard base64: {e}"),
                )
            })?;
        offered.push(Offered {
            name: file.file_name,
            bytes,
        });
    }
    let outcomes = crate::capture::import_into(state, offered, ArtifactSource::Push)
        .await
        .map_err(|e| match e {
            ImportError::Outbox(e) => ApiError::from(e),
            ImportError::Task(message) => {
                tracing::error!(error = %message, "artifact import failed");
                ApiError {
                    status: axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal",
                    message,
                    field: None,
                }
            }
        })?;
    Ok(outcomes
        .iter()
        .map(|(name, outcome)| outcome.to_result(name))
        .collect())
}

/// `GET /v1/outbox`.
pub(super) async fn get_outbox(State(state): State<AppState>) -> Json<OutboxProgress> {
    let stats = state.outbox().stats();
    let db = state.db().clone();
    let uploads_pending = tokio::task::spawn_blocking(move || crate::upload::pending(&db))
        .await
        .ok()
        .and_then(Result::ok)
        .map_or(0, |p| p.len() as u64);
    Json(OutboxProgress {
        last_seq: stats.last_seq,
        acked_through: stats.acked_through,
        depth: stats.depth,
        connected: state.is_connected(),
        uploads_pending,
    })
}

/// Sends `offered` to a running agent's `POST /v1/artifacts` (`token`: the bearer token, needed on TCP). The
/// outer error is the transport's; the inner one the agent's refusal as (code, message).
pub async fn post_artifacts_to(
    endpoint: &Endpoint,
    token: Option<&str>,
    offered: &[Offered],
    timeout: std::time::Duration,
) -> Result<Result<Vec<FileResult>, (String, String)>, reqwest::Error> {
    let (client, base) = endpoint.client(timeout)?;
    let body = ArtifactsBody {
        artifacts: offered
            .iter()
            .map(|o| ArtifactFile {
                file_name: o.name.clone(),
                content_base64: base64::engine::general_purpose::STANDARD.encode(&o.bytes),
            })
            .collect(),
    };
    let mut request = client
        .post(format!("{base}/v1/artifacts"))
        .header(header::CONTENT_TYPE, "application/json")
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    if status.is_success() {
        let answer: ArtifactsAnswer = response.json().await?;
        return Ok(Ok(answer.results));
    }
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the agent answered {status}"));
    Ok(Err((code, message)))
}

/// Fetches `GET /v1/outbox` from a running agent.
pub async fn fetch_outbox(
    endpoint: &Endpoint,
    timeout: std::time::Duration,
) -> Result<OutboxProgress, reqwest::Error> {
    let (client, base) = endpoint.client(timeout)?;
    client
        .get(format!("{base}/v1/outbox"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::{Value, json};
    use tower::ServiceExt as _;

    use super::*;
    use crate::db::AgentDb;
    use crate::outbox::{Outbox, OutboxLimits};
    use crate::state::AgentState;

    const TRACE: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/artifacts/trace_endpoint_allow.json"
    ));
    const GAIT_PUBLIC_KEY: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/artifacts/gait_public.key"
    ));

    async fn state(dir: &std::path::Path) -> Arc<AgentState> {
        let db = AgentDb::open(dir.join("agent.redb")).expect("db");
        let outbox = Outbox::open(&db, OutboxLimits::default()).expect("outbox");
        let identity = crate::identity::AgentIdentity::from_uri(
            "spiffe://fleet.example/org/acme/project/pay/env/prod/agent/a-1",
        )
        .expect("identity");
        let gate = crate::gate::engine::GateEngine::open(dir, None).expect("gate");
        let state = AgentState::open(
            identity,
            "127.0.0.1:7443".into(),
            db,
            outbox,
            gait_bundle::TrustRoot::from_public_keys(Vec::new()),
            Arc::new(gate),
        )
        .await
        .expect("state");
        let key =
            gait_canon::sign::PublicKey::from_gait_public_key(GAIT_PUBLIC_KEY.trim()).expect("key");
        state.attach_trace_keys(Arc::new(crate::capture::TraceKeys::new([key])));
        state
    }

    async fn call(
        state: &Arc<AgentState>,
        method: &str,
        uri: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        let response = super::super::router(state.clone())
            .oneshot(request)
            .await
            .expect("answer");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    fn file(name: &str, bytes: &[u8]) -> Value {
        json!({
            "file_name": name,
            "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes),
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn artifacts_are_verified_enqueued_once_and_reported_per_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state(dir.path()).await;
        let body = json!({"artifacts": [
            file("ci/trace.json", TRACE),
            file("ci/broken.json", b"{\"schema_id\": \"gait.gate.trace\""),
        ]});
        let (status, answer) = call(
            &state,
            "POST",
            "/v1/artifacts",
            body.to_string().into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let results = answer["results"].as_array().expect("results");
        assert_eq!(results[0]["status"], "enqueued", "{answer}");
        assert_eq!(results[0]["signature_status"], "verified", "{answer}");
        assert_eq!(results[0]["kind"], "trace");
        assert_eq!(results[1]["status"], "invalid");
        assert!(
            results[1]["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("bad json at line 1")),
            "{answer}"
        );
        let seq = results[0]["seq"].as_u64().expect("seq");

        let again = json!({"artifacts": [file("other-name.json", TRACE)]});
        let (_, answer) = call(
            &state,
            "POST",
            "/v1/artifacts",
            again.to_string().into_bytes(),
        )
        .await;
        assert_eq!(answer["results"][0]["status"], "duplicate", "{answer}");
        assert_eq!(answer["results"][0]["seq"], seq);

        let (status, progress) = call(&state, "GET", "/v1/outbox", Vec::new()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (
                progress["last_seq"].as_u64(),
                progress["acked_through"].as_u64()
            ),
            (Some(seq), Some(0)),
            "{progress}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_or_oversized_requests_get_a_4xx_with_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = state(dir.path()).await;
        for (body, field) in [
            (b"not json".to_vec(), "body"),
            (br#"{"artifacts": []}"#.to_vec(), "artifacts"),
            (br#"{"artifacts": [], "extra": 1}"#.to_vec(), "body"),
            (
                br#"{"artifacts": [{"file_name": "a.json", "content_base64": "!!"}]}"#.to_vec(),
                "content_base64",
            ),
            (
                br#"{"artifacts": [{"file_name": "", "content_base64": ""}]}"#.to_vec(),
                "file_name",
            ),
        ] {
            let (status, answer) = call(&state, "POST", "/v1/artifacts", body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
            assert_eq!(answer["error"]["field"], field, "{answer}");
        }
        let too_many: Vec<Value> = (0..=MAX_FILES).map(|_| file("a.json", b"{}")).collect();
        let (status, answer) = call(
            &state,
            "POST",
            "/v1/artifacts",
            json!({ "artifacts": too_many }).to_string().into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        let (status, _) = call(
            &state,
            "POST",
            "/v1/artifacts",
            vec![b' '; MAX_BODY_BYTES + 1],
        )
        .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(state.outbox().stats().last_seq, 0, "nothing was enqueued");
    }
}
