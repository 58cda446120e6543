//! Evaluation-order unit tests: tiers, per-rule effects, fail-closed, context evidence, scripts, Wrkr.

use super::*;
use crate::intent::parse_and_normalize_intent;
use crate::policy::parse_policy_yaml;

fn policy(yaml: &str) -> Policy {
    parse_policy_yaml(yaml.as_bytes()).unwrap()
}

fn intent(json: &str) -> NormalizedIntent {
    parse_and_normalize_intent(json.as_bytes()).unwrap()
}

fn write_intent(risk: &str, extra_context: &str) -> NormalizedIntent {
    intent(&format!(
        r#"{{"tool_name":"tool.write","args":{{"path":"/tmp/x"}},
            "targets":[{{"kind":"path","value":"/tmp/x","operation":"write"}}],
            "arg_provenance":[{{"arg_path":"$.path","source":"user"}}],
            "context":{{"identity":"alice","workspace":"/repo","risk_class":"{risk}"{extra_context}}}}}"#
    ))
}

fn eval(p: &Policy, i: &NormalizedIntent) -> EvalOutcome {
    evaluate(p, i, &EvalOptions::default()).unwrap()
}

#[test]
fn equal_priority_matches_are_combined_and_the_most_restrictive_wins() {
    let p = policy(
        "default_verdict: allow\nrules:\n\
         - {name: b-allow, priority: 5, effect: allow, reason_codes: [allowed], require_broker_credential: true}\n\
         - {name: a-block, priority: 5, effect: block, reason_codes: [blocked], violations: [v]}\n\
         - {name: later, priority: 9, effect: require_approval}\n",
    );
    let out = eval(&p, &write_intent("low", ""));
    assert_eq!(out.verdict, Verdict::Block);
    assert_eq!(
        out.reason_codes,
        ["blocked"],
        "reasons only from rules whose effect is the verdict"
    );
    assert_eq!(out.violations, ["v"]);
    assert_eq!(out.matched_rule, "a-block,b-allow");
    assert!(
        !out.require_broker_credential,
        "obligations only from rules whose effect is the verdict"
    );
}

#[test]
fn the_lowest_priority_tier_wins_even_when_a_later_rule_is_stricter() {
    let p = policy(
        "rules:\n- {name: strict, priority: 20, effect: block}\n- {name: lenient, priority: 10, effect: allow}\n",
    );
    let out = eval(&p, &write_intent("low", ""));
    assert_eq!(out.verdict, Verdict::Allow);
    assert_eq!(out.reason_codes, ["matched_rule_lenient"]);
    assert_eq!(out.matched_rule, "lenient");
}

#[test]
fn tier_keeps_the_tightest_rate_limit_and_the_largest_approval_count() {
    let p = policy(
        "rules:\n\
         - {name: a, effect: require_approval, min_approvals: 2, rate_limit: {requests: 10, window: hour}}\n\
         - {name: b, effect: require_approval, rate_limit: {requests: 10, window: minute, scope: tool}}\n",
    );
    let out = eval(&p, &write_intent("low", ""));
    assert_eq!(out.verdict, Verdict::RequireApproval);
    assert_eq!(out.min_approvals, 2);
    assert!(out.require_distinct_approvers);
    assert_eq!(out.rate_limit.window, "minute");
    assert_eq!(out.rate_limit.scope, "tool");
}

#[test]
fn approval_requirements_are_dropped_unless_the_verdict_is_require_approval() {
    let p = policy("rules:\n- {name: a, effect: allow, min_approvals: 3}\n");
    let out = eval(&p, &write_intent("low", ""));
    assert_eq!(out.verdict, Verdict::Allow);
    assert_eq!(out.min_approvals, 0);
    assert!(!out.require_distinct_approvers);
}

#[test]
fn no_match_yields_the_default_verdict_with_one_approval_for_require_approval() {
    let out = eval(&policy("rules: []\n"), &write_intent("low", ""));
    assert_eq!(out.verdict, Verdict::RequireApproval);
    assert_eq!(out.reason_codes, ["default_require_approval"]);
    assert_eq!(out.min_approvals, 1);
    assert!(out.matched_rule.is_empty());
}

#[test]
fn dataflow_replaces_the_effect_instead_of_escalating() {
    let p = policy(
        "rules:\n- name: egress\n  effect: block\n  dataflow: {enabled: true, action: require_approval}\n",
    );
    let i = intent(
        r#"{"tool_name":"tool.post","targets":[{"kind":"url","value":"https://x.example/a"}],
            "arg_provenance":[{"arg_path":"$.body","source":"external"}],
            "context":{"identity":"a","workspace":"w","risk_class":"low"}}"#,
    );
    let out = eval(&p, &i);
    assert_eq!(
        out.verdict,
        Verdict::RequireApproval,
        "block was replaced, not max-combined"
    );
    assert!(out.dataflow_triggered);
    assert_eq!(
        out.reason_codes,
        ["dataflow_tainted_destination", "matched_rule_egress"]
    );
    assert_eq!(out.violations, ["tainted_dataflow"]);
}

#[test]
fn endpoint_domain_and_egress_checks_escalate_an_allow_rule() {
    let p = policy(
        "rules:\n- name: net\n  effect: allow\n  endpoint:\n    domain_denylist: ['*.evil.example']\n    egress_classes: [net.http]\n    action: require_approval\n",
    );
    let i = intent(
        r#"{"tool_name":"t","targets":[{"kind":"host","value":"api.evil.example","operation":"dns"}],
            "context":{"identity":"a","workspace":"w","risk_class":"low"}}"#,
    );
    let out = eval(&p, &i);
    assert_eq!(out.verdict, Verdict::RequireApproval);
    assert_eq!(
        out.reason_codes,
        [
            "endpoint_constraint_violation",
            "endpoint_domain_denied",
            "endpoint_egress_class_not_allowed",
            "matched_rule_net"
        ]
    );
}

#[test]
fn plan_phase_with_a_destructive_target_is_a_dry_run() {
    let p = policy("rules:\n- {name: any, effect: allow}\n");
    let i = intent(
        r#"{"tool_name":"tool.delete","targets":[{"kind":"path","value":"/a","operation":"delete"}],
            "context":{"identity":"a","workspace":"w","risk_class":"low","phase":"plan"}}"#,
    );
    let out = eval(&p, &i);
    assert_eq!(out.verdict, Verdict::DryRun);
    assert!(
        out.reason_codes
            .contains(&"plan_phase_non_destructive".to_owned())
    );
}

#[test]
fn context_evidence_claims_without_an_envelope_are_ignored() {
    let p = policy(
        "rules:\n- {name: ctx, effect: allow, require_context_evidence: true, max_context_age_seconds: 60}\n",
    );
    let claims = format!(
        r#","context_set_digest":"{}","context_evidence_mode":"required","auth_context":{{"context_age_seconds":1}}"#,
        "a".repeat(64)
    );
    let out = eval(&p, &write_intent("low", &claims));
    assert_eq!(out.verdict, Verdict::Block);
    assert_eq!(
        out.reason_codes,
        [
            "context_evidence_missing",
            "context_evidence_mode_mismatch",
            "context_freshness_exceeded",
            "context_set_digest_missing",
            "matched_rule_ctx"
        ]
    );

    let fresh = ContextEvidence {
        context_set_digest: "a".repeat(64),
        evidence_mode: "required".into(),
        context_refs: vec!["r".into()],
        context_age_seconds: 30,
    };
    let opts = EvalOptions {
        context_evidence: Some(&fresh),
        ..EvalOptions::default()
    };
    let out = evaluate(&p, &write_intent("low", ""), &opts).unwrap();
    assert_eq!(out.verdict, Verdict::Allow);
    assert_eq!(out.context_source, "context_envelope");

    let stale = ContextEvidence {
        context_age_seconds: 61,
        ..fresh.clone()
    };
    let opts = EvalOptions {
        context_evidence: Some(&stale),
        ..EvalOptions::default()
    };
    let out = evaluate(&p, &write_intent("low", ""), &opts).unwrap();
    assert_eq!(out.verdict, Verdict::Block);
    assert!(
        out.reason_codes
            .contains(&"context_freshness_exceeded".to_owned())
    );
}

#[test]
fn fail_closed_blocks_high_risk_intents_missing_required_fields() {
    let p = policy(
        "default_verdict: allow\nfail_closed:\n  enabled: true\n  required_fields: [targets, arg_provenance, delegation, context_evidence]\n",
    );
    let i = intent(
        r#"{"tool_name":"t","context":{"identity":"a","workspace":"w","risk_class":"HIGH"}}"#,
    );
    let out = eval(&p, &i);
    assert_eq!(out.verdict, Verdict::Block);
    assert_eq!(
        out.reason_codes,
        [
            "context_evidence_missing",
            "fail_closed_missing_arg_provenance",
            "fail_closed_missing_delegation",
            "fail_closed_missing_targets"
        ]
    );
    let low = intent(
        r#"{"tool_name":"t","context":{"identity":"a","workspace":"w","risk_class":"low"}}"#,
    );
    assert_eq!(eval(&p, &low).verdict, Verdict::Allow);
}

#[test]
fn fail_closed_always_rejects_unknown_endpoint_classes() {
    let p = policy("default_verdict: allow\nfail_closed: {enabled: true}\n");
    let i = intent(
        r#"{"tool_name":"tool.info","targets":[{"kind":"repo","value":"r"}],
            "context":{"identity":"a","workspace":"w","risk_class":"critical"}}"#,
    );
    let out = eval(&p, &i);
    assert_eq!(out.verdict, Verdict::Block);
    assert_eq!(out.reason_codes, ["fail_closed_endpoint_class_unknown"]);
    assert_eq!(out.violations, ["endpoint_class_unknown"]);
}

#[test]
fn unevaluable_intents_block_only_when_the_policy_fails_closed_for_their_risk() {
    let raw = crate::intent::parse_intent(
        br#"{"tool_name":"t","targets":[{"kind":"disk","value":"x"}],"context":{"identity":"a","workspace":"w","risk_class":" High "}}"#,
    )
    .unwrap();
    let closed = policy("fail_closed: {enabled: true}\n");
    let out = evaluate_request(&closed, &raw, &EvalOptions::default()).unwrap();
    assert_eq!(out.verdict, Verdict::Block);
    assert_eq!(out.reason_codes, ["fail_closed_intent_invalid"]);
    assert_eq!(out.violations, ["intent_not_evaluable"]);
    let open = policy("default_verdict: allow\n");
    let err = evaluate_request(&open, &raw, &EvalOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "normalize intent: unsupported target kind: disk"
    );
}

#[test]
fn delegation_constraints_check_depth_delegators_delegates_and_scopes() {
    let p = policy(
        "default_verdict: block\nrules:\n- name: delegated\n  effect: allow\n  match:\n    require_delegation: true\n    allowed_delegator_identities: [lead]\n    allowed_delegate_identities: [worker]\n    delegation_scopes: [write]\n    max_delegation_depth: 1\n",
    );
    let with_chain = |chain: &str, scope: &str| {
        intent(&format!(
            r#"{{"tool_name":"t","delegation":{{"requester_identity":"worker","scope_class":"{scope}","chain":[{chain}]}},
                "context":{{"identity":"a","workspace":"w","risk_class":"low"}}}}"#
        ))
    };
    let one = r#"{"delegator_identity":"lead","delegate_identity":"worker"}"#;
    let out = eval(&p, &with_chain(one, "WRITE"));
    assert_eq!(out.verdict, Verdict::Allow);
    assert!(out.require_delegation);
    let two = r#"{"delegator_identity":"lead","delegate_identity":"mid"},{"delegator_identity":"mid","delegate_identity":"worker"}"#;
    assert_eq!(
        eval(&p, &with_chain(two, "write")).verdict,
        Verdict::Block,
        "too deep"
    );
    assert_eq!(
        eval(&p, &with_chain(one, "read")).verdict,
        Verdict::Block,
        "wrong scope"
    );
    assert_eq!(
        eval(&p, &write_intent("low", "")).verdict,
        Verdict::Block,
        "no delegation"
    );
}

#[test]
fn tool_annotations_and_skill_fields_must_match() {
    let p = policy(
        "default_verdict: block\nrules:\n- name: ro\n  effect: allow\n  match:\n    tool_annotations: {readOnlyHint: true}\n    skill_publishers: [Acme]\n",
    );
    let i = intent(
        r#"{"tool_name":"t","targets":[{"kind":"path","value":"/a","read_only_hint":true}],
            "skill_provenance":{"skill_name":"s","source":"registry","publisher":"ACME"},
            "context":{"identity":"a","workspace":"w","risk_class":"low"}}"#,
    );
    assert_eq!(eval(&p, &i).verdict, Verdict::Allow);
    let no_skill = intent(
        r#"{"tool_name":"t","targets":[{"kind":"path","value":"/a","read_only_hint":true}],
            "context":{"identity":"a","workspace":"w","risk_class":"low"}}"#,
    );
    assert_eq!(eval(&p, &no_skill).verdict, Verdict::Block);
}

#[test]
fn wrkr_inventory_enriches_the_context_and_is_recorded_as_source() {
    let p = policy(
        "default_verdict: block\nrules:\n- name: wrkr\n  effect: allow\n  match:\n    context_data_classes: [public]\n",
    );
    let mut inventory = WrkrInventory::new();
    inventory.insert(
        "tool.write".into(),
        WrkrToolMetadata {
            tool_name: "tool.write".into(),
            data_class: "public".into(),
            endpoint_class: "fs.write".into(),
            autonomy_level: "supervised".into(),
        },
    );
    let opts = EvalOptions {
        wrkr_inventory: Some(&inventory),
        wrkr_source: Some("inventory.json"),
        ..EvalOptions::default()
    };
    let out = evaluate(&p, &write_intent("low", ""), &opts).unwrap();
    assert_eq!(out.verdict, Verdict::Allow);
    assert_eq!(out.context_source, "inventory.json");
    assert_eq!(eval(&p, &write_intent("low", "")).verdict, Verdict::Block);
}

fn two_step_script(risk: &str) -> NormalizedIntent {
    intent(&format!(
        r#"{{"tool_name":"script","script":{{"steps":[
            {{"tool_name":"tool.read","args":{{}},"targets":[{{"kind":"path","value":"/in","operation":"read"}}]}},
            {{"tool_name":"tool.write","args":{{}},"targets":[{{"kind":"path","value":"/out","operation":"write"}}]}}]}},
            "context":{{"identity":"a","workspace":"w","risk_class":"{risk}"}}}}"#
    ))
}

#[test]
fn script_verdict_is_the_most_restrictive_step_with_step_details() {
    let p = policy(
        "default_verdict: allow\nrules:\n- {name: approve-writes, effect: require_approval, match: {tool_names: [tool.write]}}\n",
    );
    let out = eval(&p, &two_step_script("low"));
    assert_eq!(out.verdict, Verdict::RequireApproval);
    assert_eq!(
        out.reason_codes,
        ["default_allow", "matched_rule_approve_writes"]
    );
    assert_eq!(out.matched_rule, "approve-writes");
    let script = out.script.unwrap();
    assert_eq!(script.step_count, 2);
    assert_eq!(script.composite_risk_class, CompositeRisk::Medium);
    assert_eq!(script.step_verdicts[0].verdict, Verdict::Allow);
    assert_eq!(script.step_verdicts[1].verdict, Verdict::RequireApproval);
    assert_eq!(script.step_verdicts[1].index, 1);
}

#[test]
fn script_limits_apply_after_the_steps() {
    let max = policy("default_verdict: allow\nscripts: {max_steps: 1}\n");
    let out = eval(&max, &two_step_script("low"));
    assert_eq!(out.verdict, Verdict::Block);
    assert!(
        out.reason_codes
            .contains(&"script_max_steps_exceeded".to_owned())
    );
    assert!(
        out.violations
            .contains(&"script_max_steps_exceeded".to_owned())
    );

    let threshold = policy("default_verdict: allow\nscripts: {require_approval_above: 1}\n");
    let out = eval(&threshold, &two_step_script("low"));
    assert_eq!(out.verdict, Verdict::RequireApproval);
    assert_eq!(out.min_approvals, 1);
    assert!(
        out.reason_codes
            .contains(&"script_step_threshold_approval".to_owned())
    );

    let mixed = policy("default_verdict: allow\nscripts: {block_mixed_risk: true}\n");
    let out = eval(&mixed, &two_step_script("low"));
    assert_eq!(out.verdict, Verdict::Block);
    assert_eq!(out.violations, ["script_mixed_risk"]);
}

#[test]
fn evaluation_is_deterministic_across_repeated_runs() {
    let p = policy(
        "rules:\n- {name: x, effect: require_approval, match: {tool_names: [tool.write]}}\n- {name: y, effect: allow}\n",
    );
    let i = write_intent("high", "");
    let first = eval(&p, &i);
    for _ in 0..20 {
        assert_eq!(eval(&p, &i), first);
    }
}

#[test]
fn wrkr_inventory_parses_both_shapes_and_lowercases() {
    let wrapped = parse_wrkr_inventory(
        br#"{"items":[{"tool_name":" Tool.Write ","data_class":"PII"},{"tool_name":""}]}"#,
    )
    .unwrap();
    assert_eq!(wrapped.len(), 1);
    assert_eq!(wrapped["tool.write"].data_class, "pii");
    let bare =
        parse_wrkr_inventory(br#"[{"tool_name":"a"},{"tool_name":"A","autonomy_level":"High"}]"#)
            .unwrap();
    assert_eq!(bare["a"].autonomy_level, "high", "later duplicates win");
    assert!(
        parse_wrkr_inventory(b"{\"items\":[]}").is_err(),
        "empty envelope falls back to an array parse"
    );
}

#[test]
fn envelope_age_is_the_oldest_record_in_whole_seconds() {
    let t = |s: &str| crate::gotime::GoTime::parse_rfc3339(s).unwrap();
    let now = t("2026-02-05T00:01:40.9Z");
    let records = [
        t("2026-02-05T00:00:00Z"),
        t("2026-02-05T00:01:00Z"),
        t("2026-02-06T00:00:00Z"),
    ];
    assert_eq!(
        ContextEvidence::age_seconds(&records, t("2026-02-04T00:00:00Z"), now),
        100
    );
    assert_eq!(
        ContextEvidence::age_seconds(&[], t("2026-02-05T00:01:30Z"), now),
        10
    );
    assert_eq!(
        ContextEvidence::age_seconds(&[], crate::gotime::GoTime::ZERO, now),
        0
    );
}
