//! Go string semantics the contract depends on: `strings.ToLower` (simple per-rune mapping) and Gait's
//! list normalization (`normalizeStringList`, `uniqueSorted`: trim, drop empties, de-duplicate, byte-sort).

/// Go's `strings.ToLower`: per-character simple lowercase mapping. Differs from Rust's `str::to_lowercase`
/// for U+0130 (Go gives `i`) and for a final capital sigma (Go gives `σ`, never `ς`).
pub(crate) fn go_lower(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\u{130}' {
            out.push('i');
        } else {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// `strings.ToLower(strings.TrimSpace(s))`. Rust's `trim` uses the same White_Space set as Go's `TrimSpace`.
pub(crate) fn lower_trim(s: &str) -> String {
    go_lower(s.trim())
}

/// Trim every entry, drop empty ones, de-duplicate and sort by bytes (Go `uniqueSorted`).
pub(crate) fn unique_sorted<I, S>(values: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = values
        .into_iter()
        .map(|v| v.as_ref().trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// [`unique_sorted`] after lowercasing every entry (Go `normalizeStringListLower`).
pub(crate) fn unique_sorted_lower<I, S>(values: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    unique_sorted(values.into_iter().map(|v| lower_trim(v.as_ref())))
}

/// Merge two already unique-sorted lists into a unique-sorted list (Go `mergeUniqueSorted`).
pub(crate) fn merge_unique_sorted(into: &mut Vec<String>, extra: &[String]) {
    if extra.is_empty() {
        return;
    }
    into.extend(extra.iter().cloned());
    into.sort_unstable();
    into.dedup();
}

/// Add one code to a unique-sorted list.
pub(crate) fn insert_sorted(into: &mut Vec<String>, code: &str) {
    if let Err(at) = into.binary_search_by(|probe| probe.as_str().cmp(code)) {
        into.insert(at, code.to_owned());
    }
}

/// `^[a-f0-9]{64}$`.
pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowercasing_follows_go_not_rust_special_casing() {
        assert_eq!(go_lower("TOOL.Write"), "tool.write");
        assert_eq!(go_lower("\u{130}D"), "id");
        assert_eq!(go_lower("\u{3a3}\u{3a3}"), "\u{3c3}\u{3c3}");
    }

    #[test]
    fn lists_are_trimmed_deduplicated_and_byte_sorted() {
        assert_eq!(
            unique_sorted([" b", "a", "", "b ", "B"]),
            vec!["B".to_owned(), "a".to_owned(), "b".to_owned()]
        );
        assert_eq!(
            unique_sorted_lower([" B", "a", "b"]),
            vec!["a".to_owned(), "b".to_owned()]
        );
    }

    #[test]
    fn sorted_insert_keeps_uniqueness() {
        let mut v = vec!["a".to_owned(), "c".to_owned()];
        insert_sorted(&mut v, "b");
        insert_sorted(&mut v, "c");
        assert_eq!(v, ["a", "b", "c"]);
    }

    #[test]
    fn hex64_requires_lowercase_hex() {
        assert!(is_hex64(&"a".repeat(64)));
        assert!(!is_hex64(&"A".repeat(64)));
        assert!(!is_hex64("bad"));
    }
}
