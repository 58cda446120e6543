//! Policy evaluation in Gait's exact order (contract §3.4): fail-closed on unevaluable intents, context
//! evidence preparation, the fail-closed gate, tier selection (lowest priority wins, equal-priority matches are
//! combined), per-rule effects, the tier merge, the default verdict and script intents. Pure: no I/O, no clock.

mod rule;
mod script;

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::Value;

use crate::intent::evidence::prepared_context;
use crate::intent::{
    ContextEvidence, EvidenceError, IntentContext, IntentRequest, NormalizeError, NormalizedIntent,
    normalize_intent,
};
use crate::policy::{FailClosedPolicy, Policy, RateLimitPolicy};
use crate::text::{lower_trim, merge_unique_sorted};
use crate::verdict::Verdict;

pub use rule::sanitize_rule_name;
pub use script::{CompositeRisk, ScriptOutcome, StepVerdict};

use rule::View;

/// Wrkr inventory metadata for one tool (all values lowercased).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrkrToolMetadata {
    /// `wrkr.tool_name`.
    pub tool_name: String,
    /// `wrkr.data_class`.
    pub data_class: String,
    /// `wrkr.endpoint_class`.
    pub endpoint_class: String,
    /// `wrkr.autonomy_level`.
    pub autonomy_level: String,
}

/// A loaded Wrkr inventory: lowercased tool name → metadata.
pub type WrkrInventory = BTreeMap<String, WrkrToolMetadata>;

/// The Wrkr inventory file is not JSON of either accepted shape.
#[derive(Debug, thiserror::Error)]
#[error("parse wrkr inventory: {0}")]
pub struct WrkrInventoryError(String);

/// Parse Wrkr inventory content as Gait does: `{"items":[...]}` when it has items, otherwise a bare array of
/// `{tool_name, data_class, endpoint_class, autonomy_level}`; values trimmed and lowercased, entries without a
/// tool name skipped, later duplicates win. Reading the file (and failing closed when it is missing) is the
/// caller's job.
pub fn parse_wrkr_inventory(bytes: &[u8]) -> Result<WrkrInventory, WrkrInventoryError> {
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        tool_name: String,
        #[serde(default)]
        data_class: String,
        #[serde(default)]
        endpoint_class: String,
        #[serde(default)]
        autonomy_level: String,
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        #[serde(default)]
        items: Vec<Item>,
    }
    // Go's encoding/json: keys match case-insensitively and `null` leaves a field empty.
    let items = match gait_canon::gojson::from_slice::<Envelope>(bytes) {
        Ok(envelope) if !envelope.items.is_empty() => envelope.items,
        _ => gait_canon::gojson::from_slice::<Vec<Item>>(bytes)
            .map_err(|e| WrkrInventoryError(e.to_string()))?,
    };
    let mut inventory = WrkrInventory::new();
    for item in items {
        let tool_name = lower_trim(&item.tool_name);
        if tool_name.is_empty() {
            continue;
        }
        inventory.insert(
            tool_name.clone(),
            WrkrToolMetadata {
                tool_name,
                data_class: lower_trim(&item.data_class),
                endpoint_class: lower_trim(&item.endpoint_class),
                autonomy_level: lower_trim(&item.autonomy_level),
            },
        );
    }
    Ok(inventory)
}

/// Optional inputs of an evaluation; the default is Gait's `gait policy test` (no envelope, no inventory).
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalOptions<'a> {
    /// Evidence from a context envelope the caller verified; without it context claims are stripped.
    pub context_evidence: Option<&'a ContextEvidence>,
    /// Wrkr inventory used to enrich `auth_context["wrkr.*"]`.
    pub wrkr_inventory: Option<&'a WrkrInventory>,
    /// Source label recorded as `context_source` when the inventory was applied (default `wrkr_inventory`).
    pub wrkr_source: Option<&'a str>,
}

/// Everything the evaluator decided, plus the obligations the CLI enforces afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOutcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Reason codes, unique and sorted.
    pub reason_codes: Vec<String>,
    /// Violations, unique and sorted.
    pub violations: Vec<String>,
    /// Comma-joined sorted names of the rules that decided (empty for the default verdict).
    pub matched_rule: String,
    /// Approvals required (0 unless the verdict is `require_approval`, except for scripts).
    pub min_approvals: i64,
    /// Approvals must come from distinct approvers.
    pub require_distinct_approvers: bool,
    /// A broker credential must be issued before an allow takes effect.
    pub require_broker_credential: bool,
    /// Signed delegation tokens must be verified.
    pub require_delegation: bool,
    /// Broker reference of the deciding rules.
    pub broker_reference: String,
    /// Broker scopes of the deciding rules.
    pub broker_scopes: Vec<String>,
    /// Tightest rate limit of the deciding rules (requests 0 ⇒ none).
    pub rate_limit: RateLimitPolicy,
    /// Tightest destructive budget of the deciding rules (requests 0 ⇒ none).
    pub destructive_budget: RateLimitPolicy,
    /// A dataflow constraint replaced an effect.
    pub dataflow_triggered: bool,
    /// Script details when the intent is a script.
    pub script: Option<ScriptOutcome>,
    /// `context_envelope`, the Wrkr source, or both comma-joined; empty when neither applied.
    pub context_source: String,
}

/// The intent could not be evaluated and the policy does not fail closed for its risk class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// Normalization failed.
    #[error("normalize intent: {0}")]
    Normalize(#[from] NormalizeError),
    /// The intent's context claims contradict the verified context envelope.
    #[error("normalize intent: {0}")]
    Evidence(#[from] EvidenceError),
}

impl EvalOutcome {
    fn decided(
        verdict: Verdict,
        reason_codes: Vec<String>,
        violations: Vec<String>,
    ) -> EvalOutcome {
        EvalOutcome {
            verdict,
            reason_codes,
            violations,
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
            script: None,
            context_source: String::new(),
        }
    }

    fn fail_closed_invalid() -> EvalOutcome {
        EvalOutcome::decided(
            Verdict::Block,
            vec!["fail_closed_intent_invalid".to_owned()],
            vec!["intent_not_evaluable".to_owned()],
        )
    }
}

fn should_fail_closed(fail_closed: &FailClosedPolicy, risk_class: &str) -> bool {
    if !fail_closed.enabled || fail_closed.risk_classes.is_empty() {
        return false;
    }
    let risk_class = lower_trim(risk_class);
    fail_closed.risk_classes.contains(&risk_class)
}

/// Evaluate a raw intent: when normalization fails, a policy that fails closed for the raw (trimmed,
/// lowercased) risk class blocks with `fail_closed_intent_invalid`; otherwise the error is returned.
pub fn evaluate_request(
    policy: &Policy,
    intent: &IntentRequest,
    opts: &EvalOptions<'_>,
) -> Result<EvalOutcome, EvalError> {
    match normalize_intent(intent) {
        Ok(normalized) => evaluate(policy, &normalized, opts),
        Err(_) if should_fail_closed(&policy.fail_closed, &intent.context.risk_class) => {
            Ok(EvalOutcome::fail_closed_invalid())
        }
        Err(err) => Err(err.into()),
    }
}

/// Evaluate a normalized intent against a normalized policy (§3.4 steps 2–9).
pub fn evaluate(
    policy: &Policy,
    intent: &NormalizedIntent,
    opts: &EvalOptions<'_>,
) -> Result<EvalOutcome, EvalError> {
    // Step 2 (second half): strip or bind context evidence.
    let prepared = match prepared_context(&intent.context, opts.context_evidence) {
        Ok(prepared) => prepared,
        Err(_) if should_fail_closed(&policy.fail_closed, &intent.context.risk_class) => {
            return Ok(EvalOutcome::fail_closed_invalid());
        }
        Err(err) => return Err(err.into()),
    };
    let context: &IntentContext = prepared.as_ref().unwrap_or(&intent.context);
    let mut context_source = String::new();
    if opts.context_evidence.is_some() {
        context_source = "context_envelope".to_owned();
    }

    // Step 3: fail-closed gate.
    if should_fail_closed(&policy.fail_closed, &context.risk_class)
        && let Some((reasons, violations)) =
            fail_closed_failures(&policy.fail_closed, intent, context)
    {
        return Ok(EvalOutcome::decided(Verdict::Block, reasons, violations));
    }

    // Steps 4 and 9: scripts.
    if let Some(steps) = &intent.script {
        let mut outcome = script::evaluate_script(policy, intent, steps, context, opts);
        outcome.context_source = merge_source(&context_source, &outcome.context_source);
        return Ok(outcome);
    }

    let enriched = apply_wrkr(context, &intent.tool_name, opts.wrkr_inventory);
    let view = View {
        tool_name: &intent.tool_name,
        targets: &intent.targets,
        arg_provenance: &intent.arg_provenance,
        context: enriched.as_deref().unwrap_or(context),
        skill: intent.skill_provenance.as_ref(),
        delegation: intent.delegation.as_ref(),
    };
    let mut outcome = evaluate_single(policy, &view);
    if enriched.is_some() {
        context_source = merge_source(&context_source, wrkr_source(opts));
    }
    outcome.context_source = context_source;
    Ok(outcome)
}

fn wrkr_source<'a>(opts: &EvalOptions<'a>) -> &'a str {
    match opts.wrkr_source.map(str::trim) {
        Some(source) if !source.is_empty() => source,
        _ => "wrkr_inventory",
    }
}

/// Gait's `mergeContextSource`: unique, sorted, comma-joined.
fn merge_source(current: &str, extra: &str) -> String {
    let mut parts: Vec<&str> = [current.trim(), extra.trim()]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    parts.sort_unstable();
    parts.dedup();
    parts.join(",")
}

/// `auth_context` enriched with the inventory entry for `tool_name`, or `None` when the inventory has none.
pub(crate) fn apply_wrkr(
    context: &IntentContext,
    tool_name: &str,
    inventory: Option<&WrkrInventory>,
) -> Option<Box<IntentContext>> {
    let meta = inventory?.get(&lower_trim(tool_name))?;
    let mut out = context.clone();
    let auth = out.auth_context.get_or_insert_with(Default::default);
    auth.insert(
        "wrkr.tool_name".into(),
        Value::String(meta.tool_name.clone()),
    );
    auth.insert(
        "wrkr.data_class".into(),
        Value::String(meta.data_class.clone()),
    );
    auth.insert(
        "wrkr.endpoint_class".into(),
        Value::String(meta.endpoint_class.clone()),
    );
    auth.insert(
        "wrkr.autonomy_level".into(),
        Value::String(meta.autonomy_level.clone()),
    );
    Some(Box::new(out))
}

/// The intent as Gait reports it after a single-intent evaluation with a Wrkr inventory: `auth_context`
/// carries the `wrkr.*` keys of its tool and the digests are recomputed (contract §1.3). `None` for scripts
/// and when the inventory has no entry for the tool.
pub fn wrkr_enriched_intent(
    intent: &NormalizedIntent,
    inventory: Option<&WrkrInventory>,
) -> Option<NormalizedIntent> {
    if intent.is_script() {
        return None;
    }
    let context = apply_wrkr(&intent.context, &intent.tool_name, inventory)?;
    let mut out = intent.clone();
    out.context = *context;
    out.recompute_digests();
    Some(out)
}

fn fail_closed_failures(
    fail_closed: &FailClosedPolicy,
    intent: &NormalizedIntent,
    context: &IntentContext,
) -> Option<(Vec<String>, Vec<String>)> {
    let unknown_class = |c: &str| c.trim().is_empty() || c.trim() == "other";
    let mut reasons: Vec<String> = Vec::new();
    let mut violations: Vec<String> = Vec::new();
    for field in &fail_closed.required_fields {
        let failed = match field.as_str() {
            "targets" => intent
                .targets
                .is_empty()
                .then_some(("fail_closed_missing_targets", "missing_targets")),
            "arg_provenance" => intent.arg_provenance.is_empty().then_some((
                "fail_closed_missing_arg_provenance",
                "missing_arg_provenance",
            )),
            "endpoint_class" => intent
                .targets
                .iter()
                .any(|t| unknown_class(&t.endpoint_class))
                .then_some((
                    "fail_closed_missing_endpoint_class",
                    "missing_endpoint_class",
                )),
            "delegation" => intent
                .delegation
                .is_none()
                .then_some(("fail_closed_missing_delegation", "missing_delegation")),
            "context_evidence" => context
                .context_set_digest
                .trim()
                .is_empty()
                .then_some(("context_evidence_missing", "missing_context_evidence")),
            _ => None,
        };
        if let Some((reason, violation)) = failed {
            reasons.push(reason.to_owned());
            violations.push(violation.to_owned());
        }
    }
    if intent
        .targets
        .iter()
        .any(|t| unknown_class(&t.endpoint_class))
    {
        reasons.push("fail_closed_endpoint_class_unknown".to_owned());
        violations.push("endpoint_class_unknown".to_owned());
    }
    if reasons.is_empty() {
        return None;
    }
    reasons.sort_unstable();
    reasons.dedup();
    violations.sort_unstable();
    violations.dedup();
    Some((reasons, violations))
}

/// Gait's `mergeRateLimitPolicy`: the tighter limit (fewer requests, then minute before hour, then scope name).
pub(crate) fn tighter_limit(
    current: &RateLimitPolicy,
    candidate: &RateLimitPolicy,
) -> RateLimitPolicy {
    fn window_rank(window: &str) -> u8 {
        match lower_trim(window).as_str() {
            "minute" => 0,
            "hour" => 1,
            _ => 2,
        }
    }
    if candidate.requests <= 0 {
        return current.clone();
    }
    if current.requests <= 0 || candidate.requests < current.requests {
        return candidate.clone();
    }
    if candidate.requests > current.requests {
        return current.clone();
    }
    match window_rank(&candidate.window).cmp(&window_rank(&current.window)) {
        std::cmp::Ordering::Less => candidate.clone(),
        std::cmp::Ordering::Greater => current.clone(),
        std::cmp::Ordering::Equal => {
            if lower_trim(&candidate.scope) < lower_trim(&current.scope) {
                candidate.clone()
            } else {
                current.clone()
            }
        }
    }
}

/// Steps 5–8 for one single intent (or one script step).
pub(crate) fn evaluate_single(policy: &Policy, view: &View<'_>) -> EvalOutcome {
    // Step 5: the first matching rule fixes the tier; collect every matching rule of that priority.
    let mut tier: Vec<(&crate::policy::PolicyRule, rule::RuleEffect)> = Vec::new();
    let mut tier_priority: Option<i64> = None;
    for candidate in &policy.rules {
        if let Some(p) = tier_priority
            && candidate.priority != p
        {
            break;
        }
        if !rule::rule_matches(&candidate.match_, view) {
            continue;
        }
        tier_priority = Some(candidate.priority);
        tier.push((candidate, rule::evaluate_matched_rule(candidate, view)));
    }

    // Step 8: nothing matched.
    if tier.is_empty() {
        let verdict = policy.default_verdict;
        let mut outcome = EvalOutcome::decided(
            verdict,
            vec![format!("default_{}", verdict.as_str())],
            Vec::new(),
        );
        if verdict == Verdict::RequireApproval {
            outcome.min_approvals = 1;
        }
        return outcome;
    }

    // Step 7: merge the tier.
    let verdict = tier.iter().fold(Verdict::Allow, |acc, (_, effect)| {
        acc.most_restrictive(effect.effect)
    });
    let mut outcome = EvalOutcome::decided(verdict, Vec::new(), Vec::new());
    let mut names: Vec<&str> = Vec::with_capacity(tier.len());
    for (rule, effect) in &tier {
        names.push(rule.name.as_str());
        if effect.effect != verdict {
            continue;
        }
        merge_unique_sorted(&mut outcome.reason_codes, &effect.reasons);
        merge_unique_sorted(&mut outcome.violations, &effect.violations);
        outcome.min_approvals = outcome.min_approvals.max(effect.min_approvals);
        outcome.require_distinct_approvers |= rule.require_distinct_approvers;
        outcome.require_broker_credential |= rule.require_broker_credential;
        outcome.require_delegation |= rule.match_.require_delegation;
        if outcome.broker_reference.is_empty() {
            outcome.broker_reference.clone_from(&rule.broker_reference);
        }
        merge_unique_sorted(&mut outcome.broker_scopes, &rule.broker_scopes);
        outcome.rate_limit = tighter_limit(&outcome.rate_limit, &rule.rate_limit);
        outcome.destructive_budget =
            tighter_limit(&outcome.destructive_budget, &rule.destructive_budget);
        outcome.dataflow_triggered |= effect.dataflow_triggered;
    }
    if verdict != Verdict::RequireApproval {
        outcome.min_approvals = 0;
        outcome.require_distinct_approvers = false;
    }
    names.sort_unstable();
    names.dedup();
    outcome.matched_rule = names.join(",");
    outcome
}

/// The context evaluation sees for `intent` under `opts` (claims stripped or bound). Exposed so callers can
/// show exactly what was evaluated.
pub fn evaluated_context<'a>(
    intent: &'a NormalizedIntent,
    opts: &EvalOptions<'_>,
) -> Result<Cow<'a, IntentContext>, EvidenceError> {
    Ok(
        match prepared_context(&intent.context, opts.context_evidence)? {
            Some(context) => Cow::Owned(context),
            None => Cow::Borrowed(&intent.context),
        },
    )
}

#[cfg(test)]
mod tests;
