//! The chat completion request: OpenAI's body, with the session fields and headers of
//! DESIGN.md §4, validated into what generation and the loop need.

use axum::http::HeaderMap;
use clawrl_loop::serve::{Request, drop_oldest};
use clawrl_model::{GenerateParams, Message, Sampling};
use clawrl_store::TurnType;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// Message content: a string, or OpenAI's list of parts (text parts are joined).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

/// A content part; only text parts are supported.
#[derive(Deserialize, ToSchema)]
struct Part {
    /// `text`.
    #[serde(rename = "type")]
    #[schema(pattern = "^text$")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// A message of the conversation (OpenAI's).
#[derive(Deserialize, ToSchema)]
struct ApiMessage {
    /// `system`, `developer` (read as system), `user`, `assistant` or `tool`.
    #[schema(pattern = "^(system|developer|user|assistant|tool)$")]
    role: String,
    #[serde(default)]
    content: Option<Content>,
    /// An assistant message's calls, as OpenAI returned them.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    tool_calls: Option<Value>,
    /// The call a `tool` message answers.
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// One stop string or up to 4, none empty.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Deserialize, Default, ToSchema)]
struct StreamOptions {
    /// Send the usage in a last chunk.
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The request body: OpenAI's chat completion request with the session fields of DESIGN.md
/// §4 (each also a header: `X-Session-Id`, `X-Turn-Type`, `X-Session-Done`,
/// `X-Session-Outcome`, `X-Group-Id`). Fields OpenAI defines that do not apply here
/// (`frequency_penalty`, `service_tier`, …) are accepted and ignored; `null` is absent.
#[derive(Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The conversation so far (at most the server's limit, 512 by default).
    #[schema(min_items = 1)]
    messages: Vec<ApiMessage>,
    /// Stream the answer as server-sent events, a chunk per token, then `[DONE]`.
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    /// Most new tokens; above the room left in the context it is lowered to it (the usage
    /// says so).
    #[serde(default, deserialize_with = "crate::integer::optional")]
    #[schema(minimum = 1)]
    max_tokens: Option<u32>,
    /// The same as `max_tokens`, which it overrides.
    #[serde(default, deserialize_with = "crate::integer::optional")]
    #[schema(minimum = 1)]
    max_completion_tokens: Option<u32>,
    /// Default: the model's recommended temperature (`/v1/models`, `sampling_defaults`).
    #[serde(default)]
    #[schema(minimum = 0.0, maximum = 2.0)]
    temperature: Option<f32>,
    /// Default: the model's recommended top-p.
    #[serde(default)]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    top_p: Option<f32>,
    #[serde(default, deserialize_with = "crate::integer::optional")]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    logprobs: Option<bool>,
    /// Alternatives per token, with `logprobs: true`.
    #[serde(default, deserialize_with = "crate::integer::optional")]
    #[schema(maximum = 20)]
    top_logprobs: Option<u32>,
    /// OpenAI's function tools: `{"type": "function", "function": {"name", "description",
    /// "parameters"}}`, names unique, 1 to 64 of `a-zA-Z0-9_-`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<super::tools::ApiTool>>)]
    tools: Option<Value>,
    /// `none`, `auto`, `required`, or `{"type": "function", "function": {"name"}}` naming one
    /// of `tools`.
    #[serde(default)]
    #[schema(value_type = Option<super::tools::ApiToolChoice>)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    /// `{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema",
    /// "json_schema": {"name", "schema"}}`: the answer is constrained to it.
    #[serde(default)]
    #[schema(value_type = Option<super::tools::ResponseFormat>)]
    response_format: Option<Value>,
    /// The deprecated form of `tools`; refused unless null.
    #[serde(default)]
    #[schema(value_type = Option<()>, deprecated)]
    functions: Option<Value>,
    /// Only 1.
    #[serde(default, deserialize_with = "crate::integer::optional")]
    #[schema(minimum = 1, maximum = 1)]
    n: Option<u32>,
    /// The session this turn belongs to (1 to 200 characters). Without it: the session the
    /// replayed history continues, else `metadata.session_id`, `prompt_cache_key`, `user`,
    /// else a new one.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    session_id: Option<String>,
    /// `main` (trained on) or `side` (served and recorded only).
    #[serde(default)]
    #[schema(value_type = Option<TurnType>)]
    turn_type: Option<String>,
    /// This is the session's last turn: it is judged without waiting for a next state.
    #[serde(default)]
    session_done: Option<bool>,
    /// The outcome reward o of a rollout, with `session_done` (DESIGN.md §8).
    #[serde(default)]
    outcome: Option<f64>,
    /// The group of rollouts (of one task) the session belongs to, 1 to 200 characters
    /// (DESIGN.md §8).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    group_id: Option<String>,
    #[serde(default)]
    prompt_cache_key: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Map<String, Value>>,
}

/// A validated request, ready to generate.
pub struct Prepared {
    /// What the loop records with the answer (session, turn type, s_t, tools, prompt ids).
    pub request: Request,
    /// The recorded turn this request's replayed history continues, when that named its
    /// session.
    pub continued: Option<i64>,
    /// Generation settings.
    pub params: GenerateParams,
    /// The functions whose calls are read out of the answer (empty: the answer is text).
    pub tool_names: Vec<String>,
    /// Return log-probs.
    pub logprobs: bool,
    /// Send usage in a last stream chunk.
    pub include_usage: bool,
    /// Stream the answer.
    pub stream: bool,
    /// `max_tokens` was above the room left in the context (or the server's limit) and was
    /// lowered to `params.max_tokens`.
    pub clamped: bool,
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn parse_bool(param: &'static str, v: &str) -> ApiResult<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" | "" => Ok(false),
        _ => Err(ApiError::invalid_param(
            param,
            format!("{param} must be true or false, got {v:?}"),
        )),
    }
}

fn convert(m: ApiMessage) -> ApiResult<Message> {
    let role = match m.role.as_str() {
        "developer" => "system".to_string(),
        "system" | "user" | "assistant" | "tool" => m.role,
        other => {
            return Err(ApiError::invalid_param(
                "messages",
                format!(
                    "unknown message role {other:?} (system, developer, user, assistant or tool)"
                ),
            ));
        }
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for p in parts {
                if p.kind != "text" {
                    return Err(ApiError::invalid_param(
                        "messages",
                        format!(
                            "content parts of type {:?} are not supported (text only)",
                            p.kind
                        ),
                    ));
                }
                text.push_str(&p.text.unwrap_or_default());
            }
            text
        }
    };
    Ok(Message {
        role,
        content,
        tool_calls: m.tool_calls,
        tool_call_id: m.tool_call_id,
        name: m.name,
    })
}

fn new_session_id() -> String {
    format!("anon-{:016x}", rand::random::<u64>())
}

/// A rollout's extra fields (DESIGN.md §8), body first, then headers: the outcome reward o
/// (`outcome` or `X-Session-Outcome`, a finite number, only with `session_done`) and the group
/// (`group_id` or `X-Group-Id`, 1 to 200 characters).
fn rollout_fields(
    req: &mut ChatRequest,
    headers: &HeaderMap,
    session_done: bool,
) -> ApiResult<(Option<f64>, Option<String>)> {
    let outcome = match (req.outcome, header(headers, "x-session-outcome")) {
        (Some(o), _) => Some(o),
        (None, Some(v)) => Some(v.trim().parse::<f64>().map_err(|_| {
            ApiError::invalid_param("outcome", format!("outcome must be a number, got {v:?}"))
        })?),
        (None, None) => None,
    };
    if let Some(o) = outcome {
        if !o.is_finite() {
            return Err(ApiError::invalid_param(
                "outcome",
                "outcome must be a finite number",
            ));
        }
        if !session_done {
            return Err(ApiError::invalid_param(
                "outcome",
                "outcome is the reward of a finished rollout: send it with session_done: true",
            ));
        }
    }
    let group_id = req
        .group_id
        .take()
        .or_else(|| header(headers, "x-group-id").map(str::to_string));
    if group_id.as_deref().is_some_and(|g| !fits(g)) {
        return Err(ApiError::invalid_param(
            "group_id",
            "group_id must be 1 to 200 characters",
        ));
    }
    Ok((outcome, group_id))
}

/// Whether a client-chosen id has 1 to 200 characters.
fn fits(id: &str) -> bool {
    !id.is_empty() && id.chars().count() <= 200
}

/// A client-chosen session id: 1 to 200 characters.
fn session_name(id: String) -> ApiResult<String> {
    if !fits(&id) {
        return Err(ApiError::invalid_param(
            "session_id",
            "session_id must be 1 to 200 characters",
        ));
    }
    Ok(id)
}

/// The request's session (DESIGN.md §4), most explicit first: `session_id` or
/// `X-Session-Id`; `metadata.session_id`; `prompt_cache_key`; then the session whose recorded
/// turn the messages continue (clients that replay the history and send no id), with that
/// turn; then `user`; else a new session. The optional OpenAI fields name a session only when
/// they are 1 to 200 characters (OpenAI accepts others, so they are not refused).
async fn resolve_session(
    s: &AppState,
    headers: &HeaderMap,
    req: &mut ChatRequest,
    messages: &[Message],
) -> ApiResult<(String, Option<i64>)> {
    let explicit = req
        .session_id
        .take()
        .or_else(|| header(headers, "x-session-id").map(str::to_string));
    if let Some(id) = explicit {
        return Ok((session_name(id)?, None));
    }
    let usable = |id: Option<String>| id.filter(|i| fits(i));
    let metadata = req
        .metadata
        .as_ref()
        .and_then(|m| m.get("session_id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(id) = usable(metadata).or_else(|| usable(req.prompt_cache_key.take())) {
        return Ok((id, None));
    }
    if let Some((turn, id)) = clawrl_loop::pair::continued_turn(&s.lp, messages).await? {
        return Ok((id, Some(turn)));
    }
    Ok((usable(req.user.take()).unwrap_or_else(new_session_id), None))
}

/// The prompt of `messages`, and how many of them the opt-in policy dropped so that it leaves
/// room for one token; without the policy, OpenAI's `context_length_exceeded`.
fn fit(s: &AppState, messages: &[Message], tools: Option<&Value>) -> ApiResult<(Vec<u32>, usize)> {
    let model = &s.lp.model;
    let context = model.config.context_length;
    let render = |m: &[Message]| {
        model.chat_prompt(m, tools).map_err(|e| {
            ApiError::invalid_param("messages", format!("the chat template failed: {e}"))
        })
    };
    let prompt = render(messages)?;
    if prompt.len() < context {
        return Ok((prompt, 0));
    }
    let refused = ApiError::context_length_exceeded(context, prompt.len());
    if !s.limits.drop_oldest_messages {
        return Err(refused);
    }
    // Never the last user message, nor what follows it.
    let lead = messages.iter().take_while(|m| m.role == "system").count();
    let keep_from = messages
        .iter()
        .rposition(|m| m.role == "user")
        .unwrap_or(messages.len().saturating_sub(1));
    for n in 1..=keep_from.saturating_sub(lead) {
        let seen = drop_oldest(messages, n);
        // A template that insists on alternating roles may refuse a cut: try the next one.
        let Ok(prompt) = render(&seen) else { continue };
        if prompt.len() < context {
            return Ok((prompt, messages.len() - seen.len()));
        }
    }
    Err(refused)
}

/// Validates a request into what generation and the loop need; `key_id` is the caller's.
pub async fn prepare(
    s: &AppState,
    headers: &HeaderMap,
    mut req: ChatRequest,
    key_id: Option<i64>,
) -> ApiResult<Prepared> {
    let session = req
        .session_id
        .clone()
        .or_else(|| header(headers, "x-session-id").map(str::to_string));
    let mut p = validated(s, headers, &mut req)
        .await
        .map_err(|e| e.in_session(session.as_deref()))?;
    p.request.key_id = key_id;
    Ok(p)
}

async fn validated(
    s: &AppState,
    headers: &HeaderMap,
    req: &mut ChatRequest,
) -> ApiResult<Prepared> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages must not be empty",
        ));
    }
    if req.messages.len() > s.limits.max_messages {
        return Err(ApiError::invalid_param(
            "messages",
            format!("at most {} messages per request", s.limits.max_messages),
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid_param("n", "only n = 1 is supported"));
    }
    let messages = std::mem::take(&mut req.messages)
        .into_iter()
        .map(convert)
        .collect::<ApiResult<Vec<_>>>()?;
    // A request that names no sampling gets the model's recommended one.
    let defaults = s.lp.model.sampling;
    let temperature = req.temperature.unwrap_or(defaults.temperature as f32);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("temperature must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = req.top_p.unwrap_or(defaults.top_p as f32);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid_param(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let logprobs = req.logprobs.unwrap_or(false);
    let top_logprobs = req.top_logprobs.unwrap_or(0) as usize;
    if top_logprobs > clawrl_model::MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid_param(
            "top_logprobs",
            format!(
                "top_logprobs must be at most {}",
                clawrl_model::MAX_TOP_LOGPROBS
            ),
        ));
    }
    if top_logprobs > 0 && !logprobs {
        return Err(ApiError::invalid_param(
            "top_logprobs",
            "top_logprobs needs logprobs: true",
        ));
    }
    let requested = req.max_completion_tokens.or(req.max_tokens);
    if requested == Some(0) {
        return Err(ApiError::invalid_param(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let stop = match req.stop.take() {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "stop",
            "stop takes up to 4 non-empty strings",
        ));
    }
    let turn_type = match req.turn_type.as_deref().or(header(headers, "x-turn-type")) {
        None => TurnType::Main,
        Some(t) => t
            .parse()
            .map_err(|e: String| ApiError::invalid_param("turn_type", e))?,
    };
    let session_done = match (req.session_done, header(headers, "x-session-done")) {
        (Some(b), _) => b,
        (None, Some(v)) => parse_bool("session_done", v)?,
        (None, None) => false,
    };
    let (outcome, group_id) = rollout_fields(req, headers, session_done)?;
    if req.functions.take().is_some_and(|f| !f.is_null()) {
        return Err(ApiError::invalid_param(
            "functions",
            "functions is deprecated and not supported: send them as tools \
             ([{\"type\": \"function\", \"function\": {…}}])",
        ));
    }
    let plan = super::tools::plan(
        &s.lp.model,
        req.tools.take(),
        req.tool_choice.take(),
        req.parallel_tool_calls,
        req.response_format.take(),
    )?;
    let (session_id, continued) = resolve_session(s, headers, req, &messages).await?;
    let (prompt, dropped) =
        fit(s, &messages, plan.render.as_ref()).map_err(|e| e.in_session(Some(&session_id)))?;
    // Forgiving as OpenAI is: a completion longer than what fits is cut to the room left.
    let room = s.lp.model.config.context_length - prompt.len();
    let cap = room.min(s.limits.max_new_tokens);
    let max_tokens = requested.map_or(512, |n| n as usize).min(cap);
    let clamped = requested.is_some_and(|n| n as usize > cap);
    Ok(Prepared {
        params: GenerateParams {
            max_tokens,
            sampling: Sampling {
                temperature,
                top_p,
                seed: req.seed,
            },
            stop,
            top_logprobs: if logprobs { top_logprobs } else { 0 },
            ignore_eos: false,
            grammar: plan.grammar,
        },
        tool_names: plan.names,
        logprobs,
        request: Request {
            session_id,
            turn_type,
            messages,
            dropped,
            tools: plan.render,
            prompt,
            ends_session: session_done,
            outcome,
            group_id,
            key_id: None,
        },
        continued,
        include_usage: req
            .stream_options
            .take()
            .unwrap_or_default()
            .include_usage
            .unwrap_or(false),
        stream: req.stream.unwrap_or(false),
        clamped,
    })
}
