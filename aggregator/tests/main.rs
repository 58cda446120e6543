//! The aggregator's integration tests, one binary (each file a module: one link, and its tests run in parallel).
//! Run one file's tests with `cargo test -p gait-aggregator --test integration <file>::`.

mod admin_hardening;
mod admission;
mod analysis;
mod approvals;
mod audit_view;
mod blobs;
mod common;
mod config;
mod enroll;
mod evidence_cost;
mod evidence_index;
mod file_modes;
mod http;
mod http_limits;
mod ingest_file;
mod pki_cli;
mod registry_pins;
mod renew;
mod replay;
mod rollouts;
mod serve;
mod tls;
mod uploads;
mod version_skew;
