//! Conformance: every row of `shared/conformance/policy_test_sample.json` (real `gait policy test --json` output)
//! must be reproduced exactly: exit code, verdict, reason codes, violations, matched rule and both digests.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use gait_policy::gate::{PolicyTestOutput, run_policy_test};
use gait_policy::{parse_intent, parse_policy_yaml};
use serde_json::Value;

fn shared() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")).to_path_buf()
}

/// What our implementation prints for `gait policy test <policy> <intent> --json`, and its exit code.
fn policy_test(policy_path: &Path, intent_path: &Path) -> Result<(i32, Value)> {
    let policy_bytes =
        std::fs::read(policy_path).with_context(|| format!("read {}", policy_path.display()))?;
    let intent_bytes =
        std::fs::read(intent_path).with_context(|| format!("read {}", intent_path.display()))?;
    let output = match parse_policy_yaml(&policy_bytes) {
        Err(err) => PolicyTestOutput::from_error(&err),
        Ok(policy) => match parse_intent(&intent_bytes) {
            Err(err) => PolicyTestOutput::from_error(&err),
            Ok(intent) => match run_policy_test(&policy, &intent, "") {
                Ok(result) => PolicyTestOutput::from_result(&result),
                Err(err) => PolicyTestOutput::from_error(&err),
            },
        },
    };
    Ok((output.exit_code(), serde_json::to_value(&output)?))
}

const COMPARED: [&str; 7] = [
    "ok",
    "verdict",
    "reason_codes",
    "violations",
    "matched_rule",
    "intent_digest",
    "policy_digest",
];

#[test]
fn every_sample_row_matches_gait_exactly() -> Result<()> {
    let sample_path = shared().join("conformance/policy_test_sample.json");
    let sample: Value = serde_json::from_slice(&std::fs::read(&sample_path)?)?;
    let base = shared().join("fixtures/gait");
    let rows = sample["rows"].as_array().context("rows array")?;
    assert_eq!(rows.len(), 64, "the sample has 64 rows");

    let mut report = String::new();
    let mut failures = 0;
    for (index, row) in rows.iter().enumerate() {
        let policy = row["policy"].as_str().context("policy path")?;
        let intent = row["intent"].as_str().context("intent path")?;
        let expected_exit = row["exit_code"].as_i64().context("exit_code")?;
        let expected = &row["output"];
        let (exit, actual) = policy_test(&base.join(policy), &base.join(intent))?;

        let mut diffs = Vec::new();
        if i64::from(exit) != expected_exit {
            diffs.push(format!("exit_code: expected {expected_exit}, got {exit}"));
        }
        if expected_exit == 6 {
            if actual["ok"] != Value::Bool(false) {
                diffs.push("expected an error, got a result".to_owned());
            }
        } else {
            for key in COMPARED {
                if expected.get(key) != actual.get(key) {
                    diffs.push(format!(
                        "{key}: expected {}, got {}",
                        expected.get(key).unwrap_or(&Value::Null),
                        actual.get(key).unwrap_or(&Value::Null)
                    ));
                }
            }
        }
        if !diffs.is_empty() {
            failures += 1;
            writeln!(report, "row {index}: {policy} + {intent}")?;
            for d in diffs {
                writeln!(report, "    {d}")?;
            }
        }
    }
    assert!(
        failures == 0,
        "{failures} of {} rows differ from Gait:\n{report}",
        rows.len()
    );
    Ok(())
}
