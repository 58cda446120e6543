//! Result documents: the gate result (`gait.gate.result`, §2.1), the policy test result
//! (`gait.policytest.result`, §9) and the `gait policy test --json` output line with its exit code.

use serde::Serialize;

use crate::eval::{EvalError, EvalOptions, EvalOutcome, evaluate};
use crate::gotime::GoTime;
use crate::intent::{IntentRequest, NormalizedIntent, normalize_intent};
use crate::policy::Policy;
use crate::verdict::{EXIT_INVALID_INPUT, Verdict};

/// Schema id of a gate result.
pub const GATE_RESULT_SCHEMA_ID: &str = "gait.gate.result";
/// Schema id of a policy test result.
pub const POLICY_TEST_SCHEMA_ID: &str = "gait.policytest.result";
/// Schema version of both.
pub const RESULT_SCHEMA_VERSION: &str = "1.0.0";
/// Producer version Gait records when none is given.
pub const DEFAULT_PRODUCER_VERSION: &str = "0.0.0-dev";
const SUMMARY_LIMIT: usize = 240;

/// `created_at` of a result: the intent's `created_at` in UTC, `1980-01-01T00:00:00Z` when it had none.
pub fn result_created_at(intent_created_at: GoTime) -> String {
    if intent_created_at.is_zero() {
        return "1980-01-01T00:00:00Z".to_owned();
    }
    intent_created_at
        .marshal_text()
        .unwrap_or_else(|_| "1980-01-01T00:00:00Z".to_owned())
}

fn producer(version: &str) -> String {
    match version.trim() {
        "" => DEFAULT_PRODUCER_VERSION.to_owned(),
        v => v.to_owned(),
    }
}

/// `gait.gate.result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateResult {
    /// `gait.gate.result`.
    pub schema_id: String,
    /// `1.0.0`.
    pub schema_version: String,
    /// See [`result_created_at`].
    pub created_at: String,
    /// Producer version (default `0.0.0-dev`).
    pub producer_version: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Reason codes, unique and sorted.
    pub reason_codes: Vec<String>,
    /// Violations, unique and sorted.
    pub violations: Vec<String>,
}

impl GateResult {
    /// Build the gate result of an evaluation.
    pub fn new(
        outcome: &EvalOutcome,
        intent_created_at: GoTime,
        producer_version: &str,
    ) -> GateResult {
        GateResult {
            schema_id: GATE_RESULT_SCHEMA_ID.to_owned(),
            schema_version: RESULT_SCHEMA_VERSION.to_owned(),
            created_at: result_created_at(intent_created_at),
            producer_version: producer(producer_version),
            verdict: outcome.verdict,
            reason_codes: outcome.reason_codes.clone(),
            violations: outcome.violations.clone(),
        }
    }
}

/// `gait.policytest.result` (the schema document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyTestResult {
    /// `gait.policytest.result`.
    pub schema_id: String,
    /// `1.0.0`.
    pub schema_version: String,
    /// See [`result_created_at`].
    pub created_at: String,
    /// Producer version (default `0.0.0-dev`).
    pub producer_version: String,
    /// The policy digest.
    pub policy_digest: String,
    /// The digest of the normalized intent as supplied (context claims not stripped).
    pub intent_digest: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Reason codes.
    pub reason_codes: Vec<String>,
    /// Violations.
    pub violations: Vec<String>,
    /// Deciding rule names, comma-joined.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub matched_rule: String,
}

impl PolicyTestResult {
    /// Exit code: 0 allow/dry_run, 3 block, 4 require_approval.
    pub fn exit_code(&self) -> i32 {
        self.verdict.exit_code()
    }

    /// Gait's one-line summary, bounded to 240 characters.
    pub fn summary(&self) -> String {
        let join = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(",")
            }
        };
        let raw = format!(
            "policy test verdict={} reasons={} violations={}",
            self.verdict,
            join(&self.reason_codes),
            join(&self.violations)
        );
        if raw.len() <= SUMMARY_LIMIT {
            return raw;
        }
        let overflow = raw.len() - SUMMARY_LIMIT;
        let suffix = format!("...(+{overflow})");
        let mut keep = SUMMARY_LIMIT.saturating_sub(suffix.len());
        while !raw.is_char_boundary(keep) {
            keep -= 1;
        }
        format!("{}{}", &raw[..keep], suffix)
    }
}

/// `gait policy test <policy> <intent>`: normalize (errors are `normalize intent: …`, exit 6), evaluate without
/// approvals, rate limits or trace, and report the digest of the normalized intent as supplied.
pub fn run_policy_test(
    policy: &Policy,
    intent: &IntentRequest,
    producer_version: &str,
) -> Result<PolicyTestResult, EvalError> {
    let normalized = normalize_intent(intent)?;
    policy_test_normalized(policy, &normalized, producer_version)
}

/// [`run_policy_test`] for an already normalized intent.
pub fn policy_test_normalized(
    policy: &Policy,
    intent: &NormalizedIntent,
    producer_version: &str,
) -> Result<PolicyTestResult, EvalError> {
    let outcome = evaluate(policy, intent, &EvalOptions::default())?;
    Ok(PolicyTestResult {
        schema_id: POLICY_TEST_SCHEMA_ID.to_owned(),
        schema_version: RESULT_SCHEMA_VERSION.to_owned(),
        created_at: result_created_at(intent.created_at),
        producer_version: producer(producer_version),
        policy_digest: policy.digest(),
        intent_digest: intent.intent_digest.clone(),
        verdict: outcome.verdict,
        reason_codes: outcome.reason_codes,
        violations: outcome.violations,
        matched_rule: outcome.matched_rule,
    })
}

/// The JSON line `gait policy test --json` prints (before the CLI adds `correlation_id` and, on errors, the
/// error envelope fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyTestOutput {
    /// True unless `error` is set.
    pub ok: bool,
    /// `gait.policytest.result`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub schema_version: String,
    /// See [`result_created_at`].
    #[serde(skip_serializing_if = "String::is_empty")]
    pub created_at: String,
    /// The policy digest.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub policy_digest: String,
    /// The intent digest.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub intent_digest: String,
    /// The verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Reason codes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reason_codes: Vec<String>,
    /// Violations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<String>,
    /// Deciding rule names.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub matched_rule: String,
    /// One-line summary.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub summary: String,
    /// Error message (exit 6).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl PolicyTestOutput {
    /// The output for a completed test.
    pub fn from_result(result: &PolicyTestResult) -> PolicyTestOutput {
        PolicyTestOutput {
            ok: true,
            schema_id: result.schema_id.clone(),
            schema_version: result.schema_version.clone(),
            created_at: result.created_at.clone(),
            policy_digest: result.policy_digest.clone(),
            intent_digest: result.intent_digest.clone(),
            verdict: Some(result.verdict),
            reason_codes: result.reason_codes.clone(),
            violations: result.violations.clone(),
            matched_rule: result.matched_rule.clone(),
            summary: result.summary(),
            error: String::new(),
        }
    }

    /// The output for invalid input.
    pub fn from_error(error: &dyn std::fmt::Display) -> PolicyTestOutput {
        PolicyTestOutput {
            ok: false,
            error: error.to_string(),
            ..PolicyTestOutput::default()
        }
    }

    /// Exit code: the verdict's, or 6 for an error.
    pub fn exit_code(&self) -> i32 {
        match self.verdict {
            Some(v) if self.ok => v.exit_code(),
            _ => EXIT_INVALID_INPUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_at_defaults_to_1980_for_zero_time() {
        assert_eq!(result_created_at(GoTime::ZERO), "1980-01-01T00:00:00Z");
        let t = GoTime::parse_rfc3339("2026-02-09T01:00:00+01:00").unwrap();
        assert_eq!(result_created_at(t), "2026-02-09T00:00:00Z");
    }

    #[test]
    fn summary_is_bounded_like_gait() {
        let mut result = PolicyTestResult {
            schema_id: POLICY_TEST_SCHEMA_ID.into(),
            schema_version: RESULT_SCHEMA_VERSION.into(),
            created_at: String::new(),
            producer_version: DEFAULT_PRODUCER_VERSION.into(),
            policy_digest: String::new(),
            intent_digest: String::new(),
            verdict: Verdict::Allow,
            reason_codes: vec!["default_allow".into()],
            violations: vec![],
            matched_rule: String::new(),
        };
        assert_eq!(
            result.summary(),
            "policy test verdict=allow reasons=default_allow violations=none"
        );
        result.reason_codes = (0..40).map(|i| format!("reason_code_{i}")).collect();
        let summary = result.summary();
        assert_eq!(summary.len(), SUMMARY_LIMIT);
        assert!(summary.contains("...(+"));
    }

    #[test]
    fn error_output_exits_6() {
        let out = PolicyTestOutput::from_error(&"normalize intent: tool_name is required");
        assert!(!out.ok);
        assert_eq!(out.exit_code(), 6);
        let json = serde_json::to_string(&out).unwrap();
        assert_eq!(
            json,
            r#"{"ok":false,"error":"normalize intent: tool_name is required"}"#
        );
    }
}
