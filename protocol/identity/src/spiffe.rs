//! [`SpiffeId`]: the agent identity carried in the URI SAN of an agent certificate,
//! `spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<agent-id>`.
//!
//! Parsing is strict and never normalises: no port, user info, query, fragment or percent-encoding, no empty,
//! missing or extra path segment, and every segment under its identifier rule. So the text of an accepted id is
//! exactly what [`SpiffeId`]'s `Display` writes back, and the agent, the aggregator and an auditor can never
//! disagree about what an id says.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::IdError;
use crate::name::{AgentId, TrustDomain};
use crate::tenant::{AgentKey, Tenant};

/// URI scheme of SPIFFE ids.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// Longest SPIFFE id accepted, in bytes (the SPIFFE ID specification's limit).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;

/// The expected path, as error messages state it.
const PATH_FORM: &str = "/org/<org>/project/<project>/env/<env>/agent/<id>";

/// What is wrong with a URI that was meant to be an agent SPIFFE id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Longer than [`MAX_SPIFFE_ID_LEN`].
    #[error("longer than {MAX_SPIFFE_ID_LEN} bytes")]
    TooLong,
    /// The scheme is not `spiffe://` (lowercase).
    #[error("scheme must be spiffe://")]
    Scheme,
    /// The authority carries user info (`user@`).
    #[error("user info is not allowed")]
    UserInfo,
    /// The authority carries a port.
    #[error("a port is not allowed")]
    Port,
    /// A query (`?`) is present.
    #[error("a query is not allowed")]
    Query,
    /// A fragment (`#`) is present.
    #[error("a fragment is not allowed")]
    Fragment,
    /// A `%` escape is present.
    #[error("percent-encoding is not allowed")]
    PercentEncoded,
    /// The trust domain breaks its rule.
    #[error("bad trust domain: {0}")]
    TrustDomain(IdError),
    /// The path is not exactly the agent form (missing, empty, extra or misnamed segments).
    #[error("path must be exactly {PATH_FORM}")]
    Path,
    /// A path segment breaks the identifier rule.
    #[error("bad segment: {0}")]
    Segment(IdError),
}

/// An agent's SPIFFE id: trust domain, tenant and agent id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    /// The deployment's trust domain.
    pub trust_domain: TrustDomain,
    /// The tenant the agent belongs to.
    pub tenant: Tenant,
    /// The agent's id inside the tenant.
    pub agent_id: AgentId,
}

impl SpiffeId {
    /// An id from its parts.
    pub fn new(trust_domain: TrustDomain, tenant: Tenant, agent_id: AgentId) -> Self {
        SpiffeId {
            trust_domain,
            tenant,
            agent_id,
        }
    }

    /// Parses `spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<id>` strictly.
    pub fn parse(uri: &str) -> Result<Self, SpiffeIdError> {
        if uri.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = uri
            .strip_prefix(SPIFFE_SCHEME)
            .ok_or(SpiffeIdError::Scheme)?;
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('%') {
            return Err(SpiffeIdError::PercentEncoded);
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            return Err(SpiffeIdError::UserInfo);
        }
        if authority.contains(':') {
            return Err(SpiffeIdError::Port);
        }
        let trust_domain = TrustDomain::parse(authority).map_err(SpiffeIdError::TrustDomain)?;
        let segments: Vec<&str> = path.split('/').collect();
        let [
            "org",
            org,
            "project",
            project,
            "env",
            env,
            "agent",
            agent_id,
        ] = segments[..]
        else {
            return Err(SpiffeIdError::Path);
        };
        let segment = SpiffeIdError::Segment;
        Ok(SpiffeId {
            trust_domain,
            tenant: Tenant {
                org: org.parse().map_err(segment)?,
                project: project.parse().map_err(segment)?,
                env: env.parse().map_err(segment)?,
            },
            agent_id: agent_id.parse().map_err(segment)?,
        })
    }

    /// The tenant and agent id, without the trust domain.
    pub fn agent_key(&self) -> AgentKey {
        AgentKey::new(self.tenant.clone(), self.agent_id.clone())
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SPIFFE_SCHEME}{}/org/{}/project/{}/env/{}/agent/{}",
            self.trust_domain, self.tenant.org, self.tenant.project, self.tenant.env, self.agent_id
        )
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(uri: &str) -> Result<Self, SpiffeIdError> {
        SpiffeId::parse(uri)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let uri = String::deserialize(deserializer)?;
        SpiffeId::parse(&uri)
            .map_err(|e| serde::de::Error::custom(format_args!("invalid agent SPIFFE id: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdKind;
    use proptest::prelude::*;

    const GOOD: &str = "spiffe://gait.local/org/acme/project/web/env/prod/agent/ci-runner-7";

    #[test]
    fn the_canonical_form_yields_every_part() {
        let id = SpiffeId::parse(GOOD).unwrap();
        assert_eq!(id.trust_domain, "gait.local");
        assert_eq!(id.tenant.to_string(), "acme/web/prod");
        assert_eq!(id.agent_id, "ci-runner-7");
        assert_eq!(id.agent_key().to_string(), "acme/web/prod/ci-runner-7");
        assert_eq!(id.to_string(), GOOD);
    }

    #[test]
    fn every_deviation_is_refused_with_what_is_wrong() {
        use SpiffeIdError as E;
        type Expect = fn(&SpiffeIdError) -> bool;
        let cases: &[(&str, Expect)] = &[
            ("https://gait.local/org/a/project/b/env/c/agent/d", |e| {
                *e == E::Scheme
            }),
            ("SPIFFE://gait.local/org/a/project/b/env/c/agent/d", |e| {
                *e == E::Scheme
            }),
            ("spiffe://gait.local", |e| *e == E::Path),
            ("spiffe://gait.local/", |e| *e == E::Path),
            ("spiffe://gait.local/org/a/project/b/env/c/agent/d/", |e| {
                *e == E::Path
            }),
            (
                "spiffe://gait.local/org/a/project/b/env/c/agent/d/extra",
                |e| *e == E::Path,
            ),
            ("spiffe://gait.local/org/a/project/b/env/c/agent", |e| {
                *e == E::Path
            }),
            ("spiffe://gait.local/org/a/project/b/env/c", |e| {
                *e == E::Path
            }),
            ("spiffe://gait.local//org/a/project/b/env/c/agent/d", |e| {
                *e == E::Path
            }),
            (
                "spiffe://gait.local/org//project/b/env/c/agent/d",
                |e| matches!(e, E::Segment(i) if i.kind == IdKind::Org && i.value.is_empty()),
            ),
            ("spiffe://gait.local/org/a/project/b/env/c/agnt/d", |e| {
                *e == E::Path
            }),
            ("spiffe://gait.local/org/a/proj/b/env/c/agent/d", |e| {
                *e == E::Path
            }),
            (
                "spiffe://gait.local/org/a/project/b/env/c/agent/d?x=1",
                |e| *e == E::Query,
            ),
            ("spiffe://gait.local/org/a/project/b/env/c/agent/d#f", |e| {
                *e == E::Fragment
            }),
            ("spiffe://gait.local/org/a/project/b/env/c/agent/%64", |e| {
                *e == E::PercentEncoded
            }),
            (
                "spiffe://gait.local:443/org/a/project/b/env/c/agent/d",
                |e| *e == E::Port,
            ),
            (
                "spiffe://user@gait.local/org/a/project/b/env/c/agent/d",
                |e| *e == E::UserInfo,
            ),
            ("spiffe://Gait.Local/org/a/project/b/env/c/agent/d", |e| {
                matches!(e, E::TrustDomain(_))
            }),
            ("spiffe:///org/a/project/b/env/c/agent/d", |e| {
                matches!(e, E::TrustDomain(_))
            }),
            (
                "spiffe://gait.local/org/A/project/b/env/c/agent/d",
                |e| matches!(e, E::Segment(i) if i.kind == IdKind::Org),
            ),
            (
                "spiffe://gait.local/org/a/project/-b/env/c/agent/d",
                |e| matches!(e, E::Segment(i) if i.kind == IdKind::Project),
            ),
            (
                "spiffe://gait.local/org/a/project/b/env/../agent/d",
                |e| matches!(e, E::Segment(i) if i.kind == IdKind::Env),
            ),
            (
                "spiffe://gait.local/org/a/project/b/env/c/agent/.d",
                |e| matches!(e, E::Segment(i) if i.kind == IdKind::AgentId),
            ),
        ];
        for (uri, expected) in cases {
            match SpiffeId::parse(uri) {
                Ok(id) => panic!("accepted {uri} as {id}"),
                Err(e) => assert!(expected(&e), "{uri}: unexpected error {e:?}"),
            }
        }
        let long = format!("{GOOD}{}", "x".repeat(MAX_SPIFFE_ID_LEN));
        assert_eq!(SpiffeId::parse(&long), Err(E::TooLong));
    }

    #[test]
    fn errors_read_well() {
        let err = SpiffeId::parse("spiffe://td/org/a/project/B/env/c/agent/d").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bad segment: invalid project \"B\": must match ^[a-z0-9][a-z0-9._-]{0,62}$"
        );
    }

    #[test]
    fn serde_is_the_uri_and_deserialize_validates() {
        let id = SpiffeId::parse(GOOD).unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{GOOD}\""));
        assert_eq!(serde_json::from_str::<SpiffeId>(&json).unwrap(), id);
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://td/org/a\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid agent SPIFFE id: path must be"),
            "{err}"
        );
    }

    fn identifier() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._-]{0,62}"
    }

    proptest! {
        #[test]
        fn format_then_parse_is_the_identity(
            td in "[a-z0-9][a-z0-9._-]{0,40}",
            org in identifier(),
            project in identifier(),
            env in identifier(),
            agent in identifier(),
        ) {
            let id = SpiffeId::new(
                td.parse().unwrap(),
                Tenant::from_parts(&org, &project, &env).unwrap(),
                agent.parse().unwrap(),
            );
            let text = id.to_string();
            prop_assert_eq!(SpiffeId::parse(&text), Ok(id));
            prop_assert_eq!(SpiffeId::parse(&text).unwrap().to_string(), text);
        }

        #[test]
        fn arbitrary_strings_never_panic(uri in "\\PC*") {
            let _ = SpiffeId::parse(&uri);
        }

        #[test]
        fn near_miss_strings_never_panic_and_accepted_ones_round_trip(
            uri in "spiffe://[a-zA-Z0-9.:@/%?#_-]{0,80}",
        ) {
            if let Ok(id) = SpiffeId::parse(&uri) {
                prop_assert_eq!(id.to_string(), uri);
            }
        }
    }
}
