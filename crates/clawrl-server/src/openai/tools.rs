//! `tools`, `tool_choice`, `parallel_tool_calls` and `response_format`, validated into what
//! generation follows: the tools the prompt shows, the grammar the answer must match, and the
//! functions whose calls are read back out of it.
//!
//! As vLLM does: `auto` lets the model choose and reads any well-formed call out of its text;
//! `required` and a named function constrain the answer to calls (llguidance), so their
//! arguments are valid JSON under the function's schema; `none` leaves the tools out of the
//! prompt. `response_format` constrains the text answer to JSON (an object, or a schema) when
//! no call is forced.

use clawrl_model::tools::{FunctionSpec, call_grammar};
use clawrl_model::{Grammar, Model};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};

/// One entry of `tools`: OpenAI's function tool.
#[derive(Deserialize, ToSchema)]
pub(crate) struct ApiTool {
    /// `function`.
    #[serde(rename = "type")]
    #[schema(pattern = "^function$")]
    kind: String,
    function: FunctionSpec,
}

/// `tool_choice`.
#[derive(Clone, Debug, PartialEq)]
enum ToolChoice {
    None,
    Auto,
    Required,
    Function(String),
}

/// `tool_choice` as sent: a mode, or one named function.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum ApiToolChoice {
    /// `none`, `auto` or `required`.
    Mode(ChoiceMode),
    /// `{"type": "function", "function": {"name": …}}`: the function, one of `tools`.
    Named(NamedChoice),
}

/// A `tool_choice` mode.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChoiceMode {
    /// Never call.
    None,
    /// The model chooses.
    Auto,
    /// At least one call.
    Required,
}

/// A named `tool_choice`.
#[derive(Deserialize, ToSchema)]
pub(crate) struct NamedChoice {
    /// `function`.
    #[serde(rename = "type")]
    #[schema(pattern = "^function$")]
    kind: String,
    function: ChoiceName,
}

/// The function a named `tool_choice` forces.
#[derive(Deserialize, ToSchema)]
pub(crate) struct ChoiceName {
    /// One of the tools' names.
    name: String,
}

fn tool_choice(v: Option<Value>) -> ApiResult<Option<ToolChoice>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let bad = |what: String| {
        ApiError::invalid_param(
            "tool_choice",
            format!(
                "tool_choice must be \"none\", \"auto\", \"required\" or \
                 {{\"type\": \"function\", \"function\": {{\"name\": …}}}}; got {what}"
            ),
        )
    };
    Ok(Some(
        match serde_json::from_value::<ApiToolChoice>(v.clone()) {
            Ok(ApiToolChoice::Mode(ChoiceMode::None)) => ToolChoice::None,
            Ok(ApiToolChoice::Mode(ChoiceMode::Auto)) => ToolChoice::Auto,
            Ok(ApiToolChoice::Mode(ChoiceMode::Required)) => ToolChoice::Required,
            Ok(ApiToolChoice::Named(n)) if n.kind == "function" => {
                ToolChoice::Function(n.function.name)
            }
            _ => return Err(bad(v.to_string())),
        },
    ))
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn functions(tools: &Value) -> ApiResult<Vec<FunctionSpec>> {
    let bad = |m: String| ApiError::invalid_param("tools", m);
    let list: Vec<ApiTool> = serde_json::from_value(tools.clone())
        .map_err(|e| bad(format!("tools must be a list of function tools: {e}")))?;
    let mut out: Vec<FunctionSpec> = Vec::with_capacity(list.len());
    for (i, t) in list.into_iter().enumerate() {
        if t.kind != "function" {
            return Err(bad(format!(
                "tools[{i}].type is {:?}; only \"function\" tools are supported",
                t.kind
            )));
        }
        let f = t.function;
        if !valid_name(&f.name) {
            return Err(bad(format!(
                "tools[{i}].function.name {:?} must be 1 to 64 of a-z, A-Z, 0-9, _ and -",
                f.name
            )));
        }
        if out.iter().any(|o| o.name == f.name) {
            return Err(bad(format!(
                "two tools are named {:?}; names must be unique",
                f.name
            )));
        }
        if f.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(bad(format!(
                "tools[{i}].function.parameters must be a JSON schema object"
            )));
        }
        out.push(f);
    }
    Ok(out)
}

/// `response_format.json_schema`.
#[derive(Deserialize, ToSchema)]
pub(crate) struct JsonSchemaFormat {
    /// The JSON schema the answer must match; none means any JSON value.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    schema: Option<Value>,
}

/// `response_format`: what the text answer must be.
#[derive(Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ResponseFormat {
    /// Free text.
    Text,
    /// A JSON object.
    JsonObject,
    /// JSON matching `json_schema.schema`.
    JsonSchema {
        /// The schema, and OpenAI's name for it.
        json_schema: JsonSchemaFormat,
    },
}

fn response_format(v: Option<Value>) -> ApiResult<Option<Grammar>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let f: ResponseFormat = serde_json::from_value(v).map_err(|e| {
        ApiError::invalid_param(
            "response_format",
            format!(
                "response_format must be {{\"type\": \"text\"}}, {{\"type\": \"json_object\"}} or \
                 {{\"type\": \"json_schema\", \"json_schema\": {{\"name\": …, \"schema\": …}}}}: {e}"
            ),
        )
    })?;
    Ok(match f {
        ResponseFormat::Text => None,
        ResponseFormat::JsonObject => {
            Some(Grammar::JsonSchema(serde_json::json!({"type": "object"})))
        }
        // A format without a schema is any JSON value.
        ResponseFormat::JsonSchema { json_schema } => Some(Grammar::JsonSchema(
            json_schema.schema.unwrap_or_else(|| serde_json::json!({})),
        )),
    })
}

/// What the request's tool fields come to.
#[derive(Debug, Default)]
pub struct ToolPlan {
    /// The tools the prompt shows (OpenAI's array as sent); `None` with no tools or
    /// `tool_choice: "none"`.
    pub render: Option<Value>,
    /// What the answer must match.
    pub grammar: Option<Grammar>,
    /// The functions whose calls are read out of the answer (empty: the answer is text).
    pub names: Vec<String>,
}

/// Validates the tool fields and compiles the grammar they imply for `model` (a malformed
/// schema is refused here, before anything is generated).
pub fn plan(
    model: &Model,
    tools: Option<Value>,
    choice: Option<Value>,
    parallel: Option<bool>,
    format: Option<Value>,
) -> ApiResult<ToolPlan> {
    let tools = tools.filter(|t| !t.is_null());
    let functions = tools
        .as_ref()
        .map(functions)
        .transpose()?
        .unwrap_or_default();
    let choice = tool_choice(choice)?;
    let format = response_format(format)?;
    let forced = match (&choice, functions.is_empty()) {
        (Some(ToolChoice::Required | ToolChoice::Function(_)), true) => {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "tool_choice requires tools: send the functions the model may call in `tools`",
            ));
        }
        (Some(ToolChoice::Function(n)), false) => {
            if !functions.iter().any(|f| &f.name == n) {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    format!("tool_choice names {n:?}, which is not among the tools"),
                ));
            }
            Some(call_grammar(&functions, Some(n), false))
        }
        (Some(ToolChoice::Required), false) => {
            Some(call_grammar(&functions, None, parallel.unwrap_or(true)))
        }
        _ => None,
    };
    let (forced, param) = match forced {
        Some(g) => (Some(g), "tools"),
        None => (format, "response_format"),
    };
    if let Some(g) = &forced {
        model
            .check_grammar(g)
            .map_err(|e| ApiError::invalid_param(param, e.to_string()))?;
    }
    let none = choice == Some(ToolChoice::None);
    Ok(ToolPlan {
        render: if none || functions.is_empty() {
            None
        } else {
            tools
        },
        grammar: forced,
        names: if none {
            Vec::new()
        } else {
            functions.into_iter().map(|f| f.name).collect()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tools() -> Value {
        json!([{"type": "function", "function": {
            "name": "add",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
        }}])
    }

    #[test]
    fn each_tool_choice_plans_what_it_promises() {
        let m = Model::tiny(1);
        let auto = plan(&m, Some(tools()), None, None, None).expect("auto");
        assert!(auto.render.is_some() && auto.grammar.is_none());
        assert_eq!(auto.names, ["add"]);
        let none = plan(&m, Some(tools()), Some(json!("none")), None, None).expect("none");
        assert!(none.render.is_none() && none.grammar.is_none() && none.names.is_empty());
        let named = json!({"type": "function", "function": {"name": "add"}});
        for choice in [json!("required"), named] {
            let p = plan(&m, Some(tools()), Some(choice), None, None).expect("forced");
            assert!(matches!(p.grammar, Some(Grammar::Lark(_))));
        }
        let json_answer =
            plan(&m, None, None, None, Some(json!({"type": "json_object"}))).expect("json_object");
        assert!(matches!(json_answer.grammar, Some(Grammar::JsonSchema(_))));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_the_field() {
        let m = Model::tiny(1);
        let cases = [
            (Some(tools()), Some(json!(3)), None, "tool_choice"),
            (Some(tools()), Some(json!("sometimes")), None, "tool_choice"),
            (None, Some(json!("required")), None, "tool_choice"),
            (
                Some(tools()),
                Some(json!({"type": "function", "function": {"name": "sub"}})),
                None,
                "tool_choice",
            ),
            (
                Some(json!([{"type": "custom", "custom": {}}])),
                None,
                None,
                "tools",
            ),
            (
                Some(json!([{"type": "function", "function": {"name": "a b"}}])),
                None,
                None,
                "tools",
            ),
            (None, None, Some(json!({"type": "xml"})), "response_format"),
            (
                None,
                None,
                Some(
                    json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}),
                ),
                "response_format",
            ),
        ];
        for (tools, choice, format, param) in cases {
            let e = plan(&m, tools, choice.clone(), None, format).expect_err("refused");
            assert_eq!(e.param, Some(param), "{choice:?}: {}", e.message);
        }
    }
}
