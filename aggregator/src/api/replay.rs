//! `/v1/orgs/{org}/replay`: replay a candidate policy over the org's captured decisions
//! ([`crate::replay::Replay`]). `POST …/replay` answers the signed report (`gait.fleet.replay_report`, JCS bytes
//! as signed), `GET …/replay/corpus` the corpus as JSON Lines for offline runs, `GET …/replay/key` the public
//! key reports verify with. All need `replay.run` on the org. A corpus over its bounds is a 400 naming
//! `until_id`, `project` and `env`; with every replay slot taken the answer is 503 with `Retry-After`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use gait_store::Org;
use serde_json::json;

use super::auth::Caller;
use super::{ApiError, AppState, RequestError};
use crate::replay::corpus::CorpusError;
use crate::replay::{BUSY_RETRY_AFTER_SECONDS, CorpusQuery, ReplayError, ReplayRequest};

/// `POST /v1/orgs/{org}/replay`.
pub(super) async fn run(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    body: Result<Json<ReplayRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let bytes = match state.replay.run(&caller, body).await {
        Ok(bytes) => bytes,
        Err(e) => return Ok(refusal(e)),
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

/// `GET /v1/orgs/{org}/replay/corpus`.
pub(super) async fn corpus(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    query: Result<Query<CorpusQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let export = match state.replay.corpus_export(&caller, &q).await {
        Ok(export) => export,
        Err(e) => return Ok(refusal(e)),
    };
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], export.body).into_response())
}

/// `GET /v1/orgs/{org}/replay/key`.
pub(super) async fn key(
    State(state): State<AppState>,
    Caller(_caller): Caller<Org>,
) -> Result<Response, ApiError> {
    let key = state.replay.public_key();
    Ok(Json(json!({
        "key_id": key.key_id(),
        "public_key": key.to_gait_public_key(),
    }))
    .into_response())
}

/// A refused field or a corpus over its bounds is a 400 naming what to change; store and audit failures map as
/// everywhere.
impl From<ReplayError> for ApiError {
    fn from(err: ReplayError) -> Self {
        match err {
            ReplayError::Invalid { .. } | ReplayError::Corpus(CorpusError::TooLarge { .. }) => {
                ApiError::bad_request(err.to_string())
            }
            ReplayError::Store(store) | ReplayError::Corpus(CorpusError::Store(store)) => {
                store.into()
            }
            ReplayError::Audit(crate::audit::AuditError::Store(store)) => store.into(),
            ReplayError::Busy => ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                err.to_string(),
            ),
            other => ApiError::internal(other),
        }
    }
}

/// The answer to a replay refusal: the API error, and `Retry-After` when the replay slots are all taken.
fn refusal(err: ReplayError) -> Response {
    let busy = matches!(err, ReplayError::Busy);
    let mut response = ApiError::from(err).into_response();
    if busy {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            header::HeaderValue::from(BUSY_RETRY_AFTER_SECONDS),
        );
    }
    response
}
