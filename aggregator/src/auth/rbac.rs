//! Roles and permissions: the one table saying which role may do what. Every HTTP endpoint names one
//! [`Permission`] (in `api::routes`); a caller holds it at a scope when one of their role bindings covering
//! that scope has a role granting it. Nothing is allowed that the table does not list.

use serde::Serialize;

/// The roles a binding can give.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything within its scope, including who holds which role there.
    PlatformAdmin,
    /// Writes and publishes policy; reads the fleet.
    PolicyAuthor,
    /// Decides approval requests; reads the fleet.
    Approver,
    /// Reads everything, including the audit log and the bindings; changes nothing.
    Auditor,
    /// Reads the fleet: bundles, agents, alerts.
    Viewer,
}

impl Role {
    /// Every role, in the order shown to users.
    pub const ALL: [Role; 5] = [
        Role::PlatformAdmin,
        Role::PolicyAuthor,
        Role::Approver,
        Role::Auditor,
        Role::Viewer,
    ];

    /// The stable name used in bindings, the config file and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform_admin",
            Role::PolicyAuthor => "policy_author",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a role name; the error lists the roles there are.
    pub fn parse(name: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| UnknownRole(name.to_owned()))
    }

    /// Whether this role grants `permission` (the one table, [`GRANTS`]).
    pub fn grants(self, permission: Permission) -> bool {
        GRANTS
            .iter()
            .any(|(p, roles)| *p == permission && roles.contains(&self))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`: use one of platform_admin, policy_author, approver, auditor, viewer")]
pub struct UnknownRole(pub String);

/// Something an operator may be allowed to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Permission {
    /// Read signed bundles and what is in force.
    BundleRead,
    /// Publish a policy bundle.
    BundlePublish,
    /// Read the agent inventory and identity alerts.
    AgentRead,
    /// Read agents' records and gaps (decision evidence).
    RecordRead,
    /// Read role bindings.
    BindingRead,
    /// Grant and revoke role bindings.
    BindingWrite,
    /// Read the audit log and its checkpoints.
    AuditRead,
    /// Read join tokens (never their secrets).
    JoinTokenRead,
    /// Mint and revoke join tokens.
    JoinTokenWrite,
    /// Revoke agent certificates, rotate the CA.
    PkiWrite,
    /// Read approval requests and approval policies.
    ApprovalRead,
    /// Approve or deny approval requests.
    ApprovalDecide,
    /// Write approval policies.
    ApprovalPolicyWrite,
    /// Read evidence: look up the evidence index (decisions and artifacts by digest, run id, verdict, stage)
    /// and read the artifact bytes agents uploaded.
    EvidenceRead,
    /// List the registry's bundle signing keys and their states.
    SigningKeyRead,
    /// Rotate and revoke bundle signing keys.
    SigningKeyWrite,
    /// Read the policy registry: versions, diffs, environments' pin history.
    PolicyRead,
    /// Push policy versions to the registry.
    PolicyWrite,
    /// Pin an environment to a version, roll it back.
    RolloutWrite,
    /// Replay a candidate policy against the org's captured decisions and export that corpus (it reads
    /// decisions, like `evidence.read`).
    ReplayRun,
}

impl Permission {
    /// Every permission.
    pub const ALL: [Permission; 20] = [
        Permission::BundleRead,
        Permission::BundlePublish,
        Permission::AgentRead,
        Permission::RecordRead,
        Permission::BindingRead,
        Permission::BindingWrite,
        Permission::AuditRead,
        Permission::JoinTokenRead,
        Permission::JoinTokenWrite,
        Permission::PkiWrite,
        Permission::ApprovalRead,
        Permission::ApprovalDecide,
        Permission::ApprovalPolicyWrite,
        Permission::EvidenceRead,
        Permission::SigningKeyRead,
        Permission::SigningKeyWrite,
        Permission::PolicyRead,
        Permission::PolicyWrite,
        Permission::RolloutWrite,
        Permission::ReplayRun,
    ];

    /// The stable dotted name (OpenAPI `x-gait-permission`, errors, docs).
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::BundleRead => "bundle.read",
            Permission::BundlePublish => "bundle.publish",
            Permission::AgentRead => "agent.read",
            Permission::RecordRead => "record.read",
            Permission::BindingRead => "binding.read",
            Permission::BindingWrite => "binding.write",
            Permission::AuditRead => "audit.read",
            Permission::JoinTokenRead => "join_token.read",
            Permission::JoinTokenWrite => "join_token.write",
            Permission::PkiWrite => "pki.write",
            Permission::ApprovalRead => "approval.read",
            Permission::ApprovalDecide => "approval.decide",
            Permission::ApprovalPolicyWrite => "approval_policy.write",
            Permission::EvidenceRead => "evidence.read",
            Permission::SigningKeyRead => "signing_key.read",
            Permission::SigningKeyWrite => "signing_key.write",
            Permission::PolicyRead => "policy.read",
            Permission::PolicyWrite => "policy.write",
            Permission::RolloutWrite => "rollout.write",
            Permission::ReplayRun => "replay.run",
        }
    }

    /// The permission named `name`, if any.
    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The roles granting this permission.
    pub fn roles(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| r.grants(self))
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

use Role::{Approver, Auditor, PlatformAdmin, PolicyAuthor, Viewer};

/// The permission table: each permission and the roles granting it. Deny by default: a permission no row
/// lists is held by nobody. (`docs/enterprise/access.md` renders this table.)
pub const GRANTS: [(Permission, &[Role]); 20] = [
    (
        Permission::BundleRead,
        &[PlatformAdmin, PolicyAuthor, Approver, Auditor, Viewer],
    ),
    (Permission::BundlePublish, &[PlatformAdmin, PolicyAuthor]),
    (
        Permission::AgentRead,
        &[PlatformAdmin, PolicyAuthor, Approver, Auditor, Viewer],
    ),
    (
        Permission::RecordRead,
        &[PlatformAdmin, PolicyAuthor, Auditor],
    ),
    (Permission::BindingRead, &[PlatformAdmin, Auditor]),
    (Permission::BindingWrite, &[PlatformAdmin]),
    (Permission::AuditRead, &[PlatformAdmin, Auditor]),
    (Permission::JoinTokenRead, &[PlatformAdmin, Auditor]),
    (Permission::JoinTokenWrite, &[PlatformAdmin]),
    (Permission::PkiWrite, &[PlatformAdmin]),
    (
        Permission::ApprovalRead,
        &[PlatformAdmin, PolicyAuthor, Approver, Auditor],
    ),
    (Permission::ApprovalDecide, &[Approver]),
    (
        Permission::ApprovalPolicyWrite,
        &[PlatformAdmin, PolicyAuthor],
    ),
    // Whoever reads records reads the index over them.
    (
        Permission::EvidenceRead,
        &[PlatformAdmin, PolicyAuthor, Auditor],
    ),
    (
        Permission::SigningKeyRead,
        &[PlatformAdmin, PolicyAuthor, Auditor],
    ),
    (Permission::SigningKeyWrite, &[PlatformAdmin]),
    // The policy registry (issue 13): everyone reads versions and pins; authors push, pin and roll back.
    (
        Permission::PolicyRead,
        &[PlatformAdmin, PolicyAuthor, Approver, Auditor, Viewer],
    ),
    (Permission::PolicyWrite, &[PlatformAdmin, PolicyAuthor]),
    (Permission::RolloutWrite, &[PlatformAdmin, PolicyAuthor]),
    // Replay reads the org's captured decisions: the readers of evidence.
    (
        Permission::ReplayRun,
        &[PlatformAdmin, PolicyAuthor, Auditor],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_has_exactly_one_row_and_names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(GRANTS.iter().filter(|(q, _)| *q == p).count(), 1, "{p}");
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Ok(r));
        }
        assert!(
            Role::parse("root")
                .unwrap_err()
                .to_string()
                .contains("platform_admin")
        );
    }

    #[test]
    fn the_table_keeps_its_promises() {
        // A viewer changes nothing; an auditor reads everything and changes nothing.
        for p in Permission::ALL {
            let writes = matches!(
                p,
                Permission::BundlePublish
                    | Permission::BindingWrite
                    | Permission::JoinTokenWrite
                    | Permission::PkiWrite
                    | Permission::ApprovalDecide
                    | Permission::ApprovalPolicyWrite
                    | Permission::SigningKeyWrite
                    | Permission::PolicyWrite
                    | Permission::RolloutWrite
            );
            if writes {
                assert!(!Viewer.grants(p) && !Auditor.grants(p), "{p}");
            } else {
                assert!(Auditor.grants(p), "auditor cannot {p}");
            }
        }
        // Only approvers decide approvals (an admin cannot approve by being an admin).
        assert_eq!(
            Permission::ApprovalDecide.roles().collect::<Vec<_>>(),
            vec![Approver]
        );
        assert!(PlatformAdmin.grants(Permission::BindingWrite));
        assert!(!PolicyAuthor.grants(Permission::BindingWrite));
    }
}
