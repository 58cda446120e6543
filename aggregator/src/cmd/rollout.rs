//! `gait-aggregator rollout create|list|show|health|pause|resume|promote|abort|retry|labels`: staged rollouts
//! through the API (`/v1/orgs/{org}/rollouts…`).

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use gait_aggregator::config::Config;
use gait_aggregator::rollout::plan::{self, BlastRadius, Gates, Plan, Target};
use serde_json::{Value, json};

use super::table::{Align, Table};
use super::{ApiArgs, call};

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Start a rollout of a registry version over target environments, step by step, gated by health.
    ///
    /// Example: `rollout create --org acme --candidate <digest> --target web/prod
    /// --steps observe:10%:1h,dry_run:30%:1h,enforce:30%:30m,enforce:100%`. Each step publishes the
    /// candidate at its stage to its share of agents (a stable hash of rollout and agent id, so cohorts only
    /// grow); the last step must be `enforce:100%` and pins the candidate for every agent. A gate over its
    /// threshold rolls every target back to its baseline by itself; a step without enough data pauses for
    /// you (`promote`, `resume` or `abort`).
    Create(CreateArgs),
    /// List the org's rollouts, newest first.
    List(OrgArgs),
    /// Show one rollout.
    Show(IdArgs),
    /// The current step's gates, cohort adoption, verdict differences by reason code and tool, per target,
    /// and the timeline of transitions with why each happened.
    Health(IdArgs),
    /// Stop at the current step (nothing is published or rolled back).
    Pause(ActionArgs),
    /// Continue a paused rollout at its step.
    Resume(ActionArgs),
    /// Go to the next step now, past the bake time, the gates and the blast-radius cap.
    Promote(ActionArgs),
    /// Stop, and roll every target back to its baseline.
    Abort(ActionArgs),
    /// Start a rolled-back or aborted rollout again at step 0 (same cohorts, next attempt).
    Retry(ActionArgs),
    /// Set (replace) an agent's labels, which `create --labels` selects cohorts on.
    Labels(LabelsArgs),
}

#[derive(Args, Debug)]
pub struct OrgArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub org: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The rollout id.
    pub id: String,
    #[command(flatten)]
    pub org: OrgArgs,
}

#[derive(Args, Debug)]
pub struct ActionArgs {
    /// The rollout id.
    pub id: String,
    /// Why (recorded in the timeline and the audit log).
    #[arg(long, default_value = "")]
    pub reason: String,
    #[command(flatten)]
    pub org: OrgArgs,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub org: OrgArgs,
    /// Digest of the registry version to roll out (`policy push` prints it).
    #[arg(long)]
    pub candidate: String,
    /// A target environment as PROJECT/ENV (repeat for several). Each must be pinned.
    #[arg(long = "target", required = true)]
    pub targets: Vec<String>,
    /// The steps: stage:share%[:bake], comma-separated; the last is enforce:100%.
    #[arg(long, default_value = "observe:10%:10m,dry_run:10%:10m,enforce:100%")]
    pub steps: String,
    /// Only agents with this label are in the cohorts before the last step (repeat: all must match).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The rollout id (default: generated); it salts the cohort hash.
    #[arg(long)]
    pub id: Option<String>,
    /// Highest share of decisions whose verdict the candidate changes (observe, dry_run).
    #[arg(long)]
    pub max_diff_rate: Option<f64>,
    /// Highest share of decisions the candidate newly blocks.
    #[arg(long)]
    pub max_new_block_rate: Option<f64>,
    /// Highest share of decisions the candidate could not evaluate.
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Lowest share of the cohort running the step's bundle when the bake ends.
    #[arg(long)]
    pub min_adoption: Option<f64>,
    /// Fewest decisions a staged step needs to pass (fewer: it pauses for you).
    #[arg(long)]
    pub min_samples: Option<u64>,
    /// Pause before a step that would make more agents enforce the candidate than this.
    #[arg(long)]
    pub max_agents: Option<u64>,
    /// Pause before a step that would make more projects enforce the candidate than this.
    #[arg(long)]
    pub max_projects: Option<u64>,
}

#[derive(Args, Debug)]
pub struct LabelsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub org: String,
    #[arg(long)]
    pub project: String,
    #[arg(long)]
    pub env: String,
    /// The agent id.
    pub agent: String,
    /// KEY=VALUE labels (none: remove its labels).
    pub labels: Vec<String>,
}

pub async fn run(command: RolloutCommand, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        RolloutCommand::Create(args) => create(args, config).await,
        RolloutCommand::List(args) => list(args, config).await,
        RolloutCommand::Show(args) => {
            let path = format!("/v1/orgs/{}/rollouts/{}", args.org.org, args.id);
            get_and_print(&args.org, &path, config, print_rollout).await
        }
        RolloutCommand::Health(args) => {
            let path = format!("/v1/orgs/{}/rollouts/{}/health", args.org.org, args.id);
            get_and_print(&args.org, &path, config, print_health).await
        }
        RolloutCommand::Pause(a) => act(a, "pause", config).await,
        RolloutCommand::Resume(a) => act(a, "resume", config).await,
        RolloutCommand::Promote(a) => act(a, "promote", config).await,
        RolloutCommand::Abort(a) => act(a, "abort", config).await,
        RolloutCommand::Retry(a) => act(a, "retry", config).await,
        RolloutCommand::Labels(args) => labels(args, config).await,
    }
}

fn key_values(flag: &str, pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("{flag} `{p}`: write KEY=VALUE"))
        })
        .collect()
}

async fn create(args: CreateArgs, config: Config) -> anyhow::Result<ExitCode> {
    let targets = args
        .targets
        .iter()
        .map(|t| {
            t.split_once('/')
                .map(|(p, e)| Target {
                    project: p.to_owned(),
                    env: e.to_owned(),
                })
                .ok_or_else(|| anyhow::anyhow!("--target `{t}`: write PROJECT/ENV"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let steps = plan::parse_steps(&args.steps).map_err(|e| anyhow::anyhow!("--steps: {e}"))?;
    let d = Gates::default();
    let plan = Plan {
        targets,
        labels: key_values("--label", &args.labels)?,
        steps,
        gates: Gates {
            max_diff_rate: args.max_diff_rate.unwrap_or(d.max_diff_rate),
            max_new_block_rate: args.max_new_block_rate.unwrap_or(d.max_new_block_rate),
            max_error_rate: args.max_error_rate.unwrap_or(d.max_error_rate),
            min_adoption: args.min_adoption.unwrap_or(d.min_adoption),
            min_samples: args.min_samples.unwrap_or(d.min_samples),
            adoption_timeout_seconds: d.adoption_timeout_seconds,
        },
        blast_radius: BlastRadius {
            max_agents: args.max_agents,
            max_projects: args.max_projects,
        },
    };
    if let Err(e) = plan.validate() {
        gait_runtime::errln!("{e}");
        return Ok(ExitCode::from(gait_runtime::exit::USAGE));
    }
    let api = args.org.api.resolve(config)?;
    let url = format!("{}/v1/orgs/{}/rollouts", api.server, args.org.org);
    let mut body = json!({ "candidate": args.candidate, "plan": plan });
    if let Some(id) = &args.id {
        body["id"] = id.clone().into();
    }
    let (status, answer) = call(&api, http::Method::POST, &url, Some(body)).await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    if args.org.json {
        gait_runtime::outln!("{answer}");
    } else {
        print_rollout(&answer);
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(args: OrgArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.api.resolve(config)?;
    let url = format!("{}/v1/orgs/{}/rollouts", api.server, args.org);
    let (status, answer) = call(&api, http::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("ID", Align::Left),
        ("STATE", Align::Left),
        ("STEP", Align::Right),
        ("ATTEMPT", Align::Right),
        ("CANDIDATE", Align::Left),
        ("REASON", Align::Left),
    ]);
    for r in answer["rollouts"].as_array().into_iter().flatten() {
        table.row([
            s(&r["id"]),
            s(&r["state"]),
            step_text(r),
            r["attempt"].to_string(),
            short(&r["candidate_digest"]),
            s(&r["reason"]),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

async fn get_and_print(
    args: &OrgArgs,
    path: &str,
    config: Config,
    print: fn(&Value),
) -> anyhow::Result<ExitCode> {
    let api = args.api.clone().resolve(config)?;
    let url = format!("{}{path}", api.server);
    let (status, answer) = call(&api, http::Method::GET, &url, None).await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
    } else {
        print(&answer);
    }
    Ok(ExitCode::SUCCESS)
}

async fn act(args: ActionArgs, action: &str, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.org.api.resolve(config)?;
    let url = format!(
        "{}/v1/orgs/{}/rollouts/{}/{action}",
        api.server, args.org.org, args.id
    );
    let body = json!({ "reason": args.reason });
    let (status, answer) = call(&api, http::Method::POST, &url, Some(body)).await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    if args.org.json {
        gait_runtime::outln!("{answer}");
    } else {
        print_rollout(&answer);
    }
    Ok(ExitCode::SUCCESS)
}

async fn labels(args: LabelsArgs, config: Config) -> anyhow::Result<ExitCode> {
    let labels = key_values("label", &args.labels)?;
    let api = args.api.resolve(config)?;
    let url = format!(
        "{}/v1/orgs/{}/projects/{}/envs/{}/agents/{}/labels",
        api.server, args.org, args.project, args.env, args.agent
    );
    let (status, answer) = call(
        &api,
        http::Method::PUT,
        &url,
        Some(json!({ "labels": labels })),
    )
    .await?;
    if !status.is_success() {
        return Ok(super::refused_by_status(status, &answer));
    }
    gait_runtime::outln!("{answer}");
    Ok(ExitCode::SUCCESS)
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_owned()
}

fn short(v: &Value) -> String {
    v.as_str().unwrap_or("").chars().take(12).collect()
}

fn step_text(r: &Value) -> String {
    let steps = r["plan"]["steps"].as_array().map_or(0, Vec::len);
    let i = r["step"].as_u64().unwrap_or(0);
    let step = &r["plan"]["steps"][i as usize];
    format!(
        "{}/{} {} {}%",
        i + 1,
        steps,
        step["stage"].as_str().unwrap_or(""),
        step["percent"]
    )
}

fn print_rollout(r: &Value) {
    gait_runtime::outln!(
        "rollout {} ({}): step {}, attempt {}",
        s(&r["id"]),
        s(&r["state"]),
        step_text(r),
        r["attempt"]
    );
    gait_runtime::outln!("  candidate {}", s(&r["candidate_digest"]));
    if let Some(reason) = r["reason"].as_str().filter(|x| !x.is_empty()) {
        gait_runtime::outln!("  reason: {reason}");
    }
    for t in r["targets"].as_array().into_iter().flatten() {
        gait_runtime::outln!(
            "  {}/{}: baseline {}, last bundle epoch {}",
            s(&t["project"]),
            s(&t["env"]),
            short(&t["baseline_digest"]),
            t["bundle_epoch"]
                .as_u64()
                .map_or("- (none published yet)".to_owned(), |e| e.to_string())
        );
    }
}

fn print_health(h: &Value) {
    print_rollout(&h["rollout"]);
    gait_runtime::outln!(
        "  verdict: {} {}",
        s(&h["verdict"]["verdict"]),
        s(&h["verdict"]["reason"])
    );
    let f = &h["facts"];
    gait_runtime::outln!(
        "  cohort {} agents, {} adopted; {} decisions, {} verdict differences, {} new blocks, {} candidate errors",
        f["cohort"],
        f["adopted"],
        f["stats"]["decisions"],
        f["stats"]["verdict_diffs"],
        f["stats"]["new_blocks"],
        f["stats"]["candidate_errors"]
    );
    let mut table = Table::new(&[
        ("GATE", Align::Left),
        ("VALUE", Align::Right),
        ("THRESHOLD", Align::Right),
        ("STATUS", Align::Left),
    ]);
    for g in h["gates"].as_array().into_iter().flatten() {
        table.row([
            s(&g["name"]),
            g["value"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.4}")),
            g["threshold"].to_string(),
            s(&g["status"]),
        ]);
    }
    table.print();
    for (what, key) in [
        ("by reason", "diffs_by_reason"),
        ("by tool", "diffs_by_tool"),
    ] {
        if let Some(m) = f["stats"][key].as_object().filter(|m| !m.is_empty()) {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
            gait_runtime::outln!("  differences {what}: {}", parts.join(", "));
        }
    }
    gait_runtime::outln!("  timeline:");
    for e in h["timeline"].as_array().into_iter().flatten() {
        gait_runtime::outln!(
            "    #{} {} {} -> {} (step {}, attempt {}) by {}: {}",
            e["id"],
            s(&e["kind"]),
            s(&e["from_state"]),
            s(&e["to_state"]),
            e["step"],
            e["attempt"],
            s(&e["actor"]),
            s(&e["reason"])
        );
    }
}
