//! The one Gait gate: the ordered steps of `gait gate eval` (contract §3.4 and its CLI post-processing)
//! written once, in [`pipeline`], and called by both `gait-agent gate eval` ([`crate::gaitcli`]) and the
//! daemon's local decisions (`POST /v1/gate/evaluate`, [`crate::local_api`]).
//!
//! What differs between the two callers is only where the inputs come from: the CLI reads files and flags
//! and may present approval/delegation tokens and a credential broker; the daemon evaluates against its
//! verified bundle with the tokens a caller presents with the intent or the aggregator delivered (keys from the
//! bundle), and no broker. Those differences enter through
//! [`pipeline::Authorizations`]; the step order itself never forks.
//!
//! No clap, axum or quinn types live here. Dependency direction: `gaitcli -> gate` and
//! `local_api -> gate`; this module imports neither of them nor `daemon`.

pub mod approvals;
pub mod capture;
pub mod engine;
pub mod files;
pub mod pipeline;
pub mod policy_set;
pub mod ratelimit_bound;
pub mod ratelimit_counters;
pub mod ratelimit_state;
pub mod registry;
pub mod tokens;
pub mod trace;

use gait_policy::EvalError;
use gait_policy::gate::RateLimitError;
use gait_policy::intent::EvidenceError;
use gait_policy::intent::NormalizeError;

use ratelimit_state::StateError;

/// Producer version written into the artifacts this binary creates (traces, audit records).
pub const PRODUCER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a gate step could not reach a decision (the caller must fail closed).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The intent request did not normalize (Gait step 2).
    #[error("normalize intent: {0}")]
    Normalize(#[source] NormalizeError),
    /// Policy evaluation rejected the intent.
    #[error("{0}")]
    Evaluate(#[from] EvalError),
    /// The intent's context claims contradict the verified context envelope.
    #[error("verify context envelope: {0}")]
    ContextEvidence(#[from] EvidenceError),
    /// The rate-limit state file could not be locked, read or written.
    #[error(transparent)]
    RateLimitState(#[from] StateError),
    /// A rate-limit or destructive-budget policy could not be applied.
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    /// A presented approval or delegation token does not decode.
    #[error(transparent)]
    Token(#[from] tokens::TokenDecodeError),
}

impl GateError {
    /// The intent itself is at fault (normalization, evaluation or context evidence): a caller reports it
    /// as invalid input rather than as an internal failure.
    pub fn is_invalid_intent(&self) -> bool {
        matches!(
            self,
            GateError::Normalize(_) | GateError::Evaluate(_) | GateError::ContextEvidence(_)
        )
    }

    /// The intent failed normalization (the daemon then lets a fail-closed policy block it).
    pub fn is_normalize(&self) -> bool {
        matches!(self, GateError::Normalize(_))
    }

    /// The storage under the rate-limit state failed: its lock file or the new state could not be written
    /// (a full disk, an I/O error).
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            GateError::RateLimitState(StateError::Write(_) | StateError::Lock(_))
        )
    }

    /// The rate-limit state or policy failed (lock timeout, unreadable or unwritable state file).
    pub fn is_rate_limit(&self) -> bool {
        matches!(self, GateError::RateLimitState(_) | GateError::RateLimit(_))
    }
}
