//! Regress results (`gait.regress.result`, contract §5): typed parsing tolerant of unknown fields, validation,
//! and the enterprise projection of the outcome.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::GoTime;
use crate::check::{self, Checker, DecodeError, InvalidArtifact};

/// `schema_id` of a regress result.
pub const REGRESS_RESULT_SCHEMA_ID: &str = "gait.regress.result";

/// Outcome of `gait regress run` (`regress_result.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RegressResult {
    /// `gait.regress.result`.
    #[serde(default)]
    pub schema_id: String,
    /// `1.0.0`.
    #[serde(default)]
    pub schema_version: String,
    /// First fixture run's `created_at`.
    #[serde(default)]
    pub created_at: GoTime,
    /// Producer version.
    #[serde(default)]
    pub producer_version: String,
    /// Fixture set name.
    #[serde(default)]
    pub fixture_set: String,
    /// `pass` or `fail`.
    #[serde(default)]
    pub status: String,
    /// Grader results, sorted by name.
    #[serde(default)]
    pub graders: Vec<GraderResult>,
}

/// One grader's verdict for one fixture.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GraderResult {
    /// `<fixture>/<grader>`.
    #[serde(default)]
    pub name: String,
    /// `pass` or `fail`.
    #[serde(default)]
    pub status: String,
    /// Sorted reason codes (always present, may be empty).
    #[serde(default)]
    pub reason_codes: Vec<String>,
    /// `none`, `runtime_only`, `semantic` or `missing`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub context_conformance: String,
    /// Free-form details; always include `fixture` and `run_id`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
}

impl GraderResult {
    /// The fixture part of the name (before the first `/`).
    pub fn fixture(&self) -> &str {
        self.name
            .split_once('/')
            .map_or(self.name.as_str(), |(f, _)| f)
    }

    /// The grader part of the name (after the first `/`).
    pub fn grader(&self) -> &str {
        self.name
            .split_once('/')
            .map_or(self.name.as_str(), |(_, g)| g)
    }
}

const STATUSES: &[&str] = &["pass", "fail"];

impl RegressResult {
    /// Rules of `regress_result.schema.json`.
    pub fn validate(&self) -> Result<(), InvalidArtifact> {
        let mut c = Checker::new(REGRESS_RESULT_SCHEMA_ID);
        c.header(&self.schema_id, &self.schema_version);
        c.time_set("created_at", &self.created_at);
        c.one_of("status", &self.status, STATUSES, true);
        for (i, g) in self.graders.iter().enumerate() {
            c.non_empty(&format!("graders[{i}].name"), &g.name);
            c.one_of(&format!("graders[{i}].status"), &g.status, STATUSES, true);
            c.one_of(
                &format!("graders[{i}].context_conformance"),
                &g.context_conformance,
                &["none", "runtime_only", "semantic", "missing"],
                false,
            );
        }
        c.finish()
    }

    /// Fields the enterprise consumer keeps (contract §7), plus failure counts.
    pub fn projection(&self) -> RegressProjection {
        let failed: Vec<&GraderResult> =
            self.graders.iter().filter(|g| g.status != "pass").collect();
        RegressProjection {
            regress_status: self.status.clone(),
            regress_fixture_set: self.fixture_set.clone(),
            grader_count: self.graders.len(),
            failed_graders: failed.iter().map(|g| g.name.clone()).collect(),
            top_failure_reason: failed
                .iter()
                .flat_map(|g| g.reason_codes.first())
                .next()
                .cloned()
                .unwrap_or_default(),
        }
    }
}

/// Regress outcome as an enterprise consumer indexes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegressProjection {
    /// `pass` or `fail`.
    pub regress_status: String,
    /// Fixture set name.
    pub regress_fixture_set: String,
    /// Number of grader results.
    pub grader_count: usize,
    /// Names of graders that did not pass.
    pub failed_graders: Vec<String>,
    /// First reason code of the first failed grader, empty when all pass.
    pub top_failure_reason: String,
}

/// Parse and validate `regress_result.json`; unknown fields are ignored.
pub fn parse_regress_result(bytes: &[u8]) -> Result<RegressResult, DecodeError> {
    let result = check::decode_typed::<RegressResult>(REGRESS_RESULT_SCHEMA_ID, bytes)?;
    result.validate()?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESULT: &[u8] = include_bytes!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/conformance/artifacts/regress_result.json"
    ));

    #[test]
    fn gait_regress_result_parses_and_projects() {
        let result = parse_regress_result(RESULT).unwrap();
        assert_eq!(result.graders.len(), 4);
        assert_eq!(result.graders[3].grader(), "trajectory");
        assert_eq!(result.graders[3].fixture(), "run_demo");
        let p = result.projection();
        assert_eq!(
            (p.regress_status.as_str(), p.regress_fixture_set.as_str()),
            ("pass", "default")
        );
        assert!(p.failed_graders.is_empty() && p.top_failure_reason.is_empty());
    }

    #[test]
    fn unknown_fields_do_not_change_the_projection() {
        let mut value = gait_canon::parse_json(RESULT).unwrap();
        value["enterprise_extension"] = serde_json::json!({"x": 1});
        value["graders"][0]["new_field"] = serde_json::json!(true);
        let extended = parse_regress_result(&serde_json::to_vec(&value).unwrap()).unwrap();
        assert_eq!(
            extended.projection(),
            parse_regress_result(RESULT).unwrap().projection()
        );
    }

    #[test]
    fn failed_grader_surfaces_its_first_reason() {
        let mut result = parse_regress_result(RESULT).unwrap();
        result.status = "fail".into();
        result.graders[1].status = "fail".into();
        result.graders[1].reason_codes = vec!["unexpected_exit_code".into()];
        let p = result.projection();
        assert_eq!(p.failed_graders, ["run_demo/expected_exit_code"]);
        assert_eq!(p.top_failure_reason, "unexpected_exit_code");
    }
}
