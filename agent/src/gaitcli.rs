//! Gait-compatible offline commands of `gait-agent`: `policy test`, `gate eval`, `trace verify` and `verify`.
//!
//! Each command takes Gait's flags, prints Gait's JSON (`--json`) or text output and exits with Gait's exit codes
//! (contract §6), so a decision this agent makes, a trace it signs and a runpack it verifies are exactly what the
//! Gait CLI would produce or accept. One module per command; [`envelope`] holds the output contract shared by all.
//!
//! Entry points: [`run_from_env`] (called first by `main`, before any runtime or logging is set up, so a
//! `policy test` process stays a few milliseconds long) and [`run`] for a [`GaitCommand`] that `main`'s own
//! parser produced (e.g. when global flags precede the subcommand).

mod audit;
mod broker;
pub mod envelope;
pub mod gate_eval;
mod keys;
pub mod policy_test;
pub mod trace_verify;
pub mod verify;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use envelope::{CliError, EXIT_INVALID_INPUT, EXIT_OK};

/// Producer version written into the artifacts this binary creates.
pub use crate::gate::PRODUCER_VERSION;
pub(crate) use crate::gate::{files, registry};

/// First arguments that select a Gait-compatible command.
const GAIT_COMMANDS: [&str; 4] = ["policy", "gate", "trace", "verify"];

/// The Gait-compatible subcommands, ready to be flattened into another clap subcommand enum.
#[derive(Debug, Subcommand)]
pub enum GaitCommand {
    /// Gait policy tools: test one intent against one policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Gait gate: evaluate an intent, enforce approvals, sign a trace.
    #[command(subcommand)]
    Gate(GateCommand),
    /// Gait traces: verify a signed gate trace record.
    #[command(subcommand)]
    Trace(TraceCommand),
    // `about` and `long_about` come from the args struct (a doc comment here would replace them).
    Verify(verify::VerifyArgs),
}

/// `gait-agent policy …`.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    // Help text: see `PolicyTestArgs`.
    Test(policy_test::PolicyTestArgs),
}

/// `gait-agent gate …`.
#[derive(Debug, Subcommand)]
pub enum GateCommand {
    // Help text: see `GateEvalArgs`.
    Eval(Box<gate_eval::GateEvalArgs>),
}

/// `gait-agent trace …`.
#[derive(Debug, Subcommand)]
pub enum TraceCommand {
    // Help text: see `TraceVerifyArgs`.
    Verify(trace_verify::TraceVerifyArgs),
}

/// Stand-alone parser used by [`run_from_env`]; accepts (and ignores) `main`'s global logging flags.
#[derive(Debug, Parser)]
#[command(name = "gait-agent", version, about = "Gait edge agent")]
struct GaitCli {
    /// Accepted for compatibility with `gait-agent`'s global flags; Gait commands log nothing.
    #[arg(long, global = true, hide = true)]
    log_format: Option<String>,
    /// Accepted for compatibility with `gait-agent`'s global flags; Gait commands log nothing.
    #[arg(long, global = true, hide = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: GaitCommand,
}

/// What a command produced: the JSON object (before the envelope is completed), the text lines, the exit code.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutput {
    /// The `--json` object; [`envelope::complete`] adds `correlation_id` and the error fields.
    pub json: Map<String, Value>,
    /// The lines printed without `--json`.
    pub text: Vec<String>,
    /// The process exit code.
    pub exit: u8,
}

impl CommandOutput {
    /// The output of a command that failed before producing a result: `{"ok":false,"error":…}` and
    /// `<label> error: …`.
    pub fn error(label: &str, err: &CliError) -> CommandOutput {
        let mut json = Map::new();
        json.insert("ok".into(), Value::Bool(false));
        json.insert("error".into(), Value::String(err.message.clone()));
        if let Some(migration) = &err.migration {
            json.insert("migration".into(), migration.clone());
        }
        CommandOutput {
            json,
            text: vec![format!("{label} error: {}", err.message)],
            exit: err.exit,
        }
    }
}

/// Facts about this process that every command's output carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Gait's correlation id of the command line (see [`correlation_id`]).
    pub correlation_id: String,
}

impl Invocation {
    /// The invocation of the running process.
    pub fn from_env() -> Invocation {
        let args: Vec<String> = std::env::args_os()
            .skip(1)
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        Invocation {
            correlation_id: correlation_id(&args),
        }
    }
}

/// Gait's correlation id: the first 12 bytes (24 hex) of SHA-256 over the trimmed arguments (without the program
/// name) joined by the unit separator 0x1F; 24 zeros when there are no arguments.
pub fn correlation_id(args: &[String]) -> String {
    if args.is_empty() {
        return "0".repeat(24);
    }
    let joined = args
        .iter()
        .map(|a| a.trim())
        .collect::<Vec<_>>()
        .join("\u{1f}");
    hex::encode(&gait_canon::sha256(joined.as_bytes())[..12])
}

/// Run a Gait-compatible command when the process arguments name one (`policy`, `gate`, `trace`, `verify`);
/// `None` otherwise, so `main` goes on with its own parser. Usage errors exit 6 like Gait (with the JSON
/// envelope when `--json` is among the arguments); `--help` exits 0.
pub fn run_from_env() -> Option<ExitCode> {
    let args: Vec<OsString> = std::env::args_os().collect();
    let first = args.get(1)?.to_str()?;
    if !GAIT_COMMANDS.contains(&first) {
        return None;
    }
    Some(match GaitCli::try_parse_from(&args) {
        Ok(cli) => run(cli.command),
        Err(err) => usage_error(&err, &args),
    })
}

/// Run a parsed Gait-compatible command and print its output.
pub fn run(command: GaitCommand) -> ExitCode {
    let invocation = Invocation::from_env();
    let (output, json) = match &command {
        GaitCommand::Policy(PolicyCommand::Test(args)) => {
            (policy_test::run(args, &invocation), args.json)
        }
        GaitCommand::Gate(GateCommand::Eval(args)) => {
            (gate_eval::run(args, &invocation), args.json)
        }
        GaitCommand::Trace(TraceCommand::Verify(args)) => {
            (trace_verify::run(args, &invocation), args.json)
        }
        GaitCommand::Verify(args) => (verify::run(args, &invocation), args.json),
    };
    print_output(&output, json, &invocation);
    ExitCode::from(output.exit)
}

/// Print `output` as one JSON line (envelope completed) or as its text lines.
fn print_output(output: &CommandOutput, json: bool, invocation: &Invocation) {
    let mut stdout = std::io::stdout().lock();
    // A closed stdout (e.g. `| head`) must not turn a decision into a panic; the exit code still tells.
    let _ = if json {
        let completed =
            envelope::complete(output.json.clone(), output.exit, &invocation.correlation_id);
        writeln!(stdout, "{}", envelope::go_json(&Value::Object(completed)))
    } else {
        output
            .text
            .iter()
            .try_for_each(|line| writeln!(stdout, "{line}"))
    };
    let _ = stdout.flush();
}

/// Map a clap error to Gait's behaviour: help and version print and exit 0, a missing subcommand prints help
/// and exits 6, anything else is invalid input (exit 6, JSON envelope with `--json`).
fn usage_error(err: &clap::Error, args: &[OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            ExitCode::from(EXIT_OK)
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            ExitCode::from(EXIT_INVALID_INPUT)
        }
        kind => {
            let wants_json = args.iter().any(|a| a == "--json" || a == "-json");
            if wants_json {
                let message = usage_message(err, kind);
                let output = CommandOutput::error("usage", &CliError::invalid(message));
                print_output(&output, true, &Invocation::from_env());
            } else {
                let _ = err.print();
            }
            ExitCode::from(EXIT_INVALID_INPUT)
        }
    }
}

/// A one-line message for a clap error, worded like Go's `flag` package for unknown flags.
fn usage_message(err: &clap::Error, kind: clap::error::ErrorKind) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if kind == ErrorKind::UnknownArgument
        && let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg)
    {
        return format!("flag provided but not defined: {arg}");
    }
    let rendered = err.render().to_string();
    rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_id_hashes_trimmed_arguments_joined_by_unit_separator() {
        let args = vec![" verify ".to_owned(), "run_demo".to_owned()];
        let expected = hex::encode(&gait_canon::sha256(b"verify\x1frun_demo")[..12]);
        assert_eq!(correlation_id(&args), expected);
        assert_eq!(correlation_id(&[]), "000000000000000000000000");
    }

    #[test]
    fn unknown_flag_is_reported_like_go_flag_package() {
        let err = GaitCli::try_parse_from(["gait-agent", "verify", "x", "--bogus"])
            .expect_err("unknown flag must be rejected");
        let message = usage_message(&err, err.kind());
        assert_eq!(message, "flag provided but not defined: --bogus");
    }
}
