//! Hostile input: deep nesting, huge strings and numbers, YAML alias bombs and oversized files end in a clear
//! error (never a panic, a stack overflow or unbounded memory), and large-but-legal inputs stay fast.

use std::time::{Duration, Instant};

use gait_policy::intent::{IntentError, MAX_INTENT_BYTES};
use gait_policy::policy::MAX_POLICY_BYTES;
use gait_policy::{PolicyError, parse_and_normalize_intent, parse_policy_yaml};

const CONTEXT: &str = r#""context":{"identity":"a","workspace":"w","risk_class":"low"}"#;

#[test]
fn deeply_nested_args_are_a_parse_error_not_a_stack_overflow() {
    let depth = 200_000;
    let doc = format!(
        r#"{{"tool_name":"t",{CONTEXT},"args":{{"x":{}{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let err = parse_and_normalize_intent(doc.as_bytes()).unwrap_err();
    assert!(matches!(err, IntentError::Parse(_)), "{err}");
    assert!(err.to_string().contains("recursion limit"), "{err}");
}

#[test]
fn moderate_nesting_is_accepted() {
    let depth = 100;
    let doc = format!(
        r#"{{"tool_name":"t",{CONTEXT},"args":{{"x":{}1{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert!(parse_and_normalize_intent(doc.as_bytes()).is_ok());
}

#[test]
fn a_ten_megabyte_string_is_rejected_by_size_before_parsing() {
    let doc = format!(
        r#"{{"tool_name":"t",{CONTEXT},"args":{{"blob":"{}"}}}}"#,
        "a".repeat(10_000_000)
    );
    let err = parse_and_normalize_intent(doc.as_bytes()).unwrap_err();
    assert_eq!(
        err,
        IntentError::TooLarge {
            size: doc.len(),
            max: MAX_INTENT_BYTES
        }
    );
    assert!(err.to_string().contains("over the"), "{err}");
}

#[test]
fn huge_numbers_follow_go_float64_rules() {
    let too_big = format!(r#"{{"tool_name":"t",{CONTEXT},"args":{{"n":1e400}}}}"#);
    assert!(matches!(
        parse_and_normalize_intent(too_big.as_bytes()),
        Err(IntentError::Parse(_))
    ));
    let long_integer = format!(
        r#"{{"tool_name":"t",{CONTEXT},"args":{{"n":{}}}}}"#,
        "9".repeat(300)
    );
    let intent = parse_and_normalize_intent(long_integer.as_bytes()).unwrap();
    assert_eq!(
        intent.args["n"].as_f64(),
        Some(1e300),
        "300 nines round to the double 1e300"
    );
    let tiny = format!(r#"{{"tool_name":"t",{CONTEXT},"args":{{"n":1e-400}}}}"#);
    assert!(
        parse_and_normalize_intent(tiny.as_bytes()).is_ok(),
        "underflow rounds to zero as in Go"
    );
}

#[test]
fn many_duplicate_targets_are_deduplicated_quickly() {
    let target = r#"{"kind":"path","value":"/a","operation":"read"}"#;
    let doc = format!(
        r#"{{"tool_name":"t",{CONTEXT},"targets":[{}]}}"#,
        vec![target; 50_000].join(",")
    );
    let start = Instant::now();
    let intent = parse_and_normalize_intent(doc.as_bytes()).unwrap();
    assert_eq!(intent.targets.len(), 1);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn yaml_alias_bomb_is_stopped_by_the_budget() {
    let bomb = "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n\
                b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
                c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
                d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
                e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n\
                f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
                g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n\
                h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n\
                i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n\
                rules: [{name: r, effect: allow, reason_codes: *i}]\n";
    let start = Instant::now();
    let err = parse_policy_yaml(bomb.as_bytes()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(err, PolicyError::Yaml { .. }), "{err}");
}

#[test]
fn alias_bomb_inside_a_known_list_is_rejected_without_expanding_it() {
    let mut yaml = String::from(
        "rules:\n  - name: r\n    effect: allow\n    reason_codes: &l0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for level in 1..8 {
        let prev = level - 1;
        yaml.push_str(&format!(
            "  - name: r{level}\n    effect: allow\n    violations: &l{level} [*l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}, *l{prev}]\n"
        ));
    }
    let start = Instant::now();
    let err = parse_policy_yaml(yaml.as_bytes()).unwrap_err();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    assert!(matches!(err, PolicyError::Yaml { line: 7, .. }), "{err}");
}

#[test]
fn deeply_nested_yaml_is_rejected() {
    let depth = 10_000;
    let yaml = format!("rules: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    assert!(parse_policy_yaml(yaml.as_bytes()).is_err());
}

#[test]
fn oversized_policy_is_rejected_by_size() {
    let yaml = format!(
        "default_verdict: allow\n# {}\n",
        "x".repeat(MAX_POLICY_BYTES)
    );
    assert!(matches!(
        parse_policy_yaml(yaml.as_bytes()),
        Err(PolicyError::TooLarge { .. })
    ));
}

#[test]
fn binary_garbage_is_an_error_for_both_parsers() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert!(parse_and_normalize_intent(&garbage).is_err());
    assert!(parse_policy_yaml(&garbage).is_err());
}
