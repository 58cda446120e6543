//! Host extraction as Go's `net/url.Parse(value).Hostname()` performs it, including the cases where Go
//! rejects the URL (then the inferred endpoint domain is empty).

/// `url.Parse(raw).Hostname()`, or `None` when Go's parser returns an error.
pub(crate) fn go_url_hostname(raw: &str) -> Option<String> {
    let (without_fragment, fragment) = match raw.split_once('#') {
        Some((head, frag)) => (head, Some(frag)),
        None => (raw, None),
    };
    let host = parse_host_part(without_fragment)?;
    if let Some(frag) = fragment {
        unescape(frag, Mode::Fragment)?;
    }
    Some(hostname_of(&host))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Host,
    Zone,
    UserPassword,
    Path,
    Fragment,
}

fn parse_host_part(raw: &str) -> Option<String> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    if raw.is_empty() || raw == "*" {
        return Some(String::new());
    }
    let (scheme, rest) = split_scheme(raw)?;
    let mut rest = rest;
    if rest.ends_with('?') && rest.matches('?').count() == 1 {
        rest = &rest[..rest.len() - 1];
    } else if let Some((head, _query)) = rest.split_once('?') {
        rest = head;
    }
    if !rest.starts_with('/') {
        if !scheme.is_empty() {
            // Opaque URL such as `mailto:x`: no host.
            return Some(String::new());
        }
        let first_segment = rest.split('/').next().unwrap_or("");
        if first_segment.contains(':') {
            return None;
        }
    }
    let mut host = String::new();
    if (!scheme.is_empty() || !rest.starts_with("///")) && rest.starts_with("//") {
        let after = &rest[2..];
        let (authority, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        host = parse_authority(authority)?;
        rest = path;
    }
    unescape(rest, Mode::Path)?;
    Some(host)
}

/// Go's `getScheme`: a leading letter followed by letters, digits, `+`, `-`, `.` and then `:`.
fn split_scheme(raw: &str) -> Option<(&str, &str)> {
    for (i, c) in raw.bytes().enumerate() {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' => {
                if i == 0 {
                    return Some(("", raw));
                }
            }
            b':' => {
                if i == 0 {
                    return None;
                }
                return Some((&raw[..i], &raw[i + 1..]));
            }
            _ => return Some(("", raw)),
        }
    }
    Some(("", raw))
}

fn parse_authority(authority: &str) -> Option<String> {
    match authority.rfind('@') {
        None => parse_host(authority),
        Some(i) => {
            let userinfo = &authority[..i];
            if !userinfo.bytes().all(valid_userinfo_byte) {
                return None;
            }
            unescape(userinfo, Mode::UserPassword)?;
            parse_host(&authority[i + 1..])
        }
    }
}

fn valid_userinfo_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b':'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b'%'
                | b'@'
        )
        || b >= 0x80
}

fn parse_host(host: &str) -> Option<String> {
    if host.starts_with('[') {
        let close = host.rfind(']')?;
        let colon_port = &host[close + 1..];
        if !valid_optional_port(colon_port) {
            return None;
        }
        if let Some(zone_start) = host[..close].find("%25") {
            let head = unescape(&host[..zone_start], Mode::Host)?;
            let zone = unescape(&host[zone_start..close], Mode::Zone)?;
            let tail = unescape(&host[close..], Mode::Host)?;
            return Some(format!("{head}{zone}{tail}"));
        }
    } else if let Some(i) = host.rfind(':')
        && !valid_optional_port(&host[i..])
    {
        return None;
    }
    unescape(host, Mode::Host)
}

fn valid_optional_port(port: &str) -> bool {
    if port.is_empty() {
        return true;
    }
    match port.strip_prefix(':') {
        Some(digits) => digits.bytes().all(|b| b.is_ascii_digit()),
        None => false,
    }
}

/// Go's `shouldEscape` for the modes that validate characters (host and zone).
fn host_byte_needs_escape(b: u8, mode: Mode) -> bool {
    if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
        return false;
    }
    if mode == Mode::Host || mode == Mode::Zone {
        return !matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'<'
                | b'>'
                | b'"'
        );
    }
    true
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Go's `unescape`: validates `%XX` escapes (and host characters) and decodes them.
fn unescape(s: &str, mode: Mode) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            if i + 2 >= bytes.len() {
                return None;
            }
            let hi = hex_value(bytes[i + 1])?;
            let lo = hex_value(bytes[i + 2])?;
            if mode == Mode::Host && hi < 8 && &s[i..i + 3] != "%25" {
                return None;
            }
            if mode == Mode::Zone {
                let decoded = hi * 16 + lo;
                if &s[i..i + 3] != "%25"
                    && decoded != b' '
                    && host_byte_needs_escape(decoded, Mode::Host)
                {
                    return None;
                }
            }
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        if (mode == Mode::Host || mode == Mode::Zone) && b < 0x80 && host_byte_needs_escape(b, mode)
        {
            return None;
        }
        out.push(b);
        i += 1;
    }
    // Go strings may hold any bytes; a decoded escape that breaks UTF-8 is kept lossily here.
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Go's `URL.Hostname`: drop a valid `:port`, then surrounding brackets.
fn hostname_of(host: &str) -> String {
    let mut h = host;
    if let Some(colon) = h.rfind(':')
        && valid_optional_port(&h[colon..])
    {
        h = &h[..colon];
    }
    if h.starts_with('[') && h.ends_with(']') && h.len() >= 2 {
        h = &h[1..h.len() - 1];
    }
    h.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_urls_yield_their_host_without_port() {
        assert_eq!(
            go_url_hostname("https://api.internal.local/export").as_deref(),
            Some("api.internal.local")
        );
        assert_eq!(
            go_url_hostname("http://user:pw@Example.COM:8443/a?b#c").as_deref(),
            Some("Example.COM")
        );
        assert_eq!(go_url_hostname("http://[::1]:80/").as_deref(), Some("::1"));
    }

    #[test]
    fn urls_without_authority_have_no_host() {
        assert_eq!(go_url_hostname("mailto:a@b.c").as_deref(), Some(""));
        assert_eq!(go_url_hostname("/just/a/path").as_deref(), Some(""));
        assert_eq!(go_url_hostname("api.example.com").as_deref(), Some(""));
    }

    #[test]
    fn urls_go_rejects_yield_none() {
        assert_eq!(go_url_hostname("://missing-scheme"), None);
        assert_eq!(go_url_hostname("http://host:port/"), None);
        assert_eq!(go_url_hostname("http://bad host/"), None);
        assert_eq!(go_url_hostname("http://x/%zz"), None);
        assert_eq!(go_url_hostname("a:b/c"), Some(String::new()));
        assert_eq!(go_url_hostname("1a:b"), None);
        assert_eq!(go_url_hostname("http://[::1/"), None);
        assert_eq!(go_url_hostname("http://x/\u{7f}"), None);
    }
}
