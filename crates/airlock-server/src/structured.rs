//! What each API calls structured output, read into the engine's [`OutputFormat`]: OpenAI's
//! `response_format` and Anthropic's `output_config.format`. The schema itself is checked
//! and compiled once, by the engine's request check.

use airlock_engine::OutputFormat;
use serde_json::Value;

use crate::error::ApiError;

/// OpenAI's `response_format`: `{"type": "text"}`, `{"type": "json_object"}` or
/// `{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`.
/// A schema is always enforced, `strict` or not.
pub(crate) fn openai_response_format(value: Option<Value>) -> Result<OutputFormat, ApiError> {
    const PARAM: &str = "response_format";
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(OutputFormat::Text);
    };
    let invalid = |message: &str| Err(ApiError::invalid_param(PARAM, format!("{PARAM} {message}")));
    let Some(object) = value.as_object() else {
        return invalid("must be an object");
    };
    let kind = object.get("type").and_then(Value::as_str);
    let allowed: &[&str] = match kind {
        Some("json_schema") => &["type", "json_schema"],
        _ => &["type"],
    };
    if let Some(extra) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return invalid(&format!("has an unknown field {extra:?}"));
    }
    match kind {
        Some("text") => Ok(OutputFormat::Text),
        Some("json_object") => Ok(OutputFormat::JsonObject),
        Some("json_schema") => {
            let Some(spec) = object.get("json_schema").and_then(Value::as_object) else {
                return invalid("of type json_schema needs a json_schema object");
            };
            if let Some(extra) = spec
                .keys()
                .find(|k| !["name", "schema", "strict", "description"].contains(&k.as_str()))
            {
                return invalid(&format!("json_schema has an unknown field {extra:?}"));
            }
            let Some(name) = spec.get("name").and_then(Value::as_str) else {
                return invalid("json_schema needs a name");
            };
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return invalid("json_schema name must be 1 to 64 letters, digits, _ or -");
            }
            if spec
                .get("strict")
                .is_some_and(|s| !s.is_boolean() && !s.is_null())
            {
                return invalid("json_schema strict must be a boolean");
            }
            let schema = spec.get("schema").cloned().unwrap_or(Value::Bool(true));
            Ok(OutputFormat::JsonSchema {
                schema,
                name: Some(name.to_owned()),
            })
        }
        Some(other) => invalid(&format!(
            "type {other:?} is unknown (expected text, json_object or json_schema)"
        )),
        None => invalid("needs a type"),
    }
}

/// Anthropic's `output_config`: `{"format": {"type": "json_schema", "schema": {...}}}`; its
/// `effort` is for models that think, which this server does not run.
pub(crate) fn anthropic_output_config(value: Option<Value>) -> Result<OutputFormat, ApiError> {
    const PARAM: &str = "output_config.format";
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(OutputFormat::Text);
    };
    let Some(config) = value.as_object() else {
        return Err(ApiError::invalid_param(
            "output_config",
            "output_config must be an object",
        ));
    };
    if let Some(extra) = config.keys().find(|k| k.as_str() != "format") {
        return Err(ApiError::unsupported(
            "output_config",
            format!("output_config.{extra} is not supported by this server"),
        ));
    }
    let Some(format) = config.get("format").filter(|v| !v.is_null()) else {
        return Ok(OutputFormat::Text);
    };
    let invalid = |message: &str| Err(ApiError::invalid_param(PARAM, format!("{PARAM} {message}")));
    let Some(format) = format.as_object() else {
        return invalid("must be an object");
    };
    if let Some(extra) = format
        .keys()
        .find(|k| !["type", "schema"].contains(&k.as_str()))
    {
        return invalid(&format!("has an unknown field {extra:?}"));
    }
    match format.get("type").and_then(Value::as_str) {
        Some("json_schema") => match format.get("schema") {
            Some(schema) => Ok(OutputFormat::JsonSchema {
                schema: schema.clone(),
                name: None,
            }),
            None => invalid("of type json_schema needs a schema"),
        },
        Some(other) => invalid(&format!("type {other:?} is unknown (expected json_schema)")),
        None => invalid("needs a type"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn openai_formats_read_as_the_engine_takes_them() {
        assert_eq!(openai_response_format(None).unwrap(), OutputFormat::Text);
        assert_eq!(
            openai_response_format(Some(json!({"type": "json_object"}))).unwrap(),
            OutputFormat::JsonObject
        );
        let schema = json!({"type": "object"});
        assert_eq!(
            openai_response_format(Some(json!({"type": "json_schema",
                "json_schema": {"name": "Thing", "schema": schema, "strict": true}})))
            .unwrap(),
            OutputFormat::JsonSchema {
                schema,
                name: Some("Thing".into())
            }
        );
    }

    #[test]
    fn malformed_formats_are_refused_naming_what_is_wrong() {
        for (body, says) in [
            (json!({"type": "xml"}), "\"xml\" is unknown"),
            (json!({"type": "json_schema"}), "needs a json_schema"),
            (
                json!({"type": "json_schema", "json_schema": {"schema": {}}}),
                "needs a name",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "a b"}}),
                "letters, digits",
            ),
            (json!({"type": "json_object", "extra": 1}), "\"extra\""),
            (json!("json"), "must be an object"),
        ] {
            let e = openai_response_format(Some(body.clone())).unwrap_err();
            assert!(e.message().contains(says), "{body}: {e:?}");
        }
        for (body, says) in [
            (
                json!({"format": {"type": "json_object"}}),
                "\"json_object\" is unknown",
            ),
            (json!({"format": {"type": "json_schema"}}), "needs a schema"),
            (json!({"effort": "high"}), "effort"),
        ] {
            let e = anthropic_output_config(Some(body.clone())).unwrap_err();
            assert!(e.message().contains(says), "{body}: {e:?}");
        }
    }
}
