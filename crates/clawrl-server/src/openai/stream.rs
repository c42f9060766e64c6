//! The streamed answer: a chunk per token as it is generated; after the last token the turn is
//! recorded, then the finish chunk (and usage when asked), then `[DONE]`.

use std::convert::Infallible;
use std::ops::ControlFlow;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use clawrl_loop::Counters;
use clawrl_loop::serve::{self, Reply};
use clawrl_model::tools::CALL_OPEN;
use clawrl_model::{FinishReason, TokenInfo};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::request::Prepared;
use super::{token_logprob, unix_now, usage};
use crate::error::ApiError;
use crate::state::Shared;

/// One streamed token: its text and, when asked, its log-probs.
struct Piece {
    text: String,
    info: TokenInfo,
}

type SseItem = Result<SseEvent, Infallible>;

fn sse_json(v: &impl serde::Serialize) -> SseItem {
    Ok(SseEvent::default().data(serde_json::to_string(v).unwrap_or_default()))
}

/// How much of `text` may be streamed as content when the answer may call tools: all of it
/// up to a `<tool_call>`, or to a suffix that could begin one.
fn shown(text: &str) -> usize {
    if let Some(at) = text.find(CALL_OPEN) {
        return at;
    }
    (1..CALL_OPEN.len())
        .rev()
        .find(|&k| text.ends_with(&CALL_OPEN[..k]))
        .map_or(text.len(), |k| text.len() - k)
}

/// The chunk deltas that carry the reply's calls (one per call, whole, as OpenAI's SDKs
/// accumulate them).
fn call_deltas(reply: &Reply) -> Vec<Value> {
    let calls = reply
        .message
        .tool_calls
        .as_ref()
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    calls
        .into_iter()
        .enumerate()
        .map(|(index, mut call)| {
            call["index"] = index.into();
            json!({"tool_calls": [call]})
        })
        .collect()
}

/// Streams the reply: a chunk per token as it is generated; after the last token the turn is
/// recorded, then the calls (when the answer made any), the finish chunk (and usage when
/// asked), then `[DONE]`. When tools may be called, text from a `<tool_call>` on is held back
/// until the end tells whether it is a call.
pub async fn stream(s: Shared, p: Prepared) -> Response {
    // Unbounded: the callback runs in the decode loop, which every request in flight
    // shares, so it must never wait for a slow reader (a reply is at most max_tokens pieces).
    let (piece_tx, mut pieces) = mpsc::unbounded_channel::<Piece>();
    let (out_tx, out_rx) = mpsc::channel::<SseItem>(64);
    // A closed channel means the client went away: stop generating.
    let (version, handle) = serve::generate(
        &s.lp,
        p.request.prompt.clone(),
        p.params.clone(),
        move |info, text| match piece_tx.send(Piece {
            text: text.to_string(),
            info: info.clone(),
        }) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        },
    );
    let created = unix_now();
    let id = format!("chatcmpl-{}", rand::random::<u32>());
    let session = p.request.session_id.clone();
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
        let holds = !p.tool_names.is_empty();
        let (mut text, mut sent) = (String::new(), 0);
        while let Some(piece) = pieces.recv().await {
            let lp = p
                .logprobs
                .then(|| json!({"content": [token_logprob(&s, &piece.info)]}));
            text.push_str(&piece.text);
            let upto = if holds {
                shown(&text).max(sent)
            } else {
                text.len()
            };
            let delta = &text[sent..upto];
            if delta.is_empty() && lp.is_none() && !piece.text.is_empty() {
                continue;
            }
            if out_tx
                .send(sse_json(&chunk(json!({"content": delta}), lp, None)))
                .await
                .is_err()
            {
                // The client left; dropping `pieces` stops the generation.
                return;
            }
            sent = upto;
        }
        let result = match handle.await {
            Ok(Ok(g)) if g.finish_reason != FinishReason::Cancelled => {
                let reply = Reply::of(&g, &p.tool_names);
                serve::record(&s.lp, &p.request, &g, &reply, version)
                    .await
                    .map(|turn_id| (g, reply, turn_id))
                    .map_err(ApiError::from)
            }
            Ok(Ok(_)) => return,
            Ok(Err(e)) => Err(ApiError::from(e)),
            Err(e) => Err(ApiError::internal(format!("generation thread: {e}"))),
        };
        match result {
            Ok((g, reply, turn_id)) => {
                let tail = if reply.message.tool_calls.is_some() {
                    call_deltas(&reply)
                } else if sent < text.len() {
                    // Held back as a possible call, and not one: it is text after all.
                    vec![json!({"content": &text[sent..]})]
                } else {
                    Vec::new()
                };
                for delta in tail {
                    let _ = out_tx.send(sse_json(&chunk(delta, None, None))).await;
                }
                let mut last = chunk(json!({}), None, Some(reply.finish_reason));
                last["turn_id"] = turn_id.into();
                last["session_id"] = p.request.session_id.clone().into();
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
                Counters::add(&s.lp.counters.errors, 1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_that_may_begin_a_call_is_held_back() {
        assert_eq!(shown("The sum is 5."), 13);
        assert_eq!(shown("Let me <tool"), 7);
        assert_eq!(shown("Let me <tool_call>\n{"), 7);
        assert_eq!(shown("a < b"), 5);
    }
}
