//! `gait-aggregator config check`: validate the configuration and print the effective values.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use gait_aggregator::config::Config;

/// Flags of `config check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Print the effective configuration as JSON instead of YAML.
    #[arg(long)]
    pub json: bool,
}

/// Loads the file (if any) and the `GAIT_*` environment, validates, and prints the result with the database
/// password redacted. An unknown key or a bad value is an error naming it (exit 1).
pub fn check(file: Option<&Path>, args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(file).with_context(|| match file {
        Some(path) => format!("configuration {} is not valid", path.display()),
        None => "configuration (defaults + GAIT_* environment) is not valid".to_owned(),
    })?;
    let shown = config.redacted();
    if args.json {
        gait_runtime::outln!("{}", serde_json::to_string_pretty(&shown)?);
    } else {
        match file {
            Some(path) => gait_runtime::outln!("# effective configuration from {}", path.display()),
            None => gait_runtime::outln!("# effective configuration (no file: embedded defaults)"),
        };
        gait_runtime::outln!(
            "{}",
            serde_saphyr::to_string(&shown)?.trim_end_matches('\n')
        );
    }
    Ok(ExitCode::SUCCESS)
}
