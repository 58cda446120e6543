//! What agents write through the QUIC edge, over the store: committed record batches (with the approval
//! requests they raise, in the same transaction), refused seqs, bundle reports, instance changes and identity
//! alerts, and the revocation list the handshake checks. The ingest edge holds an [`Intake`], never the store
//! (LAYOUT rule 5); every write names the agent by the [`AgentKey`] of its verified certificate.
//!
//! Each method is the one store call the edge made before, with the same arguments (slices, no copies), so
//! the hot path (batch commit) costs what it did.

use gait_store::{
    AgentKey, BatchOutcome, BundleReportRow, CertSerial, InstanceChange, NewAgentAlert,
    NewApprovalRequest, NewRecord, NewTraceKey, Store, StoreError,
};

use std::sync::Arc;

use super::presence::Presence;
use crate::analysis::feed::Feed;
use crate::metrics::Metrics;

/// The agents' writes to the fleet's store.
#[derive(Clone, Debug)]
pub struct Intake {
    store: Store,
    /// Where committed batches go for the analytics upkeep ([`crate::analysis::feed`]), when it runs here.
    feed: Option<Arc<Feed>>,
}

impl Intake {
    /// Writes to `store`.
    pub fn new(store: Store) -> Self {
        Self { store, feed: None }
    }

    /// Writes to `store` and hands every committed batch to `feed`.
    pub fn with_feed(store: Store, feed: Arc<Feed>) -> Self {
        Self {
            store,
            feed: Some(feed),
        }
    }

    /// Starts the presence writer on this store ([`super::presence`]); must run within a Tokio runtime.
    pub fn spawn_presence(
        &self,
        metrics: std::sync::Arc<Metrics>,
        tasks: &gait_runtime::Tasks,
    ) -> Presence {
        Presence::spawn(self.store.clone(), metrics, tasks)
    }

    /// Commits one batch of `agent`'s records, with the evidence index entries of its decision and artifact
    /// records (in the same transaction). When `requests` is not empty, the approval requests the batch
    /// raises commit in the same transaction (a request at a seq another instance holds raises nothing); the
    /// second value is how many were raised now. The verified trace key announcements of the batch
    /// (`trace_keys`, see [`super::trace_keys`]) are registered in that transaction too.
    pub async fn commit_batch(
        &self,
        agent: &AgentKey,
        rows: &[NewRecord],
        requests: &[NewApprovalRequest],
        trace_keys: &[NewTraceKey],
        now_ms: i64,
    ) -> Result<(BatchOutcome, u64), StoreError> {
        // The evidence index entries of the batch commit in its transaction (`crate::evidence::index`).
        let index = crate::evidence::index::entries(rows);
        if requests.is_empty() && trace_keys.is_empty() {
            let outcome = self
                .store
                .commit_batch_indexed(agent, rows, &index, now_ms)
                .await?;
            if let Some(feed) = &self.feed {
                feed.push(agent, rows, &index, &outcome, now_ms);
            }
            return Ok((outcome, 0));
        }
        let done = self
            .store
            .transaction(async |tx| {
                let outcome = tx.commit_batch_indexed(agent, rows, &index, now_ms).await?;
                let mut raised = 0u64;
                for request in requests {
                    if !outcome.conflict_seqs.contains(&request.seq)
                        && tx.insert_approval_request(request, now_ms).await?.1
                    {
                        raised += 1;
                    }
                }
                super::trace_keys::register(tx, agent, &outcome, trace_keys, now_ms).await?;
                Ok::<_, StoreError>((outcome, raised))
            })
            .await?;
        // Only now is the batch committed.
        if let Some(feed) = &self.feed {
            feed.push(agent, rows, &index, &done.0, now_ms);
        }
        Ok(done)
    }

    /// Records that `agent`'s record `seq` was refused for good with `code`.
    pub async fn record_refusal(
        &self,
        agent: &AgentKey,
        seq: u64,
        code: &str,
        message: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.store
            .record_refusal(agent, seq, code, message, now_ms)
            .await
    }

    /// Stores one row of `agent`'s bundle report.
    pub async fn record_bundle_report(
        &self,
        agent: &AgentKey,
        row: &BundleReportRow,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.store.record_bundle_report(agent, row, now_ms).await
    }

    /// Stores `instance_id` as `agent`'s current instance and returns the one it replaced.
    pub async fn note_instance(
        &self,
        agent: &AgentKey,
        instance_id: &str,
    ) -> Result<InstanceChange, StoreError> {
        self.store.note_instance(agent, instance_id).await
    }

    /// Stores an identity alert of `agent`.
    pub async fn record_alert(
        &self,
        agent: &AgentKey,
        alert: &NewAgentAlert,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.store.record_alert(agent, alert, now_ms).await
    }

    /// Every revoked certificate serial (the handshake's revocation list).
    pub async fn revoked_serials(&self) -> Result<Vec<CertSerial>, StoreError> {
        self.store.revoked_serials().await
    }
}
