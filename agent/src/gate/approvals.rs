//! Approvals at the agent: the Gait approval tokens the aggregator issued (kept under
//! `<data_dir>/approvals/<intent digest>-<policy digest>/`, one 0600 file per token), the daemon's
//! [`Authorizations`] that presents them to the gate pipeline's approval step, and the bookkeeping of which
//! intents already raised an `approval.request` (so a runtime retrying an intent raises it once per request
//! lifetime, not once per retry).
//!
//! Tokens are verified at every decision with the approval key of the bundle in force
//! (`manifest.approval_key`, signed by the registry key the agent already trusts); with no such key no token
//! is accepted. Tokens a caller presents with the intent ([`PresentedTokens`]) are judged the same way, beside
//! the delivered ones, and delegation tokens with `manifest.delegation_key`. A token bound to another intent or policy, expired, tampered or signed by another key is
//! judged invalid by Gait's own validation (contract §2.4) and the verdict stays `require_approval`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gait_artifact::approval::ApprovalAuditEntry;
use gait_canon::sign::PublicKey;
use gait_policy::NormalizedIntent;
use gait_policy::gate::{BrokerStatus, TokenCheck};
use gait_wire::DeliveredApproval;

use super::GateError;
use super::pipeline::{Authorizations, StepContext};
use super::tokens::{self, DelegationAuditEntry, PresentedTokens};

/// Directory (under the data dir) holding delivered approval tokens.
pub const APPROVALS_DIR: &str = "approvals";
/// How long an approval request may wait upstream, in seconds; the same intent raises no second request
/// within it.
pub const REQUEST_TTL_SECONDS: u64 = 3600;
/// Largest token file read.
const MAX_TOKEN_BYTES: usize = 64 * 1024;
/// Most tokens read for one intent.
const MAX_TOKENS_PER_INTENT: usize = 32;

/// Targets an approval token's `max_targets` counts (Gait's `gateIntentTargetCount`).
pub fn target_count(intent: &NormalizedIntent) -> usize {
    if let Some(steps) = &intent.script {
        let total: usize = steps.iter().map(|s| s.targets.len()).sum();
        if total > 0 {
            return total;
        }
    }
    intent.targets.len()
}

/// Operations an approval token's `max_ops` counts (Gait's `gateIntentOperationCount`).
pub fn operation_count(intent: &NormalizedIntent) -> usize {
    match &intent.script {
        Some(steps) if !steps.is_empty() => steps.len(),
        _ => intent.targets.len().max(1),
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Delivered tokens on disk and the requests raised and not yet answered.
#[derive(Debug)]
pub struct ApprovalStore {
    dir: PathBuf,
    /// (intent digest, policy digest) -> raised until (Unix ms).
    raised: Mutex<HashMap<(String, String), i64>>,
    /// Woken when a request is raised, so the uplink asks for approvals sooner.
    raised_notify: tokio::sync::Notify,
    /// Deliveries stored so far: an evaluation that read the tokens before a delivery must not raise a request
    /// that delivery just answered ([`ApprovalStore::should_raise`]).
    deliveries: std::sync::atomic::AtomicU64,
}

impl ApprovalStore {
    /// The store under `<data_dir>/approvals` (created on first delivery).
    pub fn open(data_dir: &Path) -> ApprovalStore {
        ApprovalStore {
            dir: data_dir.join(APPROVALS_DIR),
            raised: Mutex::new(HashMap::new()),
            raised_notify: tokio::sync::Notify::new(),
            deliveries: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Deliveries stored so far; read it before an evaluation loads tokens, for [`ApprovalStore::should_raise`].
    pub fn deliveries(&self) -> u64 {
        self.deliveries.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn intent_dir(&self, intent_digest: &str, policy_digest: &str) -> Option<PathBuf> {
        (is_hex64(intent_digest) && is_hex64(policy_digest))
            .then(|| self.dir.join(format!("{intent_digest}-{policy_digest}")))
    }

    /// The token documents delivered for this intent under this policy (unverified bytes).
    pub fn tokens_for(&self, intent_digest: &str, policy_digest: &str) -> Vec<Vec<u8>> {
        let Some(dir) = self.intent_dir(intent_digest, policy_digest) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        paths.sort();
        paths
            .into_iter()
            .take(MAX_TOKENS_PER_INTENT)
            .filter_map(|p| {
                super::files::read_bounded(&p, MAX_TOKEN_BYTES)
                    .map_err(|e| tracing::warn!(path = %p.display(), error = %e, "approval token unreadable"))
                    .ok()
            })
            .collect()
    }

    /// Stores the tokens of one delivered approval; returns how many were new.
    pub fn store(&self, delivered: &DeliveredApproval) -> std::io::Result<usize> {
        let Some(dir) = self.intent_dir(&delivered.intent_digest, &delivered.policy_digest) else {
            return Err(std::io::Error::other(format!(
                "approval {}: digests are not 64 lowercase hex characters",
                delivered.request_id
            )));
        };
        std::fs::create_dir_all(&dir)?;
        let mut new = 0;
        for token in delivered.tokens.iter().take(MAX_TOKENS_PER_INTENT) {
            let name = format!("{}.json", &gait_canon::sha256_hex(&token.0)[..32]);
            let path = dir.join(name);
            if path.exists() {
                continue;
            }
            write_private(&path, &token.0)?;
            new += 1;
        }
        // Counted before the request is forgotten, so an evaluation that finds it forgotten sees the count moved.
        self.deliveries
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.raised
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(
                delivered.intent_digest.clone(),
                delivered.policy_digest.clone(),
            ));
        Ok(new)
    }

    /// Whether to raise a request for this intent now: none raised for it within its lifetime, and no approval
    /// delivered since the evaluation read `seen_deliveries` (its tokens may have arrived after the evaluation
    /// looked: the runtime's retry uses them, or raises then). Records it.
    pub fn should_raise(
        &self,
        intent_digest: &str,
        policy_digest: &str,
        now_ms: i64,
        seen_deliveries: u64,
    ) -> bool {
        let mut raised = self
            .raised
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.deliveries() != seen_deliveries {
            return false;
        }
        raised.retain(|_, until| *until > now_ms);
        let key = (intent_digest.to_owned(), policy_digest.to_owned());
        if raised.contains_key(&key) {
            return false;
        }
        let ttl_ms = i64::try_from(REQUEST_TTL_SECONDS * 1000).unwrap_or(i64::MAX);
        raised.insert(key, now_ms.saturating_add(ttl_ms));
        drop(raised);
        self.raised_notify.notify_one();
        true
    }

    /// Whether a raised request still waits for its approval at `now_ms`.
    pub fn outstanding(&self, now_ms: i64) -> bool {
        self.raised
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .any(|until| *until > now_ms)
    }

    /// Resolves when a request is raised.
    pub async fn raised(&self) {
        self.raised_notify.notified().await;
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The daemon's tokens for the pipeline: the tokens presented with the intent on the local API and the
/// approval tokens the aggregator delivered for it, judged by [`super::tokens`] (the checks of `gait gate eval`)
/// with the keys of the bundle in force; no broker (as [`super::pipeline::NoAuthorizations`]). The judgement
/// of each token is kept for the decision record.
#[derive(Debug)]
pub struct EdgeTokens<'a> {
    /// Where delivered tokens are.
    pub store: &'a ApprovalStore,
    /// The bundle's approval key; `None`: no approval token is accepted.
    pub approval_key: Option<PublicKey>,
    /// The bundle's delegation key; `None`: no delegation token is accepted.
    pub delegation_key: Option<PublicKey>,
    /// Tokens presented with the intent.
    pub presented: &'a PresentedTokens,
    /// How each approval token was judged (presented first, then delivered).
    pub approval_audit: Vec<ApprovalAuditEntry>,
    /// How each presented delegation token was judged.
    pub delegation_audit: Vec<DelegationAuditEntry>,
}

impl<'a> EdgeTokens<'a> {
    /// Tokens presented with one intent, judged with the keys the bundle carries.
    pub fn new(
        store: &'a ApprovalStore,
        approval_key: Option<PublicKey>,
        delegation_key: Option<PublicKey>,
        presented: &'a PresentedTokens,
    ) -> Self {
        EdgeTokens {
            store,
            approval_key,
            delegation_key,
            presented,
            approval_audit: Vec::new(),
            delegation_audit: Vec::new(),
        }
    }
}

impl Authorizations for EdgeTokens<'_> {
    type Error = GateError;

    fn load_keys(&mut self) -> Result<(), GateError> {
        Ok(())
    }

    fn delegation_tokens(&mut self, ctx: &StepContext<'_>) -> Result<Vec<TokenCheck>, GateError> {
        let Some(key) = self.delegation_key else {
            return Ok(Vec::new());
        };
        let presented: Vec<&[u8]> = self
            .presented
            .delegation
            .iter()
            .map(Vec::as_slice)
            .collect();
        let (checks, entries) = tokens::check_delegation_tokens(&presented, &key, ctx)?;
        self.delegation_audit = entries;
        Ok(checks)
    }

    fn approval_tokens(&mut self, ctx: &StepContext<'_>) -> Result<Vec<TokenCheck>, GateError> {
        let Some(key) = self.approval_key else {
            return Ok(Vec::new());
        };
        let presented: Vec<&[u8]> = self.presented.approval.iter().map(Vec::as_slice).collect();
        let (mut checks, mut entries) = tokens::check_approval_tokens(&presented, &key, ctx)?;
        let intent = ctx.intent;
        for bytes in self
            .store
            .tokens_for(&intent.intent_digest, ctx.policy_digest)
        {
            match tokens::check_approval_tokens(&[bytes.as_slice()], &key, ctx) {
                Ok((c, e)) => {
                    checks.extend(c);
                    entries.extend(e);
                }
                Err(e) => tracing::warn!(error = %e, "delivered approval token not accepted"),
            }
        }
        self.approval_audit = entries;
        Ok(checks)
    }

    fn broker_credential(&mut self, _ctx: &StepContext<'_>) -> BrokerStatus {
        BrokerStatus::NotConfigured
    }
}

/// The requester as the aggregator shows it, from the local API caller's attribution (`requested_by`):
/// `uid:<uid>` on the Unix socket, `token:<token id>` on TCP.
pub fn requester_of(attribution: &serde_json::Value) -> String {
    if let Some(uid) = attribution.get("uid").and_then(serde_json::Value::as_u64) {
        return format!("uid:{uid}");
    }
    if let Some(id) = attribution
        .get("token_id")
        .and_then(serde_json::Value::as_str)
    {
        return format!("token:{id}");
    }
    "unknown".to_owned()
}

/// The `approval.request` payload for `ask`, asked by `requested_by` at `now_ms`.
pub fn request_payload(
    ask: &super::engine::ApprovalAsk,
    requested_by: &str,
    now_ms: i64,
) -> gait_wire::ApprovalRequestPayload {
    gait_wire::ApprovalRequestPayload {
        schema_id: gait_wire::approval::APPROVAL_REQUEST_SCHEMA.to_owned(),
        intent_digest: ask.intent_digest.clone(),
        policy_digest: ask.policy_digest.clone(),
        tool_name: ask.tool_name.clone(),
        phase: ask.phase.clone(),
        destructive: ask.destructive,
        scope: ask.scope.clone(),
        requested_by: requested_by.to_owned(),
        trace_id: ask.trace_id.clone(),
        created_unix_ms: now_ms,
        ttl_seconds: REQUEST_TTL_SECONDS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_raised_once_per_lifetime_and_cleared_by_its_delivery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ApprovalStore::open(dir.path());
        let (i, p) = ("a".repeat(64), "b".repeat(64));
        assert!(store.should_raise(&i, &p, 0, 0));
        assert!(
            !store.should_raise(&i, &p, 1, 0),
            "a retry raises nothing new"
        );
        assert!(store.outstanding(1));
        let delivered = DeliveredApproval {
            request_id: 7,
            intent_digest: i.clone(),
            policy_digest: p.clone(),
            tokens: vec![gait_wire::TokenDocument(b"{}".to_vec())],
        };
        assert_eq!(store.store(&delivered).expect("stored"), 1);
        assert_eq!(store.store(&delivered).expect("stored again"), 0);
        assert_eq!(store.tokens_for(&i, &p), vec![b"{}".to_vec()]);
        assert!(!store.outstanding(1));
        // An evaluation that read the count before the delivery raises nothing: the tokens came after it looked.
        assert_eq!(store.deliveries(), 2);
        assert!(!store.should_raise(&i, &p, 2, 0));
        // After the delivery a retry may raise again (its tokens may not do), and after its lifetime too.
        let later = i64::try_from(REQUEST_TTL_SECONDS * 1000).expect("ms") + 10;
        assert!(store.should_raise(&i, &p, 2, 2));
        assert!(store.should_raise(&i, &p, later, 2));
        // Digests that are not hex never become paths.
        let bad = DeliveredApproval {
            intent_digest: "../../etc".into(),
            ..delivered
        };
        assert!(store.store(&bad).is_err());
        assert!(store.tokens_for("../x", &p).is_empty());
    }
}
