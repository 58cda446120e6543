//! Gait edge agent library.
pub mod db;
pub mod outbox;
pub mod bundle_cache;
pub mod tls;
pub mod backoff;
pub mod config;
pub mod identity;
pub mod daemon;
pub mod local_api;
pub mod gaitcli;
