//! Harness for the end-to-end tests: real `gait-aggregator` and `gait-agent` processes on 127.0.0.1, driven
//! through their command lines, HTTP APIs and signals.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Environment variable that tells [`bin`] the binaries were just built by the caller (`scripts/test.sh` runs
/// `cargo test --workspace --no-run` first), so the harness uses them without running cargo itself.
pub const PREBUILT_ENV: &str = "GAIT_E2E_PREBUILT";

/// Path of a workspace binary. Unless [`PREBUILT_ENV`] is `1` and both binaries exist, the first call in a test process makes sure both
/// binaries are fresh by running `cargo test --workspace --no-run --locked`: the same package selection as the
/// suite's own `cargo test --workspace`, hence the same feature unification. The nested cargo gets the
/// environment of the shell, not the test process's (`CARGO_PKG_*`, `CARGO_MANIFEST_DIR`, `OUT_DIR` … that
/// cargo sets for a running test), so it does not see a different build than the outer one.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/debug/deps/<test-exe> -> target/debug
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let prebuilt = ["gait-agent", "gait-aggregator"]
            .iter()
            .all(|name| dir.join(name).is_file());
        if prebuilt && std::env::var(PREBUILT_ENV).as_deref() == Ok("1") {
            return dir;
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut command = Command::new(cargo);
        command.args(["test", "--workspace", "--no-run", "--locked", "--quiet"]);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            let set_by_cargo_for_this_test = (key.starts_with("CARGO_")
                && !["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_INCREMENTAL"]
                    .contains(&key.as_ref())
                && ![
                    "CARGO_BUILD_",
                    "CARGO_TERM_",
                    "CARGO_NET_",
                    "CARGO_HTTP_",
                    "CARGO_REGISTRIES_",
                    "CARGO_PROFILE_",
                ]
                .iter()
                .any(|p| key.starts_with(p)))
                || key == "OUT_DIR";
            if set_by_cargo_for_this_test {
                command.env_remove(key.as_ref());
            }
        }
        let status = command.status().expect("run cargo test --no-run");
        assert!(
            status.success(),
            "building gait-agent and gait-aggregator failed"
        );
        dir
    });
    dir.join(name)
}

/// A free TCP port on 127.0.0.1 at the time of the call. Racy by nature — any process may take the port before
/// the caller binds it — so the harness itself never uses it: processes bind port 0 and report their address.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A command for a workspace binary with no `GAIT_*` variable inherited from the environment running the
/// tests (a `GAIT_DATABASE_URL` or `GAIT_LOG_FORMAT` there would silently change what a test runs against).
pub fn hermetic(name: &str) -> Command {
    let mut cmd = Command::new(bin(name));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GAIT_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// How long a harness wait allows for something that normally takes about a second. The suite runs on small
/// machines shared with other builds (load 10+ on two cores), where a reconnect or a process start can take many
/// times its usual duration; a generous bound costs nothing when things work and only turns a real hang into a
/// failure.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Spawns `make()`'s command with stdout piped and returns it with its first stdout line once that line starts
/// with `prefix` (the rest of the line is returned). The line is read on its own thread, so a process that prints
/// nothing within [`PATIENCE`] is killed instead of hanging the test; that happens on loaded machines, so the
/// start is tried twice.
pub fn spawn_until_line(
    mut make: impl FnMut() -> Command,
    prefix: &str,
) -> anyhow::Result<(Child, String)> {
    let mut failures = Vec::new();
    for _ in 0..2 {
        let mut child = make()
            .stdout(Stdio::piped())
            .spawn()
            .context("spawning a helper process")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        match rx.recv_timeout(PATIENCE) {
            Ok(Ok(line)) if line.trim().starts_with(prefix) => {
                let rest = line.trim()[prefix.len()..].to_owned();
                return Ok((child, rest));
            }
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("a helper process printed no `{prefix}` line: {outcome:?}");
                failures.push(format!("{outcome:?}"));
            }
        }
    }
    bail!("the helper process never printed its `{prefix}` line: {failures:?}")
}

/// The real OpenID provider the OIDC tests run (the npm `oidc-provider` package, `tests/oidc/provider.js`), on a
/// loopback port of its own choosing; killed on drop.
pub struct OidcProvider {
    child: Child,
    /// Its issuer URL (`http://127.0.0.1:<port>/...`), as it printed it.
    pub issuer: String,
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    /// `tests/oidc`: the provider's script and packages.
    pub fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
    }

    /// Whether node and the provider's packages are there (running `npm ci` if only the packages are missing).
    /// `false` means the calling test `test` should skip, with a loud message; under `CI=true` it fails instead.
    pub fn ready(test: &str) -> bool {
        if !Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but `node` is not installed: .ci/run installs it (Debian nodejs + npm)"
            );
            eprintln!(
                "\n\n!!!! SKIPPED {test}: `node` is not installed, so the real OpenID provider cannot run.\n\
                 !!!! Install Node.js 20+ and npm, then `npm ci` in tests/oidc (scripts/test.sh does it).\n\n"
            );
            return false;
        }
        if !Self::dir().join("node_modules/oidc-provider").is_dir() {
            let status = Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(Self::dir())
                .status()
                .expect("run npm ci in tests/oidc");
            assert!(status.success(), "npm ci in tests/oidc failed");
        }
        true
    }

    /// Starts the provider with its signing keys in `keys` and waits (bounded, retried once:
    /// [`spawn_until_line`]) for its `issuer=` line.
    /// Its stderr goes to `<keys>.stderr.log`, whose tail a failed start reports.
    pub fn start(keys: &Path) -> anyhow::Result<Self> {
        let log = keys.with_extension("stderr.log");
        let started = spawn_until_line(
            || {
                let mut cmd = Command::new("node");
                cmd.arg(Self::dir().join("provider.js"))
                    .arg("--keys-dir")
                    .arg(keys);
                match std::fs::File::create(&log) {
                    Ok(file) => cmd.stderr(file),
                    Err(_) => cmd.stderr(Stdio::null()),
                };
                cmd
            },
            "issuer=",
        );
        let (child, issuer) = started.with_context(|| {
            let stderr = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
            format!(
                "starting node tests/oidc/provider.js; its stderr ({}) ends:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })?;
        Ok(Self { child, issuer })
    }
}

/// Poll `f` until it returns `Some`, or fail after `timeout` with `what`.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `signal` to the process in `child`, if any, and reaps it; `child` is left empty.
fn kill(child: &mut Option<Child>, signal: &str) {
    let Some(mut child) = child.take() else {
        return;
    };
    let _ = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// A running aggregator process.
pub struct Aggregator {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub token: String,
    /// Extra `serve` arguments, kept across [`Aggregator::restart`].
    pub extra_args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Aggregator {
    /// Start on `data_dir` with ephemeral ports.
    pub fn start(data_dir: &Path, database_url: Option<&str>) -> anyhow::Result<Self> {
        Self::start_on(
            data_dir,
            database_url,
            "127.0.0.1:0".parse()?,
            "127.0.0.1:0".parse()?,
        )
    }

    /// Start on fixed addresses (used to restart on the same ports).
    pub fn start_on(
        data_dir: &Path,
        database_url: Option<&str>,
        quic: SocketAddr,
        http: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::start_with(data_dir, database_url, quic, http, &[])
    }

    /// Start with extra `serve` arguments (e.g. `--reconnect-rate 1`).
    pub fn start_with(
        data_dir: &Path,
        database_url: Option<&str>,
        quic: SocketAddr,
        http: SocketAddr,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("aggregator.log"))?;
        let mut cmd = hermetic("gait-aggregator");
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--quic-listen")
            .arg(quic.to_string())
            .arg("--http-listen")
            .arg(http.to_string())
            .env("GAIT_LOG", "info,gait_aggregator=debug")
            .env("GAIT_LOG_FORMAT", "text")
            // Runpack calls are matched to decisions within a second instead of a minute.
            .env("GAIT_CALL_MERGE_LAG_SECONDS", "1")
            .stdout(Stdio::piped())
            .stderr(log_file);
        if let Some(url) = database_url {
            cmd.arg("--database-url").arg(url);
        }
        cmd.args(extra_args);
        let mut child = cmd.spawn().context("spawn gait-aggregator")?;
        let stdout = child.stdout.take().context("aggregator stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(rest) = line.trim().strip_prefix("gait-aggregator serving: quic=") else {
            kill(&mut Some(child), "-9");
            let log = std::fs::read_to_string(data_dir.join("aggregator.log")).unwrap_or_default();
            bail!("aggregator did not start: {line:?}\n{log}");
        };
        let (quic, http) = rest.split_once(" http=http://").context("serving line")?;
        let token = std::fs::read_to_string(data_dir.join("admin.token"))?
            .trim()
            .to_owned();
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            database_url: database_url.map(str::to_owned),
            quic: quic.parse()?,
            http: http.parse()?,
            token,
            extra_args: extra_args.iter().map(|a| (*a).to_owned()).collect(),
            child: Some(child),
            log: data_dir.join("aggregator.log"),
        })
    }

    /// The aggregator's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Graceful stop (SIGTERM).
    pub fn stop(&mut self) {
        kill(&mut self.child, "-TERM");
    }

    /// Crash stop (SIGKILL).
    pub fn kill9(&mut self) {
        kill(&mut self.child, "-9");
    }

    /// Start again on the same data directory and ports.
    ///
    /// The old process has exited (and released its ports) when [`Aggregator::stop`] returns, so the first
    /// attempt normally binds; further attempts, for up to [`PATIENCE`], cover a port that another process on the
    /// machine picked as an ephemeral port in between.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let extra: Vec<String> = self.extra_args.clone();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let mut last = None;
        let started =
            wait_for(
                PATIENCE,
                "aggregator restarted on its ports",
                || match Self::start_with(
                    &self.data_dir,
                    self.database_url.as_deref(),
                    self.quic,
                    self.http,
                    &extra,
                ) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        last = Some(e);
                        None
                    }
                },
            );
        match started {
            Ok(n) => {
                *self = n;
                Ok(())
            }
            Err(e) => Err(match last {
                Some(last) => last.context(e),
                None => e,
            }),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Publish policy files (name -> YAML) for a scope; returns the server's JSON answer and status.
    pub fn publish(
        &self,
        org: &str,
        project: &str,
        env: &str,
        policies: &[(&str, &str)],
    ) -> anyhow::Result<(u16, Value)> {
        let policies: serde_json::Map<String, Value> = policies
            .iter()
            .map(|(n, y)| ((*n).to_owned(), Value::String((*y).to_owned())))
            .collect();
        http_json(
            "POST",
            &self.url(&format!(
                "/v1/orgs/{org}/projects/{project}/envs/{env}/bundles"
            )),
            Some(&self.token),
            Some(json!({ "policies": policies })),
        )
    }

    /// The `action` of every audit log entry, in log order (`GET /v1/audit/entries` with the admin token).
    pub fn audit_actions(&self) -> anyhow::Result<Vec<(String, Value)>> {
        let (status, page) = self.get("/v1/audit/entries?limit=1000")?;
        anyhow::ensure!(status == 200, "audit entries: {status} {page}");
        Ok(page["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["action"].as_str().unwrap_or_default().to_owned(),
                    e.clone(),
                )
            })
            .collect())
    }

    /// `method` a `/v1` path with the admin token and a JSON body; the answer of a 2xx, else an error naming the
    /// status and the answer.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, answer) = http_json(method, &self.url(path), Some(&self.token), body)?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        Ok(answer)
    }

    /// Pushes a policy version of `org` to the registry (file name `base.yaml`); returns its digest.
    pub fn push_policy(&self, org: &str, yaml: &str, message: &str) -> anyhow::Result<String> {
        let v = self.call(
            "POST",
            &format!("/v1/orgs/{org}/policies"),
            Some(json!({"name": "base.yaml", "policy": yaml, "message": message})),
        )?;
        Ok(v["digest"].as_str().context("push: no digest")?.to_owned())
    }

    /// `gait-aggregator <args…> --server <this> --token-file <its admin token>`: an operator command against
    /// this aggregator, ready for more arguments.
    pub fn operator_command(&self, args: &[&str]) -> Command {
        let mut cmd = hermetic("gait-aggregator");
        cmd.args(args)
            .arg("--server")
            .arg(self.url(""))
            .arg("--token-file")
            .arg(self.data_dir.join("admin.token"));
        cmd
    }

    /// GET a `/v1` path with the admin token.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        http_json("GET", &self.url(path), Some(&self.token), None)
    }

    /// The agents of `org` as the aggregator lists them.
    pub fn agents(&self, org: &str) -> anyhow::Result<Vec<Value>> {
        let (status, v) = self.get(&format!("/v1/orgs/{org}/agents"))?;
        anyhow::ensure!(status == 200, "list agents: {status} {v}");
        Ok(v["agents"].as_array().cloned().unwrap_or_default())
    }

    /// The running aggregator's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every committed record of one agent but its trace key announcements (`agent.trace_key`, which every
    /// agent writes first at its first start and after a key rotation): the records its producers and decisions
    /// wrote. [`Aggregator::all_records`] includes them.
    pub fn records(
        &self,
        org: &str,
        project: &str,
        env: &str,
        agent: &str,
    ) -> anyhow::Result<Vec<Value>> {
        let mut all = self.all_records(org, project, env, agent)?;
        all.retain(|r| r["kind"] != "agent.trace_key");
        Ok(all)
    }

    /// Every committed record of one agent.
    pub fn all_records(
        &self,
        org: &str,
        project: &str,
        env: &str,
        agent: &str,
    ) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut after = 0u64;
        loop {
            let (status, v) = self.get(&format!(
                "/v1/orgs/{org}/projects/{project}/envs/{env}/agents/{agent}/records?after={after}&limit=10000"
            ))?;
            anyhow::ensure!(status == 200, "records: {status} {v}");
            let page = v["records"].as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                return Ok(out);
            }
            after = page.last().and_then(|r| r["seq"].as_u64()).unwrap_or(after);
            out.extend(page);
        }
    }

    /// The value of one series of the aggregator's `/metrics` (e.g.
    /// `gait_aggregator_connections_refused_total{stage="revoked"}`); 0 while the series has not been created.
    pub fn metric(&self, series: &str) -> anyhow::Result<u64> {
        let (status, body) = self.get("/metrics")?;
        anyhow::ensure!(status == 200, "metrics: {status} {body}");
        let text = body.as_str().context("metrics are text")?;
        Ok(text
            .lines()
            .find_map(|l| {
                let value = l.strip_prefix(series)?.strip_prefix(' ')?;
                value.trim().parse::<f64>().ok()
            })
            .map_or(0, |v| v as u64))
    }
}

impl Drop for Aggregator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A finished command's exit code, stdout and stderr, for assertion messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A minimal HTTP/1.1 JSON client over std (blocking tests need no async runtime).
pub fn http_json(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    use std::io::{Read as _, Write as _};
    let rest = url.strip_prefix("http://").context("only http:// URLs")?;
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream =
        std::net::TcpStream::connect(host).with_context(|| format!("connect {host}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("http response")?;
    let status: u16 = head.split_whitespace().nth(1).context("status")?.parse()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    Ok((status, value))
}

/// Writes `request` (a whole HTTP/1.1 request asking for `connection: close`) to `stream`, reads the answer to
/// its end and returns the status and the body as JSON (`Null` when it is not JSON): for requests the typed
/// client [`http_json`] cannot send (odd headers, a Unix socket). The caller sets the read timeout.
pub fn raw_exchange(
    mut stream: impl std::io::Read + std::io::Write,
    request: &str,
) -> anyhow::Result<(u16, Value)> {
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status: u16 = answer
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let json = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(json).unwrap_or(Value::Null)))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// An enrolled agent (certificate + config), optionally running.
pub struct Agent {
    pub dir: PathBuf,
    pub org: String,
    pub project: String,
    pub env: String,
    pub id: String,
    pub api: SocketAddr,
    child: Option<Child>,
}

impl Agent {
    /// Issue a certificate for the agent with the aggregator's CA and write its config into `dir`.
    pub fn enroll(
        agg: &Aggregator,
        dir: &Path,
        org: &str,
        project: &str,
        env: &str,
        id: &str,
    ) -> anyhow::Result<Self> {
        let out = hermetic("gait-aggregator")
            .args([
                "pki",
                "issue-agent",
                "--org",
                org,
                "--project",
                project,
                "--env",
                env,
                "--agent-id",
                id,
            ])
            .arg("--data-dir")
            .arg(&agg.data_dir)
            .arg("--out")
            .arg(dir)
            .arg("--aggregator-address")
            .arg(agg.quic.to_string())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "issue-agent: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Port 0: the agent binds a free port itself and logs it (see `Agent::start`); a port chosen here and
        // bound later could be taken in between by any other process on the machine.
        let api: SocketAddr = "127.0.0.1:0".parse()?;
        let yaml = std::fs::read_to_string(dir.join("agent.yaml"))?
            .replace("127.0.0.1:7071", &api.to_string());
        std::fs::write(dir.join("agent.yaml"), yaml)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            org: org.into(),
            project: project.into(),
            env: env.into(),
            id: id.into(),
            api,
            child: None,
        })
    }

    /// A second agent using this agent's certificate, key and configuration from `dir`, with its own data
    /// directory there (the configuration's relative `data_dir`): another instance of the same identity.
    pub fn same_certificate_in(&self, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        for name in [
            "agent.pem",
            "agent.key",
            "ca.pem",
            "registry.pub",
            "agent.yaml",
        ] {
            let from = self.dir.join(name);
            if from.is_file() {
                std::fs::copy(&from, dir.join(name))?;
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            org: self.org.clone(),
            project: self.project.clone(),
            env: self.env.clone(),
            id: self.id.clone(),
            api: "127.0.0.1:0".parse()?,
            child: None,
        })
    }

    /// Start the daemon and wait for its local API.
    ///
    /// The agent listens on an ephemeral port and names it in its `gait-agent started` log line, which is read
    /// from this start's part of the log only, so [`Agent::api`] is this process's API, never a port another
    /// process took or a previous run's.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let log_path = self.dir.join("agent.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let from = log.metadata()?.len();
        let child = hermetic("gait-agent")
            .arg("run")
            .arg("--config")
            .arg(self.dir.join("agent.yaml"))
            .arg("--log-format")
            .arg("text")
            .env("GAIT_AGENT_LOG", "info,gait_agent=debug")
            .env("GAIT_AGENT_LOCAL_API_LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let api = wait_for(PATIENCE, "agent started", || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(exit)) = child.try_wait()
            {
                return Some(Err(anyhow::anyhow!("agent exited: {exit}")));
            }
            let bytes = std::fs::read(&log_path).ok()?;
            let text = String::from_utf8_lossy(bytes.get(usize::try_from(from).ok()?..)?);
            started_api(&text).map(Ok)
        })
        .and_then(|r| r)
        .with_context(|| format!("agent {} log:\n{}", self.id, self.log()))?;
        self.api = api;
        let url = format!("http://{}/healthz", self.api);
        wait_for(PATIENCE, "agent local API", || {
            http_json("GET", &url, None, None)
                .ok()
                .filter(|(s, _)| *s == 200)
        })
        .with_context(|| format!("agent {} log:\n{}", self.id, self.log()))?;
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        kill(&mut self.child, "-TERM");
    }

    pub fn kill9(&mut self) {
        kill(&mut self.child, "-9");
    }

    /// The agent's `/v1/status`.
    pub fn status(&self) -> anyhow::Result<Value> {
        let (s, v) = http_json("GET", &format!("http://{}/v1/status", self.api), None, None)?;
        anyhow::ensure!(s == 200, "status {s}: {v}");
        Ok(v)
    }

    /// Connection attempts that have ended since the process started (`reconnects` in its status): the anchor
    /// for "it stays disconnected" checks — wait until it has tried and failed N more times.
    pub fn reconnects(&self) -> anyhow::Result<u64> {
        self.status()?["reconnects"]
            .as_u64()
            .context("status has no reconnects counter")
    }

    /// Epoch of the active bundle, if any.
    pub fn active_epoch(&self) -> Option<u64> {
        self.status().ok()?["active_bundle"]["epoch"].as_u64()
    }

    /// Waits (up to [`PATIENCE`]) until the active bundle is `epoch`; `what` names the wait in the error.
    pub fn wait_active_epoch(&self, epoch: u64, what: &str) -> anyhow::Result<()> {
        wait_for(PATIENCE, what, || {
            (self.active_epoch() == Some(epoch)).then_some(())
        })
    }

    /// Waits (up to [`PATIENCE`]) until the agent's status says it is connected to its aggregator; `what` names
    /// the wait in the error.
    pub fn wait_connected(&self, what: &str) -> anyhow::Result<()> {
        wait_for(PATIENCE, what, || {
            (self.status().ok()?["connected"] == true).then_some(())
        })
    }

    /// The local API token the agent made at first start (`data/local-api.token` next to its config).
    pub fn api_token(&self) -> anyhow::Result<String> {
        let path = self.dir.join("data").join("local-api.token");
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_owned())
    }

    /// Append a record through the local API; returns its seq (None when shed).
    pub fn append(&self, class: &str, kind: &str, payload: Value) -> anyhow::Result<Option<u64>> {
        let token = self.api_token()?;
        let (s, v) = http_json(
            "POST",
            &format!("http://{}/v1/records", self.api),
            Some(&token),
            Some(json!({ "class": class, "kind": kind, "payload": payload })),
        )?;
        anyhow::ensure!(s == 200 || s == 201, "append {s}: {v}");
        Ok(v["seq"].as_u64())
    }
}

/// The local API address in a complete (newline-terminated) `gait-agent started … local_api=<addr>` log line;
/// a line still being written could hold a truncated port.
fn started_api(log: &str) -> Option<SocketAddr> {
    let complete = &log[..log.rfind('\n')?];
    let line = complete
        .lines()
        .find(|l| l.contains("gait-agent started"))?;
    let rest = &line[line.find("local_api=")? + "local_api=".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A small valid Gait policy for tests.
pub const POLICY_V1: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: allow-reads\n    priority: 10\n    effect: allow\n    match:\n      tool_names: [tool.read]\n";
/// A second version of it.
pub const POLICY_V2: &str = "schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: block\nrules:\n  - name: allow-reads\n    priority: 10\n    effect: allow\n    match:\n      tool_names: [tool.read, tool.list]\n";
