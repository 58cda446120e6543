//! Certificate renewal while connected: once less than a third of the certificate's validity is left
//! ([`crate::tls::renew_at`]), the agent makes a fresh key, sends a CSR naming its own identity over its
//! authenticated connection (`RenewCertificate`), and on `Certificate` writes key (0600), chain and CA bundle
//! atomically, key first, where its configuration points. The next connection is made with the new files (the
//! shared client configuration is replaced); the current one carries on.
//!
//! The agent rotates its key at every renewal: the mutual-TLS session proves it holds the current key, the
//! CSR proves it holds the new one, and a key that leaked before the renewal is worthless after it.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use gait_wire::{AgentMsg, AgentMsgV2, ErrorCode, RenewCertificate, ServerMsg, ServerMsgV2};
use tokio_util::sync::CancellationToken;

use super::AgentState;
use super::exchange;
use crate::enroll::TlsPaths;

/// Pause after a failed renewal before the next attempt.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Longest sleep before the due time is looked at again (a clock that jumps is noticed within it).
const RECHECK_EVERY: Duration = Duration::from_secs(600);
/// How long a renewal exchange may take.
const RENEW_TIMEOUT: Duration = Duration::from_secs(30);

/// What renewal writes and where the next connection's configuration goes.
#[derive(Clone)]
pub(crate) struct Renewal {
    /// The configuration's `tls.*` files.
    pub paths: TlsPaths,
    /// Keep-alive of rebuilt client configurations.
    pub keep_alive: Duration,
    /// The client configuration the connection loop dials with.
    pub client_config: Arc<RwLock<quinn::ClientConfig>>,
}

/// Why one renewal attempt failed.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("cannot make the new key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error(transparent)]
    Exchange(#[from] exchange::ExchangeError),
    #[error("the aggregator refused the renewal ({}): {}", .0.code, .0.message)]
    Refused(gait_wire::WireError),
    #[error("unexpected answer to RenewCertificate")]
    Unexpected,
    #[error(transparent)]
    Answer(#[from] crate::enroll::EnrollError),
    #[error("the new certificate names {got}, not this agent ({want})")]
    Identity { got: String, want: String },
    #[error("the new files do not make a usable TLS configuration: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("writing the new files: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Renews the certificate whenever it is due, for as long as `conn` lives or until `token` is cancelled.
pub(crate) async fn renew_loop(
    state: Arc<AgentState>,
    conn: quinn::Connection,
    renewal: Renewal,
    token: CancellationToken,
) {
    loop {
        let (not_before, not_after) = state.certificate_validity();
        if not_before <= 0 {
            tracing::debug!("certificate validity unknown; no renewal");
            return;
        }
        let now = crate::clock::unix_ms() / 1000;
        let due = crate::tls::renew_at(not_before, not_after);
        let pause = if now < due {
            Duration::from_secs(u64::try_from(due - now).unwrap_or(0)).min(RECHECK_EVERY)
        } else {
            match renew_once(&state, &conn, &renewal).await {
                Ok(not_after) => {
                    tracing::info!(
                        not_after_unix = not_after,
                        "agent certificate renewed; the next connection presents it"
                    );
                    continue;
                }
                Err(RenewError::Refused(e)) if e.code == ErrorCode::Unsupported => {
                    tracing::warn!(message = %e.message, "the aggregator does not renew certificates; renew by hand before expiry");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, not_after_unix = not_after, "certificate renewal failed; retrying");
                    RETRY_AFTER
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = token.cancelled() => return,
            _ = conn.closed() => return,
        }
    }
}

/// One renewal: key, CSR, exchange, checks, files, new client configuration. Returns the new expiry.
async fn renew_once(
    state: &AgentState,
    conn: &quinn::Connection,
    renewal: &Renewal,
) -> Result<i64, RenewError> {
    let me = state.identity();
    let (key, _, csr_der) = crate::enroll::new_key_and_csr(me.agent_id.as_str(), Some(&me.uri))?;
    let msg = AgentMsg::V2(AgentMsgV2::RenewCertificate(RenewCertificate { csr_der }));
    let issued = match exchange::request(conn, &msg, RENEW_TIMEOUT).await? {
        ServerMsg::V2(ServerMsgV2::Certificate(issued)) => issued,
        ServerMsg::V2(ServerMsgV2::Error(e)) => return Err(RenewError::Refused(e)),
        _ => return Err(RenewError::Unexpected),
    };
    crate::enroll::check_certifies(&issued.chain_pem, &key)?;
    let new = crate::identity::AgentIdentity::from_cert_pem(issued.chain_pem.as_bytes())
        .map_err(|e| crate::enroll::EnrollError::Answer(e.to_string()))?;
    if new.uri != me.uri {
        return Err(RenewError::Identity {
            got: new.uri,
            want: me.uri.clone(),
        });
    }
    let paths = renewal.paths.clone();
    let keep_alive = renewal.keep_alive;
    let (config, validity) = tokio::task::spawn_blocking(move || {
        crate::enroll::write_files(&paths, &key, &issued.chain_pem, &issued.ca_bundle_pem)?;
        let config = crate::tls::client_config(&paths.ca, &paths.cert, &paths.key, keep_alive)?;
        let validity = crate::tls::certificate_validity(&paths.cert)?;
        Ok::<_, RenewError>((config, validity))
    })
    .await??;
    *renewal
        .client_config
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = config;
    state.set_certificate_validity(validity.0, validity.1);
    Ok(validity.1)
}
