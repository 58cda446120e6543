//! `/v1/orgs/{org}/agents`: the fleet inventory, paged with a cursor; and
//! `/v1/orgs/{org}/projects/{project}/envs/{env}/alerts`: the tenant's agent identity alerts (a second live
//! instance of one identity refused, a new instance behind the committed head), newest first.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use std::collections::{HashMap, HashSet};

use gait_store::{
    AgentFilter, AgentPosition, AgentRow, CertSerial, Env, MAX_AGENT_PAGE, Org, Project, Tenant,
};
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::{ApiError, AppState, RequestError};

#[derive(Debug, Deserialize)]
pub(super) struct AgentQuery {
    project: Option<String>,
    env: Option<String>,
    /// Cursor `project/env/agent_id` of the last agent of the previous page (`next_after`).
    after: Option<String>,
    /// Page size, 1..=5000 (default 500).
    limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub(super) struct AlertQuery {
    /// Most alerts returned, 1..=1000 (default 100).
    limit: Option<u32>,
}

pub(super) async fn list_alerts(
    State(state): State<AppState>,
    Caller(caller): Caller<Tenant>,
    query: Result<Query<AlertQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let tenant = caller.target();
    let Query(q) = query.map_err(RequestError::Query)?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=gait_store::MAX_ALERTS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is out of range 1..={}",
            gait_store::MAX_ALERTS_PAGE
        )));
    }
    let alerts = state.store.alerts(tenant, limit).await?;
    Ok(Json(json!({ "alerts": alerts })).into_response())
}

pub(super) async fn list_agents(
    State(state): State<AppState>,
    Caller(caller): Caller<Org>,
    query: Result<Query<AgentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let org: Org = caller.target().clone();
    let Query(q) = query.map_err(RequestError::Query)?;
    let project: Option<Project> = q.project.map(|p| super::ident("project", p)).transpose()?;
    let env: Option<Env> = q.env.map(|e| super::ident("env", e)).transpose()?;
    let after = match q.after.as_deref().filter(|a| !a.is_empty()) {
        Some(text) => Some(AgentPosition::from_cursor(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "after: {text:?} is not a cursor `project/env/agent_id` of three valid identifiers; pass the \
                 previous page's next_after"
            ))
        })?),
        None => None,
    };
    if let Some(limit) = q.limit
        && !(1..=MAX_AGENT_PAGE).contains(&limit)
    {
        return Err(ApiError::bad_request(format!(
            "limit: {limit} is out of range 1..={MAX_AGENT_PAGE}"
        )));
    }
    let filter = AgentFilter {
        org,
        project,
        env,
        after,
        limit: q.limit,
    };
    let agents = state.store.list_agents(&filter).await?;
    let full = u32::try_from(agents.len()).unwrap_or(u32::MAX) >= filter.page_size();
    let next_after = agents
        .last()
        .filter(|_| full)
        .map(|a| a.position().to_cursor());
    let revoked: HashSet<CertSerial> = state.store.revoked_serials().await?.into_iter().collect();
    let now = crate::clock::unix_ms();
    let mut latest: HashMap<Tenant, Option<u64>> = HashMap::new();
    // The expiry of the certificate each agent presented is on its row (hand-minted ones included); a row from
    // before that was recorded falls back to the certificates the aggregator signed (enrollment, renewal).
    let mut expiries: HashMap<CertSerial, i64> = HashMap::new();
    let mut looked_up: HashSet<&Tenant> = HashSet::new();
    for a in &agents {
        if !latest.contains_key(&a.tenant) {
            let epoch = state.store.latest_epoch(&a.tenant).await?;
            latest.insert(a.tenant.clone(), epoch);
        }
        if a.cert_not_after_unix_ms.is_none() && looked_up.insert(&a.tenant) {
            expiries.extend(state.store.certificate_expiries(&a.tenant, now).await?);
        }
    }
    let listed = agents
        .iter()
        .map(|a| {
            let latest_epoch = latest.get(&a.tenant).copied().flatten();
            let health = Health::of(a, &revoked, latest_epoch, now);
            let mut row = serde_json::to_value(a).map_err(ApiError::internal)?;
            if let Some(obj) = row.as_object_mut() {
                obj.insert("latest_epoch".into(), json!(latest_epoch));
                obj.insert("revoked".into(), json!(health.revoked));
                obj.insert("stale".into(), json!(health.stale));
                obj.insert("behind".into(), json!(health.behind));
                obj.insert(
                    "cert_not_after_unix_ms".into(),
                    json!(
                        a.cert_not_after_unix_ms
                            .or_else(|| expiries.get(&a.cert_serial).copied())
                    ),
                );
            }
            Ok(row)
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(json!({ "agents": listed, "next_after": next_after })).into_response())
}

/// An agent not heard from for this long is `stale` in the inventory. A connected agent is heard from at
/// least once per bundle long-poll (25 s by default), so this is several missed polls.
pub const STALE_AFTER_MS: i64 = 120_000;

/// What an operator needs to see at a glance about one agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Health {
    /// The certificate it last connected with is revoked.
    revoked: bool,
    /// Not heard from for over [`STALE_AFTER_MS`].
    stale: bool,
    /// Its active bundle is older than the newest published for its tenant (or it has none).
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
