//! `gait-agent policy test <policy.yaml> <intent.json> [--json]`: Gait's `gait policy test` (contract §9). The
//! intent is normalized and evaluated against the policy without approvals, rate limits or a trace; the output
//! is a `gait.policytest.result` line and the exit code is the verdict's (0 allow/dry_run, 3 block,
//! 4 require_approval) or 6 for unreadable or invalid input.

use std::path::{Path, PathBuf};

use clap::Args;
use gait_policy::gate::{PolicyTestOutput, run_policy_test};
use gait_policy::intent::MAX_INTENT_BYTES;
use gait_policy::policy::MAX_POLICY_BYTES;
use gait_policy::{IntentRequest, Policy, PolicyError, parse_intent, parse_policy_yaml};
use serde_json::{Map, Value};

use super::envelope::{CliError, EXIT_INVALID_INPUT, LEGACY_POLICY_PREFIX};
use super::{CommandOutput, Invocation, PRODUCER_VERSION, files};

const LONG_ABOUT: &str = "\
Evaluate one intent fixture against one policy and return a deterministic verdict with reason codes,
exactly as `gait policy test` does: the intent is normalized (trimmed, lowercased, targets inferred and
sorted) and evaluated in Gait's order, without approvals, rate limits or a signed trace.

Exit codes: 0 allow or dry_run, 3 block, 4 require_approval, 6 unreadable or invalid policy/intent.

Examples:
  gait-agent policy test policy.yaml intent.json
  gait-agent policy test policy.yaml intent.json --json
  gait-agent policy test examples/policy/endpoint/block_denied_endpoints.yaml \\
      examples/policy/endpoint/fixtures/intent_block.json --json   # exit 3, endpoint_path_denied";

/// Arguments of `policy test`.
#[derive(Debug, Args)]
#[command(about = "Evaluate one intent against one policy; exit 0 allow, 3 block, 4 require_approval, 6 bad input", long_about = LONG_ABOUT)]
pub struct PolicyTestArgs {
    /// Policy YAML (`gait.gate.policy`).
    #[arg(value_name = "POLICY_YAML")]
    pub policy: Option<PathBuf>,
    /// Intent request JSON (`gait.gate.intent_request`).
    #[arg(value_name = "INTENT_JSON")]
    pub intent: Option<PathBuf>,
    /// Unexpected extra arguments (rejected like Gait: exactly two paths).
    #[arg(hide = true, value_name = "EXTRA")]
    pub extra: Vec<PathBuf>,
    /// Print one JSON object (Gait's `gait.policytest.result` line) instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Read and parse a policy file as Gait's `LoadPolicyFile` does; legacy policies carry Gait's `migration`.
pub fn load_policy(path: &Path) -> Result<Policy, CliError> {
    let bytes = files::read_bounded(path, MAX_POLICY_BYTES)
        .map_err(|e| CliError::classified(format!("read policy: {e}"), EXIT_INVALID_INPUT))?;
    parse_policy_yaml(&bytes).map_err(|err| policy_error(&err))
}

fn policy_error(err: &PolicyError) -> CliError {
    let mut cli = CliError::classified(err.to_string(), EXIT_INVALID_INPUT);
    let fields = err.migrations();
    if !fields.is_empty() && cli.message.contains(LEGACY_POLICY_PREFIX) {
        let mut migration = Map::new();
        migration.insert("kind".into(), Value::String("policy_fields".into()));
        migration.insert(
            "deprecated_fields".into(),
            Value::Array(
                fields
                    .iter()
                    .map(|f| Value::String(f.field.clone()))
                    .collect(),
            ),
        );
        migration.insert(
            "field_replacements".into(),
            serde_json::to_value(fields).unwrap_or(Value::Null),
        );
        cli.migration = Some(Value::Object(migration));
    }
    cli
}

/// Read and parse an intent request file as Gait's `readIntentRequest` does.
pub fn load_intent(path: &Path) -> Result<IntentRequest, CliError> {
    let bytes = files::read_bounded(path, MAX_INTENT_BYTES)
        .map_err(|e| CliError::classified(format!("read intent: {e}"), EXIT_INVALID_INPUT))?;
    parse_intent(&bytes).map_err(|e| CliError::classified(e.to_string(), EXIT_INVALID_INPUT))
}

/// Run `policy test`.
pub fn run(args: &PolicyTestArgs, _invocation: &Invocation) -> CommandOutput {
    match evaluate(args) {
        Ok(output) => {
            let exit = u8::try_from(output.exit_code()).unwrap_or(EXIT_INVALID_INPUT);
            let json = match serde_json::to_value(&output) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            };
            CommandOutput {
                json,
                text: vec![output.summary.clone()],
                exit,
            }
        }
        Err(err) => CommandOutput::error("policy test", &err),
    }
}

fn evaluate(args: &PolicyTestArgs) -> Result<PolicyTestOutput, CliError> {
    let (Some(policy_path), Some(intent_path), true) =
        (&args.policy, &args.intent, args.extra.is_empty())
    else {
        return Err(CliError::invalid(
            "expected <policy.yaml> <intent_fixture.json>",
        ));
    };
    let policy = load_policy(policy_path)?;
    let intent = load_intent(intent_path)?;
    let result = run_policy_test(&policy, &intent, PRODUCER_VERSION)
        .map_err(|e| CliError::classified(e.to_string(), EXIT_INVALID_INPUT))?;
    Ok(PolicyTestOutput::from_result(&result))
}
