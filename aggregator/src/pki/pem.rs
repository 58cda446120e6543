//! Reading the deployment's PEM files (certificates and private keys) with a size bound: the shared loader of
//! [`gait_runtime::pem`], which the agent and the HTTPS listener use as well.

pub use gait_runtime::pem::{MAX_PEM_BYTES, PemError, load_certs, load_key};
