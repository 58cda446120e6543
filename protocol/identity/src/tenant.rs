//! [`Tenant`] (`org/project/env`), the scope every row, bundle and record belongs to, and [`AgentKey`], one
//! agent inside one tenant.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::IdError;
use crate::name::{AgentId, Env, Org, Project};

/// The tenancy scope: an environment of a project of an organisation.
///
/// Serialized as `{"org": …, "project": …, "env": …}` (unknown fields refused); displayed and parsed as
/// `org/project/env`. Every part is validated, so a `Tenant` can be put in a path or a query as it is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Organisation.
    pub org: Org,
    /// Project inside the organisation.
    pub project: Project,
    /// Environment inside the project.
    pub env: Env,
}

impl Tenant {
    /// A tenant from its validated parts.
    pub fn new(org: Org, project: Project, env: Env) -> Self {
        Tenant { org, project, env }
    }

    /// A tenant from three strings, validating each; the error names the first part that is wrong.
    pub fn from_parts(org: &str, project: &str, env: &str) -> Result<Self, IdError> {
        Ok(Tenant {
            org: org.parse()?,
            project: project.parse()?,
            env: env.parse()?,
        })
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.org, self.project, self.env)
    }
}

/// Why `org/project/env` text is not a tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantParseError {
    /// The text does not have exactly the number of `/`-separated parts expected.
    #[error("expected {expected}, found {found} '/'-separated parts")]
    Shape {
        /// The expected form, e.g. `org/project/env`.
        expected: &'static str,
        /// How many parts the text has.
        found: usize,
    },
    /// A part breaks its rule.
    #[error(transparent)]
    Part(#[from] IdError),
}

impl FromStr for Tenant {
    type Err = TenantParseError;

    /// Parses `org/project/env`.
    fn from_str(text: &str) -> Result<Self, TenantParseError> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts[..] {
            [org, project, env] => Ok(Tenant::from_parts(org, project, env)?),
            _ => Err(TenantParseError::Shape {
                expected: "org/project/env",
                found: parts.len(),
            }),
        }
    }
}

/// One agent inside one tenant. The same agent id in two tenants names two different agents.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentKey {
    /// The tenant the agent belongs to.
    pub tenant: Tenant,
    /// The agent's id inside the tenant.
    pub agent_id: AgentId,
}

impl AgentKey {
    /// An agent key from its parts.
    pub fn new(tenant: Tenant, agent_id: AgentId) -> Self {
        AgentKey { tenant, agent_id }
    }
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.agent_id)
    }
}

impl FromStr for AgentKey {
    type Err = TenantParseError;

    /// Parses `org/project/env/agent_id`.
    fn from_str(text: &str) -> Result<Self, TenantParseError> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts[..] {
            [org, project, env, agent_id] => Ok(AgentKey {
                tenant: Tenant::from_parts(org, project, env)?,
                agent_id: agent_id.parse()?,
            }),
            _ => Err(TenantParseError::Shape {
                expected: "org/project/env/agent_id",
                found: parts.len(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdKind;

    #[test]
    fn tenant_displays_and_parses_as_org_project_env() {
        let tenant: Tenant = "acme/payments/prod".parse().unwrap();
        assert_eq!(tenant.org, "acme");
        assert_eq!(tenant.to_string(), "acme/payments/prod");
        assert_eq!(
            Tenant::from_parts("acme", "payments", "prod").unwrap(),
            tenant
        );
    }

    #[test]
    fn tenant_text_with_the_wrong_shape_or_a_bad_part_is_refused() {
        assert_eq!(
            "acme/payments".parse::<Tenant>(),
            Err(TenantParseError::Shape {
                expected: "org/project/env",
                found: 2
            })
        );
        assert!("acme/payments/prod/x".parse::<Tenant>().is_err());
        assert!("acme//prod".parse::<Tenant>().is_err());
        match "acme/Payments/prod".parse::<Tenant>() {
            Err(TenantParseError::Part(e)) => assert_eq!(e.kind, IdKind::Project),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tenant_json_is_three_plain_strings_and_refuses_bad_parts_and_extra_fields() {
        let tenant = Tenant::from_parts("acme", "payments", "prod").unwrap();
        let json = serde_json::to_string(&tenant).unwrap();
        assert_eq!(json, r#"{"org":"acme","project":"payments","env":"prod"}"#);
        assert_eq!(serde_json::from_str::<Tenant>(&json).unwrap(), tenant);
        let err = serde_json::from_str::<Tenant>(r#"{"org":"","project":"p","env":"e"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("invalid org \"\""), "{err}");
        assert!(
            serde_json::from_str::<Tenant>(r#"{"org":"a","project":"p","env":"e","x":1}"#).is_err()
        );
    }

    #[test]
    fn agent_key_round_trips_through_text() {
        let key: AgentKey = "acme/payments/prod/a-1".parse().unwrap();
        assert_eq!(key.agent_id, "a-1");
        assert_eq!(key.to_string(), "acme/payments/prod/a-1");
        assert!("acme/payments/prod".parse::<AgentKey>().is_err());
        assert!("acme/payments/prod/A".parse::<AgentKey>().is_err());
    }
}
