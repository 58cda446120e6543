//! The binary's subcommands: each parses its flags and calls the library. The only place besides `main.rs`
//! that uses `anyhow`.

pub mod pki;
