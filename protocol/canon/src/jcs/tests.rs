//! Unit tests for the JCS writer: RFC 8785 examples for numbers, strings and key order.

use serde_json::{Value, json};

use super::*;
use crate::parse_json;

fn canon_str(v: &Value) -> String {
    String::from_utf8(canonical_bytes(v)).unwrap()
}

fn number(bits: u64) -> String {
    let mut out = Vec::new();
    write_double(&mut out, f64::from_bits(bits));
    String::from_utf8(out).unwrap()
}

#[test]
fn rfc8785_appendix_b_numbers_print_as_ecmascript() {
    let cases: &[(u64, &str)] = &[
        (0x0000000000000000, "0"),
        (0x8000000000000000, "0"),
        (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"),
        (0x7fefffffffffffff, "1.7976931348623157e+308"),
        (0xffefffffffffffff, "-1.7976931348623157e+308"),
        (0x4340000000000000, "9007199254740992"),
        (0xc340000000000000, "-9007199254740992"),
        (0x4430000000000000, "295147905179352830000"),
        (0x44b52d02c7e14af5, "9.999999999999997e+22"),
        (0x44b52d02c7e14af6, "1e+23"),
        (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
        (0x444b1ae4d6e2ef4e, "999999999999999700000"),
        (0x444b1ae4d6e2ef4f, "999999999999999900000"),
        (0x444b1ae4d6e2ef50, "1e+21"),
        (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
        (0x3eb0c6f7a0b5ed8d, "0.000001"),
        (0x41b3de4355555553, "333333333.3333332"),
        (0x41b3de4355555554, "333333333.33333325"),
        (0x41b3de4355555555, "333333333.3333333"),
        (0x41b3de4355555556, "333333333.3333334"),
        (0x41b3de4355555557, "333333333.33333343"),
        (0xbecbf647612f3696, "-0.0000033333333333333333"),
        (0x43143ff3c1cb0959, "1424953923781206.2"),
    ];
    for &(bits, want) in cases {
        assert_eq!(number(bits), want, "bits {bits:#018x}");
    }
}

#[test]
fn rfc8785_section_3_2_2_example_canonicalizes_exactly() {
    let input = br#"{
      "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
      "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
      "literals": [null, true, false]
    }"#;
    let v = parse_json(input).unwrap();
    assert_eq!(
        canon_str(&v),
        r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
    );
}

#[test]
fn keys_sort_by_utf16_code_units_not_by_utf8_bytes() {
    let input = br#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#;
    let v = parse_json(input).unwrap();
    // RFC 8785 §3.2.3: the emoji (UTF-16 D83D DE00) sorts before U+FB33 although its UTF-8 bytes sort after.
    let want = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\
                \"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\
                \"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
    assert_eq!(canon_str(&v), want);
}

#[test]
fn control_characters_use_short_escapes_or_lowercase_u_escapes() {
    let v = json!("\u{8}\u{c}\n\r\t\u{0}\u{1f}\u{7f}\"\\/<>&\u{2028}é");
    assert_eq!(
        canon_str(&v),
        "\"\\b\\f\\n\\r\\t\\u0000\\u001f\u{7f}\\\"\\\\/<>&\u{2028}é\""
    );
}

#[test]
fn integers_and_doubles_share_one_number_form() {
    let v =
        parse_json(b"[1, 1.0, 1e0, -0, -0.0, 100, 1e21, 1e20, 12345678901234567890, 0.1]").unwrap();
    assert_eq!(
        canon_str(&v),
        "[1,1,1,0,0,100,1e+21,100000000000000000000,12345678901234567000,0.1]"
    );
}

#[test]
fn integers_beyond_2_pow_53_lose_precision_like_go_float64() {
    let v = json!([9007199254740993u64, u64::MAX, i64::MIN]);
    assert_eq!(
        canon_str(&v),
        "[9007199254740992,18446744073709552000,-9223372036854776000]"
    );
}

#[test]
fn whitespace_and_member_order_do_not_change_the_digest() {
    let a = parse_json(br#"{"b": [1, {"y": 2, "x": 1}], "a": "s"}"#).unwrap();
    let b = parse_json(br#"{"a":"s","b":[1,{"x":1,"y":2}]}"#).unwrap();
    assert_eq!(canonical_bytes(&a), canonical_bytes(&b));
    assert_eq!(digest_jcs(&a), digest_jcs(&b));
    assert_eq!(digest_jcs(&a).len(), 64);
}

#[test]
fn gait_intent_block_digest_matches_the_contract_worked_example() {
    // Contract §1.3: the normalized intent of examples/policy/endpoint/fixtures/intent_block.json.
    let normalized = br#"{"arg_provenance":[{"arg_path":"$.path","source":"user"}],"args":{"path":"/etc/hosts"},"context":{"identity":"ci-user","phase":"apply","risk_class":"high","workspace":"/tmp/gait"},"targets":[{"discovery_method":"unknown","endpoint_class":"fs.write","kind":"path","operation":"write","value":"/etc/hosts"}],"tool_name":"tool.write"}"#;
    let v = parse_json(normalized).unwrap();
    assert_eq!(canonical_bytes(&v), normalized.to_vec());
    // The conformance trace for that intent records this intent_digest.
    assert_eq!(
        digest_jcs(&v),
        "56306d8bd752d5b462e3f017d2482ce575985e3ef673945c39a1a58411214149"
    );
}

#[test]
fn ten_megabyte_string_canonicalizes() {
    let big = "x".repeat(10 * 1024 * 1024);
    let doc = format!("{{\"s\":\"{big}\"}}");
    let v = parse_json(doc.as_bytes()).unwrap();
    assert_eq!(canonical_bytes(&v).len(), doc.len());
}
