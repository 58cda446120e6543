//! Gait fleet aggregator library: the buyer-hosted control plane behind `gait-aggregator`.
//!
//! Layout map (dependencies point down this list, never back up):
//!
//! - [`app`]: the composition root; the only module that knows every other one. `start` builds the store,
//!   PKI, registry, ingest endpoint and HTTP API from a config and runs them until shutdown.
//! - Edges that translate and decide nothing and never hold the store: [`api`] (the operator HTTP API, whose
//!   `AppState` holds feature services that each take the caller's `Authorized<…>`) and [`ingest`] (the QUIC
//!   exchange with agents, writing through `fleet::intake::Intake`, including its mutual-TLS server side in `ingest::tls` and session tickets in
//!   `ingest::tickets`).
//! - Features: [`audit`] (the tamper-evident log every privileged operation appends to), [`registry`] (signs and distributes policy bundles, validates policies), [`fleet`] (what is
//!   known about agents: presence, and the operators' inventory, alerts and records reads), [`pki`] (the deployment CA: `ca` creates it, `issue` signs agent certificates, `identity` reads them,
//!   `revocation` holds the serials the handshake refuses), [`enroll`] (join tokens, enrollment by CSR, renewal).
//! - [`auth`]: who is calling (the admin token, or an operator whose bearer JWT [`auth::oidc`] verifies against
//!   [`auth::jwks`]) and what role bindings let them do; only it builds the `Authorized<…>` the API handlers need.
//! - [`replay`]: a candidate policy replayed over the org's captured decisions into a signed report (issue 13).
//! - [`config`]: the one configuration file (plus `GAIT_*` environment) every subcommand reads.
//! - Shared below the features: [`clock`] (every wall-clock read), [`secrets`] (the one atomic 0600 writer), [`metrics`] (Prometheus text).
//!
//! The binary side (`main.rs` + `cmd/`) parses the command line and alone uses a catch-all error type;
//! the library returns typed errors.
pub mod analysis;
pub mod api;
pub mod app;
pub mod approval;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod config;
pub mod enroll;
pub mod evidence;
pub mod fleet;
pub mod ingest;
pub mod metrics;
pub mod pki;
pub mod registry;
pub mod replay;
pub mod rollout;
pub mod secrets;
