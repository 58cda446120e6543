//! Property tests: canonicalization is idempotent, independent of member order and whitespace, and parsing never
//! panics on arbitrary bytes.

use gait_canon::{canonical_bytes, digest_jcs, parse_json, sha256_hex};
use proptest::prelude::*;
use serde_json::{Map, Number, Value};

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{0,8}",
        any::<String>(),
        "[\\x00-\\x1f\"\\\\\u{7f}\u{e000}\u{fb33}\u{1f600}]{0,6}",
    ]
}

fn arb_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        arb_number(),
        arb_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(arb_string(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Write `v` as JSON text with object members in a pseudo-random order and some whitespace.
fn write_shuffled(v: &Value, seed: &mut u64, out: &mut String) {
    let mut next = || {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        *seed >> 33
    };
    match v {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            for i in (1..members.len()).rev() {
                let j = (next() as usize) % (i + 1);
                members.swap(i, j);
            }
            out.push_str("{ ");
            for (i, (k, val)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(" ,\n");
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push_str(" : ");
                write_shuffled(val, seed, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_shuffled(item, seed, out);
            }
            out.push(']');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn canonicalization_is_idempotent(v in arb_json()) {
        let once = canonical_bytes(&v);
        let reparsed = parse_json(&once).expect("canonical output must parse strictly");
        prop_assert_eq!(canonical_bytes(&reparsed), once);
    }

    #[test]
    fn member_order_and_whitespace_do_not_change_canonical_bytes(v in arb_json(), seed in any::<u64>()) {
        let mut text = String::new();
        let mut s = seed;
        write_shuffled(&v, &mut s, &mut text);
        let reparsed = parse_json(text.as_bytes()).expect("shuffled text must parse");
        prop_assert_eq!(canonical_bytes(&reparsed), canonical_bytes(&v));
    }

    #[test]
    fn digest_is_sha256_of_canonical_bytes_and_stable(v in arb_json()) {
        let d = digest_jcs(&v);
        prop_assert_eq!(&d, &sha256_hex(&canonical_bytes(&v)));
        prop_assert_eq!(&d, &digest_jcs(&parse_json(&canonical_bytes(&v)).unwrap()));
        prop_assert_eq!(d.len(), 64);
    }

    #[test]
    fn canonical_numbers_round_trip_to_the_same_double(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let text = String::from_utf8(canonical_bytes(&serde_json::json!(f))).unwrap();
        let back: f64 = text.parse().unwrap();
        prop_assert!(back == f || (back == 0.0 && f == 0.0), "{} -> {} -> {}", f, text, back);
    }

    #[test]
    fn parse_json_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_json(&bytes);
    }
}
