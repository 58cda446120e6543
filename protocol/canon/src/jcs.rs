//! RFC 8785 JSON Canonicalization Scheme (JCS) and the DigestJCS rule built on it.
//!
//! Objects: members sorted by the UTF-16 code units of their keys. Strings: only `"`, `\` and control characters
//! are escaped (short forms for \b \f \n \r \t, `\u00xx` lowercase otherwise); everything else is raw UTF-8.
//! Numbers: every number is an IEEE-754 double printed as ECMAScript's `Number.prototype.toString` does.
//! No whitespace anywhere.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

use crate::digest::sha256_hex;

/// The RFC 8785 canonical bytes of `value`.
pub fn canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value);
    out
}

/// DigestJCS: lowercase hex SHA-256 of the canonical bytes of `value`.
pub fn digest_jcs(value: &Value) -> String {
    sha256_hex(&canonical_bytes(value))
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

fn write_object(out: &mut Vec<u8>, map: &Map<String, Value>) {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_by(|a, b| utf16_order(a.0, b.0));
    out.push(b'{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

/// Order strings by UTF-16 code units, as RFC 8785 §3.2.3 requires. This differs from byte order only when one
/// string has a supplementary-plane character where the other has one in U+E000..U+FFFF.
fn utf16_order(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

fn write_number(out: &mut Vec<u8>, n: &Number) {
    match n.as_f64() {
        Some(f) => write_double(out, f),
        // Only reachable if serde_json's arbitrary_precision is switched on elsewhere: keep the literal.
        None => out.extend_from_slice(n.to_string().as_bytes()),
    }
}

/// ECMAScript `String(f)` for a finite double; `-0` prints as `0`. JSON cannot carry NaN or infinities.
fn write_double(out: &mut Vec<u8>, f: f64) {
    if f == 0.0 {
        out.push(b'0');
    } else if f.is_finite() {
        let mut buf = ryu_js::Buffer::new();
        out.extend_from_slice(buf.format_finite(f).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0x0f) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests;
