//! Gait's CLI output contract (contract §6): exit codes, the JSON error envelope completed from the exit code
//! (`error_code`, `error_category`, `retryable`, `hint`, optional `migration`), the mapping from an error message
//! to an exit code, and JSON lines written exactly as Go's `encoding/json` writes a `map[string]any`: keys sorted
//! bytewise at every level, `<`, `>`, `&`, U+2028 and U+2029 escaped.

use serde_json::{Map, Value};

/// Success; also `allow`, `dry_run` and `--simulate`.
pub const EXIT_OK: u8 = 0;
/// Internal or runtime failure (I/O, lock contention).
pub const EXIT_INTERNAL_FAILURE: u8 = 1;
/// Verification failure.
pub const EXIT_VERIFY_FAILED: u8 = 2;
/// Blocked by policy (also fail-closed dependencies).
pub const EXIT_POLICY_BLOCKED: u8 = 3;
/// Approval required and not satisfied.
pub const EXIT_APPROVAL_REQUIRED: u8 = 4;
/// Deterministic regression failure.
pub const EXIT_REGRESS_FAILED: u8 = 5;
/// Invalid input or usage.
pub const EXIT_INVALID_INPUT: u8 = 6;
/// Missing dependency.
pub const EXIT_MISSING_DEPENDENCY: u8 = 7;
/// Unsafe operation blocked.
pub const EXIT_UNSAFE_OPERATION: u8 = 8;

/// Prefix of the policy parser's legacy-field error; Gait attaches a `migration` object to it.
pub const LEGACY_POLICY_PREFIX: &str = "legacy policy proposal fields are not supported [";
/// Hint Gait gives for legacy policy fields.
pub const LEGACY_POLICY_HINT: &str = "use the repo-root `.gait.yaml` contract: `schema_id`, `schema_version`, \
     `default_verdict`, optional `fail_closed`, optional `mcp_trust`, and `rules`";

/// A command failed; `message` is what the JSON `error` field and the text output say.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// Human-readable error, Gait's wording where known.
    pub message: String,
    /// Exit code of the process.
    pub exit: u8,
    /// Gait's `migration` object, for legacy policy fields.
    pub migration: Option<Value>,
}

impl CliError {
    /// An error with an explicit exit code.
    pub fn with_exit(message: impl Into<String>, exit: u8) -> CliError {
        CliError {
            message: message.into(),
            exit,
            migration: None,
        }
    }

    /// Invalid input or usage (exit 6), for errors Gait reports with a fixed exit code.
    pub fn invalid(message: impl Into<String>) -> CliError {
        CliError::with_exit(message, EXIT_INVALID_INPUT)
    }

    /// An error whose exit code Gait derives from its message ([`exit_code_for_error`]).
    pub fn classified(message: impl Into<String>, fallback: u8) -> CliError {
        let message = message.into();
        let exit = exit_code_for_error(&message, fallback);
        CliError::with_exit(message, exit)
    }
}

/// Gait's `exitCodeForError` for errors without a category: messages mentioning a lock, contention or a
/// timeout are runtime failures (exit 1), everything else gets `fallback`. Gait applies this to any message,
/// so a path containing e.g. `block` also maps to 1; this port keeps that quirk for identical exit codes.
pub fn exit_code_for_error(message: &str, fallback: u8) -> u8 {
    let lower = message.to_lowercase();
    if lower.contains("lock") || lower.contains("contention") || lower.contains("timeout") {
        EXIT_INTERNAL_FAILURE
    } else {
        fallback
    }
}

/// Default `error_code` for an exit code.
pub fn default_error_code(exit: u8) -> &'static str {
    match exit {
        EXIT_INVALID_INPUT => "invalid_input",
        EXIT_VERIFY_FAILED => "verification_failed",
        EXIT_POLICY_BLOCKED => "policy_blocked",
        EXIT_APPROVAL_REQUIRED => "approval_required",
        EXIT_MISSING_DEPENDENCY => "dependency_missing",
        EXIT_UNSAFE_OPERATION => "unsafe_operation",
        EXIT_REGRESS_FAILED => "regress_failed",
        _ => "internal_failure",
    }
}

/// Default `error_category` for an exit code.
pub fn default_error_category(exit: u8) -> &'static str {
    match exit {
        EXIT_INVALID_INPUT => "invalid_input",
        EXIT_VERIFY_FAILED => "verification_failed",
        EXIT_POLICY_BLOCKED => "policy_blocked",
        EXIT_APPROVAL_REQUIRED => "approval_required",
        EXIT_MISSING_DEPENDENCY => "dependency_missing",
        _ => "internal_failure",
    }
}

/// Default `hint` for an exit code.
pub fn default_hint(exit: u8) -> &'static str {
    match exit {
        EXIT_INVALID_INPUT => "check command usage and input schema",
        EXIT_VERIFY_FAILED => "re-run verify after checking artifact integrity",
        EXIT_POLICY_BLOCKED => "inspect reason_codes and adjust policy or intent",
        EXIT_APPROVAL_REQUIRED => "provide a valid approval token and retry",
        EXIT_MISSING_DEPENDENCY => "install or configure the missing dependency and retry",
        EXIT_UNSAFE_OPERATION => "pass explicit unsafe flags only for approved replay paths",
        _ => "retry after checking local environment and logs",
    }
}

/// Whether errors of `category` are worth retrying.
pub fn retryable(category: &str) -> bool {
    matches!(category, "network_transient" | "state_contention")
}

fn non_empty_str<'a>(object: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    object
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Complete a command's JSON object as Gait does before printing: add `correlation_id` when absent, and when
/// `error` is non-empty fill `error_code`, `error_category`, `retryable` and `hint` from the exit code (the
/// legacy-policy hint when a `migration` object is present). Fields already set are kept.
pub fn complete(
    mut object: Map<String, Value>,
    exit: u8,
    correlation_id: &str,
) -> Map<String, Value> {
    if non_empty_str(&object, "correlation_id").is_none() && !correlation_id.trim().is_empty() {
        object.insert(
            "correlation_id".into(),
            Value::String(correlation_id.trim().to_owned()),
        );
    }
    if non_empty_str(&object, "error").is_none() {
        return object;
    }
    if non_empty_str(&object, "error_code").is_none() {
        object.insert(
            "error_code".into(),
            Value::String(default_error_code(exit).into()),
        );
    }
    if non_empty_str(&object, "error_category").is_none() {
        object.insert(
            "error_category".into(),
            Value::String(default_error_category(exit).into()),
        );
    }
    if !object.contains_key("retryable") {
        let category = non_empty_str(&object, "error_category").unwrap_or_default();
        object.insert("retryable".into(), Value::Bool(retryable(category)));
    }
    if non_empty_str(&object, "hint").is_none() {
        let hint = if object.contains_key("migration") {
            LEGACY_POLICY_HINT
        } else {
            default_hint(exit)
        };
        object.insert("hint".into(), Value::String(hint.into()));
    }
    object
}

/// Serialize `value` as Go's `json.Marshal` does for decoded JSON (`map[string]any`): no whitespace, object
/// keys sorted bytewise at every level, HTML-sensitive characters and line/paragraph separators escaped.
pub fn go_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_value(out, v);
                }
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c if u32::from(c) < 0x20 => {
                let b = u32::from(c) as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden(name: &str) -> String {
        let path = format!(
            "{}/../../shared/fixtures/gait/cmd/gait/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {path}: {e}"))
            .trim_end()
            .to_owned()
    }

    fn error_object(message: &str) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("ok".into(), Value::Bool(false));
        m.insert("error".into(), Value::String(message.into()));
        m
    }

    #[test]
    fn invalid_input_envelope_matches_gait_golden_bytes() {
        let completed = complete(
            error_object("missing required --policy"),
            EXIT_INVALID_INPUT,
            "cid-golden-invalid",
        );
        assert_eq!(
            go_json(&Value::Object(completed)),
            golden("error_envelope_invalid_input.golden.json")
        );
    }

    #[test]
    fn internal_failure_envelope_matches_gait_golden_bytes() {
        let completed = complete(
            error_object("unexpected failure"),
            EXIT_INTERNAL_FAILURE,
            "cid-golden-internal",
        );
        assert_eq!(
            go_json(&Value::Object(completed)),
            golden("error_envelope_internal_failure.golden.json")
        );
    }

    #[test]
    fn success_objects_get_only_a_correlation_id() {
        let mut m = Map::new();
        m.insert("ok".into(), Value::Bool(true));
        m.insert("verdict".into(), Value::String("block".into()));
        let completed = complete(m, EXIT_POLICY_BLOCKED, "abc");
        assert_eq!(
            go_json(&Value::Object(completed)),
            r#"{"correlation_id":"abc","ok":true,"verdict":"block"}"#
        );
    }

    #[test]
    fn strings_are_escaped_like_go_encoding_json() {
        let v = Value::String("a<b>&c\u{2028}\"\\\n\u{1}\u{8}".into());
        assert_eq!(
            go_json(&v),
            r#""a\u003cb\u003e\u0026c\u2028\"\\\n\u0001\b""#
        );
    }

    #[test]
    fn nested_object_keys_are_sorted() {
        let v: Value =
            serde_json::from_str(r#"{"z":{"b":1,"a":[{"y":2,"x":1}]},"a":true}"#).unwrap();
        assert_eq!(go_json(&v), r#"{"a":true,"z":{"a":[{"x":1,"y":2}],"b":1}}"#);
    }

    #[test]
    fn lock_timeout_and_contention_messages_map_to_runtime_failure() {
        assert_eq!(
            exit_code_for_error("acquire rate limit lock: timeout", 6),
            1
        );
        assert_eq!(exit_code_for_error("parse intent json: bad", 6), 6);
        assert_eq!(exit_code_for_error("state contention", 6), 1);
    }
}
