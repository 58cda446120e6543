//! The Gait gate pipeline: one function, [`run`], holding the order of `gait gate eval` (contract §3.4 and
//! its CLI post-processing), shared by the CLI and the daemon:
//!
//! 1. normalize the intent request;
//! 2. approved-script registry fast path (a matching signed entry pre-approves the script) or policy
//!    evaluation;
//! 3. prepare the intent that is reported (verified context evidence, Wrkr enrichment when it decided);
//! 4. rate limit, then destructive budget, under one hold of the counters (Gait's state-file lock for the
//!    CLI, the daemon's in-memory counters for the daemon; counters increment even for non-allow verdicts);
//! 5. [`Authorizations::load_keys`] (the CLI loads its signing key here, so a bad key fails after the
//!    counters and before any token or broker is touched);
//! 6. delegation token chain, only when the deciding rule requires delegation;
//! 7. approval tokens, only when the verdict is `require_approval`;
//! 8. broker credential, only when the rule requires one and the verdict is `allow`;
//! 9. `simulate`, when asked.
//!
//! The trace is built afterwards by [`Evaluated::trace_record`] from the final decision; signing and writing
//! it (a file for the CLI, the outbox for the daemon) stay with the caller. Steps that need I/O other than
//! the rate-limit counters (token files, keys, a broker) are supplied by the caller through
//! [`Authorizations`].

use std::path::Path;
use std::time::Instant;

use gait_artifact::GoTime;
use gait_artifact::trace::TraceRecord;
use gait_policy::eval::{
    CompositeRisk, ScriptOutcome, StepVerdict, WrkrInventory, wrkr_enriched_intent,
};
use gait_policy::gate::{
    ApprovalReport, BrokerStatus, DelegationReport, GateDecision, RateLimitDecision,
    SimulateReport, TokenCheck, apply_approvals, apply_broker, apply_delegation,
    apply_destructive_budget, apply_rate_limit, apply_simulate, result_created_at,
};
use gait_policy::intent::{ContextEvidence, prepare_for_evaluation};
use gait_policy::policy::RateLimitPolicy;
use gait_policy::{
    EvalOptions, EvalOutcome, IntentRequest, NormalizedIntent, Policy, Verdict, evaluate,
    normalize_intent,
};

use super::GateError;
use super::ratelimit_bound::Counted;
use super::ratelimit_counters::DaemonCounters;
use super::ratelimit_state::{LOCK_TIMEOUT, RateLimitStore};
use super::registry::{self, LoadedEntry};
use super::trace::{self, TraceInputs};

/// What one evaluation is run with.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The policy in force.
    pub policy: &'a Policy,
    /// Its Gait policy digest.
    pub policy_digest: &'a str,
    /// Verified context evidence (the CLI's `--context-envelope`); `None` strips the intent's claims.
    pub context_evidence: Option<&'a ContextEvidence>,
    /// Wrkr inventory and its cleaned source path, enriching `auth_context["wrkr.*"]`.
    pub wrkr: Option<&'a (WrkrInventory, String)>,
    /// Verified approved-script registry entries (empty: no fast path).
    pub registry_entries: &'a [LoadedEntry],
    /// Where step 4 counts.
    pub rate_limits: RateLimits<'a>,
    /// Gait's `--simulate`: report what enforcement would do, enforce `allow`.
    pub simulate: bool,
    /// Whether step 4 (rate limit, destructive budget) counts and applies. `false` only for a policy evaluated
    /// in shadow beside the policy of record (a staged candidate, or the policy a dry run replaces): its
    /// verdict is reported, and only the policy of record's counters move.
    pub apply_limits: bool,
}

/// Where the rate-limit and destructive-budget counters live.
#[derive(Debug, Clone, Copy)]
pub enum RateLimits<'a> {
    /// Gait's state file under its exclusive lock, read and rewritten for each evaluation (`gate eval`):
    /// Gait's behaviour exactly, unbounded, and an unreadable file is the command's error.
    File(&'a Path),
    /// The long-running agent's counters: in memory, durable in the agent database with the decision records,
    /// bounded by `gate.rate_limit.max_keys` (a new key at the bound evicts counters below their limit or is
    /// refused: blocked).
    Daemon(&'a DaemonCounters),
}

/// Facts about the evaluation a token or broker step may need.
#[derive(Debug, Clone, Copy)]
pub struct StepContext<'a> {
    /// The prepared intent (the one the trace reports and tokens bind to).
    pub intent: &'a NormalizedIntent,
    /// Gait policy digest.
    pub policy_digest: &'a str,
    /// The evaluation outcome (deciding rule's requirements).
    pub outcome: &'a EvalOutcome,
}

/// The caller-specific inputs of steps 5–8: keys, presented tokens and the credential broker. The
/// pipeline decides *when* each is consulted; an implementation only says what was presented.
pub trait Authorizations {
    /// The caller's error; every [`GateError`] converts into it.
    type Error: From<GateError>;

    /// Step 5: load whatever keys the later steps and the trace need.
    fn load_keys(&mut self) -> Result<(), Self::Error>;

    /// Step 6 (delegation required): the verdicts on the presented delegation tokens, empty when none.
    fn delegation_tokens(&mut self, ctx: &StepContext<'_>) -> Result<Vec<TokenCheck>, Self::Error>;

    /// Step 7 (verdict `require_approval`): the verdicts on the presented approval tokens, empty when none.
    fn approval_tokens(&mut self, ctx: &StepContext<'_>) -> Result<Vec<TokenCheck>, Self::Error>;

    /// Step 8 (credential required, verdict `allow`): ask the broker for a credential.
    fn broker_credential(&mut self, ctx: &StepContext<'_>) -> BrokerStatus;
}

/// No tokens and no broker: what the daemon presents (delegation required ⇒ `block`, approvals ⇒
/// `require_approval` stays, broker credential required ⇒ `block`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAuthorizations;

impl Authorizations for NoAuthorizations {
    type Error = GateError;

    fn load_keys(&mut self) -> Result<(), GateError> {
        Ok(())
    }

    fn delegation_tokens(&mut self, _ctx: &StepContext<'_>) -> Result<Vec<TokenCheck>, GateError> {
        Ok(Vec::new())
    }

    fn approval_tokens(&mut self, _ctx: &StepContext<'_>) -> Result<Vec<TokenCheck>, GateError> {
        Ok(Vec::new())
    }

    fn broker_credential(&mut self, _ctx: &StepContext<'_>) -> BrokerStatus {
        BrokerStatus::NotConfigured
    }
}

/// Everything one pipeline run produced.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The prepared intent the trace and the answer report.
    pub intent: NormalizedIntent,
    /// The evaluation outcome (or the registry's pre-approval).
    pub outcome: EvalOutcome,
    /// The final decision (after simulation).
    pub decision: GateDecision,
    /// The verdict before simulation.
    pub enforced_verdict: Verdict,
    /// The gate result's `created_at`.
    pub created_at: GoTime,
    /// The registry fast path pre-approved the script.
    pub pre_approved: bool,
    /// Pattern id of the matching registry entry.
    pub pattern_id: String,
    /// Why the registry did or did not match (empty when it was not consulted).
    pub registry_reason: String,
    /// Milliseconds spent normalizing and evaluating.
    pub latency_ms: f64,
    /// The rate-limit step's decision, when the rule has a rate limit.
    pub rate: Option<RateLimitDecision>,
    /// The destructive-budget step's decision, when it applied.
    pub budget: Option<RateLimitDecision>,
    /// The delegation step's report, when delegation was required.
    pub delegation: Option<DelegationReport>,
    /// The approval step's report (default when the verdict was not `require_approval`).
    pub approval: ApprovalReport,
    /// The broker step's status, when it ran.
    pub broker: Option<BrokerStatus>,
    /// The `simulate` report, when simulation was asked for.
    pub simulated: Option<SimulateReport>,
    /// Non-fatal conditions to report (e.g. registry fast path disabled).
    pub warnings: Vec<String>,
}

/// The trace fields only the caller knows.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContext<'a> {
    /// Producer version stamped on the trace.
    pub producer_version: &'a str,
    /// Caller's correlation id.
    pub correlation_id: &'a str,
    /// Approval token reference recorded on the trace.
    pub approval_token_ref: &'a str,
    /// Delegation token reference recorded on the trace.
    pub delegation_token_ref: &'a str,
}

impl Evaluated {
    /// The unsigned trace of this evaluation and its current decision, observed at `observed_at`.
    pub fn trace_record(
        &self,
        inputs: &Inputs<'_>,
        ctx: &TraceContext<'_>,
        observed_at: GoTime,
    ) -> TraceRecord {
        trace::build_trace(
            &TraceInputs {
                policy: inputs.policy,
                policy_digest: inputs.policy_digest,
                intent: &self.intent,
                verdict: self.decision.verdict,
                reason_codes: &self.decision.reason_codes,
                violations: &self.decision.violations,
                created_at: self.created_at,
                producer_version: ctx.producer_version,
                correlation_id: ctx.correlation_id,
                approval_token_ref: ctx.approval_token_ref,
                delegation_token_ref: ctx.delegation_token_ref,
                latency_ms: self.latency_ms,
                context_source: &self.outcome.context_source,
                script: self.outcome.script.as_ref(),
                pre_approved: self.pre_approved,
                pattern_id: &self.pattern_id,
                registry_reason: &self.registry_reason,
            },
            observed_at,
        )
    }
}

/// Runs the gate steps in Gait's order (see the module doc) for the raw intent `raw`.
pub fn run<A: Authorizations>(
    inputs: &Inputs<'_>,
    raw: &IntentRequest,
    auth: &mut A,
) -> Result<Evaluated, A::Error> {
    // 1–2: normalize, then registry fast path or evaluation.
    let started = Instant::now();
    let normalized = normalize_intent(raw).map_err(GateError::Normalize)?;
    let mut warnings = Vec::new();
    let decided = decide(inputs, &normalized, &mut warnings)?;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    // 3: Gait reports (digests, trace, approval binding) the intent its single-intent evaluation enriched.
    let intent = prepared_intent(inputs, &normalized, &decided.outcome)?;
    let outcome = decided.outcome;
    let mut decision = GateDecision::from_outcome(&outcome);
    // 4: rate limit and destructive budget.
    let (rate, budget) = if inputs.apply_limits {
        enforce_limits(inputs, &outcome, &intent, &mut decision).map_err(A::Error::from)?
    } else {
        (None, None)
    };
    // 5: keys.
    auth.load_keys()?;
    let ctx = StepContext {
        intent: &intent,
        policy_digest: inputs.policy_digest,
        outcome: &outcome,
    };
    // 6: delegation, only when the deciding rule requires it.
    let delegation = if outcome.require_delegation {
        let tokens = auth.delegation_tokens(&ctx)?;
        Some(apply_delegation(&mut decision, true, &tokens))
    } else {
        None
    };
    // 7: approvals, only for require_approval.
    let approval = if decision.verdict == Verdict::RequireApproval {
        let tokens = auth.approval_tokens(&ctx)?;
        apply_approvals(
            &mut decision,
            outcome.min_approvals,
            outcome.require_distinct_approvers,
            &tokens,
        )
    } else {
        ApprovalReport::default()
    };
    // 8: broker credential, only when required and still allowed.
    let broker = if outcome.require_broker_credential && decision.verdict == Verdict::Allow {
        let status = auth.broker_credential(&ctx);
        apply_broker(&mut decision, true, status);
        Some(status)
    } else {
        None
    };
    // 9: simulate.
    let enforced_verdict = decision.verdict;
    let simulated = inputs.simulate.then(|| apply_simulate(&mut decision));
    Ok(Evaluated {
        intent,
        outcome,
        decision,
        enforced_verdict,
        created_at: decided.created_at,
        pre_approved: decided.pre_approved,
        pattern_id: decided.pattern_id,
        registry_reason: decided.registry_reason,
        latency_ms,
        rate,
        budget,
        delegation,
        approval,
        broker,
        simulated,
        warnings,
    })
}

/// Risk classes Gait's CLI fails closed for (`high`, `critical`).
pub fn fail_closed_risk(intent: &IntentRequest) -> bool {
    matches!(
        intent.context.risk_class.trim().to_lowercase().as_str(),
        "high" | "critical"
    )
}

/// The gate result's `created_at` for `intent` (Gait's rule, 1980-01-01 if that cannot be represented).
pub fn gate_created_at(intent: &NormalizedIntent) -> GoTime {
    GoTime::parse(&result_created_at(intent.created_at))
        .unwrap_or_else(|_| GoTime::from_datetime(time::macros::datetime!(1980-01-01 00:00:00 UTC)))
}

/// Gait's `gateIntentContainsDestructiveTarget`: script step targets when any step has targets.
pub fn has_destructive_target(intent: &NormalizedIntent) -> bool {
    if let Some(steps) = &intent.script
        && steps.iter().any(|s| !s.targets.is_empty())
    {
        return steps.iter().flat_map(|s| &s.targets).any(|t| t.destructive);
    }
    intent.targets.iter().any(|t| t.destructive)
}

/// The evaluation outcome plus what the registry fast path adds.
struct Decided {
    outcome: EvalOutcome,
    created_at: GoTime,
    pre_approved: bool,
    pattern_id: String,
    registry_reason: String,
}

/// Step 2: the registry fast path (unless the policy requires authenticated context evidence), else the
/// policy evaluation.
fn decide(
    inputs: &Inputs<'_>,
    intent: &NormalizedIntent,
    warnings: &mut Vec<String>,
) -> Result<Decided, GateError> {
    let mut registry_reason = String::new();
    if !inputs.registry_entries.is_empty() {
        if inputs.policy.requires_context_evidence() {
            warnings.push(
                "approved script fast-path disabled because policy requires authenticated context evidence"
                    .into(),
            );
        } else {
            let now = crate::clock::now_utc();
            let found =
                registry::match_script(intent, inputs.policy_digest, inputs.registry_entries, now);
            if found.matched {
                return Ok(Decided {
                    outcome: pre_approved_outcome(intent, &found),
                    created_at: GoTime::from_datetime(now),
                    pre_approved: true,
                    pattern_id: found.pattern_id,
                    registry_reason: found.reason,
                });
            }
            registry_reason = found.reason;
        }
    }
    let opts = EvalOptions {
        context_evidence: inputs.context_evidence,
        wrkr_inventory: inputs.wrkr.map(|(inventory, _)| inventory),
        wrkr_source: inputs.wrkr.map(|(_, source)| source.as_str()),
    };
    let outcome = evaluate(inputs.policy, intent, &opts)?;
    Ok(Decided {
        outcome,
        created_at: gate_created_at(intent),
        pre_approved: false,
        pattern_id: String::new(),
        registry_reason,
    })
}

/// Step 3: the context-prepared intent, Wrkr-enriched when the inventory took part in the decision.
fn prepared_intent(
    inputs: &Inputs<'_>,
    normalized: &NormalizedIntent,
    outcome: &EvalOutcome,
) -> Result<NormalizedIntent, GateError> {
    let mut intent = prepare_for_evaluation(normalized, inputs.context_evidence)?;
    if let Some((inventory, source)) = inputs.wrkr
        && outcome.context_source.split(',').any(|s| s == source)
        && let Some(enriched) = wrkr_enriched_intent(&intent, Some(inventory))
    {
        intent = enriched;
    }
    Ok(intent)
}

/// The outcome the registry fast path stands in for evaluation: `allow` with the match reason, and for a
/// script each step allowed with the composite risk from its endpoint classes.
fn pre_approved_outcome(intent: &NormalizedIntent, found: &registry::ScriptMatch) -> EvalOutcome {
    let reasons = vec![found.reason.clone()];
    let script = intent.script.as_ref().map(|steps| {
        let risk = steps
            .iter()
            .map(|s| {
                if s.targets.iter().any(|t| {
                    t.destructive || matches!(t.endpoint_class.as_str(), "fs.delete" | "proc.exec")
                }) {
                    CompositeRisk::High
                } else if s.targets.iter().any(|t| {
                    matches!(
                        t.endpoint_class.as_str(),
                        "fs.write" | "net.http" | "net.dns"
                    )
                }) {
                    CompositeRisk::Medium
                } else {
                    CompositeRisk::Low
                }
            })
            .max()
            .unwrap_or(CompositeRisk::Low);
        ScriptOutcome {
            step_count: steps.len(),
            script_hash: intent.script_hash.clone(),
            composite_risk_class: risk,
            step_verdicts: steps
                .iter()
                .enumerate()
                .map(|(index, s)| StepVerdict {
                    index,
                    tool_name: s.tool_name.clone(),
                    verdict: Verdict::Allow,
                    reason_codes: reasons.clone(),
                    violations: Vec::new(),
                    matched_rule: String::new(),
                })
                .collect(),
        }
    });
    EvalOutcome {
        verdict: Verdict::Allow,
        reason_codes: reasons,
        violations: Vec::new(),
        matched_rule: String::new(),
        min_approvals: 0,
        require_distinct_approvers: false,
        require_broker_credential: false,
        require_delegation: false,
        broker_reference: String::new(),
        broker_scopes: Vec::new(),
        rate_limit: RateLimitPolicy::default(),
        destructive_budget: RateLimitPolicy::default(),
        dataflow_triggered: false,
        script,
        context_source: String::new(),
    }
}

/// A new counter was refused because the bounded state is full: the request is blocked and says why.
fn state_full(decision: &mut GateDecision, full: bool) {
    if full {
        decision.verdict = Verdict::Block;
        decision.add(
            super::ratelimit_bound::REASON_STATE_FULL,
            Some("rate_limit_state_full"),
        );
    }
}

/// Step 4: rate limit and destructive budget under one hold of the counters.
fn enforce_limits(
    inputs: &Inputs<'_>,
    outcome: &EvalOutcome,
    intent: &NormalizedIntent,
    decision: &mut GateDecision,
) -> Result<(Option<RateLimitDecision>, Option<RateLimitDecision>), GateError> {
    let rate_needed = outcome.rate_limit.requests > 0;
    let budget_needed = outcome.destructive_budget.requests > 0 && has_destructive_target(intent);
    if !rate_needed && !budget_needed {
        return Ok((None, None));
    }
    let now = gait_policy::gotime::GoTime::from_offset_date_time(crate::clock::now_utc());
    let identity = intent.context.identity.as_str();
    let limits = Limits {
        rate: rate_needed.then_some(&outcome.rate_limit),
        budget: budget_needed.then_some(&outcome.destructive_budget),
        tool_name: &intent.tool_name,
    };
    match inputs.rate_limits {
        RateLimits::File(path) => {
            let mut store = RateLimitStore::open(path, LOCK_TIMEOUT)?;
            let counted = limits.count(decision, |limit, tool| {
                Ok(Counted {
                    decision: store.state.enforce(limit, tool, identity, now)?,
                    state_full: false,
                })
            })?;
            store.commit()?;
            Ok(counted)
        }
        RateLimits::Daemon(counters) => {
            let mut held = counters.hold(now);
            limits.count(decision, |limit, tool| {
                held.enforce(limit, tool, identity, now)
            })
        }
    }
}

/// The limits one evaluation counts against.
struct Limits<'a> {
    rate: Option<&'a RateLimitPolicy>,
    budget: Option<&'a RateLimitPolicy>,
    tool_name: &'a str,
}

impl Limits<'_> {
    /// Counts the rate limit under the tool, then the destructive budget under `destructive_budget|<tool>`,
    /// with `count`, and applies each to `decision`.
    fn count(
        &self,
        decision: &mut GateDecision,
        mut count: impl FnMut(
            &RateLimitPolicy,
            &str,
        ) -> Result<Counted, gait_policy::gate::RateLimitError>,
    ) -> Result<(Option<RateLimitDecision>, Option<RateLimitDecision>), GateError> {
        let rate = match self.rate {
            Some(limit) => {
                let counted = count(limit, self.tool_name)?;
                state_full(decision, counted.state_full);
                apply_rate_limit(decision, &counted.decision);
                Some(counted.decision)
            }
            None => None,
        };
        let budget = match self.budget {
            Some(limit) => {
                let tool =
                    gait_policy::gate::RateLimitState::destructive_budget_tool(self.tool_name);
                let counted = count(limit, &tool)?;
                state_full(decision, counted.state_full);
                apply_destructive_budget(decision, &counted.decision);
                Some(counted.decision)
            }
            None => None,
        };
        Ok((rate, budget))
    }
}

#[cfg(test)]
mod tests;
