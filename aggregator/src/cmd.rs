//! The binary's subcommands: each merges its flags into the [`Config`] and calls the library. The only place
//! besides `main.rs` that uses `anyhow`.

pub mod access;
pub mod agents;
pub mod alerts;
pub mod analysis;
pub mod approvals;
pub mod artifact;
pub mod artifacts;
pub mod audit;
pub mod backup;
pub mod bundle;
pub mod config;
pub mod conformance;
pub mod ingest_file;
pub mod join_token;
pub mod keys;
pub mod migrate;
pub mod pki;
pub mod policy;
pub mod publish;
pub mod records;
pub mod replay;
pub mod rollout;
pub mod serve;
pub mod table;
pub mod trace_keys;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use gait_aggregator::config::{ADMIN_TOKEN_FILE, Config};
use gait_runtime::http::client::{Client, ClientError};
use gait_runtime::http::tls::HandshakeFailure;

/// Where the data directory is and which database it uses (overrides `data_dir` and `database.url`).
#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Data directory (SQLite database, PKI, keys, admin token) [key: data_dir, env: GAIT_DATA_DIR, default:
    /// ./gait-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL URL (`postgres://user@host/db`) [key: database.url, env: GAIT_DATABASE_URL]; the default is
    /// SQLite in the data directory.
    #[arg(long)]
    pub database_url: Option<String>,
}

impl DataArgs {
    /// `config` with these flags applied, validated again.
    pub fn apply(&self, mut config: Config) -> anyhow::Result<Config> {
        if let Some(dir) = &self.data_dir {
            config.data_dir = dir.clone();
        }
        if let Some(url) = &self.database_url {
            config.database.url = Some(url.clone());
        }
        config.validate()?;
        Ok(config)
    }
}

/// How to reach the HTTP API (overrides `client.server`, `client.token_file` and `client.ca_file`).
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of the aggregator's HTTP API, http:// or https:// [key: client.server, env:
    /// GAIT_AGGREGATOR_URL, default: http://<http.listen>, i.e. http://127.0.0.1:7080; when the API is HTTPS
    /// https://<http.listen>, with localhost for a loopback or unspecified listen address].
    #[arg(long)]
    pub server: Option<String>,
    /// CA certificate (PEM) an https:// server is verified against; no system roots are trusted [key:
    /// client.ca_file, env: GAIT_CA_FILE, default: <data_dir>/pki/ca.pem, the deployment CA].
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// File holding the admin bearer token [key: client.token_file, env: GAIT_TOKEN_FILE, default:
    /// <data_dir>/admin.token, i.e. ./gait-data/admin.token].
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

/// The HTTP API an operator command talks to.
#[derive(Debug, Clone)]
pub struct Api {
    /// Base URL without a trailing slash.
    pub server: String,
    /// The admin token file.
    pub token_file: PathBuf,
    /// The CA an `https://` server is verified against.
    pub ca_file: PathBuf,
}

impl ApiArgs {
    /// The API to call: these flags over `config`.
    pub fn resolve(&self, mut config: Config) -> anyhow::Result<Api> {
        if let Some(server) = &self.server {
            config.client.server = Some(server.clone());
        }
        if let Some(file) = &self.token_file {
            config.client.token_file = Some(file.clone());
        }
        if let Some(file) = &self.ca_file {
            config.client.ca_file = Some(file.clone());
        }
        config.validate()?;
        Ok(Api {
            server: config.client_server().trim_end_matches('/').to_owned(),
            token_file: config.client_token_file(),
            ca_file: config.client_ca_file(),
        })
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| {
        format!("reading the admin token {} (written by `gait-aggregator serve` into <data-dir>/{ADMIN_TOKEN_FILE}; pass --token-file)", path.display())
    })?;
    Ok(token.trim().to_owned())
}

/// Prints the API's refusal of a call to stderr: `error: (<status>): <the error's message>`.
fn print_refusal(status: http::StatusCode, answer: &serde_json::Value) {
    gait_runtime::errln!(
        "error: ({status}): {}",
        answer["error"]["message"].as_str().unwrap_or("no message")
    );
}

/// [`print_refusal`], then exit code 1 (failure) for the command.
fn refused(status: http::StatusCode, answer: &serde_json::Value) -> std::process::ExitCode {
    print_refusal(status, answer);
    std::process::ExitCode::from(gait_runtime::exit::FAILURE)
}

/// [`print_refusal`], then exit code 65 (bad input) when the server refused the request (4xx), 1 otherwise.
fn refused_by_status(
    status: http::StatusCode,
    answer: &serde_json::Value,
) -> std::process::ExitCode {
    print_refusal(status, answer);
    std::process::ExitCode::from(if status.is_client_error() {
        gait_runtime::exit::DATAERR
    } else {
        gait_runtime::exit::FAILURE
    })
}

/// How long one API call may take, connection and TLS handshake included.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The HTTP client for `api`: an `https://` server is verified against the CA file only (read here, so a
/// plain `http://` API needs no CA).
fn client(api: &Api) -> anyhow::Result<Client> {
    if !api.server.starts_with("https://") {
        return Ok(Client::new(None, CALL_TIMEOUT));
    }
    let tls = gait_runtime::http::tls::client_config(&api.ca_file).with_context(|| {
        format!(
            "loading the CA certificate {} to verify {} (the deployment CA is <data-dir>/pki/ca.pem on the \
             aggregator host, made by `gait-aggregator pki init`; copy it here and pass --ca-file)",
            api.ca_file.display(),
            api.server
        )
    })?;
    Ok(Client::new(Some(tls), CALL_TIMEOUT))
}

/// What the operator does about a failed call, by cause.
fn explain(api: &Api, url: &str, error: &ClientError) -> String {
    match error {
        ClientError::Handshake {
            failure: HandshakeFailure::NameMismatch,
            ..
        } => format!(
            "the aggregator's certificate does not name the host in {url}: reach it by a name the certificate \
             carries (--server), or add the name on the aggregator host with `gait-aggregator pki \
             reissue-server --server-name <host>` and restart it"
        ),
        ClientError::Handshake {
            failure: HandshakeFailure::UntrustedCertificate,
            ..
        } => format!(
            "the aggregator's certificate is not signed by the CA in {}: pass --ca-file with that \
             aggregator's deployment CA (<data-dir>/pki/ca.pem)",
            api.ca_file.display()
        ),
        ClientError::Handshake {
            failure: HandshakeFailure::Expired,
            ..
        } => "the aggregator's certificate has expired (or the clock is wrong): re-issue it with \
              `gait-aggregator pki reissue-server` and restart the aggregator"
            .to_owned(),
        ClientError::Handshake { .. } => format!(
            "no TLS with {url}: if the API is served as plain HTTP (a loopback listen), use an http:// URL"
        ),
        ClientError::Http { .. } if url.starts_with("http://") => format!(
            "the aggregator at {url} closed the connection: if its API is HTTPS (any non-loopback listen), \
             use an https:// URL"
        ),
        _ => format!(
            "cannot reach the aggregator at {url} (is `gait-aggregator serve` running? set --server)"
        ),
    }
}

async fn call(
    api: &Api,
    method: http::Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(http::StatusCode, serde_json::Value)> {
    let (status, bytes) = call_raw(api, method, url, body).await?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let value = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text }));
    Ok((status, value))
}

/// [`call`] answering the body's bytes as they came (a signed bundle, not JSON).
async fn call_raw(
    api: &Api,
    method: http::Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<(http::StatusCode, bytes::Bytes)> {
    let token = read_token(&api.token_file)?;
    let client = client(api)?;
    let mut headers = http::HeaderMap::new();
    let bearer = http::HeaderValue::from_str(&format!("Bearer {token}")).with_context(|| {
        format!(
            "the admin token in {} is not a valid header value",
            api.token_file.display()
        )
    })?;
    headers.insert(http::header::AUTHORIZATION, bearer);
    let bytes = match body {
        Some(body) => {
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            bytes::Bytes::from(serde_json::to_vec(&body).context("encoding the request")?)
        }
        None => bytes::Bytes::new(),
    };
    let response = match client.request(method, url, headers, bytes).await {
        Ok(response) => response,
        Err(error) => {
            let advice = explain(api, url, &error);
            return Err(anyhow::Error::new(error).context(advice));
        }
    };
    Ok((response.status(), response.into_body()))
}
