//! `RenewCertificate`: the QUIC edge of certificate renewal. The identity comes from the connection's verified
//! client certificate; a revoked certificate renews nothing; the enrollment feature signs and records.

use gait_wire::{ErrorCode, IssuedCertificate, RenewCertificate, ServerMsgV2};
use tracing::{info, warn};

use super::connection::Session;
use super::endpoint::IngestState;
use super::request::error_msg;
use crate::enroll::EnrollError;
use crate::pki::VerifiedCsr;

pub(super) async fn on_renew(
    state: &IngestState,
    session: &Session,
    request: RenewCertificate,
) -> ServerMsgV2 {
    let Some(enrollment) = state.enrollment.as_ref() else {
        return error_msg(
            ErrorCode::Unsupported,
            "this aggregator does not renew certificates",
        );
    };
    if state.revoked.contains(session.cert_serial.as_str()) {
        return error_msg(
            ErrorCode::Forbidden,
            "the certificate of this connection is revoked: it renews nothing",
        );
    }
    if request.csr_der.len() > gait_wire::limits::MAX_CSR_BYTES {
        return error_msg(ErrorCode::TooLarge, "the CSR is larger than 16 KiB");
    }
    let csr = match VerifiedCsr::from_der(&request.csr_der) {
        Ok(csr) => csr,
        Err(e) => return error_msg(ErrorCode::BadRequest, e.to_string()),
    };
    let actor = format!("agent:{}", session.spiffe);
    match enrollment
        .renew(&actor, &session.key, &session.cert_serial, csr)
        .await
    {
        Ok(signed) => {
            crate::metrics::inc_labelled(&state.metrics.certificates_issued, "kind", "renew");
            info!(agent = %session.key, old_serial = %session.cert_serial, serial = %signed.serial,
                not_after_unix = signed.not_after.unix_timestamp(), "agent certificate renewed");
            ServerMsgV2::Certificate(IssuedCertificate {
                chain_pem: signed.chain_pem,
                ca_bundle_pem: signed.ca_bundle_pem,
                not_after_unix: signed.not_after.unix_timestamp(),
            })
        }
        Err(e @ (EnrollError::Csr(_) | EnrollError::Revoked { .. })) => {
            error_msg(ErrorCode::Forbidden, e.to_string())
        }
        Err(EnrollError::Store(e)) if e.is_retryable() => {
            warn!(agent = %session.key, error = %e, "certificate renewal failed; the agent retries");
            error_msg(ErrorCode::Unavailable, "store unavailable, retry")
        }
        Err(e) => {
            warn!(agent = %session.key, error = %e, "certificate renewal failed");
            error_msg(
                ErrorCode::Internal,
                "the aggregator could not renew the certificate; see its log",
            )
        }
    }
}
