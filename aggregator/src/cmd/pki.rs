//! `gait-aggregator pki`: create the deployment CA, issue agent certificates, revoke them. Every one reads the
//! data directory (and, for `revoke`, the database) from the same configuration as `serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use gait_aggregator::clock::unix_ms;
use gait_aggregator::config::Config;
use gait_store::{Revocation, Store};

use super::DataArgs;
use gait_aggregator::pki::identity::AgentIdentity;
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

/// Flags of `pki issue-agent`.
#[derive(Args, Debug)]
pub struct IssueAgentArgs {
    /// Data directory holding pki/ [key: data_dir, env: GAIT_DATA_DIR, default: ./gait-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Organisation of the agent.
    #[arg(long)]
    pub org: String,
    /// Project of the agent.
    #[arg(long)]
    pub project: String,
    /// Environment of the agent (e.g. prod, staging, ci).
    #[arg(long)]
    pub env: String,
    /// Agent id, unique within the environment.
    #[arg(long)]
    pub agent_id: String,
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
    /// The agent certificate (PEM) to revoke.
    #[arg(long, conflicts_with = "serial", required_unless_present = "serial")]
    pub cert: Option<PathBuf>,
    /// Serial number (hex) of the certificate to revoke.
    #[arg(long)]
    pub serial: Option<String>,
    /// Why (recorded with the revocation).
    #[arg(long, default_value = "unspecified")]
    pub reason: String,
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

/// Issues an agent certificate and writes a ready `agent.yaml` next to it.
pub fn issue_agent(args: IssueAgentArgs, config: Config) -> anyhow::Result<ExitCode> {
    let data_dir = args.data_dir.clone().unwrap_or(config.data_dir);
    let pki_dir = data_dir.join("pki");
    let id = AgentIdentity::for_issuance("", &args.org, &args.project, &args.env, &args.agent_id);
    let issued = pki::issue_agent(&pki_dir, &id, &args.out, Validity::days(args.days))?;
    let registry_pub = data_dir.join("keys").join(REGISTRY_PUB_FILE);
    let trust_line = if registry_pub.exists() {
        std::fs::copy(&registry_pub, args.out.join(REGISTRY_PUB_FILE))
            .with_context(|| format!("copying {}", registry_pub.display()))?;
        true
    } else {
        false
    };
    let yaml = agent_yaml(&args.aggregator_address);
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
            "  serial {}  (revoke with: gait-aggregator pki revoke --serial {})",
            issued.serial_hex,
            issued.serial_hex
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

fn agent_yaml(address: &str) -> String {
    format!(
        "# gait-agent configuration written by `gait-aggregator pki issue-agent`.\n\
         # Paths are relative to this file.\n\
         aggregator:\n  address: \"{address}\"\n  server_name: localhost\n\
         tls:\n  ca: ca.pem\n  cert: agent.pem\n  key: agent.key\n\
         trust:\n  registry_public_keys:\n    - registry.pub\n\
         data_dir: data\n\
         local_api:\n  listen: \"127.0.0.1:7071\"\n"
    )
}

/// Records a revocation in the database the server uses; refuses to create a database that does not exist.
pub async fn revoke(args: RevokeArgs, config: Config) -> anyhow::Result<ExitCode> {
    let config = args.data.apply(config)?;
    let serial = match (&args.cert, &args.serial) {
        (Some(path), _) => pki::cert_serial_hex(path)?,
        (None, Some(s)) => s.clone(),
        (None, None) => bail!("give --cert <agent.pem> or --serial <hex>"),
    };
    let serial = gait_store::CertSerial::parse(&serial)
        .with_context(|| format!("--serial `{serial}` is not a certificate serial"))?;
    let agent = match &args.cert {
        Some(path) => {
            let der = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            pem_identity(&der)
        }
        None => None,
    };
    // An operator command must never invent a database: a revocation written into a fresh SQLite file
    // would report success while the server (on PostgreSQL, or another data directory) never sees it.
    if config.database.url.is_none() && !config.sqlite_path().exists() {
        bail!(
            "no aggregator database at {}: give the server's configuration (--config or GAIT_CONFIG), or its \
             --data-dir / --database-url",
            config.sqlite_path().display()
        );
    }
    let store = Store::connect(&config.effective_database_url()).await?;
    store
        .revoke(
            &Revocation {
                cert_serial: serial.clone(),
                agent,
                reason: args.reason.clone(),
            },
            unix_ms(),
        )
        .await?;
    gait_runtime::outln!(
        "revoked certificate serial {serial}; running aggregators refuse it within seconds"
    );
    Ok(ExitCode::SUCCESS)
}

/// Tenancy of a PEM agent certificate, for the revocation record (best effort).
fn pem_identity(pem: &[u8]) -> Option<gait_store::AgentKey> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let der = CertificateDer::from_pem_slice(pem).ok()?;
    let id = gait_aggregator::pki::identity::identity_from_cert_der(&der).ok()?;
    id.typed().ok().map(|(key, _)| key)
}
