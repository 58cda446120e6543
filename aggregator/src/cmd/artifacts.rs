//! `gait-aggregator artifacts`: find the artifacts (runpacks, traces, regress results, JUnit reports) the fleet
//! recorded, by run id or by SHA-256 digest, through the API (`GET …/evidence/artifacts`), newest first.

use std::process::ExitCode;

use clap::{ArgGroup, Args};
use gait_aggregator::config::Config;

use super::records::{Scope, agent, fetch, received, short, text};
use super::table::{Align, Table};

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("by").required(true).multiple(true).args(["run_id", "digest", "kind"])))]
#[command(after_help = "Examples:
  # Everything recorded about one run (its runpack, regress results that replayed it)
  gait-aggregator artifacts --org acme --run-id run_2026_12_05_a

  # Where did this file come from? (sha256sum of the artifact)
  gait-aggregator artifacts --org acme --digest 9b1d…(64 hex) --json

  # Last week's regress results in one environment
  gait-aggregator artifacts --org acme --project web --env prod --kind regress_result --since 7d

An artifact is listed once an agent recorded it (gait-agent push, or a watched directory): the record carries
the digests and the Gait §7 projection, not the bytes. Needs evidence.read (platform_admin, policy_author,
auditor).")]
pub struct ArtifactsArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Artifacts concerning this run id.
    #[arg(long)]
    pub run_id: Option<String>,
    /// The artifact file with this SHA-256 (64 lowercase hex).
    #[arg(long)]
    pub digest: Option<String>,
    /// Only this artifact kind: runpack, trace, regress_result or junit.
    #[arg(long)]
    pub kind: Option<String>,
}

pub async fn artifacts(args: ArtifactsArgs, config: Config) -> anyhow::Result<ExitCode> {
    let mut params = Vec::new();
    for (name, value) in [
        ("run_id", &args.run_id),
        ("sha256", &args.digest),
        ("kind", &args.kind),
    ] {
        if let Some(value) = value {
            params.push((name, value.clone()));
        }
    }
    let rows = match fetch(&args.scope, config, "artifacts", params).await? {
        Ok(rows) => rows,
        Err(code) => return Ok(code),
    };
    if args.scope.json {
        gait_runtime::outln!("{}", serde_json::json!({ "artifacts": rows }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("RECEIVED", Align::Left),
        ("AGENT", Align::Left),
        ("SEQ", Align::Right),
        ("KIND", Align::Left),
        ("SHA256", Align::Left),
        ("SIZE", Align::Right),
        ("RUN IDS", Align::Left),
        ("FILE", Align::Left),
        ("SIGNATURE", Align::Left),
    ]);
    for r in &rows {
        let runs: Vec<&str> = r["run_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        table.row([
            received(r),
            agent(r),
            r["seq"].to_string(),
            text(r, "artifact_kind"),
            short(&text(r, "sha256")),
            r["size_bytes"]
                .as_u64()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            runs.join(","),
            text(r, "file_name"),
            text(r, "signature_status"),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
