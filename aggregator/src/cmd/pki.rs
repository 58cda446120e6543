//! `gait-aggregator pki`: create the deployment CA, issue agent certificates, revoke them and list the
//! revocations. Every one reads the data directory (and, for `revoke` and `revocations`, the database) from
//! the same configuration as `serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use gait_aggregator::clock::unix_ms;
use gait_aggregator::config::Config;
use gait_identity::{AgentId, AgentKey, CertSerial, Env, Org, Project, Tenant};
use gait_store::{Revocation, Store, StoredRevocation};

use super::DataArgs;
use super::table::{Align, Table};
use gait_aggregator::pki::identity::AgentToIssue;
use gait_aggregator::pki::{self, InitOptions, Validity};
use gait_aggregator::registry::REGISTRY_PUB_FILE;

/// Flags of `pki init`.
#[derive(Args, Debug)]
pub struct PkiInitArgs {
    /// Data directory [key: data_dir, env: GAIT_DATA_DIR, default: ./gait-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// SPIFFE trust domain written into every agent identity [key: pki.trust_domain, default: gait.local].
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// DNS names / IPs agents use to reach the aggregator (repeatable) [key: pki.server_names, default:
    /// localhost, 127.0.0.1].
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// Replace an existing CA (every issued agent certificate stops working).
    #[arg(long)]
    pub force: bool,
}

/// Flags of `pki reissue-server`.
#[derive(Args, Debug)]
pub struct ReissueServerArgs {
    /// Data directory holding pki/ [key: data_dir, env: GAIT_DATA_DIR, default: ./gait-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// DNS names / IPs agents use to reach the aggregator (repeatable); the new certificate covers exactly these
    /// [key: pki.server_names, default: localhost, 127.0.0.1].
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// Certificate lifetime in days.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `pki issue-agent`.
#[derive(Args, Debug)]
pub struct IssueAgentArgs {
    /// Data directory holding pki/ [key: data_dir, env: GAIT_DATA_DIR, default: ./gait-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Organisation of the agent (lowercase letters, digits, `.`, `_`, `-`; at most 63 characters).
    #[arg(long)]
    pub org: Org,
    /// Project of the agent (same rule as --org).
    #[arg(long)]
    pub project: Project,
    /// Environment of the agent, e.g. prod, staging, ci (same rule as --org).
    #[arg(long)]
    pub env: Env,
    /// Agent id, unique within the environment (same rule as --org).
    #[arg(long)]
    pub agent_id: AgentId,
    /// Output directory for agent.pem, agent.key, ca.pem, registry.pub and agent.yaml.
    #[arg(long)]
    pub out: PathBuf,
    /// Certificate lifetime in days.
    #[arg(long, default_value_t = 90)]
    pub days: u32,
    /// Aggregator QUIC address written into the generated agent.yaml.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub aggregator_address: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `pki revoke`.
#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// The agent certificate (PEM) to revoke: its serial and its agent are read from it.
    #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
    pub cert: Option<PathBuf>,
    /// Serial number (hex, `:` separators allowed) of the certificate to revoke. Its agent is looked up among
    /// the agents this aggregator has seen; for a certificate that never connected (or was since rotated),
    /// name the agent with --org, --project, --env and --agent-id.
    #[arg(long)]
    pub serial: Option<CertSerial>,
    /// Organisation of the agent whose certificate --serial is (with --project, --env, --agent-id).
    #[arg(long, requires_all = ["serial", "project", "env", "agent_id"])]
    pub org: Option<Org>,
    /// Project of the agent whose certificate --serial is.
    #[arg(long, requires = "org")]
    pub project: Option<Project>,
    /// Environment of the agent whose certificate --serial is.
    #[arg(long, requires = "org")]
    pub env: Option<Env>,
    /// Agent id of the agent whose certificate --serial is.
    #[arg(long, requires = "org")]
    pub agent_id: Option<AgentId>,
    /// Why (recorded with the revocation).
    #[arg(long, default_value = "unspecified")]
    pub reason: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `pki revocations`.
#[derive(Args, Debug)]
pub struct RevocationsArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Print the revocations as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Creates the CA and server certificate under `<data_dir>/pki`.
pub fn pki_init(args: PkiInitArgs, mut config: Config) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(domain) = args.trust_domain {
        config.pki.trust_domain = domain;
    }
    if !args.server_names.is_empty() {
        config.pki.server_names = args.server_names;
    }
    config.validate()?;
    let opts = InitOptions {
        trust_domain: config.pki.trust_domain,
        server_names: config.pki.server_names,
        force: args.force,
        ..Default::default()
    };
    let dir = config.data_dir.join("pki");
    let report = pki::init(&dir, &opts)?;
    gait_runtime::outln!("CA created for trust domain {}", report.trust_domain);
    gait_runtime::outln!("  ca:     {}", report.ca_cert_path.display());
    gait_runtime::outln!("  server: {}", report.server_cert_path.display());
    Ok(ExitCode::SUCCESS)
}

/// Re-issues the server certificate under the existing CA (agents keep working; restart the server to use it).
pub fn reissue_server(args: ReissueServerArgs, mut config: Config) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if !args.server_names.is_empty() {
        config.pki.server_names = args.server_names;
    }
    config.validate()?;
    let dir = config.data_dir.join("pki");
    let before = pki::server_cert_names(&dir).unwrap_or_default();
    let issued = pki::reissue_server(&dir, &config.pki.server_names, args.days)?;
    if args.json {
        gait_runtime::outln!(
            "{}",
            serde_json::json!({
                "cert": issued.cert_path, "server_names": issued.server_names, "previous_server_names": before,
                "serial": issued.serial_hex, "not_after": issued.not_after.unix_timestamp(),
            })
        );
    } else {
        gait_runtime::outln!(
            "server certificate re-issued under the same CA: {}",
            issued.cert_path.display()
        );
        gait_runtime::outln!("  names  {}", issued.server_names.join(", "));
        gait_runtime::outln!("  was    {}", before.join(", "));
        gait_runtime::outln!("  serial {}", issued.serial_hex);
        gait_runtime::outln!(
            "  agents keep their certificates; restart `gait-aggregator serve` to serve the new one"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Issues an agent certificate and writes a ready `agent.yaml` next to it.
pub fn issue_agent(args: IssueAgentArgs, config: Config) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.clone().unwrap_or(config.data_dir);
    let pki_dir = data_dir.join("pki");
    let id = AgentToIssue::new(AgentKey::new(
        Tenant::new(args.org.clone(), args.project.clone(), args.env.clone()),
        args.agent_id.clone(),
    ));
    // Checked before anything is issued: a bad address must not leave a certificate behind.
    let server_name = server_name_of(&args.aggregator_address)?;
    let issued = pki::issue_agent(&pki_dir, &id, &args.out, Validity::days(args.days))?;
    let registry_pub = data_dir.join("keys").join(REGISTRY_PUB_FILE);
    let trust_line = if registry_pub.exists() {
        std::fs::copy(&registry_pub, args.out.join(REGISTRY_PUB_FILE))
            .with_context(|| format!("copying {}", registry_pub.display()))?;
        true
    } else {
        false
    };
    let yaml = agent_yaml(&args.aggregator_address, &server_name);
    let yaml_path = args.out.join("agent.yaml");
    std::fs::write(&yaml_path, yaml).with_context(|| format!("writing {}", yaml_path.display()))?;
    if args.json {
        gait_runtime::outln!(
            "{}",
            serde_json::json!({
                "serial": issued.serial_hex, "uri": issued.uri, "not_after": issued.not_after.unix_timestamp(),
                "cert": issued.cert_path, "key": issued.key_path, "ca": issued.ca_path, "config": yaml_path,
            })
        );
    } else {
        gait_runtime::outln!("agent certificate issued: {}", issued.uri);
        gait_runtime::outln!(
            "  serial {}  (revoke with: gait-aggregator pki revoke --serial {} --org {} --project {} --env {} --agent-id {})",
            issued.serial_hex,
            issued.serial_hex,
            args.org,
            args.project,
            args.env,
            args.agent_id
        );
        gait_runtime::outln!(
            "  files in {}: agent.pem agent.key ca.pem agent.yaml{}",
            args.out.display(),
            if trust_line { " registry.pub" } else { "" }
        );
        if !trust_line {
            gait_runtime::outln!(
                "  note: {} does not exist yet (start `gait-aggregator serve` once), copy it into {} before starting the agent",
                registry_pub.display(),
                args.out.display()
            );
        }
        gait_runtime::outln!("  run it: gait-agent run --config {}", yaml_path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The name the agent checks the aggregator's certificate against: the host of `host:port` (an IPv6 host in
/// brackets), a DNS name or an IP address as written. The aggregator's certificate must carry it (`pki init
/// --server-name`).
fn server_name_of(address: &str) -> anyhow::Result<String> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "--aggregator-address {address:?}: {why}; give host:port as the agents dial it, e.g. \
             fleet.example.com:7443, 10.0.0.5:7443 or [::1]:7443"
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').ok_or_else(|| bad("unclosed '['"))?,
        None if host.contains(':') => return Err(bad("put an IPv6 host in brackets")),
        None => host,
    };
    if !port.parse::<u16>().is_ok_and(|p| p != 0) {
        return Err(bad("the port is not 1-65535"));
    }
    if host.is_empty() {
        return Err(bad("no host"));
    }
    rustls::pki_types::ServerName::try_from(host)
        .map_err(|_| bad("the host is neither a DNS name nor an IP address"))?;
    Ok(host.to_owned())
}

fn agent_yaml(address: &str, server_name: &str) -> String {
    format!(
        "# gait-agent configuration written by `gait-aggregator pki issue-agent`.\n\
         # Paths are relative to this file.\n\
         aggregator:\n  address: \"{address}\"\n  server_name: \"{server_name}\"\n\
         tls:\n  ca: ca.pem\n  cert: agent.pem\n  key: agent.key\n\
         trust:\n  registry_public_keys:\n    - registry.pub\n\
         data_dir: data\n\
         local_api:\n  listen: \"127.0.0.1:7071\"\n"
    )
}

/// Records a revocation in the database the server uses; refuses to create a database that does not exist,
/// and refuses a serial whose agent it cannot tell (every stored row belongs to a tenant).
pub async fn revoke(args: RevokeArgs, config: Config) -> anyhow::Result<ExitCode> {
    let config = args.data.apply(config)?;
    let from_cert = match &args.cert {
        Some(path) => {
            let id = pki::cert_agent(path)?;
            Some((id.serial.clone(), id.key()))
        }
        None => None,
    };
    let named = match (args.org, args.project, args.env, args.agent_id) {
        (Some(org), Some(project), Some(env), Some(agent_id)) => {
            Some(AgentKey::new(Tenant::new(org, project, env), agent_id))
        }
        (None, None, None, None) => None,
        _ => bail!("name the agent with all four of --org, --project, --env and --agent-id"),
    };
    let revoked_by = operator()?;
    let store = open_existing_store(&config).await?;
    let (serial, agent) = match (from_cert, args.serial) {
        (Some(found), _) => found,
        (None, Some(serial)) => {
            let agent = agent_of_serial(&store, &serial, named).await?;
            (serial, agent)
        }
        (None, None) => bail!("give --cert <agent.pem> or --serial <hex>"),
    };
    // The revocation and its audit entry commit together; a local operator is `local:<os user>` in the log.
    pki::revocation::revoke(
        &store,
        &Revocation {
            cert_serial: serial.clone(),
            agent: agent.clone(),
            reason: args.reason.clone(),
            revoked_by: revoked_by.clone(),
        },
        &format!("local:{revoked_by}"),
        unix_ms(),
    )
    .await?;
    store.close().await;
    if args.json {
        gait_runtime::outln!(
            "{}",
            serde_json::json!({
                "serial": serial, "org": agent.tenant.org, "project": agent.tenant.project,
                "env": agent.tenant.env, "agent_id": agent.agent_id, "reason": args.reason,
                "revoked_by": revoked_by,
            })
        );
    } else {
        gait_runtime::outln!(
            "revoked certificate serial {serial} of agent {agent} (by {revoked_by}); running aggregators refuse \
             it within seconds"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists every revocation: serial, agent, reason, who revoked and when; a table, or JSON with `--json`.
pub async fn revocations(args: RevocationsArgs, config: Config) -> anyhow::Result<ExitCode> {
    let config = args.data.apply(config)?;
    let store = open_existing_store(&config).await?;
    let listed = store.revocations().await;
    store.close().await;
    let listed = listed?;
    if args.json {
        let rows: Vec<_> = listed.iter().map(revocation_json).collect();
        gait_runtime::outln!("{}", serde_json::Value::Array(rows));
    } else {
        gait_runtime::outln!("{}", revocation_table(&listed).trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// One revocation as a flat JSON object (the agent's four identifiers as their own fields).
fn revocation_json(r: &StoredRevocation) -> serde_json::Value {
    serde_json::json!({
        "serial": r.cert_serial,
        "org": r.agent.tenant.org,
        "project": r.agent.tenant.project,
        "env": r.agent.tenant.env,
        "agent_id": r.agent.agent_id,
        "reason": r.reason,
        "revoked_by": r.revoked_by,
        "revoked_unix_ms": r.revoked_unix_ms,
        "revoked_at": rfc3339(r.revoked_unix_ms),
    })
}

/// The revocations as an aligned table with a header; a note instead when there are none.
fn revocation_table(listed: &[StoredRevocation]) -> String {
    if listed.is_empty() {
        return "no certificate has been revoked\n".to_owned();
    }
    let mut table = Table::new(&[
        ("SERIAL", Align::Left),
        ("AGENT", Align::Left),
        ("REVOKED AT", Align::Left),
        ("REVOKED BY", Align::Left),
        ("REASON", Align::Left),
    ]);
    for r in listed {
        table.row([
            r.cert_serial.to_string(),
            r.agent.to_string(),
            rfc3339(r.revoked_unix_ms),
            r.revoked_by.clone().unwrap_or_else(|| "-".to_owned()),
            r.reason.escape_debug().to_string(),
        ]);
    }
    table.render()
}

/// Unix milliseconds as RFC 3339 (UTC); the raw number when it is out of the calendar's range.
fn rfc3339(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix_ms} ms"))
}

/// The operator running this command, recorded as who revoked: `$USER` (or `$LOGNAME`), else the numeric uid
/// of this process (`uid:<n>`, the owner of `/proc/self`).
pub(super) fn operator() -> anyhow::Result<String> {
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var)
            && !name.trim().is_empty()
        {
            return Ok(name);
        }
    }
    use std::os::unix::fs::MetadataExt as _;
    let uid = std::fs::metadata("/proc/self")
        .context("neither USER nor LOGNAME is set and /proc/self cannot be read to find the uid")?
        .uid();
    Ok(format!("uid:{uid}"))
}

/// Opens the database the server uses. An operator command must never invent a database: a revocation
/// written into a fresh SQLite file would report success while the server (on PostgreSQL, or another data
/// directory) never sees it.
pub(super) async fn open_existing_store(config: &Config) -> anyhow::Result<Store> {
    if config.database.url.is_none() && !config.sqlite_path().exists() {
        bail!(
            "no aggregator database at {}: give the server's configuration (--config or GAIT_CONFIG), or its \
             --data-dir / --database-url",
            config.sqlite_path().display()
        );
    }
    Ok(Store::connect(&config.effective_database_url()).await?)
}

/// Whose certificate `serial` is: the agent named on the command line (checked against what the store saw),
/// else the one agent whose last hello presented it.
async fn agent_of_serial(
    store: &Store,
    serial: &CertSerial,
    named: Option<AgentKey>,
) -> anyhow::Result<AgentKey> {
    let seen: Vec<AgentKey> = store
        .agents_with_cert_serial(serial)
        .await?
        .into_iter()
        .map(|row| AgentKey::new(row.tenant, row.agent_id))
        .collect();
    match (named, seen.as_slice()) {
        (Some(named), []) => Ok(named),
        (Some(named), seen) if seen.contains(&named) => Ok(named),
        (Some(named), seen) => bail!(
            "certificate serial {serial} was presented by {}, not by {named}: check the serial",
            list(seen)
        ),
        (None, [one]) => Ok(one.clone()),
        (None, []) => bail!(
            "no agent this aggregator has seen presented certificate serial {serial} (a certificate that never \
             connected, or was since rotated): revoke with --cert <agent.pem>, or name its agent with --org, \
             --project, --env and --agent-id"
        ),
        (None, many) => bail!(
            "certificate serial {serial} was presented by several agents ({}): name the one to revoke with \
             --org, --project, --env and --agent-id",
            list(many)
        ),
    }
}

fn list(keys: &[AgentKey]) -> String {
    keys.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Flags of `pki rotate-ca`.
#[derive(Args, Debug)]
pub struct RotateCaArgs {
    /// Data directory holding pki/ [key: data_dir, env: GAIT_DATA_DIR, default: ./gait-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Finish the rotation: re-issue the server certificate from the new CA (presented with the new CA
    /// cross-signed by the old one) and delete the old CA key.
    #[arg(long)]
    pub finish: bool,
    /// Lifetime of the new CA in days (start only).
    #[arg(long, default_value_t = 3650)]
    pub ca_days: u32,
    /// Lifetime of the re-issued server certificate in days (--finish only).
    #[arg(long, default_value_t = 825)]
    pub server_days: u32,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `pki rotate-ca [--finish]`: the two phases of a CA rotation with overlap (see `pki::rotation`).
pub async fn rotate_ca(args: RotateCaArgs, mut config: Config) -> anyhow::Result<ExitCode> {
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate()?;
    let dir = config.pki_dir();
    let actor = operator()?;
    // The rotation goes into the audit log: refuse before touching the CA when the log's database is not there.
    let store = open_existing_store(&config).await?;
    let report = if args.finish {
        pki::rotate_ca_finish(&dir, args.server_days)?
    } else {
        pki::rotate_ca_start(&dir, args.ca_days)?
    };
    let phase = if args.finish { "finish" } else { "start" };
    gait_aggregator::enroll::audit::ca_rotated(
        &store,
        &format!("local:{actor}"),
        phase,
        &format!(
            "issuing CA `{}`, retired CA `{}`",
            report.issuing_ca, report.retired_ca
        ),
    )
    .await
    .context(
        "the CA was rotated but its audit entry could not be written; the rotation is in the aggregator's log \
         only",
    )?;
    store.close().await;
    if args.json {
        gait_runtime::outln!(
            "{}",
            serde_json::json!({
                "phase": phase, "issuing_ca": report.issuing_ca, "retired_ca": report.retired_ca,
                "by": actor,
            })
        );
    } else if args.finish {
        gait_runtime::outln!(
            "CA rotation finished: the server certificate is now issued by `{}` and presented with that CA \
             cross-signed by `{}`; the old CA key is deleted. Agents that still hold only the old CA connect \
             through the cross certificate and move to the new CA at their next renewal. Restart `gait-aggregator \
             serve`.",
            report.issuing_ca,
            report.retired_ca
        );
    } else {
        gait_runtime::outln!(
            "CA rotation started: `{}` issues from now on (enrollment, renewal, issue-agent); `{}` stays trusted. \
             Agents receive both CAs with their next renewal. Restart `gait-aggregator serve`, let agents renew, \
             then run `gait-aggregator pki rotate-ca --finish`.",
            report.issuing_ca,
            report.retired_ca
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `pki retire-ca`.
#[derive(Args, Debug)]
pub struct RetireCaArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Retire even though agents still hold certificates of the retired CA: they are refused from the
    /// aggregator's next start and must be re-enrolled (or re-issued with `pki issue-agent`).
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `pki retire-ca [--force]`: ends a finished rotation's overlap (see `pki::retire`). Refused with exit code 75
/// (`EX_TEMPFAIL`: retry once the agents renewed) while agents still hold the retired CA, unless `--force`.
pub async fn retire_ca(args: RetireCaArgs, config: Config) -> anyhow::Result<ExitCode> {
    let config = args.data.apply(config)?;
    let dir = config.pki_dir();
    let actor = operator()?;
    let store = open_existing_store(&config).await?;
    let result = pki::retire_ca(
        &store,
        &dir,
        &format!("local:{actor}"),
        args.force,
        unix_ms(),
    )
    .await;
    store.close().await;
    let report = match result {
        Ok(report) => report,
        Err(e) if e.is_still_held() => {
            if args.json
                && let pki::RetireError::StillHeld {
                    retired_ca,
                    holders,
                } = &e
            {
                gait_runtime::outln!(
                    "{}",
                    serde_json::json!({
                        "retired": false, "retired_ca": retired_ca,
                        "holders": holders.iter().map(holder_json).collect::<Vec<_>>(),
                    })
                );
            }
            gait_runtime::errln!("error: {e}");
            return Ok(ExitCode::from(gait_runtime::exit::TEMPFAIL));
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        gait_runtime::outln!(
            "{}",
            serde_json::json!({
                "retired": true, "retired_ca": report.retired_ca, "issuing_ca": report.issuing_ca,
                "forced": args.force, "by": actor,
                "cut_off": report.forced_past.iter().map(holder_json).collect::<Vec<_>>(),
            })
        );
    } else {
        gait_runtime::outln!(
            "retired CA `{}` removed: the aggregator trusts only `{}` and no longer presents the cross \
             certificate. Restart `gait-aggregator serve`; certificates of the retired CA are refused from then on.",
            report.retired_ca,
            report.issuing_ca
        );
        if !report.forced_past.is_empty() {
            gait_runtime::outln!(
                "cut off (--force): {}; re-enroll them with a join token or `pki issue-agent`",
                list_holders(&report.forced_past)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One agent holding the retired CA as a flat JSON object.
fn holder_json(h: &pki::RetiredCaHolder) -> serde_json::Value {
    serde_json::json!({
        "org": h.agent.tenant.org, "project": h.agent.tenant.project, "env": h.agent.tenant.env,
        "agent_id": h.agent.agent_id, "serial": h.cert_serial, "not_after_unix_ms": h.not_after_unix_ms,
        "issuer_known": h.issuer_known,
    })
}

fn list_holders(holders: &[pki::RetiredCaHolder]) -> String {
    holders
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
