//! Configuration plumbing both binaries share: a validation [`Problem`] named by its dotted key, every problem
//! of one configuration as one error ([`Invalid`]), and the `GAIT_*` environment overrides as a typed table
//! ([`EnvOverride`]) applied by [`apply_env`].
//!
//! Each binary keeps its own configuration struct, keys and defaults; only the way an environment variable
//! overrides one key, and the way bad values (from the environment or validation) are reported, live here once:
//! each binary's `ConfigError::Invalid` wraps [`Invalid`], so `apply_env(..)?` and `Invalid::check(..)?` are the
//! whole path from a problem list to the binary's error.

use std::fmt;
use std::str::FromStr;

/// One validation problem at a dotted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key, e.g. `quic.reconnect_rate` or `trust.registry_public_keys[1]`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one configuration, in the order found; shown as `invalid config: ` followed by each
/// problem (`key: message`), joined with `; `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {}", join(.0))]
pub struct Invalid(pub Vec<Problem>);

impl Invalid {
    /// `Ok` when `problems` is empty, else all of them as the error.
    pub fn check(problems: Vec<Problem>) -> Result<(), Invalid> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Invalid(problems))
        }
    }

    /// The problems, in the order found.
    pub fn problems(&self) -> &[Problem] {
        &self.0
    }
}

impl From<Problem> for Invalid {
    fn from(problem: Problem) -> Self {
        Invalid(vec![problem])
    }
}

fn join(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// An environment variable that overrides one configuration key of `C`.
pub struct EnvOverride<C> {
    /// The variable, e.g. `GAIT_QUIC_LISTEN`.
    pub var: &'static str,
    /// The dotted key it overrides, e.g. `quic.listen`.
    pub key: &'static str,
    /// Stores the value into the key; `Err` says what the value should have been ("an ip:port address").
    pub set: fn(&mut C, &str) -> Result<(), &'static str>,
}

impl<C> fmt::Debug for EnvOverride<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvOverride")
            .field("var", &self.var)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Applies every override in `table` whose variable `env` returns, in table order. A value that does not
/// parse leaves its key as it was and comes back as a [`Problem`] naming the key, the variable and the value;
/// all of them together are the error.
pub fn apply_env<C>(
    config: &mut C,
    table: &[EnvOverride<C>],
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    for entry in table {
        let Some(value) = env(entry.var) else {
            continue;
        };
        if let Err(what) = (entry.set)(config, &value) {
            problems.push(Problem::new(
                entry.key,
                format!("{}={value:?} is not {what}", entry.var),
            ));
        }
    }
    Invalid::check(problems)
}

/// Parses `value` into `slot` for an [`EnvOverride::set`]; on failure `slot` is unchanged and the error is
/// `what` (what the value should have been).
pub fn parse_into<T: FromStr>(
    slot: &mut T,
    value: &str,
    what: &'static str,
) -> Result<(), &'static str> {
    *slot = value.parse().map_err(|_| what)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq)]
    struct Conf {
        port: u16,
        name: String,
    }

    const TABLE: [EnvOverride<Conf>; 2] = [
        EnvOverride {
            var: "T_PORT",
            key: "server.port",
            set: |c, v| parse_into(&mut c.port, v, "a port number"),
        },
        EnvOverride {
            var: "T_NAME",
            key: "name",
            set: |c, v| {
                c.name = v.to_owned();
                Ok(())
            },
        },
    ];

    #[test]
    fn set_variables_override_their_key_and_bad_values_are_named() {
        let mut conf = Conf::default();
        let env = |var: &str| match var {
            "T_PORT" => Some("80".to_owned()),
            "T_NAME" => Some("edge".to_owned()),
            _ => None,
        };
        assert_eq!(apply_env(&mut conf, &TABLE, env), Ok(()));
        assert_eq!(
            conf,
            Conf {
                port: 80,
                name: "edge".into()
            }
        );

        let error = apply_env(&mut conf, &TABLE, |var| {
            (var == "T_PORT").then(|| "eighty".to_owned())
        })
        .unwrap_err();
        assert_eq!(
            error.problems(),
            [Problem::new(
                "server.port",
                "T_PORT=\"eighty\" is not a port number"
            )]
        );
        assert_eq!(conf.port, 80, "a bad value leaves the key unchanged");
        assert_eq!(
            error.to_string(),
            "invalid config: server.port: T_PORT=\"eighty\" is not a port number"
        );
    }
}
