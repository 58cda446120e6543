//! The fleet inventory: one page of an org's agents, each joined with what an operator needs at a glance —
//! whether its certificate is revoked, whether it went quiet ([`STALE_AFTER_MS`]), whether it runs an older
//! bundle than its tenant's newest, and when the certificate it connected with expires.

use std::collections::{HashMap, HashSet};

use gait_store::{
    AgentFilter, AgentPosition, AgentRow, CertSerial, Env, MAX_AGENT_PAGE, Org, Project, Store,
    Tenant,
};
use serde::Serialize;

use super::FleetError;

/// An agent not heard from for this long is `stale` in the inventory. A connected agent is heard from at
/// least once per bundle long-poll (25 s by default), so this is several missed polls.
pub const STALE_AFTER_MS: i64 = 120_000;

/// Which part of the org to list, and where the page starts.
#[derive(Clone, Debug, Default)]
pub struct InventoryQuery {
    /// Only this project.
    pub project: Option<Project>,
    /// Only this environment.
    pub env: Option<Env>,
    /// Start after this agent (the previous page's `next_after`).
    pub after: Option<AgentPosition>,
    /// Page size, 1..=[`MAX_AGENT_PAGE`]; `None` is the store's default.
    pub limit: Option<u32>,
}

/// One agent as listed: its stored row and its health.
#[derive(Clone, Debug, Serialize)]
pub struct InventoryEntry {
    /// What the store holds about the agent.
    #[serde(flatten)]
    pub agent: AgentRow,
    /// The newest bundle epoch published for the agent's tenant.
    pub latest_epoch: Option<u64>,
    /// The newest epoch offered to this agent: `latest_epoch`, or an older one while a rollout step offers the
    /// newest to a cohort the agent is not in.
    pub target_epoch: Option<u64>,
    /// The certificate it last connected with is revoked.
    pub revoked: bool,
    /// Not heard from for over [`STALE_AFTER_MS`].
    pub stale: bool,
    /// Its active bundle is older than `target_epoch` (or it has none while one exists).
    pub behind: bool,
}

/// One page of the inventory.
#[derive(Clone, Debug, Serialize)]
pub struct InventoryPage {
    /// The agents, ordered by (project, env, agent id).
    pub agents: Vec<InventoryEntry>,
    /// The cursor of the next page, `None` when this one was not full.
    pub next_after: Option<String>,
}

/// Lists one page of `org`'s agents with their health at `now_ms`.
pub(super) async fn page(
    store: &Store,
    org: Org,
    query: InventoryQuery,
    now_ms: i64,
) -> Result<InventoryPage, FleetError> {
    if let Some(limit) = query.limit
        && !(1..=MAX_AGENT_PAGE).contains(&limit)
    {
        return Err(FleetError::invalid(
            "limit",
            format!("{limit} is out of range 1..={MAX_AGENT_PAGE}"),
        ));
    }
    let filter = AgentFilter {
        org,
        project: query.project,
        env: query.env,
        after: query.after,
        limit: query.limit,
    };
    let agents = store.list_agents(&filter).await?;
    let full = u32::try_from(agents.len()).unwrap_or(u32::MAX) >= filter.page_size();
    let next_after = agents
        .last()
        .filter(|_| full)
        .map(|a| a.position().to_cursor());
    let revoked: HashSet<CertSerial> = store.revoked_serials().await?.into_iter().collect();
    let mut offers: HashMap<Tenant, Offers> = HashMap::new();
    // The expiry of the certificate each agent presented is on its row (hand-minted ones included); a row from
    // before that was recorded falls back to the certificates the aggregator signed (enrollment, renewal).
    let mut expiries: HashMap<CertSerial, i64> = HashMap::new();
    let mut looked_up: HashSet<Tenant> = HashSet::new();
    for a in &agents {
        if !offers.contains_key(&a.tenant) {
            let loaded = Offers::load(store, &a.tenant).await?;
            offers.insert(a.tenant.clone(), loaded);
        }
        if a.cert_not_after_unix_ms.is_none() && looked_up.insert(a.tenant.clone()) {
            expiries.extend(store.certificate_expiries(&a.tenant, now_ms).await?);
        }
    }
    let agents = agents
        .into_iter()
        .map(|mut agent| {
            let (latest_epoch, target_epoch) = offers
                .get(&agent.tenant)
                .map(|o| (o.latest(), o.target(&agent.agent_id)))
                .unwrap_or_default();
            let health = Health::of(&agent, &revoked, target_epoch, now_ms);
            if agent.cert_not_after_unix_ms.is_none() {
                agent.cert_not_after_unix_ms = expiries.get(&agent.cert_serial).copied();
            }
            InventoryEntry {
                latest_epoch,
                target_epoch,
                revoked: health.revoked,
                stale: health.stale,
                behind: health.behind,
                agent,
            }
        })
        .collect();
    Ok(InventoryPage { agents, next_after })
}

/// What a scope offers, for the inventory: epochs with their audiences, and the labels of its agents when an
/// audience selects by label.
struct Offers {
    epochs: Vec<(u64, Option<crate::registry::Audience>)>,
    labels:
        std::collections::BTreeMap<gait_store::AgentId, std::collections::BTreeMap<String, String>>,
}

impl Offers {
    async fn load(store: &Store, tenant: &Tenant) -> Result<Self, FleetError> {
        let mut epochs = Vec::new();
        for (epoch, audience) in store.bundle_offer_epochs(tenant).await? {
            epochs.push((
                epoch,
                audience
                    .map(crate::registry::Audience::from_row)
                    .transpose()?,
            ));
        }
        let selects = epochs
            .iter()
            .any(|(_, a)| a.as_ref().is_some_and(|a| !a.labels.is_empty()));
        let labels = if selects {
            crate::registry::env_labels(store, tenant).await?
        } else {
            std::collections::BTreeMap::new()
        };
        Ok(Self { epochs, labels })
    }

    fn latest(&self) -> Option<u64> {
        self.epochs.last().map(|(e, _)| *e)
    }

    fn target(&self, agent_id: &gait_store::AgentId) -> Option<u64> {
        let none = std::collections::BTreeMap::new();
        let labels = self.labels.get(agent_id).unwrap_or(&none);
        self.epochs
            .iter()
            .rev()
            .find(|(_, a)| {
                a.as_ref()
                    .is_none_or(|a| a.admits(agent_id.as_str(), labels))
            })
            .map(|(e, _)| *e)
    }
}

/// The at-a-glance flags of one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Health {
    revoked: bool,
    stale: bool,
    behind: bool,
}

impl Health {
    fn of(
        a: &AgentRow,
        revoked: &HashSet<CertSerial>,
        latest_epoch: Option<u64>,
        now_ms: i64,
    ) -> Self {
        let active = a.active_bundle.as_ref().map(|b| b.epoch);
        Health {
            revoked: revoked.contains(&a.cert_serial),
            stale: now_ms.saturating_sub(a.last_seen_unix_ms) > STALE_AFTER_MS,
            behind: latest_epoch.is_some_and(|latest| active.is_none_or(|e| e < latest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(active_epoch: Option<u64>, last_seen: i64, serial: &str) -> AgentRow {
        AgentRow {
            tenant: Tenant::from_parts("acme", "web", "prod").expect("tenant"),
            agent_id: "a1".parse().expect("agent id"),
            cert_serial: serial.parse().expect("serial"),
            cert_not_after_unix_ms: None,
            cert_issuer: None,
            first_seen_unix_ms: 0,
            last_seen_unix_ms: last_seen,
            remote_addr: "127.0.0.1:1".into(),
            agent_version: "t".into(),
            active_bundle: active_epoch.map(|epoch| gait_store::ActiveBundle {
                epoch,
                digest: "d".into(),
                since_unix_ms: 0,
            }),
            received_bundle: None,
            last_refusal: None,
            committed_seq: 0,
            committed_hash: [0; 32],
            outbox_depth: 0,
            shed_total: 0,
            gap_count: 0,
            instance_id: String::new(),
            conflict_count: 0,
        }
    }

    #[test]
    fn health_flags_revoked_stale_and_behind_agents() {
        let revoked: HashSet<CertSerial> = ["0a".parse().expect("serial")].into();
        let now = 1_000_000;
        let fine = Health::of(&row(Some(3), now - 1_000, "0b"), &revoked, Some(3), now);
        assert_eq!(
            fine,
            Health {
                revoked: false,
                stale: false,
                behind: false
            }
        );
        let bad = Health::of(
            &row(Some(2), now - STALE_AFTER_MS - 1, "0A"),
            &revoked,
            Some(3),
            now,
        );
        assert_eq!(
            bad,
            Health {
                revoked: true,
                stale: true,
                behind: true
            }
        );
        // No bundle anywhere yet: nobody is behind; a published one the agent lacks: behind.
        assert!(!Health::of(&row(None, now, "0b"), &revoked, None, now).behind);
        assert!(Health::of(&row(None, now, "0b"), &revoked, Some(1), now).behind);
    }
}
