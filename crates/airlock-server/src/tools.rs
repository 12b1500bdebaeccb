//! Function calling, the same for every model and engine: the functions are described to the
//! model in a system prompt (the fallback format below, documented in `docs/api.md`), a call
//! is one JSON object the model writes, and a `required` or named `tool_choice` constrains
//! decoding to that object with each function's own parameter schema, so the arguments always
//! match. The conversation's earlier calls and results are written back in the same format.
//!
//! The model is asked to answer, when it calls functions, with only
//! `{"tool_calls": [{"name": NAME, "arguments": {...}}]}`.

use airlock_engine::{Constraint, Message, OutputFormat, Role, SchemaLimits};
use serde_json::{Map, Value, json};

use crate::error::ApiError;

/// Most functions one request may offer.
pub(crate) const MAX_TOOLS: usize = 64;
/// Longest description of one function, bytes.
const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Most calls one answer may make.
const MAX_PARALLEL_CALLS: usize = 8;

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
             {{\"tool_calls\": [{{\"name\": \"<function name>\", \"arguments\": {{<arguments>}}}}]}}\n\
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
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                    "required": ["name", "arguments"],
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
    /// constrained answer always is; a free one may be).
    pub(crate) fn calls(&self, answer: &str) -> Option<Vec<ToolCall>> {
        let value: Value = serde_json::from_str(answer.trim()).ok()?;
        let list = value.as_object()?.get("tool_calls")?.as_array()?;
        let mut calls = Vec::with_capacity(list.len());
        for call in list {
            let call = call.as_object()?;
            let name = call.get("name")?.as_str()?;
            self.tools.iter().find(|t| t.name == name)?;
            let arguments = call
                .get("arguments")
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
        .map(|c| json!({"name": c.name, "arguments": c.arguments}))
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
        assert_eq!(call["properties"]["arguments"]["required"], json!(["city"]));
        assert!(tools.prompt().contains("get_weather"));
    }

    #[test]
    fn answers_that_are_call_objects_become_calls_and_others_stay_text() {
        let tools = Tools::new(vec![weather()], ToolChoice::Auto, true)
            .unwrap()
            .unwrap();
        assert_eq!(tools.format(), OutputFormat::Text);
        let calls = tools
            .calls(r#" {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]} "#)
            .unwrap();
        assert_eq!(calls[0].arguments["city"], "Oslo");
        assert_eq!(
            calls_text(&calls),
            r#"{"tool_calls":[{"arguments":{"city":"Oslo"},"name":"get_weather"}]}"#
        );
        assert!(tools.calls("It is sunny.").is_none());
        assert!(
            tools
                .calls(r#"{"tool_calls": [{"name": "nope", "arguments": {}}]}"#)
                .is_none()
        );
        assert!(tools.calls(r#"{"tool_calls": []}"#).is_none());
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
