//! `gait-aggregator migrate`: create or upgrade the database schema and exit.

use std::process::ExitCode;

use anyhow::Context as _;
use gait_aggregator::config::Config;

/// Connects to the configured database (which applies the migrations) and reports its backend.
pub async fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    gait_aggregator::secrets::create_private_dir(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store = gait_store::Store::connect(&config.effective_database_url()).await?;
    gait_runtime::outln!("schema up to date ({})", store.backend());
    Ok(ExitCode::SUCCESS)
}
