//! `gait-aggregator families`, `family`, `posture` and `change-gate`: fleet analytics through the HTTP API.
//! Tables by default, the server's JSON with `--json`, CSV with `--csv` (families and posture). `change-gate`
//! exits 0 when the gate passes and 1 when it fails, so a deployment pipeline can run it as its gate step; 65
//! when the request is refused.

use std::process::ExitCode;

use clap::Args;
use gait_aggregator::config::Config;
use gait_identity::{Env, Org, Project};
use serde_json::Value;

use super::table::{Align, Table};
use super::{ApiArgs, call, call_raw, refused_by_status};

/// Which part of the org to read.
#[derive(Args, Debug)]
pub struct ScopeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation.
    #[arg(long)]
    pub org: Org,
    /// Read only this project (an operator bound to one project must name it).
    #[arg(long)]
    pub project: Option<Project>,
    /// Read only this environment of --project.
    #[arg(long, requires = "project")]
    pub env: Option<Env>,
}

/// One environment of a project (the commands that judge a single environment).
#[derive(Args, Debug)]
pub struct EnvArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Organisation.
    #[arg(long)]
    pub org: Org,
    /// Project.
    #[arg(long)]
    pub project: Project,
    /// Environment of --project.
    #[arg(long)]
    pub env: Env,
}

impl EnvArgs {
    /// The URL of `leaf` under the environment on `server`, with `query`.
    pub(super) fn url(&self, server: &str, leaf: &str, query: &[String]) -> String {
        let path = format!("projects/{}/envs/{}/{leaf}", self.project, self.env);
        url(server, &self.org, &path, query)
    }
}

impl ScopeArgs {
    fn query(&self) -> Vec<String> {
        let mut q = Vec::new();
        if let Some(p) = &self.project {
            q.push(format!("project={p}"));
        }
        if let Some(e) = &self.env {
            q.push(format!("env={e}"));
        }
        q
    }
}

/// `families`.
#[derive(Args, Debug)]
#[command(
    after_help = "Examples:\n  gait-aggregator families --org acme\n  gait-aggregator families \
                  --org acme --project web --env prod --limit 10 --json\n  gait-aggregator families --org acme \
                  --csv > families.csv\n\nA family groups the same incident from any agent: the same tool, \
                  verdict, reason codes, rule, policy lineage and endpoint class. SCORE = privilege (0-100) + blast \
                  radius (0-50) + recurrence (0-20): volume alone cannot outrank a destructive block in \
                  production."
)]
pub struct FamiliesArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Families to list, highest priority first (1-1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print the server's JSON answer.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV (one row per family, with its evidence digests).
    #[arg(long)]
    pub csv: bool,
}

/// `family`.
#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  gait-aggregator family --org acme gfam1-0123456789abcdef0123456789abcdef"
)]
pub struct FamilyArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// The family id (64 hex) or dedup key (gfam1-…).
    pub family: String,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `drift`.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 when a cause was found, 1 when the difference is unattributed, 65 when the \
                  request is refused.\n\nExamples:\n  gait-aggregator drift --org acme --project web --env prod \
                  --run run_nightly\n  gait-aggregator drift --org acme --project web --env prod --run run_b \
                  --baseline run_a --json"
)]
pub struct DriftArgs {
    #[command(flatten)]
    pub target: EnvArgs,
    /// The run whose newest runpack in the environment is explained.
    #[arg(long)]
    pub run: String,
    /// The run to compare it with (default: the run's own previous runpack there).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `family-merge`.
#[derive(Args, Debug)]
#[command(
    after_help = "Example:\n  gait-aggregator family-merge --org acme gfam1-0123… --into gfam1-4567… \
                  --reason \"same outage, two tools\"\n\nUndo it with `gait-aggregator family-split`."
)]
pub struct FamilyMergeArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub org: Org,
    /// The family to merge (id or dedup key).
    pub family: String,
    /// The family it reads as part of from now on (id or dedup key).
    #[arg(long)]
    pub into: String,
    /// Why they are one incident (kept in the audit log).
    #[arg(long)]
    pub reason: String,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `family-split`.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  gait-aggregator family-split --org acme gfam1-0123…")]
pub struct FamilySplitArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub org: Org,
    /// The merged family to read as its own again (id or dedup key).
    pub family: String,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `verdict-shifts`.
#[derive(Args, Debug)]
#[command(
    after_help = "A day shifts when some verdict's share of a tool's decisions moved by 200‰ or more against the \
                  days before it (up to 7, back to the last shift), each side holding 20 decisions or more. The \
                  cause is what else changed that day: a policy digest that decided none of the tool's calls \
                  before (policy_change), the share of high-risk or destructive calls moving as far \
                  (tool_change), an enforcement stage new that day (runtime_change) — or unattributed.\n\n\
                  Examples:\n  gait-aggregator verdict-shifts --org acme --project web --env prod\n  \
                  gait-aggregator verdict-shifts --org acme --project web --env prod --tool delete_user --days 90 \
                  --json"
)]
pub struct ShiftsArgs {
    #[command(flatten)]
    pub target: EnvArgs,
    /// Days back from today, UTC, in which a shift's first day falls (1-90).
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Only this tool.
    #[arg(long)]
    pub tool: Option<String>,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `posture`.
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  gait-aggregator posture --org acme --project web --days 30")]
pub struct PostureArgs {
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Days back from today, UTC (1-90).
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Print the server's JSON answer.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV (decisions per day and verdict, then per tool and verdict).
    #[arg(long)]
    pub csv: bool,
}

/// `change-gate`.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 when the gate passes, 1 when it fails (every reason is printed), 65 \
                  when the request is refused.\n\nExample (a pipeline step):\n  gait-aggregator change-gate \
                  --org acme --project web --env prod || exit 1"
)]
pub struct ChangeGateArgs {
    #[command(flatten)]
    pub target: EnvArgs,
    /// Lowest acceptable regress pass rate over the last 7 days, per-mille (default on the server: 950).
    #[arg(long)]
    pub min_regress_pass_per_mille: Option<u32>,
    /// Fail when the environment had no regress run in the window.
    #[arg(long)]
    pub require_regress_runs: bool,
    /// Let the gate pass while a rollout is in flight on the environment.
    #[arg(long)]
    pub allow_during_rollout: bool,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

fn url(server: &str, org: &Org, path: &str, query: &[String]) -> String {
    format!(
        "{server}/v1/orgs/{org}/{path}{}{}",
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    )
}

/// Runs `families`.
pub async fn families(args: FamiliesArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.scope.api.resolve(config)?;
    let mut query = args.scope.query();
    query.push(format!("limit={}", args.limit));
    if args.csv {
        query.push("format=csv".into());
        let u = url(&api.server, &args.scope.org, "analysis/families", &query);
        return raw(&api, &u).await;
    }
    let u = url(&api.server, &args.scope.org, "analysis/families", &query);
    let (status, answer) = call(&api, reqwest::Method::GET, &u, None).await?;
    if !status.is_success() {
        return Ok(refused_by_status(status, &answer));
    }
    if args.json {
        gait_runtime::outln!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&[
        ("SCORE", Align::Right),
        ("PRIV", Align::Right),
        ("BLAST", Align::Right),
        ("RECUR", Align::Right),
        ("KIND", Align::Left),
        ("TOOL", Align::Left),
        ("VERDICT", Align::Left),
        ("COUNT", Align::Right),
        ("AGENTS", Align::Right),
        ("ENVS", Align::Right),
        ("DEDUP KEY", Align::Left),
    ]);
    for f in answer["families"].as_array().into_iter().flatten() {
        let p = &f["priority"];
        table.row([
            p["score"].to_string(),
            p["privilege"].to_string(),
            p["blast_radius"].to_string(),
            p["recurrence"].to_string(),
            f["kind"].as_str().unwrap_or("").to_owned(),
            f["tool"].as_str().unwrap_or("").to_owned(),
            f["verdict"].as_str().unwrap_or("").to_owned(),
            f["occurrences"].to_string(),
            f["agents"].to_string(),
            f["environments"].as_array().map_or(0, Vec::len).to_string(),
            f["dedup_key"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    table.print();
    gait_runtime::outln!(
        "{} of {} families in {}",
        answer["families"].as_array().map_or(0, Vec::len),
        answer["total"],
        answer["scope"].as_str().unwrap_or("?")
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs `family`.
pub async fn family(args: FamilyArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.scope.api.resolve(config)?;
    let path = format!("analysis/families/{}", args.family);
    let u = url(&api.server, &args.scope.org, &path, &args.scope.query());
    let (status, f) = call(&api, reqwest::Method::GET, &u, None).await?;
    if !status.is_success() {
        return Ok(refused_by_status(status, &f));
    }
    if args.json {
        gait_runtime::outln!("{f}");
        return Ok(ExitCode::SUCCESS);
    }
    let p = &f["priority"];
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    gait_runtime::outln!(
        "family        {}\ndedup key     {}\nkind          {}\ntool          {}\nverdict       {}\n\
         score         {} (privilege {}, blast radius {}, recurrence {})\noccurrences   {} on {} agents\n\
         environments  {}\nrisk          {}{}{}\nfingerprint   v{} {}\nevidence      {}",
        f["family"].as_str().unwrap_or("?"),
        f["dedup_key"].as_str().unwrap_or("?"),
        f["kind"].as_str().unwrap_or("?"),
        f["tool"].as_str().unwrap_or("?"),
        f["verdict"].as_str().unwrap_or("?"),
        p["score"],
        p["privilege"],
        p["blast_radius"],
        p["recurrence"],
        f["occurrences"],
        f["agents"],
        list(&f["environments"]),
        f["risk_class"].as_str().unwrap_or("?"),
        if f["destructive"].as_bool() == Some(true) {
            ", destructive"
        } else {
            ""
        },
        if f["egress_or_taint"].as_bool() == Some(true) {
            ", egress/taint"
        } else {
            ""
        },
        f["fingerprint_version"],
        f["inputs"],
        list(&f["representatives"]),
    );
    for s in f["suggestions"].as_array().into_iter().flatten() {
        gait_runtime::outln!(
            "suggestion    {}: {}",
            s["action"].as_str().unwrap_or("?"),
            s["reason"].as_str().unwrap_or("")
        );
        if let Some(cmd) = s["command"].as_str() {
            gait_runtime::outln!("              run: {cmd}");
        }
        if let Some(rule) = s["rule_yaml"].as_str() {
            gait_runtime::outln!("              rule:\n{rule}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `posture`.
pub async fn posture(args: PostureArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.scope.api.resolve(config)?;
    let mut query = args.scope.query();
    query.push(format!("days={}", args.days));
    if args.csv {
        query.push("format=csv".into());
        return raw(
            &api,
            &url(&api.server, &args.scope.org, "analysis/posture", &query),
        )
        .await;
    }
    let u = url(&api.server, &args.scope.org, "analysis/posture", &query);
    let (status, a) = call(&api, reqwest::Method::GET, &u, None).await?;
    if !status.is_success() {
        return Ok(refused_by_status(status, &a));
    }
    if args.json {
        gait_runtime::outln!("{a}");
        return Ok(ExitCode::SUCCESS);
    }
    let counts = |v: &Value| {
        v.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    gait_runtime::outln!(
        "posture of {} over {} days\ndecisions     {} ({})\nstages        {}\ngated         {}‰ \
         blocked or held for approval\nhigh-risk allowed {}",
        a["scope"].as_str().unwrap_or("?"),
        args.days,
        a["decisions"],
        counts(&a["by_verdict"]),
        counts(&a["by_stage"]),
        a["gated_per_mille"],
        a["high_risk_allowed"],
    );
    let ag = &a["agents"];
    gait_runtime::outln!(
        "agents        {} ({} stale, {} behind their bundle, {} certificates expiring within 7 days)",
        ag["agents"],
        ag["stale"],
        ag["behind_bundle"],
        ag["cert_expiring"]
    );
    let ap = &a["approvals"];
    let ms = |v: &Value| {
        v.as_u64()
            .map(|m| format!("{:.1} s", m as f64 / 1000.0))
            .unwrap_or_else(|| "-".into())
    };
    gait_runtime::outln!(
        "approvals     {} requested: {} pending, {} granted, {} denied, {} expired; time to grant p50 {}, p90 {}",
        ap["requests"],
        ap["pending"],
        ap["granted"],
        ap["denied"],
        ap["expired"],
        ms(&ap["median_time_to_grant_ms"]),
        ms(&ap["p90_time_to_grant_ms"]),
    );
    let quiet: Vec<String> = a["freshness"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["quiet"].as_bool() == Some(true))
        .map(|f| {
            format!(
                "{}/{} ({} h)",
                f["project"].as_str().unwrap_or("?"),
                f["env"].as_str().unwrap_or("?"),
                f["age_ms"].as_i64().unwrap_or(0) / 3_600_000
            )
        })
        .collect();
    let cov = &a["coverage"];
    let ungated: Vec<String> = cov["ungated"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            format!(
                "{} ({} calls)",
                t["tool"].as_str().unwrap_or("?"),
                t["calls"]
            )
        })
        .collect();
    // With no runpack in the window there is nothing to hold the gates against: say so, not "0 of 0 (1000‰)".
    if cov["tools_seen"].as_u64() == Some(0) {
        gait_runtime::outln!(
            "coverage      no runpack in the window listed a tool: nothing to hold the gates against yet"
        );
    } else {
        gait_runtime::outln!(
            "coverage      {} of {} tools seen in runpacks went through a gate ({}‰){}",
            cov["tools_gated"],
            cov["tools_seen"],
            cov["tool_coverage_per_mille"],
            if ungated.is_empty() {
                String::new()
            } else {
                format!("; ungated: {}", ungated.join(", "))
            }
        );
    }
    if cov["calls_seen"].as_u64() == Some(0) {
        gait_runtime::outln!("calls         no runpack call in the window");
    } else {
        gait_runtime::outln!(
            "calls         {} of {} runpack calls had a gate decision on their arguments ({}‰)",
            cov["calls_gated"],
            cov["calls_seen"],
            cov["call_coverage_per_mille"],
        );
    }
    for t in cov["high_risk_ungated"].as_array().into_iter().flatten() {
        gait_runtime::outln!(
            "high risk     {}: {} of {} calls went through no gate (runpack {})",
            t["tool"].as_str().unwrap_or("?"),
            t["ungated_calls"],
            t["calls"],
            t["runpack_sha256"].as_str().unwrap_or("?"),
        );
    }
    if !quiet.is_empty() {
        gait_runtime::outln!(
            "quiet         no evidence for over a day: {}",
            quiet.join(", ")
        );
    }
    let mut tools = Table::new(&[
        ("TOOL", Align::Left),
        ("DECISIONS", Align::Right),
        ("HIGH RISK", Align::Right),
        ("HIGH RISK ALLOWED", Align::Right),
        ("DESTRUCTIVE", Align::Right),
        ("VERDICTS", Align::Left),
    ]);
    for t in a["tools"].as_array().into_iter().flatten() {
        tools.row([
            t["tool"].as_str().unwrap_or("").to_owned(),
            t["decisions"].to_string(),
            t["high_risk"].to_string(),
            t["high_risk_allowed"].to_string(),
            t["destructive"].to_string(),
            counts(&t["by_verdict"]),
        ]);
    }
    tools.print();
    for r in a["regress"].as_array().into_iter().flatten() {
        gait_runtime::outln!(
            "regress {}: {}‰ pass ({} passed, {} failed){}",
            r["project"].as_str().unwrap_or("?"),
            r["pass_per_mille"],
            r["passed"],
            r["failed"],
            r["trend_per_mille"]
                .as_i64()
                .map(|t| format!(", trend {t:+}‰"))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `change-gate`.
pub async fn change_gate(args: ChangeGateArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.target.api.resolve(config)?;
    let mut query = Vec::new();
    if let Some(min) = args.min_regress_pass_per_mille {
        query.push(format!("min_regress_pass_per_mille={min}"));
    }
    if args.require_regress_runs {
        query.push("require_regress_runs=true".into());
    }
    if args.allow_during_rollout {
        query.push("block_during_rollout=false".into());
    }
    let u = args.target.url(&api.server, "change-gate", &query);
    let (status, a) = call(&api, reqwest::Method::GET, &u, None).await?;
    if !status.is_success() {
        return Ok(refused_by_status(status, &a));
    }
    let pass = a["pass"].as_bool() == Some(true);
    if args.json {
        gait_runtime::outln!("{a}");
    } else {
        gait_runtime::outln!(
            "change gate {}: {}",
            a["scope"].as_str().unwrap_or("?"),
            if pass { "PASS" } else { "FAIL" }
        );
        for r in a["reasons"].as_array().into_iter().flatten() {
            gait_runtime::outln!(
                "  {}: {}",
                r["check"].as_str().unwrap_or("?"),
                r["message"].as_str().unwrap_or("")
            );
        }
    }
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(gait_runtime::exit::FAILURE)
    })
}

/// GETs `url` and prints the body as it came (CSV).
async fn raw(api: &super::Api, url: &str) -> anyhow::Result<ExitCode> {
    let (status, body) = call_raw(api, reqwest::Method::GET, url, None).await?;
    if !status.is_success() {
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        return Ok(refused_by_status(status, &answer));
    }
    // The CSV ends in a newline; print it without adding another.
    let text = String::from_utf8_lossy(&body);
    gait_runtime::outln!("{}", text.strip_suffix('\n').unwrap_or(&text));
    Ok(ExitCode::SUCCESS)
}

/// Runs `family-merge` (a body) or `family-split` (none).
async fn merge_or_split(
    api: ApiArgs,
    config: Config,
    org: &Org,
    family: &str,
    body: Option<Value>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    // Ids and dedup keys are lowercase hex and dashes; anything else is refused here, before it reaches a URL.
    if family.is_empty()
        || !family
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        anyhow::bail!(
            "{family:?} is neither a family id (64 hex) nor a dedup key (gfam1-<32 hex>): \
             list families with `gait-aggregator families`"
        );
    }
    let api = api.resolve(config)?;
    let u = url(
        &api.server,
        org,
        &format!("analysis/families/{family}/merge"),
        &[],
    );
    let merging = body.is_some();
    let method = if merging {
        reqwest::Method::PUT
    } else {
        reqwest::Method::DELETE
    };
    let (status, a) = call(&api, method, &u, body).await?;
    if !status.is_success() {
        return Ok(refused_by_status(status, &a));
    }
    let (family, into) = (
        a["family"].as_str().unwrap_or("?"),
        a["into_family"].as_str().unwrap_or("?"),
    );
    if json {
        gait_runtime::outln!("{a}");
    } else if merging {
        gait_runtime::outln!("family {family} now reads as part of {into}");
    } else {
        gait_runtime::outln!("family {family} is its own family again (was part of {into})");
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `family-merge`.
pub async fn family_merge(args: FamilyMergeArgs, config: Config) -> anyhow::Result<ExitCode> {
    let body = serde_json::json!({ "into": args.into, "reason": args.reason });
    merge_or_split(
        args.api,
        config,
        &args.org,
        &args.family,
        Some(body),
        args.json,
    )
    .await
}

/// Runs `family-split`.
pub async fn family_split(args: FamilySplitArgs, config: Config) -> anyhow::Result<ExitCode> {
    merge_or_split(args.api, config, &args.org, &args.family, None, args.json).await
}

/// A UTC day (days since the Unix epoch) as its date.
fn date_of(day: &Value) -> String {
    day.as_i64()
        .and_then(|d| time::OffsetDateTime::from_unix_timestamp(d.checked_mul(86_400)?).ok())
        .map_or_else(|| day.to_string(), |t| t.date().to_string())
}

/// Runs `verdict-shifts`.
pub async fn verdict_shifts(args: ShiftsArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.target.api.resolve(config)?;
    let base = args.target.url(
        &api.server,
        "verdict-shifts",
        &[format!("days={}", args.days)],
    );
    let mut u = reqwest::Url::parse(&base)
        .map_err(|e| anyhow::anyhow!("--server {}: not a URL: {e}", api.server))?;
    if let Some(t) = &args.tool {
        u.query_pairs_mut().append_pair("tool", t);
    }
    let (status, a) = call(&api, reqwest::Method::GET, u.as_str(), None).await?;
    if !status.is_success() {
        return Ok(refused_by_status(status, &a));
    }
    if args.json {
        gait_runtime::outln!("{a}");
        return Ok(ExitCode::SUCCESS);
    }
    let shifts = a["shifts"].as_array().map_or(&[][..], Vec::as_slice);
    gait_runtime::outln!(
        "{}: {} verdict-mix shift(s) from {} to {}",
        a["scope"].as_str().unwrap_or("?"),
        shifts.len(),
        date_of(&a["from_day"]),
        date_of(&a["to_day"]),
    );
    let mut table = Table::new(&[
        ("DAY", Align::Left),
        ("TOOL", Align::Left),
        ("VERDICT", Align::Left),
        ("SHARE ‰", Align::Right),
        ("DECISIONS", Align::Right),
        ("CAUSE", Align::Left),
    ]);
    for s in shifts {
        let v = s["verdict"].as_str().unwrap_or("?");
        let cause = match s["attribution"]["primary"].as_object() {
            Some(c) => format!(
                "{}: {} {} -> {}",
                c["kind"].as_str().unwrap_or("?"),
                c["field"].as_str().unwrap_or("?"),
                c.get("before")
                    .and_then(Value::as_str)
                    .unwrap_or("(absent)"),
                c.get("after").and_then(Value::as_str).unwrap_or("(absent)"),
            ),
            None => "unattributed".to_owned(),
        };
        table.row([
            date_of(&s["day"]),
            s["tool"].as_str().unwrap_or("?").to_owned(),
            v.to_owned(),
            format!(
                "{} -> {}",
                s["before"]["per_mille"][v].as_u64().unwrap_or(0),
                s["after"]["per_mille"][v].as_u64().unwrap_or(0)
            ),
            format!(
                "{} -> {}",
                s["before"]["decisions"], s["after"]["decisions"]
            ),
            cause,
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// Runs `drift`.
pub async fn drift(args: DriftArgs, config: Config) -> anyhow::Result<ExitCode> {
    let api = args.target.api.resolve(config)?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    for id in std::iter::once(&args.run).chain(args.baseline.as_ref()) {
        if !ok(id) {
            gait_runtime::errln!(
                "error: {id:?} is not a run id: use 1-128 characters [A-Za-z0-9_-]"
            );
            return Ok(ExitCode::from(gait_runtime::exit::DATAERR));
        }
    }
    let mut query = vec![format!("run={}", args.run)];
    if let Some(b) = &args.baseline {
        query.push(format!("baseline={b}"));
    }
    let u = args.target.url(&api.server, "drift", &query);
    let (status, a) = call(&api, reqwest::Method::GET, &u, None).await?;
    if !status.is_success() {
        return Ok(refused_by_status(status, &a));
    }
    let unattributed = a["unattributed"].as_bool() == Some(true);
    if args.json {
        gait_runtime::outln!("{a}");
    } else {
        gait_runtime::outln!(
            "run {} (runpack {}) against {} (runpack {}):",
            a["failing"]["run_id"].as_str().unwrap_or("?"),
            a["failing"]["runpack_sha256"].as_str().unwrap_or("?"),
            a["baseline"]["run_id"].as_str().unwrap_or("?"),
            a["baseline"]["runpack_sha256"].as_str().unwrap_or("?"),
        );
        if unattributed {
            gait_runtime::outln!("  unattributed: nothing in the evidence differs");
        } else if a["incomplete"].as_bool() == Some(true)
            && a["attribution"]["causes"]
                .as_array()
                .is_none_or(Vec::is_empty)
        {
            gait_runtime::outln!(
                "  no cause found, but not every call was compared (a record lists no calls, or left some out)"
            );
        }
        for (i, c) in a["attribution"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            gait_runtime::outln!(
                "  {}{}: {} {} -> {}",
                if i == 0 { "cause " } else { "also  " },
                c["kind"].as_str().unwrap_or("?"),
                c["field"].as_str().unwrap_or("?"),
                c["before"].as_str().unwrap_or("(absent)"),
                c["after"].as_str().unwrap_or("(absent)"),
            );
        }
    }
    Ok(if unattributed {
        ExitCode::from(gait_runtime::exit::FAILURE)
    } else {
        ExitCode::SUCCESS
    })
}
