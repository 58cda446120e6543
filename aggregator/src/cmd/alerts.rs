//! `gait-aggregator alerts`: the agent identity alerts of one org/project/environment through the API (a second
//! live instance of one certificate refused, a new instance behind what the aggregator holds), newest first.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use gait_aggregator::config::Config;

use super::analysis::EnvArgs;
use super::call;
use super::table::{Align, Table};

#[derive(Args, Debug)]
pub struct AlertsArgs {
    /// The environment whose alerts to list.
    #[command(flatten)]
    pub target: EnvArgs,
    /// Most alerts to list, 1..=1000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn alerts(args: AlertsArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.target.api.resolve(config)?;
    let url = args
        .target
        .url(&api.server, "alerts", &[format!("limit={}", args.limit)]);
    reqwest::Url::parse(&url).with_context(|| format!("--server `{}` is not a URL", api.server))?;
    let (status, answer) = call(&api, reqwest::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(super::refused(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("TIME (UTC)", Align::Left),
        ("AGENT", Align::Left),
        ("KIND", Align::Left),
        ("INSTANCE", Align::Left),
        ("OTHER INSTANCE", Align::Left),
        ("ADDRESS", Align::Left),
        ("OTHER ADDRESS", Align::Left),
    ]);
    for a in answer["alerts"].as_array().into_iter().flatten() {
        let time = a["created_unix_ms"]
            .as_i64()
            .and_then(|ms| {
                time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
            })
            .and_then(|t| {
                t.format(time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second]"
                ))
                .ok()
            })
            .unwrap_or_default();
        let dash = |v: &serde_json::Value| match v.as_str() {
            Some("") | None => "-".to_owned(),
            Some(s) => s.to_owned(),
        };
        table.row([
            time,
            a["agent"]["agent_id"].as_str().unwrap_or("").to_owned(),
            a["kind"].as_str().unwrap_or("").to_owned(),
            dash(&a["instance_id"]),
            dash(&a["other_instance_id"]),
            dash(&a["remote_addr"]),
            dash(&a["other_remote_addr"]),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}
