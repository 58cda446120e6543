//! Property tests: the intent digest ignores key order, whitespace, the case of struct keys, target order and
//! duplicates; the policy digest ignores rule order, duplicate list entries and the case of lowercased lists.

use gait_policy::{parse_and_normalize_intent, parse_policy_yaml};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// Deterministic pseudo-random choices for one rendering.
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn space(&mut self) -> &'static str {
        [" ", "", "\n  ", "\t", ""][self.pick(5)]
    }
}

/// Render `value` as JSON with shuffled members and random whitespace; keys of Gait structs (everything
/// except free-form objects such as `args` and `auth_context`) get random ASCII case.
fn render(value: &Value, c: &mut Choices, struct_keys: bool, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            for i in (1..entries.len()).rev() {
                entries.swap(i, c.pick(i + 1));
            }
            out.push('{');
            for (i, (key, child)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(c.space());
                let key_text: String = if struct_keys {
                    key.chars()
                        .map(|ch| {
                            if c.pick(2) == 0 {
                                ch.to_ascii_uppercase()
                            } else {
                                ch
                            }
                        })
                        .collect()
                } else {
                    key.clone()
                };
                out.push_str(&serde_json::to_string(&key_text).unwrap_or_default());
                out.push_str(c.space());
                out.push(':');
                out.push_str(c.space());
                let free_form = key.as_str() == "args" || key.as_str() == "auth_context";
                render(child, c, struct_keys && !free_form, out);
            }
            out.push_str(c.space());
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(c.space());
                render(item, c, struct_keys, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn target() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just("path"), Just("url"), Just("host"), Just("other")],
        "[a-z/]{1,12}",
        prop_oneof![Just(""), Just("read"), Just("write"), Just("delete")],
        any::<bool>(),
    )
        .prop_map(|(kind, value, op, destructive)| {
            json!({"kind": kind, "value": format!("/{value}"), "operation": op, "destructive": destructive})
        })
}

fn intent_doc() -> impl Strategy<Value = Value> {
    (
        "[a-z]{1,6}\\.[a-z]{1,6}",
        prop::collection::btree_map(
            "[a-zA-Z_]{1,8}",
            prop_oneof![
                "[ a-z]{0,8}".prop_map(Value::from),
                any::<i32>().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
            ],
            0..5,
        ),
        prop::collection::vec(target(), 0..4),
        prop_oneof![Just("low"), Just("high"), Just("critical")],
        prop::option::of("[a-z0-9]{1,8}"),
    )
        .prop_map(|(tool, args, targets, risk, session)| {
            let mut context =
                json!({"identity": "alice", "workspace": "/repo", "risk_class": risk});
            if let Some(s) = session {
                context["session_id"] = Value::from(s);
            }
            json!({
                "schema_id": "gait.gate.intent_request",
                "schema_version": "1.0.0",
                "tool_name": tool,
                "args": Value::Object(args.into_iter().collect::<Map<String, Value>>()),
                "targets": targets,
                "arg_provenance": [{"arg_path": "$.a", "source": "user"}],
                "context": context,
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn intent_digest_ignores_key_order_whitespace_and_struct_key_case(doc in intent_doc(), seed in 1u64..) {
        let mut plain = String::new();
        render(&doc, &mut Choices(0x9e37_79b9_7f4a_7c15), false, &mut plain);
        let mut varied = String::new();
        render(&doc, &mut Choices(seed), true, &mut varied);
        let a = parse_and_normalize_intent(plain.as_bytes()).unwrap();
        let b = parse_and_normalize_intent(varied.as_bytes()).unwrap();
        prop_assert_eq!(&a.intent_digest, &b.intent_digest, "{} vs {}", plain, varied);
        prop_assert_eq!(a.args_digest, b.args_digest);
    }

    #[test]
    fn intent_digest_ignores_target_order_and_duplicates(doc in intent_doc(), seed in 1u64..) {
        let mut shuffled = doc.clone();
        if let Some(targets) = shuffled["targets"].as_array_mut() {
            let mut c = Choices(seed);
            for i in (1..targets.len()).rev() {
                targets.swap(i, c.pick(i + 1));
            }
            if let Some(first) = targets.first().cloned() {
                targets.push(first);
            }
        }
        let a = parse_and_normalize_intent(doc.to_string().as_bytes()).unwrap();
        let b = parse_and_normalize_intent(shuffled.to_string().as_bytes()).unwrap();
        prop_assert_eq!(a.intent_digest, b.intent_digest);
    }

    #[test]
    fn changing_an_arg_value_changes_the_digest(doc in intent_doc()) {
        let mut changed = doc.clone();
        changed["args"]["__extra"] = Value::from("x");
        let a = parse_and_normalize_intent(doc.to_string().as_bytes()).unwrap();
        let b = parse_and_normalize_intent(changed.to_string().as_bytes()).unwrap();
        prop_assert_ne!(a.intent_digest, b.intent_digest);
    }
}

#[derive(Debug, Clone)]
struct RuleSpec {
    name: String,
    priority: i8,
    effect: &'static str,
    tools: Vec<String>,
    risks: Vec<&'static str>,
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    (
        "[a-z]{1,8}",
        -3i8..5,
        prop_oneof![
            Just("allow"),
            Just("block"),
            Just("require_approval"),
            Just("dry_run")
        ],
        prop::collection::vec("[a-z]{1,5}\\.[a-z]{1,5}", 0..4),
        prop::collection::vec(
            prop_oneof![Just("low"), Just("high"), Just("critical")],
            0..3,
        ),
    )
        .prop_map(|(name, priority, effect, tools, risks)| RuleSpec {
            name,
            priority,
            effect,
            tools,
            risks,
        })
}

fn quote_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|i| format!("'{i}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn rule_yaml(rule: &RuleSpec, noisy: Option<&mut Choices>) -> String {
    let mut tools: Vec<String> = rule.tools.clone();
    let mut risks: Vec<String> = rule.risks.iter().map(|r| (*r).to_owned()).collect();
    if let Some(c) = noisy {
        let shout = |s: &String, c: &mut Choices| -> String {
            s.chars()
                .map(|ch| {
                    if c.pick(2) == 0 {
                        ch.to_ascii_uppercase()
                    } else {
                        ch
                    }
                })
                .collect()
        };
        let mut noisy_tools: Vec<String> = tools.iter().map(|t| shout(t, c)).collect();
        noisy_tools.extend(tools.iter().cloned());
        noisy_tools.reverse();
        tools = noisy_tools.into_iter().map(|t| format!(" {t} ")).collect();
        let mut noisy_risks: Vec<String> = risks.iter().map(|r| shout(r, c)).collect();
        noisy_risks.extend(risks.iter().cloned());
        risks = noisy_risks;
    }
    format!(
        "  - name: {}\n    priority: {}\n    effect: {}\n    match:\n      tool_names: {}\n      risk_classes: {}\n",
        rule.name,
        rule.priority,
        rule.effect,
        quote_list(&tools),
        quote_list(&risks)
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn policy_digest_ignores_rule_order_duplicates_and_case_of_lowercased_lists(
        rules in prop::collection::vec(rule_spec(), 0..5),
        seed in 1u64..,
    ) {
        // Distinct names keep the (priority, name) order total, as real policies do.
        let mut rules = rules;
        for (i, rule) in rules.iter_mut().enumerate() {
            rule.name = format!("{}-{i}", rule.name);
        }
        let plain = format!(
            "default_verdict: allow\nrules:\n{}",
            rules.iter().map(|r| rule_yaml(r, None)).collect::<String>()
        );
        let mut c = Choices(seed);
        let mut shuffled = rules.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, c.pick(i + 1));
        }
        let noisy = format!(
            "# reordered\ndefault_verdict: ' ALLOW '\nrules:\n{}",
            shuffled.iter().map(|r| rule_yaml(r, Some(&mut c))).collect::<String>()
        );
        let plain = if rules.is_empty() { "default_verdict: allow\n".to_owned() } else { plain };
        let noisy = if rules.is_empty() { "default_verdict: ' ALLOW '\n".to_owned() } else { noisy };
        let a = parse_policy_yaml(plain.as_bytes()).unwrap();
        let b = parse_policy_yaml(noisy.as_bytes()).unwrap();
        prop_assert_eq!(a.digest(), b.digest(), "{}\n---\n{}", plain, noisy);
    }

    #[test]
    fn policy_digest_changes_when_a_rule_changes(rule in rule_spec()) {
        let base = format!("rules:\n{}", rule_yaml(&rule, None));
        let mut bumped = rule.clone();
        bumped.priority = rule.priority.wrapping_add(1);
        let changed = format!("rules:\n{}", rule_yaml(&bumped, None));
        let a = parse_policy_yaml(base.as_bytes()).unwrap();
        let b = parse_policy_yaml(changed.as_bytes()).unwrap();
        prop_assert_ne!(a.digest(), b.digest());
    }
}

#[test]
fn case_preserved_lists_do_change_the_digest() {
    let lower = parse_policy_yaml(
        b"rules:\n  - {name: r, effect: allow, match: {target_values: [/tmp/a]}}\n",
    )
    .unwrap();
    let upper = parse_policy_yaml(
        b"rules:\n  - {name: r, effect: allow, match: {target_values: [/TMP/A]}}\n",
    )
    .unwrap();
    assert_ne!(lower.digest(), upper.digest());
}
