//! Gait intents, gate policies and their exact evaluation order, byte-for-byte compatible with Gait
//! (`davidahmann/gait` 69543c4; contract §1–§3, §6, §9).
//!
//! - [`intent`]: parse intent requests with Go's leniency, normalize them (§1.2), digest them (§1.3).
//! - [`policy`]: parse policy YAML strictly, normalize it (§3.2), digest it (§3.5).
//! - [`eval`]: evaluate a normalized intent against a policy (§3.4 steps 1–9). Pure.
//! - [`gate`]: the pure CLI post-processing (rate limits, approvals, simulate) and result documents.

pub mod eval;
pub mod gate;
mod glob;
pub mod gotime;
mod hostname;
pub mod intent;
pub mod policy;
mod text;
pub mod verdict;

pub use eval::{
    EvalError, EvalOptions, EvalOutcome, evaluate, evaluate_request, parse_wrkr_inventory,
};
pub use intent::{
    IntentError, IntentRequest, NormalizedIntent, normalize_intent, parse_and_normalize_intent,
    parse_intent,
};
pub use policy::{Policy, PolicyError, parse_policy_yaml};
pub use verdict::Verdict;
