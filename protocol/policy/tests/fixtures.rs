//! Gait's own fixtures: `core/gate/testdata` digest equivalence, the real `gate eval` outputs and traces in
//! `shared/conformance/artifacts`, and the schema testdata intents and policies.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gait_policy::intent::{IntentError, strip_context_evidence};
use gait_policy::{
    EvalOptions, PolicyError, evaluate, parse_and_normalize_intent, parse_policy_yaml,
};
use serde_json::Value;

fn shared(rel: &str) -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")).join(rel)
}

fn fixture(rel: &str) -> Result<Vec<u8>> {
    let path = shared("fixtures/gait").join(rel);
    std::fs::read(&path).with_context(|| format!("read {}", path.display()))
}

#[test]
fn equivalent_intents_digest_equal_and_the_different_one_differs() -> Result<()> {
    let a = parse_and_normalize_intent(&fixture("core/gate/testdata/intent_equivalent_a.json")?)?;
    let b = parse_and_normalize_intent(&fixture("core/gate/testdata/intent_equivalent_b.json")?)?;
    let different =
        parse_and_normalize_intent(&fixture("core/gate/testdata/intent_different.json")?)?;
    assert_eq!(a.intent_digest, b.intent_digest);
    assert_eq!(a.args_digest, b.args_digest);
    assert_eq!(a.canonical_bytes(), b.canonical_bytes());
    assert_ne!(a.intent_digest, different.intent_digest);
    assert_ne!(a.args_digest, different.args_digest);
    Ok(())
}

/// `gait gate eval` output and signed trace for the two endpoint examples (real Gait runs).
#[test]
fn gate_eval_artifacts_are_reproduced() -> Result<()> {
    for (policy, intent, name) in [
        (
            "examples/policy/endpoint/allow_safe_endpoints.yaml",
            "examples/policy/endpoint/fixtures/intent_allow.json",
            "allow",
        ),
        (
            "examples/policy/endpoint/block_denied_endpoints.yaml",
            "examples/policy/endpoint/fixtures/intent_block.json",
            "block",
        ),
    ] {
        let stdout_path = shared(&format!(
            "conformance/artifacts/gate_eval_endpoint_{name}.stdout.json"
        ));
        let trace_path = shared(&format!("conformance/artifacts/trace_endpoint_{name}.json"));
        let stdout: Value = serde_json::from_slice(&std::fs::read(stdout_path)?)?;
        let trace: Value = serde_json::from_slice(&std::fs::read(trace_path)?)?;

        let policy = parse_policy_yaml(&fixture(policy)?)?;
        let intent = parse_and_normalize_intent(&fixture(intent)?)?;
        let outcome = evaluate(&policy, &intent, &EvalOptions::default())?;
        let prepared = strip_context_evidence(&intent);

        assert_eq!(
            stdout["verdict"].as_str(),
            Some(outcome.verdict.as_str()),
            "{name}"
        );
        assert_eq!(
            stdout["reason_codes"],
            serde_json::to_value(&outcome.reason_codes)?,
            "{name}"
        );
        let violations = stdout
            .get("violations")
            .cloned()
            .unwrap_or(Value::Array(vec![]));
        assert_eq!(
            violations,
            serde_json::to_value(&outcome.violations)?,
            "{name}"
        );
        assert_eq!(
            stdout["matched_rule"].as_str(),
            Some(outcome.matched_rule.as_str()),
            "{name}"
        );
        assert_eq!(
            stdout["policy_digest"].as_str(),
            Some(policy.digest().as_str()),
            "{name}"
        );
        assert_eq!(
            stdout["intent_digest"].as_str(),
            Some(prepared.intent_digest.as_str()),
            "{name}"
        );
        assert_eq!(
            trace["args_digest"].as_str(),
            Some(intent.args_digest.as_str()),
            "{name}"
        );
        assert_eq!(
            trace["tool_name"].as_str(),
            Some(intent.tool_name.as_str()),
            "{name}"
        );
        let trace_id_input = format!(
            "{}:{}:{}",
            policy.digest(),
            prepared.intent_digest,
            outcome.verdict
        );
        let trace_id = &gait_canon::sha256_hex(trace_id_input.as_bytes())[..24];
        assert_eq!(trace["trace_id"].as_str(), Some(trace_id), "{name}");
    }
    Ok(())
}

#[test]
fn schema_valid_intents_parse_and_normalize() -> Result<()> {
    for name in [
        "gate_intent_request_valid.json",
        "gate_intent_request_endpoint_valid.json",
        "gate_intent_request_enterprise_context_valid.json",
        "gate_intent_request_relationship_valid.json",
        "gate_intent_request_skill_valid.json",
    ] {
        let intent = parse_and_normalize_intent(&fixture(&format!("core/schema/testdata/{name}"))?)
            .with_context(|| name.to_owned())?;
        assert_eq!(intent.intent_digest.len(), 64, "{name}");
    }
    Ok(())
}

/// Invalid fixtures that normalization (or Go's typed decoding) rejects, with Gait's message.
#[test]
fn schema_invalid_intents_with_a_normalization_rule_are_rejected() -> Result<()> {
    for (name, message) in [
        (
            "gate_intent_request_endpoint_invalid.json",
            "normalize intent: unsupported endpoint class: fs.invalid",
        ),
        (
            "gate_intent_request_skill_invalid.json",
            "normalize intent: invalid skill provenance digest: bad",
        ),
        (
            "gate_intent_request_enterprise_context_invalid.json",
            "parse intent json: cannot unmarshal number into field context.credential_scopes of type string",
        ),
    ] {
        let err = parse_and_normalize_intent(&fixture(&format!("core/schema/testdata/{name}"))?)
            .err()
            .with_context(|| format!("{name} must be rejected"))?;
        assert_eq!(err.to_string(), message, "{name}");
    }
    Ok(())
}

/// `gate_intent_request_invalid.json` differs from the valid one only by `args_digest: "bad"`, an output field
/// Gait ignores on input: only the JSON Schema rejects it, exactly as in Gait.
#[test]
fn schema_only_invalid_intent_is_accepted_like_gait() -> Result<()> {
    let intent = parse_and_normalize_intent(&fixture(
        "core/schema/testdata/gate_intent_request_invalid.json",
    )?)?;
    assert_ne!(intent.args_digest, "bad");
    Ok(())
}

#[test]
fn schema_policy_fixtures_are_accepted_and_rejected() -> Result<()> {
    let valid = parse_policy_yaml(&fixture("core/schema/testdata/gate_policy_valid.json")?)?;
    assert_eq!(valid.rules.len(), 1);
    assert_eq!(
        valid.fail_closed.required_fields,
        ["arg_provenance", "endpoint_class", "targets"]
    );
    let err =
        parse_policy_yaml(&fixture("core/schema/testdata/gate_policy_invalid.json")?).unwrap_err();
    assert!(matches!(err, PolicyError::Yaml { .. }), "{err}");
    assert!(err.to_string().contains("default_verdit"), "{err}");
    Ok(())
}

#[test]
fn every_example_policy_and_template_parses() -> Result<()> {
    let root = shared("fixtures/gait");
    let mut count = 0;
    for dir in [
        "examples/policy",
        "examples/policy/endpoint",
        "examples/policy/skills",
        "examples/policy-test",
        "cmd/gait/policy_templates",
    ] {
        for entry in std::fs::read_dir(root.join(dir))? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
                parse_policy_yaml(&std::fs::read(&path)?)
                    .with_context(|| path.display().to_string())?;
                count += 1;
            }
        }
    }
    assert!(count >= 15, "parsed {count} policies");
    Ok(())
}

#[test]
fn intent_file_errors_are_typed() {
    assert!(matches!(
        parse_and_normalize_intent(b"{"),
        Err(IntentError::Parse(_))
    ));
    assert!(matches!(
        parse_and_normalize_intent(b"{}"),
        Err(IntentError::Normalize(_))
    ));
}
