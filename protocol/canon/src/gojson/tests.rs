use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Value, json};

use super::*;

#[derive(Debug, Default, PartialEq, Deserialize)]
struct Inner {
    #[serde(default)]
    alg: String,
    #[serde(default)]
    key_id: String,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
struct Doc {
    #[serde(default)]
    trace_id: String,
    #[serde(default)]
    count: i64,
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    inner: Inner,
    #[serde(default)]
    signature: Option<Inner>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    args: Value,
}

fn doc(text: &str) -> Doc {
    from_slice(text.as_bytes()).unwrap()
}

#[test]
fn keys_match_fields_in_any_case_and_unknown_keys_are_ignored() {
    let d = doc(
        r#"{"TRACE_ID":"t","Count":3,"oK":true,"Inner":{"ALG":"ed25519"},"SIGNATURE":{"Key_Id":"k"},"extra":{"x":1}}"#,
    );
    assert_eq!(d.trace_id, "t");
    assert_eq!(d.count, 3);
    assert!(d.ok);
    assert_eq!(d.inner.alg, "ed25519");
    assert_eq!(d.signature.unwrap().key_id, "k");
}

#[test]
fn kelvin_sign_and_long_s_fold_like_go_but_other_non_ascii_does_not() {
    // U+212A folds to `k`, U+017F to `s` (Go's bytes.EqualFold); `ı` (dotless i) folds to nothing ASCII.
    let d = doc(
        "{\"\u{212a}ey_id\":\"x\",\"inner\":{\"\u{212a}EY_ID\":\"y\"},\"tag\u{17f}\":[\"a\"],\"trace_\u{131}d\":\"no\"}",
    );
    assert_eq!(d.inner.key_id, "y");
    assert_eq!(d.tags, ["a"]);
    assert_eq!(d.trace_id, "");
    assert_eq!(match_field("TRACE_ID", &["trace_id"]), Some(0));
    assert_eq!(match_field("trace-id", &["trace_id"]), None);
}

#[test]
fn a_repeated_key_keeps_the_last_scalar_and_null_does_not_erase_it() {
    let d = doc(r#"{"trace_id":"a","TRACE_ID":"b","count":1,"count":null}"#);
    assert_eq!(d.trace_id, "b");
    assert_eq!(d.count, 1);
}

#[test]
fn repeated_structs_and_maps_merge_but_slices_and_any_are_replaced() {
    let d = doc(r#"{"inner":{"alg":"a"},"INNER":{"key_id":"k"},
            "labels":{"x":"1","y":"1"},"labels":{"y":"2"},
            "tags":["a","b"],"tags":["c"],
            "args":{"p":1},"args":{"q":2}}"#);
    assert_eq!(
        d.inner,
        Inner {
            alg: "a".into(),
            key_id: "k".into()
        }
    );
    assert_eq!(d.labels.get("x").map(String::as_str), Some("1"));
    assert_eq!(d.labels.get("y").map(String::as_str), Some("2"));
    assert_eq!(d.tags, ["c"]);
    assert_eq!(d.args, json!({"q": 2}));
}

#[test]
fn null_clears_pointers_maps_and_slices() {
    let d = doc(
        r#"{"signature":{"alg":"a"},"signature":null,"labels":{"x":"1"},"labels":null,"tags":["a"],"tags":null}"#,
    );
    assert_eq!(d.signature, None);
    assert!(d.labels.is_empty());
    assert!(d.tags.is_empty());
    let d = doc(r#"{"signature":null,"SIGNATURE":{"alg":"b"}}"#);
    assert_eq!(d.signature.unwrap().alg, "b");
}

#[test]
fn map_keys_are_not_folded() {
    let d = doc(r#"{"labels":{"X":"1","x":"2"}}"#);
    assert_eq!(d.labels.len(), 2);
}

#[test]
fn a_wrong_type_names_the_field() {
    let err = from_slice::<Doc>(br#"{"inner":{"ALG":5}}"#).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("inner.alg"), "{text}");
    assert!(text.contains("number"), "{text}");
    let err = from_slice::<Doc>(br#"{"tags":["a",{}]}"#).unwrap_err();
    assert!(err.to_string().contains("tags[1]"), "{err}");
    let err = from_slice::<Doc>(br#"{"count":1.5}"#).unwrap_err();
    assert!(err.to_string().contains("count"), "{err}");
    assert!(from_slice::<Doc>(b"[1]").is_err());
}

#[test]
fn syntax_stays_strict() {
    assert!(matches!(
        from_slice::<Doc>(b"{} x"),
        Err(GoJsonError::Json(CanonError::Syntax { .. }))
    ));
    let deep = format!(
        "{{\"args\":{}{}}}",
        "[".repeat(MAX_DEPTH + 1),
        "]".repeat(MAX_DEPTH + 1)
    );
    assert!(matches!(
        from_slice::<Doc>(deep.as_bytes()),
        Err(GoJsonError::Json(CanonError::TooDeep { .. }))
    ));
    assert!(from_slice::<Doc>(&"[".repeat(1_000_000).into_bytes()).is_err());
}

#[test]
fn top_level_null_is_the_zero_struct() {
    assert_eq!(doc("null"), Doc::default());
}

#[test]
fn to_value_keeps_the_last_of_repeated_keys() {
    let node = parse_node(br#"{"a":1,"b":{"c":1,"c":2},"a":3}"#).unwrap();
    assert_eq!(node.to_value(), json!({"a": 3, "b": {"c": 2}}));
}
