//! File modes after a real start: the aggregator's data directory is 0700 and its SQLite database with its
//! `-wal` and `-shm` files 0600; the agent's data directory 0700 and its redb file (every intent's arguments)
//! 0600. A directory or file an older build left open (0755/0644) is narrowed at the next start.
#![allow(clippy::disallowed_methods)] // tests spawn freely and read the clock
#![cfg(unix)]

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, ensure};
use gait_testkit::{AgentOptions, AggregatorOptions, Tenant, spawn_agent, spawn_aggregator};

fn mode(path: &Path) -> Result<u32> {
    Ok(fs::metadata(path)
        .with_context(|| format!("{} should exist", path.display()))?
        .permissions()
        .mode()
        & 0o777)
}

fn ensure_mode(path: &Path, want: u32) -> Result<()> {
    let got = mode(path)?;
    ensure!(
        got == want,
        "{} has mode {got:o}, want {want:o}",
        path.display()
    );
    Ok(())
}

fn sqlite_files(data_dir: &Path) -> [PathBuf; 3] {
    ["aggregator.db", "aggregator.db-wal", "aggregator.db-shm"].map(|f| data_dir.join(f))
}

fn open_up(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

#[tokio::test]
async fn data_directories_are_0700_and_databases_0600_after_a_real_start_and_restart() -> Result<()>
{
    let aggregator = spawn_aggregator(AggregatorOptions::default()).await?;
    let tenant: Tenant = "acme/web/prod".parse()?;
    let agent = spawn_agent(&aggregator, &tenant, "a1", AgentOptions::default()).await?;
    // A publish writes to the database while it is open, so the WAL and its index exist.
    aggregator
        .publish(
            &tenant,
            &gait_testkit::Publish::policy(
                "base.yaml",
                "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\n",
            ),
        )
        .await?;

    let agg_dir = aggregator.data_dir().to_path_buf();
    ensure_mode(&agg_dir, 0o700)?;
    for file in sqlite_files(&agg_dir) {
        ensure_mode(&file, 0o600)?;
    }
    let agent_dir = agent.data_dir().to_path_buf();
    let redb = agent_dir.join("agent.redb");
    ensure_mode(&agent_dir, 0o700)?;
    ensure_mode(&redb, 0o600)?;

    // As an older build left them: open directories and files, narrowed again by the next start.
    let stopped_agent = agent.stop().await?;
    let stopped_aggregator = aggregator.stop().await?;
    open_up(&agg_dir, 0o755)?;
    for file in sqlite_files(&agg_dir) {
        if file.exists() {
            open_up(&file, 0o644)?;
        }
    }
    open_up(&agent_dir, 0o755)?;
    open_up(&redb, 0o644)?;

    let aggregator = stopped_aggregator.start().await?;
    let agent = stopped_agent.start().await?;
    ensure_mode(&agg_dir, 0o700)?;
    for file in sqlite_files(&agg_dir) {
        if file.exists() {
            ensure_mode(&file, 0o600)?;
        }
    }
    ensure_mode(&sqlite_files(&agg_dir)[0], 0o600)?;
    ensure_mode(&agent_dir, 0o700)?;
    ensure_mode(&redb, 0o600)?;
    agent.stop().await?;
    aggregator.stop().await?;
    Ok(())
}
