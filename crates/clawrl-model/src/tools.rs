//! Tool calling for templates that have no tools of their own (SmolLM2's ChatML among them):
//! the tools go into the system prompt, a call is a JSON object between `<tool_call>` tags,
//! a result comes back as a user turn between `<tool_response>` tags. This is the Hermes
//! format that Qwen2.5's template writes, so a model that met it in training recognises it.
//!
//! The same format is the grammar that forces a call ([`call_grammar`]) and what
//! [`parse_calls`] reads back; an earlier call is rendered exactly as it was generated, so a
//! replayed conversation re-creates the prompt the model saw.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::constrain::{Grammar, compact};
use crate::template::Message;

/// Opens a call in the model's output.
pub const CALL_OPEN: &str = "<tool_call>";
/// Closes a call.
pub const CALL_CLOSE: &str = "</tool_call>";

/// A function the model may call: OpenAI's `tools[].function`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct FunctionSpec {
    /// `[A-Za-z0-9_-]{1,64}`.
    #[cfg_attr(feature = "utoipa", schema(pattern = "^[A-Za-z0-9_-]{1,64}$"))]
    pub name: String,
    /// What it does, for the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments (an object); none means any object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<Object>))]
    pub parameters: Option<Value>,
}

/// One call the model made.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object.
    pub arguments: Value,
}

impl ToolCall {
    /// The call as the model writes it: `<tool_call>\n{"name":…,"arguments":…}\n</tool_call>`.
    pub fn render(&self) -> String {
        let body = serde_json::json!({"name": self.name, "arguments": self.arguments});
        format!("{CALL_OPEN}\n{body}\n{CALL_CLOSE}")
    }
}

/// The system prompt's tool section: each function as one JSON line, then how to call one.
fn tools_section(tools: &Value) -> String {
    let lines: Vec<String> = tools
        .as_array()
        .map(|a| a.iter().map(Value::to_string).collect())
        .unwrap_or_default();
    format!(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n\
         <tools>\n{}\n</tools>\n\n\
         For each function call, return a json object with function name and arguments within \
         {CALL_OPEN}{CALL_CLOSE} XML tags:\n{CALL_OPEN}\n\
         {{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n{CALL_CLOSE}",
        lines.join("\n")
    )
}

/// The calls of an assistant message in OpenAI's shape
/// (`[{"id", "type": "function", "function": {"name", "arguments": "<json text>"}}]`).
/// Arguments that are not JSON text are kept as a string.
pub fn calls_of(tool_calls: &Value) -> Vec<ToolCall> {
    let Some(items) = tool_calls.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|c| {
            let f = c.get("function")?;
            let name = f.get("name")?.as_str()?.to_string();
            let arguments = match f.get("arguments") {
                Some(Value::String(s)) => {
                    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
                }
                Some(v) => v.clone(),
                None => Value::Object(Default::default()),
            };
            Some(ToolCall { name, arguments })
        })
        .collect()
}

/// `messages` in the plain roles a template without tools renders: the tool section joined to
/// the system prompt (a system message added when there is none), each assistant's calls
/// appended to its text, and each run of `tool` results as one user turn.
pub fn fallback_messages(messages: &[Message], tools: Option<&Value>) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len() + 1);
    let section = tools
        .filter(|t| t.as_array().is_some_and(|a| !a.is_empty()))
        .map(tools_section);
    if let Some(section) = &section
        && messages.first().is_none_or(|m| m.role != "system")
    {
        out.push(Message::new("system", section.clone()));
    }
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" if i == 0 => {
                let text = match &section {
                    Some(s) if m.content.trim().is_empty() => s.clone(),
                    Some(s) => format!("{}\n\n{s}", m.content.trim_end()),
                    None => m.content.clone(),
                };
                out.push(Message::new("system", text));
            }
            "assistant" => {
                let mut parts: Vec<String> = Vec::new();
                if !m.content.trim().is_empty() {
                    parts.push(m.content.trim().to_string());
                }
                parts.extend(
                    m.tool_calls
                        .as_ref()
                        .map(calls_of)
                        .unwrap_or_default()
                        .iter()
                        .map(ToolCall::render),
                );
                out.push(Message::new("assistant", parts.join("\n")));
            }
            "tool" => {
                let response = format!("<tool_response>\n{}\n</tool_response>", m.content.trim());
                match out.last_mut() {
                    Some(prev)
                        if prev.role == "user" && prev.content.ends_with("</tool_response>") =>
                    {
                        prev.content = format!("{}\n{response}", prev.content);
                    }
                    _ => out.push(Message::new("user", response)),
                }
            }
            _ => out.push(Message::new(m.role.clone(), m.content.clone())),
        }
    }
    out
}

/// What a generated answer holds: the text before any call, and the calls. `None` when the
/// text has a `<tool_call>` that is not a well-formed call to one of `names` (the answer is
/// then plain text). Each call's JSON is read as one value, so a string argument may hold
/// `</tool_call>` itself (a shell command may).
pub fn parse_calls(text: &str, names: &[&str]) -> Option<(String, Vec<ToolCall>)> {
    let first = text.find(CALL_OPEN)?;
    let mut calls = Vec::new();
    let mut rest = &text[first..];
    while let Some(start) = rest.find(CALL_OPEN) {
        let after = &rest[start + CALL_OPEN.len()..];
        let mut values = serde_json::Deserializer::from_str(after).into_iter::<Value>();
        let body = values.next()?.ok()?;
        let tail = after[values.byte_offset()..].trim_start();
        let tail = tail.strip_prefix(CALL_CLOSE)?;
        let name = body.get("name")?.as_str()?;
        if !names.contains(&name) {
            return None;
        }
        let arguments = body.get("arguments").cloned().unwrap_or(Value::Null);
        if !arguments.is_object() {
            return None;
        }
        calls.push(ToolCall {
            name: name.to_string(),
            arguments,
        });
        rest = tail;
    }
    Some((text[..first].trim().to_string(), calls))
}

/// The grammar of an answer that is only calls, in the format [`ToolCall::render`] writes:
/// to `only` when given, else to any of `functions`; several, one per line, when `parallel`.
/// Each call's arguments follow its function's parameter schema.
pub fn call_grammar(functions: &[FunctionSpec], only: Option<&str>, parallel: bool) -> Grammar {
    let bodies: Vec<String> = functions
        .iter()
        .filter(|f| only.is_none_or(|n| n == f.name))
        .map(|f| {
            let params = f
                .parameters
                .clone()
                .unwrap_or_else(|| serde_json::json!({"type": "object"}));
            // The name is a literal; names are [A-Za-z0-9_-], so nothing needs escaping.
            format!(
                "\"{{\\\"name\\\":\\\"{}\\\",\\\"arguments\\\":\" %json {} \"}}\"",
                f.name,
                compact(&params)
            )
        })
        .collect();
    let calls = if parallel {
        "call (\"\\n\" call)*"
    } else {
        "call"
    };
    Grammar::Lark(format!(
        "start: {calls}\ncall: \"{CALL_OPEN}\\n\" body \"\\n{CALL_CLOSE}\"\nbody: {}\n",
        bodies.join(" | ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{CHATML, ChatTemplate};
    use crate::{GenerateParams, Model, Sampling};
    use serde_json::json;

    #[test]
    fn a_template_without_tools_gets_them_in_the_system_prompt() {
        let t = ChatTemplate::new(CHATML, None, None).expect("compiles");
        assert!(!t.renders_tools());
        let tools = json!([{"type": "function", "function": {"name": "calc"}}]);
        let s = t
            .render(
                &fallback_messages(&[Message::user("hi")], Some(&tools)),
                None,
                true,
            )
            .expect("renders");
        assert!(s.starts_with("<|im_start|>system\n# Tools"), "{s}");
        assert!(
            s.contains(r#"{"type":"function","function":{"name":"calc"}}"#),
            "{s}"
        );
    }

    fn add() -> FunctionSpec {
        FunctionSpec {
            name: "add".into(),
            description: Some("Adds two integers".into()),
            parameters: Some(json!({
                "type": "object",
                "properties": {
                    "a": {"type": "integer", "minimum": 0, "maximum": 99},
                    "b": {"type": "integer", "minimum": 0, "maximum": 99},
                },
                "required": ["a", "b"],
                "additionalProperties": false,
            })),
        }
    }

    #[test]
    fn tools_calls_and_results_are_rendered_in_plain_roles() {
        let tools = json!([{"type": "function", "function": add()}]);
        let call = json!([{"id": "call_1", "type": "function",
                           "function": {"name": "add", "arguments": "{\"a\":2,\"b\":3}"}}]);
        let messages = [
            Message::user("2+3?"),
            Message {
                tool_calls: Some(call),
                ..Message::new("assistant", "")
            },
            Message {
                tool_call_id: Some("call_1".into()),
                ..Message::new("tool", "5")
            },
        ];
        let out = fallback_messages(&messages, Some(&tools));
        let roles: Vec<&str> = out.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(
            out[0].content.contains(r#""name":"add""#),
            "{}",
            out[0].content
        );
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\":\"add\",\"arguments\":{\"a\":2,\"b\":3}}\n</tool_call>"
        );
        assert_eq!(out[3].content, "<tool_response>\n5\n</tool_response>");
        // No tools: the messages pass through.
        let plain = fallback_messages(&[Message::user("hi")], None);
        assert_eq!(plain, [Message::user("hi")]);
    }

    #[test]
    fn calls_are_read_back_and_malformed_ones_are_text() {
        let call = ToolCall {
            name: "add".into(),
            arguments: json!({"a": 1, "b": 2}),
        };
        let text = format!("Let me add.\n{}", call.render());
        assert_eq!(
            parse_calls(&text, &["add"]),
            Some(("Let me add.".to_string(), vec![call.clone()]))
        );
        assert_eq!(parse_calls("no calls here", &["add"]), None);
        assert_eq!(parse_calls(&call.render(), &["sub"]), None);
        assert_eq!(parse_calls("<tool_call>\n{\"name\":", &["add"]), None);
        // The closing tag inside a string argument is the argument's.
        let odd = ToolCall {
            name: "add".into(),
            arguments: json!({"a": "x</tool_call>y"}),
        };
        assert_eq!(
            parse_calls(&odd.render(), &["add"]),
            Some((String::new(), vec![odd]))
        );
        assert_eq!(
            parse_calls(
                "<tool_call>{\"name\":\"add\",\"arguments\":{}} tail",
                &["add"]
            ),
            None
        );
    }

    #[test]
    fn a_forced_call_is_well_formed_even_from_a_random_model() {
        let model = Model::tiny(3);
        let grammar = call_grammar(&[add()], Some("add"), false);
        let prompt = model
            .chat_prompt(&[Message::user("2+3?")], None)
            .expect("prompt");
        for seed in 0..3 {
            let params = GenerateParams {
                max_tokens: 200,
                sampling: Sampling {
                    seed: Some(seed),
                    ..Sampling::default()
                },
                grammar: Some(grammar.clone()),
                ..GenerateParams::default()
            };
            let g = model
                .generate(&prompt, &params, |_, _| std::ops::ControlFlow::Continue(()))
                .expect("generates");
            let (content, calls) = parse_calls(&g.text, &["add"]).expect(&g.text);
            assert_eq!(content, "");
            assert_eq!(calls.len(), 1);
            assert!(calls[0].arguments["a"].is_i64() && calls[0].arguments["b"].is_i64());
        }
    }
}
