//! Checks a located YAML tree against the spec's JSON Schema and converts
//! what is valid into [`SpecFile`].
//!
//! The JSON Schema that `rocm-llm schema` prints is the single source of
//! truth for keys, types, ranges and enums: editors check against it, and so
//! does this module, with the place of every mistake. Every mistake is
//! collected; the invalid parts are dropped so the rest can still be checked.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::diagnostic::suggest;
use super::model::{HumanDuration, MemoryTotal, Size, SpecFile};
use super::tree::{Located, Node, Pos};

/// A mistake found while decoding, before the file name is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub pos: Pos,
    pub path: String,
    pub message: String,
}

/// The outcome of decoding: the valid part of the spec, every problem, and
/// where each key path sits in the file (for later semantic checks).
pub struct Decoded {
    pub spec: SpecFile,
    pub problems: Vec<Problem>,
    pub places: Places,
}

/// Key path to the position of its value (and of its key, for maps).
#[derive(Clone, Debug, Default)]
pub struct Places {
    values: BTreeMap<String, Pos>,
    keys: BTreeMap<String, Pos>,
}

impl Places {
    /// Where the value at `path` is, or the nearest enclosing value.
    pub fn value(&self, path: &str) -> Pos {
        let mut p = path;
        loop {
            if let Some(pos) = self.values.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None => {
                    return self
                        .values
                        .get("")
                        .copied()
                        .unwrap_or(Pos { line: 1, column: 1 });
                }
            }
        }
    }
    /// Whether the file spells out the key `path`.
    pub fn written(&self, path: &str) -> bool {
        self.keys.contains_key(path)
    }
    /// Where the key of `path` is written, falling back to its value.
    pub fn key(&self, path: &str) -> Pos {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.value(path))
    }
}

pub fn spec_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(SpecFile)).unwrap_or(Value::Null)
}

pub fn decode(tree: &Located<Node>) -> Decoded {
    let schema = spec_schema();
    let mut checker = Checker {
        root: &schema,
        problems: Vec::new(),
        places: Places::default(),
    };
    let value = checker
        .check(&schema, tree, "")
        .unwrap_or(Value::Object(Map::new()));
    let mut problems = checker.problems;
    let spec = match serde_json::from_value::<SpecFile>(value) {
        Ok(spec) => spec,
        Err(e) => {
            // The checker and serde disagree: a bug, but still the user's file.
            problems.push(Problem {
                pos: tree.pos,
                path: String::new(),
                message: e.to_string(),
            });
            SpecFile::default()
        }
    };
    problems.sort_by_key(|a| a.pos);
    Decoded {
        spec,
        problems,
        places: checker.places,
    }
}

struct Checker<'s> {
    root: &'s Value,
    problems: Vec<Problem>,
    places: Places,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl<'s> Checker<'s> {
    fn resolve(&self, schema: &'s Value) -> &'s Value {
        resolve_ref(self.root, schema)
    }

    fn problem(&mut self, pos: Pos, path: &str, message: String) {
        self.problems.push(Problem {
            pos,
            path: path.to_owned(),
            message,
        });
    }

    /// Records "expected <what the schema accepts>, found <node>".
    fn mismatch(&mut self, schema: &Value, node: &Located<Node>, path: &str, hint: &str) {
        let message = format!(
            "expected {}, found {}{hint}",
            describe(self.root, schema),
            node.value.describe()
        );
        self.problem(node.pos, path, message);
    }

    /// Returns the JSON form of `node` if it matches `schema`; records why
    /// not otherwise.
    fn check(&mut self, schema: &'s Value, node: &Located<Node>, path: &str) -> Option<Value> {
        self.places.values.insert(path.to_owned(), node.pos);
        let schema = self.resolve(schema);

        if let Some(alternatives) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Value::as_array)
        {
            return self.check_alternatives(schema, alternatives, node, path);
        }
        if let Some(expected) = schema.get("const") {
            return if node.value.to_json() == *expected {
                Some(expected.clone())
            } else {
                self.mismatch(schema, node, path, "");
                None
            };
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array) {
            let found = node.value.to_json();
            if options.contains(&found) {
                return Some(found);
            }
            let names: Vec<&str> = options.iter().filter_map(Value::as_str).collect();
            let mut message = format!(
                "expected one of {}, found {}",
                names.join(", "),
                node.value.describe()
            );
            if let Node::Str(s) = &node.value
                && let Some(hint) = suggest(s, names.iter().copied())
            {
                message.push_str(&format!(" (did you mean \"{hint}\"?)"));
            }
            self.problem(node.pos, path, message);
            return None;
        }
        // A number or boolean where text is wanted (`OMP_NUM_THREADS: 8`)
        // means its text; refusing it would only make people add quotes.
        // (Not floats: `1.10` would silently become "1.1".)
        if matches!(node.value, Node::Int(_) | Node::Bool(_))
            && !type_matches(schema, &node.value)
            && type_matches(schema, &Node::Str(String::new()))
            && schema.get("format").is_none()
        {
            let text = match &node.value {
                Node::Int(i) => i.to_string(),
                Node::Bool(b) => b.to_string(),
                _ => String::new(),
            };
            return Some(Value::String(text));
        }
        if !type_matches(schema, &node.value) {
            let hint = if matches!(node.value, Node::Float(_))
                && type_matches(schema, &Node::Str(String::new()))
            {
                " (quote it to keep the text exact)"
            } else {
                ""
            };
            self.mismatch(schema, node, path, hint);
            return None;
        }
        match &node.value {
            Node::Map(entries) => Some(self.check_map(schema, entries, path)),
            Node::Seq(items) => {
                let item_schema = schema.get("items").unwrap_or(&Value::Bool(true));
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    if let Some(v) = self.check(item_schema, item, &format!("{path}[{i}]")) {
                        out.push(v);
                    }
                }
                Some(Value::Array(out))
            }
            Node::Int(i) => {
                let min = schema.get("minimum").and_then(Value::as_i64);
                let max = schema.get("maximum").and_then(Value::as_i64);
                if min.is_some_and(|m| *i < i128::from(m))
                    || max.is_some_and(|m| *i > i128::from(m))
                {
                    self.mismatch(schema, node, path, "");
                    return None;
                }
                Some(node.value.to_json())
            }
            Node::Str(s) if schema.get("format").and_then(Value::as_str) == Some("duration") => {
                match HumanDuration::parse(s) {
                    Ok(_) => Some(node.value.to_json()),
                    Err(message) => {
                        self.problem(node.pos, path, message);
                        None
                    }
                }
            }
            Node::Str(s) if schema.get("format").and_then(Value::as_str) == Some("size") => {
                match Size::parse(s) {
                    Ok(_) => Some(node.value.to_json()),
                    Err(message) => {
                        self.problem(node.pos, path, message);
                        None
                    }
                }
            }
            Node::Str(s)
                if schema.get("format").and_then(Value::as_str) == Some("size-or-auto") =>
            {
                match MemoryTotal::parse(s) {
                    Ok(_) => Some(node.value.to_json()),
                    Err(message) => {
                        self.problem(node.pos, path, message);
                        None
                    }
                }
            }
            other => Some(other.to_json()),
        }
    }

    fn check_alternatives(
        &mut self,
        schema: &'s Value,
        alternatives: &'s [Value],
        node: &Located<Node>,
        path: &str,
    ) -> Option<Value> {
        let candidates: Vec<&'s Value> = alternatives
            .iter()
            .filter(|a| !matches!(node.value, Node::Null) || is_null_type(a))
            .filter(|a| matches!(node.value, Node::Null) || !is_null_type(a))
            .collect();
        // One real alternative (an optional value): check it in full, so
        // the mistakes inside it are reported where they are.
        if let [only] = candidates.as_slice() {
            return self.check(only, node, path);
        }
        for alternative in &candidates {
            let mut trial = Checker {
                root: self.root,
                problems: Vec::new(),
                places: Places::default(),
            };
            if let Some(v) = trial.check(alternative, node, path)
                && trial.problems.is_empty()
            {
                return Some(v);
            }
        }
        self.mismatch(schema, node, path, "");
        None
    }

    fn check_map(
        &mut self,
        schema: &'s Value,
        entries: &[(Located<Node>, Located<Node>)],
        path: &str,
    ) -> Value {
        let properties = schema.get("properties").and_then(Value::as_object);
        let additional = schema.get("additionalProperties");
        let mut out = Map::new();
        for (key, value) in entries {
            let Some(name) = key.value.as_key() else {
                self.problem(
                    key.pos,
                    path,
                    format!(
                        "expected a plain name as key, found {}",
                        key.value.describe()
                    ),
                );
                continue;
            };
            let child = join(path, &name);
            self.places.keys.insert(child.clone(), key.pos);
            let sub = match (properties.and_then(|p| p.get(&name)), additional) {
                (Some(sub), _) => sub,
                (None, Some(sub)) if sub.is_object() => sub,
                _ => {
                    let known: Vec<&str> = properties
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let mut message = format!("unknown key \"{name}\"");
                    match suggest(&name, known.iter().copied()) {
                        Some(hint) => message.push_str(&format!(" (did you mean \"{hint}\"?)")),
                        None => {
                            message.push_str(&format!("; expected one of: {}", known.join(", ")))
                        }
                    }
                    self.problem(key.pos, &child, message);
                    continue;
                }
            };
            if let Some(v) = self.check(sub, value, &child) {
                out.insert(name, v);
            }
        }
        Value::Object(out)
    }
}

fn is_null_type(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

fn type_matches(schema: &Value, node: &Node) -> bool {
    let accepts = |t: &str| {
        matches!(
            (t, node),
            ("null", Node::Null)
                | ("boolean", Node::Bool(_))
                | ("integer", Node::Int(_))
                | ("number", Node::Int(_) | Node::Float(_))
                | ("string", Node::Str(_))
                | ("array", Node::Seq(_))
                | ("object", Node::Map(_))
        )
    };
    match schema.get("type") {
        None => true,
        Some(Value::String(t)) => accepts(t),
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).any(accepts),
        Some(_) => true,
    }
}

/// Follows `$ref`s into the schema's `$defs`.
fn resolve_ref<'s>(root: &'s Value, mut schema: &'s Value) -> &'s Value {
    while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        match root
            .get("$defs")
            .and_then(|d| d.get(r.trim_start_matches("#/$defs/")))
        {
            Some(target) => schema = target,
            None => break,
        }
    }
    schema
}

/// A person's description of what a schema accepts.
fn describe(root: &Value, schema: &Value) -> String {
    let schema = resolve_ref(root, schema);
    if let Some(alts) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
    {
        let parts: Vec<String> = alts
            .iter()
            .filter(|a| !is_null_type(a))
            .map(|a| describe(root, a))
            .collect();
        return parts.join(", or ");
    }
    if let Some(c) = schema.get("const") {
        return format!("\"{}\"", c.as_str().unwrap_or_default());
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        let names: Vec<&str> = options.iter().filter_map(Value::as_str).collect();
        return format!("one of {}", names.join(", "));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => vec![],
    };
    match types.first().copied() {
        Some("integer") => {
            let min = schema.get("minimum").and_then(Value::as_i64);
            let max = schema.get("maximum").and_then(Value::as_i64);
            match (min, max) {
                (Some(a), Some(b)) => format!("an integer from {a} to {b}"),
                (Some(a), None) => format!("an integer of at least {a}"),
                _ => "an integer".to_owned(),
            }
        }
        Some("string") if schema.get("format").and_then(Value::as_str) == Some("duration") => {
            "a duration such as 30s, 10m or 1h 30m".to_owned()
        }
        Some("string") if schema.get("format").and_then(Value::as_str) == Some("size") => {
            Size::EXPECTED.to_owned()
        }
        Some("string") if schema.get("format").and_then(Value::as_str) == Some("size-or-auto") => {
            format!("auto or {}", Size::EXPECTED)
        }
        Some("string") if schema.get("additionalProperties").is_none() => "a string".to_owned(),
        Some("boolean") => "true or false".to_owned(),
        Some("array") => {
            let item = schema
                .get("items")
                .map(|i| describe(root, i))
                .unwrap_or_default();
            if item.is_empty() {
                "a list".to_owned()
            } else {
                format!("a list of {}s", item.trim_start_matches("a "))
            }
        }
        Some("object") => match schema.get("additionalProperties") {
            Some(v) if v.is_object() => format!(
                "a mapping of names to {}s",
                describe(root, v).trim_start_matches("a ")
            ),
            _ => "a mapping".to_owned(),
        },
        Some("number") => "a number".to_owned(),
        _ => "a value".to_owned(),
    }
}
