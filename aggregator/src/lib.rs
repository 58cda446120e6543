//! Gait fleet aggregator library: the buyer-hosted control plane behind `gait-aggregator`.
//!
//! - [`serve`] wires everything together; [`ingest`] speaks the QUIC exchange protocol with agents;
//!   [`http`] is the operator API; [`registry`] signs and distributes policy bundles;
//!   [`pki`] and [`tls`] own the deployment CA and mutual TLS; [`metrics`] renders Prometheus text.
pub mod cli;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pki;
pub mod policy_check;
pub mod presence;
pub mod registry;
pub mod serve;
pub mod tickets;
pub mod tls;
