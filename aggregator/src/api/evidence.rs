//! `/v1/orgs/{org}/evidence/{records,artifacts}` and the same under `/projects/{project}/envs/{env}`: lookups in
//! the evidence index (decisions and artifacts by run id, digest, policy digest, agent, verdict, stage, kind and
//! time), read through [`crate::evidence::query::EvidenceIndex`] with the caller's `Authorized` org or
//! environment. The org routes take `project`/`env` as narrowing parameters; the environment routes are for
//! operators bound to one environment.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};

use super::auth::Caller;
use super::{ApiError, AppState, RequestError};
use crate::auth::Target;
use crate::evidence::query::{EvidenceError, EvidenceQuery, Listing};

/// `GET …/evidence/records`: indexed decisions and artifacts, newest first.
pub(super) async fn records<T>(
    state: State<AppState>,
    caller: Caller<T>,
    query: Result<Query<EvidenceQuery>, QueryRejection>,
) -> Result<Response, ApiError>
where
    T: Target + Clone + Send + Sync + 'static,
{
    list(state, caller, Listing::Records, query).await
}

/// `GET …/evidence/artifacts`: indexed artifacts, newest first.
pub(super) async fn artifacts<T>(
    state: State<AppState>,
    caller: Caller<T>,
    query: Result<Query<EvidenceQuery>, QueryRejection>,
) -> Result<Response, ApiError>
where
    T: Target + Clone + Send + Sync + 'static,
{
    list(state, caller, Listing::Artifacts, query).await
}

async fn list<T>(
    State(state): State<AppState>,
    Caller(caller): Caller<T>,
    listing: Listing,
    query: Result<Query<EvidenceQuery>, QueryRejection>,
) -> Result<Response, ApiError>
where
    T: Target + Clone + Send + Sync + 'static,
{
    let Query(q) = query.map_err(RequestError::Query)?;
    let page = state.evidence.list(&caller, listing, &q).await?;
    Ok(Json(page).into_response())
}

/// A refused lookup is a 400 naming the parameter; a store failure maps as everywhere.
impl From<EvidenceError> for ApiError {
    fn from(err: EvidenceError) -> Self {
        match err {
            EvidenceError::Invalid { field, message } => {
                RequestError::Field { field, message }.into()
            }
            EvidenceError::Store(store) => store.into(),
        }
    }
}
