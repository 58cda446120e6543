//! Authentication of API callers: operators' OpenID Connect bearer tokens ([`oidc`], keys in [`jwks`]).

pub mod jwks;
pub mod oidc;
