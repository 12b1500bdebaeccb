//! Structured output: a JSON schema compiled to a grammar that the sampler applies at every
//! step, so that the answer always parses and matches the schema.
//!
//! The schema is untrusted input. Before llama.cpp's converter (the one llama-server uses)
//! sees it, [`Constraint::compile`] checks it against [`SchemaLimits`] and against the subset
//! of JSON Schema that the converter enforces: a keyword it would silently ignore (`not`,
//! `uniqueItems`, bounds on non-integer numbers, an unknown `format`, a regex feature it
//! cannot express) is refused by name rather than producing answers that do not validate.
//! Every length that the grammar expands into copies (`maxLength`, `maxItems`, regex
//! repetitions) counts against one budget, so no schema can make the grammar or its parse
//! blow up.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Map, Value, json};

/// What the answer must look like, as the API asked for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum OutputFormat {
    /// Free text.
    #[default]
    Text,
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        /// The schema as sent.
        schema: Value,
        /// The name the caller gave it, if any.
        name: Option<String>,
    },
}

/// Ceilings on a schema and on what it compiles to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaLimits {
    /// Serialised schema size.
    pub max_bytes: usize,
    /// Subschemas nested in one another.
    pub max_depth: usize,
    /// Subschemas in all.
    pub max_subschemas: usize,
    /// `enum` and `const` values in all.
    pub max_enum_values: usize,
    /// Longest `pattern`.
    pub max_pattern_bytes: usize,
    /// Copies the grammar may make of repeated items: each `maxLength`, `maxItems` and regex
    /// repetition costs its bound (times the bounds around it, in a regex), summed.
    pub max_expansion: u64,
    /// Compiled grammar size.
    pub max_grammar_bytes: usize,
}

impl Default for SchemaLimits {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024,
            max_depth: 32,
            max_subschemas: 2048,
            max_enum_values: 2048,
            max_pattern_bytes: 512,
            max_expansion: 4096,
            max_grammar_bytes: 512 * 1024,
        }
    }
}

/// Why a schema was refused; reads after "response_format ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SchemaError(String);

impl SchemaError {
    fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

/// A checked schema and the grammar it compiled to.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    schema: Arc<Value>,
    name: Option<String>,
    grammar: Arc<str>,
    any_object: bool,
}

impl Constraint {
    /// Checks `format`'s schema against `limits` and compiles it. `Ok(None)` for free text.
    pub fn compile(
        format: &OutputFormat,
        limits: &SchemaLimits,
    ) -> Result<Option<Self>, SchemaError> {
        let (schema, name, any_object) = match format {
            OutputFormat::Text => return Ok(None),
            OutputFormat::JsonObject => (json!({"type": "object"}), None, true),
            OutputFormat::JsonSchema { schema, name } => (schema.clone(), name.clone(), false),
        };
        let text = schema.to_string();
        if text.len() > limits.max_bytes {
            return Err(SchemaError::new(format!(
                "schema is {} bytes, over the limit of {}",
                text.len(),
                limits.max_bytes
            )));
        }
        let mut check = Check {
            root: &schema,
            limits,
            subschemas: 0,
            enum_values: 0,
            expansion: 0,
            patterns: Vec::new(),
        };
        check.schema(&schema, "#", 1)?;
        check.refs_make_progress()?;
        for pattern in std::mem::take(&mut check.patterns) {
            check_pattern_enforced(&pattern)?;
        }
        let grammar = to_grammar(&text)?;
        if grammar.len() > limits.max_grammar_bytes {
            return Err(SchemaError::new(format!(
                "schema compiles to a {}-byte grammar, over the limit of {}",
                grammar.len(),
                limits.max_grammar_bytes
            )));
        }
        Ok(Some(Self {
            schema: Arc::new(schema),
            name,
            grammar: grammar.into(),
            any_object,
        }))
    }

    /// The schema the answer follows (`{"type": "object"}` for any JSON object).
    pub fn schema(&self) -> &Value {
        &self.schema
    }

    /// The name the caller gave the schema.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Whether any JSON object will do (OpenAI's `json_object`), rather than a caller's schema.
    pub fn is_any_object(&self) -> bool {
        self.any_object
    }

    /// The compiled grammar (llama.cpp GBNF, root rule `root`).
    pub fn grammar(&self) -> &Arc<str> {
        &self.grammar
    }
}

/// llama.cpp's converter; its exceptions come back as an error code without their text.
fn to_grammar(schema: &str) -> Result<String, SchemaError> {
    llama_cpp_2::json_schema_to_grammar(schema).map_err(|_| {
        SchemaError::new(
            "schema could not be compiled to a grammar (an unresolvable $ref, an invalid regex, \
             or a type constrained decoding does not know)",
        )
    })
}

/// Keywords that hold one subschema.
const SCHEMA_KEYWORDS: &[&str] = &["items", "additionalProperties"];
/// Keywords that hold a list of subschemas.
const SCHEMA_LIST_KEYWORDS: &[&str] = &["anyOf", "oneOf", "allOf", "prefixItems"];
/// Keywords that hold named subschemas.
const SCHEMA_MAP_KEYWORDS: &[&str] = &["properties", "$defs", "definitions"];
/// Keywords the grammar enforces, or that say nothing about validity (annotations).
const OTHER_KEYWORDS: &[&str] = &[
    "type",
    "enum",
    "const",
    "$ref",
    "required",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "title",
    "description",
    "default",
    "examples",
    "$schema",
    "$id",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "strict",
    "discriminator",
];
/// String formats the grammar enforces.
const FORMATS: &[&str] = &["date", "time", "date-time", "uuid"];

struct Check<'a> {
    root: &'a Value,
    limits: &'a SchemaLimits,
    subschemas: usize,
    enum_values: usize,
    expansion: u64,
    patterns: Vec<String>,
}

impl Check<'_> {
    fn schema(&mut self, schema: &Value, at: &str, depth: usize) -> Result<(), SchemaError> {
        let limits = self.limits;
        if depth > limits.max_depth {
            return Err(SchemaError::new(format!(
                "schema nests deeper than {} levels (at {at})",
                limits.max_depth
            )));
        }
        self.subschemas += 1;
        if self.subschemas > limits.max_subschemas {
            return Err(SchemaError::new(format!(
                "schema has more than {} subschemas",
                limits.max_subschemas
            )));
        }
        let object = match schema {
            Value::Bool(_) => return Ok(()),
            Value::Object(object) => object,
            _ => {
                return Err(SchemaError::new(format!(
                    "schema at {at} is neither an object nor a boolean"
                )));
            }
        };
        for (key, value) in object {
            let here = format!("{at}/{key}");
            if SCHEMA_KEYWORDS.contains(&key.as_str()) {
                self.schema(value, &here, depth + 1)?;
            } else if SCHEMA_LIST_KEYWORDS.contains(&key.as_str()) {
                let list = value
                    .as_array()
                    .ok_or_else(|| SchemaError::new(format!("{here} must be a list of schemas")))?;
                for (i, sub) in list.iter().enumerate() {
                    self.schema(sub, &format!("{here}/{i}"), depth + 1)?;
                }
            } else if SCHEMA_MAP_KEYWORDS.contains(&key.as_str()) {
                let map = value
                    .as_object()
                    .ok_or_else(|| SchemaError::new(format!("{here} must map names to schemas")))?;
                for (name, sub) in map {
                    self.schema(sub, &format!("{here}/{name}"), depth + 1)?;
                }
            } else if !OTHER_KEYWORDS.contains(&key.as_str()) {
                return Err(SchemaError::new(format!(
                    "keyword {key:?} (at {at}) is not supported: constrained decoding could not enforce it"
                )));
            }
        }
        self.values(object, at)?;
        Ok(())
    }

    /// The keywords that are values rather than subschemas.
    fn values(&mut self, object: &Map<String, Value>, at: &str) -> Result<(), SchemaError> {
        if let Some(values) = object.get("enum") {
            let values = values
                .as_array()
                .ok_or_else(|| SchemaError::new(format!("{at}/enum must be a list")))?;
            if values.is_empty() {
                return Err(SchemaError::new(format!(
                    "{at}/enum is empty: no answer could match"
                )));
            }
            self.count_enum_values(values.len())?;
        }
        if object.contains_key("const") {
            self.count_enum_values(1)?;
        }
        for key in ["minItems", "maxItems", "minLength", "maxLength"] {
            if let Some(value) = object.get(key) {
                let n = value.as_u64().ok_or_else(|| {
                    SchemaError::new(format!("{at}/{key} must be a non-negative integer"))
                })?;
                self.expand(n, &format!("{at}/{key}"))?;
            }
        }
        let types: Vec<&str> = match object.get("type") {
            None => Vec::new(),
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            Some(_) => {
                return Err(SchemaError::new(format!(
                    "{at}/type must be a type name or a list of them"
                )));
            }
        };
        let bounded = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]
            .into_iter()
            .find(|key| object.contains_key(*key));
        if let Some(key) = bounded
            && types != ["integer"]
        {
            return Err(SchemaError::new(format!(
                "{at}/{key} is supported on integers only: constrained decoding could not enforce it on other numbers"
            )));
        }
        if let Some(format) = object.get("format") {
            let format = format.as_str().unwrap_or_default();
            if !FORMATS.contains(&format) {
                return Err(SchemaError::new(format!(
                    "{at}/format {format:?} is not supported (supported: {})",
                    FORMATS.join(", ")
                )));
            }
        }
        if let Some(pattern) = object.get("pattern") {
            let pattern = pattern
                .as_str()
                .ok_or_else(|| SchemaError::new(format!("{at}/pattern must be a string")))?;
            if pattern.len() > self.limits.max_pattern_bytes {
                return Err(SchemaError::new(format!(
                    "{at}/pattern is {} bytes, over the limit of {}",
                    pattern.len(),
                    self.limits.max_pattern_bytes
                )));
            }
            let cost = pattern_expansion(pattern)
                .map_err(|e| SchemaError::new(format!("{at}/pattern {e}")))?;
            self.expand(cost, &format!("{at}/pattern"))?;
            self.patterns.push(pattern.to_owned());
        }
        if let Some(reference) = object.get("$ref") {
            let reference = reference
                .as_str()
                .ok_or_else(|| SchemaError::new(format!("{at}/$ref must be a string")))?;
            if resolve(self.root, reference).is_none() {
                return Err(SchemaError::new(format!(
                    "{at}/$ref {reference:?} does not point into this schema (only references to its parts, such as \"#/$defs/Name\", are followed; nothing is fetched)"
                )));
            }
        }
        Ok(())
    }

    fn count_enum_values(&mut self, n: usize) -> Result<(), SchemaError> {
        self.enum_values += n;
        if self.enum_values > self.limits.max_enum_values {
            return Err(SchemaError::new(format!(
                "schema lists more than {} enum and const values",
                self.limits.max_enum_values
            )));
        }
        Ok(())
    }

    fn expand(&mut self, cost: u64, at: &str) -> Result<(), SchemaError> {
        self.expansion = self.expansion.saturating_add(cost);
        if self.expansion > self.limits.max_expansion {
            return Err(SchemaError::new(format!(
                "schema's lengths and repetitions add up to more than {} copies (over the limit at {at})",
                self.limits.max_expansion
            )));
        }
        Ok(())
    }

    /// Refuses a `$ref` cycle that no object or array interrupts (`A` is `B` is `A`): its
    /// grammar would be left-recursive.
    fn refs_make_progress(&self) -> Result<(), SchemaError> {
        let mut refs = Vec::new();
        collect_refs(self.root, &mut refs);
        for start in refs {
            let mut seen = HashSet::new();
            let mut current = start;
            while let Some(next) = resolve(self.root, current).and_then(bare_ref) {
                if !seen.insert(next) {
                    return Err(SchemaError::new(format!(
                        "$ref {start:?} refers back to itself without an object or array between"
                    )));
                }
                current = next;
            }
        }
        Ok(())
    }
}

/// The `$ref` of a schema that is nothing but a reference (or a union containing one).
fn bare_ref(schema: &Value) -> Option<&str> {
    let object = schema.as_object()?;
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        return Some(reference);
    }
    ["anyOf", "oneOf", "allOf"]
        .iter()
        .filter_map(|k| object.get(*k)?.as_array())
        .flatten()
        .find_map(bare_ref)
}

fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(object) => {
            if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
                out.push(reference);
            }
            object.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(list) => list.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

/// `schema` as it must read once embedded at the JSON pointer fragment `at` (`#/...`) of a
/// larger schema: each local `$ref` (`#/$defs/A`, `#`) made to point below `at`. Only
/// subschemas are walked, so a property or definition named like a keyword (`enum`,
/// `default`) is still rebased, and values (`const`, `enum`) are left as they are.
pub fn rebase_references(schema: &Value, at: &str) -> Value {
    let Value::Object(object) = schema else {
        return schema.clone();
    };
    let rebased = object.iter().map(|(key, value)| {
        let value = match (key.as_str(), value) {
            ("$ref", Value::String(reference)) => match reference.strip_prefix('#') {
                Some(pointer) => Value::String(format!("{at}{pointer}")),
                None => value.clone(),
            },
            (key, _) if SCHEMA_KEYWORDS.contains(&key) => rebase_references(value, at),
            (key, Value::Array(list)) if SCHEMA_LIST_KEYWORDS.contains(&key) => {
                Value::Array(list.iter().map(|s| rebase_references(s, at)).collect())
            }
            (key, Value::Object(map)) if SCHEMA_MAP_KEYWORDS.contains(&key) => Value::Object(
                map.iter()
                    .map(|(name, s)| (name.clone(), rebase_references(s, at)))
                    .collect(),
            ),
            _ => value.clone(),
        };
        (key.clone(), value)
    });
    Value::Object(rebased.collect())
}

/// Follows a local JSON pointer reference (`#/$defs/A`).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    // The converter resolves pointers into the schema, not the bare root (`#`).
    let pointer = reference.strip_prefix('#').filter(|p| p.starts_with('/'))?;
    root.pointer(pointer)
}

/// Makes sure the converter turns `pattern` into a grammar rather than dropping it (it
/// accepts any string for a regex feature it cannot express, with only a warning).
fn check_pattern_enforced(pattern: &str) -> Result<(), SchemaError> {
    let with = to_grammar(&json!({"type": "string", "pattern": pattern}).to_string())
        .map_err(|_| SchemaError::new(format!("pattern {pattern:?} is not a valid regex")))?;
    // The converter's fallback makes the root the plain string rule.
    if with.lines().any(|line| line.trim() == "root ::= string") {
        return Err(SchemaError::new(format!(
            "pattern {pattern:?} uses regex features constrained decoding cannot enforce (patterns must be anchored with ^ and $; no lookaround, backreferences or anchors inside)"
        )));
    }
    Ok(())
}

/// How many copies of its parts a regex's repetitions make: each `{n,m}` multiplies what it
/// repeats by its larger bound, nested repetitions multiply, and alternatives and sequences
/// add. `*`, `+` and `?` cost nothing (they become recursion, not copies).
pub fn pattern_expansion(pattern: &str) -> Result<u64, String> {
    let bytes = pattern.as_bytes();
    // Costs of the groups being read: each entry is (sequence so far, the last atom's cost).
    let mut stack: Vec<(u64, u64)> = vec![(0, 0)];
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        i += 1;
        let top = stack.len() - 1;
        match c {
            b'\\' => {
                i += 1;
                let (seq, last) = &mut stack[top];
                *seq = seq.saturating_add(*last);
                *last = 1;
            }
            b'[' => {
                // A character class: one atom, whatever it holds.
                if bytes.get(i) == Some(&b'^') {
                    i += 1;
                }
                if bytes.get(i) == Some(&b']') {
                    i += 1;
                }
                while i < bytes.len() && bytes[i] != b']' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if i >= bytes.len() {
                    return Err("has an unterminated character class".into());
                }
                i += 1;
                let (seq, last) = &mut stack[top];
                *seq = seq.saturating_add(*last);
                *last = 1;
            }
            // Optional and unbounded repetition: recursion in the grammar, not copies.
            b'*' | b'+' | b'?' => {}
            b'(' => stack.push((0, 0)),
            b')' => {
                if stack.len() < 2 {
                    return Err("has unbalanced parentheses".into());
                }
                let (seq, last) = stack.pop().unwrap_or_default();
                let group = seq.saturating_add(last).max(1);
                let top = stack.len() - 1;
                let (outer, outer_last) = &mut stack[top];
                *outer = outer.saturating_add(*outer_last);
                *outer_last = group;
            }
            b'|' => {
                // Alternatives add up like a sequence: each is compiled once.
                let (seq, last) = &mut stack[top];
                *seq = seq.saturating_add(*last);
                *last = 0;
            }
            b'{' => {
                let close = bytes[i..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or("has an unterminated {")?;
                let inside =
                    std::str::from_utf8(&bytes[i..i + close]).map_err(|e| e.to_string())?;
                i += close + 1;
                let bound = inside
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| s.trim().parse::<u64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| format!("has an invalid repetition {{{inside}}}"))?
                    .into_iter()
                    .max()
                    .unwrap_or(0)
                    .max(1);
                let (_, last) = &mut stack[top];
                *last = last.saturating_mul(bound);
            }
            _ => {
                let (seq, last) = &mut stack[top];
                *seq = seq.saturating_add(*last);
                *last = 1;
            }
        }
    }
    if stack.len() != 1 {
        return Err("has unbalanced parentheses".into());
    }
    let (seq, last) = stack[0];
    Ok(seq.saturating_add(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(schema: Value) -> Result<Constraint, SchemaError> {
        Constraint::compile(
            &OutputFormat::JsonSchema { schema, name: None },
            &SchemaLimits::default(),
        )
        .map(|c| c.expect("a schema gives a constraint"))
    }

    fn refusal(schema: Value) -> String {
        compile(schema).expect_err("refused").to_string()
    }

    #[test]
    fn a_nested_schema_with_enums_arrays_and_refs_compiles() {
        let c = compile(json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 40},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
                "size": {"enum": ["small", "large"]},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "when": {"type": "string", "format": "date"},
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                "next": {"anyOf": [{"$ref": "#/$defs/Link"}, {"type": "null"}]}
            },
            "$defs": {"Link": {"type": "object", "properties": {"url": {"type": "string"}}}},
            "required": ["name", "size"],
            "additionalProperties": false
        }))
        .unwrap();
        assert!(c.grammar().contains("root ::="));
    }

    #[test]
    fn json_object_compiles_to_an_object_grammar_and_text_to_nothing() {
        let limits = SchemaLimits::default();
        let c = Constraint::compile(&OutputFormat::JsonObject, &limits)
            .unwrap()
            .unwrap();
        assert!(c.is_any_object());
        assert!(
            Constraint::compile(&OutputFormat::Text, &limits)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn keywords_the_grammar_cannot_enforce_are_refused_by_name() {
        for (keyword, schema) in [
            ("not", json!({"not": {"type": "string"}})),
            ("uniqueItems", json!({"type": "array", "uniqueItems": true})),
            (
                "patternProperties",
                json!({"type": "object", "patternProperties": {}}),
            ),
            ("multipleOf", json!({"type": "integer", "multipleOf": 3})),
        ] {
            let e = refusal(schema);
            assert!(e.contains(keyword), "{e}");
        }
        assert!(refusal(json!({"type": "number", "minimum": 0})).contains("integers only"));
        assert!(refusal(json!({"type": "string", "format": "email"})).contains("email"));
    }

    #[test]
    fn remote_unresolvable_and_empty_references_are_refused() {
        assert!(
            refusal(json!({"$ref": "https://example.com/s.json"})).contains("nothing is fetched")
        );
        assert!(refusal(json!({"$ref": "#/$defs/Missing"})).contains("does not point"));
        assert!(refusal(json!({"$ref": "#"})).contains("does not point"));
        assert!(refusal(json!({"enum": []})).contains("empty"));
    }

    #[test]
    fn a_reference_cycle_without_structure_is_refused_but_recursion_through_objects_compiles() {
        let e = refusal(json!({
            "$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"anyOf": [{"$ref": "#/$defs/A"}]}},
            "$ref": "#/$defs/A"
        }));
        assert!(e.contains("refers back to itself"), "{e}");
        compile(json!({
            "$defs": {"Node": {"type": "object", "properties": {
                "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}}}},
            "$ref": "#/$defs/Node"
        }))
        .unwrap();
    }

    #[test]
    fn deep_nesting_huge_enums_and_large_schemas_are_refused() {
        let mut deep = json!({"type": "string"});
        for _ in 0..40 {
            deep = json!({"type": "array", "items": deep});
        }
        assert!(refusal(deep).contains("deeper than 32"));
        let values: Vec<String> = (0..3000).map(|i| format!("v{i}")).collect();
        assert!(refusal(json!({"enum": values})).contains("enum"));
        let big: Vec<String> = (0..1000)
            .map(|i| format!("a-long-enum-value-{i:0>60}"))
            .collect();
        assert!(refusal(json!({"enum": big})).contains("bytes"));
    }

    #[test]
    fn regexes_built_to_explode_are_refused_before_compiling() {
        for pattern in [
            "^(a{1000}){1000}$",
            "^((a{50}){50}){50}$",
            "^[a-z]{100000}$",
        ] {
            let e = refusal(json!({"type": "string", "pattern": pattern}));
            assert!(e.contains("copies"), "{pattern}: {e}");
        }
        let e = refusal(json!({"type": "string", "maxLength": 1_000_000}));
        assert!(e.contains("copies"), "{e}");
        let e = refusal(json!({"type": "string", "pattern": "^(?=a)b$"}));
        assert!(e.contains("cannot enforce"), "{e}");
        let e = refusal(json!({"type": "string", "pattern": "[a-z]+"}));
        assert!(e.contains("anchored"), "{e}");
    }

    fn any_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let key = prop::sample::select(vec![
            "type",
            "properties",
            "items",
            "anyOf",
            "$ref",
            "enum",
            "pattern",
            "maxLength",
            "required",
            "$defs",
            "minimum",
            "format",
            "const",
            "not",
            "x",
        ]);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            r"[a-z^$(){}|*+?\\\[\]#/0-9,]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key.clone(), inner), 0..5).prop_map(|pairs| {
                    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever JSON arrives as a schema, checking and compiling it answers (a grammar or
        /// a reason) without panicking.
        #[test]
        fn any_schema_compiles_or_is_refused_without_panicking(schema in any_json()) {
            let _ = compile(schema);
        }

        #[test]
        fn any_pattern_is_measured_without_panicking(pattern in r"\PC{0,64}") {
            let _ = pattern_expansion(&pattern);
        }
    }

    #[test]
    fn pattern_expansion_multiplies_nested_bounds_and_adds_the_rest() {
        assert_eq!(pattern_expansion("^abc$").unwrap(), 5);
        assert_eq!(pattern_expansion("a{10}").unwrap(), 10);
        assert_eq!(pattern_expansion("(a{10}b){3}").unwrap(), 33);
        assert_eq!(pattern_expansion("[a-z]{2,8}|x").unwrap(), 9);
        assert_eq!(pattern_expansion("a*b+c?").unwrap(), 3);
        assert!(pattern_expansion("(a").is_err());
        assert!(pattern_expansion("a)").is_err());
        assert!(pattern_expansion("[ab").is_err());
    }
}
