//! `POST /v1/gate/evaluate`: the running agent answers "may this tool call happen?" from its last *verified*
//! bundle, without asking the aggregator, signs a Gait trace for the decision and records it durably in the
//! outbox before answering.
//!
//! Order for one intent:
//! 1. Parse the Gait intent request (Gait's leniency: unknown fields ignored, keys case-insensitive).
//! 2. Decide with [`GateEngine::decide`](crate::gate::engine::GateEngine::decide): the bundle's policy
//!    (the only one, or `?policy=`), the shared Gait pipeline without tokens or broker, staleness.
//! 3. Append a `gate.decision` record (class `block`, `approval` or `allow` by the verdict before
//!    simulation) whose envelope carries the bundle digest in force and since when, and only then answer.
//!    If the record cannot be stored the caller gets an error and must fail closed.

use std::sync::Arc;

use gait_policy::{Verdict, parse_intent};
use gait_wire::RecordClass;
use serde_json::Value;

use crate::gate::engine::{DecisionBundle, DecisionError, GateRequest, GateResponse, bad};
use crate::gate::policy_set::PolicySet;
use crate::outbox::{AppendOutcome, OutboxError};
use crate::state::{AgentState, now_unix_ms};

/// Record kind of a local gate decision.
pub const DECISION_KIND: &str = "gate.decision";
/// Schema of the decision record payload.
pub const DECISION_SCHEMA: &str = "gait.agent.gate_decision";

/// Why no decision was answered (the caller must fail closed).
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// No decision was made (bad request or local state failure).
    #[error(transparent)]
    Decision(#[from] DecisionError),
    /// The decision could not be recorded durably.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// The decision task or an encoding failed.
    #[error("{0}")]
    Internal(String),
}

fn record_class(verdict: Verdict) -> RecordClass {
    match verdict {
        Verdict::Block => RecordClass::Block,
        Verdict::RequireApproval => RecordClass::Approval,
        Verdict::Allow | Verdict::DryRun => RecordClass::Allow,
    }
}

/// Decides one intent locally, records the decision durably, and returns the answer.
pub async fn evaluate_intent(
    state: &Arc<AgentState>,
    req: GateRequest,
) -> Result<GateResponse, EvaluateError> {
    let started = std::time::Instant::now();
    let raw = parse_intent(&req.intent).map_err(|e| bad("intent", format!("intent: {e}")))?;
    let tool_name = raw.tool_name.trim().to_owned();
    // The caller's claim of when the intent was made, kept beside the agent's own clock: the record shows both,
    // so a producer cannot backdate a decision (Gait's trace fields stay Gait's).
    let clocks = Clocks {
        intent_created_at: if raw.created_at.is_zero() {
            None
        } else {
            Some(raw.created_at.to_rfc3339_nano())
        },
        agent_decided_unix_ms: now_unix_ms(),
    };
    let engine = state.gate().clone();
    let active = state.active_bundle();
    let staleness = state.staleness_at(now_unix_ms());
    let stale_fail_closed =
        staleness.stale && staleness.on_stale == Some(gait_bundle::OnStale::FailClosed);
    let active2 = active.clone();
    let decided = tokio::task::spawn_blocking(move || {
        let set = active2.as_deref().map(|a| PolicySet {
            epoch: a.epoch(),
            policies: &a.policies,
        });
        engine.decide(set, stale_fail_closed, &raw, &req)
    })
    .await
    .map_err(|e| EvaluateError::Internal(format!("decision task failed: {e}")))??;

    let trace_json = match &decided.trace {
        Some(t) => Some(
            serde_json::to_value(t)
                .map_err(|e| EvaluateError::Internal(format!("encode trace: {e}")))?,
        ),
        None => None,
    };
    let (policy_name, policy_digest) = decided
        .policy
        .as_ref()
        .map(|p| (p.name.clone(), p.digest.clone()))
        .unwrap_or_default();
    let bundle = active.as_ref().map(|a| DecisionBundle {
        epoch: a.epoch(),
        digest: a.bundle.digest_hex.clone(),
        since_unix_ms: a.since_unix_ms,
    });
    let trace_key_id = if decided.trace.is_some() {
        state.gate().key_id().to_owned()
    } else {
        String::new()
    };
    let mut response = GateResponse {
        ok: true,
        tool_name,
        verdict: decided.decision.verdict,
        reason_codes: decided.decision.reason_codes,
        violations: decided.decision.violations,
        matched_rule: decided.matched_rule,
        enforcement: decided.enforcement,
        stale: staleness.stale,
        bundle,
        policy_name,
        policy_digest,
        intent_digest: decided.intent_digest,
        trace_id: decided
            .trace
            .as_ref()
            .map(|t| t.trace_id.clone())
            .unwrap_or_default(),
        trace_key_id,
        simulated: decided.simulated,
        record_seq: None,
        trace: trace_json,
    };
    let payload = decision_payload(&response, decided.enforced_verdict, &clocks);
    let bytes = serde_json::to_vec(&payload)
        .map_err(|e| EvaluateError::Internal(format!("encode decision record: {e}")))?;
    let class = record_class(decided.enforced_verdict);
    let outcome = state.append(class, DECISION_KIND.to_owned(), bytes).await?;
    response.record_seq = match outcome {
        AppendOutcome::Appended { seq } => Some(seq),
        AppendOutcome::Shed => None,
    };
    state
        .decision_metrics()
        .observe(response.verdict, started.elapsed());
    Ok(response)
}

/// The two clocks of one decision.
struct Clocks {
    /// The intent's `created_at` as the caller sent it (absent when it sent none).
    intent_created_at: Option<String>,
    /// The agent's clock when it decided, Unix ms.
    agent_decided_unix_ms: i64,
}

/// The outbox record of a decision: the answer plus the verdict before simulation (the bundle digest in
/// force and since when are on the record envelope) and both clocks.
fn decision_payload(response: &GateResponse, enforced_verdict: Verdict, clocks: &Clocks) -> Value {
    let mut value = serde_json::to_value(response).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert(
            "agent_decided_unix_ms".into(),
            Value::from(clocks.agent_decided_unix_ms),
        );
        map.insert(
            "intent_created_at".into(),
            clocks
                .intent_created_at
                .clone()
                .map_or(Value::Null, Value::String),
        );
        map.remove("ok");
        map.remove("record_seq");
        map.insert("schema".into(), Value::String(DECISION_SCHEMA.into()));
        map.insert(
            "enforced_verdict".into(),
            Value::String(enforced_verdict.as_str().into()),
        );
    }
    value
}
