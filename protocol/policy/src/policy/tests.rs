//! Policy parsing, normalization and digest unit tests.

use super::*;

fn parse(yaml: &str) -> Result<Policy, PolicyError> {
    parse_policy_yaml(yaml.as_bytes())
}

#[test]
fn minimal_policy_digests_to_the_contract_example() {
    let policy = parse("default_verdict: allow\n").unwrap();
    let expected = r#"{"DefaultVerdict":"allow","FailClosed":{"Enabled":false,"RequiredFields":[],"RiskClasses":[]},"Rules":[],"SchemaID":"gait.gate.policy","SchemaVersion":"1.0.0"}"#;
    assert_eq!(
        String::from_utf8(gait_canon::canonical_bytes(&policy.digest_payload())).unwrap(),
        expected
    );
    assert_eq!(policy.digest(), gait_canon::sha256_hex(expected.as_bytes()));
}

#[test]
fn empty_file_is_the_default_require_approval_policy() {
    let policy = parse("").unwrap();
    assert_eq!(policy, Policy::default());
    let comments_only = parse("# nothing here\n").unwrap();
    assert_eq!(comments_only.default_verdict, Verdict::RequireApproval);
}

#[test]
fn unknown_key_is_rejected_with_its_name_and_line() {
    let err = parse("schema_id: gait.gate.policy\ndefault_verdit: allow\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("default_verdit"), "{text}");
    match err {
        PolicyError::Yaml { line, .. } => assert_eq!(line, 2, "{text}"),
        other => panic!("expected a yaml error, got {other:?}"),
    }
    let nested =
        parse("rules:\n  - name: r\n    effect: allow\n    match:\n      tool: x\n").unwrap_err();
    assert!(nested.to_string().contains("tool"), "{nested}");
    assert!(
        matches!(nested, PolicyError::Yaml { line: 5, .. }),
        "{nested}"
    );
}

#[test]
fn duplicate_keys_are_rejected() {
    assert!(matches!(
        parse("default_verdict: allow\ndefault_verdict: block\n"),
        Err(PolicyError::Yaml { .. })
    ));
}

#[test]
fn legacy_keys_are_rejected_with_migration_hints() {
    let err = parse("version: 1\nname: demo\ndefault_verdict: allow\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "legacy policy proposal fields are not supported [version, name]: \
         version->schema_id|schema_version (set schema_id=gait.gate.policy and schema_version=1.0.0); \
         name->remove the top-level policy name; rule names remain under rules[].name when needed"
    );
    assert_eq!(err.migrations().len(), 2);
    assert_eq!(
        err.migrations()[0].replacement_fields,
        ["schema_id", "schema_version"]
    );
}

#[test]
fn default_action_alias_must_agree() {
    assert_eq!(
        parse("default_action: BLOCK\n").unwrap().default_verdict,
        Verdict::Block
    );
    assert!(parse("default_action: block\ndefault_verdict: block\n").is_ok());
    let err = parse("default_action: block\ndefault_verdict: allow\n").unwrap_err();
    assert!(
        err.to_string()
            .contains("default_action must match default_verdict"),
        "{err}"
    );
    assert!(parse("default_verdict: maybe\n").is_err());
}

#[test]
fn rule_action_alias_must_agree_and_an_effect_is_required() {
    let ok = parse("rules:\n  - name: r\n    action: Block\n").unwrap();
    assert_eq!(ok.rules[0].effect, Verdict::Block);
    let mismatch =
        parse("rules:\n  - name: r\n    action: block\n    effect: allow\n").unwrap_err();
    assert!(
        mismatch
            .to_string()
            .contains("rule action must match effect for r"),
        "{mismatch}"
    );
    let missing = parse("rules:\n  - name: r\n").unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("rule effect is required for r"),
        "{missing}"
    );
    let nameless = parse("rules:\n  - effect: allow\n").unwrap_err();
    assert!(nameless.to_string().contains("rules[0].name"), "{nameless}");
}

#[test]
fn match_aliases_merge_and_lists_follow_case_rules() {
    let policy = parse(
        "rules:\n  - name: r\n    effect: allow\n    match:\n      tool_name: Tool.B\n      tool_names: [tool.a, TOOL.A, ' tool.b ']\n      endpoint_class: [FS.Read]\n      endpoint_classes: [fs.read, net.http]\n      target_values: [/Tmp/X, /Tmp/X]\n      identities: [Alice, alice]\n      risk_classes: [HIGH, high]\n",
    )
    .unwrap();
    let m = &policy.rules[0].match_;
    assert_eq!(m.tool_names, ["tool.a", "tool.b"]);
    assert_eq!(m.endpoint_classes, ["fs.read", "net.http"]);
    assert_eq!(m.target_values, ["/Tmp/X"]);
    assert_eq!(m.identities, ["Alice", "alice"]);
    assert_eq!(m.risk_classes, ["high"]);
}

#[test]
fn invalid_endpoint_and_discovery_values_are_rejected() {
    let bad_class = parse(
        "rules:\n  - name: r\n    effect: allow\n    match:\n      endpoint_classes: [fs.nope]\n",
    );
    assert!(
        bad_class
            .unwrap_err()
            .to_string()
            .contains("unsupported match endpoint_class")
    );
    let bad_egress = parse(
        "rules:\n  - name: r\n    effect: allow\n    endpoint:\n      egress_classes: [fs.read]\n",
    );
    assert!(
        bad_egress
            .unwrap_err()
            .to_string()
            .contains("must be network class")
    );
    let bad_method = parse(
        "rules:\n  - name: r\n    effect: allow\n    match:\n      discovery_method: [smoke]\n",
    );
    assert!(
        bad_method
            .unwrap_err()
            .to_string()
            .contains("discovery_method")
    );
}

#[test]
fn endpoint_and_dataflow_blocks_auto_enable_with_defaults() {
    let policy = parse(
        "rules:\n  - name: r\n    effect: allow\n    endpoint:\n      destructive_action: require_approval\n    dataflow:\n      destination_kinds: [HOST]\n",
    )
    .unwrap();
    let rule = &policy.rules[0];
    assert!(rule.endpoint.enabled);
    assert_eq!(rule.endpoint.action, Some(Verdict::Block));
    assert_eq!(
        rule.endpoint.destructive_action,
        Some(Verdict::RequireApproval)
    );
    assert_eq!(rule.endpoint.reason_code, "endpoint_constraint_violation");
    assert!(rule.dataflow.enabled);
    assert_eq!(rule.dataflow.tainted_sources, ["external", "tool_output"]);
    assert_eq!(rule.dataflow.action, Some(Verdict::RequireApproval));
    assert_eq!(rule.dataflow.destination_kinds, ["host"]);
    assert_eq!(rule.dataflow.reason_code, "dataflow_tainted_destination");
    assert_eq!(rule.dataflow.violation, "tainted_dataflow");
    let bad = parse(
        "rules:\n  - name: r\n    effect: allow\n    dataflow:\n      enabled: true\n      action: allow\n",
    );
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("unsupported dataflow.action")
    );
}

#[test]
fn rate_limits_and_budgets_get_defaults_and_validation() {
    let policy = parse(
        "rules:\n  - name: r\n    effect: allow\n    min_approvals: 2\n    rate_limit:\n      requests: 5\n    destructive_budget:\n      requests: 1\n      window: HOUR\n",
    )
    .unwrap();
    let rule = &policy.rules[0];
    assert_eq!(rule.rate_limit.window, "minute");
    assert_eq!(rule.rate_limit.scope, "tool_identity");
    assert_eq!(rule.destructive_budget.window, "hour");
    assert!(
        rule.require_distinct_approvers,
        "min_approvals > 1 forces distinct approvers"
    );
    let zero_budget = parse(
        "rules:\n  - name: r\n    effect: allow\n    destructive_budget:\n      window: hour\n",
    );
    assert!(
        zero_budget
            .unwrap_err()
            .to_string()
            .contains("destructive_budget.requests must be >= 1")
    );
    let bad_window = parse(
        "rules:\n  - name: r\n    effect: allow\n    rate_limit:\n      requests: 1\n      window: day\n",
    );
    assert!(
        bad_window
            .unwrap_err()
            .to_string()
            .contains("unsupported rate_limit.window")
    );
}

#[test]
fn rules_are_sorted_by_priority_then_name() {
    let policy = parse(
        "rules:\n  - {name: b, priority: 5, effect: allow}\n  - {name: a, priority: 5, effect: allow}\n  - {name: z, priority: -1, effect: block}\n",
    )
    .unwrap();
    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["z", "a", "b"]);
}

#[test]
fn fail_closed_defaults_and_validates_required_fields() {
    let policy = parse("fail_closed:\n  enabled: true\n").unwrap();
    assert_eq!(policy.fail_closed.risk_classes, ["critical", "high"]);
    let bad = parse("fail_closed:\n  enabled: true\n  required_fields: [targets, vibes]\n");
    assert!(
        bad.unwrap_err()
            .to_string()
            .contains("unsupported fail_closed required_field: vibes")
    );
}

#[test]
fn mcp_trust_enables_itself_and_normalizes_max_age_like_go() {
    let policy =
        parse("mcp_trust:\n  snapshot: ./trust.json\n  max_age: 90m\n  min_score: 0.5\n").unwrap();
    assert!(policy.mcp_trust.enabled);
    assert_eq!(policy.mcp_trust.action, "block");
    assert_eq!(policy.mcp_trust.max_age, "1h30m0s");
    assert_eq!(policy.mcp_trust.required_risk_classes, ["critical", "high"]);
    let payload = policy.digest_payload();
    assert_eq!(payload["MCPTrust"]["MaxAge"], "1h30m0s");
    assert_eq!(payload["MCPTrust"]["MinScore"], 0.5);
    assert!(
        parse("mcp_trust:\n  action: block\n").is_err(),
        "snapshot is required"
    );
    assert!(parse("mcp_trust:\n  snapshot: s\n  min_score: 1.5\n").is_err());
    assert!(parse("mcp_trust:\n  snapshot: s\n  max_age: 10\n").is_err());
}

#[test]
fn yaml_one_one_booleans_are_not_booleans() {
    assert!(parse("fail_closed:\n  enabled: yes\n").is_err());
    assert!(parse("fail_closed:\n  enabled: True\n").is_ok());
}

#[test]
fn null_values_are_go_zero_values() {
    let policy = parse("schema_id:\ndefault_verdict: ~\nrules:\n  - name: r\n    effect: allow\n    reason_codes: [a, null, '']\n").unwrap();
    assert_eq!(policy.schema_id, POLICY_SCHEMA_ID);
    assert_eq!(policy.default_verdict, Verdict::RequireApproval);
    assert_eq!(policy.rules[0].reason_codes, ["a"]);
}

#[test]
fn digest_payload_includes_optional_rule_members_only_when_set() {
    let policy = parse(
        "rules:\n  - name: r\n    effect: require_approval\n    require_broker_credential: true\n    broker_scopes: [Write]\n    match:\n      max_delegation_depth: 0\n      tool_annotations: {readOnlyHint: false}\n",
    )
    .unwrap();
    let rule = &policy.digest_payload()["Rules"][0];
    assert_eq!(rule["RequireBrokerCredential"], true);
    assert_eq!(rule["BrokerScopes"][0], "write");
    assert_eq!(rule["Match"]["MaxDelegationDepth"], 0);
    assert_eq!(rule["Match"]["ToolAnnotations"]["ReadOnlyHint"], false);
    assert!(rule.get("MinApprovals").is_none());
    assert!(rule.get("Endpoint").is_none());
    assert!(rule["Match"].get("EndpointClasses").is_none());
    assert_eq!(rule["Match"]["ToolNames"], serde_json::json!([]));
}

#[test]
fn schema_id_and_version_must_be_the_supported_ones() {
    assert!(parse("schema_id: gait.gate.other\n").is_err());
    assert!(parse("schema_version: 2.0.0\n").is_err());
}

#[test]
fn oversized_policy_is_rejected_before_parsing() {
    let big = vec![b'#'; MAX_POLICY_BYTES + 1];
    assert!(matches!(
        parse_policy_yaml(&big),
        Err(PolicyError::TooLarge { .. })
    ));
}

#[test]
fn context_evidence_is_required_by_any_of_gaits_four_conditions() {
    let rule = |extra: &str| {
        format!(
            "rules:\n  - name: r\n    effect: allow\n    match:\n      tool_names: [x]\n{extra}"
        )
    };
    let requires = |yaml: &str| parse(yaml).expect("policy").requires_context_evidence();
    assert!(!requires(&rule("")));
    assert!(requires(&rule("    require_context_evidence: true\n")));
    assert!(requires(&rule(
        "    required_context_evidence_mode: required\n"
    )));
    assert!(requires(&rule("    max_context_age_seconds: 60\n")));
    assert!(requires(
        "fail_closed:\n  enabled: true\n  required_fields: [context_evidence]\n"
    ));
    assert!(!requires(
        "fail_closed:\n  enabled: true\n  required_fields: [targets]\n"
    ));
}
