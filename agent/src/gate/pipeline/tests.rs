//! Unit tests of the gate pipeline's step order (contract §3.4 CLI post-processing): each test fails if a
//! step ran earlier or later than Gait runs it, or ran when Gait skips it.

use std::path::Path;

use gait_policy::gate::{BrokerStatus, TokenCheck};
use gait_policy::{IntentRequest, Policy, Verdict, parse_intent, parse_policy_yaml};

use super::{Authorizations, Inputs, NoAuthorizations, RateLimits, StepContext, run};
use crate::gate::GateError;

const INTENT: &[u8] = br#"{"tool_name":"tool.x","args":{},"targets":[],"context":{"identity":"alice","workspace":"/w","risk_class":"low"}}"#;

/// An intent claiming a one-link delegation chain (`alice` delegated `write` to `bob`).
const DELEGATED_INTENT: &[u8] = br#"{"tool_name":"tool.x","args":{},"targets":[],"delegation":{"requester_identity":"bob","scope_class":"write","chain":[{"delegator_identity":"alice","delegate_identity":"bob","scope_class":"write","token_ref":"t1"}]},"context":{"identity":"bob","workspace":"/w","risk_class":"low"}}"#;

fn delegated_intent() -> IntentRequest {
    parse_intent(DELEGATED_INTENT).expect("test intent parses")
}

fn policy(rule_body: &str) -> Policy {
    let yaml = format!(
        "default_verdict: block\nrules:\n  - name: the-rule\n    match:\n      tool_names: [tool.x]\n{rule_body}"
    );
    parse_policy_yaml(yaml.as_bytes()).expect("test policy parses")
}

fn intent() -> IntentRequest {
    parse_intent(INTENT).expect("test intent parses")
}

fn inputs<'a>(policy: &'a Policy, digest: &'a str, state: &'a Path, simulate: bool) -> Inputs<'a> {
    Inputs {
        policy,
        policy_digest: digest,
        context_evidence: None,
        wrkr: None,
        registry_entries: &[],
        rate_limits: RateLimits::File(state),
        simulate,
        apply_limits: true,
    }
}

/// Records which hooks ran, in order, with the verdict the decision held when each was consulted.
#[derive(Default)]
struct Recorder {
    log: Vec<String>,
    delegation: Vec<TokenCheck>,
    approvals: Vec<TokenCheck>,
    broker: Option<BrokerStatus>,
    fail_keys: bool,
    state_file: Option<std::path::PathBuf>,
}

fn valid_token(id: &str, identity: &str) -> TokenCheck {
    TokenCheck {
        token_id: id.to_owned(),
        identity: identity.to_owned(),
        result: Ok(()),
    }
}

impl Authorizations for Recorder {
    type Error = GateError;

    fn load_keys(&mut self) -> Result<(), GateError> {
        let counted = self.state_file.as_deref().is_some_and(Path::exists);
        self.log.push(format!("keys(state_written={counted})"));
        if self.fail_keys {
            return Err(GateError::RateLimitState(
                crate::gate::ratelimit_state::StateError::Lock("test key failure".into()),
            ));
        }
        Ok(())
    }

    fn delegation_tokens(&mut self, ctx: &StepContext<'_>) -> Result<Vec<TokenCheck>, GateError> {
        self.log
            .push(format!("delegation(rule={})", ctx.outcome.matched_rule));
        Ok(std::mem::take(&mut self.delegation))
    }

    fn approval_tokens(&mut self, _ctx: &StepContext<'_>) -> Result<Vec<TokenCheck>, GateError> {
        self.log.push("approvals".to_owned());
        Ok(std::mem::take(&mut self.approvals))
    }

    fn broker_credential(&mut self, _ctx: &StepContext<'_>) -> BrokerStatus {
        self.log.push("broker".to_owned());
        self.broker.unwrap_or(BrokerStatus::NotConfigured)
    }
}

#[test]
fn a_rate_limit_exceeded_block_survives_the_policy_verdict() {
    // If rate limiting ran before the verdict was taken from the policy, the policy's `allow` would
    // overwrite the rate limit's `block` on the second call.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("limits.json");
    let policy = policy(
        "    effect: allow\n    rate_limit:\n      requests: 1\n      window: hour\n      scope: tool\n",
    );
    let digest = policy.digest();
    let inputs = inputs(&policy, &digest, &state, false);
    let first = run(&inputs, &intent(), &mut NoAuthorizations).expect("first call decides");
    assert_eq!(first.decision.verdict, Verdict::Allow);
    assert_eq!(first.rate.as_ref().map(|r| r.used), Some(1));
    let second = run(&inputs, &intent(), &mut NoAuthorizations).expect("second call decides");
    assert_eq!(second.decision.verdict, Verdict::Block);
    assert!(
        second
            .decision
            .reason_codes
            .contains(&"rate_limit_exceeded".to_owned()),
        "{:?}",
        second.decision.reason_codes
    );
}

#[test]
fn a_shadow_run_neither_counts_nor_applies_rate_limits() {
    // A staged candidate (or the policy a dry run replaces) is evaluated with `apply_limits: false`: only the
    // policy of record's counters may move, or the shadow would change what the policy of record sees.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("limits.json");
    let policy = policy(
        "    effect: allow\n    rate_limit:\n      requests: 1\n      window: hour\n      scope: tool\n",
    );
    let digest = policy.digest();
    let shadow = Inputs {
        apply_limits: false,
        ..inputs(&policy, &digest, &state, false)
    };
    for _ in 0..3 {
        let run = run(&shadow, &intent(), &mut NoAuthorizations).expect("shadow decides");
        assert_eq!(run.decision.verdict, Verdict::Allow);
        assert!(run.rate.is_none());
    }
    assert!(!state.exists(), "a shadow run never writes the state file");
    let of_record = inputs(&policy, &digest, &state, false);
    let first = run(&of_record, &intent(), &mut NoAuthorizations).expect("decides");
    assert_eq!(
        first.rate.as_ref().map(|r| r.used),
        Some(1),
        "counting starts at the policy of record"
    );
}

#[test]
fn rate_limits_count_a_blocked_call_before_keys_are_loaded() {
    // Gait counts even non-allow verdicts, and the counters are committed before any key or token is
    // looked at: a key failure afterwards does not undo the count.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("limits.json");
    let policy = policy(
        "    effect: block\n    rate_limit:\n      requests: 5\n      window: hour\n      scope: tool\n",
    );
    let digest = policy.digest();
    let inputs = inputs(&policy, &digest, &state, false);
    let mut auth = Recorder {
        fail_keys: true,
        state_file: Some(state.clone()),
        ..Recorder::default()
    };
    let err = run(&inputs, &intent(), &mut auth).expect_err("key failure stops the pipeline");
    assert!(err.is_rate_limit());
    assert_eq!(auth.log, ["keys(state_written=true)"]);
    let ok = run(&inputs, &intent(), &mut NoAuthorizations).expect("decides");
    assert_eq!(ok.decision.verdict, Verdict::Block);
    assert_eq!(
        ok.rate.as_ref().map(|r| r.used),
        Some(2),
        "both calls counted"
    );
}

#[test]
fn approvals_run_after_delegation_and_the_broker_only_once_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("limits.json");
    let policy = policy(
        "      require_delegation: true\n    effect: require_approval\n    min_approvals: 1\n    require_broker_credential: true\n",
    );
    let digest = policy.digest();
    let inputs = inputs(&policy, &digest, &state, false);
    let mut auth = Recorder {
        delegation: vec![valid_token("d1", "bob")],
        approvals: vec![valid_token("a1", "carol")],
        broker: Some(BrokerStatus::Issued),
        ..Recorder::default()
    };
    let evaluated = run(&inputs, &delegated_intent(), &mut auth).expect("decides");
    assert_eq!(
        auth.log,
        [
            "keys(state_written=false)",
            "delegation(rule=the-rule)",
            "approvals",
            "broker"
        ]
    );
    assert_eq!(evaluated.decision.verdict, Verdict::Allow);
    let codes = &evaluated.decision.reason_codes;
    for code in [
        "delegation_granted",
        "approval_granted",
        "broker_credential_present",
    ] {
        assert!(codes.contains(&code.to_owned()), "{code} in {codes:?}");
    }
    assert_eq!(evaluated.broker, Some(BrokerStatus::Issued));
}

#[test]
fn a_missing_delegation_blocks_before_approvals_and_broker_are_consulted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("limits.json");
    let policy = policy(
        "      require_delegation: true\n    effect: require_approval\n    require_broker_credential: true\n",
    );
    let digest = policy.digest();
    let inputs = inputs(&policy, &digest, &state, false);
    let mut auth = Recorder::default();
    let evaluated = run(&inputs, &delegated_intent(), &mut auth).expect("decides");
    assert_eq!(
        auth.log,
        ["keys(state_written=false)", "delegation(rule=the-rule)"]
    );
    assert_eq!(evaluated.decision.verdict, Verdict::Block);
    assert!(
        evaluated
            .decision
            .reason_codes
            .contains(&"delegation_token_missing".to_owned())
    );
    assert_eq!(evaluated.approval.required_approvals, 0);
    assert_eq!(evaluated.broker, None);
}

#[test]
fn simulate_runs_last_and_keeps_the_enforced_verdict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("limits.json");
    let policy = policy("    effect: require_approval\n    require_broker_credential: true\n");
    let digest = policy.digest();
    let inputs = inputs(&policy, &digest, &state, true);
    let evaluated = run(&inputs, &intent(), &mut NoAuthorizations).expect("decides");
    // Approvals saw `require_approval` (token missing) and the broker was skipped; simulate then forced allow.
    assert_eq!(evaluated.enforced_verdict, Verdict::RequireApproval);
    assert_eq!(evaluated.decision.verdict, Verdict::Allow);
    assert_eq!(evaluated.approval.required_approvals, 1);
    assert_eq!(evaluated.broker, None);
    let simulated = evaluated.simulated.expect("simulate report");
    assert_eq!(simulated.simulated_verdict, Verdict::RequireApproval);
    assert!(simulated.would_have_blocked);
    assert!(
        simulated
            .simulated_reason_codes
            .contains(&"approval_token_missing".to_owned())
    );
}

#[test]
fn an_intent_that_does_not_normalize_is_a_typed_error_before_any_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("limits.json");
    let policy = policy("    effect: allow\n");
    let digest = policy.digest();
    let inputs = inputs(&policy, &digest, &state, false);
    let raw = parse_intent(br#"{"tool_name":"","args":{},"targets":[],"context":{}}"#)
        .expect("lenient parse");
    let mut auth = Recorder::default();
    let err = run(&inputs, &raw, &mut auth).expect_err("empty tool name does not normalize");
    assert!(err.is_normalize() && err.is_invalid_intent(), "{err}");
    assert!(auth.log.is_empty());
    assert!(!state.exists());
}

/// An intent of `tool.x` by `identity`.
fn intent_of(identity: &str) -> IntentRequest {
    let text = format!(
        r#"{{"tool_name":"tool.x","args":{{}},"targets":[],"context":{{"identity":"{identity}","workspace":"/w","risk_class":"low"}}}}"#
    );
    parse_intent(text.as_bytes()).expect("test intent parses")
}

#[test]
fn the_daemon_bound_keeps_the_counters_few_and_blocks_a_new_identity_when_all_are_at_their_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("limits.json");
    let policy = policy(
        "    effect: allow\n    rate_limit:\n      requests: 1\n      window: hour\n      scope: identity\n",
    );
    let digest = policy.digest();
    let counters = crate::gate::ratelimit_counters::DaemonCounters::new(8);
    let inputs = Inputs {
        rate_limits: RateLimits::Daemon(&counters),
        ..inputs(&policy, &digest, &state, false)
    };
    // Eight identities use their one request each: every counter is at its limit.
    for i in 0..8 {
        let first = run(
            &inputs,
            &intent_of(&format!("user-{i}")),
            &mut NoAuthorizations,
        )
        .expect("decides");
        assert_eq!(first.decision.verdict, Verdict::Allow);
    }
    // A ninth identity finds no counter to evict: blocked, saying why, and nothing was reset.
    let ninth = run(&inputs, &intent_of("user-8"), &mut NoAuthorizations).expect("decides");
    assert_eq!(ninth.decision.verdict, Verdict::Block);
    for reason in ["rate_limit_exceeded", "agent_rate_limit_state_full"] {
        assert!(
            ninth.decision.reason_codes.contains(&reason.to_owned()),
            "{:?}",
            ninth.decision.reason_codes
        );
    }
    let again = run(&inputs, &intent_of("user-0"), &mut NoAuthorizations).expect("decides");
    assert_eq!(
        again.decision.verdict,
        Verdict::Block,
        "user-0 stays over its limit"
    );
    assert_eq!(
        counters.snapshot().len(),
        8,
        "the counters hold at most max_keys keys"
    );
    assert!(
        !state.exists(),
        "the daemon's counters never touch a state file"
    );
}
