//! Local gate decisions: the running agent answers "may this tool call happen?" from its last *verified*
//! bundle, without asking the aggregator, signs a Gait trace for the decision and records it durably in the
//! outbox before answering.
//!
//! Order for one intent (`POST /v1/gate/evaluate`):
//! 1. Parse the Gait intent request (Gait's leniency: unknown fields ignored, keys case-insensitive).
//! 2. Pick the policy: the bundle's only policy file, or the one named by `?policy=`.
//! 3. No verified bundle at all: nothing is evaluated; `high`/`critical` risk intents are blocked
//!    (`agent_no_verified_policy`), every other intent needs approval. Enforcement is `no_policy`.
//! 4. Evaluate exactly as `gait gate eval` does without tokens (contract §3.4 and the CLI post-processing):
//!    rate limit and destructive budget (state file `gate_rate_limits.json` in the data dir, exclusive lock),
//!    delegation required ⇒ `block` (no token can be presented here), approvals ⇒ `require_approval` stays,
//!    broker credential required ⇒ `block` (no broker here), then `simulate` when asked.
//! 5. Staleness (the bundle's `max_offline_seconds` since the last contact with the aggregator): with
//!    `on_stale: keep` the decision stands and says `stale: true`; with `on_stale: fail_closed` anything but
//!    a `block` becomes `block` with `agent_bundle_stale` (enforcement `stale_fail_closed`). Simulation never
//!    lifts that block: a stale fail-closed agent does not enforce from a policy it can no longer vouch for.
//! 6. Sign the trace (`gait.gate.trace`, Ed25519 with the agent's trace key, verifiable by
//!    `gait trace verify`), append a `gate.decision` record (class `block`, `approval` or `allow` by the
//!    verdict before simulation) whose envelope carries the bundle digest in force and since when, and only
//!    then answer. If the record cannot be stored the caller gets an error and must fail closed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use gait_artifact::GoTime;
use gait_artifact::trace::TraceRecord;
use gait_canon::sign::SigningKey;
use gait_policy::gate::{
    BrokerStatus, GateDecision, SimulateReport, apply_approvals, apply_broker, apply_delegation,
    apply_simulate,
};
use gait_policy::intent::prepare_for_evaluation;
use gait_policy::{
    EvalOptions, IntentRequest, NormalizedIntent, Policy, Verdict, evaluate, normalize_intent,
    parse_intent, parse_policy_yaml,
};
use gait_wire::RecordClass;
use serde::Serialize;
use serde_json::Value;

use super::state::{ActiveBundle, now_unix_ms};
use super::{AgentState, DaemonError};
use crate::gaitcli::PRODUCER_VERSION;
use crate::gaitcli::gate_eval::{enforce_limits, fail_closed_risk, gate_created_at};
use crate::gaitcli::trace_emit::{self, TraceInputs};
use crate::outbox::{AppendOutcome, OutboxError};

/// Record kind of a local gate decision.
pub const DECISION_KIND: &str = "gate.decision";
/// Schema of the decision record payload.
pub const DECISION_SCHEMA: &str = "gait.agent.gate_decision";
/// File name of the agent's generated trace signing key (in `<data_dir>/keys/`).
pub const TRACE_PRIVATE_KEY: &str = "trace_private.key";
/// File name of its public half, for `gait trace verify --public-key`.
pub const TRACE_PUBLIC_KEY: &str = "trace_public.key";
/// Rate-limit state file in the data dir (Gait's format).
pub const RATE_LIMIT_STATE: &str = "gate_rate_limits.json";
/// Reason code when the agent has no verified bundle.
pub const REASON_NO_POLICY: &str = "agent_no_verified_policy";
/// Reason code when the bundle is stale and says `on_stale: fail_closed`.
pub const REASON_STALE: &str = "agent_bundle_stale";

/// A bundle policy file parsed once at activation.
#[derive(Debug)]
pub struct PreparedPolicy {
    /// File name in the bundle.
    pub name: String,
    /// The parsed, normalized policy.
    pub policy: Policy,
    /// Its Gait policy digest.
    pub digest: String,
}

/// Every policy file of a bundle, parsed; a file that does not parse keeps its error (the aggregator
/// validates on publish, so this is a defence, reported at decision time).
pub type PreparedPolicies = BTreeMap<String, Result<Arc<PreparedPolicy>, String>>;

/// Parses every policy file of a verified bundle.
pub fn prepare_policies(bundle: &gait_bundle::VerifiedBundle) -> PreparedPolicies {
    bundle
        .files
        .iter()
        .map(|(name, bytes)| {
            let prepared = parse_policy_yaml(bytes)
                .map(|policy| {
                    let digest = policy.digest();
                    Arc::new(PreparedPolicy {
                        name: name.clone(),
                        policy,
                        digest,
                    })
                })
                .map_err(|e| e.to_string());
            (name.clone(), prepared)
        })
        .collect()
}

/// The signing key and state files of local enforcement.
#[derive(Debug)]
pub struct GateEngine {
    key: SigningKey,
    key_id: String,
    rate_limit_state: PathBuf,
}

impl GateEngine {
    /// Loads the trace key from `key_path`, or (when `None`) from `<data_dir>/keys/trace_private.key`,
    /// generating that pair on first start.
    pub fn open(data_dir: &Path, key_path: Option<&Path>) -> Result<GateEngine, DaemonError> {
        let key = match key_path {
            Some(path) => {
                gait_canon::sign::load_private_key_file(path).map_err(|e| DaemonError::GateKey {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?
            }
            None => load_or_generate(&data_dir.join("keys"))?,
        };
        let key_id = key.public_key().key_id();
        Ok(GateEngine {
            key,
            key_id,
            rate_limit_state: data_dir.join(RATE_LIMIT_STATE),
        })
    }

    /// Key id (SHA-256 of the raw public key) traces are signed with.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}

fn load_or_generate(dir: &Path) -> Result<SigningKey, DaemonError> {
    let private = dir.join(TRACE_PRIVATE_KEY);
    let public = dir.join(TRACE_PUBLIC_KEY);
    let key_err = |detail: String| DaemonError::GateKey {
        path: private.clone(),
        detail,
    };
    if private.exists() {
        return gait_canon::sign::load_private_key_file(&private)
            .map_err(|e| key_err(e.to_string()));
    }
    std::fs::create_dir_all(dir).map_err(|e| key_err(format!("create {}: {e}", dir.display())))?;
    let key = SigningKey::try_generate().map_err(|e| key_err(format!("generate: {e}")))?;
    gait_canon::sign::write_key_pair(&private, &public, &key)
        .map_err(|e| key_err(format!("write: {e}")))?;
    tracing::info!(
        key = %private.display(),
        key_id = %key.public_key().key_id(),
        "generated the trace signing key"
    );
    Ok(key)
}

/// One decision request.
#[derive(Debug, Clone, Default)]
pub struct GateRequest {
    /// The Gait intent request JSON.
    pub intent: Vec<u8>,
    /// Policy file of the bundle to evaluate against (required when the bundle holds several).
    pub policy: Option<String>,
    /// Gait's `--simulate`: record the real decision, enforce `allow`.
    pub simulate: bool,
}

/// Why no decision was made (the caller must fail closed).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The intent or the request is malformed.
    #[error("{message}")]
    BadRequest {
        /// Which input is at fault.
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The decision could not be recorded durably.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// Local state (rate-limit file, policy parse) failed.
    #[error("{0}")]
    Internal(String),
}

fn bad(field: &'static str, message: impl Into<String>) -> GateError {
    GateError::BadRequest {
        field,
        message: message.into(),
    }
}

/// How the verdict came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Evaluated against the bundle policy.
    Policy,
    /// The bundle is stale and `on_stale: fail_closed` turned the verdict into `block`.
    StaleFailClosed,
    /// No verified bundle: fail-closed default.
    NoPolicy,
}

/// The bundle a decision was made under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionBundle {
    /// Bundle epoch.
    pub epoch: u64,
    /// Bundle digest, lowercase hex.
    pub digest: String,
    /// In force since (ms since the Unix epoch).
    pub since_unix_ms: i64,
}

/// The answer to a decision request, and (in `record`) what the outbox stored.
#[derive(Debug, Clone, Serialize)]
pub struct GateResponse {
    /// Always true for a decision.
    pub ok: bool,
    /// The intent's tool.
    pub tool_name: String,
    /// The verdict to enforce.
    pub verdict: Verdict,
    /// Reason codes, sorted.
    pub reason_codes: Vec<String>,
    /// Violations, sorted.
    pub violations: Vec<String>,
    /// The deciding rule, if any.
    pub matched_rule: String,
    /// How the verdict came about.
    pub enforcement: Enforcement,
    /// The bundle in force was older than its `max_offline_seconds`.
    pub stale: bool,
    /// The bundle in force, if any.
    pub bundle: Option<DecisionBundle>,
    /// Policy file of the bundle that decided.
    pub policy_name: String,
    /// Gait policy digest.
    pub policy_digest: String,
    /// Gait intent digest (empty when the intent could not be normalized).
    pub intent_digest: String,
    /// Trace id (empty when no trace was signed).
    pub trace_id: String,
    /// Key id of the trace signature.
    pub trace_key_id: String,
    /// `simulate` report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulated: Option<SimulateReport>,
    /// Outbox sequence of the decision record; `None` when the `allow` record was shed under quota.
    pub record_seq: Option<u64>,
    /// The signed trace (absent when nothing was evaluated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Value>,
}

/// The decision before it is signed and recorded.
struct Decided {
    decision: GateDecision,
    matched_rule: String,
    enforcement: Enforcement,
    simulated: Option<SimulateReport>,
    /// Verdict before simulation: picks the record class.
    enforced_verdict: Verdict,
    trace: Option<TraceRecord>,
    intent_digest: String,
    policy: Option<Arc<PreparedPolicy>>,
}

fn record_class(verdict: Verdict) -> RecordClass {
    match verdict {
        Verdict::Block => RecordClass::Block,
        Verdict::RequireApproval => RecordClass::Approval,
        Verdict::Allow | Verdict::DryRun => RecordClass::Allow,
    }
}

fn pick_policy(
    active: &ActiveBundle,
    name: Option<&str>,
) -> Result<Arc<PreparedPolicy>, GateError> {
    let names = || {
        active
            .policies
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let entry = match name.map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => active.policies.get(name).ok_or_else(|| {
            bad(
                "policy",
                format!(
                    "bundle epoch {} has no policy file {name:?}; it has: {}",
                    active.epoch(),
                    names()
                ),
            )
        })?,
        None if active.policies.len() == 1 => active
            .policies
            .values()
            .next()
            .ok_or_else(|| GateError::Internal("bundle without policies".into()))?,
        None => {
            return Err(bad(
                "policy",
                format!(
                    "bundle epoch {} holds {} policy files; name one with ?policy=<file> ({})",
                    active.epoch(),
                    active.policies.len(),
                    names()
                ),
            ));
        }
    };
    entry.clone().map_err(|e| {
        GateError::Internal(format!(
            "policy file of bundle epoch {} does not parse: {e}",
            active.epoch()
        ))
    })
}

/// Evaluates, enforces rate limits, applies staleness (blocking: file lock and I/O).
fn decide_blocking(
    engine: &GateEngine,
    active: Option<&ActiveBundle>,
    stale_fail_closed: bool,
    raw: &IntentRequest,
    req: &GateRequest,
) -> Result<Decided, GateError> {
    let Some(active) = active else {
        let verdict = if fail_closed_risk(raw) {
            Verdict::Block
        } else {
            Verdict::RequireApproval
        };
        let decision = GateDecision {
            verdict,
            reason_codes: vec![REASON_NO_POLICY.to_owned()],
            violations: vec!["no_verified_policy".to_owned()],
        };
        let intent_digest = normalize_intent(raw)
            .map(|n| n.intent_digest)
            .unwrap_or_default();
        return Ok(Decided {
            decision,
            matched_rule: String::new(),
            enforcement: Enforcement::NoPolicy,
            simulated: None,
            enforced_verdict: verdict,
            trace: None,
            intent_digest,
            policy: None,
        });
    };
    let prepared = pick_policy(active, req.policy.as_deref())?;
    let policy = &prepared.policy;
    let started = Instant::now();
    let normalized = match normalize_intent(raw) {
        Ok(n) => n,
        Err(e) => {
            // Gait's step 2: a policy that fails closed for this risk class blocks an invalid intent.
            let outcome = gait_policy::evaluate_request(policy, raw, &EvalOptions::default())
                .map_err(|_| bad("intent", format!("normalize intent: {e}")))?;
            let mut decision = GateDecision::from_outcome(&outcome);
            let enforced_verdict = decision.verdict;
            let enforcement = stale_block(&mut decision, stale_fail_closed);
            return Ok(Decided {
                decision,
                matched_rule: outcome.matched_rule,
                enforcement,
                simulated: None,
                enforced_verdict,
                trace: None,
                intent_digest: String::new(),
                policy: Some(prepared),
            });
        }
    };
    let outcome = evaluate(policy, &normalized, &EvalOptions::default())
        .map_err(|e| bad("intent", e.to_string()))?;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let intent: NormalizedIntent = prepare_for_evaluation(&normalized, None)
        .map_err(|e| bad("intent", format!("prepare intent: {e}")))?;
    let mut decision = GateDecision::from_outcome(&outcome);
    enforce_limits(&engine.rate_limit_state, &outcome, &intent, &mut decision)
        .map_err(|e| GateError::Internal(format!("rate limit state: {}", e.message)))?;
    if outcome.require_delegation {
        apply_delegation(&mut decision, true, &[]);
    }
    apply_approvals(
        &mut decision,
        outcome.min_approvals,
        outcome.require_distinct_approvers,
        &[],
    );
    apply_broker(
        &mut decision,
        outcome.require_broker_credential,
        BrokerStatus::NotConfigured,
    );
    let enforced_verdict = decision.verdict;
    let simulated = if req.simulate && !stale_fail_closed {
        Some(apply_simulate(&mut decision))
    } else {
        None
    };
    let enforcement = stale_block(&mut decision, stale_fail_closed);
    let created_at = gate_created_at(&intent);
    let record = trace_emit::build_trace(
        &TraceInputs {
            policy,
            policy_digest: &prepared.digest,
            intent: &intent,
            verdict: decision.verdict,
            reason_codes: &decision.reason_codes,
            violations: &decision.violations,
            created_at,
            producer_version: PRODUCER_VERSION,
            correlation_id: "",
            approval_token_ref: "",
            delegation_token_ref: "",
            latency_ms,
            context_source: &outcome.context_source,
            script: outcome.script.as_ref(),
            pre_approved: false,
            pattern_id: "",
            registry_reason: "",
        },
        GoTime::now_utc(),
    );
    let trace = gait_artifact::trace::sign_trace(record, &engine.key);
    Ok(Decided {
        decision,
        matched_rule: outcome.matched_rule,
        enforcement,
        simulated,
        enforced_verdict,
        trace: Some(trace),
        intent_digest: intent.intent_digest,
        policy: Some(prepared),
    })
}

/// `on_stale: fail_closed`: anything but `block` becomes `block`.
fn stale_block(decision: &mut GateDecision, stale_fail_closed: bool) -> Enforcement {
    if !stale_fail_closed {
        return Enforcement::Policy;
    }
    decision.verdict = Verdict::Block;
    decision.add(REASON_STALE, None);
    Enforcement::StaleFailClosed
}

/// Decides one intent locally, records the decision durably, and returns the answer.
pub async fn evaluate_intent(
    state: &Arc<AgentState>,
    req: GateRequest,
) -> Result<GateResponse, GateError> {
    let raw = parse_intent(&req.intent).map_err(|e| bad("intent", format!("intent: {e}")))?;
    let tool_name = raw.tool_name.trim().to_owned();
    let engine = state.gate().clone();
    let active = state.active_bundle();
    let staleness = state.staleness_at(now_unix_ms());
    let stale_fail_closed =
        staleness.stale && staleness.on_stale == Some(gait_bundle::OnStale::FailClosed);
    let active2 = active.clone();
    let decided = tokio::task::spawn_blocking(move || {
        decide_blocking(&engine, active2.as_deref(), stale_fail_closed, &raw, &req)
    })
    .await
    .map_err(|e| GateError::Internal(format!("decision task failed: {e}")))??;

    let trace_json = match &decided.trace {
        Some(t) => Some(
            serde_json::to_value(t)
                .map_err(|e| GateError::Internal(format!("encode trace: {e}")))?,
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
    let payload = decision_payload(&response, decided.enforced_verdict);
    let bytes = serde_json::to_vec(&payload)
        .map_err(|e| GateError::Internal(format!("encode decision record: {e}")))?;
    let class = record_class(decided.enforced_verdict);
    let outcome = state.append(class, DECISION_KIND.to_owned(), bytes).await?;
    response.record_seq = match outcome {
        AppendOutcome::Appended { seq } => Some(seq),
        AppendOutcome::Shed => None,
    };
    Ok(response)
}

/// The outbox record of a decision: the answer plus the verdict before simulation (the bundle digest in
/// force and since when are on the record envelope).
fn decision_payload(response: &GateResponse, enforced_verdict: Verdict) -> Value {
    let mut value = serde_json::to_value(response).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
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
