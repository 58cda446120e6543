//! `gait-aggregator replay`: replay a candidate policy beside the baseline over the org's captured decisions,
//! through the API (`POST /v1/orgs/{org}/replay`), or `--offline` over an exported corpus file with a signing
//! key of one's own (CI without a server). Both give the same signed report for the same corpus, policies,
//! fixtures and key. Every report is verified before it is believed (review M5): with `--replay-pub`, else the
//! key the server publishes (`GET …/replay/key`), else (offline) the signing key's own public half. Exit 0 when
//! no verdict flips, 5 when one does (Gait's regression failure), 6 when fewer inputs were evaluated than
//! `--require-samples` (default 1) asks (review M6), 65 when an input is unusable or the report does not verify
//! (the message names the file or field).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use gait_aggregator::config::Config;
use gait_canon::sign::PublicKey;
use gait_identity::{Env, Org, Project};
use gait_replay::{Fixture, ReplayInput, Report, build_report, parse_corpus, sign_report};
use gait_runtime::exit;
use serde_json::{Value, json};

use super::{ApiArgs, call_raw, print_refusal};

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  # What would blocking tool.delete change in prod? (exit 5 if any verdict flips)
  gait-aggregator replay --org acme --project web --env prod --candidate next.yaml --baseline current.yaml

  # Rerun exactly (same corpus): pass the until_id the first report echoed
  gait-aggregator replay --org acme --candidate next.yaml --baseline current.yaml --until-id 81234 --out r.json

  # CI without a server: export the corpus once, replay it offline with your own key
  curl -H \"Authorization: Bearer $TOKEN\" $GAIT/v1/orgs/acme/replay/corpus > corpus.jsonl
  gait-aggregator replay --offline --corpus corpus.jsonl --candidate next.yaml --baseline current.yaml \\
      --fixtures tests/intents --signing-key ci.key --out report.json

  # CI gate: pin the server's report key, and demand a real corpus
  gait-aggregator replay --org acme --candidate next.yaml --baseline current.yaml \
      --replay-pub replay.pub --require-samples 100

The corpus is the org's decisions made under a bundle published with --capture-mode raw, deduplicated by intent
digest. A sample changed when the verdict, reason codes, violations or matched rule differ (Gait's policy
simulate rule); a flip when the verdicts differ. Needs replay.run (platform_admin, policy_author, auditor).")]
pub struct ReplayArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    /// Data directory whose admin token (and CA) to use [key: data_dir, env: GAIT_DATA_DIR].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Organisation whose decisions to replay (not with --offline: the corpus file names it).
    #[arg(long, required_unless_present = "offline")]
    pub org: Option<Org>,
    /// Only this project's decisions.
    #[arg(long, conflicts_with = "offline")]
    pub project: Option<Project>,
    /// Only this environment's decisions (with --project).
    #[arg(long, requires = "project", conflicts_with = "offline")]
    pub env: Option<Env>,
    /// The candidate Gait policy file (YAML).
    #[arg(long)]
    pub candidate: PathBuf,
    /// The baseline Gait policy file (YAML): the policy in force. Registry digests and `pinned` arrive with the
    /// policy registry.
    #[arg(long)]
    pub baseline: PathBuf,
    /// Gait intent fixtures: files, or directories whose `.json` files are read in name order.
    #[arg(long, num_args = 1..)]
    pub fixtures: Vec<PathBuf>,
    /// Pin the corpus at this evidence index id (the `corpus.until_id` of an earlier report).
    #[arg(long, conflicts_with = "offline")]
    pub until_id: Option<u64>,
    /// Replay an exported corpus file (`GET /v1/orgs/{org}/replay/corpus`) without a server.
    #[arg(long, requires_all = ["corpus", "signing_key"])]
    pub offline: bool,
    /// The corpus file (JSON Lines) for --offline.
    #[arg(long, requires = "offline")]
    pub corpus: Option<PathBuf>,
    /// Gait private key file to sign the report with, for --offline.
    #[arg(long, requires = "offline")]
    pub signing_key: Option<PathBuf>,
    /// Print the signed report (canonical JSON) instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Write the signed report to this file (byte for byte as signed).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Gait public key file the report must verify with (the aggregator's `keys/replay.pub`); without it the
    /// key is fetched from `GET /v1/orgs/{org}/replay/key`, which only proves the report came from the server
    /// answering --server. Pin it in CI. Offline, the --signing-key's public half is used.
    #[arg(long)]
    pub replay_pub: Option<PathBuf>,
    /// Fail (exit 6) unless at least this many inputs were evaluated: distinct corpus intents that were not
    /// skipped, plus fixtures. 0 turns the check off.
    #[arg(long, default_value_t = 1)]
    pub require_samples: u64,
}

/// A bad input: printed, exit 65.
fn bad_input(message: String) -> ExitCode {
    gait_runtime::errln!("error: {message}");
    ExitCode::from(exit::DATAERR)
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, ExitCode> {
    std::fs::read(path).map_err(|e| bad_input(format!("{flag} {}: {e}", path.display())))
}

/// The fixture files of `paths`: files as given, directories' `.json` files in name order.
fn fixtures(paths: &[PathBuf]) -> Result<Vec<Fixture>, ExitCode> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| bad_input(format!("--fixtures {}: {e}", path.display())))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    files
        .into_iter()
        .map(|f| {
            Ok(Fixture {
                path: f.display().to_string(),
                intent: read("--fixtures", &f)?,
            })
        })
        .collect()
}

pub async fn replay(args: ReplayArgs, mut config: Config) -> anyhow::Result<ExitCode> {
    let candidate = match read("--candidate", &args.candidate) {
        Ok(bytes) => bytes,
        Err(code) => return Ok(code),
    };
    let baseline = match read("--baseline", &args.baseline) {
        Ok(bytes) => bytes,
        Err(code) => return Ok(code),
    };
    let fixtures = match fixtures(&args.fixtures) {
        Ok(f) => f,
        Err(code) => return Ok(code),
    };
    let mut served_key = None;
    let bytes = if args.offline {
        match offline(&args, &candidate, &baseline, &fixtures) {
            Ok(bytes) => bytes,
            Err(code) => return Ok(code),
        }
    } else {
        if let Some(dir) = &args.data_dir {
            config.data_dir = dir.clone();
        }
        let api = args.api.resolve(config)?;
        let text = |flag: &str, bytes: &[u8], path: &Path| {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| bad_input(format!("{flag} {}: not UTF-8 text", path.display())))
        };
        let candidate = match text("--candidate", &candidate, &args.candidate) {
            Ok(t) => t,
            Err(code) => return Ok(code),
        };
        let baseline = match text("--baseline", &baseline, &args.baseline) {
            Ok(t) => t,
            Err(code) => return Ok(code),
        };
        let mut fixture_bodies = Vec::new();
        for f in &fixtures {
            match serde_json::from_slice::<Value>(&f.intent) {
                Ok(intent) => fixture_bodies.push(json!({"path": f.path, "intent": intent})),
                Err(e) => return Ok(bad_input(format!("--fixtures {}: not JSON: {e}", f.path))),
            }
        }
        let org = args
            .org
            .as_ref()
            .context("--org is required without --offline")?;
        let mut body =
            json!({"candidate": candidate, "baseline": baseline, "fixtures": fixture_bodies});
        for (k, v) in [
            (
                "project",
                args.project.as_ref().map(|p| Value::from(p.to_string())),
            ),
            ("env", args.env.as_ref().map(|e| Value::from(e.to_string()))),
            ("until_id", args.until_id.map(Value::from)),
        ] {
            if let Some(v) = v {
                body[k] = v;
            }
        }
        let url = format!("{}/v1/orgs/{org}/replay", api.server);
        let (status, bytes) = call_raw(&api, reqwest::Method::POST, &url, Some(body)).await?;
        if !status.is_success() {
            let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            print_refusal(status, &answer);
            return Ok(ExitCode::from(if status == http::StatusCode::BAD_REQUEST {
                exit::DATAERR
            } else {
                exit::FAILURE
            }));
        }
        if args.replay_pub.is_none() {
            let url = format!("{}/v1/orgs/{org}/replay/key", api.server);
            let (status, answer) = call_raw(&api, reqwest::Method::GET, &url, None).await?;
            let answer: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
            if !status.is_success() {
                print_refusal(status, &answer);
                return Ok(ExitCode::from(exit::FAILURE));
            }
            match PublicKey::from_gait_public_key(answer["public_key"].as_str().unwrap_or_default())
            {
                Ok(key) => served_key = Some(key),
                Err(e) => {
                    return Ok(bad_input(format!(
                        "GET {url}: the answer holds no usable public_key: {e}"
                    )));
                }
            }
        }
        bytes.to_vec()
    };
    let key = match report_key(&args, served_key) {
        Ok(key) => key,
        Err(code) => return Ok(code),
    };
    let report: Report = match gait_replay::verify_report(&bytes, &key) {
        Ok(report) => report,
        Err(e) => {
            return Ok(bad_input(format!(
                "the replay report does not verify with key {}: {e}; it was not made by the replay key you \
                 trust (check --server and --replay-pub)",
                key.key_id()
            )));
        }
    };
    if let Some(out) = &args.out {
        std::fs::write(out, &bytes).with_context(|| format!("writing --out {}", out.display()))?;
    }
    if args.json {
        gait_runtime::outln!("{}", String::from_utf8_lossy(&bytes));
    } else {
        summary(&report, args.out.as_deref());
    }
    let evaluated = report
        .corpus
        .distinct_intents
        .saturating_sub(report.corpus.skipped)
        + report.fixtures_total;
    if report.corpus.samples == 0 {
        gait_runtime::errln!(
            "warning: the corpus up to until_id {} holds no captured decision: only fixtures were checked (publish \
             with --capture-mode raw to capture decisions)",
            report.corpus.until_id
        );
    }
    if report.corpus.skipped > 0 {
        gait_runtime::errln!(
            "warning: {} of {} distinct intents could not be read or evaluated and were skipped (the aggregator log \
             names their index ids)",
            report.corpus.skipped,
            report.corpus.distinct_intents
        );
    }
    Ok(ExitCode::from(if report.has_flips() {
        exit::REPLAY_FLIPS
    } else if evaluated < args.require_samples {
        gait_runtime::errln!(
            "error: {evaluated} input(s) evaluated, --require-samples asks for {}: nothing proves the candidate safe",
            args.require_samples
        );
        exit::REPLAY_TOO_FEW_SAMPLES
    } else {
        exit::OK
    }))
}

/// The key the report must verify with: `--replay-pub`, offline the signing key's, else the server's.
fn report_key(args: &ReplayArgs, served: Option<PublicKey>) -> Result<PublicKey, ExitCode> {
    if let Some(path) = &args.replay_pub {
        return gait_canon::sign::load_public_key_file(path)
            .map_err(|e| bad_input(format!("--replay-pub: {e}")));
    }
    if let Some(key) = served {
        return Ok(key);
    }
    match &args.signing_key {
        Some(path) => gait_canon::sign::load_private_key_file(path)
            .map(|k| k.public_key())
            .map_err(|e| bad_input(format!("--signing-key: {e}"))),
        None => Err(bad_input(
            "no key to verify the report with: pass --replay-pub".into(),
        )),
    }
}

/// The signed report of an offline replay; `Err` is the exit code after the message was printed.
fn offline(
    args: &ReplayArgs,
    candidate: &[u8],
    baseline: &[u8],
    fixtures: &[Fixture],
) -> Result<Vec<u8>, ExitCode> {
    let (Some(corpus_path), Some(key_path)) = (&args.corpus, &args.signing_key) else {
        return Err(bad_input(
            "--offline needs --corpus and --signing-key".into(),
        ));
    };
    let policy = |flag: &str, bytes: &[u8], path: &Path| {
        gait_policy::parse_policy_yaml(bytes)
            .map_err(|e| bad_input(format!("{flag} {}: not a Gait policy: {e}", path.display())))
    };
    let candidate = policy("--candidate", candidate, &args.candidate)?;
    let baseline = policy("--baseline", baseline, &args.baseline)?;
    let key = gait_canon::sign::load_private_key_file(key_path)
        .map_err(|e| bad_input(format!("--signing-key: {e}")))?;
    let text = read("--corpus", corpus_path)?;
    let text = String::from_utf8(text).map_err(|_| {
        bad_input(format!(
            "--corpus {}: not UTF-8 text",
            corpus_path.display()
        ))
    })?;
    let (header, intents) = parse_corpus(&text)
        .map_err(|e| bad_input(format!("--corpus {}: {e}", corpus_path.display())))?;
    let input = ReplayInput {
        org: header.org,
        project: header.project,
        env: header.env,
        until_id: header.until_id,
        samples_total: header.samples,
        baseline: &baseline,
        candidate: &candidate,
        corpus: &intents,
        fixtures,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        max_changed: Some(gait_aggregator::replay::DEFAULT_MAX_CHANGED),
    };
    let mut report = build_report(&input).map_err(|e| bad_input(e.to_string()))?;
    Ok(sign_report(&mut report, &key))
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn summary(r: &Report, out: Option<&Path>) {
    gait_runtime::outln!(
        "replay of {}: baseline {} -> candidate {} over {} decisions ({} distinct intents, until_id {}{}) and {} fixtures",
        r.org,
        short(&r.baseline_digest),
        short(&r.candidate_digest),
        r.corpus.samples,
        r.corpus.distinct_intents,
        r.corpus.until_id,
        if r.corpus.skipped > 0 {
            format!(", {} skipped", r.corpus.skipped)
        } else {
            String::new()
        },
        r.fixtures_total
    );
    gait_runtime::outln!(
        "changed {}, verdict flips {}, recommendation {}",
        r.changed_total,
        r.flips_total,
        r.recommendation
    );
    for c in &r.changed {
        let source = match &c.fixture_path {
            Some(path) => path.clone(),
            None => format!("{} sample(s): {}", c.count, c.samples.join(",")),
        };
        gait_runtime::outln!(
            "  {}{}->{}  {}  {}",
            if c.verdict_flip { "FLIP " } else { "" },
            c.baseline.verdict,
            c.candidate.verdict,
            c.tool,
            source
        );
    }
    if r.changed_truncated {
        gait_runtime::outln!("  … (list cut; the counts cover every change)");
    }
    if let Some(out) = out {
        gait_runtime::outln!("signed report written to {}", out.display());
    }
}
