//! Script (compound) intents, §3.4 step 9: each step is evaluated as a single intent sharing the context, the
//! most restrictive step verdict wins, then `max_steps`, `require_approval_above` and `block_mixed_risk` apply.

use serde::Serialize;

use super::rule::View;
use super::{
    EvalOptions, EvalOutcome, apply_wrkr, evaluate_single, merge_source, tighter_limit, wrkr_source,
};
use crate::intent::{
    IntentContext, IntentTarget, MAX_SCRIPT_STEPS, NormalizedIntent, NormalizedStep,
};
use crate::policy::Policy;
use crate::text::{insert_sorted, merge_unique_sorted};
use crate::verdict::Verdict;

/// Risk of a step (and of the whole script): `low < medium < high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CompositeRisk {
    /// Reads and other non-mutating classes.
    Low,
    /// `fs.write` or network access.
    Medium,
    /// `fs.delete`, `proc.exec` or any destructive target.
    High,
}

impl CompositeRisk {
    /// `low`, `medium` or `high`.
    pub fn as_str(self) -> &'static str {
        match self {
            CompositeRisk::Low => "low",
            CompositeRisk::Medium => "medium",
            CompositeRisk::High => "high",
        }
    }
}

/// The verdict of one step (trace `step_verdicts[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepVerdict {
    /// 0-based step index.
    pub index: usize,
    /// The step's tool name.
    pub tool_name: String,
    /// The step's verdict.
    pub verdict: Verdict,
    /// The step's reason codes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reason_codes: Vec<String>,
    /// The step's violations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    /// The step's matched rule(s).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub matched_rule: String,
}

/// Script details of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptOutcome {
    /// Number of steps.
    pub step_count: usize,
    /// The intent's script hash.
    pub script_hash: String,
    /// Highest step risk.
    pub composite_risk_class: CompositeRisk,
    /// Per-step verdicts in step order.
    pub step_verdicts: Vec<StepVerdict>,
}

fn step_risk(targets: &[IntentTarget]) -> CompositeRisk {
    let mut risk = CompositeRisk::Low;
    for t in targets {
        match t.endpoint_class.as_str() {
            "fs.delete" | "proc.exec" => return CompositeRisk::High,
            "fs.write" | "net.http" | "net.dns" => risk = CompositeRisk::Medium,
            _ => {}
        }
        if t.destructive {
            return CompositeRisk::High;
        }
    }
    risk
}

pub(super) fn evaluate_script(
    policy: &Policy,
    intent: &NormalizedIntent,
    steps: &[NormalizedStep],
    context: &IntentContext,
    opts: &EvalOptions<'_>,
) -> EvalOutcome {
    let mut outcome = EvalOutcome::decided(Verdict::Allow, Vec::new(), Vec::new());
    let mut matched: Vec<String> = Vec::new();
    let mut risks: Vec<CompositeRisk> = Vec::new();
    let mut step_verdicts = Vec::with_capacity(steps.len());
    let mut context_source = String::new();

    for (index, step) in steps.iter().enumerate() {
        let enriched = apply_wrkr(context, &step.tool_name, opts.wrkr_inventory);
        let view = View {
            tool_name: &step.tool_name,
            targets: &step.targets,
            arg_provenance: &step.arg_provenance,
            context: enriched.as_deref().unwrap_or(context),
            skill: intent.skill_provenance.as_ref(),
            delegation: intent.delegation.as_ref(),
        };
        let step_outcome = evaluate_single(policy, &view);
        outcome.verdict = outcome.verdict.most_restrictive(step_outcome.verdict);
        merge_unique_sorted(&mut outcome.reason_codes, &step_outcome.reason_codes);
        merge_unique_sorted(&mut outcome.violations, &step_outcome.violations);
        if !step_outcome.matched_rule.is_empty() {
            matched.push(step_outcome.matched_rule.clone());
        }
        outcome.min_approvals = outcome.min_approvals.max(step_outcome.min_approvals);
        outcome.require_distinct_approvers |= step_outcome.require_distinct_approvers;
        outcome.require_broker_credential |= step_outcome.require_broker_credential;
        outcome.require_delegation |= step_outcome.require_delegation;
        if outcome.broker_reference.is_empty() {
            outcome
                .broker_reference
                .clone_from(&step_outcome.broker_reference);
        }
        merge_unique_sorted(&mut outcome.broker_scopes, &step_outcome.broker_scopes);
        outcome.rate_limit = tighter_limit(&outcome.rate_limit, &step_outcome.rate_limit);
        outcome.destructive_budget = tighter_limit(
            &outcome.destructive_budget,
            &step_outcome.destructive_budget,
        );
        outcome.dataflow_triggered |= step_outcome.dataflow_triggered;
        let risk = step_risk(&step.targets);
        if !risks.contains(&risk) {
            risks.push(risk);
        }
        if enriched.is_some() {
            context_source = merge_source(&context_source, wrkr_source(opts));
        }
        step_verdicts.push(StepVerdict {
            index,
            tool_name: step.tool_name.clone(),
            verdict: step_outcome.verdict,
            reason_codes: step_outcome.reason_codes,
            violations: step_outcome.violations,
            matched_rule: step_outcome.matched_rule,
        });
    }

    let max_steps = usize::try_from(policy.scripts.max_steps)
        .ok()
        .filter(|m| *m > 0)
        .unwrap_or(MAX_SCRIPT_STEPS);
    if steps.len() > max_steps {
        outcome.verdict = Verdict::Block;
        insert_sorted(&mut outcome.reason_codes, "script_max_steps_exceeded");
        insert_sorted(&mut outcome.violations, "script_max_steps_exceeded");
    }
    let above = policy.scripts.require_approval_above;
    if above > 0 && i64::try_from(steps.len()).unwrap_or(i64::MAX) > above {
        outcome.verdict = outcome.verdict.most_restrictive(Verdict::RequireApproval);
        insert_sorted(&mut outcome.reason_codes, "script_step_threshold_approval");
        if outcome.min_approvals == 0 {
            outcome.min_approvals = 1;
        }
    }
    if policy.scripts.block_mixed_risk && risks.len() > 1 {
        outcome.verdict = Verdict::Block;
        insert_sorted(&mut outcome.reason_codes, "script_mixed_risk_blocked");
        insert_sorted(&mut outcome.violations, "script_mixed_risk");
    }

    matched.sort_unstable();
    matched.dedup();
    outcome.matched_rule = matched.join(",");
    outcome.script = Some(ScriptOutcome {
        step_count: steps.len(),
        script_hash: intent.script_hash.clone(),
        composite_risk_class: risks.iter().copied().max().unwrap_or(CompositeRisk::Low),
        step_verdicts,
    });
    outcome.context_source = context_source;
    outcome
}
