//! The streamed answer: a chunk per token as it is generated; after the last token the turn is
//! recorded, then the finish chunk (and usage when asked), then `[DONE]`.

use std::convert::Infallible;
use std::ops::ControlFlow;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use clawrl_loop::Counters;
use clawrl_loop::serve::{self, finish_reason_name};
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

fn sse_json(v: &Value) -> SseItem {
    Ok(SseEvent::default().data(v.to_string()))
}

/// Streams the reply: a chunk per token as it is generated; after the last token the turn is
/// recorded, then the finish chunk (and usage when asked), then `[DONE]`.
pub async fn stream(s: Shared, p: Prepared) -> Response {
    let (piece_tx, mut pieces) = mpsc::channel::<Piece>(64);
    let (out_tx, out_rx) = mpsc::channel::<SseItem>(64);
    // A closed channel means the client went away: stop generating.
    let (version, handle) = serve::generate(
        &s.lp,
        p.request.prompt.clone(),
        p.params.clone(),
        move |info, text| match piece_tx.blocking_send(Piece {
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
            Ok(Ok(g)) if g.finish_reason != FinishReason::Cancelled => {
                serve::record(&s.lp, &p.request, &g, version)
                    .await
                    .map(|turn_id| (g, turn_id))
                    .map_err(ApiError::from)
            }
            Ok(Ok(_)) => return,
            Ok(Err(e)) => Err(ApiError::invalid(e.to_string())),
            Err(e) => Err(ApiError::internal(format!("generation thread: {e}"))),
        };
        match result {
            Ok((g, turn_id)) => {
                let mut last = chunk(json!({}), None, Some(finish_reason_name(g.finish_reason)));
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
