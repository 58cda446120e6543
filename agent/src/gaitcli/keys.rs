//! Key sources as Gait's CLI takes them (contract §0.2): a verify key from a public key file/env var or derived
//! from a private key; a signing key in `dev` mode (ephemeral, with Gait's warning) or `prod` mode (explicit
//! private key). Error texts follow Gait's `proof/signing` wording.

use std::path::{Path, PathBuf};

use gait_canon::sign::{PublicKey, SigningKey};

use super::envelope::CliError;
use super::files;

/// Gait's warning for an ephemeral signing key.
pub const DEV_KEY_WARNING: &str =
    "dev mode: ephemeral keypair generated; signatures will not verify across machines";

/// Largest key file read; real files are 45 or 89 bytes.
const MAX_KEY_FILE_BYTES: usize = 4096;

/// Where a key may come from (each source optional; empty strings count as unset, as in Gait).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySources {
    /// Public key file.
    pub public_path: Option<PathBuf>,
    /// Env var holding a base64 public key.
    pub public_env: Option<String>,
    /// Private key file.
    pub private_path: Option<PathBuf>,
    /// Env var holding a base64 private key.
    pub private_env: Option<String>,
}

fn set_path(p: &Option<PathBuf>) -> Option<&Path> {
    p.as_deref().filter(|p| !p.as_os_str().is_empty())
}

fn set_env(e: &Option<String>) -> Option<&str> {
    e.as_deref().filter(|e| !e.is_empty())
}

impl KeySources {
    /// A public or private source is configured.
    pub fn has_any(&self) -> bool {
        self.has_public() || self.has_private()
    }

    fn has_public(&self) -> bool {
        set_path(&self.public_path).is_some() || set_env(&self.public_env).is_some()
    }

    fn has_private(&self) -> bool {
        set_path(&self.private_path).is_some() || set_env(&self.private_env).is_some()
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

fn load_public(sources: &KeySources) -> Result<PublicKey, String> {
    match (set_path(&sources.public_path), set_env(&sources.public_env)) {
        (Some(_), Some(_)) => Err("public key source: set either path or env".into()),
        (Some(path), None) => {
            let bytes = files::read_bounded(path, MAX_KEY_FILE_BYTES)
                .map_err(|e| format!("read public key: {e}"))?;
            PublicKey::from_gait_public_key(&String::from_utf8_lossy(&bytes))
                .map_err(|e| format!("decode public key: {e}"))
        }
        (None, Some(name)) => {
            let value = env_value(name).ok_or_else(|| format!("public key env not set: {name}"))?;
            PublicKey::from_gait_public_key(&value).map_err(|e| format!("decode public key: {e}"))
        }
        (None, None) => Err("public key not configured".into()),
    }
}

fn load_private(sources: &KeySources) -> Result<SigningKey, String> {
    match (
        set_path(&sources.private_path),
        set_env(&sources.private_env),
    ) {
        (Some(_), Some(_)) => Err("private key source: set either path or env".into()),
        (Some(path), None) => {
            let bytes = files::read_bounded(path, MAX_KEY_FILE_BYTES)
                .map_err(|e| format!("read private key: {e}"))?;
            SigningKey::from_gait_private_key(&String::from_utf8_lossy(&bytes))
                .map_err(|e| format!("decode private key: {e}"))
        }
        (None, Some(name)) => {
            let value =
                env_value(name).ok_or_else(|| format!("private key env not set: {name}"))?;
            SigningKey::from_gait_private_key(&value)
                .map_err(|e| format!("decode private key: {e}"))
        }
        (None, None) => Err("private key not configured".into()),
    }
}

/// Gait's `LoadVerifyKey`: the public source when set, else the public half of the private source.
pub fn load_verify_key(sources: &KeySources) -> Result<PublicKey, CliError> {
    let result = if set_path(&sources.public_path).is_some()
        && set_env(&sources.public_env).is_some()
    {
        Err("public key source: set either path or env".to_owned())
    } else if set_path(&sources.private_path).is_some() && set_env(&sources.private_env).is_some() {
        Err("private key source: set either path or env".to_owned())
    } else if sources.has_public() {
        load_public(sources)
    } else if sources.has_private() {
        load_private(sources).map(|k| k.public_key())
    } else {
        Err("public key not configured".to_owned())
    };
    result.map_err(|m| CliError::classified(m, super::envelope::EXIT_INVALID_INPUT))
}

/// A verify key only when a source is configured (Gait's `loadOptionalVerifyKey`).
pub fn load_optional_verify_key(sources: &KeySources) -> Result<Option<PublicKey>, CliError> {
    if sources.has_any() {
        load_verify_key(sources).map(Some)
    } else {
        Ok(None)
    }
}

/// The signing key of a command and the warnings its mode produces.
#[derive(Debug)]
pub struct LoadedSigningKey {
    /// The key.
    pub key: SigningKey,
    /// `dev` mode's warning, else empty.
    pub warnings: Vec<String>,
}

/// Gait's `LoadSigningKey` for `--key-mode` (`dev` default when empty): `dev` refuses explicit key sources and
/// generates an ephemeral key; `prod` requires a private key source.
pub fn load_signing_key(mode: &str, sources: &KeySources) -> Result<LoadedSigningKey, CliError> {
    let invalid = |m: String| CliError::classified(m, super::envelope::EXIT_INVALID_INPUT);
    let normalized = mode.trim().to_lowercase();
    match normalized.as_str() {
        "" | "dev" => {
            if sources.has_any() {
                return Err(invalid(
                    "dev mode does not accept explicit key sources".into(),
                ));
            }
            let key = SigningKey::try_generate()
                .map_err(|e| CliError::with_exit(format!("generate key: {e}"), 1))?;
            Ok(LoadedSigningKey {
                key,
                warnings: vec![DEV_KEY_WARNING.to_owned()],
            })
        }
        "prod" => {
            if !sources.has_private() {
                return Err(invalid("prod mode requires a private key source".into()));
            }
            let key = load_private(sources).map_err(invalid)?;
            if sources.has_public() {
                let public = load_public(sources).map_err(invalid)?;
                if public != key.public_key() {
                    return Err(invalid("public key does not match private key".into()));
                }
            }
            Ok(LoadedSigningKey {
                key,
                warnings: Vec::new(),
            })
        }
        _ => Err(invalid(format!("unsupported key mode: {mode:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_key_without_sources_is_not_configured() {
        let err = load_verify_key(&KeySources::default()).expect_err("no key");
        assert_eq!(err.message, "public key not configured");
        assert_eq!(err.exit, 6);
    }

    #[test]
    fn verify_key_is_derived_from_a_private_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_seed(&[7; 32]);
        let private = dir.path().join("k.key");
        std::fs::write(&private, format!("{}\n", key.to_gait_private_key())).unwrap();
        let sources = KeySources {
            private_path: Some(private),
            ..KeySources::default()
        };
        assert_eq!(load_verify_key(&sources).unwrap(), key.public_key());
    }

    #[test]
    fn dev_mode_warns_and_refuses_explicit_keys() {
        let loaded = load_signing_key("", &KeySources::default()).unwrap();
        assert_eq!(loaded.warnings, vec![DEV_KEY_WARNING.to_owned()]);
        let sources = KeySources {
            private_env: Some("X".into()),
            ..KeySources::default()
        };
        let err = load_signing_key("dev", &sources).expect_err("explicit key in dev");
        assert_eq!(err.message, "dev mode does not accept explicit key sources");
        let err = load_signing_key("prod", &KeySources::default()).expect_err("prod needs key");
        assert_eq!(err.message, "prod mode requires a private key source");
        let err = load_signing_key("test", &KeySources::default()).expect_err("bad mode");
        assert_eq!(err.message, "unsupported key mode: \"test\"");
    }
}
