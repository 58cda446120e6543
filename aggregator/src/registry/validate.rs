//! Policy validation for publishing and the registry: a bundle is only signed, and a version only stored, when
//! the policy is a valid Gait policy, checked by the same parser the agents enforce with. A refusal names the
//! key and its line: syntax errors, unknown and duplicate keys carry the parser's position; an invalid value
//! (`PolicyError::Invalid { field: "rules[2].effect" }`, which the engine reports without a position) is placed
//! by [`locate`], which walks the YAML parser's events to the node at that dotted path.

use std::borrow::Cow;

use gait_policy::policy::{Policy, PolicyError};
use serde_saphyr::granit_parser::{Event, Parser};

/// Check that `yaml` parses and normalizes as a Gait policy; the error says what is wrong and where.
pub fn check(yaml: &[u8]) -> Result<(), String> {
    parse(yaml).map(|_| ()).map_err(|e| e.to_string())
}

/// Why a policy was refused, with the key and the position to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{message}{}", position(*line, *column, field.as_deref()))]
pub struct PolicyRejection {
    /// The engine's message (Gait's wording).
    pub message: String,
    /// The dotted path of the offending key (`rules[2].effect`), or the unknown key's name, when known.
    pub field: Option<String>,
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub column: u64,
}

fn position(line: u64, column: u64, field: Option<&str>) -> String {
    match (line, field) {
        (0, _) => String::new(),
        (_, Some(f)) => format!(" (key {f}, line {line}, column {column})"),
        (_, None) => format!(" (line {line}, column {column})"),
    }
}

/// Parse and normalize `yaml` as a Gait policy; a refusal carries the key and line to fix.
pub fn parse(yaml: &[u8]) -> Result<Policy, PolicyRejection> {
    gait_policy::parse_policy_yaml(yaml).map_err(|e| rejection(yaml, e))
}

fn rejection(yaml: &[u8], err: PolicyError) -> PolicyRejection {
    match &err {
        PolicyError::Yaml { line, column, .. } => PolicyRejection {
            // The parser names the key in backticks (``unknown field `surprise` ``).
            field: backticked(&err.to_string()),
            message: err.to_string(),
            line: *line,
            column: *column,
        },
        PolicyError::Invalid { field, .. } => {
            let (line, column) = std::str::from_utf8(yaml)
                .ok()
                .and_then(|text| locate(text, field))
                .unwrap_or((0, 0));
            PolicyRejection {
                message: err.to_string(),
                field: Some(field.clone()),
                line,
                column,
            }
        }
        PolicyError::Legacy(_) | PolicyError::TooLarge { .. } => PolicyRejection {
            field: backticked(&err.to_string()),
            message: err.to_string(),
            line: 0,
            column: 0,
        },
    }
}

/// The first `` `name` `` of a message.
fn backticked(message: &str) -> Option<String> {
    let (_, rest) = message.split_once('`')?;
    let (name, _) = rest.split_once('`')?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// One step of a dotted path: a mapping key or a sequence index.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while !rest.is_empty() {
            let (n, after) = rest.split_once(']')?;
            out.push(Step::Index(n.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Some(out)
}

/// A YAML node with the position of where it starts (for a mapping value: where its key starts).
#[derive(Debug)]
enum Node<'a> {
    Scalar,
    Seq(Vec<((u64, u64), Node<'a>)>),
    Map(Vec<(Cow<'a, str>, (u64, u64), Node<'a>)>),
}

/// Where the node at `path` (`rules[2].endpoint.action`) is written in `yaml`: the 1-based line and column
/// of its key (of the item, for an index). When the last keys are absent (a required key left out), the
/// position of the deepest node present. Anchors and aliases are not followed: the key's first occurrence
/// is reported. `None` when the text does not parse.
pub fn locate(yaml: &str, path: &str) -> Option<(u64, u64)> {
    let steps = steps(path)?;
    let mut events = Parser::new_from_str(yaml)
        .map(|e| e.ok().map(|(ev, span)| (ev, span.start)))
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .map(|(ev, m)| (ev, (m.line() as u64, m.col() as u64 + 1)));
    // Skip to the document's root node.
    let root = loop {
        match events.next()? {
            (Event::StreamStart | Event::DocumentStart(..), _) => continue,
            (Event::StreamEnd, _) => return None,
            first => break build(first, &mut events, 0)?,
        }
    };
    let mut node = &root;
    let mut at = None;
    for step in steps {
        let next = match (step, node) {
            (Step::Key(k), Node::Map(entries)) => entries
                .iter()
                .find(|(key, _, _)| key == k)
                .map(|(_, pos, n)| (*pos, n)),
            (Step::Index(i), Node::Seq(items)) => items.get(i).map(|(pos, n)| (*pos, n)),
            _ => None,
        };
        match next {
            Some((pos, n)) => {
                at = Some(pos);
                node = n;
            }
            None => break,
        }
    }
    at
}

type Located<'a> = (Event<'a>, (u64, u64));

/// Deepest YAML nesting [`locate`] follows (review L1): below the YAML parser's own nesting limit (255 by
/// default), so the recursion stays bounded by this constant, not by whatever the parser allows should its
/// budget change. A Gait policy nests about six levels; deeper text is "not located", never a crash.
pub const MAX_LOCATE_DEPTH: usize = 128;

fn build<'a>(
    (event, pos): Located<'a>,
    rest: &mut impl Iterator<Item = Located<'a>>,
    depth: usize,
) -> Option<Node<'a>> {
    let _ = pos;
    if depth > MAX_LOCATE_DEPTH {
        return None;
    }
    match event {
        Event::Scalar(..) | Event::Alias(..) | Event::UnresolvedAlias(..) => Some(Node::Scalar),
        Event::Anchor(..) => build(rest.next()?, rest, depth + 1),
        Event::SequenceStart(..) => {
            let mut items = Vec::new();
            loop {
                let next = rest.next()?;
                if matches!(next.0, Event::SequenceEnd) {
                    return Some(Node::Seq(items));
                }
                let item_pos = next.1;
                items.push((item_pos, build(next, rest, depth + 1)?));
            }
        }
        Event::MappingStart(..) => {
            let mut entries = Vec::new();
            loop {
                let (key, key_pos) = rest.next()?;
                let key = match key {
                    Event::MappingEnd => return Some(Node::Map(entries)),
                    Event::Scalar(text, ..) => text,
                    other => {
                        // A complex key: skip it, its value is unreachable by a dotted path.
                        build((other, key_pos), rest, depth + 1)?;
                        Cow::Borrowed("")
                    }
                };
                let value = build(rest.next()?, rest, depth + 1)?;
                entries.push((key, key_pos, value));
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{check, locate, parse};

    #[test]
    fn accepts_a_gait_policy_and_names_the_problem_in_a_bad_one() {
        assert!(
            check(b"schema_id: gait.gate.policy\nschema_version: 1.0.0\ndefault_verdict: allow\n")
                .is_ok()
        );
        let err = check(
            b"default_verdict: allow\nrules:\n  - name: r\n    effect: allow\n    surprise: 1\n",
        )
        .expect_err("unknown key");
        assert!(err.contains("surprise"), "{err}");
        assert!(
            check(b"name: legacy\n").is_err(),
            "legacy top-level keys are refused"
        );
    }

    const RULES: &str = "default_verdict: block\nrules:\n  - name: a\n    effect: allow\n  - name: b\n    effect: maybe\n    endpoint:\n      action: allow\n";

    #[test]
    fn locate_finds_keys_items_and_the_deepest_present_node() {
        assert_eq!(locate(RULES, "default_verdict"), Some((1, 1)));
        assert_eq!(locate(RULES, "rules[1]"), Some((5, 5)));
        assert_eq!(locate(RULES, "rules[1].effect"), Some((6, 5)));
        assert_eq!(locate(RULES, "rules[1].endpoint.action"), Some((8, 7)));
        // A missing key: the rule that lacks it.
        assert_eq!(locate(RULES, "rules[0].match.tool_names"), Some((3, 5)));
        assert_eq!(locate("a: [\n", "a"), None, "unparsable text");
        assert_eq!(locate(RULES, "nothing"), None);
    }

    #[test]
    fn deep_nesting_is_not_located_instead_of_overflowing_the_stack() {
        // The YAML parser refuses very deep text itself; text it accepts past the guard is not walked either.
        let deep = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(locate(&deep, "a"), None);
        let past = format!("a: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert_eq!(locate(&past, "a"), None);
        let fits = format!("a: {}{}\n", "[".repeat(100), "]".repeat(100));
        assert_eq!(locate(&fits, "a"), Some((1, 1)));
    }

    #[test]
    fn an_invalid_rule_is_refused_with_its_key_and_line() {
        let err = parse(RULES.as_bytes()).expect_err("invalid effect");
        assert_eq!(err.field.as_deref(), Some("rules[1].effect"));
        assert_eq!((err.line, err.column), (6, 5));
        assert!(err.to_string().contains("line 6"), "{err}");
        let unknown = parse(
            b"default_verdict: block\nrules:\n  - name: r\n    effect: allow\n    surprise: 1\n",
        )
        .expect_err("unknown key");
        assert_eq!(unknown.field.as_deref(), Some("surprise"));
        assert_eq!(unknown.line, 5);
        let syntax = parse(b"rules: [\n  - name: r\n").expect_err("syntax");
        assert!(syntax.line > 0, "{syntax:?}");
    }
}
