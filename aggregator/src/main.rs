//! `gait-aggregator`: the buyer-hosted control plane. Thin entry point: parse the command line, set up logging,
//! call the library, map errors to exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use gait_aggregator::config::Config;
use gait_runtime::exit;
use tokio_util::sync::CancellationToken;

mod cmd;

/// mimalloc instead of glibc malloc: allocation and free were about a fifth of the CPU of a decision (and of
/// ingest) with glibc's arenas; see docs/benchmarks.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Gait fleet aggregator: mutual-TLS QUIC ingest for gait-agents, signed policy bundles, fleet inventory.
///
/// Quick start on embedded defaults (SQLite and a private CA under ./gait-data):
///
///   gait-aggregator serve
///
///   gait-aggregator pki issue-agent --org acme --project web --env prod --agent-id a1 --out ./agent-a1
///
///   gait-aggregator publish --org acme --project web --env prod --policy policy.yaml
///
/// With a configuration file, give it to every subcommand (or set GAIT_CONFIG):
///
///   gait-aggregator --config /etc/gait/aggregator.yaml config check
#[derive(Parser, Debug)]
#[command(
    name = "gait-aggregator",
    version,
    about,
    long_about,
    propagate_version = true
)]
struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "GAIT_LOG_FORMAT")]
    log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `gait_aggregator=debug`.
    #[arg(long, global = true, default_value = "info", env = "GAIT_LOG")]
    log_level: String,
    /// Configuration file (YAML, see deploy/config/aggregator.yaml) read by every subcommand, so operator
    /// commands use the same data directory and database as the server. Optional: without it the embedded
    /// defaults apply. `GAIT_*` environment variables and the flags of each subcommand override its keys.
    #[arg(long, global = true, env = "GAIT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the aggregator: QUIC ingest for agents and the HTTP API. Creates the data directory, a private CA,
    /// the registry signing key and an admin token on first start.
    Serve(cmd::serve::ServeArgs),
    /// Manage the deployment's private CA: create it, issue agent certificates, revoke them.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Sign and publish policy files as the next bundle of an org/project/environment (through the HTTP API).
    Publish(cmd::publish::PublishArgs),
    /// List agents of an org with last-seen time, address, version, bundle versions and their state (revoked,
    /// stale: silent for over 120 s, behind: not on the newest published bundle) through the HTTP API.
    Agents(cmd::agents::AgentsArgs),
    /// List an environment's agent identity alerts (a second live instance of one certificate refused, a new
    /// instance behind what the aggregator holds) through the HTTP API, newest first.
    Alerts(cmd::alerts::AlertsArgs),
    /// List the trace keys an environment's agents announced (each bound to the certificate that delivered it)
    /// through the HTTP API; `--out DIR` writes each as a Gait public key file `DIR/<key_id>.key`.
    #[command(name = "trace-keys")]
    TraceKeys(cmd::trace_keys::TraceKeysArgs),
    /// Who may do what: list, grant and revoke role bindings (user or IdP group, role, org/project/env scope)
    /// through the HTTP API. The config file's auth.bindings are applied at every start.
    #[command(subcommand)]
    Access(cmd::access::AccessCommand),
    /// Mint, list and revoke join tokens: an agent enrolls with one (`gait-agent enroll`) into its
    /// org/project/environment, making its own key; no key or certificate is copied by hand.
    #[command(subcommand, name = "join-token")]
    JoinToken(cmd::join_token::JoinTokenCommand),
    /// Approval governance through the HTTP API: approval policies (policy set|list) and the requests agents
    /// raise for require_approval verdicts (list|show|approve|deny).
    #[command(subcommand)]
    Approvals(cmd::approvals::ApprovalsCommand),
    /// Signed policy bundles as files, for sites with no network path (`bundle export`, then `gait-agent bundle
    /// import` there).
    #[command(subcommand)]
    Bundle(cmd::bundle::BundleCommand),
    /// Artifact bytes agents uploaded (`artifact get --digest … --out FILE`, digest-checked).
    #[command(subcommand)]
    Artifact(cmd::artifact::ArtifactCommand),
    /// Create or upgrade the database schema and exit.
    Migrate(cmd::DataArgs),
    /// Copy this aggregator's state while it serves: a consistent SQLite copy (`VACUUM INTO`), the PKI, keys,
    /// admin token and local evidence, with a manifest of SHA-256 digests (`backup --out DIR`). PostgreSQL is
    /// backed up with pg_dump (docs/operations/backup.md); the files are copied all the same.
    Backup(cmd::backup::BackupArgs),
    /// Put a backup into a fresh data directory (`restore --from DIR --data-dir NEW`): every digest checked
    /// first, never over an existing database, integrity and row counts checked after.
    Restore(cmd::backup::RestoreArgs),
    /// Commit an agent's outbox export file (`gait-agent outbox export`, sites with no network path) exactly
    /// once: signature, certificate (trusted CA at the export time, not revoked), records and hash chain
    /// verified; identity from the certificate. Runs on the store directly. Exit code 0 when committed, 65
    /// when the file is refused, 66 when it cannot be read.
    #[command(name = "ingest-file")]
    IngestFile(cmd::ingest_file::IngestFileArgs),
    /// The tamper-evident audit log: export it, verify an export offline (`audit verify DIR --public-key
    /// audit.vkey`), check that a checkpoint extends an older one.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// Inspect the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Look up indexed decisions (by policy digest, verdict, stage, agent, time) through the HTTP API.
    Records(cmd::records::RecordsArgs),
    /// Find recorded artifacts (runpacks, traces, regress results, JUnit) by run id or SHA-256 through the API.
    Artifacts(cmd::artifacts::ArtifactsArgs),
    /// Bundle signing keys through the HTTP API: list, rotate (with an overlap), revoke.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// The policy registry through the HTTP API: push versions (validated, id = Gait policy digest), list, show,
    /// diff; pin an environment to a version, roll it back, show its pin history.
    #[command(subcommand)]
    Policy(cmd::policy::PolicyCommand),
    /// Replay a candidate policy beside the baseline over the org's captured decisions (or, --offline, an
    /// exported corpus) into a signed report; exit 5 when a verdict flips.
    Replay(cmd::replay::ReplayArgs),
    /// Staged rollouts through the HTTP API: create (cohorts, stages, bake times, health gates, blast-radius
    /// cap), list, show, health; pause, resume, promote, abort, retry; agent labels for cohorts.
    #[command(subcommand)]
    Rollout(cmd::rollout::RolloutCommand),
    /// Incident families of an org (or a project/environment of it), highest priority first: the same incident
    /// from any agent grouped by a versioned fingerprint, scored by privilege, blast radius and recurrence.
    Families(cmd::analysis::FamiliesArgs),
    /// One incident family: what went into its fingerprint, its score breakdown, evidence digests and
    /// next-best-fix suggestions (rollback candidate, approval rule, policy test fixture).
    Family(cmd::analysis::FamilyArgs),
    /// Posture of an org (or a project/environment of it): decision and stage mix per tool and day, high-risk
    /// calls allowed, regress pass rates with their trend, agent posture.
    Posture(cmd::analysis::PostureArgs),
    /// Drift attribution: why a run's newest runpack in an environment differs from its baseline — the policy
    /// pinned, a tool's arguments or result, the receipts, the producer version — or unattributed (exit 1).
    Drift(cmd::analysis::DriftArgs),
    /// Shifts in each tool's verdict mix in an environment (say, mostly allowed to mostly blocked), newest first,
    /// each attributed to the policy digest, tool shape or enforcement stage that changed that day, or
    /// unattributed.
    #[command(name = "verdict-shifts")]
    VerdictShifts(cmd::analysis::ShiftsArgs),
    /// Merge an incident family into another, org-wide (an audited overlay): its occurrences, agents and
    /// environments count in the other from now on. `family-split` undoes it.
    #[command(name = "family-merge")]
    FamilyMerge(cmd::analysis::FamilyMergeArgs),
    /// Split a merged incident family out again: it reads as its own family, exactly as before (audited).
    #[command(name = "family-split")]
    FamilySplit(cmd::analysis::FamilySplitArgs),
    /// The change-management gate of an environment, for a deployment pipeline: exit 0 when it passes, 1 with
    /// every reason (conformance, regress posture, open critical families, rollouts in flight) when it fails.
    #[command(name = "change-gate")]
    ChangeGate(cmd::analysis::ChangeGateArgs),
}

#[derive(Subcommand, Debug)]
enum PkiCommand {
    /// Create the CA and the server certificate under <data-dir>/pki.
    Init(cmd::pki::PkiInitArgs),
    /// Issue an agent client certificate carrying its org/project/env/agent id, plus a ready agent.yaml.
    IssueAgent(cmd::pki::IssueAgentArgs),
    /// Re-issue the server certificate for new server names under the same CA (agents keep working).
    ReissueServer(cmd::pki::ReissueServerArgs),
    /// Revoke an agent certificate: refused at its next handshake, live connections closed within seconds.
    Revoke(cmd::pki::RevokeArgs),
    /// List revoked agent certificates: serial, agent, when, who revoked and why (a table, or --json).
    Revocations(cmd::pki::RevocationsArgs),
    /// Rotate the CA with overlap: `rotate-ca` makes a new issuing CA while the old one stays trusted;
    /// `rotate-ca --finish` moves the server certificate to the new CA (cross-signed by the old one, so agents
    /// that slept through the rotation still connect) and deletes the old CA key. Restart serve after each.
    RotateCa(cmd::pki::RotateCaArgs),
    /// End a finished rotation's overlap: stop trusting the retired CA and drop the cross certificate. Refused
    /// (exit 75) while agents still hold certificates of the retired CA, unless --force. Restart serve after.
    RetireCa(cmd::pki::RetireCaArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration (file + GAIT_* environment) and print the effective values, secrets redacted.
    /// An unknown key or a bad value is an error naming its dotted key.
    Check(cmd::config::CheckArgs),
}

fn main() -> ExitCode {
    // Before the heaps grow (crates/runtime/src/memory.rs).
    let thp = gait_runtime::memory::disable_transparent_huge_pages();
    // Every reqwest client needs a default rustls provider (see gait_runtime::http::tls::install_ring_default).
    gait_runtime::http::tls::install_ring_default();
    let cli = Cli::parse();
    let format = match cli.log_format {
        LogFormat::Text => gait_runtime::LogFormat::Text,
        LogFormat::Json => gait_runtime::LogFormat::Json,
    };
    // Held until main returns: dropping it flushes the log lines still buffered.
    let _log = match gait_runtime::init_tracing("gait-aggregator", format, &cli.log_level) {
        Ok(guard) => guard,
        Err(e) => {
            report_error(format_args!("invalid --log-level / GAIT_LOG: {e}"));
            return ExitCode::from(exit::CONFIG);
        }
    };
    if let Err(error) = thp {
        tracing::warn!(%error, "transparent huge pages stay on: expect latency spikes while heaps grow");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report_error(format_args!("cannot start the async runtime: {e}"));
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(dispatch(cli.config.as_deref(), cli.command)) {
        Ok(code) => code,
        Err(e) => {
            report_error(format_args!("{e:#}"));
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Writes `error: …` to stderr; a closed stderr is ignored (`eprintln!` would panic).
fn report_error(message: std::fmt::Arguments<'_>) {
    gait_runtime::errln!("error: {message}");
}

async fn dispatch(config_file: Option<&Path>, command: Command) -> anyhow::Result<ExitCode> {
    let load = || {
        Config::load(config_file).with_context(|| match config_file {
            Some(path) => format!("configuration {}", path.display()),
            None => "configuration (GAIT_* environment)".to_owned(),
        })
    };
    match command {
        Command::Config(ConfigCommand::Check(args)) => cmd::config::check(config_file, &args),
        Command::Serve(args) => {
            let config = args.apply(load()?)?;
            cmd::serve::run(&config, CancellationToken::new()).await
        }
        Command::Pki(PkiCommand::Init(args)) => cmd::pki::pki_init(args, load()?),
        Command::Pki(PkiCommand::IssueAgent(args)) => cmd::pki::issue_agent(args, load()?),
        Command::Pki(PkiCommand::ReissueServer(args)) => cmd::pki::reissue_server(args, load()?),
        Command::Pki(PkiCommand::Revoke(args)) => cmd::pki::revoke(args, load()?).await,
        Command::Pki(PkiCommand::Revocations(args)) => cmd::pki::revocations(args, load()?).await,
        Command::Pki(PkiCommand::RotateCa(args)) => cmd::pki::rotate_ca(args, load()?).await,
        Command::Pki(PkiCommand::RetireCa(args)) => cmd::pki::retire_ca(args, load()?).await,
        Command::Publish(args) => cmd::publish::publish(args, load()?).await,
        Command::Agents(args) => cmd::agents::agents(args, load()?).await,
        Command::Alerts(args) => cmd::alerts::alerts(args, load()?).await,
        Command::TraceKeys(args) => cmd::trace_keys::trace_keys(args, load()?).await,
        Command::Access(command) => cmd::access::access(command, load()?).await,
        Command::JoinToken(command) => cmd::join_token::run(command, load()?).await,
        Command::Keys(command) => cmd::keys::run(command, load()?).await,
        Command::Rollout(command) => cmd::rollout::run(command, load()?).await,
        Command::Approvals(command) => cmd::approvals::approvals(command, load()?).await,
        Command::Migrate(args) => cmd::migrate::migrate(&args.apply(load()?)?).await,
        Command::Backup(args) => cmd::backup::backup(args, load()?).await,
        Command::Restore(args) => cmd::backup::restore(args, load()?).await,
        Command::IngestFile(args) => cmd::ingest_file::ingest_file(args, load()?).await,
        Command::Audit(command) => cmd::audit::run(command, load()?).await,
        Command::Bundle(command) => cmd::bundle::run(command, load()?).await,
        Command::Artifact(command) => cmd::artifact::run(command, load()?).await,
        Command::Records(args) => cmd::records::records(args, load()?).await,
        Command::Artifacts(args) => cmd::artifacts::artifacts(args, load()?).await,
        Command::Policy(command) => cmd::policy::run(command, load()?).await,
        Command::Replay(args) => cmd::replay::replay(args, load()?).await,
        Command::Families(args) => cmd::analysis::families(args, load()?).await,
        Command::Family(args) => cmd::analysis::family(args, load()?).await,
        Command::Posture(args) => cmd::analysis::posture(args, load()?).await,
        Command::Drift(args) => cmd::analysis::drift(args, load()?).await,
        Command::VerdictShifts(args) => cmd::analysis::verdict_shifts(args, load()?).await,
        Command::FamilyMerge(args) => cmd::analysis::family_merge(args, load()?).await,
        Command::FamilySplit(args) => cmd::analysis::family_split(args, load()?).await,
        Command::ChangeGate(args) => cmd::analysis::change_gate(args, load()?).await,
    }
}
