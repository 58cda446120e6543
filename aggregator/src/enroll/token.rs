//! The join token's text form: `gjt1_<id>_<secret>`, a 16-hex-digit public id (how operators list and revoke
//! it) and a 64-hex-digit secret (256 random bits). The store keeps only the SHA-256 of the secret, so a
//! database dump enrolls nothing; the id lets the aggregator find the row without comparing secrets.

/// Prefix (and format version) of every join token.
pub const TOKEN_PREFIX: &str = "gjt1_";

/// A join token split into its id and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    id: String,
    secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log line.
        f.debug_struct("JoinToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a text is not a join token.
#[derive(Debug, thiserror::Error)]
pub enum TokenFormatError {
    /// The text does not have the join token shape.
    #[error(
        "not a join token: expected gjt1_<16 hex digits>_<64 hex digits>, as printed by `gait-aggregator \
         join-token create`"
    )]
    Shape,
    /// The random source failed while minting.
    #[error("cannot read random bytes for a join token: {0}")]
    Random(String),
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl JoinToken {
    /// A fresh token from the operating system's random source.
    pub fn mint() -> Result<Self, TokenFormatError> {
        let mut id = [0u8; 8];
        let mut secret = [0u8; 32];
        getrandom::fill(&mut id).map_err(|e| TokenFormatError::Random(e.to_string()))?;
        getrandom::fill(&mut secret).map_err(|e| TokenFormatError::Random(e.to_string()))?;
        Ok(Self {
            id: hex::encode(id),
            secret: hex::encode(secret),
        })
    }

    /// Parses `gjt1_<id>_<secret>` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, TokenFormatError> {
        let rest = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenFormatError::Shape)?;
        let (id, secret) = rest.split_once('_').ok_or(TokenFormatError::Shape)?;
        if !is_lower_hex(id, 16) || !is_lower_hex(secret, 64) {
            return Err(TokenFormatError::Shape);
        }
        Ok(Self {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// SHA-256 of the secret, lowercase hex: what the store keeps and compares.
    pub fn secret_sha256(&self) -> String {
        hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            self.secret.as_bytes(),
        ))
    }

    /// The whole token, to show once to the operator who minted it.
    pub fn expose(&self) -> String {
        format!("{TOKEN_PREFIX}{}_{}", self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_back_and_hash_their_secret_only() -> Result<(), TokenFormatError> {
        let token = JoinToken::mint()?;
        let text = token.expose();
        let parsed = JoinToken::parse(&format!(" {text}\n"))?;
        assert_eq!(parsed, token);
        assert_eq!(token.secret_sha256().len(), 64);
        assert!(!token.secret_sha256().contains(&token.secret));
        assert!(!format!("{token:?}").contains(&token.secret));
        assert_ne!(JoinToken::mint()?.id(), token.id());
        Ok(())
    }

    #[test]
    fn other_shapes_are_refused() {
        let secret = "a".repeat(64);
        for bad in [
            String::new(),
            format!("gjt1_0123456789abcdef{secret}"),
            format!("gjt2_0123456789abcdef_{secret}"),
            format!("gjt1_0123456789ABCDEF_{secret}"),
            format!("gjt1_0123456789abcde_{secret}"),
            format!("gjt1_0123456789abcdef_{secret}0"),
        ] {
            assert!(JoinToken::parse(&bad).is_err(), "accepted {bad:?}");
        }
    }
}
