//! `/v1/access/bindings`: who holds which role where. A binding's own scope is where `binding.read` /
//! `binding.write` are checked, so an org's platform admin manages that org's bindings and nothing else; the
//! listing shows only bindings inside the scope asked for (`?org=&project=&env=`, default the deployment).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gait_store::{BindingScope, Env, NewBinding, Org, Project, SubjectKind};
use serde::Deserialize;
use serde_json::json;

use super::auth::Pending;
use super::{ApiError, AppState, RequestError};
use crate::auth::Role;
use crate::auth::bindings::RevokeError;

/// `?org=&project=&env=` of the listing.
#[derive(Debug, Deserialize)]
pub(super) struct ScopeQuery {
    org: Option<String>,
    project: Option<String>,
    env: Option<String>,
}

/// The body of `POST /v1/access/bindings`: exactly one of `user` and `group`, a role, and the scope.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// The operator's subject (`sub` claim, or the configured subject claim).
    pub user: Option<String>,
    /// An IdP group.
    pub group: Option<String>,
    /// One of platform_admin, policy_author, approver, auditor, viewer.
    pub role: String,
    /// Absent: the whole deployment.
    pub org: Option<String>,
    /// Absent: the whole org.
    pub project: Option<String>,
    /// Absent: the whole project.
    pub env: Option<String>,
}

/// A scope from optional org/project/env texts; a part without the one above it is a 400.
pub(crate) fn scope_of(
    org: Option<String>,
    project: Option<String>,
    env: Option<String>,
) -> Result<BindingScope, ApiError> {
    let org: Option<Org> = org.map(|o| super::ident("org", o)).transpose()?;
    let project: Option<Project> = project.map(|p| super::ident("project", p)).transpose()?;
    let env: Option<Env> = env.map(|e| super::ident("env", e)).transpose()?;
    BindingScope::from_parts(org, project, env).ok_or_else(|| {
        ApiError::bad_request("scope: a project needs its org, and an env needs its project")
    })
}

pub(super) async fn list_bindings(
    State(state): State<AppState>,
    pending: Pending,
    query: Result<Query<ScopeQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(RequestError::Query)?;
    let scope = scope_of(q.org, q.project, q.env)?;
    let caller = pending.authorize(scope)?;
    let bindings = state.bindings.list(&caller).await?;
    Ok(Json(json!({ "bindings": bindings })).into_response())
}

pub(super) async fn grant_binding(
    State(state): State<AppState>,
    pending: Pending,
    body: Result<Json<GrantBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let (kind, subject) = match (body.user, body.group) {
        (Some(user), None) => (SubjectKind::User, user),
        (None, Some(group)) => (SubjectKind::Group, group),
        _ => {
            return Err(RequestError::Field {
                field: "user",
                message:
                    "give exactly one of `user` (an operator's subject) and `group` (an IdP group)"
                        .into(),
            }
            .into());
        }
    };
    let role = Role::parse(&body.role).map_err(|e| RequestError::Field {
        field: "role",
        message: e.to_string(),
    })?;
    let scope = scope_of(body.org, body.project, body.env)?;
    let caller = pending.authorize(scope)?;
    let binding = NewBinding {
        kind,
        subject,
        role: role.as_str().to_owned(),
        scope: caller.target().clone(),
    };
    let actor = caller.actor();
    let now = crate::clock::unix_ms();
    let (stored, created) = state
        .bindings
        .grant(&caller, &binding, now)
        .await
        .map_err(audit_error)?;
    if created {
        tracing::info!(actor, binding = stored.id, role = %role, subject = %stored.subject,
            scope = %stored.scope, "role binding granted");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "binding": stored, "created": created })),
    )
        .into_response())
}

pub(super) async fn revoke_binding(
    State(state): State<AppState>,
    pending: Pending,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::not_found(format!("no role binding {id} in your scope"));
    let Some(scope) = state.bindings.scope_of(id).await? else {
        return Err(not_found());
    };
    // A binding outside the caller's scope is not revealed: the same 404 as a missing one.
    let caller = pending.authorize(scope).map_err(|_| not_found())?;
    let actor = caller.actor();
    let removed = state
        .bindings
        .revoke(&caller, id)
        .await
        .map_err(|e| match e {
            RevokeError::NotFound(_) => not_found(),
            RevokeError::FromConfig(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            RevokeError::Store(store) => store.into(),
            RevokeError::Audit(audit) => audit_error(audit),
        })?;
    tracing::info!(actor, binding = id, role = %removed.role, subject = %removed.subject,
        scope = %removed.scope, "role binding revoked");
    Ok(Json(json!({ "binding": removed })).into_response())
}

/// A failed grant or revoke: the store's own error, or a 500 when the audit entry could not be written (the
/// operation was not committed either).
fn audit_error(e: crate::audit::AuditError) -> ApiError {
    match e {
        crate::audit::AuditError::Store(store) => store.into(),
        other => ApiError::internal(other),
    }
}
