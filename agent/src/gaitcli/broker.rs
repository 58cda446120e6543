//! Credential brokers for `gate eval --credential-broker` (Gait's `core/credential`): when the deciding rule
//! says `require_broker_credential` and the verdict is allow, a broker must issue a credential reference or the
//! call is blocked. `env` reads `GAIT_BROKER_TOKEN_<REFERENCE>`; `command` runs a local program with the request
//! as JSON on stdin (5 s timeout, 16 KiB output cap); `stub` derives a reference from the request. Nothing here
//! touches the network, and the credential value itself is never logged, printed or written: only a reference
//! (`env:<KEY>:<first 8 bytes of its SHA-256>` for the env broker) leaves this module.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gait_artifact::GoTime;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Prefix of the env broker's variables.
pub const DEFAULT_ENV_PREFIX: &str = "GAIT_BROKER_TOKEN_";
/// Env var listing the commands the command broker may run (comma-separated paths or base names).
pub const COMMAND_ALLOWLIST_ENV: &str = "GAIT_CREDENTIAL_COMMAND_ALLOWLIST";
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
const COMMAND_OUTPUT_MAX_BYTES: usize = 16 * 1024;
const CREDENTIAL_REF_MAX_LEN: usize = 256;

/// A configured broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Broker {
    /// Deterministic reference from the request (tests and demos).
    Stub,
    /// Credentials in environment variables `<prefix><REFERENCE>`.
    Env {
        /// Variable prefix (default [`DEFAULT_ENV_PREFIX`]).
        prefix: String,
    },
    /// A local program that answers with a JSON credential reference.
    Command {
        /// Program path (no whitespace).
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// The broker flags could not be turned into a broker (invalid input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerConfigError {
    /// `--credential-broker` names no broker.
    #[error("unsupported credential broker: {0} (expected off, stub, env or command)")]
    Unsupported(String),
    /// `command` without `--credential-command`.
    #[error("command broker requires --credential-command")]
    MissingCommand,
    /// The command is not in [`COMMAND_ALLOWLIST_ENV`].
    #[error("command broker command is not in allowlist {COMMAND_ALLOWLIST_ENV}")]
    NotAllowed,
}

/// Gait's `ResolveBroker`: `None` for off/none/empty. `allowlist` is the value of [`COMMAND_ALLOWLIST_ENV`].
pub fn resolve(
    name: &str,
    env_prefix: &str,
    command: &str,
    command_args_csv: &str,
    allowlist: Option<&str>,
) -> Result<Option<Broker>, BrokerConfigError> {
    match name.trim().to_lowercase().as_str() {
        "" | "off" | "none" => Ok(None),
        "stub" => Ok(Some(Broker::Stub)),
        "env" => Ok(Some(Broker::Env {
            prefix: env_prefix.trim().to_owned(),
        })),
        "command" => {
            let program = command.trim();
            if program.is_empty() {
                return Err(BrokerConfigError::MissingCommand);
            }
            let allowed: Vec<&str> = allowlist
                .unwrap_or_default()
                .split(',')
                .map(|e| e.trim().trim_end_matches('/'))
                .filter(|e| !e.is_empty() && *e != ".")
                .collect();
            if !allowed.is_empty() {
                let base = program.rsplit('/').next().unwrap_or(program);
                if !allowed.iter().any(|a| *a == program || *a == base) {
                    return Err(BrokerConfigError::NotAllowed);
                }
            }
            Ok(Some(Broker::Command {
                program: program.to_owned(),
                args: command_args_csv
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }))
        }
        other => Err(BrokerConfigError::Unsupported(other.to_owned())),
    }
}

/// What the broker is asked for. Serialized with Go's default (untagged) field names, as Gait's command broker
/// receives it on stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Request {
    /// Normalized tool name.
    pub tool_name: String,
    /// Caller identity.
    pub identity: String,
    /// Workspace.
    pub workspace: String,
    /// Session id.
    #[serde(rename = "SessionID")]
    pub session_id: String,
    /// Request id.
    #[serde(rename = "RequestID")]
    pub request_id: String,
    /// Broker reference (`--credential-ref` or the rule's `broker_reference`).
    pub reference: String,
    /// Scopes (lowercased, de-duplicated).
    pub scope: Vec<String>,
}

/// An issued credential reference (never the credential itself).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Issued {
    /// Which broker issued it.
    #[serde(default)]
    pub issued_by: String,
    /// Opaque reference to the credential.
    #[serde(default)]
    pub credential_ref: String,
    /// Issue time (zero when unknown).
    #[serde(default)]
    pub issued_at: GoTime,
    /// Expiry (zero when unknown).
    #[serde(default)]
    pub expires_at: GoTime,
    /// Lifetime in seconds (0 when unknown).
    #[serde(default)]
    pub ttl_seconds: i64,
}

/// The broker could not issue a credential (the call is blocked with `broker_credential_missing`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// The request lacks a tool name or identity.
    #[error("{0} is required")]
    Request(&'static str),
    /// The env var is unset or blank.
    #[error("credential unavailable: {0}")]
    EnvUnset(String),
    /// The command failed, timed out, said too much or answered badly.
    #[error("credential unavailable: command broker {0}")]
    Command(String),
    /// The broker's answer holds no usable reference.
    #[error("broker returned an unusable credential reference: {0}")]
    BadReference(&'static str),
}

impl Broker {
    /// The broker's name (`issued_by` default).
    pub fn name(&self) -> &'static str {
        match self {
            Broker::Stub => "stub",
            Broker::Env { .. } => "env",
            Broker::Command { .. } => "command",
        }
    }

    /// Gait's `credential.Issue`: normalize the request, ask the broker, fill in issue/expiry/ttl.
    /// `env` looks variables up through `getenv` so tests need not touch the process environment.
    pub fn issue(
        &self,
        request: &Request,
        getenv: &dyn Fn(&str) -> Option<String>,
        now: OffsetDateTime,
    ) -> Result<Issued, IssueError> {
        let request = normalize_request(request)?;
        let mut issued = match self {
            Broker::Stub => stub(&request, now),
            Broker::Env { prefix } => env(&request, prefix, getenv)?,
            Broker::Command { program, args } => command(&request, program, args)?,
        };
        issued.issued_by = issued.issued_by.trim().to_owned();
        issued.credential_ref = issued.credential_ref.trim().to_owned();
        if issued.issued_by.is_empty() {
            issued.issued_by = self.name().to_owned();
        }
        if issued.credential_ref.is_empty() {
            return Err(IssueError::BadReference("empty credential_ref"));
        }
        issued.issued_at = issued.issued_at.to_utc();
        issued.expires_at = issued.expires_at.to_utc();
        if issued.issued_at.is_zero() && !issued.expires_at.is_zero() {
            issued.issued_at = GoTime::from_datetime(now);
        }
        let (issued_at, expires_at) = (issued.issued_at.datetime(), issued.expires_at.datetime());
        if !issued.issued_at.is_zero()
            && !issued.expires_at.is_zero()
            && expires_at > issued_at
            && issued.ttl_seconds == 0
        {
            issued.ttl_seconds = (expires_at - issued_at).whole_seconds();
        }
        if issued.ttl_seconds > 0 && !issued.issued_at.is_zero() && issued.expires_at.is_zero() {
            issued.expires_at =
                GoTime::from_datetime(issued_at + time::Duration::seconds(issued.ttl_seconds));
        }
        Ok(issued)
    }
}

fn normalize_scope(scope: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(scope.len());
    for s in scope {
        let s = s.trim().to_lowercase();
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

fn normalize_request(request: &Request) -> Result<Request, IssueError> {
    let tool_name = request.tool_name.trim().to_lowercase();
    if tool_name.is_empty() {
        return Err(IssueError::Request("tool_name"));
    }
    let identity = request.identity.trim().to_owned();
    if identity.is_empty() {
        return Err(IssueError::Request("identity"));
    }
    Ok(Request {
        tool_name,
        identity,
        workspace: request.workspace.trim().to_owned(),
        session_id: request.session_id.trim().to_owned(),
        request_id: request.request_id.trim().to_owned(),
        reference: request.reference.trim().to_owned(),
        scope: normalize_scope(&request.scope),
    })
}

fn stub(request: &Request, now: OffsetDateTime) -> Issued {
    let raw = [
        request.tool_name.as_str(),
        &request.identity,
        &request.workspace,
        &request.session_id,
        &request.request_id,
        &request.reference,
        &request.scope.join(","),
    ]
    .join("|");
    let digest = gait_canon::sha256(raw.as_bytes());
    let ttl = 300;
    Issued {
        issued_by: "stub".into(),
        credential_ref: format!("stub:{}", hex::encode(&digest[..12])),
        issued_at: GoTime::from_datetime(now),
        expires_at: GoTime::from_datetime(now + time::Duration::seconds(ttl)),
        ttl_seconds: ttl,
    }
}

/// Gait's env key: upper-case, `.`/`-`/other non `[A-Z0-9_]` runs → `_`, trimmed of `_`, `DEFAULT` when empty.
pub fn env_key(name: &str) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for c in name.trim().to_uppercase().chars() {
        let c = if c == '.' || c == '-' { '_' } else { c };
        if c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('_');
            in_run = true;
        }
    }
    let trimmed = out.trim_matches('_');
    if trimmed.is_empty() {
        "DEFAULT".into()
    } else {
        trimmed.to_owned()
    }
}

fn env(
    request: &Request,
    prefix: &str,
    getenv: &dyn Fn(&str) -> Option<String>,
) -> Result<Issued, IssueError> {
    let prefix = if prefix.trim().is_empty() {
        DEFAULT_ENV_PREFIX
    } else {
        prefix.trim()
    };
    let name = if request.reference.is_empty() {
        &request.tool_name
    } else {
        &request.reference
    };
    let key = format!("{prefix}{}", env_key(name));
    let value = getenv(&key)
        .map(|v| v.trim().to_owned())
        .unwrap_or_default();
    if value.is_empty() {
        return Err(IssueError::EnvUnset(key));
    }
    let digest = gait_canon::sha256(value.as_bytes());
    let time_var = |suffix: &str| {
        getenv(&format!("{key}{suffix}"))
            .and_then(|raw| GoTime::parse(raw.trim()).ok())
            .map(|t| t.to_utc())
            .unwrap_or_default()
    };
    let ttl_seconds = getenv(&format!("{key}_TTL_SECONDS"))
        .and_then(|raw| raw.trim().parse::<i64>().ok())
        .filter(|t| *t > 0)
        .unwrap_or(0);
    Ok(Issued {
        issued_by: "env".into(),
        credential_ref: format!("env:{key}:{}", hex::encode(&digest[..8])),
        issued_at: time_var("_ISSUED_AT"),
        expires_at: time_var("_EXPIRES_AT"),
        ttl_seconds,
    })
}

fn command(request: &Request, program: &str, args: &[String]) -> Result<Issued, IssueError> {
    let fail = |why: &str| IssueError::Command(why.to_owned());
    if program.is_empty() {
        return Err(fail("requires a command"));
    }
    if program.contains([' ', '\t', '\r', '\n']) {
        return Err(fail("command must not contain whitespace"));
    }
    let payload = serde_json::to_vec(request).map_err(|_| fail("request could not be encoded"))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|_| fail("failed"))?;
    // Feed stdin and drain both pipes on their own threads so a chatty or stuck program cannot deadlock us.
    let stdin = child.stdin.take();
    let feeder = std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&payload);
        }
    });
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut total = 0usize;
            if let Some(mut pipe) = pipe {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    total += n;
                    let room = (COMMAND_OUTPUT_MAX_BYTES + 1).saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
            (kept, total)
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let _ = feeder.join();
    let (mut output, out_total) = out.join().unwrap_or_default();
    let (err_bytes, err_total) = err.join().unwrap_or_default();
    let Some(status) = status else {
        return Err(fail("timed out"));
    };
    // Gait collects stdout and stderr into one bounded buffer.
    if out_total + err_total > COMMAND_OUTPUT_MAX_BYTES {
        return Err(fail("output exceeded 16384 bytes"));
    }
    output.extend_from_slice(&err_bytes);
    if !status.success() {
        return Err(fail("failed"));
    }
    if output.iter().all(u8::is_ascii_whitespace) {
        return Err(fail("returned empty output"));
    }
    let issued: Issued =
        gait_canon::gojson::from_slice(&output).map_err(|_| fail("must return a JSON response"))?;
    let reference = issued.credential_ref.trim();
    if reference.is_empty() {
        return Err(IssueError::BadReference("empty credential_ref"));
    }
    if reference.len() > CREDENTIAL_REF_MAX_LEN {
        return Err(IssueError::BadReference("credential_ref too long"));
    }
    if reference.contains(['\r', '\n', '\t']) {
        return Err(IssueError::BadReference(
            "credential_ref contains invalid whitespace",
        ));
    }
    Ok(issued)
}

/// `gait.gate.broker_credential_record`, written next to the trace when a credential was issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerCredentialRecord {
    /// `gait.gate.broker_credential_record`.
    pub schema_id: &'static str,
    /// `1.0.0`.
    pub schema_version: &'static str,
    /// The gate result's `created_at`.
    pub created_at: GoTime,
    /// Producer version.
    pub producer_version: String,
    /// Trace of the decision.
    pub trace_id: String,
    /// Tool name.
    pub tool_name: String,
    /// Caller identity.
    pub identity: String,
    /// Issuing broker.
    pub broker: String,
    /// Broker reference used.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reference: String,
    /// Scopes requested, sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
    /// Opaque credential reference.
    pub credential_ref: String,
    /// Issue time.
    pub issued_at: GoTime,
    /// Expiry.
    pub expires_at: GoTime,
    /// Lifetime in seconds.
    #[serde(skip_serializing_if = "is_zero")]
    pub ttl_seconds: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests;
