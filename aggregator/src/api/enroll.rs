//! `POST /v1/enroll`: an agent exchanges a join token and a CSR for its client certificate. No bearer token:
//! the join token in the body is the credential, and the aggregator decides the tenancy from it (never from
//! the CSR). Refusals are 403 `enrollment_refused` with a message saying why (expired, used up, revoked,
//! unknown, another scope); a bad CSR is 400.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::{IntoResponse, Response};
use gait_identity::{AgentId, Tenant};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState, RequestError, ident};
use crate::enroll::EnrollRequest;
use crate::pki::VerifiedCsr;

/// The tenancy an enrolling agent expects its token to be for.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Expect {
    org: String,
    project: String,
    env: String,
}

/// Body of `POST /v1/enroll`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EnrollBody {
    /// The join token, `gjt1_<id>_<secret>`.
    token: String,
    /// PKCS#10 CSR, PEM, signed by the agent's new key.
    csr_pem: String,
    /// The agent id to certify (the identifier rule).
    agent_id: String,
    /// When given, a token for another org/project/env is refused without using it.
    #[serde(default)]
    expect: Option<Expect>,
}

pub(super) async fn enroll(
    State(state): State<AppState>,
    body: Result<Json<EnrollBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body.map_err(RequestError::Body)?;
    let agent_id: AgentId = ident("agent_id", body.agent_id)?;
    let expect = match body.expect {
        Some(e) => Some(Tenant::new(
            ident("expect.org", e.org)?,
            ident("expect.project", e.project)?,
            ident("expect.env", e.env)?,
        )),
        None => None,
    };
    let csr = VerifiedCsr::from_pem(&body.csr_pem)
        .map_err(|e| ApiError::bad_request(format!("csr_pem: {e}")))?;
    let signed = state
        .enrollment
        .enroll(EnrollRequest {
            token: body.token,
            csr,
            agent_id,
            expect,
        })
        .await?;
    crate::metrics::inc_labelled(&state.metrics.certificates_issued, "kind", "enroll");
    Ok(Json(json!({
        "agent": signed.spiffe.to_string(),
        "serial": signed.serial.as_str(),
        "not_after_unix": signed.not_after.unix_timestamp(),
        "certificate_chain_pem": signed.chain_pem,
        "ca_bundle_pem": signed.ca_bundle_pem,
    }))
    .into_response())
}
