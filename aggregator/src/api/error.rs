//! The API's errors: one JSON shape, one meaning per status, a stable machine code per meaning.
//!
//! Every error the API returns, unknown routes and wrong methods included, is
//! `{"error":{"code":"<code>","message":"<what to do>"}}`:
//!
//! | status | code                     | meaning                                                          |
//! |--------|--------------------------|------------------------------------------------------------------|
//! | 400    | `invalid_request`        | the request itself is malformed: path, query or body             |
//! | 401    | `unauthorized`           | no or a wrong bearer token                                       |
//! | 403    | `forbidden`              | authenticated but not allowed (reserved for RBAC)                |
//! | 404    | `not_found`              | no such route, or no such resource                               |
//! | 405    | `method_not_allowed`     | the route exists, the method does not                            |
//! | 409    | `conflict`               | a concurrent change won; retrying may succeed                    |
//! | 413    | `payload_too_large`      | the body is larger than the API accepts                          |
//! | 415    | `unsupported_media_type` | the body is not `application/json`                               |
//! | 422    | `invalid_policy`         | well-formed, but the registry refuses its content                |
//! | 500    | `internal`               | a server-side fault retrying will not fix (logged)               |
//! | 503    | `unavailable`            | a transient server-side failure (database busy or unreachable)   |

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gait_store::StoreError;
use serde_json::json;

use crate::pki::identity::IdentityError;
use crate::registry::RegistryError;

/// What is wrong with a request before any feature sees it.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A tenancy identifier in the path or query breaks the identifier rule.
    #[error(transparent)]
    Identifier(#[from] IdentityError),
    /// The JSON body could not be read: too large, wrong content type, malformed or not the schema.
    #[error("request body: {}", .0.body_text())]
    Body(#[source] JsonRejection),
    /// The query string could not be read: a parameter of the wrong type (`?limit=abc`) or out of its range.
    #[error("query string: {}", .0.body_text())]
    Query(#[source] QueryRejection),
    /// A query or body field has a value the API refuses.
    #[error("{field}: {message}")]
    Field {
        /// The field, as named in the API.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// An API error: HTTP status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `invalid_request`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 401 `unauthorized`.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404 `not_found`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 `method_not_allowed`.
    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept that method; see /openapi.json",
        )
    }

    /// 500 `internal`: logged with its cause, which the caller does not see.
    pub(crate) fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "request failed on the server side");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the aggregator failed to complete the request; the cause is in its log",
        )
    }

    /// 503 `unavailable`: logged with its cause.
    pub(crate) fn unavailable(err: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %err, "request failed on a transient server-side error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the aggregator could not complete the request; retry",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable machine code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> Self {
        let message = err.to_string();
        match &err {
            RequestError::Body(rejection) => match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => {
                    Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
                }
                StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "the body must be JSON, sent with `Content-Type: application/json`",
                ),
                _ => Self::bad_request(message),
            },
            RequestError::Identifier(_) | RequestError::Query(_) | RequestError::Field { .. } => {
                Self::bad_request(message)
            }
        }
    }
}

impl From<IdentityError> for ApiError {
    fn from(err: IdentityError) -> Self {
        RequestError::from(err).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::EpochConflict { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", err.to_string())
            }
            StoreError::InvalidInput { .. } => Self::bad_request(err.to_string()),
            _ if err.is_retryable() => Self::unavailable(err),
            _ => Self::internal(err),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(err: RegistryError) -> Self {
        match err {
            RegistryError::NotFound(_) => Self::not_found(err.to_string()),
            RegistryError::Conflict(_) | RegistryError::Superseded { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", err.to_string())
            }
            RegistryError::Invalid(_)
            | RegistryError::Policy { .. }
            | RegistryError::Rejected { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_policy",
                err.to_string(),
            ),
            RegistryError::Field { .. } => Self::bad_request(err.to_string()),
            RegistryError::Store(store) => store.into(),
            RegistryError::KeyNotFound(_) => Self::not_found(err.to_string()),
            RegistryError::KeyConflict(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", err.to_string())
            }
            RegistryError::Key { .. } | RegistryError::Sign(_) | RegistryError::Audit(_) => {
                Self::internal(err)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_maps_to_its_one_status() {
        let e: ApiError = RegistryError::Invalid("x".into()).into();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_policy")
        );
        let e: ApiError = RegistryError::Sign("x".into()).into();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
        let e: ApiError = StoreError::InvalidInput {
            field: "f".into(),
            reason: "r".into(),
        }
        .into();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_REQUEST, "invalid_request")
        );
        let e: ApiError = StoreError::Corrupt {
            table: "t",
            reason: "r".into(),
        }
        .into();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
        let e: ApiError = IdentityError::InvalidTrustDomain { value: "X".into() }.into();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e: ApiError = RequestError::Field {
            field: "limit",
            message: "too big".into(),
        }
        .into();
        assert_eq!(e.message, "limit: too big");
    }
}
