//! What the aggregator knows about its agents: which are connected and when each was last seen
//! ([`presence`]), what agents write through the QUIC edge ([`intake::Intake`]), and the reads operators make
//! of it through [`Fleet`] — the inventory with its health
//! ([`inventory`]), identity alerts, what each agent shipped (records and gaps), and the trace keys agents
//! announced ([`trace_keys`]).
//!
//! Every read takes the caller's [`Authorized`] over the tenancy it reads (an org for the inventory, an
//! environment for the rest), so no query runs for a tenant the caller was not granted: the compiler checks
//! tenancy, the HTTP edge only translates.

pub mod intake;
pub mod inventory;
pub mod offline;
pub mod presence;
pub mod trace_keys;

use gait_store::{
    AgentAlert, AgentId, AgentKey, GapRow, MAX_ALERTS_PAGE, Org, Store, StoreError, StoredRecord,
    Tenant,
};

use crate::auth::Authorized;

pub use inventory::{InventoryEntry, InventoryPage, InventoryQuery, STALE_AFTER_MS};

/// Most records one [`Fleet::records`] page returns.
pub const MAX_RECORDS_LIMIT: u32 = 10_000;

/// Most payload bytes one records page carries; a page ends early (`truncated`) when the next record would
/// pass it, and always carries at least one record.
pub const MAX_PAGE_PAYLOAD_BYTES: usize = 4 << 20;

/// Why a fleet read was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A parameter of the read is out of range; the message names it and its range.
    #[error("{field}: {message}")]
    Invalid {
        /// The parameter (`limit`, `after`).
        field: &'static str,
        /// What is wrong and what to pass instead.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FleetError {
    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }
}

/// One page of an agent's records.
#[derive(Debug)]
pub struct RecordsPage {
    /// How many records of the agent are stored in all.
    pub total: u64,
    /// The records, ascending by seq.
    pub records: Vec<StoredRecord>,
    /// The byte budget ([`MAX_PAGE_PAYLOAD_BYTES`]) ended the page before `limit`.
    pub truncated: bool,
}

/// The operators' reads of the fleet, over the store.
#[derive(Clone, Debug)]
pub struct Fleet {
    store: Store,
}

impl Fleet {
    /// The fleet as `store` holds it.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Whether the store answers (the readiness probe), and which backend it is.
    pub async fn ping(&self) -> Result<&'static str, StoreError> {
        self.store.ping().await?;
        Ok(self.store.backend())
    }

    /// The newest identity alerts of the caller's environment, at most `limit` (1..=[`MAX_ALERTS_PAGE`]).
    pub async fn alerts(
        &self,
        caller: &Authorized<Tenant>,
        limit: u32,
    ) -> Result<Vec<AgentAlert>, FleetError> {
        if !(1..=MAX_ALERTS_PAGE).contains(&limit) {
            return Err(FleetError::invalid(
                "limit",
                format!("{limit} is out of range 1..={MAX_ALERTS_PAGE}"),
            ));
        }
        Ok(self.store.alerts(caller.target(), limit).await?)
    }

    /// One page of the inventory of the caller's org; see [`inventory`].
    pub async fn inventory(
        &self,
        caller: &Authorized<Org>,
        query: InventoryQuery,
        now_ms: i64,
    ) -> Result<InventoryPage, FleetError> {
        inventory::page(&self.store, caller.target().clone(), query, now_ms).await
    }

    /// Agent `agent_id`'s records of the caller's environment with seq above `after`, at most `limit`
    /// (1..=[`MAX_RECORDS_LIMIT`]) and about [`MAX_PAGE_PAYLOAD_BYTES`] of payload.
    pub async fn records(
        &self,
        caller: &Authorized<Tenant>,
        agent_id: AgentId,
        after: u64,
        limit: u32,
    ) -> Result<RecordsPage, FleetError> {
        if i64::try_from(after).is_err() {
            return Err(FleetError::invalid(
                "after",
                format!("{after} is out of range; seqs are below 2^63 (9223372036854775808)"),
            ));
        }
        if limit == 0 || limit > MAX_RECORDS_LIMIT {
            return Err(FleetError::invalid(
                "limit",
                format!("must be between 1 and {MAX_RECORDS_LIMIT}"),
            ));
        }
        let key = AgentKey {
            tenant: caller.target().clone(),
            agent_id,
        };
        let total = self.store.count_records(&key).await?;
        let (records, truncated) = self
            .store
            .records_within(&key, after, limit, MAX_PAGE_PAYLOAD_BYTES)
            .await?;
        Ok(RecordsPage {
            total,
            records,
            truncated,
        })
    }

    /// The gaps in agent `agent_id`'s record stream in the caller's environment.
    pub async fn gaps(
        &self,
        caller: &Authorized<Tenant>,
        agent_id: AgentId,
    ) -> Result<Vec<GapRow>, FleetError> {
        let key = AgentKey {
            tenant: caller.target().clone(),
            agent_id,
        };
        Ok(self.store.gaps(&key).await?)
    }
}
