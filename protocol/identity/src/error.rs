//! The error every identifier constructor returns: which kind of identifier, the offending value, the rule.

use std::fmt;

use crate::name::{IDENTIFIER_RULE, TRUST_DOMAIN_RULE};

/// Longest prefix of an offending value that an error message repeats, in characters.
const MAX_ECHO_CHARS: usize = 80;

/// Which identifier a value was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    /// An organisation ([`crate::Org`]).
    Org,
    /// A project ([`crate::Project`]).
    Project,
    /// An environment ([`crate::Env`]).
    Env,
    /// An agent id ([`crate::AgentId`]).
    AgentId,
    /// A SPIFFE trust domain ([`crate::TrustDomain`]).
    TrustDomain,
}

impl IdKind {
    /// The field name used in messages and configuration keys: `org`, `project`, `env`, `agent_id`,
    /// `trust_domain`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdKind::Org => "org",
            IdKind::Project => "project",
            IdKind::Env => "env",
            IdKind::AgentId => "agent_id",
            IdKind::TrustDomain => "trust_domain",
        }
    }

    /// The rule values of this kind must match, as a regular expression.
    pub fn rule(self) -> &'static str {
        match self {
            IdKind::TrustDomain => TRUST_DOMAIN_RULE,
            _ => IDENTIFIER_RULE,
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value broke the rule of the identifier kind it was meant to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: must match {rule}", rule = kind.rule())]
pub struct IdError {
    /// Which identifier the value was meant to be.
    pub kind: IdKind,
    /// The offending value, cut to its first 80 characters (followed by `…` when cut).
    pub value: String,
}

impl IdError {
    /// An error for `value` as a `kind`; long values are cut so a hostile input cannot flood a log.
    pub(crate) fn new(kind: IdKind, value: &str) -> Self {
        let value = match value.char_indices().nth(MAX_ECHO_CHARS) {
            Some((cut, _)) => format!("{}…", &value[..cut]),
            None => value.to_owned(),
        };
        IdError { kind, value }
    }
}
