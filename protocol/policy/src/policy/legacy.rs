//! Parser options (strict keys, resource budget) and the rejection of legacy top-level policy keys with
//! Gait's migration hints (`version`, `name`, `boundaries`, `defaults`, `trust_sources`, `unknown_server`).

use serde::Serialize;

use super::PolicyError;
use super::yaml::TopLevelKeys;

/// One legacy key and what replaces it (the CLI's JSON `migration` entries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LegacyField {
    /// The legacy key.
    pub field: String,
    /// Keys that replace it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replacement_fields: Vec<String>,
    /// How to migrate.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// The policy uses the legacy proposal format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(.fields))]
pub struct LegacyPolicyError {
    /// Offending keys in Gait's canonical order.
    pub fields: Vec<LegacyField>,
}

const LEGACY: [(&str, &[&str], &str); 6] = [
    (
        "version",
        &["schema_id", "schema_version"],
        "set schema_id=gait.gate.policy and schema_version=1.0.0",
    ),
    (
        "name",
        &[],
        "remove the top-level policy name; rule names remain under rules[].name when needed",
    ),
    ("boundaries", &["rules", "mcp_trust"], ""),
    ("defaults", &["default_verdict", "fail_closed"], ""),
    (
        "trust_sources",
        &["mcp_trust.snapshot"],
        "render external trust data to a local snapshot before evaluation",
    ),
    (
        "unknown_server",
        &["mcp_trust.action"],
        "enforce unknown servers through local snapshot coverage and a fail-closed action",
    ),
];

fn render(fields: &[LegacyField]) -> String {
    if fields.is_empty() {
        return "legacy policy proposal fields are not supported".to_owned();
    }
    let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
    let details: Vec<String> = fields
        .iter()
        .map(|f| {
            if f.replacement_fields.is_empty() {
                if f.note.trim().is_empty() {
                    format!("{}->remove", f.field)
                } else {
                    format!("{}->{}", f.field, f.note)
                }
            } else {
                let mut detail = format!("{}->{}", f.field, f.replacement_fields.join("|"));
                if !f.note.trim().is_empty() {
                    detail.push_str(&format!(" ({})", f.note));
                }
                detail
            }
        })
        .collect();
    format!(
        "legacy policy proposal fields are not supported [{}]: {}",
        names.join(", "),
        details.join("; ")
    )
}

/// Options for every policy parse: duplicate keys are errors (goccy strict mode), YAML 1.2 booleans only, and a
/// budget that stops alias bombs and deep or huge documents long before memory becomes a problem.
pub(crate) fn parse_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1,
            max_depth: 32,
            max_nodes: 100_000,
            max_events: 250_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_total_scalar_bytes: super::MAX_POLICY_BYTES,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 100_000,
            max_replay_stack_depth: 16,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        strict_booleans: true,
        with_snippet: false,
    }
}

/// Convert a serde-saphyr error into [`PolicyError::Yaml`], keeping its message and position.
pub(crate) fn yaml_error(err: serde_saphyr::Error) -> PolicyError {
    let (line, column) = err
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let message = err.without_snippet().to_string();
    let located = format!(" at line {line}, column {column}");
    let message = message.trim();
    PolicyError::Yaml {
        message: message
            .strip_suffix(located.as_str())
            .unwrap_or(message)
            .to_owned(),
        line,
        column,
    }
}

/// Fail with Gait's migration hint when the document's top level uses legacy keys. Documents that are not a
/// mapping (or not YAML at all) pass through to the strict parse, which reports the real problem.
pub(crate) fn reject_legacy_fields(bytes: &[u8]) -> Result<(), PolicyError> {
    let options = serde_saphyr::options! {
        budget: parse_options().budget,
        alias_limits: parse_options().alias_limits,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
        with_snippet: false,
    };
    let Ok(Some(keys)) =
        serde_saphyr::from_slice_with_options::<Option<TopLevelKeys>>(bytes, options)
    else {
        return Ok(());
    };
    let fields: Vec<LegacyField> = LEGACY
        .iter()
        .filter(|(name, _, _)| keys.keys().any(|k| k.trim() == *name))
        .map(|(name, replacements, note)| LegacyField {
            field: (*name).to_owned(),
            replacement_fields: replacements.iter().map(|r| (*r).to_owned()).collect(),
            note: (*note).to_owned(),
        })
        .collect();
    if fields.is_empty() {
        Ok(())
    } else {
        Err(LegacyPolicyError { fields }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bomb(levels: usize) -> String {
        let mut yaml = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..levels {
            let prev = level - 1;
            let items = vec![format!("*l{prev}"); 10].join(", ");
            yaml.push_str(&format!("l{level}: &l{level} [{items}]\n"));
        }
        yaml
    }

    #[test]
    fn alias_replay_budget_stops_a_billion_laughs() {
        let result =
            serde_saphyr::from_str_with_options::<serde_json::Value>(&bomb(9), parse_options());
        let err = result.expect_err("a 10^9-node expansion must hit the budget");
        let text = err.to_string();
        assert!(
            text.contains("alias") || text.contains("budget") || text.contains("limit"),
            "{text}"
        );
    }

    #[test]
    fn small_alias_use_is_still_allowed() {
        let value =
            serde_saphyr::from_str_with_options::<serde_json::Value>(&bomb(3), parse_options())
                .unwrap();
        assert_eq!(value["l2"].as_array().map(Vec::len), Some(10));
    }

    #[test]
    fn legacy_detection_survives_a_bomb_and_leaves_the_error_to_the_strict_parse() {
        assert!(reject_legacy_fields(bomb(9).as_bytes()).is_ok());
    }
}
