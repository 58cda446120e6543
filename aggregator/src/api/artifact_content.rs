//! `GET /v1/orgs/{org}/projects/{project}/envs/{env}/artifacts/{sha256}/content`: the bytes of an artifact an
//! agent of that environment uploaded, checked against their digest on the way out, read through
//! [`crate::evidence::Uploads`]. 404 when no agent of the environment uploaded that digest, whoever else did.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use gait_store::Tenant;

use super::auth::Caller;
use super::{ApiError, AppState};
use crate::evidence::{BlobError, UploadError};

pub(super) async fn content(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    Path((_, _, _, sha256)): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::not_found(format!(
            "no agent of this environment uploaded artifact {sha256}"
        ))
    };
    let Some(uploads) = &state.uploads else {
        return Err(not_found());
    };
    let (row, bytes) = match uploads.content(&caller, &sha256).await {
        Ok(Some(found)) => found,
        Ok(None) => return Err(not_found()),
        Err(UploadError::Blob(e @ BlobError::BadDigest { .. })) => {
            return Err(ApiError::bad_request(format!("sha256: {e}")));
        }
        Err(UploadError::Blob(e @ BlobError::Corrupt { .. })) => {
            tracing::error!(error = %e, "a stored artifact no longer matches its digest; not served");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "blob_corrupt",
                e.to_string(),
            ));
        }
        Err(e) => return Err(ApiError::unavailable(e)),
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::ETAG, format!("\"sha256:{}\"", row.sha256)),
            (
                header::HeaderName::from_static("x-gait-uploaded-by"),
                row.agent_id,
            ),
        ],
        bytes,
    )
        .into_response())
}
