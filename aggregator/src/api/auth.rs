//! Authentication and authorization at the HTTP edge. [`authenticate`] runs before every `/v1` route and turns
//! the bearer token into a [`Principal`] (the bootstrap admin token, or an operator's OIDC token, verified by
//! [`crate::auth::oidc`]; a refused one is 401 with its reason in the body, `error.reason`, and in
//! `WWW-Authenticate`, RFC 6750); [`require`]
//! is attached to each route with the permission it declares (`api::v1_routes`) and asks
//! [`crate::auth::Authorizer`] for an [`Authorized`] over the request's tenancy, which the handler takes with the
//! [`Caller`] extractor. A handler whose route declared nothing gets no `Authorized` and answers 403: deny by
//! default.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use gait_store::Org;

use super::{ApiError, AppState};
use crate::auth::oidc::TokenError;
use crate::auth::{Authorized, Denied, Deployment, Permission, Principal, Target};
use crate::metrics;

/// Turns the bearer token into the request's [`Principal`], or answers 401.
pub(super) async fn authenticate(
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
            if state.authorizer.admin_token_mode() != crate::auth::AdminTokenMode::Disabled
                && gait_runtime::http::constant_time_eq(
                    state.admin_token.as_bytes(),
                    token.as_bytes(),
                ) =>
        {
            req.extensions_mut().insert(Arc::new(Principal::AdminToken));
            return next.run(req).await;
        }
        Some(token) if let Some(oidc) = &state.oidc => match oidc.verify(token).await {
            Ok(identity) => {
                let principal = Principal::Operator(crate::auth::Operator {
                    issuer: identity.issuer,
                    subject: identity.subject,
                    groups: identity.groups,
                });
                req.extensions_mut().insert(Arc::new(principal));
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
            "send `Authorization: Bearer <token>`: an operator's OIDC access token, or the admin token in \
             <data-dir>/admin.token",
        )
        .into_response(),
    }
}

/// Where a route's permission is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScopeFrom {
    /// The `{org}/{project}/{env}` path parameters: an `Authorized<Tenant>`.
    Env,
    /// The `{org}` path parameter: an `Authorized<Org>`.
    Org,
    /// The whole deployment: an `Authorized<Deployment>`.
    Deployment,
    /// A scope the handler reads from the request (a binding's own scope): the handler gets a
    /// [`Pending`] and calls [`Pending::authorize`] with it.
    Request,
}

impl ScopeFrom {
    /// The name shown in the OpenAPI document (`x-gait-scope`).
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeFrom::Env => "env",
            ScopeFrom::Org => "org",
            ScopeFrom::Deployment => "deployment",
            ScopeFrom::Request => "request",
        }
    }
}

/// An authenticated caller whose permission is checked by the handler against a scope it reads from the
/// request ([`ScopeFrom::Request`]).
#[derive(Clone, Debug)]
pub struct Pending {
    principal: Arc<Principal>,
    permission: Permission,
    authorizer: Arc<crate::auth::Authorizer>,
}

impl Pending {
    /// The caller's permission over `target`, or 403.
    pub fn authorize<T: Target>(&self, target: T) -> Result<Authorized<T>, ApiError> {
        self.authorizer
            .authorize(self.principal.clone(), self.permission, target)
            .map_err(forbidden)
    }
}

fn forbidden(denied: Denied) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "forbidden",
        denied.to_string(),
    )
}

/// The per-route authorization layer: `permission` over the scope `from` names.
pub(super) async fn require(
    State((state, permission, from)): State<(AppState, Permission, ScopeFrom)>,
    req: Request,
    next: Next,
) -> Response {
    match authorize_request(&state, permission, from, req).await {
        Ok(req) => next.run(req).await,
        Err(e) => {
            metrics::inc_labelled(
                &state.metrics.authz_denials,
                "permission",
                permission.as_str(),
            );
            e.into_response()
        }
    }
}

async fn authorize_request(
    state: &AppState,
    permission: Permission,
    from: ScopeFrom,
    req: Request,
) -> Result<Request, ApiError> {
    let (mut parts, body) = req.into_parts();
    let principal = parts
        .extensions
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("the request was not authenticated"))?;
    let auth = &state.authorizer;
    match from {
        ScopeFrom::Env | ScopeFrom::Org => {
            let Path(params) = Path::<HashMap<String, String>>::from_request_parts(&mut parts, &())
                .await
                .map_err(|e| ApiError::bad_request(e.body_text()))?;
            let param = |name: &str| params.get(name).cloned().unwrap_or_default();
            if from == ScopeFrom::Env {
                let tenant = super::tenant(param("org"), param("project"), param("env"))?;
                let ok = auth
                    .authorize(principal, permission, tenant)
                    .map_err(forbidden)?;
                parts.extensions.insert(ok);
            } else {
                let org: Org = super::ident("org", param("org"))?;
                let ok = auth
                    .authorize(principal, permission, org)
                    .map_err(forbidden)?;
                parts.extensions.insert(ok);
            }
        }
        ScopeFrom::Deployment => {
            let ok = auth
                .authorize(principal, permission, Deployment)
                .map_err(forbidden)?;
            parts.extensions.insert(ok);
        }
        ScopeFrom::Request => {
            parts.extensions.insert(Pending {
                principal,
                permission,
                authorizer: auth.clone(),
            });
        }
    }
    Ok(Request::from_parts(parts, body))
}

/// Extracts the `Authorized<T>` the route's [`require`] layer granted; a route that declared none answers 403.
pub struct Caller<T>(pub Authorized<T>);

impl<S, T> FromRequestParts<S> for Caller<T>
where
    S: Send + Sync,
    T: Clone + Send + Sync + 'static,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .remove::<Authorized<T>>()
            .map(Caller)
            .ok_or_else(undeclared)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Pending {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.remove::<Pending>().ok_or_else(undeclared)
    }
}

fn undeclared() -> ApiError {
    tracing::error!("a handler asked for an authorization its route does not declare; denied");
    ApiError::new(
        axum::http::StatusCode::FORBIDDEN,
        "forbidden",
        "this route declares no permission, so nobody may call it",
    )
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
