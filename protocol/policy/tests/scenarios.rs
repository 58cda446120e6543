//! Gait's `scenarios/gait/*`: everything each scenario's expected.yaml / flags.yaml asserts that this layer
//! decides (evaluation, scripts, simulate, concurrency, approval/delegation outcomes and token bindings).
//! Signature checks, Wrkr inventory loading and the approved-script registry belong to the CLI and are checked
//! there; here those scenarios are parsed and their pre-CLI verdicts asserted.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use gait_policy::gate::{
    GateDecision, TokenCheck, apply_approvals, apply_delegation, apply_simulate, run_policy_test,
};
use gait_policy::gotime::GoTime;
use gait_policy::{
    EvalOptions, EvalOutcome, NormalizedIntent, Policy, Verdict, evaluate,
    parse_and_normalize_intent, parse_intent, parse_policy_yaml,
};
use serde_json::Value;

fn scenario_dir(name: &str) -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/gait/scenarios/gait"
    ))
    .join(name)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

fn yaml(path: &Path) -> Result<Value> {
    let text = String::from_utf8(read(path)?)?;
    Ok(serde_saphyr::from_str(&text)?)
}

fn load(name: &str) -> Result<(Policy, NormalizedIntent, Value)> {
    let dir = scenario_dir(name);
    let policy = parse_policy_yaml(&read(&dir.join("policy.yaml"))?)?;
    let intent = parse_and_normalize_intent(&read(&dir.join("intent.json"))?)?;
    let expected = yaml(&dir.join("expected.yaml"))?;
    Ok((policy, intent, expected))
}

fn flags(name: &str) -> Result<Value> {
    let path = scenario_dir(name).join("flags.yaml");
    if path.exists() {
        yaml(&path)
    } else {
        Ok(Value::Null)
    }
}

fn eval(policy: &Policy, intent: &NormalizedIntent) -> Result<EvalOutcome> {
    Ok(evaluate(policy, intent, &EvalOptions::default())?)
}

fn must_include(expected: &Value, reasons: &[String]) -> Result<()> {
    for code in expected["reason_codes_must_include"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let code = code.as_str().context("reason code")?;
        if !reasons.iter().any(|r| r == code) {
            bail!("reason code {code} missing from {reasons:?}");
        }
    }
    Ok(())
}

fn assert_verdict_and_exit(expected: &Value, verdict: Verdict, exit: i32) {
    assert_eq!(expected["verdict"].as_str(), Some(verdict.as_str()));
    assert_eq!(expected["exit_code"].as_i64(), Some(i64::from(exit)));
}

fn jsonl(path: &Path) -> Result<Vec<Vec<u8>>> {
    Ok(read(path)?
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect())
}

fn check_verdict_table(name: &str) -> Result<()> {
    let dir = scenario_dir(name);
    let policy = parse_policy_yaml(&read(&dir.join("policy.yaml"))?)?;
    let intents = jsonl(&dir.join("intents.jsonl"))?;
    let expected = jsonl(&dir.join("expected-verdicts.jsonl"))?;
    assert_eq!(
        intents.len(),
        expected.len(),
        "{name}: one expectation per intent"
    );
    for (line, want) in intents.iter().zip(&expected) {
        let want: Value = serde_json::from_slice(want)?;
        let intent = parse_and_normalize_intent(line)?;
        let index = want["index"].as_u64().context("index")?;
        assert_eq!(
            want["tool_name"].as_str(),
            Some(intent.tool_name.as_str()),
            "{name} #{index}"
        );
        let outcome = eval(&policy, &intent)?;
        assert_eq!(
            want["verdict"].as_str(),
            Some(outcome.verdict.as_str()),
            "{name} #{index}"
        );
        assert_eq!(
            want["exit_code"].as_i64(),
            Some(i64::from(outcome.verdict.exit_code())),
            "{name} #{index}"
        );
    }
    Ok(())
}

#[test]
fn policy_allow_safe_tools_allows_each_listed_tool() -> Result<()> {
    check_verdict_table("policy-allow-safe-tools")
}

#[test]
fn policy_block_destructive_blocks_delete_and_exec_only() -> Result<()> {
    check_verdict_table("policy-block-destructive")
}

fn check_script(name: &str) -> Result<()> {
    let (policy, intent, expected) = load(name)?;
    let repeat = flags(name)?["repeat"].as_u64().unwrap_or(1).max(1);
    let first = eval(&policy, &intent)?;
    for _ in 1..repeat {
        assert_eq!(
            eval(&policy, &intent)?,
            first,
            "{name}: repeated evaluation must be identical"
        );
    }
    assert_verdict_and_exit(&expected, first.verdict, first.verdict.exit_code());
    let script = first.script.as_ref().context("script outcome")?;
    assert_eq!(expected["script"].as_bool(), Some(true));
    assert_eq!(
        expected["step_count"].as_u64(),
        Some(script.step_count as u64)
    );
    assert_eq!(
        expected["step_verdict_count"].as_u64(),
        Some(script.step_verdicts.len() as u64)
    );
    assert_eq!(
        expected["composite_risk_class"].as_str(),
        Some(script.composite_risk_class.as_str())
    );
    assert_eq!(script.script_hash, intent.script_hash);
    must_include(&expected, &first.reason_codes)
}

#[test]
fn script_max_steps_exceeded_blocks() -> Result<()> {
    check_script("script-max-steps-exceeded")
}

#[test]
fn script_mixed_risk_blocks() -> Result<()> {
    check_script("script-mixed-risk-block")
}

#[test]
fn script_threshold_requires_approval_deterministically() -> Result<()> {
    check_script("script-threshold-approval-determinism")
}

#[test]
fn dry_run_simulate_reports_the_real_verdict_but_allows() -> Result<()> {
    let name = "dry-run-no-side-effects";
    let (policy, intent, expected) = load(name)?;
    assert_eq!(flags(name)?["simulate"].as_bool(), Some(true));
    let outcome = eval(&policy, &intent)?;
    let mut decision = GateDecision::from_outcome(&outcome);
    let report = apply_simulate(&mut decision);
    assert_verdict_and_exit(&expected, decision.verdict, decision.exit_code());
    assert_eq!(expected["simulate_mode"].as_bool(), Some(true));
    assert_eq!(report.simulated_verdict, outcome.verdict);
    for code in expected["reason_codes"]
        .as_array()
        .context("reason_codes")?
    {
        let code = code.as_str().context("code")?;
        assert!(
            decision.reason_codes.iter().any(|r| r == code),
            "{code} in {:?}",
            decision.reason_codes
        );
    }
    Ok(())
}

#[test]
fn concurrent_evaluation_of_one_policy_gives_identical_results() -> Result<()> {
    let name = "concurrent-evaluation-10";
    let (policy, intent, expected) = load(name)?;
    let threads = flags(name)?["concurrency"]
        .as_u64()
        .context("concurrency")?;
    let shared = Arc::new((policy, intent));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || evaluate(&shared.0, &shared.1, &EvalOptions::default()))
        })
        .collect();
    let mut successes = 0;
    for handle in handles {
        let outcome = handle
            .join()
            .map_err(|_| anyhow::anyhow!("evaluation thread panicked"))??;
        assert_verdict_and_exit(&expected, outcome.verdict, outcome.verdict.exit_code());
        successes += 1;
    }
    assert_eq!(expected["successful_runs"].as_u64(), Some(successes));
    Ok(())
}

/// The binding checks the artifact crate performs, reduced to what is needed to build a [`TokenCheck`]:
/// digests, scope and expiry (signatures are verified by `gait-artifact`).
fn approval_check(
    token: &Value,
    intent: &NormalizedIntent,
    policy: &Policy,
    now: GoTime,
) -> Result<TokenCheck> {
    let expires = GoTime::parse_rfc3339(token["expires_at"].as_str().context("expires_at")?)?;
    let scope: Vec<&str> = token["scope"]
        .as_array()
        .context("scope")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let result = if token["intent_digest"].as_str() != Some(intent.intent_digest.as_str()) {
        Err("approval_token_intent_mismatch".to_owned())
    } else if token["policy_digest"].as_str() != Some(policy.digest().as_str()) {
        Err("approval_token_policy_mismatch".to_owned())
    } else if now >= expires {
        Err("approval_token_expired".to_owned())
    } else if !intent
        .required_approval_scope()
        .iter()
        .all(|s| scope.contains(&s.as_str()) || scope.contains(&"*"))
    {
        Err("approval_token_scope_mismatch".to_owned())
    } else {
        Ok(())
    };
    Ok(TokenCheck {
        token_id: token["token_id"].as_str().unwrap_or_default().to_owned(),
        identity: token["approver_identity"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        result,
    })
}

fn check_approval_scenario(name: &str) -> Result<()> {
    let (policy, intent, expected) = load(name)?;
    let token: Value =
        serde_json::from_slice(&read(&scenario_dir(name).join("approval-token.json"))?)?;
    // The token was minted by Gait for this intent and policy: its bindings prove our digests are Gait's.
    assert_eq!(
        token["intent_digest"].as_str(),
        Some(intent.intent_digest.as_str()),
        "{name}: intent digest"
    );
    assert_eq!(
        token["policy_digest"].as_str(),
        Some(policy.digest().as_str()),
        "{name}: policy digest"
    );
    let outcome = eval(&policy, &intent)?;
    assert_eq!(
        outcome.verdict,
        Verdict::RequireApproval,
        "{name}: pre-approval verdict"
    );
    let now = GoTime::parse_rfc3339("2026-03-01T00:00:00Z")?;
    let check = approval_check(&token, &intent, &policy, now)?;
    let mut decision = GateDecision::from_outcome(&outcome);
    apply_approvals(
        &mut decision,
        outcome.min_approvals,
        outcome.require_distinct_approvers,
        &[check],
    );
    assert_verdict_and_exit(&expected, decision.verdict, decision.exit_code());
    must_include(&expected, &decision.reason_codes)
}

#[test]
fn approval_token_valid_turns_require_approval_into_allow() -> Result<()> {
    check_approval_scenario("approval-token-valid")
}

#[test]
fn approval_expired_token_keeps_require_approval() -> Result<()> {
    check_approval_scenario("approval-expiry-1s-past")
}

#[test]
fn delegation_chain_depth_3_matches_and_requires_signed_delegation() -> Result<()> {
    let name = "delegation-chain-depth-3";
    let (policy, intent, expected) = load(name)?;
    let outcome = eval(&policy, &intent)?;
    assert_eq!(
        outcome.verdict,
        Verdict::Allow,
        "the claimed chain satisfies the rule"
    );
    assert!(
        outcome.require_delegation,
        "the CLI must then verify the signed chain"
    );
    assert_eq!(intent.delegation.as_ref().map(|d| d.chain.len()), Some(3));
    let mut tokens = Vec::new();
    for file in [
        "delegation-token-1.json",
        "delegation-token-2.json",
        "delegation-token-3.json",
    ] {
        let token: Value = serde_json::from_slice(&read(&scenario_dir(name).join(file))?)?;
        tokens.push(TokenCheck {
            token_id: token["token_id"].as_str().unwrap_or_default().to_owned(),
            identity: token["delegator_identity"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            result: Ok(()),
        });
    }
    let mut decision = GateDecision::from_outcome(&outcome);
    let report = apply_delegation(&mut decision, outcome.require_delegation, &tokens);
    assert_verdict_and_exit(&expected, decision.verdict, decision.exit_code());
    assert_eq!(
        expected["valid_delegations"].as_u64(),
        Some(report.valid_delegations as u64)
    );
    must_include(&expected, &decision.reason_codes)?;
    // The intent names the same tokens, in the same chain order, as the token files.
    let chain_refs: Vec<&str> = intent
        .delegation
        .as_ref()
        .map(|d| d.chain.iter().map(|l| l.token_ref.as_str()).collect())
        .unwrap_or_default();
    let token_ids: Vec<&str> = tokens.iter().map(|t| t.token_id.as_str()).collect();
    assert_eq!(chain_refs, token_ids);
    Ok(())
}

#[test]
fn wrkr_missing_scenario_is_high_risk_and_allowed_without_inventory() -> Result<()> {
    // Gait fails closed (exit 3) because the inventory file is missing and the intent is high risk; that file
    // check is the CLI's. Here: the intent is high risk, and evaluation without an inventory would allow it.
    let name = "wrkr-missing-fail-closed-high-risk";
    let (policy, intent, expected) = load(name)?;
    assert_eq!(intent.context.risk_class, "high");
    assert!(flags(name)?["wrkr_inventory"].as_str().is_some());
    assert_eq!(expected["exit_code"].as_i64(), Some(3));
    assert_eq!(eval(&policy, &intent)?.verdict, Verdict::Allow);
    Ok(())
}

#[test]
fn approved_registry_scenario_needs_approval_before_the_registry_fast_path() -> Result<()> {
    // Gait stops with exit 3 because the tampered registry fails verification for a high-risk intent (CLI).
    let name = "approved-registry-signature-mismatch-high-risk";
    let (policy, intent, expected) = load(name)?;
    assert_eq!(expected["exit_code"].as_i64(), Some(3));
    assert_eq!(intent.context.risk_class, "high");
    let outcome = eval(&policy, &intent)?;
    assert_eq!(outcome.verdict, Verdict::RequireApproval);
    assert_eq!(
        outcome.reason_codes,
        ["approval_required_write", "default_allow"]
    );
    // The same intent through `gait policy test` agrees.
    let raw = parse_intent(&read(&scenario_dir(name).join("intent.json"))?)?;
    assert_eq!(
        run_policy_test(&policy, &raw, "")?.verdict,
        Verdict::RequireApproval
    );
    Ok(())
}
