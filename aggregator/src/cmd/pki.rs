//! Operator subcommands other than `serve`: PKI management, publishing and listing agents over the HTTP API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use gait_store::{Revocation, Store};

use gait_aggregator::app::{ADMIN_TOKEN_FILE, ServeConfig};
use gait_aggregator::clock::unix_ms;
use gait_aggregator::pki::identity::AgentIdentity;
use gait_aggregator::pki::{self, InitOptions, Validity};
use gait_aggregator::registry::REGISTRY_PUB_FILE;

/// Where the data directory is and which database it uses.
#[derive(Args, Debug, Clone)]
pub struct DataDirArgs {
    /// Data directory of the aggregator (holds pki/, keys/, admin.token and the SQLite database).
    #[arg(long, default_value = "./gait-data", env = "GAIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL when the aggregator runs on PostgreSQL; default SQLite in the data directory.
    #[arg(long, env = "GAIT_DATABASE_URL")]
    pub database_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct PkiInitArgs {
    #[arg(long, default_value = "./gait-data", env = "GAIT_DATA_DIR")]
    pub data_dir: PathBuf,
    /// SPIFFE trust domain written into every agent identity.
    #[arg(long, default_value = pki::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// DNS names / IPs agents use to reach the aggregator (repeatable).
    #[arg(long = "server-name", default_values_t = vec!["localhost".to_string(), "127.0.0.1".to_string()])]
    pub server_names: Vec<String>,
    /// Replace an existing CA (every issued agent certificate stops working).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct IssueAgentArgs {
    #[arg(long, default_value = "./gait-data", env = "GAIT_DATA_DIR")]
    pub data_dir: PathBuf,
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

#[derive(Args, Debug)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
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

/// How to reach the HTTP API.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of the aggregator's HTTP API.
    #[arg(
        long,
        default_value = "http://127.0.0.1:7080",
        env = "GAIT_AGGREGATOR_URL"
    )]
    pub server: String,
    /// File holding the admin bearer token.
    #[arg(
        long,
        default_value = "./gait-data/admin.token",
        env = "GAIT_TOKEN_FILE"
    )]
    pub token_file: PathBuf,
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub org: String,
    #[arg(long)]
    pub project: String,
    #[arg(long)]
    pub env: String,
    /// Gait policy YAML file(s) to put in the bundle (repeatable); stored under their file names.
    #[arg(long = "policy", required = true)]
    pub policies: Vec<PathBuf>,
    /// Seconds an agent may enforce without contact before it is stale.
    #[arg(long)]
    pub max_offline_seconds: Option<u64>,
    /// What a stale agent does: keep (enforce the cached bundle) or fail_closed (block everything).
    #[arg(long)]
    pub on_stale: Option<String>,
    /// Seconds the bundle may be activated after signing.
    #[arg(long)]
    pub validity_seconds: Option<u64>,
    /// Print the server's JSON answer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct AgentsArgs {
    #[command(flatten)]
    pub api: ApiArgs,
    #[arg(long)]
    pub org: String,
    #[arg(long)]
    pub project: Option<String>,
    #[arg(long)]
    pub env: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn pki_init(args: PkiInitArgs) -> anyhow::Result<ExitCode> {
    let opts = InitOptions {
        trust_domain: args.trust_domain,
        server_names: args.server_names,
        force: args.force,
        ..Default::default()
    };
    let dir = args.data_dir.join("pki");
    let report = pki::init(&dir, &opts)?;
    println!("CA created for trust domain {}", report.trust_domain);
    println!("  ca:     {}", report.ca_cert_path.display());
    println!("  server: {}", report.server_cert_path.display());
    Ok(ExitCode::SUCCESS)
}

pub fn issue_agent(args: IssueAgentArgs) -> anyhow::Result<ExitCode> {
    let pki_dir = args.data_dir.join("pki");
    let id = AgentIdentity::for_issuance("", &args.org, &args.project, &args.env, &args.agent_id);
    let issued = pki::issue_agent(&pki_dir, &id, &args.out, Validity::days(args.days))?;
    let registry_pub = args.data_dir.join("keys").join(REGISTRY_PUB_FILE);
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
        println!(
            "{}",
            serde_json::json!({
                "serial": issued.serial_hex, "uri": issued.uri, "not_after": issued.not_after.unix_timestamp(),
                "cert": issued.cert_path, "key": issued.key_path, "ca": issued.ca_path, "config": yaml_path,
            })
        );
    } else {
        println!("agent certificate issued: {}", issued.uri);
        println!(
            "  serial {}  (revoke with: gait-aggregator pki revoke --serial {})",
            issued.serial_hex, issued.serial_hex
        );
        println!(
            "  files in {}: agent.pem agent.key ca.pem agent.yaml{}",
            args.out.display(),
            if trust_line { " registry.pub" } else { "" }
        );
        if !trust_line {
            println!(
                "  note: {} does not exist yet (start `gait-aggregator serve` once), copy it into {} before starting the agent",
                registry_pub.display(),
                args.out.display()
            );
        }
        println!("  run it: gait-agent run --config {}", yaml_path.display());
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

pub async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let serial = match (&args.cert, &args.serial) {
        (Some(path), _) => pki::cert_serial_hex(path)?,
        (None, Some(s)) => {
            if !pki::identity::is_serial_hex(s) {
                bail!("--serial `{s}` is not a hexadecimal certificate serial");
            }
            pki::identity::normalize_serial_hex(s)
        }
        (None, None) => bail!("give --cert <agent.pem> or --serial <hex>"),
    };
    let (org, project, env, agent_id) = match &args.cert {
        Some(path) => {
            let der = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let id = pem_identity(&der).unwrap_or_default();
            (id.0, id.1, id.2, id.3)
        }
        None => Default::default(),
    };
    let config = ServeConfig {
        database_url: args.data.database_url,
        ..ServeConfig::embedded(args.data.data_dir)
    };
    std::fs::create_dir_all(&config.data_dir)?;
    let store = Store::connect(&config.effective_database_url()).await?;
    store
        .revoke(
            &Revocation {
                cert_serial: serial.clone(),
                tenant: gait_store::Tenant { org, project, env },
                agent_id,
                reason: args.reason.clone(),
            },
            unix_ms(),
        )
        .await?;
    println!("revoked certificate serial {serial}; running aggregators refuse it within seconds");
    Ok(ExitCode::SUCCESS)
}

/// Tenancy of a PEM agent certificate, for the revocation record (best effort).
fn pem_identity(pem: &[u8]) -> Option<(String, String, String, String)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let der = CertificateDer::from_pem_slice(pem).ok()?;
    let id = gait_aggregator::pki::identity::identity_from_cert_der(&der).ok()?;
    Some((id.org, id.project, id.env, id.agent_id))
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| {
        format!("reading the admin token {} (written by `gait-aggregator serve` into <data-dir>/{ADMIN_TOKEN_FILE}; pass --token-file)", path.display())
    })?;
    Ok(token.trim().to_owned())
}

pub async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let mut policies = BTreeMap::new();
    for path in &args.policies {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: not a file name", path.display()))?
            .to_owned();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading policy {}", path.display()))?;
        if policies.insert(name.clone(), text).is_some() {
            bail!("two policies are named {name}; file names must be unique in a bundle");
        }
    }
    let mut body = serde_json::json!({ "policies": policies });
    if let Some(v) = args.max_offline_seconds {
        body["max_offline_seconds"] = v.into();
    }
    if let Some(v) = &args.on_stale {
        body["on_stale"] = v.clone().into();
    }
    if let Some(v) = args.validity_seconds {
        body["validity_seconds"] = v.into();
    }
    let url = format!(
        "{}/v1/orgs/{}/projects/{}/envs/{}/bundles",
        args.api.server.trim_end_matches('/'),
        args.org,
        args.project,
        args.env
    );
    let (status, answer) = call(&args.api, reqwest::Method::POST, &url, Some(body)).await?;
    if args.json {
        println!("{answer}");
    } else if status.is_success() {
        println!(
            "published epoch {} for {}/{}/{}: digest {}",
            answer["epoch"],
            args.org,
            args.project,
            args.env,
            answer["digest"].as_str().unwrap_or("?")
        );
    }
    if !status.is_success() {
        eprintln!(
            "error: publish refused ({status}): {}",
            answer["error"]["message"].as_str().unwrap_or("no message")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn agents(args: AgentsArgs) -> anyhow::Result<ExitCode> {
    let mut base = format!(
        "{}/v1/orgs/{}/agents?limit=5000",
        args.api.server.trim_end_matches('/'),
        args.org
    );
    for (k, v) in [("project", &args.project), ("env", &args.env)] {
        if let Some(v) = v {
            base.push_str(&format!("&{k}={v}"));
        }
    }
    // Follow the pages until the server returns no cursor.
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let url = match &after {
            Some(cursor) => format!("{base}&after={cursor}"),
            None => base.clone(),
        };
        let (status, page) = call(&args.api, reqwest::Method::GET, &url, None).await?;
        if !status.is_success() {
            eprintln!(
                "error: ({status}): {}",
                page["error"]["message"].as_str().unwrap_or("no message")
            );
            return Ok(ExitCode::from(1));
        }
        all.extend(page["agents"].as_array().cloned().unwrap_or_default());
        match page["next_after"].as_str() {
            Some(next) if Some(next) != after.as_deref() => after = Some(next.to_owned()),
            _ => break,
        }
    }
    let answer = serde_json::json!({ "agents": all });
    if args.json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<16} {:<10} {:<22} {:<9} {:>7} {:>7}",
        "AGENT", "PROJECT/ENV", "VERSION", "ADDRESS", "SEEN(s)", "ACTIVE", "RECV"
    );
    let now = unix_ms();
    for a in answer["agents"].as_array().into_iter().flatten() {
        let seen = a["last_seen_unix_ms"]
            .as_i64()
            .map(|t| ((now - t) / 1000).to_string())
            .unwrap_or_default();
        println!(
            "{:<24} {:<16} {:<10} {:<22} {:<9} {:>7} {:>7}",
            a["agent_id"].as_str().unwrap_or(""),
            format!(
                "{}/{}",
                a["project"].as_str().unwrap_or(""),
                a["env"].as_str().unwrap_or("")
            ),
            a["agent_version"].as_str().unwrap_or(""),
            a["remote_addr"].as_str().unwrap_or(""),
            seen,
            a["active_bundle"]["epoch"]
                .as_u64()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
            a["received_bundle"]["epoch"]
                .as_u64()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "-".into()),
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn call(
    api: &ApiArgs,
    method: reqwest::Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
    let token = read_token(&api.token_file)?;
    let client = reqwest::Client::new();
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.with_context(|| format!("cannot reach the aggregator at {url} (is `gait-aggregator serve` running? set --server)"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .context("reading the aggregator's answer")?;
    let value = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text }));
    Ok((status, value))
}
