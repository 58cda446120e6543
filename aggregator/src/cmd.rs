//! The binary's subcommands: each merges its flags into the [`Config`] and calls the library. The only place
//! besides `main.rs` that uses `anyhow`.

pub mod agents;
pub mod config;
pub mod migrate;
pub mod pki;
pub mod publish;
pub mod serve;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use gait_aggregator::config::{ADMIN_TOKEN_FILE, Config};

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

/// How to reach the HTTP API (overrides `client.server` and `client.token_file`).
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// Base URL of the aggregator's HTTP API [key: client.server, env: GAIT_AGGREGATOR_URL, default:
    /// http://<http.listen>, i.e. http://127.0.0.1:7080].
    #[arg(long)]
    pub server: Option<String>,
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
        config.validate()?;
        Ok(Api {
            server: config.client_server().trim_end_matches('/').to_owned(),
            token_file: config.client_token_file(),
        })
    }
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path).with_context(|| {
        format!("reading the admin token {} (written by `gait-aggregator serve` into <data-dir>/{ADMIN_TOKEN_FILE}; pass --token-file)", path.display())
    })?;
    Ok(token.trim().to_owned())
}

async fn call(
    api: &Api,
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
