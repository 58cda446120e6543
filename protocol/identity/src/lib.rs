//! The tenancy grammar of the Gait fleet, in one place: who an agent is and which tenant it belongs to.
//!
//! Every party that names a tenant or an agent (HTTP paths, configuration, signed bundles, the store, agent
//! certificates) uses these types, so a value that one of them accepts is accepted by all of them:
//!
//! - [`Org`], [`Project`], [`Env`], [`AgentId`]: identifiers under one rule, [`IDENTIFIER_RULE`].
//! - [`TrustDomain`]: the SPIFFE trust domain of a deployment, under [`TRUST_DOMAIN_RULE`].
//! - [`Tenant`] (`org/project/env`) and [`AgentKey`] (a tenant and an agent id).
//! - [`SpiffeId`]: the agent URI SAN
//!   `spiffe://<trust-domain>/org/<org>/project/<project>/env/<env>/agent/<id>`, parsed strictly.
//! - [`CertSerial`]: a certificate serial in its one canonical text form.
//!
//! Construction always validates (`FromStr`, `TryFrom<String>`, `Deserialize`), so holding a value is proof
//! that it satisfies its rule. The crate does no I/O and reads no certificates: callers hand it the URI string
//! or the serial bytes they extracted.

mod error;
mod name;
mod serial;
mod spiffe;
mod tenant;

pub use error::{IdError, IdKind};
pub use name::{
    AgentId, Env, IDENTIFIER_RULE, MAX_IDENTIFIER_LEN, MAX_TRUST_DOMAIN_LEN, Org, Project,
    TRUST_DOMAIN_RULE, TrustDomain,
};
pub use serial::{CertSerial, CertSerialError, MAX_SERIAL_BYTES};
pub use spiffe::{MAX_SPIFFE_ID_LEN, SPIFFE_SCHEME, SpiffeId, SpiffeIdError};
pub use tenant::{AgentKey, Tenant, TenantParseError};
