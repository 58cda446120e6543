//! Context-evidence handling before evaluation (contract §1.3): without a verified context envelope the
//! claims `context_set_digest`, `context_evidence_mode`, `context_refs` and `auth_context.context_age_seconds`
//! are unauthenticated and stripped; with one they are replaced by the envelope's values.

use serde_json::Value;

use super::{IntentContext, NormalizedIntent};
use crate::gotime::GoTime;
use crate::text::{go_lower, unique_sorted};

/// Evidence taken from a context envelope the caller has already verified (`--context-envelope`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEvidence {
    /// The envelope's context set digest.
    pub context_set_digest: String,
    /// The envelope's evidence mode (`best_effort|required`).
    pub evidence_mode: String,
    /// Reference ids of the envelope's records.
    pub context_refs: Vec<String>,
    /// Age in seconds of the oldest record relative to the evaluation time (computed by the caller).
    pub context_age_seconds: i64,
}

impl ContextEvidence {
    /// Gait's envelope age: the largest age of the records' `retrieved_at` relative to `now` (the envelope's
    /// `created_at` when it has no records), in whole seconds; zero or future times count as age 0.
    pub fn age_seconds(
        records_retrieved_at: &[GoTime],
        envelope_created_at: GoTime,
        now: GoTime,
    ) -> i64 {
        let age = |t: GoTime| -> i64 {
            if t.is_zero() || t > now {
                return 0;
            }
            let delta = now.to_offset_date_time() - t.to_offset_date_time();
            delta.whole_seconds()
        };
        if records_retrieved_at.is_empty() {
            return age(envelope_created_at);
        }
        records_retrieved_at
            .iter()
            .map(|t| age(*t))
            .max()
            .unwrap_or(0)
            .max(0)
    }
}

/// The intent's own claims contradict the verified envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    /// `context.context_set_digest` differs from the envelope's digest.
    #[error("context envelope digest does not match context.context_set_digest")]
    DigestMismatch,
    /// `context.context_evidence_mode` differs from the envelope's mode.
    #[error("context envelope evidence mode does not match context.context_evidence_mode")]
    ModeMismatch,
}

const AGE_KEY: &str = "context_age_seconds";

/// The context as evaluation must see it, or `None` when it is already so (nothing to strip, no envelope).
pub(crate) fn prepared_context(
    context: &IntentContext,
    evidence: Option<&ContextEvidence>,
) -> Result<Option<IntentContext>, EvidenceError> {
    match evidence {
        None => {
            let has_age = context
                .auth_context
                .as_ref()
                .is_some_and(|a| a.contains_key(AGE_KEY));
            if context.context_set_digest.is_empty()
                && context.context_evidence_mode.is_empty()
                && context.context_refs.is_empty()
                && !has_age
            {
                return Ok(None);
            }
            Ok(Some(stripped(context)))
        }
        Some(envelope) => {
            let claim = context.context_set_digest.trim();
            if !claim.is_empty() && go_lower(claim) != go_lower(envelope.context_set_digest.trim())
            {
                return Err(EvidenceError::DigestMismatch);
            }
            let mode = context.context_evidence_mode.trim();
            if !mode.is_empty() && go_lower(mode) != go_lower(envelope.evidence_mode.trim()) {
                return Err(EvidenceError::ModeMismatch);
            }
            let mut out = stripped(context);
            out.context_set_digest = envelope.context_set_digest.clone();
            out.context_evidence_mode = envelope.evidence_mode.clone();
            out.context_refs = unique_sorted(&envelope.context_refs);
            out.auth_context
                .get_or_insert_with(Default::default)
                .insert(
                    AGE_KEY.to_owned(),
                    Value::from(envelope.context_age_seconds),
                );
            Ok(Some(out))
        }
    }
}

fn stripped(context: &IntentContext) -> IntentContext {
    let mut out = context.clone();
    out.context_set_digest.clear();
    out.context_evidence_mode.clear();
    out.context_refs.clear();
    if let Some(auth) = &mut out.auth_context {
        auth.remove(AGE_KEY);
        if auth.is_empty() {
            out.auth_context = None;
        }
    }
    out
}

/// The intent with unauthenticated context-evidence claims removed and its digest recomputed: the digest
/// `gait gate eval` reports, writes into traces and binds approval tokens to when no envelope is given.
pub fn strip_context_evidence(intent: &NormalizedIntent) -> NormalizedIntent {
    match prepared_context(&intent.context, None) {
        Ok(Some(context)) => with_context(intent, context),
        _ => intent.clone(),
    }
}

/// The intent exactly as evaluation sees it (claims stripped, or bound to `evidence`), digest recomputed.
pub fn prepare_for_evaluation(
    intent: &NormalizedIntent,
    evidence: Option<&ContextEvidence>,
) -> Result<NormalizedIntent, EvidenceError> {
    Ok(match prepared_context(&intent.context, evidence)? {
        Some(context) => with_context(intent, context),
        None => intent.clone(),
    })
}

fn with_context(intent: &NormalizedIntent, context: IntentContext) -> NormalizedIntent {
    let mut out = intent.clone();
    out.context = context;
    out.recompute_digests();
    out
}
