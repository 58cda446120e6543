//! The daemon's side of the gate: the trace signing key and rate-limit counters of local enforcement, and one
//! local decision from the verified bundle in force, made by the shared [`pipeline`](super::pipeline) with
//! the tokens presented with the intent or delivered by the aggregator, and no broker.
//!
//! Around the pipeline the daemon adds only what it alone knows:
//! - no verified bundle at all: nothing is evaluated; `high`/`critical` risk intents are blocked
//!   (`agent_no_verified_policy`), every other intent needs approval (enforcement `no_policy`);
//! - an intent that does not normalize is still blocked by a policy that fails closed for its risk class
//!   (Gait's step 2), otherwise it is a bad request;
//! - staleness: with `on_stale: fail_closed` anything but `block` becomes `block` with `agent_bundle_stale`
//!   (enforcement `stale_fail_closed`), and simulation never lifts that block;
//! - the stage of the picked policy (`manifest.policies[].stage`): `enforce` runs it alone; `observe` runs it
//!   as the policy of record and its candidate in shadow (no rate-limit counting), enforcing the policy's
//!   verdict; `dry_run` runs the candidate as the policy of record and the replaced policy in shadow, and
//!   where their verdicts differ enforces the replaced policy's (a block the candidate adds is reported as
//!   `would_have_blocked`, one it drops stays). Both verdicts go into [`StageReport`] on every decision.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gait_artifact::trace::TraceRecord;
use gait_canon::sign::SigningKey;
use gait_policy::gate::{GateDecision, SimulateReport};
use gait_policy::{EvalOptions, IntentRequest, Verdict, normalize_intent};
use serde::Serialize;
use serde_json::Value;

use super::GateError;
use super::PRODUCER_VERSION;
use super::approvals::{ApprovalStore, EdgeTokens};
use super::pipeline::{self, Inputs, TraceContext};
use super::policy_set::{PolicySet, PreparedPolicy};
use super::ratelimit_counters::DaemonCounters;
use super::tokens::{DelegationAuditEntry, PresentedTokens};
use gait_artifact::approval::ApprovalAuditEntry;
use gait_bundle::Stage;

/// File name of the agent's generated trace signing key (in `<data_dir>/keys/`).
pub const TRACE_PRIVATE_KEY: &str = "trace_private.key";
/// File name of its public half, for `gait trace verify --public-key`.
pub const TRACE_PUBLIC_KEY: &str = "trace_public.key";
/// Rate-limit state file in the data dir (Gait's format) where daemons before the counters moved into the agent
/// database kept them; imported once at start ([`DaemonCounters::open`]).
pub const RATE_LIMIT_STATE: &str = "gate_rate_limits.json";
/// Reason code when the agent has no verified bundle.
pub const REASON_NO_POLICY: &str = "agent_no_verified_policy";
/// Reason code when the bundle is stale and says `on_stale: fail_closed`.
pub const REASON_STALE: &str = "agent_bundle_stale";
/// Reason code added in `dry_run` where the candidate would have stopped what the replaced policy lets through.
pub const REASON_WOULD_HAVE_BLOCKED: &str = "stage_dry_run_would_have_blocked";

/// The trace signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[error("trace signing key {}: {detail}", path.display())]
pub struct KeyError {
    /// The key file at fault.
    pub path: PathBuf,
    /// What went wrong.
    pub detail: String,
}

/// The signing key and rate-limit counters of local enforcement.
#[derive(Debug)]
pub struct GateEngine {
    key: SigningKey,
    key_id: String,
    rate_limits: Arc<DaemonCounters>,
    /// Delivered approval tokens and raised approval requests.
    approvals: ApprovalStore,
}

impl GateEngine {
    /// Loads the trace key from `key_path`, or (when `None`) from `<data_dir>/keys/trace_private.key`,
    /// generating that pair on first start.
    pub fn open(data_dir: &Path, key_path: Option<&Path>) -> Result<GateEngine, KeyError> {
        let key = match key_path {
            Some(path) => gait_canon::sign::load_private_key_file(path).map_err(|e| KeyError {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?,
            None => load_or_generate(&data_dir.join("keys"))?,
        };
        let key_id = key.public_key().key_id();
        Ok(GateEngine {
            key,
            key_id,
            rate_limits: Arc::new(DaemonCounters::new(
                super::ratelimit_bound::DEFAULT_MAX_KEYS,
            )),
            approvals: ApprovalStore::open(data_dir),
        })
    }

    /// Counts rate limits in `counters` (the daemon's, durable in the agent database) instead of the
    /// in-memory ones [`GateEngine::open`] starts with.
    pub fn with_rate_limits(mut self, counters: Arc<DaemonCounters>) -> GateEngine {
        self.rate_limits = counters;
        self
    }

    /// The rate-limit counters decisions count in (the outbox committer writes them with the records).
    pub fn rate_limits(&self) -> &Arc<DaemonCounters> {
        &self.rate_limits
    }

    /// Delivered approval tokens and raised approval requests.
    pub fn approvals(&self) -> &ApprovalStore {
        &self.approvals
    }

    /// Key id (SHA-256 of the raw public key) traces are signed with.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The public half of the trace signing key (what `gait trace verify --public-key` needs).
    pub fn public_key(&self) -> gait_canon::sign::PublicKey {
        self.key.public_key()
    }

    /// Decides `raw` against the bundle policies `set` (none: fail-closed default), enforcing rate limits,
    /// the stage of the picked policy and staleness. Blocking: takes the counters' lock, may read token files.
    pub fn decide(
        &self,
        set: Option<PolicySet<'_>>,
        stale_fail_closed: bool,
        raw: &IntentRequest,
        req: &GateRequest,
    ) -> Result<LocalDecision, DecisionError> {
        let Some(set) = set else {
            return Ok(no_policy_decision(raw, req.capture));
        };
        let prepared = set.pick(req.policy.as_deref()).map_err(|e| {
            if e.is_bad_request() {
                bad("policy", e.to_string())
            } else {
                DecisionError::Internal(e.to_string())
            }
        })?;
        // `candidate_error`: a staged candidate that could not be used or evaluated (rollout health counts it).
        let mut candidate_error = false;
        let (stage, candidate) = match &prepared.staged {
            None => (Stage::Enforce, None),
            Some(staged) => match &staged.candidate {
                Ok(candidate) => (staged.stage, Some(Arc::clone(candidate))),
                Err(error) => {
                    // The aggregator validates candidates on publish; should one not parse, its policy decides.
                    tracing::warn!(policy = %prepared.name, %error, "staged candidate unusable; its policy decides alone");
                    candidate_error = true;
                    (staged.stage, None)
                }
            },
        };
        // The policy of record counts rate limits and signs the trace; the other one is evaluated in shadow.
        let (of_record, shadow) = match (stage, &candidate) {
            (Stage::DryRun, Some(c)) => (Arc::clone(c), Some(Arc::clone(&prepared))),
            (Stage::Observe, Some(c)) => (Arc::clone(&prepared), Some(Arc::clone(c))),
            _ => (Arc::clone(&prepared), None),
        };
        let record_run = self.run_policy(&of_record, &set, raw, req, true)?;
        let shadow_run = match &shadow {
            None => None,
            Some(policy) => match self.run_policy(policy, &set, raw, req, false) {
                Ok(run) => Some(run),
                // In observe the candidate's failure must not change what the policy in force decides.
                Err(e) if stage == Stage::Observe => {
                    tracing::warn!(policy = %prepared.name, error = %e, "candidate could not be evaluated in shadow");
                    candidate_error = true;
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let record_verdict = record_run.decision().verdict;
        let shadow_verdict = shadow_run.as_ref().map(|r| r.decision().verdict);
        let candidate_reason_codes = match (stage, &shadow_run) {
            (Stage::DryRun, _) if candidate.is_some() => record_run.decision().reason_codes.clone(),
            (Stage::Observe, Some(shadow)) => shadow.decision().reason_codes.clone(),
            _ => Vec::new(),
        };
        // dry_run: never weaker than the replaced policy, and a block it adds is reported, not enforced.
        let (deciding, would_have_blocked) = match (stage, shadow_run) {
            (Stage::DryRun, Some(old)) => {
                let (new, was) = (severity(record_verdict), severity(old.decision().verdict));
                if new == was {
                    (record_run, false)
                } else {
                    (old, new > was)
                }
            }
            _ => (record_run, false),
        };
        let (active_verdict, candidate_verdict) = match stage {
            Stage::DryRun => (shadow_verdict, candidate.as_ref().map(|_| record_verdict)),
            _ => (Some(record_verdict), shadow_verdict),
        };
        let stage_report = StageReport {
            stage,
            candidate: candidate.as_ref().map(|c| c.name.clone()),
            candidate_digest: candidate.as_ref().map(|c| c.digest.clone()),
            active_verdict,
            candidate_verdict,
            would_have_blocked,
            candidate_reason_codes,
            candidate_error,
        };
        let policy_verdict = record_verdict;
        match deciding {
            PolicyRun::Invalid {
                mut decision,
                matched_rule,
            } => {
                if would_have_blocked {
                    decision.add(REASON_WOULD_HAVE_BLOCKED, None);
                }
                let enforcement = stale_block(&mut decision, stale_fail_closed);
                Ok(LocalDecision {
                    decision,
                    matched_rule,
                    enforcement,
                    simulated: None,
                    policy_verdict,
                    trace: None,
                    intent_digest: String::new(),
                    policy: Some(of_record),
                    ask: None,
                    stage: stage_report,
                    approval_audit: Vec::new(),
                    delegation_audit: Vec::new(),
                    // The intent did not normalize: there is no normalized form to capture.
                    normalized_intent: None,
                    profile: IntentProfile::default(),
                })
            }
            PolicyRun::Evaluated {
                policy,
                mut evaluated,
                approval_audit,
                delegation_audit,
            } => {
                if would_have_blocked {
                    evaluated.decision.add(REASON_WOULD_HAVE_BLOCKED, None);
                }
                let enforcement = stale_block(&mut evaluated.decision, stale_fail_closed);
                let enforced_verdict = evaluated.decision.verdict;
                let simulated = (req.simulate && !stale_fail_closed)
                    .then(|| gait_policy::gate::apply_simulate(&mut evaluated.decision));
                let record = evaluated.trace_record(
                    &self.inputs(&policy, false),
                    &TraceContext {
                        producer_version: PRODUCER_VERSION,
                        ..TraceContext::default()
                    },
                    crate::clock::now_go(),
                );
                let trace = gait_artifact::trace::sign_trace(record, &self.key);
                let normalized_intent = (req.capture == gait_bundle::CaptureMode::Raw)
                    .then(|| evaluated.intent.digest_payload());
                let profile = IntentProfile::of(&evaluated.intent);
                // Still waiting for approval (no valid token presented, not simulated away): ask upstream.
                let ask = (evaluated.decision.verdict == Verdict::RequireApproval
                    && enforced_verdict == Verdict::RequireApproval)
                    .then(|| ApprovalAsk {
                        intent_digest: evaluated.intent.intent_digest.clone(),
                        policy_digest: policy.digest.clone(),
                        tool_name: evaluated.intent.tool_name.clone(),
                        phase: evaluated.intent.context.phase.clone(),
                        destructive: evaluated.intent.has_destructive_target(),
                        scope: evaluated.intent.required_approval_scope(),
                        trace_id: trace.trace_id.clone(),
                    });
                Ok(LocalDecision {
                    decision: evaluated.decision,
                    matched_rule: evaluated.outcome.matched_rule,
                    enforcement,
                    simulated,
                    // The record class weighs the policy of record's own verdict beside the enforced one.
                    policy_verdict,
                    trace: Some(trace),
                    intent_digest: evaluated.intent.intent_digest,
                    policy: Some(of_record),
                    ask,
                    stage: stage_report,
                    approval_audit,
                    delegation_audit,
                    normalized_intent,
                    profile,
                })
            }
        }
    }

    /// The pipeline's inputs for `policy` as the daemon runs it (simulation is applied after the stage).
    fn inputs<'a>(&'a self, policy: &'a PreparedPolicy, apply_limits: bool) -> Inputs<'a> {
        Inputs {
            policy: &policy.policy,
            policy_digest: &policy.digest,
            context_evidence: None,
            wrkr: None,
            registry_entries: &[],
            rate_limits: pipeline::RateLimits::Daemon(&self.rate_limits),
            simulate: false,
            apply_limits,
        }
    }

    /// One policy's verdict on `raw` through the shared pipeline, with the presented and delivered tokens;
    /// `apply_limits` only for the policy of record.
    fn run_policy(
        &self,
        policy: &Arc<PreparedPolicy>,
        set: &PolicySet<'_>,
        raw: &IntentRequest,
        req: &GateRequest,
        apply_limits: bool,
    ) -> Result<PolicyRun, DecisionError> {
        let inputs = self.inputs(policy, apply_limits);
        let mut tokens = EdgeTokens::new(
            &self.approvals,
            set.approval_key,
            set.delegation_key,
            &req.tokens,
        );
        match pipeline::run(&inputs, raw, &mut tokens) {
            Ok(evaluated) => Ok(PolicyRun::Evaluated {
                policy: Arc::clone(policy),
                evaluated: Box::new(evaluated),
                approval_audit: tokens.approval_audit,
                delegation_audit: tokens.delegation_audit,
            }),
            Err(e) if e.is_normalize() => {
                // Gait's step 2: a policy that fails closed for this risk class blocks an invalid intent.
                let outcome =
                    gait_policy::evaluate_request(&policy.policy, raw, &EvalOptions::default())
                        .map_err(|_| bad("intent", e.to_string()))?;
                Ok(PolicyRun::Invalid {
                    decision: GateDecision::from_outcome(&outcome),
                    matched_rule: outcome.matched_rule,
                })
            }
            Err(GateError::Token(e)) => Err(bad(
                if e.kind == "approval" {
                    "approval_tokens"
                } else {
                    "delegation_tokens"
                },
                e.to_string(),
            )),
            Err(e) if e.is_invalid_intent() => Err(bad("intent", e.to_string())),
            Err(e) if e.is_storage() => {
                Err(DecisionError::Storage(format!("rate limit state: {e}")))
            }
            Err(e) => Err(DecisionError::Internal(format!("rate limit state: {e}"))),
        }
    }
}

/// One policy's run: the pipeline's result, or the fail-closed verdict on an intent that did not normalize.
enum PolicyRun {
    Evaluated {
        policy: Arc<PreparedPolicy>,
        evaluated: Box<pipeline::Evaluated>,
        approval_audit: Vec<ApprovalAuditEntry>,
        delegation_audit: Vec<DelegationAuditEntry>,
    },
    Invalid {
        decision: GateDecision,
        matched_rule: String,
    },
}

impl PolicyRun {
    fn decision(&self) -> &GateDecision {
        match self {
            PolicyRun::Evaluated { evaluated, .. } => &evaluated.decision,
            PolicyRun::Invalid { decision, .. } => decision,
        }
    }
}

/// How strongly a verdict stops a call: `block` over `require_approval` over `allow`/`dry_run`.
pub fn severity(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Block => 2,
        Verdict::RequireApproval => 1,
        Verdict::Allow | Verdict::DryRun => 0,
    }
}

/// The stage a decision was made at and what each policy decided (on every decision record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageReport {
    /// `enforce` (no candidate), `observe` or `dry_run`.
    pub stage: Stage,
    /// File name of the staged candidate.
    pub candidate: Option<String>,
    /// Gait policy digest of the staged candidate.
    pub candidate_digest: Option<String>,
    /// Verdict of the policy the bundle lists (the one a candidate would replace), before simulation and
    /// staleness.
    pub active_verdict: Option<Verdict>,
    /// Verdict of the candidate (evaluated in shadow in `observe`, of record in `dry_run`).
    pub candidate_verdict: Option<Verdict>,
    /// `dry_run` only: the candidate would have stopped what the replaced policy lets through; the replaced
    /// policy's verdict was enforced and the reason code `stage_dry_run_would_have_blocked` added.
    pub would_have_blocked: bool,
    /// The candidate's reason codes (before the stage's own codes), so rollout health can count differences
    /// by reason; omitted when it gave none or there is no candidate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidate_reason_codes: Vec<String>,
    /// A staged candidate could not be used or evaluated; its policy decided alone. Omitted when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub candidate_error: bool,
}

impl StageReport {
    /// The report of a decision made without a policy.
    fn none() -> Self {
        StageReport {
            stage: Stage::Enforce,
            candidate: None,
            candidate_digest: None,
            active_verdict: None,
            candidate_verdict: None,
            would_have_blocked: false,
            candidate_reason_codes: Vec::new(),
            candidate_error: false,
        }
    }
}

fn load_or_generate(dir: &Path) -> Result<SigningKey, KeyError> {
    let private = dir.join(TRACE_PRIVATE_KEY);
    let public = dir.join(TRACE_PUBLIC_KEY);
    let key_err = |detail: String| KeyError {
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
    /// Approval and delegation tokens presented with the intent.
    pub tokens: PresentedTokens,
    /// The environment's capture mode: `raw` makes the decision carry the normalized intent
    /// ([`LocalDecision::normalized_intent`]).
    pub capture: gait_bundle::CaptureMode,
}

/// Why no local decision was made (the caller must fail closed).
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    /// The intent or the request is malformed.
    #[error("{message}")]
    BadRequest {
        /// Which input is at fault.
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// Local state (rate-limit file, policy parse) failed.
    #[error("{0}")]
    Internal(String),
    /// The storage under the rate-limit state failed (full disk, I/O error): retry later or fail closed.
    #[error("{0}")]
    Storage(String),
}

impl DecisionError {
    /// The request is at fault (answer 400), not the agent.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, DecisionError::BadRequest { .. })
    }
}

/// A bad-request error naming `field`.
pub fn bad(field: &'static str, message: impl Into<String>) -> DecisionError {
    DecisionError::BadRequest {
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
    /// The signed trace (absent when nothing was evaluated), encoded once: the answer and the decision record
    /// embed these bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Box<serde_json::value::RawValue>>,
    /// The stage the policy was at, the candidate's digest and both verdicts.
    pub stage: StageReport,
    /// How each approval token was judged (absent when none was consulted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approval_audit: Vec<ApprovalAuditEntry>,
    /// How each presented delegation token was judged (absent when none was consulted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delegation_audit: Vec<DelegationAuditEntry>,
}

/// A local decision before it is recorded.
#[derive(Debug)]
pub struct LocalDecision {
    /// The final decision.
    pub decision: GateDecision,
    /// The deciding rule, if any.
    pub matched_rule: String,
    /// How the verdict came about.
    pub enforcement: Enforcement,
    /// The `simulate` report, when simulation ran.
    pub simulated: Option<SimulateReport>,
    /// The policy's own verdict (with rate limits and staleness), before simulation: picks the record class.
    /// [`decision`](Self::decision)`.verdict` is the verdict the caller enforces (`allow` after a simulated
    /// would-have-blocked decision).
    pub policy_verdict: Verdict,
    /// The signed trace (absent when nothing was evaluated).
    pub trace: Option<TraceRecord>,
    /// Gait intent digest (empty when the intent could not be normalized).
    pub intent_digest: String,
    /// The policy that decided.
    pub policy: Option<Arc<PreparedPolicy>>,
    /// The approval request to raise upstream, when the final verdict still requires approval.
    pub ask: Option<ApprovalAsk>,
    /// The stage and both policies' verdicts.
    pub stage: StageReport,
    /// How each approval token (presented or delivered) was judged.
    pub approval_audit: Vec<ApprovalAuditEntry>,
    /// How each presented delegation token was judged.
    pub delegation_audit: Vec<DelegationAuditEntry>,
    /// Gait's normalized intent object (§1.3, whose DigestJCS is `intent_digest`), only when the request asked
    /// for `raw` capture and the intent normalized.
    pub normalized_intent: Option<Value>,
    /// What the intent could do (empty when it did not normalize).
    pub profile: IntentProfile,
}

/// What a normalized intent could do, as the decision record carries it for fleet analytics (privilege of an
/// incident family): the context's risk class, the targets' endpoint classes and whether any is destructive.
/// Capture mode `digests` keeps it too: it names classes, never a value of the call.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct IntentProfile {
    /// The intent's `context.risk_class` (lowercased by normalization); empty when absent.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub risk_class: String,
    /// The targets' endpoint classes, sorted and without repeats.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoint_classes: Vec<String>,
    /// Some target is destructive.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub destructive: bool,
}

impl IntentProfile {
    /// The profile of a normalized intent.
    pub fn of(intent: &gait_policy::NormalizedIntent) -> Self {
        let mut endpoint_classes: Vec<String> = intent
            .targets
            .iter()
            .map(|t| t.endpoint_class.clone())
            .filter(|c| !c.is_empty())
            .collect();
        endpoint_classes.sort_unstable();
        endpoint_classes.dedup();
        IntentProfile {
            risk_class: intent.context.risk_class.clone(),
            endpoint_classes,
            destructive: intent.has_destructive_target(),
        }
    }

    /// Whether the profile says nothing (not written to the record then).
    pub fn is_empty(&self) -> bool {
        self.risk_class.is_empty() && self.endpoint_classes.is_empty() && !self.destructive
    }
}

/// What an `approval.request` record asks for (see `gait_wire::approval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalAsk {
    /// Gait intent digest.
    pub intent_digest: String,
    /// Gait policy digest.
    pub policy_digest: String,
    /// Tool name.
    pub tool_name: String,
    /// Phase.
    pub phase: String,
    /// Any target destructive.
    pub destructive: bool,
    /// The approval scope a token must grant.
    pub scope: Vec<String>,
    /// Trace of the decision.
    pub trace_id: String,
}

/// No verified bundle: `high`/`critical` risk is blocked, anything else needs approval.
fn no_policy_decision(raw: &IntentRequest, capture: gait_bundle::CaptureMode) -> LocalDecision {
    let verdict = if pipeline::fail_closed_risk(raw) {
        Verdict::Block
    } else {
        Verdict::RequireApproval
    };
    let decision = GateDecision {
        verdict,
        reason_codes: vec![REASON_NO_POLICY.to_owned()],
        violations: vec!["no_verified_policy".to_owned()],
    };
    let normalized = normalize_intent(raw).ok();
    let profile = normalized
        .as_ref()
        .map(IntentProfile::of)
        .unwrap_or_default();
    let normalized_intent = normalized
        .as_ref()
        .filter(|_| capture == gait_bundle::CaptureMode::Raw)
        .map(|n| n.digest_payload());
    let intent_digest = normalized.map(|n| n.intent_digest).unwrap_or_default();
    LocalDecision {
        decision,
        matched_rule: String::new(),
        enforcement: Enforcement::NoPolicy,
        simulated: None,
        policy_verdict: verdict,
        trace: None,
        intent_digest,
        policy: None,
        ask: None,
        stage: StageReport::none(),
        approval_audit: Vec::new(),
        delegation_audit: Vec::new(),
        normalized_intent,
        profile,
    }
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
