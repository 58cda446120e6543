//! The aggregator's configuration: one optional YAML file (`aggregator.yaml`) read by every subcommand, so
//! `serve`, `migrate`, `pki`, `publish` and `agents` always agree on the data directory and the database.
//!
//! ```yaml
//! data_dir: /var/lib/gait-aggregator        # SQLite database, pki/, keys/, admin.token
//! database:
//!   url: postgres://gait@db.internal/gait   # absent = SQLite file in data_dir
//! quic:
//!   listen: 0.0.0.0:7443                    # UDP address agents connect to
//!   udp_buffer_bytes: 8388608
//!   reconnect_rate: 1000                    # until a handshake rate is measured under load
//!   max_handshakes_in_flight: 128           # more wait (16 per slot, 2 s), then are refused
//!   session_tickets: true
//! http:
//!   listen: 0.0.0.0:7080                    # operator HTTP API; HTTPS unless on a loopback address
//!   tls:
//!     enabled: true                         # absent: HTTPS off loopback, plain HTTP on loopback
//!     cert_file: /etc/gait/api.pem          # default: <data_dir>/pki/server.pem (the deployment PKI's)
//!     key_file: /etc/gait/api.key           # default: <data_dir>/pki/server.key
//! ingest:
//!   max_record_payload_bytes: 1048576       # larger records are refused (agents quarantine them)
//! pki:
//!   trust_domain: gait.local                # used when the CA is created
//!   server_names: [localhost, 127.0.0.1]
//! shutdown: { grace_seconds: 10 }
//! auth:
//!   oidc:                                   # operators' bearer JWTs; off unless issuer is set
//!     issuer: https://idp.example.com/realms/ops
//!     audience: gait-aggregator
//!     groups_claim: groups                  # jwks_url / jwks_file / ca_file / algorithms: see docs/enterprise/oidc.md
//! audit:                                    # the tamper-evident audit log
//!   origin: gait-aggregator/gait.local      # default: gait-aggregator/<pki.trust_domain>
//!   checkpoint_interval_seconds: 60
//! analysis:
//!   production_envs: [prod, production, prd]   # environments that count as production in a family's blast radius
//!   call_merge_lag_seconds: 60              # longest wait before decisions are matched to runpack calls
//! approvals:                                # approval policies kept equal to this list at every start
//!   policies:                               # fields: docs/enterprise/approvals.md
//!     - { name: drops, org: acme, project: payments, tools: [db.*], quorum: 2, groups: [security, payments-team] }
//! enroll:                                   # join tokens (`join-token create`) and certificate renewal
//!   max_token_ttl_seconds: 604800           # longest join token lifetime (7 days)
//!   certificate_validity_seconds: 7776000   # enrolled/renewed certificates (90 days; renewed at 1/3 left)
//! client:                                   # where `publish` and `agents` reach the API
//!   server: https://localhost:7080          # default: http(s)://<http.listen> (localhost for loopback)
//!   token_file: /var/lib/gait-aggregator/admin.token   # default: <data_dir>/admin.token
//!   ca_file: /var/lib/gait-aggregator/pki/ca.pem       # default: <data_dir>/pki/ca.pem
//! ```
//!
//! Order of precedence, lowest first: built-in defaults (embedded single-machine mode, so no file is needed),
//! the file, `GAIT_*` environment variables ([`ENV_OVERRIDES`], one key each), command-line flags. Relative
//! paths in the file are resolved against the directory holding it. Unknown keys are errors, and
//! [`Config::validate`] names the dotted key of every problem it finds.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gait_runtime::config::{EnvOverride, Invalid, apply_env, parse_into};
use serde::{Deserialize, Serialize};

use crate::ingest::DEFAULT_RECONNECT_RATE;
use crate::pki::DEFAULT_TRUST_DOMAIN;
use crate::pki::identity::validate_trust_domain;

/// SQLite database file name inside the data directory when no database URL is configured.
pub const SQLITE_FILE: &str = "aggregator.db";

/// Name of the admin token file inside the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Default [`QuicConfig::udp_buffer_bytes`]: 8 MiB.
pub const DEFAULT_UDP_BUFFER_BYTES: usize = 8 << 20;

/// Environment variables that override one key each: the variable, the dotted key, and how the value is read.
pub const ENV_OVERRIDES: [EnvOverride<Config>; 12] = [
    EnvOverride {
        var: "GAIT_DATA_DIR",
        key: "data_dir",
        set: |c, v| {
            c.data_dir = PathBuf::from(v);
            Ok(())
        },
    },
    EnvOverride {
        var: "GAIT_DATABASE_URL",
        key: "database.url",
        set: |c, v| {
            c.database.url = Some(v.to_owned());
            Ok(())
        },
    },
    EnvOverride {
        var: "GAIT_QUIC_LISTEN",
        key: "quic.listen",
        set: |c, v| parse_into(&mut c.quic.listen, v, "an ip:port address"),
    },
    EnvOverride {
        var: "GAIT_UDP_BUFFER_BYTES",
        key: "quic.udp_buffer_bytes",
        set: |c, v| parse_into(&mut c.quic.udp_buffer_bytes, v, "a byte count"),
    },
    EnvOverride {
        var: "GAIT_RECONNECT_RATE",
        key: "quic.reconnect_rate",
        set: |c, v| parse_into(&mut c.quic.reconnect_rate, v, "a whole number"),
    },
    EnvOverride {
        var: "GAIT_CALL_MERGE_LAG_SECONDS",
        key: "analysis.call_merge_lag_seconds",
        set: |c, v| {
            parse_into(
                &mut c.analysis.call_merge_lag_seconds,
                v,
                "a whole number of seconds",
            )
        },
    },
    EnvOverride {
        var: "GAIT_SESSION_TICKETS",
        key: "quic.session_tickets",
        set: |c, v| parse_into(&mut c.quic.session_tickets, v, "true or false"),
    },
    EnvOverride {
        var: "GAIT_HTTP_LISTEN",
        key: "http.listen",
        set: |c, v| parse_into(&mut c.http.listen, v, "an ip:port address"),
    },
    EnvOverride {
        var: "GAIT_HTTP_TLS",
        key: "http.tls.enabled",
        set: |c, v| {
            let mut enabled = false;
            parse_into(&mut enabled, v, "true or false")?;
            c.http.tls.enabled = Some(enabled);
            Ok(())
        },
    },
    EnvOverride {
        var: "GAIT_CA_FILE",
        key: "client.ca_file",
        set: |c, v| {
            c.client.ca_file = Some(PathBuf::from(v));
            Ok(())
        },
    },
    EnvOverride {
        var: "GAIT_AGGREGATOR_URL",
        key: "client.server",
        set: |c, v| {
            c.client.server = Some(v.to_owned());
            Ok(())
        },
    },
    EnvOverride {
        var: "GAIT_TOKEN_FILE",
        key: "client.token_file",
        set: |c, v| {
            c.client.token_file = Some(PathBuf::from(v));
            Ok(())
        },
    },
];

/// The whole aggregator configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding the SQLite database, `pki/`, `keys/` and `admin.token`; created if missing.
    /// Default `./gait-data`.
    pub data_dir: PathBuf,
    /// Which database holds the fleet state.
    pub database: DatabaseConfig,
    /// The agent-facing QUIC endpoint.
    pub quic: QuicConfig,
    /// The operator HTTP API.
    pub http: HttpConfig,
    /// What the aggregator accepts from agents.
    pub ingest: IngestConfig,
    /// The deployment CA, when `serve` or `pki init` creates it.
    pub pki: PkiConfig,
    /// Stopping.
    pub shutdown: ShutdownConfig,
    /// How the operator commands `publish` and `agents` reach the HTTP API.
    pub client: ClientConfig,
    /// Who may call the HTTP API: the admin token's powers and role bindings.
    pub auth: AuthConfig,
    /// The tamper-evident audit log.
    pub audit: AuditConfig,
    /// Agent enrollment with join tokens, and certificate renewal.
    pub enroll: EnrollConfig,
    /// Where the bytes of the fleet's artifacts are kept.
    pub evidence: crate::evidence::blob::EvidenceConfig,
    /// Approval governance: the approval policies kept from this file.
    pub approvals: ApprovalsConfig,
    /// Fleet analytics.
    pub analysis: AnalysisConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./gait-data"),
            database: DatabaseConfig::default(),
            quic: QuicConfig::default(),
            http: HttpConfig::default(),
            ingest: IngestConfig::default(),
            pki: PkiConfig::default(),
            shutdown: ShutdownConfig::default(),
            client: ClientConfig::default(),
            auth: AuthConfig::default(),
            audit: AuditConfig::default(),
            enroll: EnrollConfig::default(),
            evidence: crate::evidence::blob::EvidenceConfig::default(),
            approvals: ApprovalsConfig::default(),
            analysis: AnalysisConfig::default(),
        }
    }
}

/// `database.*`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user[:password]@host[:port]/database` or `sqlite://<path>`. Absent: the SQLite file
    /// `<data_dir>/aggregator.db`. A secret when it carries a password; `config check` redacts it.
    pub url: Option<String>,
}

/// `quic.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// UDP address agents connect to (QUIC + mutual TLS). Default `127.0.0.1:7443`.
    pub listen: SocketAddr,
    /// Kernel receive/send buffer for the QUIC UDP socket, in bytes; Linux caps it at `net.core.rmem_max`.
    /// 0 keeps the system default. Default 8 MiB.
    pub udp_buffer_bytes: usize,
    /// Handshakes per second the fleet is asked to come back at after this aggregator stops, until the
    /// aggregator has measured its own rate under load (which then replaces it); at least 1. Default 1000.
    pub reconnect_rate: u32,
    /// Handshakes worked on at once; attempts beyond it wait for a slot (up to 8 per slot, at most 1 s), then
    /// are refused (one packet) and the agents back off, so a returning fleet cannot push the machine into congestion collapse. At least 1. Default 128.
    pub max_handshakes_in_flight: usize,
    /// Hand agents TLS 1.3 session tickets (secret in `keys/tls-ticket.key`) so reconnects resume without a
    /// certificate handshake. Default `true`.
    pub session_tickets: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            udp_buffer_bytes: DEFAULT_UDP_BUFFER_BYTES,
            reconnect_rate: DEFAULT_RECONNECT_RATE,
            max_handshakes_in_flight: crate::ingest::admission::DEFAULT_MAX_HANDSHAKES_IN_FLIGHT,
            session_tickets: true,
        }
    }
}

/// `http.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// TCP address of the HTTP API (`/healthz`, `/readyz`, `/metrics`, `/v1/...`). Default `127.0.0.1:7080`.
    /// Plain HTTP is served only on a loopback address; anywhere else the API is HTTPS (`http.tls`).
    pub listen: SocketAddr,
    /// HTTPS for the API.
    pub tls: HttpTlsConfig,
    /// Connections served at once; at the cap a newcomer closes the connection idle longest (one with a
    /// request in flight is never closed; when all are busy the newcomer is refused) so `/healthz` and publishing
    /// keep answering under a connection flood. With the API's 8 MiB body limit this bounds request bodies held in
    /// memory to `max_connections` × 8 MiB (32 GiB at the default; lower it on a small host). Default 4096.
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

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            tls: HttpTlsConfig::default(),
            max_connections: 4096,
            header_timeout_ms: 5_000,
            body_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_requests_per_connection: 1_000,
        }
    }
}

/// `http.tls.*`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpTlsConfig {
    /// Serve the API over HTTPS. Absent (the default): HTTPS when `http.listen` is not a loopback address,
    /// plain HTTP on a loopback one. `true` forces HTTPS on loopback too; `false` is allowed only on a loopback
    /// address.
    pub enabled: Option<bool>,
    /// Certificate chain (PEM) the API presents, to use an operator's own certificate. Default: the deployment
    /// PKI's server certificate `<data_dir>/pki/server.pem` (the one QUIC ingest presents; `gait-aggregator pki
    /// reissue-server --server-name <name>` adds the names the API is reached by). Set with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `cert_file`. Default `<data_dir>/pki/server.key`. Set with `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// The certificate and key the HTTPS API presents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
    /// Whether these are the deployment PKI's server certificate and key (the default).
    pub from_pki: bool,
}

impl HttpConfig {
    /// Whether the API is served over HTTPS: `http.tls.enabled`, or when absent, whether `http.listen` is off
    /// loopback.
    pub fn tls_enabled(&self) -> bool {
        self.tls
            .enabled
            .unwrap_or_else(|| !self.listen.ip().is_loopback())
    }

    /// The limits the HTTP server enforces (see [`gait_runtime::http`]).
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

/// `ingest.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest record payload this aggregator stores, in bytes: 1 to the wire limit
    /// ([`gait_wire::limits::MAX_PAYLOAD_BYTES`], 1 MiB). A larger record is refused for good
    /// (`record_payload_too_large`); the agent quarantines it and its stream goes on. Default: the wire limit.
    pub max_record_payload_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_record_payload_bytes: gait_wire::limits::MAX_PAYLOAD_BYTES,
        }
    }
}

/// `enroll.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnrollConfig {
    /// Longest lifetime a join token may be minted with, in seconds: 60 to 2,592,000 (30 days). Default
    /// 604,800 (7 days).
    pub max_token_ttl_seconds: u64,
    /// Validity of the certificates enrollment and renewal issue, in seconds: 60 to 34,128,000 (395 days).
    /// Agents renew when less than a third of it is left. Default 7,776,000 (90 days).
    pub certificate_validity_seconds: u64,
}

/// Bounds of `enroll.max_token_ttl_seconds`.
pub const ENROLL_TOKEN_TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=30 * 24 * 3600;
/// Bounds of `enroll.certificate_validity_seconds`.
pub const ENROLL_CERT_VALIDITY_RANGE: std::ops::RangeInclusive<u64> = 60..=395 * 24 * 3600;

impl Default for EnrollConfig {
    fn default() -> Self {
        Self {
            max_token_ttl_seconds: crate::enroll::DEFAULT_MAX_TOKEN_TTL.as_secs(),
            certificate_validity_seconds: crate::enroll::DEFAULT_CERT_VALIDITY.as_secs(),
        }
    }
}

impl EnrollConfig {
    /// The settings the enrollment service runs with.
    pub fn settings(&self) -> crate::enroll::EnrollSettings {
        crate::enroll::EnrollSettings {
            max_token_ttl: Duration::from_secs(self.max_token_ttl_seconds),
            certificate_validity: Duration::from_secs(self.certificate_validity_seconds),
        }
    }
}

/// `pki.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PkiConfig {
    /// SPIFFE trust domain written into every agent identity when the CA is created. Default `gait.local`.
    pub trust_domain: String,
    /// DNS names / IPs put in the server certificate when the CA is created; at least one. Default
    /// `[localhost, 127.0.0.1]`.
    pub server_names: Vec<String>,
}

impl Default for PkiConfig {
    fn default() -> Self {
        Self {
            trust_domain: DEFAULT_TRUST_DOMAIN.to_owned(),
            server_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        }
    }
}

/// `shutdown.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds to wait for in-flight work after SIGTERM/SIGINT. Default 10.
    pub grace_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { grace_seconds: 10 }
    }
}

/// `client.*`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// Base URL of the HTTP API for `publish` and `agents`. Default `http://<http.listen>` for a plain-HTTP
    /// API; for an HTTPS one `https://<http.listen>`, or `https://localhost:<port>` when it listens on a
    /// loopback or unspecified address (an unspecified one is reached on loopback).
    pub server: Option<String>,
    /// File holding the admin bearer token. Default `<data_dir>/admin.token`.
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) an `https://` server is verified against; no system roots are trusted. Default:
    /// the deployment CA `<data_dir>/pki/ca.pem`.
    pub ca_file: Option<PathBuf>,
}

/// `auth.*`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// What the bootstrap admin token may do: `auto` (default: `admin` without an OIDC issuer, `bootstrap`
    /// with one), `admin`, `bootstrap` (only role bindings), `disabled`.
    pub admin_token: crate::auth::AdminTokenMode,
    /// Role bindings kept equal to this list at every start (GitOps): each names exactly one of `user` or
    /// `group`, a `role`, and a scope (`org`, `project`, `env`; absent parts widen it; no `org` = the whole
    /// deployment). Bindings granted through the API are not touched.
    pub bindings: Vec<BindingConfig>,
    /// Operators authenticated by an OpenID Connect provider (see `docs/enterprise/oidc.md`).
    pub oidc: OidcConfig,
}

/// One entry of `auth.bindings`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// An operator's subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// An IdP group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// platform_admin, policy_author, approver, auditor or viewer.
    pub role: String,
    /// The org; absent = the whole deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// The project; absent = the whole org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The environment; absent = the whole project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

impl BindingConfig {
    /// What is wrong with this entry, as (sub-key, message) pairs.
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match (&self.user, &self.group) {
            (Some(s), None) | (None, Some(s)) if s.trim().is_empty() => {
                out.push(("user", "must not be empty".to_owned()));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => out.push((
                "user",
                "give exactly one of `user` (an operator's subject) or `group` (an IdP group)"
                    .to_owned(),
            )),
        }
        if let Err(e) = crate::auth::Role::parse(&self.role) {
            out.push(("role", e.to_string()));
        }
        let org = self.org.clone().map(gait_store::Org::try_from).transpose();
        let project = self
            .project
            .clone()
            .map(gait_store::Project::try_from)
            .transpose();
        let env = self.env.clone().map(gait_store::Env::try_from).transpose();
        match (org, project, env) {
            (Ok(o), Ok(p), Ok(e)) => {
                if gait_store::BindingScope::from_parts(o, p, e).is_none() {
                    out.push((
                        "project",
                        "a project needs its org, and an env needs its project".to_owned(),
                    ));
                }
            }
            (o, p, e) => {
                for (key, err) in [("org", o.err()), ("project", p.err()), ("env", e.err())] {
                    if let Some(err) = err {
                        out.push((key, err.to_string()));
                    }
                }
            }
        }
        out
    }

    /// The store binding, when the entry is valid.
    pub fn to_binding(&self) -> Option<gait_store::NewBinding> {
        let (kind, subject) = match (&self.user, &self.group) {
            (Some(u), None) => (gait_store::SubjectKind::User, u.clone()),
            (None, Some(g)) => (gait_store::SubjectKind::Group, g.clone()),
            _ => return None,
        };
        let role = crate::auth::Role::parse(&self.role).ok()?;
        let scope = gait_store::BindingScope::from_parts(
            self.org
                .clone()
                .map(gait_store::Org::try_from)
                .transpose()
                .ok()?,
            self.project
                .clone()
                .map(gait_store::Project::try_from)
                .transpose()
                .ok()?,
            self.env
                .clone()
                .map(gait_store::Env::try_from)
                .transpose()
                .ok()?,
        )?;
        Some(gait_store::NewBinding {
            kind,
            subject,
            role: role.as_str().to_owned(),
            scope,
        })
    }
}

/// `analysis.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Environment names that count as production in an incident family's blast radius (case-insensitive).
    /// Default `[prod, production, prd]`; an empty list makes no environment production.
    pub production_envs: Vec<String>,
    /// Longest a folded decision waits before its arguments digest is matched against runpack calls (call-level
    /// coverage), in seconds: 1 to 3,600. A merge also starts at once when a million folded rows wait. Shorter is
    /// fresher and costs more per decision (each merge rewrites the pages it lands on). Default 60.
    pub call_merge_lag_seconds: u64,
}

/// Bounds of `analysis.call_merge_lag_seconds`.
const CALL_MERGE_LAG_SECONDS: std::ops::RangeInclusive<u64> = 1..=3_600;

impl AnalysisConfig {
    /// `call_merge_lag_seconds` as a duration.
    pub fn call_merge_lag(&self) -> Duration {
        Duration::from_secs(self.call_merge_lag_seconds)
    }
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            production_envs: crate::analysis::PRODUCTION_ENVS
                .iter()
                .map(|e| (*e).to_owned())
                .collect(),
            call_merge_lag_seconds: crate::analysis::upkeep::MERGE_LAG.as_secs(),
        }
    }
}

/// `approvals.*`
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsConfig {
    /// Approval policies kept equal to this list at every start (GitOps): a listed policy is added or, when its
    /// rules changed, replaced by a new version; a policy that left the list is removed. The API and CLI cannot
    /// change or remove them; policies set through the API are not touched unless the list names them.
    pub policies: Vec<ApprovalPolicyConfig>,
}

/// One entry of `approvals.policies`: the scope and name of an approval policy and its rules (see
/// [`crate::approval::policy::PolicySpec`]; absent rules take the same defaults as through the API).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicyConfig {
    /// Its name, unique within its scope. Default `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The org it applies to (required).
    pub org: String,
    /// The project; absent = the whole org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The environment; absent = the whole project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// Tool name globs; absent: every tool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Phases (`plan`, `apply`, …); absent: every phase.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<String>,
    /// Only intents with a destructive target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destructive_only: Option<bool>,
    /// Environment globs, for a policy on an org or a project; absent: every environment of its scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub envs: Vec<String>,
    /// Distinct approvers needed. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
    /// Groups that must each supply their own approver (AND).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Longest lifetime of an issued token, in seconds. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_token_ttl_seconds: Option<u64>,
    /// The author of the policy version in force may not approve under it (for a config policy the author is
    /// `config`, so this only matters once the API owns the name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_cannot_approve: Option<bool>,
}

/// [`ApprovalPolicyConfig::name`] when absent.
pub const DEFAULT_APPROVAL_POLICY_NAME: &str = "config";

impl ApprovalPolicyConfig {
    /// The policy's name (`name`, default `config`), trimmed.
    pub fn name(&self) -> &str {
        self.name
            .as_deref()
            .map_or(DEFAULT_APPROVAL_POLICY_NAME, str::trim)
    }

    /// The scope, or the sub-key at fault and why.
    pub fn scope(&self) -> Result<gait_store::BindingScope, (&'static str, String)> {
        let org =
            gait_store::Org::try_from(self.org.clone()).map_err(|e| ("org", e.to_string()))?;
        let project = self
            .project
            .clone()
            .map(gait_store::Project::try_from)
            .transpose()
            .map_err(|e| ("project", e.to_string()))?;
        let env = self
            .env
            .clone()
            .map(gait_store::Env::try_from)
            .transpose()
            .map_err(|e| ("env", e.to_string()))?;
        gait_store::BindingScope::from_parts(Some(org), project, env)
            .ok_or(("env", "an env needs its project".to_owned()))
    }

    /// The rules, checked and normalized, or the sub-key at fault and why.
    pub fn spec(
        &self,
    ) -> Result<crate::approval::policy::PolicySpec, crate::approval::policy::SpecError> {
        let defaults = crate::approval::policy::PolicySpec::default();
        crate::approval::policy::PolicySpec {
            tools: self.tools.clone(),
            phases: self.phases.clone(),
            destructive_only: self.destructive_only.unwrap_or(defaults.destructive_only),
            envs: self.envs.clone(),
            quorum: self.quorum.unwrap_or(defaults.quorum),
            groups: self.groups.clone(),
            max_token_ttl_seconds: self
                .max_token_ttl_seconds
                .unwrap_or(defaults.max_token_ttl_seconds),
            author_cannot_approve: self
                .author_cannot_approve
                .unwrap_or(defaults.author_cannot_approve),
        }
        .normalize()
    }

    /// What is wrong with this entry, as (sub-key, message) pairs.
    fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let name = self.name();
        if name.is_empty()
            || name.len() > gait_store::MAX_LABEL_BYTES
            || name.chars().any(char::is_control)
        {
            out.push((
                "name",
                format!(
                    "`{name}` must be 1 to {} bytes without control characters",
                    gait_store::MAX_LABEL_BYTES
                ),
            ));
        }
        if let Err(p) = self.scope() {
            out.push(p);
        }
        if let Err(e) = self.spec() {
            out.push((e.field, e.reason));
        }
        out
    }
}

/// `auth.oidc.*`: operator bearer JWTs verified against the provider's keys. Off unless `issuer` is set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The provider's issuer URL, exactly as its tokens' `iss` spell it (`https://`; `http://` only on
    /// loopback). Keys are found through `<issuer>/.well-known/openid-configuration` unless `jwks_url` or
    /// `jwks_file` is set. Absent (the default): OIDC is off.
    pub issuer: Option<String>,
    /// The audience the tokens must carry in `aud` (the API's client id or resource). Required with `issuer`.
    pub audience: Option<String>,
    /// The provider's JWKS URL, instead of discovery.
    pub jwks_url: Option<String>,
    /// A local JWKS file, instead of fetching (disconnected sites); re-read when it changes.
    pub jwks_file: Option<PathBuf>,
    /// CA certificate (PEM) the provider's HTTPS certificate is verified against. Default: the public web PKI.
    pub ca_file: Option<PathBuf>,
    /// Accepted signature algorithms. Default `[RS256, ES256, EdDSA]`; `none` and HMAC are never accepted.
    pub algorithms: Vec<String>,
    /// Claim holding the operator's subject. Default `sub`.
    pub subject_claim: String,
    /// Claim holding the operator's groups (an array of strings or one string). Default `groups`.
    pub groups_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds: 0 to 300. Default 60.
    pub leeway_seconds: u64,
    /// How often the keys are fetched again, in seconds: 10 to 86400. Default 600.
    pub refresh_interval_seconds: u64,
    /// Least time between two fetches triggered by tokens with an unknown `kid` (key rotation), in seconds:
    /// 1 to 3600. Default 30.
    pub unknown_kid_refresh_seconds: u64,
    /// Verified tokens kept in memory (by SHA-256), so a token sent again is not verified again until it
    /// expires: 0 (off) to 100000. Default 4096.
    pub token_cache_size: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            jwks_url: None,
            jwks_file: None,
            ca_file: None,
            algorithms: crate::auth::oidc::default_algorithms(),
            subject_claim: "sub".to_owned(),
            groups_claim: "groups".to_owned(),
            leeway_seconds: 60,
            refresh_interval_seconds: 600,
            unknown_kid_refresh_seconds: 30,
            token_cache_size: crate::auth::oidc::cache::DEFAULT_TOKEN_CACHE_SIZE,
        }
    }
}

/// `audit.*`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Name of the audit log: the origin of its checkpoints and the name of its verifier key. Default
    /// `gait-aggregator/<pki.trust_domain>`.
    pub origin: Option<String>,
    /// How often `serve` signs and stores a checkpoint while the log grows. Default 60.
    pub checkpoint_interval_seconds: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            origin: None,
            checkpoint_interval_seconds: crate::audit::DEFAULT_CHECKPOINT_INTERVAL.as_secs(),
        }
    }
}

impl OidcConfig {
    /// Whether OIDC is on (`issuer` is set).
    pub fn enabled(&self) -> bool {
        self.issuer.is_some()
    }

    /// The problems of `auth.oidc.*`, each at its dotted key.
    fn problems(&self) -> Vec<Problem> {
        use crate::auth::jwks::check_url;
        let mut problems = Vec::new();
        let Some(issuer) = &self.issuer else {
            for (key, set) in [
                ("audience", self.audience.is_some()),
                ("jwks_url", self.jwks_url.is_some()),
                ("jwks_file", self.jwks_file.is_some()),
            ] {
                if set {
                    problems.push(problem(
                        "auth.oidc.issuer",
                        format!(
                            "must be set when auth.oidc.{key} is (OIDC is off without an issuer)"
                        ),
                    ));
                }
            }
            return problems;
        };
        if let Err(e) = check_url(issuer) {
            problems.push(problem("auth.oidc.issuer", format!("`{issuer}`: {e}")));
        }
        if self.audience.as_deref().is_none_or(str::is_empty) {
            problems.push(problem(
                "auth.oidc.audience",
                "must be set with auth.oidc.issuer (the `aud` the API's tokens carry)",
            ));
        }
        match (&self.jwks_url, &self.jwks_file) {
            (Some(_), Some(_)) => problems.push(problem(
                "auth.oidc.jwks_file",
                "set auth.oidc.jwks_url or auth.oidc.jwks_file, not both",
            )),
            (Some(url), None) => {
                if let Err(e) = check_url(url) {
                    problems.push(problem("auth.oidc.jwks_url", format!("`{url}`: {e}")));
                }
            }
            _ => {}
        }
        if self.algorithms.is_empty() {
            problems.push(problem(
                "auth.oidc.algorithms",
                "must name at least one algorithm",
            ));
        }
        for (i, name) in self.algorithms.iter().enumerate() {
            if let Err(e) = crate::auth::oidc::parse_algorithm(name) {
                problems.push(problem(&format!("auth.oidc.algorithms[{i}]"), e));
            }
        }
        for (key, value) in [
            ("subject_claim", &self.subject_claim),
            ("groups_claim", &self.groups_claim),
        ] {
            if value.trim().is_empty() {
                problems.push(problem(&format!("auth.oidc.{key}"), "must name a claim"));
            }
        }
        let max_leeway = crate::auth::oidc::MAX_LEEWAY_SECONDS;
        for (key, value, min, max) in [
            ("leeway_seconds", self.leeway_seconds, 0, max_leeway),
            (
                "refresh_interval_seconds",
                self.refresh_interval_seconds,
                10,
                86_400,
            ),
            (
                "unknown_kid_refresh_seconds",
                self.unknown_kid_refresh_seconds,
                1,
                3_600,
            ),
            (
                "token_cache_size",
                self.token_cache_size,
                0,
                crate::auth::oidc::cache::MAX_TOKEN_CACHE_SIZE,
            ),
        ] {
            if !(min..=max).contains(&value) {
                problems.push(problem(
                    &format!("auth.oidc.{key}"),
                    format!("is {value}; must be {min} to {max}"),
                ));
            }
        }
        problems
    }
}

/// One validation problem at a dotted key (shared with the agent).
pub use gait_runtime::config::Problem;

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema (unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser reported, naming the key.
        message: String,
    },
    /// The values parsed but do not work (from the file or the environment); every problem is listed.
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

impl ConfigError {
    /// The problems found by validation (empty for read and parse errors).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Invalid(invalid) => invalid.problems(),
            _ => &[],
        }
    }
}

fn problem(key: &str, message: impl Into<String>) -> Problem {
    Problem::new(key, message)
}

impl Config {
    /// Defaults, then `path` (if any), then the `GAIT_*` environment; validated.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, |name| std::env::var(name).ok())
    }

    /// [`Config::load`] with an explicit environment lookup (tests pass a closure over a map).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match path {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let base = path.parent().unwrap_or_else(|| Path::new(""));
                Self::from_yaml(&text, base).map_err(|message| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message,
                })?
            }
        };
        apply_env(&mut config, &ENV_OVERRIDES, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses YAML text and resolves relative paths against `base`. Does not validate.
    pub fn from_yaml(text: &str, base: &Path) -> Result<Self, String> {
        // An empty file (or one holding only comments) is the defaults.
        let mut config: Config = if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        }) {
            Config::default()
        } else {
            serde_saphyr::from_str(text).map_err(|e| e.to_string())?
        };
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut config.data_dir);
        for path in [
            config.client.token_file.as_mut(),
            config.client.ca_file.as_mut(),
            config.http.tls.cert_file.as_mut(),
            config.http.tls.key_file.as_mut(),
            config.auth.oidc.jwks_file.as_mut(),
            config.auth.oidc.ca_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            fix(path);
        }
        Ok(config)
    }

    /// Checks every value; the error lists each problem with its dotted key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.data_dir.as_os_str().is_empty() {
            problems.push(problem("data_dir", "must not be empty"));
        }
        if let Some(url) = &self.database.url {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("sqlite" | "postgres" | "postgresql")) {
                problems.push(problem(
                    "database.url",
                    format!(
                        "`{}` must start with postgres://, postgresql:// or sqlite://",
                        redact_url(url)
                    ),
                ));
            }
        }
        for (key, message) in self.http.limits().problems() {
            problems.push(problem(&format!("http.{key}"), message));
        }
        self.validate_http_tls(&mut problems);
        for (i, env) in self.analysis.production_envs.iter().enumerate() {
            if let Err(e) = gait_store::Env::try_from(env.as_str()) {
                problems.push(problem(
                    &format!("analysis.production_envs[{i}]"),
                    format!("`{env}` is not an environment name: {e}"),
                ));
            }
        }
        if !CALL_MERGE_LAG_SECONDS.contains(&self.analysis.call_merge_lag_seconds) {
            problems.push(problem(
                "analysis.call_merge_lag_seconds",
                format!(
                    "{} is out of range: give 1 to 3600 seconds (default 60)",
                    self.analysis.call_merge_lag_seconds
                ),
            ));
        }
        if self.quic.reconnect_rate == 0 {
            problems.push(problem("quic.reconnect_rate", "must be at least 1"));
        }
        if self.quic.max_handshakes_in_flight == 0 {
            problems.push(problem(
                "quic.max_handshakes_in_flight",
                "must be at least 1 (default 128)",
            ));
        }
        let payload = self.ingest.max_record_payload_bytes;
        if payload == 0 || payload > gait_wire::limits::MAX_PAYLOAD_BYTES {
            problems.push(problem(
                "ingest.max_record_payload_bytes",
                format!(
                    "is {payload}; must be 1 to {} (the wire limit)",
                    gait_wire::limits::MAX_PAYLOAD_BYTES
                ),
            ));
        }
        if let Err(e) = validate_trust_domain(&self.pki.trust_domain) {
            problems.push(problem("pki.trust_domain", e.to_string()));
        }
        if self.pki.server_names.is_empty() {
            problems.push(problem("pki.server_names", "must name at least one host"));
        }
        for (i, name) in self.pki.server_names.iter().enumerate() {
            if name.trim().is_empty() || name.chars().any(char::is_whitespace) {
                problems.push(problem(
                    &format!("pki.server_names[{i}]"),
                    format!("`{name}` is not a DNS name or IP address"),
                ));
            }
        }
        for (key, message) in self.evidence.problems() {
            problems.push(problem(&format!("evidence.{key}"), message));
        }
        for (i, binding) in self.auth.bindings.iter().enumerate() {
            for (key, message) in binding.problems() {
                problems.push(problem(&format!("auth.bindings[{i}].{key}"), message));
            }
        }
        let mut policy_names = std::collections::HashMap::new();
        for (i, policy) in self.approvals.policies.iter().enumerate() {
            for (key, message) in policy.problems() {
                problems.push(problem(&format!("approvals.policies[{i}].{key}"), message));
            }
            if let Ok(scope) = policy.scope()
                && let Some(first) = policy_names.insert((scope.to_string(), policy.name()), i)
            {
                problems.push(problem(
                    &format!("approvals.policies[{i}].name"),
                    format!(
                        "`{}` at {scope} is already approvals.policies[{first}]; give each policy of one scope \
                         its own name",
                        policy.name()
                    ),
                ));
            }
        }
        if let Some(origin) = &self.audit.origin
            && (origin.is_empty()
                || origin.contains('+')
                || origin.chars().any(char::is_whitespace))
        {
            problems.push(problem(
                "audit.origin",
                format!("`{origin}` must be non-empty without whitespace or '+' (it names a signed-note key)"),
            ));
        }
        if !(1..=86_400).contains(&self.audit.checkpoint_interval_seconds) {
            problems.push(problem(
                "audit.checkpoint_interval_seconds",
                format!(
                    "is {}; must be 1 to 86400",
                    self.audit.checkpoint_interval_seconds
                ),
            ));
        }
        for (key, value, range) in [
            (
                "enroll.max_token_ttl_seconds",
                self.enroll.max_token_ttl_seconds,
                ENROLL_TOKEN_TTL_RANGE,
            ),
            (
                "enroll.certificate_validity_seconds",
                self.enroll.certificate_validity_seconds,
                ENROLL_CERT_VALIDITY_RANGE,
            ),
        ] {
            if !range.contains(&value) {
                problems.push(problem(
                    key,
                    format!("is {value}; must be {} to {}", range.start(), range.end()),
                ));
            }
        }
        if let Some(server) = &self.client.server
            && !(server.starts_with("http://") || server.starts_with("https://"))
        {
            problems.push(problem(
                "client.server",
                format!("`{server}` must start with http:// or https://"),
            ));
        }
        problems.extend(self.auth.oidc.problems());
        Ok(Invalid::check(problems)?)
    }

    /// `http.tls.*` against `http.listen`: plain HTTP only on loopback, and an own certificate comes with its
    /// key.
    fn validate_http_tls(&self, problems: &mut Vec<Problem>) {
        let http = &self.http;
        if http.tls.enabled == Some(false) && !http.listen.ip().is_loopback() {
            problems.push(problem(
                "http.listen",
                format!(
                    "`{}` is not a loopback address and http.tls.enabled is false: the admin API is served as \
                     plain HTTP only on 127.0.0.1 or ::1. Remove http.tls.enabled (HTTPS with the deployment \
                     PKI's server certificate) or listen on a loopback address",
                    http.listen
                ),
            ));
        }
        match (&http.tls.cert_file, &http.tls.key_file) {
            (Some(_), None) => problems.push(problem(
                "http.tls.key_file",
                "must be set with http.tls.cert_file (the private key of that certificate)",
            )),
            (None, Some(_)) => problems.push(problem(
                "http.tls.cert_file",
                "must be set with http.tls.key_file (the certificate of that key)",
            )),
            (Some(_), Some(_)) if !http.tls_enabled() => problems.push(problem(
                "http.tls.cert_file",
                "is set but HTTPS is off (http.tls.enabled is false, or absent on a loopback listen); set \
                 http.tls.enabled: true or remove the certificate",
            )),
            _ => {}
        }
    }

    /// The audit log's origin: `audit.origin`, or `gait-aggregator/<pki.trust_domain>`.
    pub fn audit_origin(&self) -> String {
        self.audit
            .origin
            .clone()
            .unwrap_or_else(|| crate::audit::default_origin(&self.pki.trust_domain))
    }

    /// The certificate and key of the HTTPS API, `None` when it serves plain HTTP.
    pub fn http_tls_files(&self) -> Option<TlsFiles> {
        if !self.http.tls_enabled() {
            return None;
        }
        Some(match (&self.http.tls.cert_file, &self.http.tls.key_file) {
            (Some(cert), Some(key)) => TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                from_pki: false,
            },
            _ => TlsFiles {
                cert: self.pki_dir().join(crate::pki::SERVER_CERT_FILE),
                key: self.pki_dir().join(crate::pki::SERVER_KEY_FILE),
                from_pki: true,
            },
        })
    }

    /// The deployment PKI directory, `<data_dir>/pki`.
    pub fn pki_dir(&self) -> PathBuf {
        self.data_dir.join("pki")
    }

    /// The CA file the operator commands verify an `https://` API against.
    pub fn client_ca_file(&self) -> PathBuf {
        self.client
            .ca_file
            .clone()
            .unwrap_or_else(|| self.pki_dir().join(crate::pki::CA_CERT_FILE))
    }

    /// The database URL in force: the configured one or the SQLite file under the data directory.
    pub fn effective_database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.sqlite_path().display()),
        }
    }

    /// The embedded SQLite file (used when `database.url` is absent).
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join(SQLITE_FILE)
    }

    /// Base URL of the HTTP API for the operator commands.
    pub fn client_server(&self) -> String {
        match &self.client.server {
            Some(url) => url.clone(),
            None => {
                let mut addr = self.http.listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                if !self.http.tls_enabled() {
                    return format!("http://{addr}");
                }
                // The certificate must name the host dialled: `localhost` is in the PKI's default server names
                // and is what an operator adds for the host itself, an IP address less often.
                if addr.ip().is_loopback() {
                    format!("https://localhost:{}", addr.port())
                } else {
                    format!("https://{addr}")
                }
            }
        }
    }

    /// The admin token file for the operator commands.
    pub fn client_token_file(&self) -> PathBuf {
        self.client
            .token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(ADMIN_TOKEN_FILE))
    }

    /// A copy safe to print: the database password is replaced by `***`.
    pub fn redacted(&self) -> Config {
        let mut copy = self.clone();
        copy.database.url = copy.database.url.as_deref().map(redact_url);
        copy
    }
}

/// `scheme://user:secret@host/...` → `scheme://user:***@host/...`; a `password=` query value likewise.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if let Some((userinfo, host)) = authority.rsplit_once('@') {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            out = format!("{scheme}://{masked}@{host}{tail}");
        }
    }
    if let Some((head, query)) = out.clone().split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}?{}", query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("aggregator.yaml");
        std::fs::write(&path, text).expect("write");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load_with_env(Some(&path), |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn role_bindings_are_checked_naming_the_entry_and_key() {
        let ok = load_text(
            "auth:\n  admin_token: bootstrap\n  bindings:\n    - { group: sre, role: viewer, org: acme }\n    \
             - { user: alice, role: platform_admin }\n",
            &[],
        )
        .expect("valid bindings");
        assert_eq!(ok.auth.admin_token, crate::auth::AdminTokenMode::Bootstrap);
        let bindings: Vec<_> = ok
            .auth
            .bindings
            .iter()
            .filter_map(BindingConfig::to_binding)
            .collect();
        assert_eq!(bindings.len(), 2);
        assert_eq!(bindings[1].scope, gait_store::BindingScope::deployment());

        let err = load_text(
            "auth:\n  bindings:\n    - { group: sre, user: bob, role: viewer }\n    - { group: sre, role: root }\n    \
             - { group: sre, role: viewer, project: web }\n    - { group: sre, role: viewer, org: Bad_Org }\n",
            &[],
        )
        .expect_err("bad bindings");
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "auth.bindings[0].user",
                "auth.bindings[1].role",
                "auth.bindings[2].project",
                "auth.bindings[3].org"
            ],
            "{err}"
        );
        assert!(err.to_string().contains("platform_admin"), "{err}");
        let unknown = load_text("auth:\n  admin_token: root\n", &[]).expect_err("unknown mode");
        assert!(unknown.to_string().contains("admin_token"), "{unknown}");
    }

    #[test]
    fn approval_policies_are_checked_naming_the_entry_and_key() {
        let ok = load_text(
            "approvals:\n  policies:\n    - { org: acme, project: payments, tools: [db.*], quorum: 2, \
             groups: [security, payments-team] }\n    - { name: prod, org: acme, envs: [prod] }\n",
            &[],
        )
        .expect("valid policies");
        let policies = &ok.approvals.policies;
        assert_eq!(policies[0].name(), DEFAULT_APPROVAL_POLICY_NAME);
        let spec = policies[0].spec().expect("spec");
        assert_eq!((spec.quorum, spec.groups.len()), (2, 2));
        // Absent rules take the API's defaults.
        let spec = policies[1].spec().expect("spec");
        assert_eq!(spec.quorum, 1);
        assert_eq!(
            spec.max_token_ttl_seconds,
            crate::approval::policy::DEFAULT_TOKEN_TTL_SECONDS
        );

        let err = load_text(
            "approvals:\n  policies:\n    - { org: acme, quorum: 0 }\n    - { org: acme, project: web, groups: [a, b] }\n    \
             - { name: x, org: acme, env: prod }\n    - { org: acme, max_token_ttl_seconds: 0 }\n    \
             - { org: acme, project: web, name: y }\n    - { org: acme, project: web, name: ' y ' }\n",
            &[],
        )
        .expect_err("bad policies");
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "approvals.policies[0].quorum",
                "approvals.policies[1].groups",
                "approvals.policies[2].env",
                "approvals.policies[3].max_token_ttl_seconds",
                "approvals.policies[3].name",
                "approvals.policies[5].name",
            ],
            "{err}"
        );
        assert!(err.to_string().contains("approvals.policies[4]"), "{err}");
        let missing_org =
            load_text("approvals:\n  policies:\n    - { quorum: 2 }\n", &[]).expect_err("no org");
        assert!(missing_org.to_string().contains("org"), "{missing_org}");
    }

    #[test]
    fn no_file_is_the_embedded_defaults() {
        let c = Config::load_with_env(None, |_| None).expect("defaults");
        assert_eq!(c, Config::default());
        assert_eq!(c.data_dir, PathBuf::from("./gait-data"));
        assert_eq!(
            c.effective_database_url(),
            "sqlite://./gait-data/aggregator.db?mode=rwc"
        );
        assert_eq!(c.client_server(), "http://127.0.0.1:7080");
        assert_eq!(
            c.client_token_file(),
            PathBuf::from("./gait-data/admin.token")
        );
    }

    #[test]
    fn file_values_apply_and_relative_paths_follow_the_file() {
        let c = load_text(
            "data_dir: state\nquic:\n  listen: 0.0.0.0:9443\n  session_tickets: false\nhttp:\n  listen: 0.0.0.0:9080\n",
            &[],
        )
        .expect("valid");
        assert!(c.data_dir.ends_with("state") && c.data_dir.is_absolute());
        assert_eq!(c.quic.listen.port(), 9443);
        assert!(!c.quic.session_tickets);
        assert_eq!(c.quic.reconnect_rate, DEFAULT_RECONNECT_RATE);
        // Off loopback the API is HTTPS, so the operator commands default to https://.
        assert_eq!(c.client_server(), "https://localhost:9080");
    }

    #[test]
    fn http_limits_default_and_a_zero_names_its_dotted_key() {
        let c = load_text("", &[]).expect("valid");
        assert_eq!(c.http.max_connections, 4096);
        assert_eq!(c.http.limits().header_timeout, Duration::from_secs(5));
        let c = load_text(
            "http:\n  max_connections: 64\n  idle_timeout_ms: 250\n",
            &[],
        )
        .expect("valid");
        assert_eq!(c.http.limits().max_connections, 64);
        assert_eq!(c.http.limits().idle_timeout, Duration::from_millis(250));
        let err = load_text("http:\n  max_connections: 0\n  body_timeout_ms: 0\n", &[])
            .expect_err("zeros refused");
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["http.max_connections", "http.body_timeout_ms"]);
    }

    #[test]
    fn the_record_payload_limit_defaults_to_the_wire_limit_and_cannot_exceed_it() {
        let wire = gait_wire::limits::MAX_PAYLOAD_BYTES;
        assert_eq!(
            load_text("", &[])
                .expect("valid")
                .ingest
                .max_record_payload_bytes,
            wire
        );
        let c = load_text("ingest:\n  max_record_payload_bytes: 4096\n", &[]).expect("valid");
        assert_eq!(c.ingest.max_record_payload_bytes, 4096);
        let over = format!("ingest:\n  max_record_payload_bytes: {}\n", wire + 1);
        let err = load_text(&over, &[]).expect_err("over the wire limit");
        assert_eq!(err.problems()[0].key, "ingest.max_record_payload_bytes");
        assert!(err.to_string().contains("1048576"), "{err}");
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_key() {
        for text in ["quic:\n  listen_addr: 1.2.3.4:5\n", "databse:\n  url: x\n"] {
            let err = load_text(text, &[]).expect_err("unknown key").to_string();
            let key = if text.starts_with("quic") {
                "listen_addr"
            } else {
                "databse"
            };
            assert!(err.contains(key), "{err}");
        }
    }

    #[test]
    fn validation_names_every_bad_dotted_key() {
        let err = load_text(
            "database:\n  url: mysql://x\nquic:\n  reconnect_rate: 0\ningest:\n  max_record_payload_bytes: 0\npki:\n  trust_domain: Bad_Domain\n  server_names: [ok, \"a b\"]\nclient:\n  server: ftp://x\n",
            &[],
        )
        .expect_err("invalid");
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "database.url",
                "quic.reconnect_rate",
                "ingest.max_record_payload_bytes",
                "pki.trust_domain",
                "pki.server_names[1]",
                "client.server"
            ]
        );
    }

    #[test]
    fn production_envs_default_and_a_bad_name_is_refused_naming_its_index() {
        let c = load_text("", &[]).expect("valid");
        assert_eq!(c.analysis.production_envs, ["prod", "production", "prd"]);
        let c = load_text("analysis:\n  production_envs: [live]\n", &[]).expect("valid");
        assert_eq!(c.analysis.production_envs, ["live"]);
        let err = load_text("analysis:\n  production_envs: [live, \"Prod Env\"]\n", &[])
            .expect_err("invalid");
        assert_eq!(err.problems()[0].key, "analysis.production_envs[1]");
        assert!(err.to_string().contains("Prod Env"), "{err}");
    }

    #[test]
    fn call_merge_lag_defaults_to_a_minute_and_out_of_range_names_the_key() {
        let c = load_text("", &[]).expect("valid");
        assert_eq!(c.analysis.call_merge_lag(), Duration::from_secs(60));
        let c = load_text("analysis:\n  call_merge_lag_seconds: 1\n", &[]).expect("valid");
        assert_eq!(c.analysis.call_merge_lag(), Duration::from_secs(1));
        for bad in ["0", "3601"] {
            let err = load_text(
                &format!("analysis:\n  call_merge_lag_seconds: {bad}\n"),
                &[],
            )
            .expect_err("out of range");
            assert_eq!(err.problems()[0].key, "analysis.call_merge_lag_seconds");
            assert!(err.to_string().contains("1 to 3600"), "{err}");
        }
    }

    #[test]
    fn environment_overrides_the_file_and_bad_values_name_the_key() {
        let c = load_text(
            "database:\n  url: sqlite:///tmp/a.db\n",
            &[
                ("GAIT_DATABASE_URL", "postgres://u:pw@db/gait"),
                ("GAIT_RECONNECT_RATE", "5"),
                ("GAIT_SESSION_TICKETS", "false"),
            ],
        )
        .expect("valid");
        assert_eq!(c.effective_database_url(), "postgres://u:pw@db/gait");
        assert_eq!(c.quic.reconnect_rate, 5);
        assert!(!c.quic.session_tickets);
        let err = load_text("", &[("GAIT_QUIC_LISTEN", "nowhere")]).expect_err("bad env");
        assert_eq!(err.problems()[0].key, "quic.listen");
        assert!(err.to_string().contains("GAIT_QUIC_LISTEN"), "{err}");
    }

    #[test]
    fn plain_http_is_the_loopback_default_and_https_elsewhere() {
        let c = load_text("", &[]).expect("valid");
        assert!(!c.http.tls_enabled());
        assert_eq!(c.http_tls_files(), None);
        let c =
            load_text("data_dir: /srv/gait\nhttp:\n  listen: 0.0.0.0:7080\n", &[]).expect("valid");
        assert!(c.http.tls_enabled());
        assert_eq!(c.client_server(), "https://localhost:7080");
        let files = c.http_tls_files().expect("https");
        assert_eq!(files.cert, PathBuf::from("/srv/gait/pki/server.pem"));
        assert!(files.from_pki);
        assert_eq!(c.client_ca_file(), PathBuf::from("/srv/gait/pki/ca.pem"));
        let c = load_text("http:\n  tls:\n    enabled: true\n", &[]).expect("valid");
        assert_eq!(c.client_server(), "https://localhost:7080");
        let c = load_text(
            "http:\n  listen: 127.0.0.1:7080\n  tls:\n    enabled: false\n",
            &[],
        )
        .expect("loopback may opt out");
        assert!(!c.http.tls_enabled());
    }

    #[test]
    fn plain_http_off_loopback_is_refused_naming_the_key_and_the_remedy() {
        for (text, env) in [
            (
                "http:\n  listen: 0.0.0.0:7080\n  tls:\n    enabled: false\n",
                vec![],
            ),
            (
                "http:\n  listen: 10.1.2.3:7080\n",
                vec![("GAIT_HTTP_TLS", "false")],
            ),
        ] {
            let err = load_text(text, &env).expect_err("plain HTTP off loopback");
            assert_eq!(err.problems()[0].key, "http.listen", "{err}");
            let message = err.to_string();
            assert!(message.contains("http.tls.enabled"), "{message}");
            assert!(message.contains("loopback"), "{message}");
        }
    }

    #[test]
    fn an_own_certificate_needs_its_key_and_relative_paths_follow_the_file() {
        let err = load_text(
            "http:\n  listen: 0.0.0.0:7080\n  tls:\n    cert_file: api.pem\n",
            &[],
        )
        .expect_err("no key");
        assert_eq!(err.problems()[0].key, "http.tls.key_file");
        let c = load_text(
            "http:\n  listen: 0.0.0.0:7080\n  tls:\n    cert_file: api.pem\n    key_file: api.key\nclient:\n  ca_file: ca.pem\n",
            &[],
        )
        .expect("valid");
        let files = c.http_tls_files().expect("https");
        assert!(files.cert.is_absolute() && files.cert.ends_with("api.pem"));
        assert!(files.key.is_absolute() && !files.from_pki);
        assert!(c.client_ca_file().is_absolute());
    }

    #[test]
    fn oidc_is_off_by_default_and_its_problems_name_their_keys() {
        let c = load_text("", &[]).expect("valid");
        assert!(!c.auth.oidc.enabled());
        assert_eq!(c.auth.oidc.algorithms, ["RS256", "ES256", "EdDSA"]);
        assert_eq!(c.auth.oidc.token_cache_size, 4_096);
        let c = load_text(
            "auth:\n  oidc:\n    issuer: https://idp.example.com\n    audience: gait\n    jwks_file: keys/jwks.json\n",
            &[],
        )
        .expect("valid");
        assert!(c.auth.oidc.enabled());
        assert!(
            c.auth
                .oidc
                .jwks_file
                .as_ref()
                .is_some_and(|p| p.is_absolute())
        );
        let err = load_text(
            "auth:\n  oidc:\n    issuer: http://idp.example.com\n    jwks_url: https://x/jwks\n    jwks_file: j.json\n    algorithms: [RS256, HS256, none]\n    leeway_seconds: 301\n    unknown_kid_refresh_seconds: 0\n    token_cache_size: 100001\n",
            &[],
        )
        .expect_err("invalid");
        let keys: Vec<&str> = err.problems().iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "auth.oidc.issuer",
                "auth.oidc.audience",
                "auth.oidc.jwks_file",
                "auth.oidc.algorithms[1]",
                "auth.oidc.algorithms[2]",
                "auth.oidc.leeway_seconds",
                "auth.oidc.unknown_kid_refresh_seconds",
                "auth.oidc.token_cache_size"
            ]
        );
        assert!(err.to_string().contains("HMAC"), "{err}");
        let err = load_text("auth:\n  oidc:\n    audience: gait\n", &[]).expect_err("no issuer");
        assert_eq!(err.problems()[0].key, "auth.oidc.issuer");
        let c = load_text(
            "auth:\n  oidc:\n    issuer: http://127.0.0.1:9000/\n    audience: gait\n",
            &[],
        )
        .expect("loopback http is allowed");
        assert!(c.auth.oidc.enabled());
    }

    #[test]
    fn redaction_hides_passwords_only() {
        assert_eq!(
            redact_url("postgres://gait:s3cret@db:5432/gait?sslmode=require"),
            "postgres://gait:***@db:5432/gait?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://gait@db/gait?password=s3cret"),
            "postgres://gait@db/gait?password=***"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/a.db?mode=rwc"),
            "sqlite:///var/lib/a.db?mode=rwc"
        );
        let mut c = Config::default();
        c.database.url = Some("postgres://u:pw@h/d".into());
        assert!(!format!("{:?}", c.redacted()).contains("pw@"));
    }
}
