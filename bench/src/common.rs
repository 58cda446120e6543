//! Shared plumbing of the fleet benchmarks: the aggregator child process, certificate issuance for simulated
//! agents, the agent side of the exchange protocol, the HTTP API client, fresh PostgreSQL databases,
//! `/proc` readings and latency statistics.
#![allow(clippy::disallowed_methods)] // benchmark harness: spawns load generators freely and reads the clock

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use gait_aggregator::pki::identity::AgentToIssue;
use gait_aggregator::pki::{self, Validity};
use gait_store::AgentKey;
use gait_wire::{
    AgentMsg, AgentMsgV2, FrameDecoder, Hello, PROTOCOL_VERSION, PollBundle, ServerMsg, ServerMsgV2,
};
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, Connection as _};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdout, Command};

/// Server name the simulated agents check the aggregator's certificate against (a default SAN of `pki init`).
pub const SERVER_NAME: &str = "localhost";
/// Keep-alive of the simulated agents: the real agent's value.
pub const KEEP_ALIVE: Duration = gait_agent::daemon::KEEP_ALIVE;
/// Clock ticks per second of `/proc/<pid>/stat` CPU times (USER_HZ, 100 on every mainstream Linux build).
const USER_HZ: f64 = 100.0;

/// Options every subcommand shares.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Directory holding `gait-aggregator` and `gait-agent` (default: the directory of this executable,
    /// i.e. `target/release` after `cargo build --release`).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Parent of the run's temporary directories (aggregator data; default: the system temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Parent of the issued agent certificates (default: /dev/shm when present, so issuing thousands of
    /// certificates is not bound by fsync).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// Log filter for the aggregator child (`GAIT_LOG`); its log goes to `<data-dir>/aggregator.log`.
    #[arg(long, default_value = "warn")]
    pub aggregator_log: String,
    /// PostgreSQL server URL (e.g. `$(scripts/pg-test.sh url)`); a fresh database is created on it for the
    /// run and dropped afterwards. Default: SQLite in the aggregator's data directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Keep the temporary directories (and a PostgreSQL database) after the run, for inspection.
    #[arg(long)]
    pub keep: bool,
}

impl CommonArgs {
    /// Path of a workspace binary.
    pub fn bin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = match &self.bin_dir {
            Some(d) => d.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("executable directory")?
                .to_path_buf(),
        };
        let path = dir.join(name);
        ensure!(
            path.exists(),
            "{} not found; build it with `cargo build --release -p gait-aggregator -p gait-agent` or pass --bin-dir",
            path.display()
        );
        Ok(path)
    }

    /// A fresh temporary directory for aggregator data.
    pub fn temp_dir(&self, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
        let mut b = tempfile::Builder::new();
        b.prefix(prefix).disable_cleanup(self.keep);
        Ok(match &self.work_dir {
            Some(d) => b.tempdir_in(d)?,
            None => b.tempdir()?,
        })
    }

    /// A fresh temporary directory for certificates (tmpfs when available).
    pub fn cert_temp_dir(&self, prefix: &str) -> anyhow::Result<tempfile::TempDir> {
        let parent = match &self.cert_dir {
            Some(d) => d.clone(),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let mut b = tempfile::Builder::new();
        b.prefix(prefix).disable_cleanup(self.keep);
        Ok(b.tempdir_in(parent)?)
    }
}

/// The storage backend of a run.
pub enum Database {
    /// SQLite file in the aggregator's data directory.
    Sqlite,
    /// A database created for this run on a PostgreSQL server.
    Postgres {
        server_url: String,
        name: String,
        url: String,
        keep: bool,
    },
}

impl Database {
    /// SQLite, or a fresh database on the server `common.database_url` names.
    pub async fn create(common: &CommonArgs, purpose: &str) -> anyhow::Result<Self> {
        let Some(server_url) = &common.database_url else {
            return Ok(Database::Sqlite);
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let name = format!(
            "gait_bench_{purpose}_{}_{}",
            std::process::id(),
            nanos % 1_000_000_000
        );
        let mut admin = sqlx::PgConnection::connect(server_url)
            .await
            .with_context(|| format!("connect to {server_url}"))?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .with_context(|| format!("create database {name}"))?;
        admin.close().await?;
        let url = database_url_with_name(server_url, &name)?;
        Ok(Database::Postgres {
            server_url: server_url.clone(),
            name,
            url,
            keep: common.keep,
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Database::Sqlite => "sqlite",
            Database::Postgres { .. } => "postgres",
        }
    }

    /// The URL for `--database-url`, or `None` for the embedded SQLite default.
    pub fn url(&self) -> Option<&str> {
        match self {
            Database::Sqlite => None,
            Database::Postgres { url, .. } => Some(url),
        }
    }

    /// Drop the run's PostgreSQL database (unless `--keep`).
    pub async fn drop_database(self) -> anyhow::Result<()> {
        if let Database::Postgres {
            server_url,
            name,
            keep: false,
            ..
        } = self
        {
            let mut admin = sqlx::PgConnection::connect(&server_url).await?;
            sqlx::query(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await?;
            admin.close().await?;
        }
        Ok(())
    }
}

/// `server_url` with its database name replaced by `name` (query string kept).
fn database_url_with_name(server_url: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = match server_url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (server_url, String::new()),
    };
    let after_scheme = base.find("://").context("database url has no scheme")? + 3;
    let path_start = base[after_scheme..]
        .find('/')
        .map(|i| i + after_scheme)
        .unwrap_or(base.len());
    Ok(format!("{}/{name}{query}", &base[..path_start]))
}

/// A `gait-aggregator serve` child process.
pub struct AggregatorProc {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub pid: u32,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub token: String,
    pub data_dir: PathBuf,
}

impl AggregatorProc {
    /// Start `gait-aggregator serve` on `data_dir` and wait for its `serving:` line.
    pub async fn start(
        common: &CommonArgs,
        data_dir: &Path,
        db: &Database,
        quic: SocketAddr,
        http: SocketAddr,
    ) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("aggregator.log"))?;
        let mut cmd = Command::new(common.bin("gait-aggregator")?);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--quic-listen")
            .arg(quic.to_string())
            .arg("--http-listen")
            .arg(http.to_string())
            .env("GAIT_LOG", &common.aggregator_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        if let Some(url) = db.url() {
            cmd.arg("--database-url").arg(url);
        }
        let mut child = cmd.spawn().context("spawn gait-aggregator")?;
        let pid = child.id().context("aggregator pid")?;
        let mut stdout = BufReader::new(child.stdout.take().context("aggregator stdout")?);
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(120), stdout.read_line(&mut line))
            .await
            .context("aggregator did not report serving within 120 s")??;
        let Some(rest) = line.trim().strip_prefix("gait-aggregator serving: quic=") else {
            let _ = child.kill().await;
            let log = std::fs::read_to_string(data_dir.join("aggregator.log")).unwrap_or_default();
            bail!("aggregator did not start: {line:?}\n{}", tail(&log, 2000));
        };
        let (quic, http) = rest.split_once(" http=http://").context("serving line")?;
        let token = std::fs::read_to_string(data_dir.join(gait_aggregator::app::ADMIN_TOKEN_FILE))?
            .trim()
            .to_owned();
        Ok(Self {
            child,
            _stdout: stdout,
            pid,
            quic: quic.parse()?,
            http: http.parse()?,
            token,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Start on ephemeral ports.
    pub async fn start_ephemeral(
        common: &CommonArgs,
        data_dir: &Path,
        db: &Database,
    ) -> anyhow::Result<Self> {
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        Self::start(common, data_dir, db, any, any).await
    }

    /// Resident set size now, KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid, "VmRSS")
    }

    /// Peak resident set size, KiB.
    pub fn hwm_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid, "VmHWM")
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds_of(&self.pid.to_string())
    }

    /// SIGTERM, then wait for the exit (SIGKILL after `grace`). Returns how long the shutdown took.
    pub async fn terminate(mut self, grace: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await?;
        ensure!(status.success(), "kill -TERM {} failed", self.pid);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        Ok(started.elapsed())
    }

    /// SIGKILL (no shutdown, no close frames: agents find out from their idle timeout) and reap the process.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// The HTTP API client for this aggregator.
    pub fn api(&self) -> Api {
        Api {
            client: http_client(),
            base: format!("http://{}", self.http),
            token: self.token.clone(),
        }
    }

    /// The tail of the aggregator's log (for error messages).
    pub fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(self.data_dir.join("aggregator.log")).unwrap_or_default(),
            3000,
        )
        .to_owned()
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A real `gait-agent run` child process enrolled with `gait-aggregator pki issue-agent`, its local API on a
/// fixed loopback port.
pub struct AgentProc {
    child: Child,
    pub pid: u32,
    /// The local API address.
    pub api: SocketAddr,
    /// The directory `issue-agent` wrote (config, certificates; the data dir is `data/` inside it).
    pub dir: PathBuf,
    /// The tenant (org, project, env) it was enrolled in.
    tenant: (String, String, String),
    http: reqwest::Client,
}

impl AgentProc {
    /// Enrol agent `agent_id` of `tenant` (org, project, env) with `agg`, start it in `dir` and wait until it
    /// is connected.
    pub async fn start(
        common: &CommonArgs,
        agg: &AggregatorProc,
        tenant: (&str, &str, &str),
        agent_id: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let (org, project, env) = tenant;
        let out = Command::new(common.bin("gait-aggregator")?)
            .args(["pki", "issue-agent", "--org", org, "--project", project])
            .args(["--env", env, "--agent-id", agent_id])
            .arg("--data-dir")
            .arg(&agg.data_dir)
            .arg("--out")
            .arg(dir)
            .arg("--aggregator-address")
            .arg(agg.quic.to_string())
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "issue-agent: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let api = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(dir.join("agent.log"))?;
        let child = Command::new(common.bin("gait-agent")?)
            .arg("run")
            .arg("--config")
            .arg(dir.join("agent.yaml"))
            .env("GAIT_AGENT_LOCAL_API_LISTEN", api.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("spawn gait-agent")?;
        let pid = child.id().context("agent pid")?;
        let agent = Self {
            child,
            pid,
            api,
            dir: dir.to_path_buf(),
            tenant: (org.to_owned(), project.to_owned(), env.to_owned()),
            http: http_client(),
        };
        agent
            .wait_status(Duration::from_secs(60), |s| {
                s["connected"].as_bool() == Some(true)
            })
            .await
            .with_context(|| format!("agent did not connect; log:\n{}", agent.log_tail()))?;
        Ok(agent)
    }

    /// Publishes [`READS_POLICY`] to this agent's tenant through `agg` and waits (up to `timeout`) until the
    /// agent has activated it: the first bundle of the tenant, epoch 1. The error carries the agent's log.
    pub async fn activate_reads_policy(
        &self,
        agg: &AggregatorProc,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let (org, project, env) = &self.tenant;
        agg.api()
            .publish(org, project, env, "p.yaml", READS_POLICY)
            .await?;
        self.wait_status(timeout, |s| s["active_bundle"]["epoch"].as_u64() == Some(1))
            .await
            .with_context(|| {
                format!(
                    "agent did not activate the bundle; log:\n{}",
                    self.log_tail()
                )
            })?;
        Ok(())
    }

    /// Poll `GET /v1/status` until `ok` holds.
    pub async fn wait_status(
        &self,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let url = format!("http://{}/v1/status", self.api);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(resp) = self.http.get(&url).send().await
                && let Ok(v) = resp.json::<Value>().await
                && ok(&v)
            {
                return Ok(v);
            }
            ensure!(
                Instant::now() < deadline,
                "timed out after {timeout:?} polling {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The local API bearer token, when this agent build makes one (`data/local-api.token`).
    pub fn token(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("data").join("local-api.token"))
            .ok()
            .map(|t| t.trim().to_owned())
    }

    /// Resident set size now, KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        proc_status_kib(self.pid, "VmRSS")
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// SIGTERM, then wait for the exit (SIGKILL after `grace`).
    pub async fn terminate(mut self, grace: Duration) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        Ok(())
    }

    /// The tail of the agent's log (for error messages).
    pub fn log_tail(&self) -> String {
        tail(
            &std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default(),
            3000,
        )
        .to_owned()
    }
}

/// The policy the agent benches publish: reads are allowed, everything else blocked.
pub const READS_POLICY: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: allow-reads\n    \
                                priority: 10\n    effect: allow\n    match:\n      tool_names: [tool.read]\n";

/// A Gait intent request for `tool`.
pub fn intent(tool: &str) -> Value {
    json!({
        "schema_id": "gait.gate.intent_request",
        "schema_version": "1.0.0",
        "created_at": "2026-02-05T00:00:00Z",
        "producer_version": "gait-fleet-bench",
        "tool_name": tool,
        "args": {"path": "/tmp/out.txt"},
        "targets": [{"kind": "path", "value": "/tmp/out.txt"}],
        "arg_provenance": [{"arg_path": "$.path", "source": "user"}],
        "context": {"identity": "bench", "workspace": "/tmp/ws", "risk_class": "low"}
    })
}

/// A field of `/proc/<pid>/status` in KiB (e.g. `VmRSS`).
pub fn proc_status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))
        .with_context(|| format!("{field} missing in /proc/{pid}/status"))?;
    let value = line.split_whitespace().nth(1).context("status value")?;
    Ok(value.parse()?)
}

/// User + system CPU seconds of `/proc/<pid>/stat` (`pid` may be `self`).
pub fn cpu_seconds_of(pid: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("stat format")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command name: field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / USER_HZ)
}

/// CPU seconds per thread of `pid`: tid -> (thread name, user + system seconds).
pub fn thread_cpu(pid: u32) -> anyhow::Result<std::collections::HashMap<String, (String, f64)>> {
    let mut out = std::collections::HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = entry?.file_name().to_string_lossy().into_owned();
        let comm =
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap_or_default();
        if let Ok(secs) = cpu_seconds_of(&format!("{pid}/task/{tid}")) {
            out.insert(tid, (comm.trim().to_owned(), secs));
        }
    }
    Ok(out)
}

/// CPU seconds spent between two [`thread_cpu`] readings, summed per thread name (digits dropped, so
/// `sqlx-sqlite-worker-3` counts as `sqlx-sqlite-worker-`), largest first.
pub fn thread_cpu_delta(
    before: &std::collections::HashMap<String, (String, f64)>,
    after: &std::collections::HashMap<String, (String, f64)>,
) -> Vec<(String, f64)> {
    let mut by_name: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for (tid, (name, secs)) in after {
        let spent = secs - before.get(tid).map(|b| b.1).unwrap_or(0.0);
        let key: String = name.chars().filter(|c| !c.is_ascii_digit()).collect();
        *by_name.entry(key).or_default() += spent;
    }
    let mut v: Vec<(String, f64)> = by_name
        .into_iter()
        .filter(|(_, s)| *s >= 0.05)
        .map(|(n, s)| (n, round(s, 2)))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

/// UDP datagrams dropped because a socket receive buffer was full (`RcvbufErrors` of `/proc/net/snmp`,
/// whole network namespace).
pub fn udp_rcvbuf_errors() -> anyhow::Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (
        udp.next().context("Udp header")?,
        udp.next().context("Udp values")?,
    );
    let at = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .context("RcvbufErrors")?;
    Ok(values
        .split_whitespace()
        .nth(at)
        .context("RcvbufErrors value")?
        .parse()?)
}

/// Datagrams dropped per local UDP port on 127.0.0.1/0.0.0.0 sockets (`drops` column of `/proc/net/udp`).
pub fn udp_drops_by_port() -> anyhow::Result<std::collections::HashMap<u16, u64>> {
    let table = std::fs::read_to_string("/proc/net/udp")?;
    let mut out = std::collections::HashMap::new();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(drops)) = (cols.get(1), cols.last()) else {
            continue;
        };
        let Some((_, port)) = local.split_once(':') else {
            continue;
        };
        if let (Ok(port), Ok(drops)) = (u16::from_str_radix(port, 16), drops.parse::<u64>()) {
            *out.entry(port).or_default() += drops;
        }
    }
    Ok(out)
}

/// An HTTP client that lets go of an idle pooled connection well before the aggregator closes it (its
/// `http.idle_timeout_ms`, 60 s by default): reusing one the server is closing at that moment fails the request
/// with "connection reset", which ended a 50,000-agent run whose first connect took 55 s.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_default()
}

/// Sends `signal` (a name `kill` knows: `STOP`, `CONT`, …) to process `pid`.
pub async fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .await?;
    ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// The admin HTTP API of one aggregator.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// GET a path with the admin token; returns the JSON body of a 200.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "GET {path}: {status} {body}");
        Ok(body)
    }

    /// Publish one policy file for a scope; returns the answer (201 expected).
    pub async fn publish(
        &self,
        org: &str,
        project: &str,
        env: &str,
        name: &str,
        yaml: &str,
    ) -> anyhow::Result<Value> {
        let path = format!("/v1/orgs/{org}/projects/{project}/envs/{env}/bundles");
        self.send(
            reqwest::Method::POST,
            &path,
            &json!({ "policies": { name: yaml } }),
        )
        .await
    }

    /// `method` a path with a JSON body and the admin token; returns the JSON body of a 2xx answer.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Value> {
        let resp = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        ensure!(status.is_success(), "{method} {path}: {status} {body}");
        Ok(body)
    }

    /// The Prometheus metrics text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    /// One unlabelled metric value (0 when absent).
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        Ok(metric_value(&self.metrics().await?, name))
    }

    /// Checks that the agent at `agent` (its API path, `/v1/orgs/…/agents/<id>`) has exactly the `records`
    /// records its outbox made, the last one with seq `records` and hash `last_hash`. Returns the last stored
    /// record's row (`None` when it made none) and the number of gap rows recorded for it.
    pub async fn agent_records(
        &self,
        agent: &str,
        records: u64,
        last_hash: &[u8],
    ) -> anyhow::Result<(Option<Value>, u64)> {
        let first = self
            .get(&format!("{agent}/records?after=0&limit=1"))
            .await?;
        let total = first["total"].as_u64().context("records total")?;
        ensure!(
            total == records,
            "{agent}: {total} records stored, {records} made"
        );
        let gaps = self.get(&format!("{agent}/gaps")).await?;
        let gaps = gaps["gaps"].as_array().context("gaps")?.len() as u64;
        if records == 0 {
            return Ok((None, gaps));
        }
        let last = self
            .get(&format!("{agent}/records?after={}&limit=10", records - 1))
            .await?;
        let rows = last["records"].as_array().context("records")?;
        ensure!(
            rows.len() == 1,
            "{agent}: {} records after seq {}",
            rows.len(),
            records - 1
        );
        let row = rows[0].clone();
        ensure!(
            row["seq"].as_u64() == Some(records),
            "{agent}: last seq {}",
            row["seq"]
        );
        ensure!(
            row["hash"].as_str() == Some(to_hex(last_hash).as_str()),
            "{agent}: the last stored hash is not the agent's"
        );
        Ok((Some(row), gaps))
    }
}

/// Lower-case hex of `bytes` (how the API shows hashes).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sum of the samples of metric `name` in Prometheus text (labelled samples are added up; 0 when absent).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Create the aggregator's PKI in `<data_dir>/pki` (what `serve` would do on first start), so agent
/// certificates can be issued before the aggregator runs.
pub fn init_pki(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = data_dir.join("pki");
    pki::init(&dir, &pki::InitOptions::default())?;
    Ok(dir)
}

/// A simulated agent's identity and certificate files.
#[derive(Clone, Debug)]
pub struct AgentCreds {
    pub agent_id: String,
    pub dir: PathBuf,
}

impl AgentCreds {
    /// The agent's QUIC client configuration (built exactly as the real agent builds it).
    pub fn client_config(&self) -> anyhow::Result<quinn::ClientConfig> {
        self.client_config_with(KEEP_ALIVE)
    }

    /// [`AgentCreds::client_config`] with another keep-alive interval than the agent's.
    pub fn client_config_with(&self, keep_alive: Duration) -> anyhow::Result<quinn::ClientConfig> {
        Ok(gait_agent::tls::client_config(
            &self.dir.join(pki::CA_CERT_FILE),
            &self.dir.join(pki::AGENT_CERT_FILE),
            &self.dir.join(pki::AGENT_KEY_FILE),
            keep_alive,
        )?)
    }
}

/// The tenancy every simulated agent of one benchmark shares.
pub type Scope = gait_store::Tenant;

/// Issue `n` agent certificates (`<prefix>-00000`, ...) with the CA in `pki_dir`, on all cores.
pub fn issue_fleet(
    pki_dir: &Path,
    out: &Path,
    scope: &Scope,
    prefix: &str,
    n: usize,
) -> anyhow::Result<Vec<AgentCreds>> {
    let threads = std::thread::available_parallelism()
        .map(|p| p.get())
        .unwrap_or(2)
        .min(n.max(1));
    let started = Instant::now();
    let chunks: Vec<Vec<usize>> = (0..threads)
        .map(|t| (t..n).step_by(threads).collect())
        .collect();
    let mut all: Vec<AgentCreds> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|idx| {
                s.spawn(move || -> anyhow::Result<Vec<AgentCreds>> {
                    idx.into_iter()
                        .map(|i| {
                            let agent_id = format!("{prefix}-{i:05}");
                            let id =
                                AgentToIssue::new(AgentKey::new(scope.clone(), agent_id.parse()?));
                            let dir = out.join(&agent_id);
                            pki::issue_agent(pki_dir, &id, &dir, Validity::days(2))?;
                            Ok(AgentCreds { agent_id, dir })
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("issuing thread panicked"))?
            })
            .collect::<anyhow::Result<Vec<Vec<AgentCreds>>>>()
    })?
    .into_iter()
    .flatten()
    .collect();
    all.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    eprintln!(
        "issued {n} agent certificates in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(all)
}

/// Receive/send buffer of each shared client socket. A real agent owns its socket; here a few hundred simulated
/// agents share one, so its buffer is sized like the aggregator's, or the bench's own sockets drop the
/// handshake replies of a reconnecting fleet and the bench measures itself.
pub const CLIENT_UDP_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// `n` QUIC client endpoints on 127.0.0.1 that simulated agents share (one UDP socket each).
pub fn client_endpoints(n: usize) -> anyhow::Result<Vec<quinn::Endpoint>> {
    use socket2::{Domain, Protocol, Socket, Type};
    (0..n.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            // Best effort: the kernel caps both at net.core.{r,w}mem_max.
            let _ = socket.set_recv_buffer_size(CLIENT_UDP_BUFFER_BYTES);
            let _ = socket.set_send_buffer_size(CLIENT_UDP_BUFFER_BYTES);
            socket.set_nonblocking(true)?;
            let addr: std::net::SocketAddr = "127.0.0.1:0".parse()?;
            socket.bind(&addr.into())?;
            let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
            Ok(quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket.into(),
                runtime,
            )?)
        })
        .collect()
}

/// Dial the aggregator as one agent.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> anyhow::Result<quinn::Connection> {
    Ok(endpoint.connect_with(config, addr, SERVER_NAME)?.await?)
}

/// Frame an agent message.
pub fn frame(msg: AgentMsgV2) -> anyhow::Result<Vec<u8>> {
    Ok(gait_wire::encode_frame(&AgentMsg::V2(msg))?)
}

/// The `Hello` a fresh simulated agent sends.
pub fn hello_frame() -> anyhow::Result<Vec<u8>> {
    frame(AgentMsgV2::Hello(Hello {
        agent_version: "gait-fleet-bench".into(),
        protocol_version: PROTOCOL_VERSION,
        active: None,
        received: None,
        outbox_depth: 0,
        shed_total: 0,
        last_seq: 0,
        // One id for every simulated agent: each has its own certificate, and a redial is the same instance.
        instance_id: gait_wire::InstanceId([0xbe; 16]),
    }))
}

/// A `PollBundle` frame.
pub fn poll_frame(have_epoch: u64, wait_ms: u32) -> anyhow::Result<Vec<u8>> {
    frame(AgentMsgV2::PollBundle(PollBundle {
        have_epoch,
        wait_ms,
    }))
}

/// Tells the aggregator bundle `epoch` is active, on a unidirectional stream (as the agent does).
pub async fn report_applied(
    conn: &quinn::Connection,
    epoch: u64,
    digest: gait_wire::Digest,
) -> anyhow::Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let report = frame(AgentMsgV2::BundleReport(gait_wire::BundleReport {
        received: None,
        applied: Some(gait_wire::BundleRef {
            epoch,
            digest,
            since_unix_ms: now_ms,
        }),
        refusal: None,
    }))?;
    let mut send = conn.open_uni().await?;
    send.write_all(&report).await?;
    send.finish()?;
    Ok(())
}

/// One exchange: a new bidirectional stream, one request frame, one reply.
pub async fn request(conn: &quinn::Connection, frame: &[u8]) -> anyhow::Result<ServerMsgV2> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(frame).await?;
    send.finish()?;
    let bytes = recv
        .read_to_end(gait_wire::MAX_FRAME_LEN as usize + gait_wire::FRAME_HEADER_LEN)
        .await?;
    let mut decoder = FrameDecoder::new(gait_wire::MAX_FRAME_LEN);
    decoder.push(&bytes);
    let body = decoder
        .next_frame()?
        .context("the aggregator closed the stream without a reply")?;
    match gait_wire::decode_server_msg(&body)? {
        ServerMsg::V2(msg) => Ok(msg),
        ServerMsg::V1(old) => bail!("the aggregator answered with an envelope V1 message: {old:?}"),
    }
}

/// Connects and says hello as the real agent does: the handshake within
/// [`gait_agent::daemon::CONNECT_TIMEOUT`], then the `Welcome` within [`gait_agent::daemon::REPLY_TIMEOUT`].
pub async fn dial_like_agent(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    hello_frame: &[u8],
) -> anyhow::Result<(quinn::Connection, gait_wire::Welcome)> {
    let conn = tokio::time::timeout(
        gait_agent::daemon::CONNECT_TIMEOUT,
        dial(endpoint, config, addr),
    )
    .await??;
    let welcome =
        tokio::time::timeout(gait_agent::daemon::REPLY_TIMEOUT, hello(&conn, hello_frame))
            .await??;
    Ok((conn, welcome))
}

/// Whether a failed [`dial_like_agent`] was the aggregator refusing the attempt (busy), as the agent reads it.
pub fn refused(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<quinn::ConnectionError>()
        .is_some_and(gait_agent::daemon::is_refused)
}

/// Send `Hello` and expect `Welcome`.
pub async fn hello(conn: &quinn::Connection, hello: &[u8]) -> anyhow::Result<gait_wire::Welcome> {
    match request(conn, hello).await? {
        ServerMsgV2::Welcome(w) => Ok(w),
        other => bail!("Hello answered with {other:?}"),
    }
}

/// Nearest-rank percentiles of a latency sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Percentiles {
    pub fn of(sample: &[Duration]) -> Self {
        if sample.is_empty() {
            return Self::default();
        }
        let mut v = sample.to_vec();
        v.sort_unstable();
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        let total: Duration = v.iter().sum();
        Self {
            n: v.len(),
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: v[v.len() - 1],
            mean: total / u32::try_from(v.len()).unwrap_or(u32::MAX),
        }
    }

    /// Milliseconds, as JSON.
    pub fn json_ms(&self) -> Value {
        json!({
            "n": self.n, "p50": round(ms(self.p50), 1), "p90": round(ms(self.p90), 1), "p99": round(ms(self.p99), 1),
            "max": round(ms(self.max), 1), "mean": round(ms(self.mean), 1),
        })
    }

    /// `p50 .. / p99 .. / max ..` in milliseconds.
    pub fn human_ms(&self) -> String {
        format!(
            "p50 {:.0} ms / p99 {:.0} ms / max {:.0} ms",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// Milliseconds with a fraction.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Round to `digits` decimals (keeps the JSON line readable).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Print the machine-readable summary line, then the human one.
pub fn emit(summary: &Value, human: &str) {
    println!("{summary}");
    println!("{human}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced_and_query_kept() {
        let u = database_url_with_name("postgres://postgres@127.0.0.1:55432/postgres", "x")
            .unwrap_or_default();
        assert_eq!(u, "postgres://postgres@127.0.0.1:55432/x");
        let u =
            database_url_with_name("postgres://u@h/db?sslmode=disable", "y").unwrap_or_default();
        assert_eq!(u, "postgres://u@h/y?sslmode=disable");
        let u = database_url_with_name("postgres://u@h", "z").unwrap_or_default();
        assert_eq!(u, "postgres://u@h/z");
    }

    #[test]
    fn metric_values_are_read_and_summed_over_labels() {
        let text = "# HELP x\nfoo_total 3\nfoo_total_other 9\nbar{a=\"1\"} 2\nbar{a=\"2\"} 5\n";
        assert_eq!(metric_value(text, "foo_total"), 3.0);
        assert_eq!(metric_value(text, "bar"), 7.0);
        assert_eq!(metric_value(text, "baz"), 0.0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let sample: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(&sample);
        assert_eq!(p.p50, Duration::from_millis(50));
        assert_eq!(p.p99, Duration::from_millis(99));
        assert_eq!(p.max, Duration::from_millis(100));
    }
}
