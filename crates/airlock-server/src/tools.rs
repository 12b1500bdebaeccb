//! Function calling, the same for every model and engine: the functions are described to the
//! model in a system prompt (the fallback format below, documented in `docs/api.md`), a call
//! is one JSON object the model writes, and a `required` or named `tool_choice` constrains
//! decoding to that object with each function's own parameter schema, so the arguments always
//! match. The conversation's earlier calls and results are written back in the same format.
//!
//! The model is asked to answer, when it calls functions, with only
//! `{"tool_calls": [{"name": NAME, "parameters": {...}}]}` (the keys in that order, as a schema
//! is compiled in key order: a forced call's name comes before its arguments, so both can be
//! streamed as they are generated; see [`CallStream`]).

use airlock_engine::{Constraint, Message, OutputFormat, Role, SchemaLimits, rebase_references};
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// Most functions one request may offer.
pub(crate) const MAX_TOOLS: usize = 64;
/// Longest description of one function, bytes.
const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Most calls one answer may make.
const MAX_PARALLEL_CALLS: usize = 8;
/// The key of a call's arguments in the call object. It sorts after `name`, and the JSON
/// objects here keep their keys sorted.
const ARGUMENTS: &str = "parameters";

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tool {
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    /// Its arguments' JSON schema (an object schema).
    pub(crate) parameters: Value,
}

/// Whether and what the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ToolChoice {
    /// The functions are not offered at all.
    None,
    /// The model decides: text or calls.
    Auto,
    /// At least one call, to any function.
    Required,
    /// A call to this function.
    Named(String),
}

/// The functions a request offers and how the model must use them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tools {
    tools: Vec<Tool>,
    choice: ToolChoice,
    /// Several calls in one answer.
    parallel: bool,
}

/// How an API describes one function: what it calls it (`function`, `tool`), the fields it
/// may have, and where its parameters' schema is.
pub(crate) struct FunctionFields {
    pub(crate) called: &'static str,
    pub(crate) known: &'static [&'static str],
    pub(crate) schema: &'static str,
    /// The schema when none is given (`None`: it is required).
    pub(crate) default_schema: Option<fn() -> Value>,
}

/// A request's `tools` list; empty when there is none.
pub(crate) fn tool_list(tools: Option<Value>) -> Result<Vec<Value>, ApiError> {
    match tools {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => Ok(list),
        Some(_) => Err(ApiError::invalid_param("tools", "tools must be a list")),
    }
}

impl Tool {
    /// The function `object` describes in an API's terms.
    pub(crate) fn read(
        object: &Map<String, Value>,
        fields: &FunctionFields,
    ) -> Result<Self, ApiError> {
        let invalid = |message: String| ApiError::invalid_param("tools", message);
        let called = fields.called;
        if let Some(extra) = object.keys().find(|k| !fields.known.contains(&k.as_str())) {
            return Err(invalid(format!(
                "a {called} has an unknown field {extra:?}"
            )));
        }
        let name = object
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("a {called} needs a name")))?
            .to_owned();
        let parameters = match (object.get(fields.schema), fields.default_schema) {
            (Some(schema), _) => schema.clone(),
            (None, Some(default)) => default(),
            (None, None) => {
                return Err(invalid(format!("a {called} needs an {}", fields.schema)));
            }
        };
        Ok(Self {
            name,
            description: object
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            parameters,
        })
    }
}

/// One call the model made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ToolCall {
    pub(crate) name: String,
    pub(crate) arguments: Value,
}

impl Tools {
    /// Checks `tools` and `choice` (both APIs call them `tools` and `tool_choice`) and
    /// returns `None` when no function is offered or the choice is `none`.
    pub(crate) fn new(
        tools: Vec<Tool>,
        choice: ToolChoice,
        parallel: bool,
    ) -> Result<Option<Self>, ApiError> {
        if tools.len() > MAX_TOOLS {
            return Err(ApiError::invalid_param(
                "tools",
                format!(
                    "tools offers {} functions; at most {MAX_TOOLS} are allowed",
                    tools.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for tool in &tools {
            if tool.name.is_empty()
                || tool.name.len() > 64
                || !tool
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!(
                        "function name {:?} must be 1 to 64 letters, digits, _ or -",
                        tool.name
                    ),
                ));
            }
            if !seen.insert(tool.name.as_str()) {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!("function {:?} is offered twice", tool.name),
                ));
            }
            if tool
                .description
                .as_ref()
                .is_some_and(|d| d.len() > MAX_DESCRIPTION_BYTES)
            {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!(
                        "function {:?} has a description over {MAX_DESCRIPTION_BYTES} bytes",
                        tool.name
                    ),
                ));
            }
            if !tool.parameters.is_object() {
                return Err(ApiError::invalid_param(
                    "tools",
                    format!("function {:?} needs a parameters schema object", tool.name),
                ));
            }
        }
        if let ToolChoice::Named(name) = &choice
            && !seen.contains(name.as_str())
        {
            return Err(ApiError::invalid_param(
                "tool_choice",
                format!("tool_choice names {name:?}, which is not among the functions offered"),
            ));
        }
        if matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) && tools.is_empty() {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "tool_choice asks for a call, but no function is offered",
            ));
        }
        if tools.is_empty() || choice == ToolChoice::None {
            return Ok(None);
        }
        let tools = Self {
            tools,
            choice,
            parallel,
        };
        // Every schema is checked now, whatever the choice, so a bad one is refused up front.
        Constraint::compile(&tools.calls_format(None), &SchemaLimits::default())
            .map_err(|e| ApiError::invalid_param("tools", format!("tools: {e}")))?;
        Ok(Some(tools))
    }

    /// The system prompt that offers the functions.
    pub(crate) fn prompt(&self) -> String {
        let described: Vec<Value> = self
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                f
            })
            .collect();
        let when = match &self.choice {
            ToolChoice::Auto => "When a function would help, call it; otherwise answer normally.",
            ToolChoice::Required => "You must call at least one function now.",
            ToolChoice::Named(_) => "You must call the function named below now.",
            ToolChoice::None => "",
        };
        let named = match &self.choice {
            ToolChoice::Named(name) => format!("\nCall: {name}"),
            _ => String::new(),
        };
        format!(
            "You can call functions. They are described here as JSON Schema:\n{}\n\
             To call functions, reply with only this JSON and nothing else:\n\
             {{\"tool_calls\": [{{\"name\": \"<function name>\", \"parameters\": {{<arguments>}}}}]}}\n\
             {when}{named}",
            Value::Array(described)
        )
    }

    /// What decoding is constrained to: the call object for `required` and named choices,
    /// free text for `auto`.
    pub(crate) fn format(&self) -> OutputFormat {
        match &self.choice {
            ToolChoice::Required => self.calls_format(None),
            ToolChoice::Named(name) => self.calls_format(Some(name)),
            ToolChoice::Auto | ToolChoice::None => OutputFormat::Text,
        }
    }

    /// Whether the model must call (so decoding is constrained to calls).
    pub(crate) fn forces_a_call(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Named(_))
    }

    /// The schema of a whole answer that calls `only` (or any offered function).
    fn calls_format(&self, only: Option<&str>) -> OutputFormat {
        let calls: Vec<Value> = self
            .tools
            .iter()
            .filter(|t| only.is_none_or(|name| name == t.name))
            .enumerate()
            .map(|(i, t)| {
                // The function's own references (`#/$defs/Address`, `#`) point into its
                // parameters, which now sit inside the call list's schema.
                let at = format!("#/properties/tool_calls/items/anyOf/{i}/properties/{ARGUMENTS}");
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, ARGUMENTS: rebase_references(&t.parameters, &at)},
                    "required": ["name", ARGUMENTS],
                    "additionalProperties": false,
                })
            })
            .collect();
        let most = if self.parallel { MAX_PARALLEL_CALLS } else { 1 };
        OutputFormat::JsonSchema {
            schema: json!({
                "type": "object",
                "properties": {"tool_calls": {
                    "type": "array", "items": {"anyOf": calls}, "minItems": 1, "maxItems": most,
                }},
                "required": ["tool_calls"],
                "additionalProperties": false,
            }),
            name: None,
        }
    }

    /// The calls `answer` makes, if it is a call object naming offered functions (a
    /// constrained answer always is; a free one may be, and may name the arguments
    /// `arguments` as OpenAI's calls do).
    pub(crate) fn calls(&self, answer: &str) -> Option<Vec<ToolCall>> {
        let value: Value = serde_json::from_str(answer.trim()).ok()?;
        let list = value.as_object()?.get("tool_calls")?.as_array()?;
        let mut calls = Vec::with_capacity(list.len());
        for call in list {
            let call = call.as_object()?;
            let name = call.get("name")?.as_str()?;
            self.tools.iter().find(|t| t.name == name)?;
            let arguments = call
                .get(ARGUMENTS)
                .or_else(|| call.get("arguments"))
                .cloned()
                .unwrap_or_else(|| Value::Object(Map::new()));
            if !arguments.is_object() {
                return None;
            }
            calls.push(ToolCall {
                name: name.to_owned(),
                arguments,
            });
        }
        (!calls.is_empty()).then_some(calls)
    }
}

/// Offers `tools` in `conversation`: their prompt ends its system message, or begins it as one.
pub(crate) fn offer(conversation: &mut Vec<Message>, tools: &Tools) {
    let prompt = tools.prompt();
    match conversation.first_mut() {
        Some(first) if first.role == Role::System => {
            first.content.push_str("\n\n");
            first.content.push_str(&prompt);
        }
        _ => conversation.insert(0, Message::new(Role::System, prompt)),
    }
}

/// The answer's format once the functions `offered` are taken into account: the call object
/// when a call is required (a format asked for in `param` may not contradict it), else the
/// format asked for.
pub(crate) fn answer_format(
    offered: Option<&Tools>,
    asked: OutputFormat,
    param: &str,
) -> Result<OutputFormat, ApiError> {
    match offered.filter(|t| t.forces_a_call()) {
        None => Ok(asked),
        Some(_) if asked != OutputFormat::Text => Err(ApiError::invalid_param(
            param,
            format!("{param} cannot be combined with a tool_choice that requires a call"),
        )),
        Some(tools) => Ok(tools.format()),
    }
}

/// An earlier answer's calls, as the model is asked to write them.
pub(crate) fn calls_text(calls: &[ToolCall]) -> String {
    let list: Vec<Value> = calls
        .iter()
        .map(|c| json!({"name": c.name, ARGUMENTS: c.arguments}))
        .collect();
    json!({"tool_calls": list}).to_string()
}

/// A function's result, as the conversation shows it to the model.
pub(crate) fn result_text(name: Option<&str>, content: &str, is_error: bool) -> String {
    let what = if is_error { "failed with" } else { "returned" };
    match name {
        Some(name) => format!("Function {name} {what}:\n{content}"),
        None => format!("A function {what}:\n{content}"),
    }
}

/// A streamed answer to a request that offered functions. Its text is held until its end,
/// when it is known to be calls or text; a forced call's answer is known to be calls from its
/// start, and each call streams as it is made.
#[derive(Debug)]
pub(crate) struct Offered {
    tools: Tools,
    held: String,
    /// For a forced call.
    stream: Option<CallStream>,
}

impl Offered {
    pub(crate) fn new(tools: Tools) -> Self {
        let stream = tools.forces_a_call().then(CallStream::default);
        Self {
            tools,
            held: String::new(),
            stream,
        }
    }

    /// The functions offered.
    pub(crate) fn tools(&self) -> &Tools {
        &self.tools
    }

    /// Takes the answer's next piece; returns what it adds to a forced call's calls.
    pub(crate) fn push(&mut self, text: &str) -> Vec<CallPiece> {
        self.held.push_str(text);
        match &mut self.stream {
            Some(stream) => stream.push(text),
            None => Vec::new(),
        }
    }

    /// How many calls have been streamed (named), and whether the answer is whole: its
    /// call list closed, not cut by a length limit or a stop sequence.
    pub(crate) fn streamed_calls(&self) -> (usize, bool) {
        self.stream
            .as_ref()
            .map_or((0, false), |s| (s.named_calls, s.complete()))
    }

    /// The answer so far, taken.
    pub(crate) fn take_held(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// What a forced call's answer has said so far, as it streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallPiece {
    /// Call `index` (from 0) names the function `name`.
    Start { index: usize, name: String },
    /// More of call `index`'s arguments, as JSON text.
    Arguments { index: usize, json: String },
}

/// Where a [`CallStream`] is inside a call object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum InCall {
    /// Outside any call, or after a value: before a key or the call's end.
    #[default]
    Between,
    /// Reading a key, quotes included.
    Key(String),
    /// After the key, before its value.
    Value(String),
    /// Reading the name, quotes included.
    Name(String),
    /// Passing the arguments on; whitespace at their top level is held until more follows,
    /// so none trails them.
    Arguments { blank: String },
    /// Passing over a value of another key.
    Other,
}

/// Reads an answer constrained to calls (`{"tool_calls": [{"name": ..., "parameters": ...},
/// ...]}`, whitespace as the grammar allows) piece by piece as it is generated, so each call
/// can be streamed as it is made: its name once it is whole, then its arguments' text as it
/// comes. The grammar guarantees the shape; this only follows strings and nesting.
#[derive(Debug, Default)]
pub(crate) struct CallStream {
    /// Open objects and arrays: the answer is 1, the call list 2, a call 3.
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Calls begun.
    calls: usize,
    /// Calls whose name has been given.
    named_calls: usize,
    at: InCall,
    /// Whether the current call's name has been given.
    named: bool,
    /// Arguments read before the name (none in this shape), given once it is.
    early: String,
}

impl CallStream {
    /// Whether a call list has been read to its end.
    pub(crate) fn complete(&self) -> bool {
        self.calls > 0 && self.depth == 0
    }

    /// Reads `text`, the answer's next piece; returns what it adds to the calls.
    pub(crate) fn push(&mut self, text: &str) -> Vec<CallPiece> {
        let mut pieces = Vec::new();
        for c in text.chars() {
            self.step(c, &mut pieces);
        }
        pieces
    }

    fn step(&mut self, c: char, pieces: &mut Vec<CallPiece>) {
        let was_in_string = self.in_string;
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if c == '\\' {
                self.escaped = true;
            } else if c == '"' {
                self.in_string = false;
            }
        } else if c == '"' {
            self.in_string = true;
        }
        // Not part of a string, quotes included.
        let structural = !was_in_string && !self.in_string;
        let depth = self.depth;
        if structural {
            match c {
                '{' | '[' => self.depth += 1,
                '}' | ']' => self.depth = self.depth.saturating_sub(1),
                _ => {}
            }
        }
        if structural && depth == 2 && c == '{' {
            self.calls += 1;
            self.named = false;
            self.early.clear();
            self.at = InCall::Between;
            return;
        }
        if depth < 3 && self.depth < 3 {
            return;
        }
        let index = self.calls.saturating_sub(1);
        // A value at the call's top level ends at the call's next `,` or its `}`.
        let ends_value = structural && depth == 3 && matches!(c, ',' | '}');
        match &mut self.at {
            InCall::Arguments { blank } => {
                if ends_value {
                    self.at = InCall::Between;
                } else if structural && depth == 3 && c.is_whitespace() {
                    blank.push(c);
                } else {
                    let mut json = std::mem::take(blank);
                    json.push(c);
                    self.arguments(index, json, pieces);
                }
            }
            InCall::Other => {
                if ends_value {
                    self.at = InCall::Between;
                }
            }
            InCall::Between => {
                if c == '"' && self.in_string && depth == 3 {
                    self.at = InCall::Key(c.to_string());
                }
            }
            InCall::Key(key) => {
                key.push(c);
                if !self.in_string {
                    let key = serde_json::from_str::<String>(key).unwrap_or_default();
                    self.at = InCall::Value(key);
                }
            }
            InCall::Value(key) => {
                if structural && (c == ':' || c.is_whitespace()) {
                    return;
                }
                if key == "name" && c == '"' {
                    self.at = InCall::Name(c.to_string());
                } else if key == ARGUMENTS {
                    self.at = InCall::Arguments {
                        blank: String::new(),
                    };
                    self.arguments(index, c.to_string(), pieces);
                } else {
                    self.at = InCall::Other;
                }
            }
            InCall::Name(name) => {
                name.push(c);
                if !self.in_string {
                    let name = serde_json::from_str::<String>(name).unwrap_or_default();
                    self.at = InCall::Between;
                    self.named = true;
                    self.named_calls += 1;
                    pieces.push(CallPiece::Start { index, name });
                    if !self.early.is_empty() {
                        let json = std::mem::take(&mut self.early);
                        pieces.push(CallPiece::Arguments { index, json });
                    }
                }
            }
        }
    }

    /// Passes `json` on as call `index`'s arguments, joined to the last piece if that was
    /// theirs too; held until the call is named.
    fn arguments(&mut self, index: usize, json: String, pieces: &mut Vec<CallPiece>) {
        if !self.named {
            self.early.push_str(&json);
            return;
        }
        match pieces.last_mut() {
            Some(CallPiece::Arguments {
                index: last,
                json: so_far,
            }) if *last == index => {
                so_far.push_str(&json);
            }
            _ => pieces.push(CallPiece::Arguments { index, json }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": false}),
        }
    }

    #[test]
    fn a_required_choice_constrains_to_calls_of_the_offered_functions() {
        let tools = Tools::new(vec![weather()], ToolChoice::Required, true)
            .unwrap()
            .unwrap();
        assert!(tools.forces_a_call());
        let OutputFormat::JsonSchema { schema, .. } = tools.format() else {
            panic!("a schema");
        };
        let call = &schema["properties"]["tool_calls"]["items"]["anyOf"][0];
        assert_eq!(call["properties"]["name"]["const"], "get_weather");
        assert_eq!(
            call["properties"]["parameters"]["required"],
            json!(["city"])
        );
        assert!(tools.prompt().contains("get_weather"));
    }

    #[test]
    fn answers_that_are_call_objects_become_calls_and_others_stay_text() {
        let tools = Tools::new(vec![weather()], ToolChoice::Auto, true)
            .unwrap()
            .unwrap();
        assert_eq!(tools.format(), OutputFormat::Text);
        let calls = tools
            .calls(r#" {"tool_calls": [{"name": "get_weather", "parameters": {"city": "Oslo"}}]} "#)
            .unwrap();
        assert_eq!(calls[0].arguments["city"], "Oslo");
        assert_eq!(
            calls_text(&calls),
            r#"{"tool_calls":[{"name":"get_weather","parameters":{"city":"Oslo"}}]}"#
        );
        // A free answer may name them as OpenAI's calls do.
        let openai_style =
            r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}"#;
        assert_eq!(tools.calls(openai_style), Some(calls));
        assert!(tools.calls("It is sunny.").is_none());
        assert!(
            tools
                .calls(r#"{"tool_calls": [{"name": "nope", "arguments": {}}]}"#)
                .is_none()
        );
        assert!(tools.calls(r#"{"tool_calls": []}"#).is_none());
    }

    #[test]
    fn functions_whose_parameters_use_references_are_compiled_with_them() {
        // As pydantic writes a nested model, and a tree that refers to its own root.
        let address = Tool {
            name: "ship".into(),
            description: None,
            parameters: json!({
                "$defs": {"Address": {"type": "object",
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
                    "required": ["street", "city"], "additionalProperties": false}},
                "type": "object",
                "properties": {"to": {"$ref": "#/$defs/Address"}, "note": {"const": {"$ref": "#/kept"}},
                    "default": {"$ref": "#/$defs/Address"}},
                "required": ["to"], "additionalProperties": false,
            }),
        };
        let tree = Tool {
            name: "plant".into(),
            description: None,
            parameters: json!({
                "type": "object",
                "properties": {"label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#"}, "maxItems": 3}},
                "required": ["label"], "additionalProperties": false,
            }),
        };
        for choice in [ToolChoice::Required, ToolChoice::Named("plant".into())] {
            let tools = Tools::new(vec![address.clone(), tree.clone()], choice, true)
                .unwrap()
                .unwrap();
            let format = tools.format();
            Constraint::compile(&format, &SchemaLimits::default()).unwrap();
            let OutputFormat::JsonSchema { schema, .. } = format else {
                panic!("a schema");
            };
            let calls = &schema["properties"]["tool_calls"]["items"]["anyOf"];
            let last = calls.as_array().unwrap().len() - 1;
            let plant = &calls[last]["properties"]["parameters"];
            assert_eq!(
                plant["properties"]["children"]["items"]["$ref"],
                format!("#/properties/tool_calls/items/anyOf/{last}/properties/parameters")
            );
            if last == 1 {
                let ship = &calls[0]["properties"]["parameters"];
                assert_eq!(
                    ship["properties"]["to"]["$ref"],
                    "#/properties/tool_calls/items/anyOf/0/properties/parameters/$defs/Address"
                );
                assert_eq!(
                    ship["properties"]["note"]["const"]["$ref"], "#/kept",
                    "data stays"
                );
                assert_eq!(
                    ship["properties"]["default"]["$ref"], ship["properties"]["to"]["$ref"],
                    "a property named like a keyword is still a schema"
                );
            }
        }
        // A reference that points nowhere is still refused.
        let dangling = Tool {
            parameters: json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}}),
            ..tree
        };
        let e = Tools::new(vec![dangling], ToolChoice::Auto, true).unwrap_err();
        assert!(e.message().contains("does not point"), "{}", e.message());
    }

    #[test]
    fn a_function_is_read_in_each_apis_terms_and_its_faults_named() {
        const OPENAI: FunctionFields = FunctionFields {
            called: "function",
            known: &["name", "description", "parameters"],
            schema: "parameters",
            default_schema: Some(|| json!({"type": "object"})),
        };
        const ANTHROPIC: FunctionFields = FunctionFields {
            called: "tool",
            known: &["name", "input_schema"],
            schema: "input_schema",
            default_schema: None,
        };
        let read = |value: Value, fields| {
            Tool::read(value.as_object().unwrap(), fields).map_err(|e| e.message().to_owned())
        };
        let tool = read(json!({"name": "f", "description": "d"}), &OPENAI).unwrap();
        assert_eq!(
            tool.parameters,
            json!({"type": "object"}),
            "the default schema"
        );
        assert_eq!(tool.description.as_deref(), Some("d"));
        let tool = read(
            json!({"name": "f", "input_schema": {"type": "object"}}),
            &ANTHROPIC,
        );
        assert_eq!(tool.unwrap().name, "f");
        for (value, fields, says) in [
            (
                json!({"name": "f", "strange": 1}),
                &OPENAI,
                "a function has an unknown field \"strange\"",
            ),
            (
                json!({"parameters": {}}),
                &OPENAI,
                "a function needs a name",
            ),
            (
                json!({"name": "f"}),
                &ANTHROPIC,
                "a tool needs an input_schema",
            ),
            (json!({}), &ANTHROPIC, "a tool needs a name"),
        ] {
            assert_eq!(read(value, fields).unwrap_err(), says);
        }
        assert!(tool_list(Some(json!({}))).is_err());
        assert!(tool_list(Some(Value::Null)).unwrap().is_empty());
    }

    #[test]
    fn bad_offers_are_refused_naming_the_problem() {
        let named = |n: &str| ToolChoice::Named(n.into());
        for (tools, choice, says) in [
            (vec![weather(), weather()], ToolChoice::Auto, "twice"),
            (vec![weather()], named("other"), "not among"),
            (vec![], ToolChoice::Required, "no function"),
            (
                vec![Tool {
                    name: "bad name".into(),
                    ..weather()
                }],
                ToolChoice::Auto,
                "letters",
            ),
            (
                vec![Tool {
                    parameters: json!({"type": "object", "properties": {"a": {"not": {}}}}),
                    ..weather()
                }],
                ToolChoice::Auto,
                "\"not\"",
            ),
        ] {
            let e = Tools::new(tools, choice, true).unwrap_err();
            assert!(e.message().contains(says), "{}", e.message());
        }
        assert!(
            Tools::new(vec![weather()], ToolChoice::None, true)
                .unwrap()
                .is_none()
        );
        let many: Vec<Tool> = (0..65)
            .map(|i| Tool {
                name: format!("f{i}"),
                ..weather()
            })
            .collect();
        assert!(Tools::new(many, ToolChoice::Auto, true).is_err());
    }
}

#[cfg(test)]
mod call_stream {
    use super::*;
    use proptest::prelude::*;

    /// Every call's name and arguments text, from the pieces of `answer` split at `cuts`.
    fn streamed(answer: &str, cuts: &[usize]) -> Vec<(String, String)> {
        let mut stream = CallStream::default();
        let mut calls: Vec<(String, String)> = Vec::new();
        let mut from = 0;
        let mut bounds: Vec<usize> = cuts
            .iter()
            .map(|&c| c % (answer.len() + 1))
            .filter(|&c| answer.is_char_boundary(c))
            .collect();
        bounds.sort_unstable();
        bounds.push(answer.len());
        for to in bounds {
            for piece in stream.push(&answer[from..to]) {
                match piece {
                    CallPiece::Start { index, name } => {
                        assert_eq!(index, calls.len(), "calls start in order");
                        calls.push((name, String::new()));
                    }
                    CallPiece::Arguments { index, json } => {
                        assert_eq!(index + 1, calls.len(), "arguments of the last call");
                        calls[index].1.push_str(&json);
                    }
                }
            }
            from = to;
        }
        assert_eq!(stream.named_calls, calls.len());
        calls
    }

    const ANSWERS: [&str; 4] = [
        r#"{"tool_calls": [{"name": "get_weather", "parameters": {"city": "Oslo"}}]}"#,
        "{ \"tool_calls\" : [ { \"name\" : \"a\\\"b\" , \"parameters\" : { \"s\": \"}],{\\\"\", \"n\": [1, {\"x\": null}] } } ,\n {\"name\":\"f\",\"parameters\":{}} ] }",
        r#"{"tool_calls":[{"name":"é","parameters":{"q":"ünïcødé ✓"}},{"name":"g","parameters":{"k":true}}]}"#,
        r#"{"tool_calls": [{"parameters": {"late": 1}, "name": "named_after"}]}"#,
    ];

    #[test]
    fn each_call_streams_its_name_then_exactly_its_arguments_text() {
        for answer in ANSWERS {
            let calls = streamed(answer, &[]);
            let whole: Value = serde_json::from_str(answer).unwrap();
            let expected = whole["tool_calls"].as_array().unwrap();
            assert_eq!(calls.len(), expected.len(), "{answer}");
            for ((name, arguments), call) in calls.iter().zip(expected) {
                assert_eq!(name, call["name"].as_str().unwrap(), "{answer}");
                let parsed: Value = serde_json::from_str(arguments).unwrap();
                assert_eq!(parsed, call["parameters"], "{answer}");
                assert_eq!(
                    arguments.trim(),
                    arguments,
                    "no whitespace around: {arguments:?}"
                );
            }
        }
    }

    #[test]
    fn nothing_is_a_call_until_a_call_object_begins_and_the_answer_is_whole_once_it_closes() {
        let mut stream = CallStream::default();
        assert!(stream.push(r#"{"tool_calls": ["#).is_empty());
        assert_eq!(stream.calls, 0);
        assert!(stream.push(r#"{"na"#).is_empty());
        assert_eq!((stream.calls, stream.named_calls), (1, 0));
        stream.push(r#"me": "f", "parameters": {"a": "}]}"}}"#);
        assert_eq!(stream.named_calls, 1);
        assert!(!stream.complete(), "the list is still open");
        stream.push("]}");
        assert!(stream.complete());
    }

    proptest! {
        #[test]
        fn any_split_of_an_answer_streams_the_same_calls(
            which in 0..ANSWERS.len(),
            cuts in proptest::collection::vec(0usize..200, 0..12),
        ) {
            let answer = ANSWERS[which];
            prop_assert_eq!(streamed(answer, &cuts), streamed(answer, &[]));
        }
    }
}
