//! `gait-aggregator agents`: list an org's agents through the API, following every page.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use gait_aggregator::clock::unix_ms;
use gait_aggregator::config::Config;
use gait_identity::{Env, Org, Project};

use super::table::{Align, Table};
use super::{ApiArgs, call};

#[derive(Args, Debug)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation whose agents to list.
    #[arg(long)]
    pub org: Org,
    /// Only agents of this project.
    #[arg(long)]
    pub project: Option<Project>,
    /// Only agents of this environment (with or without --project).
    #[arg(long)]
    pub env: Option<Env>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn agents(args: AgentsArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let mut query = vec![("limit", "5000".to_owned())];
    if let Some(project) = &args.project {
        query.push(("project", project.to_string()));
    }
    if let Some(env) = &args.env {
        query.push(("env", env.to_string()));
    }
    let base = format!("{}/v1/orgs/{}/agents", api.server, args.org);
    // Follow the pages until the server returns no cursor.
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut params = query.clone();
        if let Some(cursor) = &after {
            params.push(("after", cursor.clone()));
        }
        let url = reqwest::Url::parse_with_params(&base, &params)
            .with_context(|| format!("--server `{}` is not a URL", api.server))?
            .to_string();
        let (status, page) = call(&api, reqwest::Method::GET, &url, None).await?;
        if !status.is_success() {
            return Ok(super::refused(status, &page));
        }
        all.extend(page["agents"].as_array().cloned().unwrap_or_default());
        match page["next_after"].as_str() {
            Some(next) if Some(next) != after.as_deref() => after = Some(next.to_owned()),
            _ => break,
        }
    }
    let answer = serde_json::json!({ "agents": all });
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("AGENT", Align::Left),
        ("PROJECT/ENV", Align::Left),
        ("VERSION", Align::Left),
        ("ADDRESS", Align::Left),
        ("SEEN(s)", Align::Right),
        ("ACTIVE", Align::Right),
        ("RECV", Align::Right),
        ("CERT(days)", Align::Right),
        ("STATE", Align::Left),
    ]);
    let now = unix_ms();
    for a in answer["agents"].as_array().into_iter().flatten() {
        let seen = a["last_seen_unix_ms"]
            .as_i64()
            .map(|t| ((now - t) / 1000).to_string())
            .unwrap_or_default();
        let flags: Vec<&str> = ["revoked", "stale", "behind"]
            .into_iter()
            .filter(|flag| a[*flag] == true)
            .collect();
        let state = if flags.is_empty() {
            "ok".to_owned()
        } else {
            flags.join(",")
        };
        // Days left on the certificate it last connected with; `-` when not recorded (not connected since the
        // upgrade that records it, and not signed by this aggregator).
        let cert_days = a["cert_not_after_unix_ms"]
            .as_i64()
            .map_or_else(|| "-".to_owned(), |t| ((t - now) / 86_400_000).to_string());
        let epoch =
            |v: &serde_json::Value| v.as_u64().map_or_else(|| "-".to_owned(), |e| e.to_string());
        table.row([
            a["agent_id"].as_str().unwrap_or("").to_owned(),
            format!(
                "{}/{}",
                a["project"].as_str().unwrap_or(""),
                a["env"].as_str().unwrap_or("")
            ),
            a["agent_version"].as_str().unwrap_or("").to_owned(),
            a["remote_addr"].as_str().unwrap_or("").to_owned(),
            seen,
            epoch(&a["active_bundle"]["epoch"]),
            epoch(&a["received_bundle"]["epoch"]),
            cert_days,
            state,
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
