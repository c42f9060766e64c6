//! The OpenAI-compatible API (DESIGN.md §4): `/v1/models` and `/v1/chat/completions`, streamed
//! (a chunk per token, then `[DONE]`) or not. Every answered turn is recorded — token ids and
//! log-probs exactly as generated — before the reply completes.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use clawrl_model::{FinishReason, GenerateParams, Generation, Message, Sampling, TokenInfo};
use clawrl_store::{NewTurn, NextKind, TurnType};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, info, info_span};

use crate::error::{ApiError, ApiJson, ApiResult};
use crate::state::{Counters, Event, Shared};

/// `GET /v1/models`.
pub async fn models(State(s): State<Shared>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": s.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "clawrl",
        }]
    }))
}

/// Message content: a string, or OpenAI's list of parts (text parts are joined).
#[derive(Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct ApiMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    tool_calls: Option<Value>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// The request body; fields OpenAI defines that do not apply here are accepted and ignored.
#[derive(Deserialize)]
pub struct ChatRequest {
    messages: Vec<ApiMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    logprobs: Option<bool>,
    #[serde(default)]
    top_logprobs: Option<u32>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    session_id: Option<String>,
    #[serde(default)]
    turn_type: Option<String>,
    #[serde(default)]
    session_done: Option<bool>,
}

/// A validated request, ready to generate.
struct Prepared {
    messages: Vec<Message>,
    prompt: Vec<u32>,
    params: GenerateParams,
    logprobs: bool,
    session_id: String,
    /// The client named no session: it is its own one-turn session.
    anonymous: bool,
    turn_type: TurnType,
    session_done: bool,
    /// s_{t+1} of the session's previous main turn: the content after its last answer.
    next_state: Option<(NextKind, String)>,
    include_usage: bool,
    stream: bool,
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

/// The next state a request carries for the session's previous answer: the user and tool
/// messages after the last assistant message.
fn next_state_of(messages: &[Message]) -> Option<(NextKind, String)> {
    let last_assistant = messages.iter().rposition(|m| m.role == "assistant")?;
    let after = &messages[last_assistant + 1..];
    if after.is_empty() {
        return None;
    }
    let kind = if after.iter().any(|m| m.role == "user") {
        NextKind::Reply
    } else {
        NextKind::Tool
    };
    let text = after
        .iter()
        .map(|m| m.content.as_str())
        .collect::<Vec<_>>()
        .join("\n\n");
    Some((kind, text))
}

fn new_session_id() -> String {
    format!("anon-{:016x}", rand::random::<u64>())
}

fn prepare(s: &Shared, headers: &HeaderMap, req: ChatRequest) -> ApiResult<Prepared> {
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
    let messages = req
        .messages
        .into_iter()
        .map(convert)
        .collect::<ApiResult<Vec<_>>>()?;
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("temperature must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = req.top_p.unwrap_or(1.0);
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
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .map_or(512, |n| n as usize);
    if max_tokens == 0 || max_tokens > s.limits.max_new_tokens {
        return Err(ApiError::invalid_param(
            "max_tokens",
            format!(
                "max_tokens must be 1..={}, got {max_tokens}",
                s.limits.max_new_tokens
            ),
        ));
    }
    let stop = match req.stop {
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
    let named = req
        .session_id
        .or_else(|| header(headers, "x-session-id").map(str::to_string));
    if let Some(id) = &named
        && (id.is_empty() || id.len() > 200)
    {
        return Err(ApiError::invalid_param(
            "session_id",
            "session_id must be 1 to 200 characters",
        ));
    }
    let tools = req.tools.filter(|t| !t.is_null());
    if tools.as_ref().is_some_and(|t| !t.is_array()) {
        return Err(ApiError::invalid_param("tools", "tools must be an array"));
    }
    let prompt = s
        .model
        .chat_prompt(&messages, tools.as_ref())
        .map_err(|e| {
            ApiError::invalid_param("messages", format!("the chat template failed: {e}"))
        })?;
    // The prompt must leave room for one token; generation stops at the window's end.
    s.model
        .check_context(prompt.len(), 1)
        .map_err(|e| ApiError::invalid_param("messages", e.to_string()))?;
    let next_state = next_state_of(&messages);
    Ok(Prepared {
        prompt,
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
        },
        logprobs,
        anonymous: named.is_none(),
        session_id: named.unwrap_or_else(new_session_id),
        turn_type,
        session_done,
        next_state,
        messages,
        include_usage: req.stream_options.unwrap_or_default().include_usage,
        stream: req.stream,
    })
}

fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

/// OpenAI's per-token log-prob entry.
fn token_logprob(s: &Shared, t: &TokenInfo) -> Value {
    let tok = &s.model.tokenizer;
    let piece = |id: u32| String::from_utf8_lossy(&tok.token_bytes(id)).into_owned();
    json!({
        "token": piece(t.id),
        "logprob": t.logprob,
        "bytes": tok.token_bytes(t.id),
        "top_logprobs": t.top.iter().map(|&(id, lp)| json!({
            "token": piece(id),
            "logprob": lp,
            "bytes": tok.token_bytes(id),
        })).collect::<Vec<_>>(),
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Stores the next state the request carries for the session's previous main turn, before
/// generating: the user's reply exists whether or not this answer completes.
async fn pair(s: &Shared, p: &Prepared) -> ApiResult<()> {
    s.store.touch_session(&p.session_id).await?;
    let (TurnType::Main, Some((kind, text))) = (p.turn_type, &p.next_state) else {
        return Ok(());
    };
    if let Some((turn_id, _)) = s.store.pair_next_state(&p.session_id, *kind, text).await? {
        s.emit(Event::NextState {
            turn_id,
            kind: *kind,
        });
        s.judge_wake.notify_one();
    }
    Ok(())
}

/// Records a finished generation, then tells the loop.
async fn record(s: &Shared, p: &Prepared, g: &Generation, version: i64) -> ApiResult<i64> {
    // Top-k as generated when the client asked for it; the judge re-scores when needed.
    let turn = NewTurn {
        session_id: p.session_id.clone(),
        turn_type: p.turn_type,
        messages: serde_json::to_value(&p.messages)
            .map_err(|e| ApiError::internal(e.to_string()))?,
        prompt_ids: p.prompt.clone(),
        response: g.text.clone(),
        response_ids: g.token_ids(),
        logprobs: g.tokens.iter().map(|t| t.logprob).collect(),
        top_logprobs: g.tokens.iter().map(|t| t.top.clone()).collect(),
        policy_version: version,
        finish_reason: finish_reason(g.finish_reason).into(),
    };
    let turn_id = s.store.record_turn(&turn).await?;
    if p.session_done || p.anonymous {
        s.store.end_session(&p.session_id).await?;
    }
    Counters::add(&s.counters.completions, 1);
    Counters::add(&s.counters.tokens, g.tokens.len() as u64);
    s.emit(Event::Turn {
        turn_id,
        session_id: p.session_id.clone(),
        turn_type: p.turn_type,
        policy_version: version,
    });
    info!(turn_id, tokens = g.tokens.len(), "recorded");
    Ok(turn_id)
}

/// One streamed token: its text and, when asked, its log-probs.
struct Piece {
    text: String,
    info: TokenInfo,
}

/// Runs generation on a blocking thread; pieces go to `tx` as they come (`None`: no stream).
fn spawn_generation(
    s: &Shared,
    p: &Prepared,
    tx: Option<mpsc::Sender<Piece>>,
) -> (
    i64,
    tokio::task::JoinHandle<Result<Generation, clawrl_model::Error>>,
) {
    let live = s.live();
    let (model, prompt, params) = (s.model.clone(), p.prompt.clone(), p.params.clone());
    let adapter = live.adapter.clone();
    // Training pauses until the first token is out: time to first token is what a user feels.
    let mut prefill = Some(s.gate.hold());
    let handle = tokio::task::spawn_blocking(move || {
        model
            .policy(adapter.as_deref())
            .generate(&prompt, &params, |info, text| {
                prefill = None;
                match &tx {
                    // A closed channel means the client went away: stop generating.
                    Some(tx) => match tx.blocking_send(Piece {
                        text: text.to_string(),
                        info: info.clone(),
                    }) {
                        Ok(()) => ControlFlow::Continue(()),
                        Err(_) => ControlFlow::Break(()),
                    },
                    None => ControlFlow::Continue(()),
                }
            })
    });
    (live.version, handle)
}

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(s): State<Shared>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> ApiResult<Response> {
    let p = prepare(&s, &headers, req)?;
    pair(&s, &p).await?;
    let span = info_span!("chat", session = %p.session_id, stream = p.stream, prompt_tokens = p.prompt.len());
    if p.stream {
        return Ok(stream(s, p).instrument(span).await);
    }
    async move {
        let (version, handle) = spawn_generation(&s, &p, None);
        let g = handle
            .await
            .map_err(|e| ApiError::internal(format!("generation thread: {e}")))?
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let turn_id = record(&s, &p, &g, version).await?;
        let logprobs = p.logprobs.then(|| {
            json!({"content": g.tokens.iter().map(|t| token_logprob(&s, t)).collect::<Vec<_>>()})
        });
        let body = json!({
            "id": format!("chatcmpl-{turn_id}"),
            "object": "chat.completion",
            "created": unix_now(),
            "model": s.model_id,
            "system_fingerprint": format!("clawrl-v{version}"),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": g.text},
                "logprobs": logprobs,
                "finish_reason": finish_reason(g.finish_reason),
            }],
            "usage": usage(&p, &g),
            "session_id": p.session_id,
            "turn_id": turn_id,
            "turn_type": p.turn_type,
            "policy_version": version,
        });
        Ok(with_turn_headers(
            Json(body).into_response(),
            &p.session_id,
            turn_id,
            version,
        ))
    }
    .instrument(span)
    .await
}

fn usage(p: &Prepared, g: &Generation) -> Value {
    json!({
        "prompt_tokens": p.prompt.len(),
        "completion_tokens": g.tokens.len(),
        "total_tokens": p.prompt.len() + g.tokens.len(),
    })
}

fn with_turn_headers(mut r: Response, session: &str, turn_id: i64, version: i64) -> Response {
    let h = r.headers_mut();
    if let Ok(v) = session.parse() {
        h.insert("x-session-id", v);
    }
    h.insert("x-turn-id", turn_id.into());
    h.insert("x-policy-version", version.into());
    r
}

type SseItem = Result<SseEvent, Infallible>;

fn sse_json(v: &Value) -> SseItem {
    Ok(SseEvent::default().data(v.to_string()))
}

/// Streams the reply: a chunk per token as it is generated; after the last token the turn is
/// recorded, then the finish chunk (and usage when asked), then `[DONE]`.
async fn stream(s: Shared, p: Prepared) -> Response {
    let (piece_tx, mut pieces) = mpsc::channel::<Piece>(64);
    let (out_tx, out_rx) = mpsc::channel::<SseItem>(64);
    let (version, handle) = spawn_generation(&s, &p, Some(piece_tx));
    let created = unix_now();
    let id = format!("chatcmpl-{}", rand::random::<u32>());
    let session = p.session_id.clone();
    let chunk = {
        let (id, model) = (id.clone(), s.model_id.clone());
        move |delta: Value, logprobs: Option<Value>, finish: Option<&str>| {
            json!({
                "id": id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": format!("clawrl-v{version}"),
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            })
        }
    };
    let task = async move {
        if out_tx
            .send(sse_json(&chunk(
                json!({"role": "assistant", "content": ""}),
                None,
                None,
            )))
            .await
            .is_err()
        {
            return;
        }
        while let Some(piece) = pieces.recv().await {
            let lp = p
                .logprobs
                .then(|| json!({"content": [token_logprob(&s, &piece.info)]}));
            if out_tx
                .send(sse_json(&chunk(json!({"content": piece.text}), lp, None)))
                .await
                .is_err()
            {
                // The client left; dropping `pieces` stops the generation.
                return;
            }
        }
        let result = match handle.await {
            Ok(Ok(g)) if g.finish_reason != FinishReason::Cancelled => record(&s, &p, &g, version)
                .await
                .map(|turn_id| (g, turn_id)),
            Ok(Ok(_)) => return,
            Ok(Err(e)) => Err(ApiError::invalid(e.to_string())),
            Err(e) => Err(ApiError::internal(format!("generation thread: {e}"))),
        };
        match result {
            Ok((g, turn_id)) => {
                let mut last = chunk(json!({}), None, Some(finish_reason(g.finish_reason)));
                last["turn_id"] = turn_id.into();
                last["session_id"] = p.session_id.clone().into();
                last["policy_version"] = version.into();
                let _ = out_tx.send(sse_json(&last)).await;
                if p.include_usage {
                    let mut u = chunk(json!({}), None, None);
                    u["choices"] = json!([]);
                    u["usage"] = usage(&p, &g);
                    let _ = out_tx.send(sse_json(&u)).await;
                }
            }
            Err(e) => {
                Counters::add(&s.counters.errors, 1);
                let _ = out_tx.send(sse_json(&e.body())).await;
            }
        }
        let _ = out_tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    };
    tokio::spawn(task.in_current_span());
    let mut r = Sse::new(ReceiverStream::new(out_rx))
        .keep_alive(KeepAlive::default())
        .into_response();
    if let Ok(v) = session.parse() {
        r.headers_mut().insert("x-session-id", v);
    }
    r
}
