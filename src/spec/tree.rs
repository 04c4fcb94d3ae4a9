//! A YAML document as a tree whose every node knows its line and column.
//!
//! serde stops at the first error; a person fixing a spec wants all of them.
//! So the text is first read into this located tree (only a syntax error stops
//! here), and [`super::decode`] then checks every key against the schema,
//! collecting every mistake with its place.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// 1-based line and column of a node in the source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    pub value: T,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Located<Node>>),
    /// Entries in source order; keys are whatever scalar YAML allowed.
    Map(Vec<(Located<Node>, Located<Node>)>),
}

impl Node {
    /// How a person would name what they wrote, for "found ..." in errors.
    pub fn describe(&self) -> String {
        match self {
            Node::Null => "nothing (null)".to_owned(),
            Node::Bool(b) => format!("boolean {b}"),
            Node::Int(i) => format!("integer {i}"),
            Node::Float(x) => format!("number {x}"),
            Node::Str(s) => format!("string \"{s}\""),
            Node::Seq(_) => "a list".to_owned(),
            Node::Map(_) => "a mapping".to_owned(),
        }
    }

    /// The scalar as a map key, if it can be one.
    pub fn as_key(&self) -> Option<String> {
        match self {
            Node::Str(s) => Some(s.clone()),
            Node::Int(i) => Some(i.to_string()),
            Node::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => i64::try_from(*i)
                .map(Value::from)
                .or_else(|_| u64::try_from(*i).map(Value::from))
                .unwrap_or_else(|_| Value::from(*i as f64)),
            Node::Float(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
            Node::Str(s) => Value::String(s.clone()),
            Node::Seq(items) => Value::Array(items.iter().map(|i| i.value.to_json()).collect()),
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .filter_map(|(k, v)| Some((k.value.as_key()?, v.value.to_json())))
                    .collect(),
            ),
        }
    }
}

/// Parses YAML text into a located tree. An empty document is an empty map.
pub fn parse(text: &str) -> Result<Located<Node>, serde_saphyr::Error> {
    if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        return Ok(Located {
            value: Node::Map(Vec::new()),
            pos: Pos { line: 1, column: 1 },
        });
    }
    let options = serde_saphyr::options! {
        // A spec is small; refuse input (and anchors) that expand into gigabytes.
        budget: serde_saphyr::budget! { max_reader_input_bytes: Some(4 << 20) },
        // YAML 1.2: only true/false are booleans, so `flash_attn: on` and
        // `no` as a name stay strings.
        strict_booleans: true,
    };
    let spanned: Spanned<Node> = serde_saphyr::from_str_with_options(text, options)?;
    Ok(from_spanned(spanned))
}

fn from_spanned(s: Spanned<Node>) -> Located<Node> {
    let loc = s.referenced;
    Located {
        value: s.value,
        pos: Pos {
            line: loc.line(),
            column: loc.column(),
        },
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Int(v.into()))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        i128::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer too large"))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(from_spanned(item));
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Node>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((from_spanned(key), from_spanned(value)));
        }
        Ok(Node::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nodes_know_their_place() {
        let tree = parse("a: 1\nb:\n  - x\n  - {c: true}\n").unwrap();
        let Node::Map(entries) = &tree.value else {
            panic!("not a map: {tree:?}")
        };
        assert_eq!(entries[0].0.pos, Pos { line: 1, column: 1 });
        assert_eq!(entries[0].1.pos, Pos { line: 1, column: 4 });
        assert_eq!(entries[0].1.value, Node::Int(1));
        let Node::Seq(items) = &entries[1].1.value else {
            panic!("not a seq")
        };
        assert_eq!(items[0].pos, Pos { line: 3, column: 5 });
        assert_eq!(items[1].pos.line, 4);
    }

    #[test]
    fn comment_only_document_is_an_empty_map() {
        assert_eq!(parse("# nothing\n").unwrap().value, Node::Map(Vec::new()));
    }
}
