//! `gait-agent run` configuration: one YAML file (`agent.yaml`) describing where the aggregator is, which
//! certificates and trust root to use, where the agent keeps its data and how big its outbox may grow.
//!
//! ```yaml
//! aggregator:
//!   address: aggregator.example:7443   # host:port of the aggregator's QUIC listener
//!   replicas: [agg-2.example:7443]      # more replicas of the deployment: spread over, failed over to
//!   server_name: aggregator.example     # name checked against its certificate (default "localhost")
//! tls:
//!   ca: pki/ca.pem                      # deployment CA that signed the aggregator's certificate
//!   cert: pki/agent.pem                 # this agent's certificate (its URI SAN is its identity)
//!   key: pki/agent.key                  # this agent's private key
//! trust:
//!   registry_public_keys: [keys/registry.pub]   # Ed25519 keys that may sign policy bundles
//! data_dir: data                        # holds agent.redb (outbox + bundle cache)
//! outbox: { max_records: 100000, max_bytes: 268435456 }
//! local_api: { listen: 127.0.0.1:7071, socket_path: /run/gait-agent/local-api.sock, socket_group: gait-apps }
//! poll: { wait_ms: 25000 }
//! gate: { signing_key: keys/trace_private.key }   # optional; default: generated in <data_dir>/keys/
//! # gate.rate_limit.max_keys: 1024                  # most rate-limit counters kept (see the gate docs)
//! ```
//!
//! Relative paths are resolved against the directory holding the file. After the file, environment
//! variables override single keys (`GAIT_AGENT_AGGREGATOR_ADDRESS`, `GAIT_AGENT_DATA_DIR`,
//! `GAIT_AGENT_LOCAL_API_LISTEN`); paths given there are used as they are. Unknown keys are errors, and
//! [`Config::validate`] names the dotted key of every problem it finds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gait_runtime::config::{EnvOverride, Invalid, apply_env};
use serde::{Deserialize, Serialize};

use crate::outbox::OutboxLimits;

/// Shortest long-poll the agent asks for.
pub const MIN_POLL_WAIT_MS: u32 = 1_000;
/// Longest long-poll the agent asks for.
pub const MAX_POLL_WAIT_MS: u32 = 120_000;
/// Most entries of `aggregator.replicas`.
pub const MAX_REPLICAS: usize = 16;

/// Default local API address.
pub const DEFAULT_LOCAL_API: &str = "127.0.0.1:7071";
/// Default mode of the local API's Unix socket: owner and group may connect.
pub const DEFAULT_SOCKET_MODE: &str = "0660";

/// Environment variables that override one key each: the variable, the dotted key, and how the value is read.
pub const ENV_OVERRIDES: [EnvOverride<Config>; 3] = [
    EnvOverride {
        var: "GAIT_AGENT_AGGREGATOR_ADDRESS",
        key: "aggregator.address",
        set: |c, v| {
            c.aggregator.address = v.to_owned();
            Ok(())
        },
    },
    EnvOverride {
        var: "GAIT_AGENT_DATA_DIR",
        key: "data_dir",
        set: |c, v| {
            c.data_dir = PathBuf::from(v);
            Ok(())
        },
    },
    EnvOverride {
        var: "GAIT_AGENT_LOCAL_API_LISTEN",
        key: "local_api.listen",
        set: |c, v| {
            c.local_api.listen = v.to_owned();
            Ok(())
        },
    },
];

/// The whole agent configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The aggregator this agent dials out to.
    pub aggregator: AggregatorConfig,
    /// Mutual-TLS material for the QUIC connection.
    pub tls: TlsConfig,
    /// Keys whose signatures make a policy bundle acceptable.
    pub trust: TrustConfig,
    /// Directory for the agent's database (`agent.redb`); created if missing. Default `data`.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Outbox quota.
    #[serde(default)]
    pub outbox: OutboxConfig,
    /// Loopback HTTP API for producers and `gait-agent status`.
    #[serde(default)]
    pub local_api: LocalApiConfig,
    /// Bundle long-poll.
    #[serde(default)]
    pub poll: PollConfig,
    /// Local gate decisions.
    #[serde(default)]
    pub gate: GateConfig,
    /// Gait artifacts the agent imports (`gait-agent push`, watched directories).
    #[serde(default)]
    pub capture: CaptureConfig,
}

/// Shortest `capture.poll_interval_ms`.
pub const MIN_CAPTURE_POLL_MS: u64 = 100;
/// Longest `capture.poll_interval_ms` (one hour).
pub const MAX_CAPTURE_POLL_MS: u64 = 3_600_000;

/// `capture.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Directories the daemon watches for Gait artifacts (runpacks, traces, regress results, JUnit reports),
    /// recursively; each new artifact is verified and enqueued once, by digest, across restarts. Default: none.
    pub watch: Vec<PathBuf>,
    /// How often the watched directories are scanned, in milliseconds. A file is imported once its size and
    /// modification time were the same in two scans in a row. Default 2000.
    pub poll_interval_ms: u64,
    /// Gait public key files (base64 Ed25519, as `gait keys init` writes them) that trace and runpack
    /// signatures are verified with, besides the agent's own trace key. A signature by any other key is
    /// reported `skipped` (its digest is still checked). Default: none.
    pub trace_public_keys: Vec<PathBuf>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            watch: Vec::new(),
            poll_interval_ms: 2_000,
            trace_public_keys: Vec::new(),
        }
    }
}

/// `gate.*`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GateConfig {
    /// Gait Ed25519 private key file that signs the trace of every local decision. Default: the pair
    /// `<data_dir>/keys/trace_private.key` / `trace_public.key`, generated on first start.
    pub signing_key: Option<PathBuf>,
    /// The bound on the rate-limit state.
    pub rate_limit: RateLimitConfig,
}

/// Most counters `gate.rate_limit.max_keys` may allow.
pub const MAX_RATE_LIMIT_KEYS: usize = 1_000_000;

/// `gate.rate_limit.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Most rate-limit counters (one per window, scope, bucket and tool/identity) the agent keeps. A new one
    /// beyond it evicts the least recently used counters below their limit, or, when every counter is at its
    /// limit, is refused (the request is blocked with `agent_rate_limit_state_full`). The counters' bytes are
    /// bounded too (4 MiB, a quarter of the state file's 16 MiB cap). Default 1024.
    pub max_keys: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            max_keys: crate::gate::ratelimit_bound::DEFAULT_MAX_KEYS,
        }
    }
}

/// `aggregator.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// `host:port` of the aggregator's QUIC listener; the host may be a name, an IPv4 or a bracketed IPv6
    /// address. Resolved again on every reconnect.
    pub address: String,
    /// More replicas of the same deployment (`host:port` each, at most 16): the agent starts at one of
    /// `address` and these chosen by its identity, so a fleet spreads over them, and moves to the next when a
    /// dial fails. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    /// TLS server name the aggregator's certificate must carry. Default `localhost`.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

/// `tls.*` (PEM files)
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA certificate(s) that issued the aggregator's certificate.
    pub ca: PathBuf,
    /// This agent's certificate (chain, leaf first); its `spiffe://` URI SAN is the agent's identity and
    /// tenancy scope.
    pub cert: PathBuf,
    /// This agent's private key (PKCS#8, SEC1 or PKCS#1 PEM).
    pub key: PathBuf,
}

/// `trust.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrustConfig {
    /// Public key files (Gait Ed25519 format) of the policy registry. A bundle is activated only if one of
    /// them signed it. At least one.
    pub registry_public_keys: Vec<PathBuf>,
}

/// `outbox.*`: the soft quota; the hard ceiling is twice each value (see the outbox module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Records waiting for acknowledgement above which `allow` records are shed. Default 100000.
    pub max_records: u64,
    /// Stored bytes above which `allow` records are shed. Default 268435456 (256 MiB).
    pub max_bytes: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        let d = OutboxLimits::default();
        OutboxConfig {
            max_records: d.max_records,
            max_bytes: d.max_bytes,
        }
    }
}

impl OutboxConfig {
    /// The limits handed to the outbox.
    pub fn limits(&self) -> OutboxLimits {
        OutboxLimits {
            max_records: self.max_records,
            max_bytes: self.max_bytes,
        }
    }
}

/// `local_api.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalApiConfig {
    /// Address of the local HTTP API over TCP; must be a loopback address. Port 0 picks a free port. Requests
    /// that append or decide need the bearer token. Default `127.0.0.1:7071`.
    pub listen: String,
    /// Whether the API is also served on a Unix socket (the primary transport: the socket file's owner, group
    /// and mode are the credential, no token needed). Default true.
    pub socket_enabled: bool,
    /// Path of the Unix socket. A socket file left by a crashed run is replaced at start; any other file there
    /// is an error. At most about 100 bytes (the kernel's limit). Default `<data_dir>/local-api.sock` (inside
    /// the 0700 data directory, so only the agent's user reaches it: put it elsewhere, e.g.
    /// `/run/gait-agent/local-api.sock`, to let a group connect).
    pub socket_path: Option<PathBuf>,
    /// Mode of the socket file, octal digits as a string (connecting needs write permission). Default `"0660"`.
    pub socket_mode: String,
    /// Group (name or numeric id) the socket file is given to, so its members may connect; the agent's user
    /// must belong to it. Default: the agent's own group.
    pub socket_group: Option<String>,
    /// Web origins (`scheme://host[:port]`, exactly as a browser sends `Origin`) whose requests are answered.
    /// Default none: a request carrying any `Origin` header — a web page's — is refused with 403.
    pub allowed_origins: Vec<String>,
    /// File holding the bearer token producers present to append records or ask for decisions (created,
    /// mode 0600, at first start). Default `<data_dir>/local-api.token`.
    pub token_file: Option<PathBuf>,
    /// Connections served at once; at the cap a newcomer closes the connection idle longest (one with a
    /// request in flight is never closed; when all are busy the newcomer is refused), so decisions keep being
    /// answered under a connection flood. Request bodies held in memory are bounded by `max_connections` × the API's
    /// body limit (about 2 MiB): about 2 GiB at the default. Default 1024.
    pub max_connections: usize,
    /// Milliseconds allowed for a request line and its headers (and for the next request on a kept-alive
    /// connection); a slower client is disconnected. Default 5000.
    pub header_timeout_ms: u64,
    /// Milliseconds allowed to read a request body and answer it; past it the answer is 408 and the connection
    /// closes. Default 30000.
    pub body_timeout_ms: u64,
    /// Milliseconds a connection may stay open with no request in flight. The header timeout also runs while a
    /// kept-alive connection waits for its next request, so such a connection closes after the shorter of the
    /// two. Default 60000.
    pub idle_timeout_ms: u64,
    /// Requests answered on one connection before it is closed. Default 1000.
    pub max_requests_per_connection: u64,
}

impl Default for LocalApiConfig {
    fn default() -> Self {
        LocalApiConfig {
            listen: DEFAULT_LOCAL_API.to_owned(),
            socket_enabled: true,
            socket_path: None,
            socket_mode: DEFAULT_SOCKET_MODE.to_owned(),
            socket_group: None,
            allowed_origins: Vec::new(),
            token_file: None,
            max_connections: 1024,
            header_timeout_ms: 5_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_requests_per_connection: 1_000,
        }
    }
}

impl LocalApiConfig {
    /// The parsed listen address (call after [`Config::validate`]).
    pub fn addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_listen(&self.listen).map_err(|m| ConfigError::single("local_api.listen", m))
    }

    /// The socket file's mode, parsed (call after [`Config::validate`]).
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        parse_mode(&self.socket_mode).map_err(|m| ConfigError::single("local_api.socket_mode", m))
    }

    /// The limits the local API server enforces (see [`gait_runtime::http`]).
    pub fn limits(&self) -> gait_runtime::http::Limits {
        gait_runtime::http::Limits {
            max_connections: self.max_connections,
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_requests_per_connection: self.max_requests_per_connection,
        }
    }
}

/// `poll.*`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PollConfig {
    /// How long the aggregator may hold a bundle long-poll, in milliseconds (1000..=120000). The agent
    /// waits this plus 10 s for the answer. Default 25000.
    pub wait_ms: u32,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig { wait_ms: 25_000 }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

fn default_server_name() -> String {
    "localhost".to_owned()
}

/// One validation problem at a dotted key (shared with the aggregator).
pub use gait_runtime::config::Problem;

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema (unknown key, wrong type, missing key).
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    /// The values parsed but do not work (from the file or the environment); every problem is listed.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

impl ConfigError {
    pub(crate) fn single(key: &str, message: String) -> Self {
        ConfigError::Invalid(Problem::new(key, message).into())
    }

    /// The problems found by validation (empty for read and parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(invalid) => invalid.problems(),
            _ => &[],
        }
    }
}

impl Config {
    /// Reads `path`, applies environment overrides, resolves relative paths and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_env(path, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with an explicit environment lookup (tests pass a closure over a map).
    pub fn load_with_env(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new(""));
        let mut config = Self::from_yaml(&text, base).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        // Every agent override is a plain string or path, so none can fail to parse; validate() checks them.
        apply_env(&mut config, &ENV_OVERRIDES, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses YAML text and resolves relative paths against `base`. Does not validate.
    pub fn from_yaml(text: &str, base: &Path) -> Result<Self, String> {
        let mut config: Config = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        config.resolve_paths(base);
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.tls.ca);
        fix(&mut self.tls.cert);
        fix(&mut self.tls.key);
        self.trust.registry_public_keys.iter_mut().for_each(fix);
        fix(&mut self.data_dir);
        if let Some(p) = self.gate.signing_key.as_mut() {
            fix(p);
        }
        if let Some(p) = self.local_api.token_file.as_mut() {
            fix(p);
        }
        if let Some(p) = self.local_api.socket_path.as_mut() {
            fix(p);
        }
        self.capture.watch.iter_mut().for_each(fix);
        self.capture.trace_public_keys.iter_mut().for_each(fix);
    }

    /// Checks every value; the error lists each problem with its dotted key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                message,
            })
        };
        if let Err(m) = parse_host_port(&self.aggregator.address) {
            bad("aggregator.address", m);
        }
        if self.aggregator.replicas.len() > MAX_REPLICAS {
            bad(
                "aggregator.replicas",
                format!(
                    "{} addresses; at most {MAX_REPLICAS}",
                    self.aggregator.replicas.len()
                ),
            );
        }
        for (i, replica) in self.aggregator.replicas.iter().enumerate() {
            if let Err(m) = parse_host_port(replica) {
                bad(&format!("aggregator.replicas[{i}]"), m);
            }
        }
        if rustls::pki_types::ServerName::try_from(self.aggregator.server_name.as_str()).is_err() {
            bad(
                "aggregator.server_name",
                format!(
                    "{:?} is not a DNS name or IP address",
                    self.aggregator.server_name
                ),
            );
        }
        for (key, path) in [
            ("tls.ca", &self.tls.ca),
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
        ] {
            if let Err(m) = check_file(path) {
                bad(key, m);
            }
        }
        if self.trust.registry_public_keys.is_empty() {
            bad(
                "trust.registry_public_keys",
                "list at least one registry public key file; without one no bundle can ever be trusted"
                    .to_owned(),
            );
        }
        for (i, path) in self.trust.registry_public_keys.iter().enumerate() {
            if let Err(m) = check_file(path) {
                bad(&format!("trust.registry_public_keys[{i}]"), m);
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            bad("data_dir", "must not be empty".to_owned());
        } else if self.data_dir.exists() && !self.data_dir.is_dir() {
            bad(
                "data_dir",
                format!("{} exists and is not a directory", self.data_dir.display()),
            );
        }
        if self.outbox.max_records == 0 {
            bad("outbox.max_records", "must be at least 1".to_owned());
        }
        if self.outbox.max_bytes < 64 * 1024 {
            bad(
                "outbox.max_bytes",
                format!("{} is too small; use at least 65536", self.outbox.max_bytes),
            );
        }
        for (i, origin) in self.local_api.allowed_origins.iter().enumerate() {
            if let Err(m) = check_origin(origin) {
                bad(&format!("local_api.allowed_origins[{i}]"), m);
            }
        }
        if let Err(m) = parse_listen(&self.local_api.listen) {
            bad("local_api.listen", m);
        }
        if let Err(m) = parse_mode(&self.local_api.socket_mode) {
            bad("local_api.socket_mode", m);
        }
        if self.local_api.socket_enabled {
            let path = self.api_socket_path();
            if path.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
                bad(
                    "local_api.socket_path",
                    format!(
                        "{} is {} bytes, over the {MAX_SOCKET_PATH_BYTES}-byte limit of a Unix socket \
                         path; choose a shorter path",
                        path.display(),
                        path.as_os_str().len()
                    ),
                );
            }
        }
        if self
            .local_api
            .socket_group
            .as_deref()
            .is_some_and(|g| g.trim().is_empty())
        {
            bad(
                "local_api.socket_group",
                "must not be empty; leave it out to keep the agent's own group".to_owned(),
            );
        }
        for (key, message) in self.local_api.limits().problems() {
            bad(&format!("local_api.{key}"), message);
        }
        if !(MIN_POLL_WAIT_MS..=MAX_POLL_WAIT_MS).contains(&self.poll.wait_ms) {
            bad(
                "poll.wait_ms",
                format!(
                    "{} is out of range {MIN_POLL_WAIT_MS}..={MAX_POLL_WAIT_MS}",
                    self.poll.wait_ms
                ),
            );
        }
        if let Some(path) = &self.gate.signing_key
            && let Err(m) = check_file(path)
        {
            bad("gate.signing_key", m);
        }
        if !(1..=MAX_RATE_LIMIT_KEYS).contains(&self.gate.rate_limit.max_keys) {
            bad(
                "gate.rate_limit.max_keys",
                format!(
                    "{} is out of range 1..={MAX_RATE_LIMIT_KEYS}",
                    self.gate.rate_limit.max_keys
                ),
            );
        }
        for (i, dir) in self.capture.watch.iter().enumerate() {
            if dir.as_os_str().is_empty() {
                bad(
                    &format!("capture.watch[{i}]"),
                    "must not be empty".to_owned(),
                );
            } else if dir.exists() && !dir.is_dir() {
                bad(
                    &format!("capture.watch[{i}]"),
                    format!("{} exists and is not a directory", dir.display()),
                );
            }
        }
        if !(MIN_CAPTURE_POLL_MS..=MAX_CAPTURE_POLL_MS).contains(&self.capture.poll_interval_ms) {
            bad(
                "capture.poll_interval_ms",
                format!(
                    "{} is out of range {MIN_CAPTURE_POLL_MS}..={MAX_CAPTURE_POLL_MS}",
                    self.capture.poll_interval_ms
                ),
            );
        }
        for (i, path) in self.capture.trace_public_keys.iter().enumerate() {
            let key = format!("capture.trace_public_keys[{i}]");
            match check_file(path) {
                Err(m) => bad(&key, m),
                Ok(()) => {
                    if let Err(e) = gait_canon::sign::load_public_key_file(path) {
                        bad(
                            &key,
                            format!("{}: not a Gait public key: {e}", path.display()),
                        );
                    }
                }
            }
        }
        Ok(Invalid::check(problems)?)
    }

    /// The local API's bearer token file (`local_api.token_file`, default `<data_dir>/local-api.token`).
    pub fn api_token_path(&self) -> PathBuf {
        self.local_api
            .token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::local_api::token::TOKEN_FILE))
    }

    /// The local API's Unix socket (`local_api.socket_path`, default `<data_dir>/local-api.sock`).
    pub fn api_socket_path(&self) -> PathBuf {
        self.local_api
            .socket_path
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::local_api::socket::SOCKET_FILE))
    }

    /// Path of the agent's database file.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("agent.redb")
    }
}

/// Splits `host:port` (IPv6 hosts in brackets) and checks both halves.
pub fn parse_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not host:port"))?;
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .ok_or_else(|| format!("{address:?} has an unclosed '['"))?,
        None if host.contains(':') => {
            return Err(format!(
                "{address:?}: put an IPv6 host in brackets, e.g. [::1]:7443"
            ));
        }
        None => host,
    };
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{address:?} has no valid port (1-65535)"))?;
    Ok((host.to_owned(), port))
}

fn parse_listen(listen: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|_| format!("{listen:?} is not ip:port"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "{listen} is not a loopback address; the local API must stay on 127.0.0.1 or [::1] (other hosts \
             would only need the bearer token)"
        ));
    }
    Ok(addr)
}

/// Longest Unix socket path, in bytes: `sun_path` holds 108 bytes on Linux (104 on the BSDs) with a NUL.
const MAX_SOCKET_PATH_BYTES: usize = 103;

/// A file mode written as octal digits (`"0660"`, `"660"`), at most `0777`.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.trim();
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!(
            "{text:?} is not an octal file mode; write it as a quoted string such as \"0660\""
        ));
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|e| format!("{text:?}: {e}"))?;
    if mode > 0o777 {
        return Err(format!(
            "{text:?} sets special bits; use permission bits only (at most \"0777\")"
        ));
    }
    Ok(mode)
}

fn check_file(path: &Path) -> Result<(), String> {
    if path.is_file() {
        Ok(())
    } else if path.exists() {
        Err(format!("not a regular file: {}", path.display()))
    } else {
        Err(format!("file not found: {}", path.display()))
    }
}

/// An origin as browsers send it: `http://` or `https://`, a host, an optional port, nothing else.
fn check_origin(origin: &str) -> Result<(), String> {
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(|| format!("{origin:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!(
            "{origin:?} must be scheme://host[:port] with no path, as a browser sends it in `Origin`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn write_files(dir: &Path) {
        for f in ["ca.pem", "agent.pem", "agent.key", "registry.pub"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
    }

    const MINIMAL: &str = "\
aggregator:
  address: agg.example:7443
tls:
  ca: ca.pem
  cert: agent.pem
  key: agent.key
trust:
  registry_public_keys: [registry.pub]
";

    #[test]
    fn a_minimal_file_gets_defaults_and_paths_relative_to_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load_with_env(&path, |_| None).unwrap();
        assert_eq!(c.aggregator.server_name, "localhost");
        assert_eq!(c.tls.cert, dir.path().join("agent.pem"));
        assert_eq!(
            c.trust.registry_public_keys,
            vec![dir.path().join("registry.pub")]
        );
        assert_eq!(c.data_dir, dir.path().join("data"));
        assert_eq!(c.local_api.listen, DEFAULT_LOCAL_API);
        assert_eq!(c.poll.wait_ms, 25_000);
        assert_eq!(c.outbox.limits(), OutboxLimits::default());
        assert_eq!(c.local_api.limits().max_connections, 1024);
        assert_eq!(c.local_api.limits().body_timeout, Duration::from_secs(30));
    }

    #[test]
    fn the_rate_limit_bound_defaults_to_1024_keys_and_zero_is_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, MINIMAL).unwrap();
        let c = Config::load_with_env(&path, |_| None).unwrap();
        assert_eq!(c.gate.rate_limit.max_keys, 1024);
        std::fs::write(
            &path,
            format!("{MINIMAL}gate:\n  rate_limit:\n    max_keys: 0\n"),
        )
        .unwrap();
        let err = Config::load_with_env(&path, |_| None).unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["gate.rate_limit.max_keys"]);
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, format!("{MINIMAL}poll:\n  wait_msec: 5\n")).unwrap();
        let err = Config::load_with_env(&path, |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("wait_msec"), "{err}");
    }

    #[test]
    fn validation_names_every_bad_dotted_key() {
        let dir = tempfile::tempdir().unwrap();
        let text = "\
aggregator: { address: 'no-port', replicas: ['agg-2:7443', 'agg-3'], server_name: 'bad name!' }
tls: { ca: ca.pem, cert: agent.pem, key: agent.key }
trust: { registry_public_keys: [a.pub, b.pub] }
outbox: { max_records: 0, max_bytes: 10 }
local_api: { listen: '0.0.0.0:7071', socket_mode: '0991', socket_group: '', socket_path: /a/path/far/too/long/for/a/unix/socket/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock, header_timeout_ms: 0, max_requests_per_connection: 0 }
poll: { wait_ms: 5 }
";
        std::fs::write(dir.path().join("ca.pem"), "x").unwrap();
        std::fs::write(dir.path().join("a.pub"), "x").unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, text).unwrap();
        let err = Config::load_with_env(&path, |_| None).unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "aggregator.address",
                "aggregator.replicas[1]",
                "aggregator.server_name",
                "tls.cert",
                "tls.key",
                "trust.registry_public_keys[1]",
                "outbox.max_records",
                "outbox.max_bytes",
                "local_api.listen",
                "local_api.socket_mode",
                "local_api.socket_path",
                "local_api.socket_group",
                "local_api.header_timeout_ms",
                "local_api.max_requests_per_connection",
                "poll.wait_ms",
            ]
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!(
                "tls.cert: file not found: {}",
                dir.path().join("agent.pem").display()
            )),
            "{msg}"
        );
    }

    #[test]
    fn environment_overrides_single_keys() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        let path = dir.path().join("agent.yaml");
        std::fs::write(&path, MINIMAL).unwrap();
        let env: HashMap<&str, &str> = HashMap::from([
            ("GAIT_AGENT_AGGREGATOR_ADDRESS", "[::1]:9000"),
            ("GAIT_AGENT_LOCAL_API_LISTEN", "127.0.0.1:0"),
        ]);
        let c = Config::load_with_env(&path, |k| env.get(k).map(|v| v.to_string())).unwrap();
        assert_eq!(c.aggregator.address, "[::1]:9000");
        assert_eq!(c.local_api.addr().unwrap().port(), 0);
        let env = HashMap::from([("GAIT_AGENT_LOCAL_API_LISTEN", "10.0.0.1:7071")]);
        let err = Config::load_with_env(&path, |k| env.get(k).map(|v| v.to_string()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("local_api.listen"), "{err}");
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("a.example:1").unwrap(),
            ("a.example".to_owned(), 1)
        );
        assert_eq!(
            parse_host_port("[::1]:7443").unwrap(),
            ("::1".to_owned(), 7443)
        );
        for bad in ["::1:7443", "a.example", ":80", "a:0", "a:70000", "[::1:80"] {
            assert!(parse_host_port(bad).is_err(), "{bad}");
        }
    }
    #[test]
    fn capture_keys_resolve_relative_paths_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write_files(dir.path());
        std::fs::create_dir(dir.path().join("gait-out")).unwrap();
        let key = gait_canon::sign::SigningKey::from_seed(&[7; 32]).public_key();
        std::fs::write(dir.path().join("gait.pub"), key.to_gait_public_key()).unwrap();
        let path = dir.path().join("agent.yaml");
        std::fs::write(
            &path,
            format!("{MINIMAL}capture:\n  watch: [gait-out]\n  trace_public_keys: [gait.pub]\n"),
        )
        .unwrap();
        let c = Config::load_with_env(&path, |_| None).unwrap();
        assert_eq!(c.capture.watch, vec![dir.path().join("gait-out")]);
        assert_eq!(
            c.capture.trace_public_keys,
            vec![dir.path().join("gait.pub")]
        );
        assert_eq!(c.capture.poll_interval_ms, 2_000);

        std::fs::write(dir.path().join("file"), "x").unwrap();
        std::fs::write(
            &path,
            format!(
                "{MINIMAL}capture:\n  watch: [file]\n  poll_interval_ms: 5\n  trace_public_keys: [agent.key, missing.pub]\n"
            ),
        )
        .unwrap();
        let err = Config::load_with_env(&path, |_| None).unwrap_err();
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "capture.watch[0]",
                "capture.poll_interval_ms",
                "capture.trace_public_keys[0]",
                "capture.trace_public_keys[1]"
            ]
        );
    }
}
