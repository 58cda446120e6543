//! `gait-agent gate eval --policy P --intent I …`: Gait's `gait gate eval` (contract §3.4 CLI post-processing,
//! §2.3–§2.5, §9). In Gait's order: optional Wrkr inventory and approved-script registry (fail-closed for
//! high/critical risk) → evaluation (or registry pre-approval) → rate limit → destructive budget (one locked
//! state file) → signing key → delegation token chain → approval tokens → broker credential → `--simulate` →
//! signed trace, approval and delegation audit records → one output line. The order from evaluation to
//! `--simulate` is [`crate::gate::pipeline`]'s (shared with the daemon); this file parses flags, loads files
//! and keys, checks presented tokens, runs the broker and writes the outputs. Exit 0 allow/dry_run/simulate,
//! 3 block, 4 require_approval, 6 bad input, 1 runtime failure (e.g. rate-limit lock timeout).

use std::path::{Path, PathBuf};

use clap::Args;
use gait_artifact::approval::ApprovalAuditEntry;
use gait_artifact::context::{MAX_ENVELOPE_BYTES, parse_context_envelope};
use gait_canon::sign::PublicKey;
use gait_policy::eval::WrkrInventory;
use gait_policy::gate::{
    BrokerStatus, GateDecision, RateLimitDecision, SimulateReport, TokenCheck,
};
use gait_policy::intent::ContextEvidence;
use gait_policy::{EvalOutcome, IntentRequest, NormalizedIntent, Verdict, parse_wrkr_inventory};
use serde_json::{Map, Value};

use super::audit::{self, AuditHeader, DelegationAuditEntry};
use super::broker::{self, BrokerCredentialRecord};
use super::envelope::{
    CliError, EXIT_APPROVAL_REQUIRED, EXIT_INVALID_INPUT, EXIT_OK, EXIT_POLICY_BLOCKED,
};
use super::keys::{self, KeySources, LoadedSigningKey};
use super::policy_test::{load_intent, load_policy};
use super::registry::{self, LoadedEntry};
use super::{CommandOutput, Invocation, PRODUCER_VERSION, files};
use crate::gate::GateError;
use crate::gate::pipeline::{
    self, Authorizations, Inputs, StepContext, TraceContext, fail_closed_risk,
};
use crate::gate::{tokens, trace};

/// Gait's default rate-limit state file.
pub const DEFAULT_RATE_LIMIT_STATE: &str = ".gait-out/gate_rate_limits.json";
/// Largest token / inventory file read.
const MAX_AUX_FILE_BYTES: usize = 1024 * 1024;

const LONG_ABOUT: &str = "\
Evaluate one intent request against a policy and write a signed trace, as `gait gate eval` does.

Order of operations: approved-script registry fast path (optional) -> policy evaluation -> rate limit and
destructive budget (state file, exclusive lock) -> delegation token chain (when the deciding rule requires
delegation) -> approval tokens (only for require_approval) -> broker credential -> --simulate -> signed
trace (trace_<trace_id>.json unless --trace-out, mode 0600) and approval/delegation audit records.

Context evidence: without --context-envelope the intent's context_set_digest, context_evidence_mode,
context_refs and auth_context.context_age_seconds are unauthenticated claims and are stripped before
evaluation; with a verified envelope they are replaced by the envelope's digest, mode, record ids and the
age of its oldest record. A malformed or tampered envelope is invalid input (exit 6).

Keys: --key-mode dev (default) signs with an ephemeral key and warns that the trace will not verify later;
--key-mode prod signs with --private-key/--private-key-env. Approval and delegation tokens are verified with
--approval-public-key / --delegation-public-key (falling back to the approval key, then the signing key).

Exit codes: 0 allow, dry_run or --simulate; 3 block; 4 require_approval; 6 invalid input; 1 runtime
failure (e.g. rate-limit state lock timeout).

Examples:
  gait-agent gate eval --policy policy.yaml --intent intent.json --json
  gait-agent gate eval --policy policy.yaml --intent intent.json \\
      --key-mode prod --private-key gait_private.key --trace-out traces/decision.json --json
  gait-agent gate eval --policy policy.yaml --intent intent.json \\
      --approval-token approval.json --approval-public-key approval_public.key --json
  gait-agent gate eval --policy policy.yaml --intent intent.json --context-envelope context.json --json
  gait-agent gate eval --policy policy.yaml --intent intent.json --simulate --json   # observe only";

/// Arguments of `gate eval` (Gait's flag names).
#[derive(Debug, Args)]
#[command(about = "Evaluate an intent, apply rate limits, delegation and approvals, and write a signed trace", long_about = LONG_ABOUT)]
pub struct GateEvalArgs {
    /// Policy YAML (`gait.gate.policy`).
    #[arg(long, value_name = "POLICY_YAML")]
    pub policy: Option<PathBuf>,
    /// Intent request JSON (`gait.gate.intent_request`).
    #[arg(long, value_name = "INTENT_JSON")]
    pub intent: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Trace output path (default `trace_<trace_id>.json`).
    #[arg(long, value_name = "FILE")]
    pub trace_out: Option<PathBuf>,
    /// Signed approval token (repeatable).
    #[arg(long, value_name = "FILE")]
    pub approval_token: Vec<PathBuf>,
    /// Comma-separated paths of additional approval tokens (repeatable).
    #[arg(long, value_name = "CSV")]
    pub approval_token_chain: Vec<String>,
    /// Approval reference recorded when no token grants approval.
    #[arg(long, value_name = "REF")]
    pub approval_token_ref: Option<String>,
    /// Approval audit output path (default `approval_audit_<trace_id>.json`).
    #[arg(long, value_name = "FILE")]
    pub approval_audit_out: Option<PathBuf>,
    /// Public key verifying approval tokens.
    #[arg(long, value_name = "FILE")]
    pub approval_public_key: Option<PathBuf>,
    /// Env var holding the approval public key.
    #[arg(long, value_name = "VAR")]
    pub approval_public_key_env: Option<String>,
    /// Private key whose public half verifies approval tokens.
    #[arg(long, value_name = "FILE")]
    pub approval_private_key: Option<PathBuf>,
    /// Env var holding that private key.
    #[arg(long, value_name = "VAR")]
    pub approval_private_key_env: Option<String>,
    /// Signed delegation token (repeatable).
    #[arg(long, value_name = "FILE")]
    pub delegation_token: Vec<PathBuf>,
    /// Comma-separated paths of additional delegation tokens (repeatable).
    #[arg(long, value_name = "CSV")]
    pub delegation_token_chain: Vec<String>,
    /// Delegation audit output path (default `delegation_audit_<trace_id>.json`).
    #[arg(long, value_name = "FILE")]
    pub delegation_audit_out: Option<PathBuf>,
    /// Public key verifying delegation tokens.
    #[arg(long, value_name = "FILE")]
    pub delegation_public_key: Option<PathBuf>,
    /// Env var holding the delegation public key.
    #[arg(long, value_name = "VAR")]
    pub delegation_public_key_env: Option<String>,
    /// Private key whose public half verifies delegation tokens.
    #[arg(long, value_name = "FILE")]
    pub delegation_private_key: Option<PathBuf>,
    /// Env var holding that private key.
    #[arg(long, value_name = "VAR")]
    pub delegation_private_key_env: Option<String>,
    /// Rate-limit state file (default `.gait-out/gate_rate_limits.json`).
    #[arg(long, value_name = "FILE")]
    pub rate_limit_state: Option<PathBuf>,
    /// Non-enforcing mode: report what would have been blocked, exit 0.
    #[arg(long)]
    pub simulate: bool,
    /// Signing key mode: dev (ephemeral key) or prod (explicit private key).
    #[arg(long, value_name = "MODE")]
    pub key_mode: Option<String>,
    /// Base64 Ed25519 private key file signing the trace (prod mode).
    #[arg(long, value_name = "FILE")]
    pub private_key: Option<PathBuf>,
    /// Env var holding the base64 private key (prod mode).
    #[arg(long, value_name = "VAR")]
    pub private_key_env: Option<String>,
    /// Runtime profile: standard.
    #[arg(long, value_name = "PROFILE")]
    pub profile: Option<String>,
    /// Local Wrkr inventory JSON enriching `auth_context["wrkr.*"]`.
    #[arg(long, value_name = "FILE")]
    pub wrkr_inventory: Option<PathBuf>,
    /// Approved-script registry JSON (signed entries that pre-approve script intents).
    #[arg(long, value_name = "FILE")]
    pub approved_script_registry: Option<PathBuf>,
    /// Public key verifying approved-script entries.
    #[arg(long, value_name = "FILE")]
    pub approved_script_public_key: Option<PathBuf>,
    /// Env var holding the approved-script public key.
    #[arg(long, value_name = "VAR")]
    pub approved_script_public_key_env: Option<String>,
    /// Context evidence envelope (`gait.context.envelope`); once its digest verifies, its digest, mode, refs
    /// and age replace the intent's unauthenticated context claims.
    #[arg(long, value_name = "FILE")]
    pub context_envelope: Option<PathBuf>,
    /// Credential broker when a rule requires one: off (default), stub, env or command.
    #[arg(long, value_name = "BROKER")]
    pub credential_broker: Option<String>,
    /// Env broker variable prefix (default `GAIT_BROKER_TOKEN_`).
    #[arg(long, value_name = "PREFIX")]
    pub credential_env_prefix: Option<String>,
    /// Broker reference overriding the rule's `broker_reference`.
    #[arg(long, value_name = "REF")]
    pub credential_ref: Option<String>,
    /// Comma-separated scopes added to the rule's `broker_scopes`.
    #[arg(long, value_name = "CSV")]
    pub credential_scopes: Option<String>,
    /// Program run by the command broker (request JSON on stdin, credential JSON on stdout).
    #[arg(long, value_name = "PATH")]
    pub credential_command: Option<String>,
    /// Comma-separated arguments for --credential-command.
    #[arg(long, value_name = "CSV")]
    pub credential_command_args: Option<String>,
    /// Broker credential record path (default `credential_evidence_<trace_id>.json`).
    #[arg(long, value_name = "FILE")]
    pub credential_evidence_out: Option<PathBuf>,
    /// Accepted for Gait compatibility; gait-agent never reads a project config file.
    #[arg(long, hide = true)]
    pub no_config: bool,
    /// Unexpected positional arguments (rejected like Gait).
    #[arg(hide = true, value_name = "EXTRA")]
    pub extra: Vec<String>,
}

/// Run `gate eval`.
pub fn run(args: &GateEvalArgs, invocation: &Invocation) -> CommandOutput {
    match evaluate_gate(args, invocation) {
        Ok(output) => output,
        Err(err) => CommandOutput::error("gate eval", &err),
    }
}

fn invalid(message: impl Into<String>) -> CliError {
    CliError::classified(message, EXIT_INVALID_INPUT)
}

/// Every pipeline error is invalid input to Gait (exit 6), except that a message naming a lock or timeout
/// (rate-limit state contention) is a runtime failure (exit 1), as Gait classifies it.
impl From<GateError> for CliError {
    fn from(err: GateError) -> CliError {
        invalid(err.to_string())
    }
}

/// Trimmed, de-duplicated, sorted token paths from the repeatable flag and the CSV chains (Gait's
/// `gatherApprovalTokenPaths`).
fn gather_paths(primary: &[PathBuf], chains: &[String]) -> Vec<PathBuf> {
    let mut paths: Vec<String> = primary
        .iter()
        .map(|p| p.to_string_lossy().trim().to_owned())
        .chain(
            chains
                .iter()
                .flat_map(|c| c.split(',').map(|p| p.trim().to_owned())),
        )
        .filter(|p| !p.is_empty())
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths.into_iter().map(PathBuf::from).collect()
}

/// Startup state gathered before evaluation.
struct Setup {
    warnings: Vec<String>,
    context_evidence: Option<ContextEvidence>,
    wrkr: Option<(WrkrInventory, String)>,
    registry_entries: Vec<LoadedEntry>,
}

/// Go's `filepath.Clean(strings.TrimSpace(path))`: lexical, `.` for an empty result.
fn go_clean_path(path: &str) -> String {
    let path = path.trim();
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

fn load_wrkr(
    path: &Path,
    intent: &IntentRequest,
    warnings: &mut Vec<String>,
) -> Result<Option<(WrkrInventory, String)>, CliError> {
    let loaded = files::read_bounded(path, MAX_AUX_FILE_BYTES)
        .map_err(|e| format!("read wrkr inventory: {e}"))
        .and_then(|bytes| parse_wrkr_inventory(&bytes).map_err(|e| e.to_string()));
    match loaded {
        Ok(inventory) => Ok(Some((inventory, go_clean_path(&path.to_string_lossy())))),
        Err(e) if fail_closed_risk(intent) => Err(CliError::with_exit(
            format!("wrkr inventory unavailable in fail-closed mode: {e}"),
            EXIT_POLICY_BLOCKED,
        )),
        Err(_) => {
            warnings
                .push("wrkr inventory unavailable; continuing without context enrichment".into());
            Ok(None)
        }
    }
}

fn load_registry(
    args: &GateEvalArgs,
    path: &Path,
    intent: &IntentRequest,
    warnings: &mut Vec<String>,
) -> Result<Vec<LoadedEntry>, CliError> {
    let fail_closed = fail_closed_risk(intent);
    let entries = match registry::read_registry(path) {
        Ok(entries) => entries,
        Err(e) if fail_closed => {
            return Err(CliError::with_exit(
                format!("approved script registry unavailable in fail-closed mode: {e}"),
                EXIT_POLICY_BLOCKED,
            ));
        }
        Err(_) => {
            warnings.push(
                "approved script registry unavailable; continuing without fast-path pre-approval"
                    .into(),
            );
            return Ok(Vec::new());
        }
    };
    let mut sources = KeySources {
        public_path: args.approved_script_public_key.clone(),
        public_env: args.approved_script_public_key_env.clone(),
        ..KeySources::default()
    };
    if !sources.has_any() {
        sources = approval_key_sources(args);
    }
    if !sources.has_any() {
        if fail_closed {
            return Err(CliError::with_exit(
                "approved script registry verification unavailable in fail-closed mode: verify key required",
                EXIT_POLICY_BLOCKED,
            ));
        }
        warnings.push(
            "approved script fast-path disabled because registry verify key is not configured"
                .into(),
        );
        return Ok(Vec::new());
    }
    let key = keys::load_verify_key(&sources)?;
    let now = crate::clock::now_utc();
    for (index, entry) in entries.iter().enumerate() {
        if let Err(e) = registry::verify_entry(entry, &key, now) {
            if fail_closed {
                return Err(CliError::with_exit(
                    format!("approved script registry verification failed at entry {index}: {e}"),
                    EXIT_POLICY_BLOCKED,
                ));
            }
            warnings.push(
                "approved script registry entry failed verification; fast-path disabled".into(),
            );
            return Ok(Vec::new());
        }
    }
    Ok(entries)
}

/// Read and verify `--context-envelope` (Gait's `LoadEnvelope`): at most 1 MiB, strict fields, digest sealed.
fn load_context_envelope(path: &Path) -> Result<ContextEvidence, CliError> {
    let bytes = files::read_bounded(path, MAX_ENVELOPE_BYTES)
        .map_err(|e| invalid(format!("read context envelope {}: {e}", path.display())))?;
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(invalid(format!(
            "context envelope exceeds size limit ({MAX_ENVELOPE_BYTES} bytes)"
        )));
    }
    let envelope = parse_context_envelope(&bytes)
        .map_err(|e| invalid(format!("context envelope {}: {e}", path.display())))?;
    Ok(ContextEvidence {
        context_refs: envelope.context_refs(),
        context_age_seconds: envelope.age_seconds(crate::clock::now_utc()),
        context_set_digest: envelope.context_set_digest,
        evidence_mode: envelope.evidence_mode,
    })
}

fn approval_key_sources(args: &GateEvalArgs) -> KeySources {
    KeySources {
        public_path: args.approval_public_key.clone(),
        public_env: args.approval_public_key_env.clone(),
        private_path: args.approval_private_key.clone(),
        private_env: args.approval_private_key_env.clone(),
    }
}

fn delegation_key_sources(args: &GateEvalArgs) -> KeySources {
    let sources = KeySources {
        public_path: args.delegation_public_key.clone(),
        public_env: args.delegation_public_key_env.clone(),
        private_path: args.delegation_private_key.clone(),
        private_env: args.delegation_private_key_env.clone(),
    };
    if sources.has_any() {
        sources
    } else {
        approval_key_sources(args)
    }
}

/// What the delegation step produced.
#[derive(Default)]
struct DelegationResult {
    required: bool,
    token_ref: String,
    entries: Vec<DelegationAuditEntry>,
}

/// Verify the presented delegation tokens against the intent's claimed chain ([`tokens`], shared with the
/// daemon): the token checks the pipeline applies, and the audit entries.
fn delegation_checks(
    args: &GateEvalArgs,
    ctx: &StepContext<'_>,
    signing_public: PublicKey,
) -> Result<(Vec<TokenCheck>, Vec<DelegationAuditEntry>), CliError> {
    let sources = delegation_key_sources(args);
    let key = if sources.has_any() {
        keys::load_verify_key(&sources)?
    } else {
        signing_public
    };
    let paths = gather_paths(&args.delegation_token, &args.delegation_token_chain);
    let mut raw_tokens = Vec::with_capacity(paths.len());
    for path in &paths {
        let bytes = files::read_bounded(path, MAX_AUX_FILE_BYTES)
            .map_err(|e| invalid(format!("read delegation token: {e}")))?;
        raw_tokens.push(bytes);
    }
    let presented: Vec<&[u8]> = raw_tokens.iter().map(Vec::as_slice).collect();
    tokens::check_delegation_tokens(&presented, &key, ctx).map_err(|e| invalid(e.to_string()))
}

/// What the approval step produced.
#[derive(Default)]
struct ApprovalResult {
    required: i64,
    token_ref: String,
    entries: Vec<ApprovalAuditEntry>,
}

/// Validate the presented approval tokens ([`tokens`], shared with the daemon): the token checks the pipeline
/// applies, and the audit entries.
fn approval_checks(
    args: &GateEvalArgs,
    ctx: &StepContext<'_>,
    signing_public: PublicKey,
) -> Result<(Vec<TokenCheck>, Vec<ApprovalAuditEntry>), CliError> {
    let sources = approval_key_sources(args);
    let key = if sources.has_any() {
        keys::load_verify_key(&sources)?
    } else {
        signing_public
    };
    let mut raw_tokens = Vec::new();
    for path in gather_paths(&args.approval_token, &args.approval_token_chain) {
        let bytes = files::read_bounded(&path, MAX_AUX_FILE_BYTES)
            .map_err(|e| invalid(format!("read approval token: {e}")))?;
        raw_tokens.push(bytes);
    }
    let presented: Vec<&[u8]> = raw_tokens.iter().map(Vec::as_slice).collect();
    tokens::check_approval_tokens(&presented, &key, ctx).map_err(|e| invalid(e.to_string()))
}

/// The CLI's keys, tokens and broker, consulted by the pipeline at its steps 5–8.
struct CliAuthorizations<'a> {
    args: &'a GateEvalArgs,
    key_mode: &'a str,
    broker: Option<&'a broker::Broker>,
    signing: Option<LoadedSigningKey>,
    delegation_entries: Vec<DelegationAuditEntry>,
    approval_ran: bool,
    approval_entries: Vec<ApprovalAuditEntry>,
    credential: Option<IssuedCredential>,
}

impl CliAuthorizations<'_> {
    fn signing_public(&self) -> Result<PublicKey, CliError> {
        self.signing
            .as_ref()
            .map(|s| s.key.public_key())
            .ok_or_else(|| CliError::with_exit("signing key not loaded", EXIT_INVALID_INPUT))
    }
}

impl Authorizations for CliAuthorizations<'_> {
    type Error = CliError;

    fn load_keys(&mut self) -> Result<(), CliError> {
        let signing = keys::load_signing_key(
            self.key_mode,
            &KeySources {
                private_path: self.args.private_key.clone(),
                private_env: self.args.private_key_env.clone(),
                ..KeySources::default()
            },
        )?;
        self.signing = Some(signing);
        Ok(())
    }

    fn delegation_tokens(&mut self, ctx: &StepContext<'_>) -> Result<Vec<TokenCheck>, CliError> {
        let (checks, entries) = delegation_checks(self.args, ctx, self.signing_public()?)?;
        self.delegation_entries = entries;
        Ok(checks)
    }

    fn approval_tokens(&mut self, ctx: &StepContext<'_>) -> Result<Vec<TokenCheck>, CliError> {
        self.approval_ran = true;
        let (checks, entries) = approval_checks(self.args, ctx, self.signing_public()?)?;
        self.approval_entries = entries;
        Ok(checks)
    }

    fn broker_credential(&mut self, ctx: &StepContext<'_>) -> BrokerStatus {
        let (status, credential) = issue_credential(self.args, self.broker, ctx);
        self.credential = credential;
        status
    }
}

/// Gait's exit code for the final verdict: 3 block, 4 require_approval, otherwise 0 (after `--simulate`
/// the verdict is never `block` or `require_approval`).
fn exit_for(verdict: Verdict) -> u8 {
    match verdict {
        Verdict::Block => EXIT_POLICY_BLOCKED,
        Verdict::RequireApproval => EXIT_APPROVAL_REQUIRED,
        Verdict::Allow | Verdict::DryRun => EXIT_OK,
    }
}

fn evaluate_gate(args: &GateEvalArgs, invocation: &Invocation) -> Result<CommandOutput, CliError> {
    if !args.extra.is_empty() {
        return Err(CliError::invalid("unexpected positional arguments"));
    }
    let profile = match args.profile.as_deref().map(str::trim).unwrap_or_default() {
        "" | "standard" => "standard",
        other => {
            return Err(CliError::invalid(format!(
                "unsupported --profile value {other:?} (gait-agent supports standard)"
            )));
        }
    };
    let key_mode = args
        .key_mode
        .as_deref()
        .map(|m| m.trim().to_lowercase())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "dev".to_owned());
    let state_path = args
        .rate_limit_state
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RATE_LIMIT_STATE));
    let (Some(policy_path), Some(intent_path)) = (&args.policy, &args.intent) else {
        return Err(CliError::invalid("both --policy and --intent are required"));
    };
    let policy = load_policy(policy_path)?;
    let raw_intent = load_intent(intent_path)?;
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let resolved_broker = broker::resolve(
        &opt(&args.credential_broker),
        &opt(&args.credential_env_prefix),
        &opt(&args.credential_command),
        &opt(&args.credential_command_args),
        std::env::var(broker::COMMAND_ALLOWLIST_ENV).ok().as_deref(),
    )
    .map_err(|e| invalid(e.to_string()))?;

    let mut setup = Setup {
        warnings: Vec::new(),
        context_evidence: match args
            .context_envelope
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(path) => Some(load_context_envelope(path)?),
            None => None,
        },
        wrkr: None,
        registry_entries: Vec::new(),
    };
    if let Some(path) = args
        .wrkr_inventory
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        setup.wrkr = load_wrkr(path, &raw_intent, &mut setup.warnings)?;
    }
    if let Some(path) = args
        .approved_script_registry
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        setup.registry_entries = load_registry(args, path, &raw_intent, &mut setup.warnings)?;
    }

    let policy_digest = policy.digest();
    let inputs = Inputs {
        policy: &policy,
        policy_digest: &policy_digest,
        context_evidence: setup.context_evidence.as_ref(),
        wrkr: setup.wrkr.as_ref(),
        registry_entries: &setup.registry_entries,
        rate_limits: crate::gate::pipeline::RateLimits::File(&state_path),
        simulate: args.simulate,
        apply_limits: true,
    };
    let mut auth = CliAuthorizations {
        args,
        key_mode: &key_mode,
        broker: resolved_broker.as_ref(),
        signing: None,
        delegation_entries: Vec::new(),
        approval_ran: false,
        approval_entries: Vec::new(),
        credential: None,
    };
    let evaluated = pipeline::run(&inputs, &raw_intent, &mut auth)?;
    let signing = auth
        .signing
        .take()
        .ok_or_else(|| CliError::with_exit("signing key not loaded", EXIT_INVALID_INPUT))?;
    let outcome = &evaluated.outcome;
    let decision = &evaluated.decision;
    let intent = &evaluated.intent;
    let delegation = DelegationResult {
        required: evaluated.delegation.is_some(),
        token_ref: evaluated
            .delegation
            .as_ref()
            .map(|r| r.delegation_ref.clone())
            .unwrap_or_default(),
        entries: std::mem::take(&mut auth.delegation_entries),
    };
    let mut approvals = ApprovalResult {
        required: if auth.approval_ran {
            outcome.min_approvals.max(1)
        } else {
            outcome.min_approvals
        },
        token_ref: args
            .approval_token_ref
            .as_deref()
            .map(str::trim)
            .unwrap_or_default()
            .to_owned(),
        entries: std::mem::take(&mut auth.approval_entries),
    };
    if evaluated.approval.granted && !evaluated.approval.approval_ref.is_empty() {
        approvals.token_ref = evaluated.approval.approval_ref.clone();
    }
    let credential = auth.credential.take();
    let exit = exit_for(decision.verdict);

    let record = evaluated.trace_record(
        &inputs,
        &TraceContext {
            producer_version: PRODUCER_VERSION,
            correlation_id: &invocation.correlation_id,
            approval_token_ref: &approvals.token_ref,
            delegation_token_ref: &delegation.token_ref,
        },
        crate::clock::now_go(),
    );
    let trace_path = args
        .trace_out
        .as_deref()
        .map(|p| p.to_string_lossy().trim().to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| format!("trace_{}.json", record.trace_id));
    let write_path = trace::normalize_trace_path(Path::new(&trace_path)).map_err(invalid)?;
    let trace = trace::sign_and_write(record, &signing.key, &write_path)
        .map_err(|e| CliError::classified(e, EXIT_INVALID_INPUT))?;

    let header = AuditHeader {
        created_at: evaluated.created_at,
        producer_version: PRODUCER_VERSION,
        trace_id: &trace.trace_id,
        tool_name: &trace.tool_name,
        intent_digest: &trace.intent_digest,
        policy_digest: &trace.policy_digest,
    };
    let mut approval_audit_path = String::new();
    let mut valid_approvals = 0;
    if approvals.required > 0 || !approvals.entries.is_empty() {
        let record = audit::approval_audit(&header, approvals.required, &approvals.entries);
        approval_audit_path =
            audit_path(&args.approval_audit_out, "approval_audit", &trace.trace_id);
        write_audit(&approval_audit_path, &record, "approval")?;
        valid_approvals = record.valid_approvals;
    }
    let mut credential_evidence_path = String::new();
    if let Some(credential) = &credential {
        credential_evidence_path = audit_path(
            &args.credential_evidence_out,
            "credential_evidence",
            &trace.trace_id,
        );
        let record = BrokerCredentialRecord {
            schema_id: "gait.gate.broker_credential_record",
            schema_version: "1.0.0",
            created_at: evaluated.created_at.to_utc(),
            producer_version: PRODUCER_VERSION.to_owned(),
            trace_id: trace.trace_id.clone(),
            tool_name: trace.tool_name.trim().to_owned(),
            identity: intent.context.identity.trim().to_owned(),
            broker: credential.issued.issued_by.clone(),
            reference: credential.reference.clone(),
            scope: credential.scope.clone(),
            credential_ref: credential.issued.credential_ref.clone(),
            issued_at: credential.issued.issued_at,
            expires_at: credential.issued.expires_at,
            ttl_seconds: credential.issued.ttl_seconds,
        };
        write_audit(&credential_evidence_path, &record, "broker credential")?;
    }
    let mut delegation_audit_path = String::new();
    let mut valid_delegations = 0;
    if delegation.required || !delegation.entries.is_empty() {
        let record = audit::delegation_audit(
            &header,
            delegation.required,
            &delegation.token_ref,
            &delegation.entries,
        );
        delegation_audit_path = audit_path(
            &args.delegation_audit_out,
            "delegation_audit",
            &trace.trace_id,
        );
        write_audit(&delegation_audit_path, &record, "delegation")?;
        valid_delegations = record.valid_delegations;
    }

    let mut warnings = setup.warnings;
    warnings.extend(evaluated.warnings.iter().cloned());
    warnings.extend(signing.warnings);
    warnings.sort_unstable();
    warnings.dedup();

    let summary = Summary {
        profile,
        decision,
        outcome,
        trace: &trace,
        trace_path: &trace_path,
        intent,
        approvals: &approvals,
        valid_approvals,
        approval_audit_path: &approval_audit_path,
        delegation: &delegation,
        valid_delegations,
        delegation_audit_path: &delegation_audit_path,
        rate: evaluated.rate.as_ref(),
        budget: evaluated.budget.as_ref(),
        simulated: evaluated.simulated.as_ref(),
        credential: credential.as_ref(),
        credential_evidence_path: &credential_evidence_path,
        warnings: &warnings,
    };
    Ok(CommandOutput {
        json: summary.json(),
        text: summary.text(),
        exit,
    })
}

/// A credential reference a broker issued for this call (the credential itself is never held here).
struct IssuedCredential {
    issued: broker::Issued,
    reference: String,
    scope: Vec<String>,
}

/// Gait's broker step (the pipeline calls it only when the deciding rule requires a credential and the
/// verdict is allow): no broker is `NotConfigured` (blocks with `broker_credential_required`), a failing
/// one `Failed` (blocks with `broker_credential_missing`).
fn issue_credential(
    args: &GateEvalArgs,
    resolved: Option<&broker::Broker>,
    ctx: &StepContext<'_>,
) -> (BrokerStatus, Option<IssuedCredential>) {
    let (outcome, intent) = (ctx.outcome, ctx.intent);
    let Some(resolved) = resolved else {
        return (BrokerStatus::NotConfigured, None);
    };
    let mut scope: Vec<String> = outcome
        .broker_scopes
        .iter()
        .map(|s| s.trim().to_owned())
        .chain(
            args.credential_scopes
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_owned()),
        )
        .filter(|s| !s.is_empty())
        .collect();
    scope.sort_unstable();
    scope.dedup();
    let reference = args
        .credential_ref
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or(&outcome.broker_reference)
        .to_owned();
    let request = broker::Request {
        tool_name: intent.tool_name.clone(),
        identity: intent.context.identity.clone(),
        workspace: intent.context.workspace.clone(),
        session_id: intent.context.session_id.clone(),
        request_id: intent.context.request_id.clone(),
        reference: reference.clone(),
        scope: scope.clone(),
    };
    let getenv = |key: &str| std::env::var(key).ok();
    match resolved.issue(&request, &getenv, crate::clock::now_utc()) {
        Ok(issued) => (
            BrokerStatus::Issued,
            Some(IssuedCredential {
                issued,
                reference,
                scope,
            }),
        ),
        Err(err) => {
            // The error names the variable or the failure, never a credential value.
            tracing::debug!(broker = resolved.name(), error = %err, "broker credential unavailable");
            (BrokerStatus::Failed, None)
        }
    }
}

fn audit_path(flag: &Option<PathBuf>, prefix: &str, trace_id: &str) -> String {
    flag.as_deref()
        .map(|p| p.to_string_lossy().trim().to_owned())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| format!("{prefix}_{trace_id}.json"))
}

fn write_audit<T: serde::Serialize>(path: &str, record: &T, kind: &str) -> Result<(), CliError> {
    let bytes = audit::to_pretty_json(record)
        .map_err(|e| invalid(format!("marshal {kind} audit record: {e}")))?;
    let path = Path::new(path);
    files::create_parent_dirs(path)
        .and_then(|()| files::write_atomic(path, &bytes))
        .map_err(|e| {
            CliError::classified(
                format!("write {kind} audit record: {}", files::go_reason(&e)),
                EXIT_INVALID_INPUT,
            )
        })
}

/// Everything the output line reports.
struct Summary<'a> {
    profile: &'a str,
    decision: &'a GateDecision,
    outcome: &'a EvalOutcome,
    trace: &'a gait_artifact::trace::TraceRecord,
    trace_path: &'a str,
    intent: &'a NormalizedIntent,
    approvals: &'a ApprovalResult,
    valid_approvals: i64,
    approval_audit_path: &'a str,
    delegation: &'a DelegationResult,
    valid_delegations: i64,
    delegation_audit_path: &'a str,
    rate: Option<&'a RateLimitDecision>,
    budget: Option<&'a RateLimitDecision>,
    simulated: Option<&'a SimulateReport>,
    credential: Option<&'a IssuedCredential>,
    credential_evidence_path: &'a str,
    warnings: &'a [String],
}

/// Insert only non-empty values (Go `omitempty`).
struct OmitEmpty(Map<String, Value>);

impl OmitEmpty {
    fn str(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.0.insert(key.into(), Value::String(value.to_owned()));
        }
    }
    fn int(&mut self, key: &str, value: i64) {
        if value != 0 {
            self.0.insert(key.into(), Value::from(value));
        }
    }
    fn flag(&mut self, key: &str, value: bool) {
        if value {
            self.0.insert(key.into(), Value::Bool(true));
        }
    }
    fn list(&mut self, key: &str, values: &[String]) {
        if !values.is_empty() {
            self.0.insert(
                key.into(),
                Value::Array(values.iter().cloned().map(Value::String).collect()),
            );
        }
    }
}

impl Summary<'_> {
    fn json(&self) -> Map<String, Value> {
        let mut o = OmitEmpty(Map::new());
        o.0.insert("ok".into(), Value::Bool(true));
        o.str("profile", self.profile);
        o.str("verdict", self.decision.verdict.as_str());
        o.list("reason_codes", &self.decision.reason_codes);
        o.list("violations", &self.decision.violations);
        o.str("approval_ref", &self.approvals.token_ref);
        o.int("required_approvals", self.approvals.required);
        o.int("valid_approvals", self.valid_approvals);
        o.str("approval_audit_path", self.approval_audit_path);
        o.str("delegation_ref", &self.delegation.token_ref);
        o.flag("delegation_required", self.delegation.required);
        o.int("valid_delegations", self.valid_delegations);
        o.str("delegation_audit_path", self.delegation_audit_path);
        o.str("trace_id", &self.trace.trace_id);
        o.str("trace_path", self.trace_path);
        o.str("policy_digest", &self.trace.policy_digest);
        o.str("intent_digest", &self.trace.intent_digest);
        o.str("context_set_digest", &self.trace.context_set_digest);
        o.str("context_evidence_mode", &self.trace.context_evidence_mode);
        o.int("context_ref_count", self.trace.context_ref_count);
        o.str("context_source", &self.outcome.context_source);
        if let Some(script) = &self.outcome.script {
            o.flag("script", true);
            o.int(
                "step_count",
                i64::try_from(script.step_count).unwrap_or(i64::MAX),
            );
            o.str("script_hash", &script.script_hash);
            o.str("composite_risk_class", script.composite_risk_class.as_str());
            if !self.trace.step_verdicts.is_empty() {
                o.0.insert(
                    "step_verdicts".into(),
                    serde_json::to_value(&self.trace.step_verdicts).unwrap_or(Value::Null),
                );
            }
        }
        o.flag("pre_approved", self.trace.pre_approved);
        o.str("pattern_id", &self.trace.pattern_id);
        o.str("registry_reason", &self.trace.registry_reason);
        o.str("matched_rule", &self.outcome.matched_rule);
        o.str("phase", &self.intent.context.phase);
        if let Some(rate) = self.rate {
            o.str("rate_limit_scope", &rate.scope);
            o.str("rate_limit_key", &rate.key);
            o.int("rate_limit_used", rate.used);
            o.int("rate_limit_remaining", rate.remaining);
        }
        if let Some(budget) = self.budget {
            o.str("destructive_budget_scope", &budget.scope);
            o.str("destructive_budget_key", &budget.key);
            o.int("destructive_budget_used", budget.used);
            o.int("destructive_budget_remaining", budget.remaining);
        }
        if let Some(credential) = self.credential {
            o.str("credential_issuer", &credential.issued.issued_by);
            o.str("credential_ref", &credential.issued.credential_ref);
        }
        o.str("credential_evidence_path", self.credential_evidence_path);
        if let Some(sim) = self.simulated {
            o.flag("simulate_mode", true);
            o.flag("would_have_blocked", sim.would_have_blocked);
            o.str("simulated_verdict", sim.simulated_verdict.as_str());
            o.list("simulated_reason_codes", &sim.simulated_reason_codes);
        }
        o.list("warnings", self.warnings);
        o.0
    }

    fn text(&self) -> Vec<String> {
        let mut lines = vec![
            format!("gate eval: verdict={}", self.decision.verdict),
            format!("trace: {}", self.trace_path),
        ];
        if let Some(sim) = self.simulated {
            lines.push(format!(
                "simulate: would_have_blocked={} simulated_verdict={}",
                sim.would_have_blocked, sim.simulated_verdict
            ));
        }
        if !self.decision.reason_codes.is_empty() {
            lines.push(format!("reasons: {}", self.decision.reason_codes.join(",")));
        }
        if !self.decision.violations.is_empty() {
            lines.push(format!(
                "violations: {}",
                self.decision.violations.join(",")
            ));
        }
        if self.approvals.required > 0 {
            lines.push(format!(
                "approvals: {}/{}",
                self.valid_approvals, self.approvals.required
            ));
        }
        if !self.approval_audit_path.is_empty() {
            lines.push(format!("approval audit: {}", self.approval_audit_path));
        }
        if self.delegation.required {
            lines.push(format!("delegations: {}", self.valid_delegations));
        }
        if !self.delegation_audit_path.is_empty() {
            lines.push(format!("delegation audit: {}", self.delegation_audit_path));
        }
        if let Some(credential) = self.credential {
            lines.push(format!(
                "credential: {} ({})",
                credential.issued.credential_ref, credential.issued.issued_by
            ));
        }
        if !self.credential_evidence_path.is_empty() {
            lines.push(format!(
                "credential evidence: {}",
                self.credential_evidence_path
            ));
        }
        lines.extend(self.warnings.iter().map(|w| format!("warning: {w}")));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gate::approvals::{operation_count, target_count};
    use crate::gate::pipeline::has_destructive_target;

    #[test]
    fn token_paths_are_gathered_trimmed_unique_and_sorted() {
        let paths = gather_paths(
            &[PathBuf::from(" b.json ")],
            &["a.json, b.json,,c.json".to_owned(), "a.json".to_owned()],
        );
        assert_eq!(
            paths,
            [
                PathBuf::from("a.json"),
                PathBuf::from("b.json"),
                PathBuf::from("c.json")
            ]
        );
    }

    #[test]
    fn operation_and_target_counts_follow_gait() {
        let single = gait_policy::parse_and_normalize_intent(
            br#"{"tool_name":"tool.x","args":{},"targets":[],"context":{"identity":"a","workspace":"/w","risk_class":"low"}}"#,
        )
        .unwrap();
        assert_eq!(operation_count(&single), 1);
        assert_eq!(target_count(&single), 0);
        assert!(!has_destructive_target(&single));
    }
}
