//! The pure part of `gait gate eval` after evaluation (contract §3.4, CLI post-processing), in Gait's order:
//! rate limit → destructive budget → delegation tokens → approval tokens → broker credential → simulate.
//! Token signatures and bindings are validated elsewhere (`gait-artifact`); here they arrive as outcomes.

use serde::Serialize;

use super::rate_limit::RateLimitDecision;
use crate::eval::EvalOutcome;
use crate::text::{insert_sorted, unique_sorted};
use crate::verdict::Verdict;

/// The decision being post-processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateDecision {
    /// Current verdict.
    pub verdict: Verdict,
    /// Reason codes, unique and sorted.
    pub reason_codes: Vec<String>,
    /// Violations, unique and sorted.
    pub violations: Vec<String>,
}

impl GateDecision {
    /// Start from an evaluation outcome.
    pub fn from_outcome(outcome: &EvalOutcome) -> GateDecision {
        GateDecision {
            verdict: outcome.verdict,
            reason_codes: outcome.reason_codes.clone(),
            violations: outcome.violations.clone(),
        }
    }

    /// Adds a reason code (and a violation) keeping both lists sorted and unique.
    pub fn add(&mut self, reason: &str, violation: Option<&str>) {
        insert_sorted(&mut self.reason_codes, reason);
        if let Some(v) = violation {
            insert_sorted(&mut self.violations, v);
        }
    }

    /// Exit code of `gait gate eval` for the current verdict.
    pub fn exit_code(&self) -> i32 {
        self.verdict.exit_code()
    }
}

/// A token (approval or delegation) as validated by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCheck {
    /// `token_id` of the token.
    pub token_id: String,
    /// Approver identity (approval tokens) or delegator identity (delegation tokens).
    pub identity: String,
    /// `Ok` when valid, otherwise Gait's error code (e.g. `approval_token_expired`).
    pub result: Result<(), String>,
}

/// Apply a rate-limit decision: over the limit ⇒ `block` + `rate_limit_exceeded`.
pub fn apply_rate_limit(decision: &mut GateDecision, rate: &RateLimitDecision) {
    if !rate.allowed {
        decision.verdict = Verdict::Block;
        decision.add("rate_limit_exceeded", Some("rate_limit_exceeded"));
    }
}

/// Apply a destructive-budget decision: exhausted ⇒ `block` + `destructive_budget_exceeded`.
pub fn apply_destructive_budget(decision: &mut GateDecision, budget: &RateLimitDecision) {
    if !budget.allowed {
        decision.verdict = Verdict::Block;
        decision.add(
            "destructive_budget_exceeded",
            Some("destructive_budget_exceeded"),
        );
    }
}

/// What the delegation step concluded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DelegationReport {
    /// A signed delegation chain was required.
    pub required: bool,
    /// Valid tokens presented.
    pub valid_delegations: usize,
    /// Comma-joined sorted ids of the valid tokens.
    pub delegation_ref: String,
}

/// When delegation is required: no token ⇒ `block` + `delegation_token_missing`; each invalid token adds its
/// code; no valid token ⇒ `block` + `delegation_chain_insufficient`; otherwise `delegation_granted`.
pub fn apply_delegation(
    decision: &mut GateDecision,
    required: bool,
    tokens: &[TokenCheck],
) -> DelegationReport {
    let mut report = DelegationReport {
        required,
        ..DelegationReport::default()
    };
    if !required {
        return report;
    }
    if tokens.is_empty() {
        decision.verdict = Verdict::Block;
        decision.add("delegation_token_missing", Some("delegation_not_granted"));
        return report;
    }
    let mut valid_ids = Vec::new();
    for token in tokens {
        match &token.result {
            Ok(()) => {
                report.valid_delegations += 1;
                if !token.token_id.is_empty() {
                    valid_ids.push(token.token_id.as_str());
                }
            }
            Err(code) => decision.add(code, None),
        }
    }
    if report.valid_delegations == 0 {
        decision.verdict = Verdict::Block;
        decision.add(
            "delegation_chain_insufficient",
            Some("delegation_not_granted"),
        );
    } else {
        decision.add("delegation_granted", None);
        report.delegation_ref = unique_sorted(valid_ids).join(",");
    }
    report
}

/// What the approval step concluded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApprovalReport {
    /// Approvals required (0 when the verdict was not `require_approval`).
    pub required_approvals: i64,
    /// Valid tokens presented.
    pub valid_approvals: usize,
    /// Distinct approvers among the valid tokens.
    pub approvers: Vec<String>,
    /// Comma-joined sorted ids of the valid tokens when approval was granted.
    pub approval_ref: String,
    /// The approvals turned the verdict into `allow`.
    pub granted: bool,
}

/// Only when the verdict is `require_approval`: no token ⇒ `approval_token_missing`; invalid tokens add their
/// codes; too few valid tokens ⇒ `approval_chain_insufficient`; too few distinct approvers (when required and
/// more than one approval is needed) ⇒ `approval_distinct_approvers_required`; otherwise `allow` +
/// `approval_granted`. Unmet requirements add the violation `approval_not_granted`.
pub fn apply_approvals(
    decision: &mut GateDecision,
    min_approvals: i64,
    require_distinct_approvers: bool,
    tokens: &[TokenCheck],
) -> ApprovalReport {
    let mut report = ApprovalReport::default();
    if decision.verdict != Verdict::RequireApproval {
        return report;
    }
    let required = min_approvals.max(1);
    report.required_approvals = required;
    if tokens.is_empty() {
        decision.add("approval_token_missing", Some("approval_not_granted"));
        return report;
    }
    let mut valid_ids = Vec::new();
    let mut approvers = Vec::new();
    for token in tokens {
        match &token.result {
            Ok(()) => {
                report.valid_approvals += 1;
                if !token.token_id.is_empty() {
                    valid_ids.push(token.token_id.as_str());
                }
                if !token.identity.is_empty() {
                    approvers.push(token.identity.as_str());
                }
            }
            Err(code) => decision.add(code, None),
        }
    }
    approvers.sort_unstable();
    approvers.dedup();
    report.approvers = approvers.into_iter().map(str::to_owned).collect();
    let valid = i64::try_from(report.valid_approvals).unwrap_or(i64::MAX);
    let distinct = i64::try_from(report.approvers.len()).unwrap_or(i64::MAX);
    let mut satisfied = true;
    if valid < required {
        decision.add("approval_chain_insufficient", Some("approval_not_granted"));
        satisfied = false;
    }
    if require_distinct_approvers && required > 1 && distinct < required {
        decision.add(
            "approval_distinct_approvers_required",
            Some("approval_not_granted"),
        );
        satisfied = false;
    }
    if satisfied {
        decision.verdict = Verdict::Allow;
        decision.add("approval_granted", None);
        report.granted = true;
        report.approval_ref = unique_sorted(valid_ids).join(",");
    }
    report
}

/// The broker credential step's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStatus {
    /// No broker configured.
    NotConfigured,
    /// The broker issued a credential.
    Issued,
    /// The broker failed to issue one.
    Failed,
}

/// When a broker credential is required and the verdict is `allow`: no broker ⇒ `block` +
/// `broker_credential_required`; failure ⇒ `block` + `broker_credential_missing`; issued ⇒
/// `broker_credential_present`.
pub fn apply_broker(decision: &mut GateDecision, required: bool, broker: BrokerStatus) {
    if !required || decision.verdict != Verdict::Allow {
        return;
    }
    match broker {
        BrokerStatus::NotConfigured => {
            decision.verdict = Verdict::Block;
            decision.add(
                "broker_credential_required",
                Some("broker_credential_missing"),
            );
        }
        BrokerStatus::Failed => {
            decision.verdict = Verdict::Block;
            decision.add(
                "broker_credential_missing",
                Some("broker_credential_missing"),
            );
        }
        BrokerStatus::Issued => decision.add("broker_credential_present", None),
    }
}

/// What `--simulate` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimulateReport {
    /// The verdict enforcement would have produced.
    pub simulated_verdict: Verdict,
    /// The reason codes enforcement would have produced.
    pub simulated_reason_codes: Vec<String>,
    /// The verdict was `block` or `require_approval`.
    pub would_have_blocked: bool,
}

/// `--simulate`: record the real decision, add `simulate_mode_non_enforcing`, and when it would have blocked,
/// force `allow`, clear violations and add `simulated_<verdict>`. The exit code then follows the forced verdict.
pub fn apply_simulate(decision: &mut GateDecision) -> SimulateReport {
    let report = SimulateReport {
        simulated_verdict: decision.verdict,
        simulated_reason_codes: decision.reason_codes.clone(),
        would_have_blocked: matches!(decision.verdict, Verdict::Block | Verdict::RequireApproval),
    };
    decision.add("simulate_mode_non_enforcing", None);
    if report.would_have_blocked {
        decision.verdict = Verdict::Allow;
        decision.violations.clear();
        decision.add(
            &format!("simulated_{}", report.simulated_verdict.as_str()),
            None,
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(verdict: Verdict) -> GateDecision {
        GateDecision {
            verdict,
            reason_codes: vec!["approval_required_for_write".into()],
            violations: vec!["approval_required".into()],
        }
    }

    fn ok(id: &str, who: &str) -> TokenCheck {
        TokenCheck {
            token_id: id.into(),
            identity: who.into(),
            result: Ok(()),
        }
    }

    #[test]
    fn missing_approval_token_keeps_require_approval() {
        let mut d = decision(Verdict::RequireApproval);
        let report = apply_approvals(&mut d, 0, false, &[]);
        assert_eq!(d.verdict, Verdict::RequireApproval);
        assert_eq!(report.required_approvals, 1);
        assert!(
            d.reason_codes
                .contains(&"approval_token_missing".to_owned())
        );
        assert!(d.violations.contains(&"approval_not_granted".to_owned()));
        assert_eq!(d.exit_code(), 4);
    }

    #[test]
    fn two_distinct_valid_approvals_grant() {
        let mut d = decision(Verdict::RequireApproval);
        let report = apply_approvals(&mut d, 2, true, &[ok("t2", "bob"), ok("t1", "alice")]);
        assert!(report.granted);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(report.approval_ref, "t1,t2");
        assert!(d.reason_codes.contains(&"approval_granted".to_owned()));
    }

    #[test]
    fn same_approver_twice_is_not_enough_when_distinct_required() {
        let mut d = decision(Verdict::RequireApproval);
        let report = apply_approvals(&mut d, 2, true, &[ok("t1", "alice"), ok("t2", "alice")]);
        assert!(!report.granted);
        assert!(
            d.reason_codes
                .contains(&"approval_distinct_approvers_required".to_owned())
        );
    }

    #[test]
    fn invalid_tokens_add_their_code() {
        let mut d = decision(Verdict::RequireApproval);
        let expired = TokenCheck {
            token_id: "t".into(),
            identity: "alice".into(),
            result: Err("approval_token_expired".into()),
        };
        apply_approvals(&mut d, 1, false, &[expired]);
        assert_eq!(d.verdict, Verdict::RequireApproval);
        assert!(
            d.reason_codes
                .contains(&"approval_token_expired".to_owned())
        );
        assert!(
            d.reason_codes
                .contains(&"approval_chain_insufficient".to_owned())
        );
    }

    #[test]
    fn approvals_are_ignored_unless_approval_is_required() {
        let mut d = decision(Verdict::Block);
        let report = apply_approvals(&mut d, 1, false, &[ok("t", "a")]);
        assert_eq!(report.required_approvals, 0);
        assert_eq!(d.verdict, Verdict::Block);
    }

    #[test]
    fn delegation_required_without_tokens_blocks() {
        let mut d = decision(Verdict::Allow);
        apply_delegation(&mut d, true, &[]);
        assert_eq!(d.verdict, Verdict::Block);
        assert!(
            d.reason_codes
                .contains(&"delegation_token_missing".to_owned())
        );
        let mut d = decision(Verdict::Allow);
        let r = apply_delegation(&mut d, true, &[ok("b", "x"), ok("a", "y")]);
        assert_eq!(d.verdict, Verdict::Allow);
        assert_eq!(r.delegation_ref, "a,b");
        assert!(d.reason_codes.contains(&"delegation_granted".to_owned()));
    }

    #[test]
    fn broker_is_checked_only_for_allow() {
        let mut d = decision(Verdict::Allow);
        apply_broker(&mut d, true, BrokerStatus::NotConfigured);
        assert_eq!(d.verdict, Verdict::Block);
        assert!(
            d.reason_codes
                .contains(&"broker_credential_required".to_owned())
        );
        let mut d = decision(Verdict::RequireApproval);
        apply_broker(&mut d, true, BrokerStatus::NotConfigured);
        assert_eq!(d.verdict, Verdict::RequireApproval);
    }

    #[test]
    fn simulate_forces_allow_and_records_the_real_verdict() {
        let mut d = decision(Verdict::Block);
        let report = apply_simulate(&mut d);
        assert!(report.would_have_blocked);
        assert_eq!(report.simulated_verdict, Verdict::Block);
        assert_eq!(d.verdict, Verdict::Allow);
        assert!(d.violations.is_empty());
        assert!(d.reason_codes.contains(&"simulated_block".to_owned()));
        assert!(
            d.reason_codes
                .contains(&"simulate_mode_non_enforcing".to_owned())
        );
        assert_eq!(d.exit_code(), 0);
    }

    #[test]
    fn rate_limit_refusal_blocks() {
        let mut d = decision(Verdict::Allow);
        apply_rate_limit(&mut d, &RateLimitDecision::default());
        assert_eq!(d.verdict, Verdict::Block);
        assert!(d.violations.contains(&"rate_limit_exceeded".to_owned()));
    }
}
