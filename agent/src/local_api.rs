//! The loopback HTTP API of a running agent (axum, 127.0.0.1 only): producers append records, operators and
//! `gait-agent status` read the agent's state, Prometheus scrapes its counters.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/status` | [`StatusReport`] as JSON |
//! | `POST /v1/records` | body `{"class":"block","kind":"app.decision","payload":{...}}`; the record is durable before the answer `{"seq":N}` (or `{"shed":true}` for a shed `allow` record). Kinds starting `gate.`, `bundle.`, `approval.`, `artifact.` or `agent.` are the agent's own and refused (403 `kind_reserved`). The stored payload gains `appended_by` (see below) |
//! | `POST /v1/gate/evaluate` | body: a Gait intent request, or `{"intent":{…},"approval_tokens":[…],"delegation_tokens":[…]}` with Gait tokens presented for it (judged as `gait gate eval` does, with the keys of the bundle in force); query `policy=<file>` (when the bundle holds several) and `simulate=true` (refused, 403 `simulate_not_allowed`, unless the bundle in force allows it). Decides locally from the verified bundle in force, signs the trace, records the decision durably, then answers [`GateResponse`](crate::gate::engine::GateResponse) (HTTP 200 for every verdict) |
//! | `POST /v1/bundle/import` | body: a signed bundle document (`gait-agent bundle import FILE`); verified exactly as an offer from the aggregator (trust root, scope, expiry, an epoch newer than the active one) and activated; 200 `{"epoch","digest","previous_epoch","since_unix_ms"}`, 422 with the `gait_bundle` refusal code (e.g. `bundle_epoch_stale`), 503 `agent_storage_error` |
//! | `POST /v1/artifacts` | body `{"artifacts":[{"file_name","content_base64"}]}` (`gait-agent push`): each Gait artifact verified and, when valid, enqueued once by digest as an `artifact.*` record; 200 `{"results":[…]}` per file (see [`artifacts`]) |
//! | `GET /v1/outbox` | `{"last_seq","acked_through","depth","connected"}`: how far the aggregator committed the outbox |
//! | `POST /v1/outbox/export` | body `{}` or `{"after_seq":N}`; the records waiting in the outbox (after seq N), sealed into an outbox export file signed with the agent's key (`gait-agent outbox export`, format `gait_wire::export`); 200 with the file (`application/json`) and header `gait-outbox-remaining` (records that did not fit), 409 `outbox_empty`, 503 `agent_storage_error`. Nothing leaves the outbox |
//! | `GET /healthz` | `ok`, or 503 `storage_failing` while durable appends fail |
//! | `GET /readyz` | 200 `{"ready":true,…}` when decisions can be answered from a policy; 503 with `not_ready` reasons otherwise |
//! | `GET /metrics` | Prometheus metrics (OpenMetrics when asked for, else text format 0.0.4) |
//!
//! Errors have one shape: `{"error":{"code":"bad_request","message":"...","field":"class"}}` (`field` only
//! when one input field is at fault). Codes: `bad_request` (400), `unauthorized` (401), `host_not_allowed`,
//! `origin_not_allowed`, `kind_reserved`, `simulate_not_allowed` (403), `payload_too_large` (413),
//! `unsupported_media_type` (415), `outbox_full` (507: nothing was stored, retry later or fail closed),
//! `storage_failing` (503: the storage under the agent fails, e.g. a full disk; nothing was recorded, retry
//! later or fail closed), `internal` (500).
//!
//! Two transports serve the same routes: a Unix socket ([`socket`], the primary one: the socket file's mode and
//! group are the credential) and loopback TCP, where appending and deciding need the bearer token ([`token`]).
//! Every request passes [`guard`] first: an `Origin` header is refused with 403, a `POST` without
//! `Content-Type: application/json` with 415, and on TCP a non-loopback `Host` with 403, so a web page in a
//! browser on the host cannot use the API (DNS rebinding, cross-site simple requests).
//!
//! Attribution: every producer record's payload carries `appended_by`, the credential that appended it —
//! `{"transport":"unix","uid":U,"pid":P}` on the socket, `{"transport":"tcp","token_id":"<8 hex>"}` on TCP
//! (the first 8 hex digits of the token's SHA-256, never the token) — and every decision record carries the
//! same object as `requested_by`. A producer payload that sets `appended_by` itself is refused (400).

pub mod artifacts;
pub mod decision_metrics;
pub mod evaluate;
pub mod guard;
pub mod outbox_export;
pub mod socket;
pub mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gait_runtime::http::Peer;
use gait_wire::RecordClass;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::gate::engine::{DecisionError, GateRequest};
use crate::gate::tokens::{self, MAX_PRESENTED_TOKENS, PresentedTokens, TokenDecodeError};
use crate::outbox::{AppendOutcome, MAX_PAYLOAD_BYTES, OutboxError};
use crate::state::{AgentState, StatusReport};
use evaluate::EvaluateError;

/// State shared by the handlers.
pub type AppState = Arc<AgentState>;

/// Longest `kind` accepted here, in bytes. The aggregator refuses a batch holding a longer kind, so such a
/// record would block delivery of everything after it; it is refused before it gets a seq instead.
pub const MAX_KIND_LEN: usize = gait_wire::limits::MAX_KIND_BYTES;

/// Largest request body: a maximal payload plus room for JSON escaping and the envelope.
const MAX_BODY_BYTES: usize = 2 * MAX_PAYLOAD_BYTES + 64 * 1024;

/// Largest `POST /v1/bundle/import` body: the largest bundle `gait_bundle::verify` accepts.
const MAX_IMPORT_BODY_BYTES: usize = gait_bundle::MAX_BUNDLE_LEN;

/// Metric names (Prometheus text format).
pub mod metric {
    /// Records waiting in the outbox.
    pub const OUTBOX_DEPTH: &str = "gait_agent_outbox_depth";
    /// Bytes of records waiting in the outbox.
    pub const OUTBOX_BYTES: &str = "gait_agent_outbox_bytes";
    /// `allow` records shed since the outbox was created.
    pub const OUTBOX_SHED: &str = "gait_agent_outbox_shed_total";
    /// Records answered through the outbox's write-ahead log that the agent database does not hold yet.
    pub const OUTBOX_UNAPPLIED: &str = "gait_agent_outbox_unapplied_records";
    /// Epoch of the active bundle (0 = none).
    pub const BUNDLE_EPOCH: &str = "gait_agent_bundle_epoch";
    /// Offered bundles refused since start.
    pub const BUNDLE_REFUSALS: &str = "gait_agent_bundle_refusals_total";
    /// 1 while connected to the aggregator.
    pub const CONNECTED: &str = "gait_agent_connected";
    /// Reconnect attempts since start.
    pub const RECONNECTS: &str = "gait_agent_reconnects_total";
    /// 1 when the active bundle is older than its `max_offline_seconds`.
    pub const STALE: &str = "gait_agent_stale";
    /// Local API connections refused at the connection cap.
    pub const HTTP_CONNECTIONS_REFUSED: &str = "gait_agent_http_connections_refused_total";
    /// Idle local API connections closed to admit a new one at the connection cap.
    pub const HTTP_CONNECTIONS_EVICTED: &str = "gait_agent_http_connections_evicted_total";
    /// Local API connections open now.
    pub const HTTP_CONNECTIONS_OPEN: &str = "gait_agent_http_connections_open";
    /// Unreadable rate-limit state files set aside since start.
    pub const RATE_LIMIT_STATE_RESETS: &str = "gait_agent_rate_limit_state_resets_total";
    /// Rate-limit counters held after the last decision.
    pub const RATE_LIMIT_KEYS: &str = "gait_agent_rate_limit_keys";
    /// Rate-limit counters below their limit evicted to make room for new ones since start.
    pub const RATE_LIMIT_KEYS_EVICTED: &str = "gait_agent_rate_limit_keys_evicted_total";
    /// New rate-limit counters refused (requests blocked) because every counter was at its limit, since start.
    pub const RATE_LIMIT_KEYS_REFUSED: &str = "gait_agent_rate_limit_keys_refused_total";
    /// 1 while the agent's storage fails (decisions answer 503 `storage_failing`).
    pub const STORAGE_FAILING: &str = "gait_agent_storage_failing";
    /// Agent database operations that failed on storage since start.
    pub const STORAGE_ERRORS: &str = "gait_agent_storage_errors_total";
    /// Times the agent database was re-opened after a storage failure since start.
    pub const STORAGE_REOPENS: &str = "gait_agent_storage_reopens_total";
    /// notAfter of the agent's certificate, Unix seconds.
    pub const CERTIFICATE_EXPIRY: &str = "gait_agent_certificate_expiry_timestamp_seconds";
    /// Seconds left until the agent's certificate expires (negative once expired; renewal follows it).
    pub const CERTIFICATE_EXPIRY_SECONDS: &str = "gait_agent_certificate_expiry_seconds";
    /// End of the last successful exchange with the aggregator, Unix seconds (0: never).
    pub const LAST_CONTACT: &str = "gait_agent_last_contact_timestamp_seconds";
    /// When the bundle in force was activated, Unix seconds (0: none).
    pub const BUNDLE_ACTIVATED: &str = "gait_agent_bundle_activated_timestamp_seconds";
    /// The running build (`version` label, always 1).
    pub const BUILD_INFO: &str = "gait_agent_build_info";
    /// Decisions answered, by `verdict` (every verdict present from start).
    pub const DECISIONS: &str = "gait_agent_decisions_total";
    /// Histogram of whole decisions (decide, sign, record durably), seconds.
    pub const DECISION_DURATION: &str = "gait_agent_decision_duration_seconds";
    /// Histogram of durable outbox group commits, seconds.
    pub const OUTBOX_COMMIT_DURATION: &str = "gait_agent_outbox_commit_duration_seconds";
    /// Histogram of records per outbox group commit.
    pub const OUTBOX_COMMIT_RECORDS: &str = "gait_agent_outbox_commit_records";
    /// Outbox group commits by where they were made durable (`durable_in`: `log` or `database`).
    pub const OUTBOX_COMMITS: &str = "gait_agent_outbox_commits_total";
}

/// Every route the API serves, as (method, path): the agent API's OpenAPI document
/// (`schemas/agent-api.openapi.json`) lists exactly these (checked by `agent/tests/edge.rs`).
pub const ROUTES: [(&str, &str); 10] = [
    ("GET", "/v1/status"),
    ("POST", "/v1/records"),
    ("POST", "/v1/gate/evaluate"),
    ("POST", "/v1/bundle/import"),
    ("POST", "/v1/outbox/export"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/artifacts"),
    ("GET", "/v1/outbox"),
];

/// The API's routes over `state` behind the default [`guard::Guard`], without a socket (tests call it with
/// `oneshot`).
pub fn router(state: AppState) -> Router {
    router_with(state, guard::Guard::default())
}

/// [`router`] behind a configured guard (`local_api.allowed_origins`).
pub fn router_with(state: AppState, guard: guard::Guard) -> Router {
    Router::new()
        .route("/v1/status", get(get_status))
        .route("/v1/records", post(post_record))
        .route("/v1/gate/evaluate", post(post_evaluate))
        .route(
            "/v1/bundle/import",
            post(post_bundle).layer(DefaultBodyLimit::max(MAX_IMPORT_BODY_BYTES)),
        )
        .route(
            "/v1/artifacts",
            post(artifacts::post_artifacts).layer(DefaultBodyLimit::max(artifacts::MAX_BODY_BYTES)),
        )
        .route("/v1/outbox", get(artifacts::get_outbox))
        .route("/v1/outbox/export", post(outbox_export::handle_export))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            guard::enforce,
        ))
        // Outermost, so refused requests are logged too; DEBUG, since every decision is a request.
        .layer(gait_runtime::http::access::access_log(
            tracing::Level::DEBUG,
        ))
        .with_state(state)
}

/// Where [`serve`] listens: loopback TCP, or a Unix socket.
#[derive(Debug)]
pub enum ApiListener {
    /// A bound loopback TCP listener.
    Tcp(tokio::net::TcpListener),
    /// The Unix socket bound by [`socket::bind`]; its file at `path` is removed when the server stops.
    Unix {
        /// The bound socket.
        listener: tokio::net::UnixListener,
        /// The socket file.
        path: std::path::PathBuf,
    },
}

impl From<tokio::net::TcpListener> for ApiListener {
    fn from(listener: tokio::net::TcpListener) -> Self {
        ApiListener::Tcp(listener)
    }
}

/// Serves [`router_with`] on an already-bound listener under `limits` (connection cap, header/body/idle
/// timeouts, requests per connection; see [`gait_runtime::http`]) until `shutdown` is cancelled. Each
/// connection is a task of `tasks`. Each listener has its own connection cap, and all count into the one set of
/// connection counters the metrics export. Request bodies held in memory stay below `limits.max_connections` ×
/// the body limit, `MAX_BODY_BYTES` = 2 MiB + 64 KiB (a larger body is answered 413 before it is read past
/// the limit): 2.06 GiB at the default cap of 1024, per listener.
pub async fn serve(
    listener: impl Into<ApiListener>,
    state: AppState,
    guard: guard::Guard,
    limits: gait_runtime::http::Limits,
    tasks: gait_runtime::Tasks,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let stats = shared_stats(&state);
    let router = router_with(state, guard);
    match listener.into() {
        ApiListener::Tcp(listener) => {
            gait_runtime::http::serve(listener, router, limits, stats, tasks, shutdown).await;
        }
        ApiListener::Unix { listener, path } => {
            gait_runtime::http::serve_unix(listener, router, limits, stats, tasks, shutdown).await;
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove the local api socket");
            }
        }
    }
    Ok(())
}

/// The connection counters both listeners share (the metrics export one set for the API).
fn shared_stats(state: &AgentState) -> Arc<gait_runtime::http::Stats> {
    let fresh = Arc::new(gait_runtime::http::Stats::default());
    state.attach_http_stats(Arc::clone(&fresh));
    state.http_stats().cloned().unwrap_or(fresh)
}

/// Who appended a record or asked for a decision: the transport and the credential it presented (the uid and
/// pid of a socket client, the id of a TCP client's bearer token — never the token). A request without a
/// [`Peer`] (the router driven directly, in tests) counts as TCP.
fn attribution(peer: Option<&Peer>, headers: &HeaderMap) -> Value {
    match peer {
        Some(Peer::Unix { uid, pid }) => json!({ "transport": "unix", "uid": uid, "pid": pid }),
        Some(Peer::Tcp(_)) | None => {
            let mut by = Map::new();
            by.insert("transport".into(), Value::from("tcp"));
            if let Some(presented) = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
            {
                by.insert(
                    "token_id".into(),
                    Value::from(token::token_id(presented.trim())),
                );
            }
            Value::Object(by)
        }
    }
}

/// Payload key under which the agent stores who appended a producer record.
pub const APPENDED_BY: &str = "appended_by";

/// One JSON error answer.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    fn bad(field: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: message.into(),
            field: Some(field),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let (Some(field), Some(obj)) = (self.field, error.as_object_mut()) {
            obj.insert("field".to_owned(), Value::from(field));
        }
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}

impl From<OutboxError> for ApiError {
    fn from(e: OutboxError) -> Self {
        match &e {
            OutboxError::Full { .. } => ApiError {
                status: StatusCode::INSUFFICIENT_STORAGE,
                code: "outbox_full",
                message: e.to_string(),
                field: None,
            },
            OutboxError::InvalidRecord { source, .. } if source.field() == "payload" => ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "payload_too_large",
                message: e.to_string(),
                field: Some("payload"),
            },
            OutboxError::InvalidRecord { source, .. } => {
                ApiError::bad(source.field(), e.to_string())
            }
            // Storage failed (full disk, I/O error): nothing was recorded; the agent heals by itself.
            OutboxError::Db(_) => storage_failing(e.to_string()),
            _ => {
                tracing::error!(error = %e, "local api could not append a record");
                ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "internal",
                    message: e.to_string(),
                    field: None,
                }
            }
        }
    }
}

/// 503 `storage_failing`: the request could not be recorded because the agent's storage fails; retry later
/// or fail closed (the agent re-opens its database by itself once the storage takes writes again).
fn storage_failing(message: String) -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "storage_failing",
        message,
        field: None,
    }
}

/// `POST /v1/bundle/import`: the body is a signed bundle (`gait-agent bundle import`); verified and activated
/// as an offer from the aggregator. 200 [`Imported`](crate::daemon::Imported); 422 with the bundle refusal
/// code (e.g. `bundle_epoch_stale`, `bundle_signature_invalid`, `bundle_scope_mismatch`); 503 when storage
/// fails.
async fn post_bundle(State(state): State<AppState>, body: Bytes) -> Response {
    match crate::daemon::activation::import_bytes(&state, body.to_vec()).await {
        Ok(imported) => axum::Json(imported).into_response(),
        Err(refused) => {
            let status = if refused.is_bundle_refused() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            ApiError {
                status,
                code: refused.code,
                message: refused.message,
                field: None,
            }
            .into_response()
        }
    }
}

async fn get_status(State(state): State<AppState>) -> axum::Json<StatusReport> {
    axum::Json(state.status().await)
}

/// Liveness: `ok`, or 503 with the storage error while durable appends fail (a supervisor may restart the
/// agent; decisions are not answered meanwhile, since they could not be recorded).
async fn healthz(State(state): State<AppState>) -> Response {
    // Only the storage flag: a liveness probe does not build the whole status report.
    match state.storage_error() {
        None => "ok\n".into_response(),
        Some(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "error": { "code": "storage_failing", "message": error } })),
        )
            .into_response(),
    }
}

/// Readiness: 200 `{"ready":true}` when decisions can be answered from a policy, else 503 with the reasons
/// (no bundle in force, stale under `fail_closed`, storage failing). Being offline alone does not make the agent
/// unready: it keeps enforcing its last verified bundle.
async fn readyz(State(state): State<AppState>) -> Response {
    let report = state.status().await;
    let body = json!({
        "ready": report.ready,
        "not_ready": report.not_ready,
        "connected": report.connected,
        "stale": report.stale,
    });
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// A record as posted, checked field by field so an error names the field.
struct PostedRecord {
    class: RecordClass,
    kind: String,
    payload: Map<String, Value>,
}

fn parse_record(body: &[u8]) -> Result<PostedRecord, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("body", format!("body is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(ApiError::bad("body", "body must be a JSON object"));
    };
    let class = match obj.remove("class") {
        Some(Value::String(s)) => RecordClass::parse(&s).ok_or_else(|| {
            ApiError::bad(
                "class",
                format!(
                    "unknown class {s:?}; expected one of block, approval, artifact_digest, allow, status"
                ),
            )
        })?,
        Some(_) => return Err(ApiError::bad("class", "class must be a string")),
        None => return Err(ApiError::bad("class", "class is required")),
    };
    let kind = match obj.remove("kind") {
        Some(Value::String(s)) if s.is_empty() => {
            return Err(ApiError::bad("kind", "kind must not be empty"));
        }
        Some(Value::String(s)) if s.len() > MAX_KIND_LEN => {
            return Err(ApiError::bad(
                "kind",
                format!(
                    "kind is {} bytes, over the {MAX_KIND_LEN}-byte limit",
                    s.len()
                ),
            ));
        }
        Some(Value::String(s)) => s,
        Some(_) => return Err(ApiError::bad("kind", "kind must be a string")),
        None => return Err(ApiError::bad("kind", "kind is required")),
    };
    let payload = match obj.remove("payload") {
        Some(Value::Object(p)) if p.contains_key(APPENDED_BY) => {
            return Err(ApiError::bad(
                "payload",
                format!(
                    "payload key {APPENDED_BY:?} is reserved: the agent records there which credential appended \
                     the record; rename the key"
                ),
            ));
        }
        Some(Value::Object(p)) => p,
        Some(_) => return Err(ApiError::bad("payload", "payload must be a JSON object")),
        None => return Err(ApiError::bad("payload", "payload is required")),
    };
    if let Some(unknown) = obj.keys().next() {
        return Err(ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            message: format!("unknown field {unknown:?}; allowed: class, kind, payload"),
            field: Some("body"),
        });
    }
    Ok(PostedRecord {
        class,
        kind,
        payload,
    })
}

/// Kind prefixes of the records the agent writes itself (its decisions, its bundle status): a producer may
/// not append them, so nothing another process posts reads as the agent's own decision.
pub const RESERVED_KIND_PREFIXES: [&str; 5] =
    ["gate.", "bundle.", "approval.", "artifact.", "agent."];

async fn post_record(
    State(state): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut rec = parse_record(&body)?;
    if let Some(prefix) = RESERVED_KIND_PREFIXES
        .iter()
        .find(|p| rec.kind.starts_with(**p))
    {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "kind_reserved",
            message: format!(
                "kind {:?} is the agent's own ({prefix}*: written by the agent for its decisions, bundle \
                 status and approval requests); producer records use another kind, e.g. \"app.decision\"",
                rec.kind
            ),
            field: Some("kind"),
        });
    }
    rec.payload.insert(
        APPENDED_BY.to_owned(),
        attribution(peer.as_deref(), &headers),
    );
    let payload = serde_json::to_vec(&rec.payload)
        .map_err(|e| ApiError::bad("payload", format!("payload cannot be encoded: {e}")))?;
    let outcome = state.append(rec.class, rec.kind, payload).await?;
    Ok(match outcome {
        AppendOutcome::Appended { seq } => axum::Json(json!({ "seq": seq })).into_response(),
        AppendOutcome::Shed => axum::Json(json!({ "shed": true })).into_response(),
    })
}

/// Query of `POST /v1/gate/evaluate`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateQuery {
    policy: Option<String>,
    #[serde(default)]
    simulate: bool,
}

/// `POST /v1/gate/evaluate` with tokens: the intent beside the Gait tokens presented for it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EvaluateEnvelope<'a> {
    #[serde(borrow)]
    intent: &'a serde_json::value::RawValue,
    #[serde(default, borrow)]
    approval_tokens: Vec<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    delegation_tokens: Vec<&'a serde_json::value::RawValue>,
}

/// The body of `POST /v1/gate/evaluate`: a bare Gait intent request, or `{"intent": {…}, "approval_tokens":
/// [{…}], "delegation_tokens": [{…}]}` (told apart by a top-level `intent` key, which no Gait intent request
/// has). Each token is a Gait token document, kept byte for byte as sent (its signature covers it) and decoded
/// here so a malformed one is refused naming it, before anything is decided.
fn split_evaluate_body(body: &[u8]) -> Result<(Vec<u8>, PresentedTokens), ApiError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        intent: Option<serde::de::IgnoredAny>,
    }
    let enveloped = serde_json::from_slice::<Probe>(body).is_ok_and(|p| p.intent.is_some());
    if !enveloped {
        return Ok((body.to_vec(), PresentedTokens::default()));
    }
    let envelope: EvaluateEnvelope<'_> = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(
            "body",
            format!("{e}; expected {{\"intent\": {{…}}, \"approval_tokens\": [{{…}}], \"delegation_tokens\": [{{…}}]}}"),
        )
    })?;
    let take = |field: &'static str,
                raw: &[&serde_json::value::RawValue],
                decode: fn(&[u8], usize) -> Result<(), TokenDecodeError>|
     -> Result<Vec<Vec<u8>>, ApiError> {
        if raw.len() > MAX_PRESENTED_TOKENS {
            return Err(ApiError::bad(
                field,
                format!(
                    "{} tokens presented; at most {MAX_PRESENTED_TOKENS}",
                    raw.len()
                ),
            ));
        }
        raw.iter()
            .enumerate()
            .map(|(i, token)| {
                let bytes = token.get().as_bytes();
                if !bytes.starts_with(b"{") {
                    return Err(ApiError::bad(
                        field,
                        format!("{field}[{i}] must be a token document (a JSON object)"),
                    ));
                }
                decode(bytes, i).map_err(|e| ApiError::bad(field, format!("{field}[{i}]: {e}")))?;
                Ok(bytes.to_vec())
            })
            .collect()
    };
    let tokens = PresentedTokens {
        approval: take("approval_tokens", &envelope.approval_tokens, |b, i| {
            tokens::decode_approval_token(b, i).map(drop)
        })?,
        delegation: take("delegation_tokens", &envelope.delegation_tokens, |b, i| {
            tokens::decode_delegation_token(b, i).map(drop)
        })?,
    };
    Ok((envelope.intent.get().as_bytes().to_vec(), tokens))
}

async fn post_evaluate(
    State(state): State<AppState>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<EvaluateQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| {
        ApiError::bad(
            "query",
            format!(
                "{}; allowed: policy=<file>, simulate=true|false",
                e.body_text()
            ),
        )
    })?;
    let (intent, tokens) = split_evaluate_body(&body)?;
    let request = GateRequest {
        intent,
        policy: query.policy,
        simulate: query.simulate,
        tokens,
        ..GateRequest::default()
    };
    let requested_by = attribution(peer.as_deref(), &headers);
    match evaluate::evaluate_intent(&state, request, requested_by).await {
        Ok(response) => Ok(axum::Json(response).into_response()),
        Err(EvaluateError::Decision(DecisionError::BadRequest { field, message })) => {
            Err(ApiError::bad(field, message))
        }
        Err(EvaluateError::Outbox(e)) => Err(e.into()),
        Err(EvaluateError::Decision(DecisionError::Storage(message))) => {
            Err(storage_failing(message))
        }
        Err(e @ EvaluateError::SimulateNotAllowed { .. }) => Err(ApiError {
            status: StatusCode::FORBIDDEN,
            code: "simulate_not_allowed",
            message: e.to_string(),
            field: Some("simulate"),
        }),
        Err(
            EvaluateError::Decision(DecisionError::Internal(message))
            | EvaluateError::Internal(message),
        ) => {
            tracing::error!(error = %message, "local decision failed");
            Err(ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal",
                message,
                field: None,
            })
        }
    }
}

/// `GET /metrics`: the decision series (kept in [`decision_metrics::DecisionMetrics`]) and everything read from the
/// agent's state at this scrape, as OpenMetrics when the scraper asks for it, the text format 0.0.4 otherwise.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let report = state.status().await;
    let snapshot = scrape_registry(&state, &report);
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a metric.
    let encoded = prometheus_client::encoding::text::encode_registry(
        &mut out,
        state.decision_metrics().registry(),
    )
    .and_then(|()| prometheus_client::encoding::text::encode_registry(&mut out, &snapshot))
    .and_then(|()| prometheus_client::encoding::text::encode_eof(&mut out));
    if let Err(e) = encoded {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (content_type, body) = gait_runtime::metrics::negotiate(out, accept);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The series read from the agent's state at one scrape, as constant metrics in a registry of their own.
fn scrape_registry(
    state: &AppState,
    report: &StatusReport,
) -> prometheus_client::registry::Registry {
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use std::sync::atomic::Ordering::Relaxed;

    let mut registry = prometheus_client::registry::Registry::default();
    let mut counter = |name: &str, help: &str, value: u64| {
        gait_runtime::metrics::register(&mut registry, name, help, ConstCounter::new(value));
    };
    let counters = state.counters();
    let http = state.http_stats();
    let storage = state.storage_health();
    counter(
        metric::OUTBOX_SHED,
        "Allow records shed since the outbox was created.",
        report.outbox.shed_total,
    );
    counter(
        metric::BUNDLE_REFUSALS,
        "Offered bundles refused since start.",
        counters.refusals,
    );
    counter(
        metric::RECONNECTS,
        "Reconnect attempts since start.",
        counters.reconnects,
    );
    counter(
        metric::HTTP_CONNECTIONS_REFUSED,
        "Local API connections closed at once because local_api.max_connections were open, each with a request in flight.",
        http.map_or(0, |s| s.refused()),
    );
    counter(
        metric::HTTP_CONNECTIONS_EVICTED,
        "Idle local API connections closed to admit a new one at local_api.max_connections.",
        http.map_or(0, |s| s.evicted()),
    );
    counter(
        metric::RATE_LIMIT_STATE_RESETS,
        "Unreadable rate-limit state files set aside since start (counting started afresh).",
        crate::gate::ratelimit_state::STATE_RESETS.load(Relaxed),
    );
    {
        use crate::gate::ratelimit_bound::{KEYS_EVICTED, KEYS_REFUSED};
        counter(
            metric::RATE_LIMIT_KEYS_EVICTED,
            "Rate-limit counters below their limit evicted to make room for new ones since start.",
            KEYS_EVICTED.load(Relaxed),
        );
        counter(
            metric::RATE_LIMIT_KEYS_REFUSED,
            "Requests blocked because the rate-limit state was full of counters at their limit, since start.",
            KEYS_REFUSED.load(Relaxed),
        );
    }
    counter(
        crate::capture::metric::IMPORTED,
        "Gait artifacts enqueued (push through the daemon, watched directories) since start.",
        crate::capture::IMPORTED.load(Relaxed),
    );
    counter(
        crate::capture::metric::WATCH_INVALID,
        "Invalid Gait artifacts found in watched directories since start (each file version once).",
        crate::capture::WATCH_INVALID.load(Relaxed),
    );
    counter(
        metric::STORAGE_ERRORS,
        "Agent database operations that failed on storage (full disk, I/O error) since start.",
        storage.errors,
    );
    counter(
        metric::STORAGE_REOPENS,
        "Times the agent database was re-opened after a storage failure since start.",
        storage.reopens,
    );

    let gauge_value = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let seconds = |ms: Option<i64>| ms.map_or(0, |ms| ms / 1000);
    for (name, help, value) in [
        (
            metric::OUTBOX_DEPTH,
            "Records waiting in the outbox.",
            gauge_value(report.outbox.depth),
        ),
        (
            metric::OUTBOX_BYTES,
            "Bytes of records waiting in the outbox.",
            gauge_value(report.outbox.bytes),
        ),
        (
            metric::OUTBOX_UNAPPLIED,
            "Records answered through the outbox's write-ahead log that the agent database does not hold yet \
             (the applier's lag; bounded by the log's two files).",
            gauge_value(state.outbox().unapplied_records()),
        ),
        (
            metric::BUNDLE_EPOCH,
            "Epoch of the active policy bundle (0 = none).",
            gauge_value(report.active_bundle.as_ref().map_or(0, |b| b.epoch)),
        ),
        (
            metric::CONNECTED,
            "1 while connected to the aggregator.",
            i64::from(report.connected),
        ),
        (
            metric::STALE,
            "1 when the aggregator has not been reached for longer than the bundle allows.",
            i64::from(report.stale),
        ),
        (
            metric::HTTP_CONNECTIONS_OPEN,
            "Local API connections open now.",
            http.map_or(0, |s| i64::try_from(s.open()).unwrap_or(i64::MAX)),
        ),
        (
            metric::RATE_LIMIT_KEYS,
            "Rate-limit counters held after the last decision (bounded by gate.rate_limit.max_keys).",
            gauge_value(crate::gate::ratelimit_bound::KEYS_TRACKED.load(Relaxed)),
        ),
        (
            metric::STORAGE_FAILING,
            "1 while the agent's storage fails (decisions answer 503 storage_failing until it heals).",
            i64::from(storage.failure.is_some()),
        ),
        // Timestamps an operator alerts on ("certificate expires within 14 days", "no contact for 10 minutes",
        // "bundle older than a day"), 0 when unknown.
        (
            metric::CERTIFICATE_EXPIRY,
            "notAfter of the agent's certificate, Unix seconds.",
            report
                .certificate
                .as_ref()
                .map_or(report.identity.cert_not_after_unix, |c| c.not_after),
        ),
        (
            metric::CERTIFICATE_EXPIRY_SECONDS,
            "Seconds left until the agent's certificate expires (negative once expired); renewed at a third left.",
            report.certificate.as_ref().map_or(0, |c| c.seconds_left),
        ),
        (
            metric::LAST_CONTACT,
            "End of the last successful exchange with the aggregator, Unix seconds (0: never).",
            seconds(report.last_contact_unix_ms),
        ),
        (
            metric::BUNDLE_ACTIVATED,
            "When the bundle in force was activated, Unix seconds (0: none).",
            seconds(report.active_bundle.as_ref().map(|b| b.since_unix_ms)),
        ),
    ] {
        gait_runtime::metrics::register(&mut registry, name, help, ConstGauge::new(value));
    }
    let build = prometheus_client::metrics::family::Family::<
        [(&'static str, &'static str); 1],
        prometheus_client::metrics::gauge::Gauge,
    >::default();
    build
        .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    gait_runtime::metrics::register(
        &mut registry,
        metric::BUILD_INFO,
        "The running build (always 1).",
        build,
    );
    registry.register_collector(Box::new(gait_runtime::metrics::ProcessCollector));
    registry
}

/// Where a client reaches a running agent's local API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Loopback TCP (reads need no token).
    Tcp(SocketAddr),
    /// The Unix socket.
    Unix(std::path::PathBuf),
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::Tcp(addr)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Endpoint {
    /// Where `gait-agent` run with `config` serves its API: the socket when enabled, else TCP.
    pub fn of(config: &crate::config::Config) -> Result<Endpoint, crate::config::ConfigError> {
        if config.local_api.socket_enabled {
            Ok(Endpoint::Unix(config.api_socket_path()))
        } else {
            config.local_api.addr().map(Endpoint::Tcp)
        }
    }

    /// An HTTP client bound to this endpoint, and the base URL to request.
    fn client(&self, timeout: Duration) -> reqwest::Result<(reqwest::Client, String)> {
        gait_runtime::http::tls::install_ring_default();
        let builder = reqwest::Client::builder().timeout(timeout).no_proxy();
        Ok(match self {
            Endpoint::Tcp(addr) => (builder.build()?, format!("http://{addr}")),
            // The host name is not looked up on a socket; the agent does not check it there either.
            Endpoint::Unix(path) => (
                builder.unix_socket(path.as_path()).build()?,
                "http://localhost".to_owned(),
            ),
        })
    }
}

/// Why `gait-agent status` could not read the agent.
#[derive(Debug, thiserror::Error)]
pub enum StatusClientError {
    /// The request failed (agent not running, wrong address, timeout).
    #[error("cannot reach the agent's local api at {endpoint}: {source}")]
    Request {
        /// The endpoint tried.
        endpoint: Endpoint,
        /// The HTTP client error.
        #[source]
        source: reqwest::Error,
    },
    /// The agent answered with an error status.
    #[error("the agent at {endpoint} answered {status}")]
    Status {
        /// The endpoint tried.
        endpoint: Endpoint,
        /// The HTTP status.
        status: StatusCode,
    },
}

/// Sends a signed bundle to a running agent's `POST /v1/bundle/import` (`token`: the bearer token, needed
/// on TCP). The outer error is the transport's; the inner one the agent's refusal.
pub async fn post_bundle_import(
    endpoint: &Endpoint,
    token: Option<&str>,
    bundle: Vec<u8>,
    timeout: Duration,
) -> Result<Result<crate::daemon::Imported, crate::daemon::ImportRefused>, reqwest::Error> {
    let (client, base) = endpoint.client(timeout)?;
    let mut request = client
        .post(format!("{base}/v1/bundle/import"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(bundle);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    if response.status().is_success() {
        return Ok(Ok(response.json().await?));
    }
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("");
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the agent answered {status}"));
    Ok(Err(crate::daemon::ImportRefused {
        code: crate::daemon::activation::known_code(code),
        message,
    }))
}

pub use outbox_export::request_export;

/// Fetches `GET /v1/status` from a running agent, over TCP or its Unix socket.
pub async fn fetch_status(
    endpoint: impl Into<Endpoint>,
    timeout: Duration,
) -> Result<StatusReport, StatusClientError> {
    let endpoint = endpoint.into();
    let (client, base) = endpoint
        .client(timeout)
        .map_err(|source| StatusClientError::Request {
            endpoint: endpoint.clone(),
            source,
        })?;
    let request_error = |source| StatusClientError::Request {
        endpoint: endpoint.clone(),
        source,
    };
    let response = client
        .get(format!("{base}/v1/status"))
        .send()
        .await
        .map_err(request_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(StatusClientError::Status {
            endpoint,
            status: StatusCode::from_u16(status.as_u16())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        });
    }
    response.json().await.map_err(request_error)
}
