//! Who is calling and what they may do. Only this module can build an [`Authorized`]; feature code and the
//! HTTP handlers take one, so a request reaches tenant data only after a role binding covering that tenant
//! granted the endpoint's permission (the table is [`rbac::GRANTS`]).
//!
//! - [`Principal`]: the authenticated caller — an operator (OIDC token: subject and groups) or the bootstrap
//!   admin token. Agents are not principals here: the QUIC edge binds them to their certificate's tenancy.
//! - [`Authorizer`]: the role bindings in memory (loaded from the store, reloaded after every change), and
//!   [`Authorizer::authorize`], the one decision.
//! - [`AdminTokenMode`]: what the bootstrap admin token may still do (`auth.admin_token`).
//! - [`oidc`]: operators' OpenID Connect bearer tokens, verified against keys from [`jwks`].

pub mod bindings;
pub mod jwks;
pub mod oidc;
pub mod rbac;

use std::sync::{Arc, RwLock};

use gait_store::{BindingScope, Org, RoleBinding, SubjectKind, Tenant};
use serde::{Deserialize, Serialize};

pub use rbac::{Permission, Role, UnknownRole};

/// An operator authenticated by an OIDC token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    /// The token's issuer.
    pub issuer: String,
    /// The subject (a user binding names it).
    pub subject: String,
    /// The groups the token lists (a group binding names one).
    pub groups: Vec<String>,
}

/// The authenticated caller of an API request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The bootstrap admin token (`<data-dir>/admin.token`); what it may do is [`AdminTokenMode`].
    AdminToken,
    /// An operator.
    Operator(Operator),
}

impl Principal {
    /// The actor recorded for what this caller does: `admin-token` or `oidc:<issuer>#<subject>`.
    pub fn actor(&self) -> String {
        match self {
            Principal::AdminToken => "admin-token".to_owned(),
            Principal::Operator(op) => format!("oidc:{}#{}", op.issuer, op.subject),
        }
    }
}

/// What the bootstrap admin token may do (`auth.admin_token`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminTokenMode {
    /// `admin` with no OIDC issuer configured (one machine, no IdP), `bootstrap` with one.
    #[default]
    Auto,
    /// A platform admin over the whole deployment.
    Admin,
    /// Only reads and writes role bindings, so it can create the first binding for an operator; then set
    /// `disabled`.
    Bootstrap,
    /// Refused like any unknown token.
    Disabled,
}

impl AdminTokenMode {
    /// `Auto` resolved against whether operators authenticate with OIDC.
    pub fn resolve(self, oidc_configured: bool) -> AdminTokenMode {
        match self {
            AdminTokenMode::Auto if oidc_configured => AdminTokenMode::Bootstrap,
            AdminTokenMode::Auto => AdminTokenMode::Admin,
            other => other,
        }
    }

    /// The stable name (config value, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            AdminTokenMode::Auto => "auto",
            AdminTokenMode::Admin => "admin",
            AdminTokenMode::Bootstrap => "bootstrap",
            AdminTokenMode::Disabled => "disabled",
        }
    }
}

/// What a request is about: the part of the tenancy tree a permission is checked against.
pub trait Target {
    /// The scope a binding must cover.
    fn scope(&self) -> BindingScope;
}

impl Target for Tenant {
    fn scope(&self) -> BindingScope {
        BindingScope::env(self.org.clone(), self.project.clone(), self.env.clone())
    }
}

impl Target for Org {
    fn scope(&self) -> BindingScope {
        BindingScope::org(self.clone())
    }
}

impl Target for BindingScope {
    fn scope(&self) -> BindingScope {
        self.clone()
    }
}

/// What belongs to no org: the audit log, the CA, deployment-wide bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deployment;

impl Target for Deployment {
    fn scope(&self) -> BindingScope {
        BindingScope::deployment()
    }
}

/// Proof that `principal` holds `permission` over `target`. Only [`Authorizer::authorize`] builds one (the
/// fields are private to this module), so a function taking an `Authorized<Tenant>` cannot be reached for a
/// tenant its caller was not granted.
#[derive(Clone, Debug)]
pub struct Authorized<T> {
    principal: Arc<Principal>,
    permission: Permission,
    target: T,
}

impl<T> Authorized<T> {
    /// What the permission was granted over.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// Who is acting.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The actor string recorded for the operation.
    pub fn actor(&self) -> String {
        self.principal.actor()
    }

    /// The permission granted.
    pub fn permission(&self) -> Permission {
        self.permission
    }
}

/// A refused authorization: the caller holds no role granting the permission over the scope.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "you hold no role granting `{permission}` on {scope}; a platform_admin of that scope can bind you (or one \
     of your groups) to one of: {roles}"
)]
pub struct Denied {
    /// The permission asked for.
    pub permission: Permission,
    /// Where.
    pub scope: BindingScope,
    /// The roles that would grant it, comma-separated.
    pub roles: String,
}

/// One binding as the authorizer holds it.
#[derive(Clone, Debug)]
struct Grant {
    kind: SubjectKind,
    subject: String,
    role: Role,
    scope: BindingScope,
}

/// The role bindings in memory and the decision over them.
#[derive(Debug)]
pub struct Authorizer {
    admin_token: AdminTokenMode,
    grants: RwLock<Arc<Vec<Grant>>>,
}

impl Authorizer {
    /// An authorizer with no bindings; `admin_token` must be resolved (not `Auto`).
    pub fn new(admin_token: AdminTokenMode) -> Self {
        Self {
            admin_token,
            grants: RwLock::new(Arc::new(Vec::new())),
        }
    }

    /// What the admin token may do.
    pub fn admin_token_mode(&self) -> AdminTokenMode {
        self.admin_token
    }

    /// Replaces the bindings with `rows` (all of the store's). A row naming a role this build does not know
    /// is skipped with a warning (it grants nothing).
    pub fn load(&self, rows: &[RoleBinding]) {
        let grants: Vec<Grant> = rows
            .iter()
            .filter_map(|row| match Role::parse(&row.role) {
                Ok(role) => Some(Grant {
                    kind: row.kind,
                    subject: row.subject.clone(),
                    role,
                    scope: row.scope.clone(),
                }),
                Err(e) => {
                    tracing::warn!(binding = row.id, error = %e, "role binding ignored");
                    None
                }
            })
            .collect();
        let mut slot = self
            .grants
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *slot = Arc::new(grants);
    }

    fn snapshot(&self) -> Arc<Vec<Grant>> {
        self.grants
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether `who` holds `permission` over all of `scope`.
    pub fn holds(&self, who: &Principal, permission: Permission, scope: &BindingScope) -> bool {
        match who {
            Principal::AdminToken => match self.admin_token {
                AdminTokenMode::Admin | AdminTokenMode::Auto => true,
                AdminTokenMode::Bootstrap => matches!(
                    permission,
                    Permission::BindingRead | Permission::BindingWrite
                ),
                AdminTokenMode::Disabled => false,
            },
            Principal::Operator(op) => self.snapshot().iter().any(|g| {
                let names_caller = match g.kind {
                    SubjectKind::User => g.subject == op.subject,
                    SubjectKind::Group => op.groups.contains(&g.subject),
                };
                names_caller && g.role.grants(permission) && g.scope.covers(scope)
            }),
        }
    }

    /// The one authorization decision: `who` may use `permission` on `target` when one of their bindings
    /// covering the target's scope has a role granting it.
    pub fn authorize<T: Target>(
        &self,
        who: Arc<Principal>,
        permission: Permission,
        target: T,
    ) -> Result<Authorized<T>, Denied> {
        let scope = target.scope();
        if self.holds(&who, permission, &scope) {
            Ok(Authorized {
                principal: who,
                permission,
                target,
            })
        } else {
            Err(Denied {
                permission,
                scope,
                roles: permission
                    .roles()
                    .map(Role::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gait_store::BindingSource;

    fn id<T: std::str::FromStr>(s: &str) -> T
    where
        T::Err: std::fmt::Debug,
    {
        s.parse().expect("identifier")
    }

    fn row(kind: SubjectKind, subject: &str, role: &str, scope: BindingScope) -> RoleBinding {
        RoleBinding {
            id: 1,
            kind,
            subject: subject.into(),
            role: role.into(),
            scope,
            source: BindingSource::Api,
            created_by: "test".into(),
            created_unix_ms: 0,
        }
    }

    fn operator(subject: &str, groups: &[&str]) -> Arc<Principal> {
        Arc::new(Principal::Operator(Operator {
            issuer: "https://idp.example".into(),
            subject: subject.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }))
    }

    fn tenant(org: &str, project: &str, env: &str) -> Tenant {
        Tenant::new(id(org), id(project), id(env))
    }

    #[test]
    fn bindings_grant_their_roles_permissions_within_their_scope_only() {
        let auth = Authorizer::new(AdminTokenMode::Bootstrap);
        auth.load(&[
            row(
                SubjectKind::Group,
                "web-team",
                "policy_author",
                BindingScope::project(id("acme"), id("web")),
            ),
            row(
                SubjectKind::User,
                "bob",
                "viewer",
                BindingScope::org(id("acme")),
            ),
            row(
                SubjectKind::User,
                "eve",
                "superuser",
                BindingScope::deployment(),
            ),
        ]);
        let alice = operator("alice", &["web-team"]);
        let prod = tenant("acme", "web", "prod");
        let ok = auth
            .authorize(alice.clone(), Permission::BundlePublish, prod.clone())
            .expect("author publishes in her project");
        assert_eq!(ok.target(), &prod);
        assert_eq!(ok.actor(), "oidc:https://idp.example#alice");
        // Another project, the whole org, and a permission her role lacks are denied.
        for (perm, scope) in [
            (
                Permission::BundlePublish,
                tenant("acme", "api", "prod").scope(),
            ),
            (Permission::BundlePublish, BindingScope::org(id("acme"))),
            (Permission::BindingWrite, prod.scope()),
        ] {
            let denied = auth
                .authorize(alice.clone(), perm, scope.clone())
                .expect_err("denied");
            assert_eq!(denied.scope, scope);
            assert!(denied.to_string().contains(perm.as_str()), "{denied}");
        }
        // A user binding names the subject, not a group of that name.
        assert!(auth.holds(&operator("bob", &[]), Permission::AgentRead, &prod.scope()));
        assert!(!auth.holds(
            &operator("carol", &["bob"]),
            Permission::AgentRead,
            &prod.scope()
        ));
        assert!(!auth.holds(
            &operator("bob", &[]),
            Permission::BundlePublish,
            &prod.scope()
        ));
        // An unknown role grants nothing.
        assert!(!auth.holds(&operator("eve", &[]), Permission::BundleRead, &prod.scope()));
        // The bootstrap token manages bindings only.
        assert!(auth.holds(
            &Principal::AdminToken,
            Permission::BindingWrite,
            &BindingScope::deployment()
        ));
        assert!(!auth.holds(
            &Principal::AdminToken,
            Permission::BundleRead,
            &prod.scope()
        ));
        // Reloading replaces the set.
        auth.load(&[]);
        assert!(!auth.holds(&alice, Permission::BundlePublish, &prod.scope()));
    }

    #[test]
    fn the_admin_token_mode_decides_what_the_token_may_do() {
        let prod = tenant("acme", "web", "prod").scope();
        assert_eq!(AdminTokenMode::Auto.resolve(false), AdminTokenMode::Admin);
        assert_eq!(
            AdminTokenMode::Auto.resolve(true),
            AdminTokenMode::Bootstrap
        );
        assert_eq!(
            AdminTokenMode::Disabled.resolve(false),
            AdminTokenMode::Disabled
        );
        let admin = Authorizer::new(AdminTokenMode::Admin);
        assert!(admin.holds(&Principal::AdminToken, Permission::BundlePublish, &prod));
        let disabled = Authorizer::new(AdminTokenMode::Disabled);
        assert!(!disabled.holds(&Principal::AdminToken, Permission::BindingWrite, &prod));
    }
}
