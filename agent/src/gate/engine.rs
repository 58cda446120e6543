//! The daemon's side of the gate: the trace signing key and rate-limit state of local enforcement, and one
//! local decision from the verified bundle in force, made by the shared [`pipeline`](super::pipeline) with
//! no tokens and no broker.
//!
//! Around the pipeline the daemon adds only what it alone knows:
//! - no verified bundle at all: nothing is evaluated; `high`/`critical` risk intents are blocked
//!   (`agent_no_verified_policy`), every other intent needs approval (enforcement `no_policy`);
//! - an intent that does not normalize is still blocked by a policy that fails closed for its risk class
//!   (Gait's step 2), otherwise it is a bad request;
//! - staleness: with `on_stale: fail_closed` anything but `block` becomes `block` with `agent_bundle_stale`
//!   (enforcement `stale_fail_closed`), and simulation never lifts that block.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gait_artifact::trace::TraceRecord;
use gait_canon::sign::SigningKey;
use gait_policy::gate::{GateDecision, SimulateReport};
use gait_policy::{EvalOptions, IntentRequest, Verdict, normalize_intent};
use serde::Serialize;
use serde_json::Value;

use super::PRODUCER_VERSION;
use super::approvals::{ApprovalStore, DeliveredTokens};
use super::pipeline::{self, Inputs, TraceContext};
use super::policy_set::{PolicySet, PreparedPolicy};

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

/// The trace signing key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[error("trace signing key {}: {detail}", path.display())]
pub struct KeyError {
    /// The key file at fault.
    pub path: PathBuf,
    /// What went wrong.
    pub detail: String,
}

/// The signing key and state files of local enforcement.
#[derive(Debug)]
pub struct GateEngine {
    key: SigningKey,
    key_id: String,
    rate_limit_state: PathBuf,
    rate_limit_bound: super::ratelimit_bound::KeyBound,
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
            rate_limit_state: data_dir.join(RATE_LIMIT_STATE),
            rate_limit_bound: super::ratelimit_bound::KeyBound::new(
                super::ratelimit_bound::DEFAULT_MAX_KEYS,
            ),
            approvals: ApprovalStore::open(data_dir),
        })
    }

    /// Bounds the rate-limit state to `max_keys` counters (`gate.rate_limit.max_keys`).
    pub fn with_rate_limit_max_keys(mut self, max_keys: usize) -> GateEngine {
        self.rate_limit_bound = super::ratelimit_bound::KeyBound::new(max_keys);
        self
    }

    /// Delivered approval tokens and raised approval requests.
    pub fn approvals(&self) -> &ApprovalStore {
        &self.approvals
    }

    /// Key id (SHA-256 of the raw public key) traces are signed with.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Decides `raw` against the bundle policies `set` (none: fail-closed default), enforcing rate limits
    /// and staleness. Blocking: takes the rate-limit file lock and does file I/O.
    pub fn decide(
        &self,
        set: Option<PolicySet<'_>>,
        stale_fail_closed: bool,
        raw: &IntentRequest,
        req: &GateRequest,
    ) -> Result<LocalDecision, DecisionError> {
        let Some(set) = set else {
            return Ok(no_policy_decision(raw));
        };
        let prepared = set.pick(req.policy.as_deref()).map_err(|e| {
            if e.is_bad_request() {
                bad("policy", e.to_string())
            } else {
                DecisionError::Internal(e.to_string())
            }
        })?;
        let inputs = Inputs {
            policy: &prepared.policy,
            policy_digest: &prepared.digest,
            context_evidence: None,
            wrkr: None,
            registry_entries: &[],
            rate_limit_state: &self.rate_limit_state,
            recover_rate_limit_state: true,
            rate_limit_bound: Some(&self.rate_limit_bound),
            simulate: req.simulate && !stale_fail_closed,
        };
        let mut tokens = DeliveredTokens {
            store: &self.approvals,
            key: set.approval_key,
        };
        let mut evaluated = match pipeline::run(&inputs, raw, &mut tokens) {
            Ok(evaluated) => evaluated,
            Err(e) if e.is_normalize() => {
                // Gait's step 2: a policy that fails closed for this risk class blocks an invalid intent.
                let outcome =
                    gait_policy::evaluate_request(&prepared.policy, raw, &EvalOptions::default())
                        .map_err(|_| bad("intent", e.to_string()))?;
                let mut decision = GateDecision::from_outcome(&outcome);
                let policy_verdict = decision.verdict;
                let enforcement = stale_block(&mut decision, stale_fail_closed);
                return Ok(LocalDecision {
                    decision,
                    matched_rule: outcome.matched_rule,
                    enforcement,
                    simulated: None,
                    policy_verdict,
                    trace: None,
                    intent_digest: String::new(),
                    policy: Some(prepared),
                    ask: None,
                });
            }
            Err(e) if e.is_invalid_intent() => return Err(bad("intent", e.to_string())),
            Err(e) if e.is_storage() => {
                return Err(DecisionError::Storage(format!("rate limit state: {e}")));
            }
            Err(e) => return Err(DecisionError::Internal(format!("rate limit state: {e}"))),
        };
        let enforcement = stale_block(&mut evaluated.decision, stale_fail_closed);
        let record = evaluated.trace_record(
            &inputs,
            &TraceContext {
                producer_version: PRODUCER_VERSION,
                ..TraceContext::default()
            },
            crate::clock::now_go(),
        );
        let trace = gait_artifact::trace::sign_trace(record, &self.key);
        // Still waiting for approval (no valid token presented, not simulated away): ask upstream.
        let ask = (evaluated.decision.verdict == Verdict::RequireApproval
            && evaluated.enforced_verdict == Verdict::RequireApproval)
            .then(|| ApprovalAsk {
                intent_digest: evaluated.intent.intent_digest.clone(),
                policy_digest: prepared.digest.clone(),
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
            simulated: evaluated.simulated,
            // The pipeline calls the verdict before simulation "enforced" (what enforcement would do); the record
            // calls it the policy's own verdict, beside the verdict the caller enforces.
            policy_verdict: evaluated.enforced_verdict,
            trace: Some(trace),
            intent_digest: evaluated.intent.intent_digest,
            policy: Some(prepared),
            ask,
        })
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
    /// The signed trace (absent when nothing was evaluated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Value>,
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
fn no_policy_decision(raw: &IntentRequest) -> LocalDecision {
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
    let intent_digest = normalize_intent(raw)
        .map(|n| n.intent_digest)
        .unwrap_or_default();
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
