//! `POST /v1/gate/evaluate`: the running agent answers "may this tool call happen?" from its last *verified*
//! bundle, without asking the aggregator, signs a Gait trace for the decision and records it durably in the
//! outbox before answering.
//!
//! Order for one intent:
//! 1. Parse the Gait intent request (Gait's leniency: unknown fields ignored, keys case-insensitive).
//! 2. Decide with [`GateEngine::decide`](crate::gate::engine::GateEngine::decide): the bundle's policy
//!    (the only one, or `?policy=`) at its stage, the shared Gait pipeline with the tokens presented with the
//!    intent and those the aggregator delivered (no broker), staleness.
//! 3. Append a `gate.decision` record (class `block`, `approval` or `allow` by the stricter of the policy's own
//!    verdict and the enforced one) whose envelope carries the bundle digest in force and since when, and only
//!    then answer. If the record cannot be stored the caller gets an error and must fail closed.
//!
//! Simulation is the environment's choice, not the caller's: `simulate` is refused
//! ([`EvaluateError::SimulateNotAllowed`], before anything is decided or recorded) unless the signed bundle in
//! force says `settings.allow_caller_simulate`. Every decision record carries both `policy_verdict` (what the
//! policy decided) and `enforced_verdict` (what the caller was told to enforce), so a simulated `allow` never
//! hides a `block`, and `stage` (the stage, the candidate's digest, the verdicts of the policy and of its
//! candidate, `would_have_blocked`), and `capture_mode`; under the bundle's `raw` capture mode also the
//! normalized intent (see [`crate::gate::capture`]).

use std::sync::Arc;

use gait_policy::{Verdict, parse_intent};
use gait_wire::RecordClass;
use serde_json::Value;

use crate::gate::engine::{
    DecisionBundle, DecisionError, GateRequest, GateResponse, bad, severity,
};
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
    /// The caller asked for `simulate` and the bundle in force does not allow it (or no bundle is in force).
    #[error(
        "simulate is not allowed in this environment{}: it is decided by the environment's signed bundle, \
         published with allow_caller_simulate (`gait-aggregator publish --allow-caller-simulate`, which sets \
         manifest.settings.allow_caller_simulate); ask without simulate",
        if *no_bundle { " (no verified bundle is in force)" } else { "" }
    )]
    SimulateNotAllowed {
        /// No bundle was in force at all.
        no_bundle: bool,
    },
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

/// The record class of a decision: the stricter of the policy's verdict and the enforced one. Simulation only
/// lowers the enforced verdict (a would-have-blocked decision stays at block priority) and a stale bundle under
/// `fail_closed` only raises it (a stale block is never shed as an `allow`).
fn decision_class(policy: Verdict, enforced: Verdict) -> RecordClass {
    record_class(if severity(enforced) > severity(policy) {
        enforced
    } else {
        policy
    })
}

/// Decides one intent locally, records the decision durably, and returns the answer.
/// `requested_by` (the caller's transport and credential, as producer records carry `appended_by`) is stored in the record.
pub async fn evaluate_intent(
    state: &Arc<AgentState>,
    mut req: GateRequest,
    requested_by: Value,
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
    // Before the engine reads any delivered token: a delivery after this must not be answered by a new request.
    let deliveries = engine.approvals().deliveries();
    let active = state.active_bundle();
    if req.simulate {
        let allowed = active
            .as_ref()
            .is_some_and(|a| a.bundle.manifest.settings.allow_caller_simulate);
        if !allowed {
            return Err(EvaluateError::SimulateNotAllowed {
                no_bundle: active.is_none(),
            });
        }
    }
    // The environment's signed choice, never the caller's.
    req.capture = active
        .as_ref()
        .map(|a| a.bundle.manifest.settings.capture_mode)
        .unwrap_or_default();
    let capture = req.capture;
    let staleness = state.staleness_at(now_unix_ms());
    let stale_fail_closed =
        staleness.stale && staleness.on_stale == Some(gait_bundle::OnStale::FailClosed);
    // Deciding runs on this task: it is CPU work of tens of microseconds now that the rate-limit counters are in
    // memory (the only file it may read is a delivered approval token: a few small local files, and only for a
    // `require_approval` verdict under a bundle with an approval key). Handing it to the blocking pool cost two
    // thread hand-offs per decision, each a wait for a CPU on a loaded machine.
    let set = active.as_deref().map(|a| PolicySet {
        epoch: a.epoch(),
        policies: &a.policies,
        approval_key: a.approval_key,
        delegation_key: a.delegation_key,
    });
    let decided = engine.decide(set, stale_fail_closed, &raw, &req)?;

    let trace_json = match &decided.trace {
        Some(t) => Some(
            serde_json::value::to_raw_value(t)
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
        stage: decided.stage,
        approval_audit: decided.approval_audit,
        delegation_audit: decided.delegation_audit,
    };
    let requester = crate::gate::approvals::requester_of(&requested_by);
    let payload = DecisionRecord::new(
        &response,
        decided.policy_verdict,
        &clocks,
        &requested_by,
        &decided.profile,
    );
    let (bytes, _) = crate::gate::capture::encode_record(
        &payload,
        capture,
        decided.normalized_intent,
        crate::outbox::MAX_PAYLOAD_BYTES,
    )
    .map_err(|e| EvaluateError::Internal(format!("encode decision record: {e}")))?;
    // Both policies' verdicts weigh in, so a decision whose candidate would block is never shed as an `allow`.
    let strictest = [
        Some(decided.policy_verdict),
        response.stage.active_verdict,
        response.stage.candidate_verdict,
    ]
    .into_iter()
    .flatten()
    .max_by_key(|v| severity(*v))
    .unwrap_or(decided.policy_verdict);
    let class = decision_class(strictest, response.verdict);
    let outcome = state.append(class, DECISION_KIND.to_owned(), bytes).await?;
    response.record_seq = match outcome {
        AppendOutcome::Appended { seq } => Some(seq),
        AppendOutcome::Shed => None,
    };
    if let Some(ask) = &decided.ask {
        raise_approval(state, ask, &requester, deliveries).await;
    }
    state
        .decision_metrics()
        .observe(response.verdict, started.elapsed());
    Ok(response)
}

/// Raises an approval request upstream (an `approval.request` record) unless this intent already raised one
/// within the request's lifetime. The decision is already recorded and answered `require_approval` either way,
/// so a failure here is logged, not returned.
async fn raise_approval(
    state: &Arc<AgentState>,
    ask: &crate::gate::engine::ApprovalAsk,
    requester: &str,
    seen_deliveries: u64,
) {
    let now = now_unix_ms();
    let approvals = state.gate().approvals();
    if !approvals.should_raise(&ask.intent_digest, &ask.policy_digest, now, seen_deliveries) {
        return;
    }
    let payload = crate::gate::approvals::request_payload(ask, requester, now);
    let appended = match serde_json::to_vec(&payload) {
        Ok(bytes) => state
            .append(
                RecordClass::Approval,
                gait_wire::APPROVAL_REQUEST_KIND.to_owned(),
                bytes,
            )
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match appended {
        Ok(_) => {
            tracing::info!(intent_digest = %ask.intent_digest, tool = %ask.tool_name, requester,
            "approval requested upstream")
        }
        Err(error) => tracing::error!(intent_digest = %ask.intent_digest, %error,
            "approval request could not be recorded; the intent stays require_approval"),
    }
}

/// The two clocks of one decision.
struct Clocks {
    /// The intent's `created_at` as the caller sent it (absent when it sent none).
    intent_created_at: Option<String>,
    /// The agent's clock when it decided, Unix ms.
    agent_decided_unix_ms: i64,
}

/// The outbox record of a decision (schema [`DECISION_SCHEMA`]): the answer without `ok` and `record_seq`, plus
/// the policy's own verdict beside the enforced one (the bundle digest in force and since when are on the
/// record envelope), both clocks and who asked. Borrowed from the answer and serialized once, the signed trace
/// embedded as the bytes it was encoded to.
#[derive(serde::Serialize)]
struct DecisionRecord<'a> {
    schema: &'static str,
    tool_name: &'a str,
    verdict: &'static str,
    policy_verdict: &'static str,
    enforced_verdict: &'static str,
    reason_codes: &'a [String],
    violations: &'a [String],
    matched_rule: &'a str,
    enforcement: &'a crate::gate::engine::Enforcement,
    stale: bool,
    bundle: Option<&'a DecisionBundle>,
    policy_name: &'a str,
    policy_digest: &'a str,
    intent_digest: &'a str,
    trace_id: &'a str,
    trace_key_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    simulated: Option<&'a gait_policy::gate::SimulateReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace: Option<&'a serde_json::value::RawValue>,
    stage: &'a crate::gate::engine::StageReport,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    approval_audit: &'a [gait_artifact::approval::ApprovalAuditEntry],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    delegation_audit: &'a [crate::gate::tokens::DelegationAuditEntry],
    /// What the intent could do (risk class, endpoint classes, destructive), for fleet analytics.
    #[serde(skip_serializing_if = "crate::gate::engine::IntentProfile::is_empty")]
    intent_profile: &'a crate::gate::engine::IntentProfile,
    /// The agent's clock when it decided, Unix ms.
    agent_decided_unix_ms: i64,
    /// The intent's `created_at` as the caller sent it (`null` when it sent none).
    intent_created_at: Option<&'a str>,
    requested_by: &'a Value,
}

impl<'a> DecisionRecord<'a> {
    fn new(
        response: &'a GateResponse,
        policy_verdict: Verdict,
        clocks: &'a Clocks,
        requested_by: &'a Value,
        intent_profile: &'a crate::gate::engine::IntentProfile,
    ) -> Self {
        DecisionRecord {
            schema: DECISION_SCHEMA,
            tool_name: &response.tool_name,
            verdict: response.verdict.as_str(),
            policy_verdict: policy_verdict.as_str(),
            enforced_verdict: response.verdict.as_str(),
            reason_codes: &response.reason_codes,
            violations: &response.violations,
            matched_rule: &response.matched_rule,
            enforcement: &response.enforcement,
            stale: response.stale,
            bundle: response.bundle.as_ref(),
            policy_name: &response.policy_name,
            policy_digest: &response.policy_digest,
            intent_digest: &response.intent_digest,
            trace_id: &response.trace_id,
            trace_key_id: &response.trace_key_id,
            simulated: response.simulated.as_ref(),
            trace: response.trace.as_deref(),
            stage: &response.stage,
            approval_audit: &response.approval_audit,
            delegation_audit: &response.delegation_audit,
            intent_profile,
            agent_decided_unix_ms: clocks.agent_decided_unix_ms,
            intent_created_at: clocks.intent_created_at.as_deref(),
            requested_by,
        }
    }
}
