//! The OpenAI-compatible API (DESIGN.md §4): `/v1/models` and `/v1/chat/completions`, streamed
//! (a chunk per token, then `[DONE]`) or not. Every answered turn is recorded — token ids and
//! log-probs exactly as generated — before the reply completes.

mod request;
mod stream;
mod tools;

use std::ops::ControlFlow;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use clawrl_loop::serve::{self, Reply};
use clawrl_model::{Generation, TokenInfo};
use serde_json::{Value, json};
use tracing::{Instrument, info_span};

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiResult, ErrorBody};
use crate::state::{AppState, Shared};

pub use request::ChatRequest;
use request::{Prepared, prepare};

/// `GET /v1/models`, with the context window and the output limit so that clients can size
/// their requests (`context_length` as OpenRouter names it, `max_model_len` as vLLM does), and
/// the sampling used when a request names none.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    summary = "The served model, its context window, output limit and sampling defaults.",
    responses((status = 200, description = "OpenAI's model list, one model.", body = Object)),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn models(State(s): State<Shared>) -> Json<Value> {
    let context = s.lp.model.config.context_length;
    Json(json!({
        "object": "list",
        "data": [{
            "id": s.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "clawrl",
            "context_length": context,
            "max_model_len": context,
            "max_output_tokens": s.limits.max_new_tokens.min(context),
            "sampling_defaults": s.lp.model.sampling,
        }]
    }))
}

/// OpenAI's per-token log-prob entry.
fn token_logprob(s: &AppState, t: &TokenInfo) -> Value {
    let tok = &s.lp.model.tokenizer;
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

/// `POST /v1/chat/completions`.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    summary = "Chat completion, streamed (SSE) or not (OpenAI), recorded as a turn of its session.",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "OpenAI's chat.completion, with session_id, turn_id, turn_type and policy_version; streamed: chat.completion.chunk events, then [DONE]. Headers X-Session-Id, X-Turn-Id, X-Policy-Version.", content((Object = "application/json"), (crate::openapi::ServerSentEvent = "text/event-stream"))),
        (status = 400, description = "The body is malformed, a field is invalid (`param` names it), or a rule across fields is broken: tool names must be unique, a named tool_choice must name one of the tools, a response_format schema must compile, the prompt must fit the context (`context_length_exceeded`), and there are at most 512 messages (the server's limit).", body = ErrorBody),
        (status = 409, description = "The session is being changed by another request.", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`); nothing was recorded.", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn chat_completions(
    State(s): State<Shared>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ChatRequest>,
) -> ApiResult<Response> {
    let p = prepare(&s, &headers, req, caller.key_id).await?;
    let r = &p.request;
    clawrl_loop::pair::pair(
        &s.lp,
        &r.session_id,
        r.group_id.as_deref(),
        r.turn_type,
        &r.messages,
        p.continued,
        r.key_id,
    )
    .await?;
    let span = info_span!("chat", session = %r.session_id, stream = p.stream, prompt_tokens = r.prompt.len());
    if p.stream {
        return Ok(stream::stream(s, p).instrument(span).await);
    }
    async move {
        let (version, handle) =
            serve::generate(&s.lp, p.request.prompt.clone(), p.params.clone(), |_, _| {
                ControlFlow::Continue(())
            });
        let g = handle
            .await
            .map_err(|e| ApiError::internal(format!("generation thread: {e}")))?
            .map_err(ApiError::from)?;
        let reply = Reply::of(&g, &p.tool_names);
        let turn_id = serve::record(&s.lp, &p.request, &g, &reply, version).await?;
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
                "message": message_json(&reply),
                "logprobs": logprobs,
                "finish_reason": reply.finish_reason,
            }],
            "usage": usage(&p, &g),
            "session_id": p.request.session_id,
            "turn_id": turn_id,
            "turn_type": p.request.turn_type,
            "policy_version": version,
        });
        Ok(with_turn_headers(
            Json(body).into_response(),
            &p.request.session_id,
            turn_id,
            version,
        ))
    }
    .instrument(span)
    .await
}

/// The reply's message as OpenAI writes it: with calls, `tool_calls` and a `null` content
/// when there is no text beside them.
fn message_json(reply: &Reply) -> Value {
    let m = &reply.message;
    match &m.tool_calls {
        Some(calls) => json!({
            "role": "assistant",
            "content": (!m.content.is_empty()).then_some(&m.content),
            "tool_calls": calls,
        }),
        None => json!({"role": "assistant", "content": m.content}),
    }
}

/// OpenAI's usage, with what the server changed: a `max_tokens` lowered to the room left
/// (`max_tokens`), messages dropped so that the prompt fit (`dropped_messages`).
fn usage(p: &Prepared, g: &Generation) -> Value {
    let prompt = p.request.prompt.len();
    let mut u = json!({
        "prompt_tokens": prompt,
        "completion_tokens": g.tokens.len(),
        "total_tokens": prompt + g.tokens.len(),
    });
    if p.clamped {
        u["max_tokens"] = p.params.max_tokens.into();
    }
    if p.request.dropped > 0 {
        u["dropped_messages"] = p.request.dropped.into();
    }
    u
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
