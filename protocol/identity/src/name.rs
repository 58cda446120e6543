//! The identifier newtypes: [`Org`], [`Project`], [`Env`] and [`AgentId`] under [`IDENTIFIER_RULE`], and
//! [`TrustDomain`] under [`TRUST_DOMAIN_RULE`].
//!
//! Both rules are ASCII-only, lowercase, and start with a letter or digit, so a value is never `.` or `..`,
//! never needs escaping in a URI, a file name or an HTTP path segment, and has exactly one spelling.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{IdError, IdKind};

/// The rule every tenancy identifier (org, project, env, agent id) satisfies.
pub const IDENTIFIER_RULE: &str = "^[a-z0-9][a-z0-9._-]{0,62}$";

/// Longest tenancy identifier, in bytes (one DNS label).
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// The rule a SPIFFE trust domain satisfies.
pub const TRUST_DOMAIN_RULE: &str = "^[a-z0-9][a-z0-9._-]{0,254}$";

/// Longest trust domain, in bytes (a DNS name).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Whether `value` is 1 to `max` bytes of `[a-z0-9._-]`, starting with `[a-z0-9]`.
fn matches_rule(value: &str, max: usize) -> bool {
    let bytes = value.as_bytes();
    let first_ok = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    first_ok
        && bytes.len() <= max
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

macro_rules! identifier {
    ($(#[$meta:meta])* $name:ident, $kind:expr, $max:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Which identifier this is (names it in errors).
            pub const KIND: IdKind = $kind;

            /// Validates `value` against this identifier's rule.
            pub fn parse(value: &str) -> Result<Self, IdError> {
                if matches_rule(value, $max) {
                    Ok($name(value.to_owned()))
                } else {
                    Err(IdError::new(Self::KIND, value))
                }
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The identifier as an owned `String`.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(value: String) -> Result<Self, IdError> {
                if matches_rule(&value, $max) {
                    Ok($name(value))
                } else {
                    Err(IdError::new(Self::KIND, &value))
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;

            fn try_from(value: &str) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = String::deserialize(deserializer)?;
                $name::try_from(value).map_err(serde::de::Error::custom)
            }
        }
    };
}

identifier!(
    /// An organisation: the outermost tenancy level. Matches [`IDENTIFIER_RULE`].
    Org,
    IdKind::Org,
    MAX_IDENTIFIER_LEN
);
identifier!(
    /// A project inside an organisation. Matches [`IDENTIFIER_RULE`].
    Project,
    IdKind::Project,
    MAX_IDENTIFIER_LEN
);
identifier!(
    /// An environment inside a project (e.g. `prod`). Matches [`IDENTIFIER_RULE`].
    Env,
    IdKind::Env,
    MAX_IDENTIFIER_LEN
);
identifier!(
    /// An agent, unique within its environment. Matches [`IDENTIFIER_RULE`].
    AgentId,
    IdKind::AgentId,
    MAX_IDENTIFIER_LEN
);
identifier!(
    /// The SPIFFE trust domain of a deployment (its CA namespace, e.g. `gait.local`). Matches
    /// [`TRUST_DOMAIN_RULE`]: no port, no user info, lowercase.
    TrustDomain,
    IdKind::TrustDomain,
    MAX_TRUST_DOMAIN_LEN
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_rule_edges() {
        for ok in ["a", "0", "0a._-z", "a..b", "a-", "9.9", &"a".repeat(63)] {
            assert!(Org::parse(ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "",
            &"a".repeat(64),
            "_a",
            ".a",
            "-a",
            ".",
            "..",
            "A",
            "aB",
            "a/b",
            "a b",
            "a%2f",
            "é",
            "aé",
            "a\n",
            "a\0",
            "a:b",
            "a@b",
        ] {
            assert!(Org::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn every_tenancy_identifier_shares_one_rule() {
        for value in ["acme", "Acme", "", &"x".repeat(63), &"x".repeat(64), "-x"] {
            let expected = Org::parse(value).is_ok();
            assert_eq!(Project::parse(value).is_ok(), expected, "{value:?}");
            assert_eq!(Env::parse(value).is_ok(), expected, "{value:?}");
            assert_eq!(AgentId::parse(value).is_ok(), expected, "{value:?}");
        }
    }

    #[test]
    fn trust_domain_rule_edges() {
        assert!(TrustDomain::parse("gait.local").is_ok());
        assert!(TrustDomain::parse(&"a".repeat(255)).is_ok());
        assert!(TrustDomain::parse(&"a".repeat(256)).is_err());
        for bad in [
            "",
            "Gait.local",
            ".gait",
            "gait.local:443",
            "u@gait",
            "gait/x",
            "gäit",
        ] {
            assert!(TrustDomain::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_name_the_kind_the_value_and_the_rule() {
        let err = Project::parse("Bad").unwrap_err();
        assert_eq!(err.kind, IdKind::Project);
        assert_eq!(
            err.to_string(),
            format!("invalid project \"Bad\": must match {IDENTIFIER_RULE}")
        );
        let err = TrustDomain::parse("").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("invalid trust_domain \"\": must match {TRUST_DOMAIN_RULE}")
        );
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let err = AgentId::parse(&"Ä".repeat(10_000)).unwrap_err();
        assert_eq!(err.value.chars().count(), 81);
        assert!(err.value.ends_with('…'));
    }

    #[test]
    fn serde_is_a_plain_string_and_deserialize_validates() {
        let env = Env::parse("prod").unwrap();
        assert_eq!(serde_json::to_string(&env).unwrap(), "\"prod\"");
        assert_eq!(serde_json::from_str::<Env>("\"prod\"").unwrap(), env);
        let err = serde_json::from_str::<Env>("\"Prod\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid env \"Prod\""), "{err}");
        assert!(err.contains(IDENTIFIER_RULE), "{err}");
        assert!(serde_json::from_str::<Env>("7").is_err());
    }

    #[test]
    fn conversions_keep_the_text() {
        let id = AgentId::try_from("ci-runner-7".to_owned()).unwrap();
        assert_eq!(id, "ci-runner-7");
        assert_eq!(&*id, "ci-runner-7");
        assert_eq!(id.to_string(), "ci-runner-7");
        assert_eq!(format!("{id:?}"), "\"ci-runner-7\"");
        assert_eq!(String::from(id.clone()), "ci-runner-7");
        assert_eq!("ci-runner-7".parse::<AgentId>().unwrap(), id);
        assert!(AgentId::try_from("Ci".to_owned()).is_err());
    }

    #[test]
    fn ordering_is_the_text_ordering() {
        let mut ids: Vec<Org> = ["b", "a10", "a9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        ids.sort();
        assert_eq!(ids, ["a10", "a9", "b"]);
    }
}
