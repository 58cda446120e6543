//! Decoding JSON into Rust structs the way Go's `encoding/json` fills Gait's structs (contract §0.1): object keys
//! match struct fields case-insensitively (Go's folding: ASCII case plus U+212A KELVIN SIGN ≡ `k` and U+017F
//! LONG S ≡ `s`, an exact match preferred), unknown keys are ignored, and a key repeated in one object keeps
//! Go's outcome: the later value wins for scalars, slices and `any`, nested structs and maps merge, and `null`
//! is a no-op for scalars and structs but clears options (Go pointers), maps and slices.
//!
//! The syntax stays strict (one value, valid UTF-8, finite numbers, at most [`crate::MAX_DEPTH`] levels); only
//! the mapping of members onto fields is lenient. Any `serde::Deserialize` type works: serde's derive tells the
//! deserializer the field names, so every artifact struct gets the same rules from this one module. Digests are
//! never computed from the decoded keys: callers re-serialize the typed value with its canonical names.

use std::cell::RefCell;
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::{Map, Number, Value};

use crate::json::{CanonError, MAX_DEPTH};

/// A parsed JSON value with object members in document order and repeated keys kept, as Go's decoder sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// A number (integers that fit stay integers).
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Node>),
    /// An object; a key may appear more than once.
    Object(Vec<(String, Node)>),
}

impl Node {
    /// The JSON type name, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "bool",
            Node::Number(_) => "number",
            Node::String(_) => "string",
            Node::Array(_) => "array",
            Node::Object(_) => "object",
        }
    }

    /// The members of an object as a map (a repeated key keeps its last value); `None` for other JSON types.
    pub fn to_map(&self) -> Option<Map<String, Value>> {
        let Node::Object(members) = self else {
            return None;
        };
        let mut map = Map::new();
        for (key, value) in members {
            map.insert(key.clone(), value.to_value());
        }
        Some(map)
    }

    /// The value Go's `any` (or `map[string]json.RawMessage` at the top) would hold: a repeated key keeps its
    /// last value.
    pub fn to_value(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Number(n) => Value::Number(n.clone()),
            Node::String(s) => Value::String(s.clone()),
            Node::Array(items) => Value::Array(items.iter().map(Node::to_value).collect()),
            Node::Object(_) => Value::Object(self.to_map().unwrap_or_default()),
        }
    }
}

/// Parse `bytes` as one JSON value, keeping repeated keys (see [`Node`]); syntax is as strict as
/// [`crate::parse_json`] except that repeated keys are allowed.
pub fn parse_node(bytes: &[u8]) -> Result<Node, CanonError> {
    let too_deep = RefCell::new(false);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = NodeSeed {
        depth: 0,
        too_deep: &too_deep,
    }
    .deserialize(&mut de)
    .and_then(|node| de.end().map(|()| node));
    parsed.map_err(|err| {
        let (line, column) = (err.line(), err.column());
        if too_deep.into_inner() {
            CanonError::TooDeep {
                max: MAX_DEPTH,
                line,
                column,
            }
        } else {
            CanonError::Syntax {
                message: err.to_string(),
                line,
                column,
            }
        }
    })
}

/// Why a JSON document could not fill a Go-style struct.
#[derive(Debug, thiserror::Error)]
pub enum GoJsonError {
    /// The bytes are not JSON (syntax, nesting, invalid UTF-8, trailing bytes).
    #[error(transparent)]
    Json(#[from] CanonError),
    /// A known field holds a JSON type the field cannot take.
    #[error("{0}")]
    Shape(DecodeError),
}

/// A field's JSON did not fit its Rust type; `field` is the dotted path (`(root)` for the document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Dotted path of the field, e.g. `files[0].sha256`.
    pub field: String,
    /// What did not fit.
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {}: {}", self.field, self.message)
    }
}

impl std::error::Error for DecodeError {}

impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError {
            field: String::new(),
            message: msg.to_string(),
        }
    }
}

/// Decode `bytes` into `T` with Go's `json.Unmarshal` leniency (module docs).
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, GoJsonError> {
    let node = parse_node(bytes)?;
    from_node(&node).map_err(GoJsonError::Shape)
}

/// Decode an already parsed [`Node`] into `T` with Go's leniency.
pub fn from_node<T: DeserializeOwned>(node: &Node) -> Result<T, DecodeError> {
    T::deserialize(Field {
        nodes: vec![node],
        path: String::new(),
    })
}

/// Fold a key the way Go's `encoding/json` compares it with an ASCII field name: ASCII case-insensitively, with
/// U+212A KELVIN SIGN equal to `k` and U+017F LATIN SMALL LETTER LONG S equal to `s`. `None` for keys holding
/// any other non-ASCII character: they cannot name a field.
pub fn fold_key(key: &str) -> Option<String> {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            'A'..='Z' => out.push(c.to_ascii_lowercase()),
            '\u{212a}' => out.push('k'),
            '\u{17f}' => out.push('s'),
            c if c.is_ascii() => out.push(c),
            _ => return None,
        }
    }
    Some(out)
}

/// Which of `fields` a JSON key names, as Go picks it: an exact match first, then a folded one.
pub fn match_field(key: &str, fields: &[&'static str]) -> Option<usize> {
    if let Some(i) = fields.iter().position(|f| *f == key) {
        return Some(i);
    }
    let folded = fold_key(key)?;
    fields
        .iter()
        .position(|f| fold_key(f).is_some_and(|g| g == folded))
}

struct NodeSeed<'a> {
    depth: usize,
    too_deep: &'a RefCell<bool>,
}

impl NodeSeed<'_> {
    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            *self.too_deep.borrow_mut() = true;
            return Err(E::custom(format_args!(
                "json nests deeper than {MAX_DEPTH} levels"
            )));
        }
        Ok(depth)
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = Node;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Number::from_f64(v)
            .map(Node::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let depth = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(NodeSeed {
            depth,
            too_deep: self.too_deep,
        })? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let depth = self.enter()?;
        let mut members = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(NodeSeed {
                depth,
                too_deep: self.too_deep,
            })?;
            members.push((key, value));
        }
        Ok(Node::Object(members))
    }
}

/// Every occurrence of one struct field in one object (in document order), decoded together so that repeated
/// keys resolve as Go resolves them; `path` names the field for errors.
struct Field<'a> {
    nodes: Vec<&'a Node>,
    path: String,
}

impl<'a> Field<'a> {
    fn error(&self, message: impl fmt::Display) -> DecodeError {
        DecodeError {
            field: if self.path.is_empty() {
                "(root)".to_owned()
            } else {
                self.path.clone()
            },
            message: message.to_string(),
        }
    }

    /// With a path on errors raised below this field that have none yet.
    fn locate(&self, mut err: DecodeError) -> DecodeError {
        if err.field.is_empty() {
            err.field = self.error("").field;
        }
        err
    }

    /// The value a scalar field ends with: the last non-null occurrence (`null` leaves a scalar as it was).
    fn last_scalar(&self) -> Option<&'a Node> {
        self.nodes
            .iter()
            .rev()
            .find(|n| !matches!(n, Node::Null))
            .copied()
    }

    /// Occurrences after the last `null` (a `null` clears a pointer, map or slice).
    fn after_last_null(&self) -> &[&'a Node] {
        let start = self
            .nodes
            .iter()
            .rposition(|n| matches!(n, Node::Null))
            .map_or(0, |i| i + 1);
        &self.nodes[start..]
    }

    fn child(&self, suffix: &str, nodes: Vec<&'a Node>) -> Field<'a> {
        let path = if suffix.starts_with('[') || self.path.is_empty() {
            format!("{}{suffix}", self.path)
        } else {
            format!("{}.{suffix}", self.path)
        };
        Field { nodes, path }
    }

    fn type_error(&self, found: &Node, expected: &str) -> DecodeError {
        self.error(format_args!(
            "cannot unmarshal {} into a {expected} field",
            found.kind()
        ))
    }

    /// All members of the (merged) objects, for a struct or a map.
    fn members(
        &self,
        nodes: &[&'a Node],
        expected: &str,
    ) -> Result<Vec<&'a (String, Node)>, DecodeError> {
        let mut members = Vec::new();
        for node in nodes {
            match node {
                Node::Null => {}
                Node::Object(m) => members.extend(m.iter()),
                other => return Err(self.type_error(other, expected)),
            }
        }
        Ok(members)
    }
}

impl<'de, 'a> Deserializer<'de> for Field<'a> {
    type Error = DecodeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        // Go's `any`: the last occurrence replaces earlier ones, `null` included.
        let node = self.nodes.last().copied().unwrap_or(&Node::Null);
        let result = match node {
            Node::Null => visitor.visit_unit(),
            Node::Bool(b) => visitor.visit_bool(*b),
            Node::Number(n) => visit_number(n, visitor),
            Node::String(s) => visitor.visit_str(s),
            Node::Array(items) => visitor.visit_seq(Items {
                items: items.iter(),
                index: 0,
                parent: &self,
            }),
            Node::Object(members) => visitor.visit_map(Members {
                members: members.iter().collect::<Vec<_>>().into_iter(),
                pending: None,
                parent: &self,
            }),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.last_scalar() {
            None => visitor.visit_bool(false),
            Some(Node::Bool(b)) => visitor.visit_bool(*b),
            Some(other) => Err(self.type_error(other, "bool")),
        }
        .map_err(|e| self.locate(e))
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_number(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_number(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_number(visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_number(visitor)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_number(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_number(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_number(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_number(visitor)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_number(visitor)
    }
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_number(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.last_scalar() {
            None => visitor.visit_str(""),
            Some(Node::String(s)) => visitor.visit_str(s),
            Some(other) => Err(self.type_error(other, "string")),
        }
        .map_err(|e| self.locate(e))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        // A Go pointer: `null` clears it; later occurrences decode into the same pointee.
        let rest = self.after_last_null().to_vec();
        if rest.is_empty() {
            return visitor.visit_none();
        }
        let path = self.path.clone();
        visitor.visit_some(Field { nodes: rest, path })
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        // A Go slice: the last occurrence replaces earlier ones; `null` leaves it empty.
        let empty: &[Node] = &[];
        let items = match self.nodes.last().copied() {
            None | Some(Node::Null) => empty,
            Some(Node::Array(items)) => items.as_slice(),
            Some(other) => return Err(self.type_error(other, "array")),
        };
        visitor
            .visit_seq(Items {
                items: items.iter(),
                index: 0,
                parent: &self,
            })
            .map_err(|e| self.locate(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        // A Go map: `null` clears it, later objects add to it (a repeated key keeps its last value).
        let rest = self.after_last_null().to_vec();
        let members = self.members(&rest, "object")?;
        visitor
            .visit_map(Members {
                members: members.into_iter(),
                pending: None,
                parent: &self,
            })
            .map_err(|e| self.locate(e))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        // A Go struct: `null` leaves it as it was, repeated objects merge field by field.
        let members = self.members(&self.nodes, "object")?;
        let mut groups: Vec<(usize, Vec<&'a Node>)> = Vec::new();
        for (key, value) in members {
            let Some(index) = match_field(key, fields) else {
                continue;
            };
            match groups.iter_mut().find(|(i, _)| *i == index) {
                Some((_, nodes)) => nodes.push(value),
                None => groups.push((index, vec![value])),
            }
        }
        // A field given only as `null` keeps its zero value, which is what serde's `default` produces.
        groups.retain(|(_, nodes)| nodes.iter().any(|n| !matches!(n, Node::Null)));
        visitor
            .visit_map(StructFields {
                groups: groups.into_iter(),
                fields,
                pending: None,
                parent: &self,
            })
            .map_err(|e| self.locate(e))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        match self.last_scalar() {
            Some(Node::String(s)) => visitor.visit_enum(s.as_str().into_deserializer()),
            Some(other) => Err(self.type_error(other, "string")),
            None => Err(self.error("cannot decode null into an enumerated field")),
        }
        .map_err(|e| self.locate(e))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }
}

impl<'a> Field<'a> {
    fn deserialize_number<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.last_scalar() {
            None => visitor.visit_u64(0),
            Some(Node::Number(n)) => visit_number(n, visitor),
            Some(other) => Err(self.type_error(other, "number")),
        }
        .map_err(|e| self.locate(e))
    }
}

fn visit_number<'de, V: Visitor<'de>>(n: &Number, visitor: V) -> Result<V::Value, DecodeError> {
    if let Some(u) = n.as_u64() {
        visitor.visit_u64(u)
    } else if let Some(i) = n.as_i64() {
        visitor.visit_i64(i)
    } else {
        visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
    }
}

/// Array elements, each decoded on its own.
struct Items<'a, 'p> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
    parent: &'p Field<'a>,
}

impl<'de, 'a> SeqAccess<'de> for Items<'a, '_> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        let Some(item) = self.items.next() else {
            return Ok(None);
        };
        let field = self.parent.child(&format!("[{}]", self.index), vec![item]);
        self.index += 1;
        seed.deserialize(field).map(Some)
    }
}

/// Members of a map (keys kept as written: Go never folds map keys).
struct Members<'a, 'p, I: Iterator<Item = &'a (String, Node)>> {
    members: I,
    pending: Option<&'a (String, Node)>,
    parent: &'p Field<'a>,
}

impl<'de, 'a, I: Iterator<Item = &'a (String, Node)>> MapAccess<'de> for Members<'a, '_, I> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let Some(member) = self.members.next() else {
            return Ok(None);
        };
        self.pending = Some(member);
        seed.deserialize(member.0.as_str().into_deserializer())
            .map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        let Some((key, value)) = self.pending.take() else {
            return Err(self.parent.error("map value requested before its key"));
        };
        seed.deserialize(self.parent.child(key, vec![value]))
    }
}

/// Struct fields, each with every occurrence of its key (canonical name handed to serde).
struct StructFields<'a, 'p> {
    groups: std::vec::IntoIter<(usize, Vec<&'a Node>)>,
    fields: &'static [&'static str],
    pending: Option<(usize, Vec<&'a Node>)>,
    parent: &'p Field<'a>,
}

impl<'de, 'a> MapAccess<'de> for StructFields<'a, '_> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let Some(group) = self.groups.next() else {
            return Ok(None);
        };
        let name = self.fields[group.0];
        self.pending = Some(group);
        seed.deserialize(name.into_deserializer()).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        let Some((index, nodes)) = self.pending.take() else {
            return Err(self.parent.error("struct value requested before its key"));
        };
        seed.deserialize(self.parent.child(self.fields[index], nodes))
    }
}

#[cfg(test)]
mod tests;
