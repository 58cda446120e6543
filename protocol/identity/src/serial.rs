//! [`CertSerial`]: a certificate serial number in its one canonical text form.
//!
//! Canonical form: lowercase hex of the DER INTEGER content with leading zero bytes removed, so always an even
//! number of digits and never starting with `00`; zero is `00`. This is the form the aggregator's CA reports
//! at issuance, the revocation list holds and the store keeps, so two renderings of one serial always compare
//! equal.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most significant octets a serial may have (RFC 5280 section 4.1.2.2: at most 20 octets).
pub const MAX_SERIAL_BYTES: usize = 20;

/// Why a serial was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertSerialError {
    /// The input holds no hex digit.
    #[error("certificate serial is empty")]
    Empty,
    /// The input holds a character other than hex digits and `:` separators.
    #[error("certificate serial must be hex digits, optionally separated by ':' (found {found:?})")]
    NotHex {
        /// The first offending character.
        found: char,
    },
    /// More significant octets than [`MAX_SERIAL_BYTES`].
    #[error("certificate serial has {octets} significant octets; the limit is {MAX_SERIAL_BYTES}")]
    TooLong {
        /// Significant octets in the input.
        octets: usize,
    },
}

/// A certificate serial in canonical form (see the module documentation).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CertSerial(String);

impl CertSerial {
    /// The serial of a certificate from the content octets of its DER INTEGER (what x509 parsers call the raw
    /// serial). Leading zero octets (the DER sign octet) are dropped.
    pub fn from_der_bytes(raw: &[u8]) -> Result<Self, CertSerialError> {
        let significant = &raw[raw.iter().position(|b| *b != 0).unwrap_or(raw.len())..];
        if significant.len() > MAX_SERIAL_BYTES {
            return Err(CertSerialError::TooLong {
                octets: significant.len(),
            });
        }
        if significant.is_empty() {
            return Ok(CertSerial("00".to_owned()));
        }
        let mut text = String::with_capacity(significant.len() * 2);
        for b in significant {
            text.push(hex_digit(b >> 4));
            text.push(hex_digit(b & 0x0f));
        }
        Ok(CertSerial(text))
    }

    /// Parses a serial as an operator pastes it: surrounding whitespace is ignored, `:` separators and
    /// uppercase are accepted, leading zeros are dropped and an odd digit count is padded (`00:0A:BC` and
    /// `abc` are both `0abc`). A `0x` prefix is refused, as it always was.
    pub fn parse(text: &str) -> Result<Self, CertSerialError> {
        let mut digits = String::new();
        for c in text.trim().chars().filter(|c| *c != ':') {
            if !c.is_ascii_hexdigit() {
                return Err(CertSerialError::NotHex { found: c });
            }
            if digits.is_empty() && c == '0' {
                continue;
            }
            if digits.len() == MAX_SERIAL_BYTES * 2 {
                return Err(CertSerialError::TooLong {
                    octets: MAX_SERIAL_BYTES + 1,
                });
            }
            digits.push(c.to_ascii_lowercase());
        }
        if digits.is_empty() {
            return if text.trim().chars().any(|c| c == '0') {
                Ok(CertSerial("00".to_owned()))
            } else {
                Err(CertSerialError::Empty)
            };
        }
        if digits.len() % 2 == 1 {
            digits.insert(0, '0');
        }
        Ok(CertSerial(digits))
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(nibble & 0x0f)])
}

impl FromStr for CertSerial {
    type Err = CertSerialError;

    fn from_str(text: &str) -> Result<Self, CertSerialError> {
        CertSerial::parse(text)
    }
}

impl fmt::Display for CertSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CertSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertSerial({})", self.0)
    }
}

impl AsRef<str> for CertSerial {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for CertSerial {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CertSerial {
    /// Accepts every form [`CertSerial::parse`] accepts and keeps the canonical one.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CertSerial::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(text: &str) -> String {
        CertSerial::parse(text).unwrap().to_string()
    }

    #[test]
    fn der_bytes_become_lowercase_hex_without_leading_zero_octets() {
        let from = |raw: &[u8]| CertSerial::from_der_bytes(raw).unwrap().to_string();
        assert_eq!(from(&[0x00, 0x8f, 0x01]), "8f01");
        assert_eq!(from(&[0x0a, 0xbc]), "0abc");
        assert_eq!(from(&[0, 0]), "00");
        assert_eq!(from(&[]), "00");
        assert_eq!(from(&[0xff; 20]), "ff".repeat(20));
        let mut signed = vec![0u8];
        signed.extend([0xff; 20]);
        assert_eq!(from(&signed), "ff".repeat(20));
        assert_eq!(
            CertSerial::from_der_bytes(&[0x01; 21]),
            Err(CertSerialError::TooLong { octets: 21 })
        );
    }

    #[test]
    fn operator_forms_normalise_to_the_canonical_form() {
        assert_eq!(canon("00:8F:01"), "8f01");
        assert_eq!(canon("abc"), "0abc");
        assert_eq!(canon(" 0ABC "), "0abc");
        assert_eq!(canon("0A:1b:FF"), "0a1bff");
        assert_eq!(canon("0"), "00");
        assert_eq!(canon("00:00"), "00");
        assert_eq!(canon(&format!("0000{}", "f".repeat(40))), "f".repeat(40));
    }

    #[test]
    fn non_hex_empty_and_oversized_serials_are_refused() {
        assert_eq!(CertSerial::parse(""), Err(CertSerialError::Empty));
        assert_eq!(CertSerial::parse(" : "), Err(CertSerialError::Empty));
        assert_eq!(
            CertSerial::parse("0x12"),
            Err(CertSerialError::NotHex { found: 'x' })
        );
        assert!(CertSerial::parse("xyz").is_err());
        assert!(CertSerial::parse("ab cd").is_err());
        assert!(CertSerial::parse("é").is_err());
        assert!(CertSerial::parse(&"a".repeat(40)).is_ok());
        assert!(CertSerial::parse(&"a".repeat(41)).is_err());
    }

    #[test]
    fn serde_writes_the_canonical_form_and_reads_operator_forms() {
        let serial: CertSerial = serde_json::from_str("\"0A:BC\"").unwrap();
        assert_eq!(serde_json::to_string(&serial).unwrap(), "\"0abc\"");
        assert!(serde_json::from_str::<CertSerial>("\"0xab\"").is_err());
    }

    proptest! {
        #[test]
        fn bytes_and_their_text_renderings_agree(raw in proptest::collection::vec(any::<u8>(), 0..=20)) {
            let serial = CertSerial::from_der_bytes(&raw).unwrap();
            let colons = raw.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":");
            if raw.is_empty() {
                prop_assert_eq!(serial.as_str(), "00");
            } else {
                prop_assert_eq!(CertSerial::parse(&colons).unwrap(), serial.clone());
            }
            prop_assert_eq!(CertSerial::parse(serial.as_str()).unwrap(), serial);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC*") {
            let _ = CertSerial::parse(&text);
        }
    }
}
