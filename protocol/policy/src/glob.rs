//! Go's `path.Match` shell-pattern matcher (`*`, `?`, `[...]`, `\` escapes; `*` never crosses `/`), used by
//! endpoint path and domain patterns. A malformed pattern matches nothing, as Gait treats Go's `ErrBadPattern`.

/// The pattern is malformed (Go's `path.ErrBadPattern`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadPattern;

/// `path.Match(pattern, name)` with errors folded into "no match".
pub(crate) fn go_path_match(pattern: &str, name: &str) -> bool {
    matches!(path_match(pattern, name), Ok(true))
}

/// `path.Match(pattern, name)`.
pub(crate) fn path_match(mut pattern: &str, mut name: &str) -> Result<bool, BadPattern> {
    'pattern: while !pattern.is_empty() {
        let (star, chunk, rest) = scan_chunk(pattern);
        pattern = rest;
        if star && chunk.is_empty() {
            return Ok(!name.contains('/'));
        }
        let (t, ok, err) = match_chunk(chunk, name);
        if ok && (t.is_empty() || !pattern.is_empty()) {
            name = t;
            continue;
        }
        if let Some(err) = err {
            return Err(err);
        }
        if star {
            let bytes = name.as_bytes();
            let mut i = 0;
            while i < bytes.len() && bytes[i] != b'/' {
                // Go tries every byte offset; only character boundaries can start a match of a chunk that
                // begins with a literal, `?` or a class over valid UTF-8.
                if name.is_char_boundary(i + 1) {
                    let (t, ok, err) = match_chunk(chunk, &name[i + 1..]);
                    if ok {
                        if !pattern.is_empty() || t.is_empty() {
                            name = t;
                            continue 'pattern;
                        }
                    } else if let Some(err) = err {
                        return Err(err);
                    }
                }
                i += 1;
            }
        }
        while !pattern.is_empty() {
            let (_, chunk, rest) = scan_chunk(pattern);
            pattern = rest;
            if let (_, _, Some(err)) = match_chunk(chunk, "") {
                return Err(err);
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

fn scan_chunk(mut pattern: &str) -> (bool, &str, &str) {
    let mut star = false;
    while let Some(rest) = pattern.strip_prefix('*') {
        pattern = rest;
        star = true;
    }
    let bytes = pattern.as_bytes();
    let mut in_range = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if i + 1 < bytes.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    // `i` stops on an ASCII `*` or at the end, so it is always a character boundary.
    (star, &pattern[..i], &pattern[i..])
}

fn first_char(s: &str) -> Option<(char, usize)> {
    s.chars().next().map(|c| (c, c.len_utf8()))
}

/// Go's `matchChunk`: (rest of `s` after the match, matched, malformed-pattern error).
fn match_chunk<'a>(mut chunk: &str, mut s: &'a str) -> (&'a str, bool, Option<BadPattern>) {
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        let head = chunk.as_bytes()[0];
        match head {
            b'[' => {
                let mut r: Option<char> = None;
                if !failed && let Some((c, n)) = first_char(s) {
                    r = Some(c);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if let Some(rest) = chunk.strip_prefix('^') {
                    negated = true;
                    chunk = rest;
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if ranges > 0
                        && let Some(rest) = chunk.strip_prefix(']')
                    {
                        chunk = rest;
                        break;
                    }
                    let (lo, rest) = match get_esc(chunk) {
                        Ok(v) => v,
                        Err(err) => return ("", false, Some(err)),
                    };
                    chunk = rest;
                    let mut hi = lo;
                    if let Some(rest) = chunk.strip_prefix('-') {
                        match get_esc(rest) {
                            Ok((h, rest)) => {
                                hi = h;
                                chunk = rest;
                            }
                            Err(err) => return ("", false, Some(err)),
                        }
                    }
                    if let Some(c) = r
                        && lo <= c
                        && c <= hi
                    {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s.starts_with('/') {
                        failed = true;
                    }
                    if let Some((_, n)) = first_char(s) {
                        s = &s[n..];
                    }
                }
                chunk = &chunk[1..];
            }
            _ => {
                if head == b'\\' {
                    chunk = &chunk[1..];
                    if chunk.is_empty() {
                        return ("", false, Some(BadPattern));
                    }
                }
                let (c, n) = first_char(chunk).unwrap_or(('\0', 1));
                if !failed {
                    if s.starts_with(c) {
                        s = &s[c.len_utf8()..];
                    } else {
                        failed = true;
                    }
                }
                chunk = &chunk[n..];
            }
        }
    }
    if failed {
        ("", false, None)
    } else {
        (s, true, None)
    }
}

fn get_esc(chunk: &str) -> Result<(char, &str), BadPattern> {
    let mut chunk = chunk;
    match chunk.as_bytes().first() {
        None | Some(b'-') | Some(b']') => return Err(BadPattern),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(BadPattern);
            }
        }
        Some(_) => {}
    }
    let (c, n) = first_char(chunk).ok_or(BadPattern)?;
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(BadPattern);
    }
    Ok((c, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_does_not_cross_slash() {
        assert!(go_path_match("/etc/*", "/etc/hosts"));
        assert!(!go_path_match("/etc/*", "/etc/ssh/sshd_config"));
        assert!(go_path_match("/etc/*/sshd_config", "/etc/ssh/sshd_config"));
        assert!(go_path_match("*.example", "a.b.example"));
    }

    #[test]
    fn question_mark_and_classes_match_single_characters() {
        assert!(go_path_match("/tmp/?.txt", "/tmp/a.txt"));
        assert!(!go_path_match("/tmp/?.txt", "/tmp/ab.txt"));
        assert!(go_path_match("/tmp/[a-c].txt", "/tmp/b.txt"));
        assert!(!go_path_match("/tmp/[^a-c].txt", "/tmp/b.txt"));
        assert!(go_path_match("/tmp/\\*", "/tmp/*"));
        assert!(go_path_match("/tmp/[é]", "/tmp/é"));
    }

    #[test]
    fn malformed_patterns_are_errors_even_after_a_mismatch() {
        assert_eq!(path_match("[", "a"), Err(BadPattern));
        assert_eq!(path_match("a[", "b"), Err(BadPattern));
        assert_eq!(path_match("x*[", "y"), Err(BadPattern));
        assert_eq!(path_match("\\", "a"), Err(BadPattern));
        assert!(!go_path_match("[]", "a"));
    }

    #[test]
    fn whole_name_must_match() {
        assert!(!go_path_match("/tmp", "/tmp/x"));
        assert!(go_path_match("*", "anything"));
        assert!(!go_path_match("*", "a/b"));
        assert!(go_path_match("a*b*c", "axxbyyc"));
        assert!(!go_path_match("a*b", "axxbyyc"));
    }
}
