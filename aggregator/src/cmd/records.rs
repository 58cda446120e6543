//! `gait-aggregator records`: look up indexed decisions (and artifact records) of an org or one environment
//! through the API (`GET …/evidence/records`), newest first, following the pages up to `--limit`. The paging,
//! time flags and scope shared with `gait-aggregator artifacts` live here.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use gait_aggregator::config::Config;
use gait_identity::{AgentId, Env, Org, Project};
use serde_json::Value;

use super::table::{Align, Table};
use super::{ApiArgs, call};

/// Where to look: an org, or a project/environment of it.
#[derive(Args, Debug, Clone)]
pub struct Scope {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Data directory whose admin token (and CA) to use [key: data_dir, env: GAIT_DATA_DIR].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Organisation to look in.
    #[arg(long)]
    pub org: Org,
    /// Only this project of the org.
    #[arg(long)]
    pub project: Option<Project>,
    /// Only this environment. With --project, the environment's own route is used: what an operator bound to
    /// that one environment may read.
    #[arg(long)]
    pub env: Option<Env>,
    /// Only records of this agent.
    #[arg(long)]
    pub agent: Option<AgentId>,
    /// Received at or after: RFC 3339 (2026-12-05T10:00:00Z), unix milliseconds, or a duration ago (30m, 2h,
    /// 7d).
    #[arg(long)]
    pub since: Option<String>,
    /// Received before: same forms as --since.
    #[arg(long)]
    pub until: Option<String>,
    /// Most rows to print (the pages are followed until then), 1..=100000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  # What did policy <digest> block in the last day, across the org?
  gait-aggregator records --org acme --policy-digest 3f5c…(64 hex) --verdict block --since 24h

  # Decisions a staged candidate would have changed, in one environment (works for an operator bound to it)
  gait-aggregator records --org acme --project web --env prod --stage dry_run

  # One agent's decisions in a time window, as JSON
  gait-aggregator records --org acme --agent agent-7 --since 2026-12-05T10:00:00Z --until 2026-12-05T11:00:00Z --json

Only records whose payload the aggregator could read are indexed (decisions and artifact records); the full
record stream of an agent is `GET …/agents/{agent_id}/records`. Needs evidence.read (platform_admin,
policy_author, auditor).")]
pub struct RecordsArgs {
    #[command(flatten)]
    pub scope: Scope,
    /// Only this enforced verdict: allow, block, require_approval or dry_run.
    #[arg(long)]
    pub verdict: Option<String>,
    /// Only decisions made at this stage: enforce, observe or dry_run.
    #[arg(long)]
    pub stage: Option<String>,
    /// Only decisions of this Gait policy digest (64 hex).
    #[arg(long)]
    pub policy_digest: Option<String>,
    /// Only this record kind: gate.decision, artifact.runpack, artifact.trace, artifact.regress_result or
    /// artifact.junit.
    #[arg(long)]
    pub kind: Option<String>,
}

pub async fn records(args: RecordsArgs, config: Config) -> anyhow::Result<ExitCode> {
    let mut params = Vec::new();
    for (name, value) in [
        ("verdict", &args.verdict),
        ("stage", &args.stage),
        ("policy_digest", &args.policy_digest),
        ("kind", &args.kind),
    ] {
        if let Some(value) = value {
            params.push((name, value.clone()));
        }
    }
    let rows = match fetch(&args.scope, config, "records", params).await? {
        Ok(rows) => rows,
        Err(code) => return Ok(code),
    };
    if args.scope.json {
        gait_runtime::outln!("{}", serde_json::json!({ "records": rows }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("RECEIVED", Align::Left),
        ("AGENT", Align::Left),
        ("SEQ", Align::Right),
        ("KIND", Align::Left),
        ("VERDICT", Align::Left),
        ("STAGE", Align::Left),
        ("TOOL", Align::Left),
        ("POLICY", Align::Left),
    ]);
    for r in &rows {
        table.row([
            received(r),
            agent(r),
            r["seq"].to_string(),
            text(r, "kind"),
            text(r, "verdict"),
            text(r, "stage"),
            text(r, "tool_name"),
            short(&text(r, "policy_digest")),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// Up to `scope.limit` rows of `…/evidence/{listing}` under `params`, following `next_cursor`; `Err` is the
/// exit code after the API's refusal was printed.
pub(super) async fn fetch(
    scope: &Scope,
    mut config: Config,
    listing: &str,
    mut params: Vec<(&'static str, String)>,
) -> anyhow::Result<Result<Vec<Value>, ExitCode>> {
    if let Some(dir) = &scope.data_dir {
        config.data_dir = dir.clone();
    }
    let api = scope.api.resolve(config)?;
    let base = match (&scope.project, &scope.env) {
        (Some(project), Some(env)) => format!(
            "{}/v1/orgs/{}/projects/{project}/envs/{env}/evidence/{listing}",
            api.server, scope.org
        ),
        (project, env) => {
            if let Some(project) = project {
                params.push(("project", project.to_string()));
            }
            if let Some(env) = env {
                params.push(("env", env.to_string()));
            }
            format!("{}/v1/orgs/{}/evidence/{listing}", api.server, scope.org)
        }
    };
    if let Some(agent) = &scope.agent {
        params.push(("agent", agent.to_string()));
    }
    let now = gait_aggregator::clock::unix_ms();
    if let Some(since) = &scope.since {
        params.push(("from", time_flag("--since", since, now)?.to_string()));
    }
    if let Some(until) = &scope.until {
        params.push(("to", time_flag("--until", until, now)?.to_string()));
    }
    let mut rows: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let wanted = scope.limit as usize;
    while rows.len() < wanted {
        let mut page_params = params.clone();
        page_params.push(("limit", (wanted - rows.len()).min(1000).to_string()));
        if let Some(c) = &cursor {
            page_params.push(("cursor", c.clone()));
        }
        let url = reqwest::Url::parse_with_params(&base, &page_params)
            .with_context(|| format!("--server `{}` is not a URL", api.server))?
            .to_string();
        let (status, page) = call(&api, reqwest::Method::GET, &url, None).await?;
        if !status.is_success() {
            return Ok(Err(super::refused(status, &page)));
        }
        rows.extend(page["records"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) if Some(next) != cursor.as_deref() => cursor = Some(next.to_owned()),
            _ => break,
        }
    }
    Ok(Ok(rows))
}

/// `--since`/`--until` as unix milliseconds: RFC 3339, unix milliseconds, or a duration before `now_ms`.
fn time_flag(flag: &str, value: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Ok(ms) = value.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
    {
        return i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
            .with_context(|| format!("{flag} {value}: out of range"));
    }
    let ago = humantime::parse_duration(value).with_context(|| {
        format!(
            "{flag} {value:?}: give an RFC 3339 time (2026-12-05T10:00:00Z), unix milliseconds, or a duration \
             ago such as 30m, 2h or 7d"
        )
    })?;
    let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
    Ok(now_ms.saturating_sub(ago))
}

pub(super) fn text(row: &Value, field: &str) -> String {
    row[field].as_str().unwrap_or_default().to_owned()
}

/// `project/env/agent_id` of a row.
pub(super) fn agent(row: &Value) -> String {
    format!(
        "{}/{}/{}",
        text(row, "project"),
        text(row, "env"),
        text(row, "agent_id")
    )
}

/// When the aggregator received the row's record, RFC 3339 (UTC).
pub(super) fn received(row: &Value) -> String {
    let ms = row["received_unix_ms"].as_i64().unwrap_or_default();
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// The first 12 characters of a digest (the table is for eyes; `--json` has it whole).
pub(super) fn short(digest: &str) -> String {
    digest.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_flags_take_rfc3339_millis_and_durations_ago() {
        let now = 1_796_464_800_000;
        assert_eq!(
            time_flag("--since", "2026-12-05T10:00:00Z", now).ok(),
            Some(now)
        );
        assert_eq!(time_flag("--since", "12345", now).ok(), Some(12_345));
        assert_eq!(time_flag("--since", "2h", now).ok(), Some(now - 7_200_000));
        let err = time_flag("--until", "soon", now).expect_err("refused");
        assert!(format!("{err:#}").contains("--until"), "{err:#}");
    }
}
