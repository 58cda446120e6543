//! The relationship envelope (`schemas/v1/common/relationship_envelope.schema.json`) that traces, run timelines
//! and audit records carry to link agents, tools, policies and records.

use serde::{Deserialize, Serialize};

use crate::check::Checker;

/// Links from one record to the entities and records around it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationshipEnvelope {
    /// The record this one belongs to (session, job, run, trace, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ref: Option<EntityRef>,
    /// Entities this record mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entity_refs: Vec<EntityRef>,
    /// The policy that governed the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_ref: Option<PolicyRef>,
    /// Requester / delegator / delegate identities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_chain: Vec<AgentLink>,
    /// Typed edges between entities.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<Edge>,
    /// Id of the parent record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub parent_record_id: String,
    /// Ids of related records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related_record_ids: Vec<String>,
    /// Ids of every entity mentioned, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related_entity_ids: Vec<String>,
    /// How agents delegated to each other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agent_lineage: Vec<AgentLineage>,
}

/// A typed reference to an entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EntityRef {
    /// Entity kind (`agent`, `tool`, `policy`, `trace`, ...).
    #[serde(default)]
    pub kind: String,
    /// Entity id.
    #[serde(default)]
    pub id: String,
}

/// The governing policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    /// Policy schema id (`gait.gate.policy`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_id: String,
    /// Policy schema version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_version: String,
    /// Policy digest, optionally `sha256:`-prefixed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy_digest: String,
    /// Rules that matched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_rule_ids: Vec<String>,
}

/// One identity in the agent chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLink {
    /// Agent identity.
    #[serde(default)]
    pub identity: String,
    /// `requester`, `delegator` or `delegate`.
    #[serde(default)]
    pub role: String,
}

/// A typed edge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// Edge kind (`calls`, `governed_by`, `delegates_to`, ...).
    #[serde(default)]
    pub kind: String,
    /// Source entity.
    #[serde(default)]
    pub from: EntityRef,
    /// Target entity.
    #[serde(default)]
    pub to: EntityRef,
}

/// One delegation step in the agent lineage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentLineage {
    /// The agent.
    #[serde(default)]
    pub agent_id: String,
    /// Who delegated to it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delegated_by: String,
    /// The delegation record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delegation_record_id: String,
}

const PARENT_KINDS: &[&str] = &[
    "trace", "run", "session", "intent", "policy", "agent", "evidence",
];
const ENTITY_KINDS: &[&str] = &[
    "agent",
    "tool",
    "resource",
    "policy",
    "run",
    "trace",
    "delegation",
    "evidence",
];
const ROLES: &[&str] = &["requester", "delegator", "delegate"];
const EDGE_KINDS: &[&str] = &[
    "delegates_to",
    "calls",
    "governed_by",
    "targets",
    "derived_from",
    "emits_evidence",
];

impl RelationshipEnvelope {
    /// Apply the envelope schema's rules under the dotted prefix `at`.
    pub(crate) fn check(&self, c: &mut Checker, at: &str) {
        if let Some(parent) = &self.parent_ref {
            c.one_of(
                &format!("{at}.parent_ref.kind"),
                &parent.kind,
                PARENT_KINDS,
                true,
            );
            c.non_empty(&format!("{at}.parent_ref.id"), &parent.id);
        }
        for (i, entity) in self.entity_refs.iter().enumerate() {
            c.one_of(
                &format!("{at}.entity_refs[{i}].kind"),
                &entity.kind,
                ENTITY_KINDS,
                true,
            );
            c.non_empty(&format!("{at}.entity_refs[{i}].id"), &entity.id);
        }
        c.unique(&format!("{at}.entity_refs"), &self.entity_refs);
        if let Some(policy) = &self.policy_ref {
            let digest = policy
                .policy_digest
                .strip_prefix("sha256:")
                .unwrap_or(&policy.policy_digest);
            let lower_hex = digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            if !policy.policy_digest.is_empty() && !lower_hex {
                c.fail(
                    format!("{at}.policy_ref.policy_digest"),
                    "must be 64 lowercase hex characters, optionally prefixed sha256:",
                );
            }
            c.unique(
                &format!("{at}.policy_ref.matched_rule_ids"),
                &policy.matched_rule_ids,
            );
        }
        for (i, link) in self.agent_chain.iter().enumerate() {
            c.non_empty(&format!("{at}.agent_chain[{i}].identity"), &link.identity);
            c.one_of(
                &format!("{at}.agent_chain[{i}].role"),
                &link.role,
                ROLES,
                true,
            );
        }
        for (i, edge) in self.edges.iter().enumerate() {
            let field = format!("{at}.edges[{i}]");
            c.one_of(&format!("{field}.kind"), &edge.kind, EDGE_KINDS, true);
            for (side, end) in [("from", &edge.from), ("to", &edge.to)] {
                c.non_empty(&format!("{field}.{side}.kind"), &end.kind);
                c.non_empty(&format!("{field}.{side}.id"), &end.id);
            }
        }
        c.unique(&format!("{at}.edges"), &self.edges);
        c.unique(
            &format!("{at}.related_record_ids"),
            &self.related_record_ids,
        );
        c.unique(
            &format!("{at}.related_entity_ids"),
            &self.related_entity_ids,
        );
        for (i, lineage) in self.agent_lineage.iter().enumerate() {
            c.non_empty(
                &format!("{at}.agent_lineage[{i}].agent_id"),
                &lineage.agent_id,
            );
        }
    }
}
