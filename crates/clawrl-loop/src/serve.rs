//! SERVE (DESIGN.md §1): generation with the live policy, and the turn's record — token ids
//! and log-probs exactly as generation produced them, never a re-tokenisation.

use std::ops::ControlFlow;
use std::sync::Arc;

use clawrl_model::{FinishReason, GenerateParams, Generation, Message, TokenInfo};
use clawrl_store::{NewTurn, TurnType};
use tokio::task::JoinHandle;
use tracing::info;

use crate::Loop;
use crate::error::{Error, Result};
use crate::events::{Counters, Event};
use crate::pair::continuation_key;

/// A request as the loop records it with its answer.
#[derive(Clone, Debug)]
pub struct Request {
    /// The session it belongs to.
    pub session_id: String,
    /// Main turns train; side turns are only served.
    pub turn_type: TurnType,
    /// The messages as the client sent them.
    pub messages: Vec<Message>,
    /// Messages left out so that the prompt fits ([`drop_oldest`]); 0 unless the server's
    /// opt-in policy dropped some.
    pub dropped: usize,
    /// The request's tools (a JSON array, passed to the chat template as given).
    pub tools: Option<serde_json::Value>,
    /// The rendered prompt's token ids.
    pub prompt: Vec<u32>,
    /// The session ends with this turn (`session_done`).
    pub ends_session: bool,
    /// The outcome reward o the ending carries (general agents; only with `ends_session`).
    pub outcome: Option<f64>,
    /// The group of rollouts the session belongs to (general agents, DESIGN.md §8).
    pub group_id: Option<String>,
    /// The API key that sent it (`None`: no key).
    pub key_id: Option<i64>,
}

impl Request {
    /// s_t as the model saw it: the messages without the dropped ones.
    pub fn seen(&self) -> Vec<Message> {
        drop_oldest(&self.messages, self.dropped)
    }
}

/// The messages with the `n` oldest after the leading system messages left out, and any
/// `tool` results then left without their call: the policy for clients that never compact
/// (the leading system prompt stays; callers never drop the last user message).
pub fn drop_oldest(messages: &[Message], n: usize) -> Vec<Message> {
    let lead = messages.iter().take_while(|m| m.role == "system").count();
    let mut rest = messages.iter().skip(lead + n).peekable();
    if n > 0 {
        while rest.next_if(|m| m.role == "tool").is_some() {}
    }
    messages[..lead].iter().chain(rest).cloned().collect()
}

/// The answer as the client receives it, and replays it in later requests.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// The assistant message: the text before any call, and the calls in OpenAI's shape
    /// (`[{"id", "type": "function", "function": {"name", "arguments": "<json>"}}]`).
    pub message: Message,
    /// OpenAI's finish reason: `tool_calls` when the answer calls functions.
    pub finish_reason: &'static str,
}

impl Reply {
    /// The answer to `g`: any well-formed calls to `tool_names` read out of its text
    /// ([`clawrl_model::tools::parse_calls`]), each given a fresh id; else the text.
    pub fn of(g: &Generation, tool_names: &[String]) -> Reply {
        let names: Vec<&str> = tool_names.iter().map(String::as_str).collect();
        let parsed = (g.finish_reason == FinishReason::Stop && !names.is_empty())
            .then(|| clawrl_model::tools::parse_calls(&g.text, &names))
            .flatten();
        match parsed {
            Some((content, calls)) => {
                let calls: Vec<serde_json::Value> = calls
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "id": format!("call_{:024x}", rand::random::<u128>() >> 32),
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments.to_string()},
                        })
                    })
                    .collect();
                Reply {
                    message: Message {
                        tool_calls: Some(calls.into()),
                        ..Message::new("assistant", content)
                    },
                    finish_reason: "tool_calls",
                }
            }
            None => Reply {
                message: Message::new("assistant", g.text.clone()),
                finish_reason: finish_reason_name(g.finish_reason),
            },
        }
    }
}

/// OpenAI's name of a finish reason (a cancelled stream is recorded as `stop`).
pub fn finish_reason_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

/// A generation under way: the policy version answering, and the blocking task.
pub type Running = (
    i64,
    JoinHandle<std::result::Result<Generation, clawrl_model::Error>>,
);

/// Generates from `prompt` with the live policy on a blocking thread, calling `on_token` with
/// every token as it comes (`Break` stops early). Training pauses until the first token is
/// out: the time to the first token is what a user feels.
pub fn generate(
    lp: &Arc<Loop>,
    prompt: Vec<u32>,
    params: GenerateParams,
    mut on_token: impl FnMut(&TokenInfo, &str) -> ControlFlow<()> + Send + 'static,
) -> Running {
    let live = lp.live();
    let lp = lp.clone();
    let mut prefill = Some(lp.gate.hold());
    let on_token = Box::new(move |info: &TokenInfo, text: &str| {
        drop(prefill.take());
        on_token(info, text)
    });
    let handle = tokio::task::spawn_blocking(move || {
        lp.batcher
            .generate(&prompt, &params, live.adapter, on_token)
    });
    (live.version, handle)
}

/// Records a finished generation and the reply made of it (committed before the reply
/// completes), then tells the loop. Returns the turn's id.
pub async fn record(
    lp: &Loop,
    r: &Request,
    g: &Generation,
    reply: &Reply,
    version: i64,
) -> Result<i64> {
    let mut conversation = r.messages.clone();
    conversation.push(reply.message.clone());
    let turn = NewTurn {
        session_id: r.session_id.clone(),
        turn_type: r.turn_type,
        messages: serde_json::to_value(r.seen())
            .map_err(|e| Error::invalid(format!("the messages cannot be stored: {e}")))?,
        dropped_messages: r.dropped,
        continuation: continuation_key(&conversation),
        tools: r.tools.clone(),
        prompt_ids: r.prompt.clone(),
        response: g.text.clone(),
        response_ids: g.token_ids(),
        logprobs: g.tokens.iter().map(|t| t.logprob).collect(),
        top_logprobs: g.tokens.iter().map(|t| t.top.clone()).collect(),
        policy_version: version,
        finish_reason: reply.finish_reason.into(),
        key_id: r.key_id,
    };
    let turn_id = lp.store.record_turn(&turn).await?;
    if r.ends_session {
        lp.store.end_session(&r.session_id, r.outcome).await?;
    }
    Counters::add(&lp.counters.completions, 1);
    Counters::add(&lp.counters.tokens, g.tokens.len() as u64);
    lp.emit(Event::Turn {
        turn_id,
        session_id: r.session_id.clone(),
        turn_type: r.turn_type,
        policy_version: version,
    });
    info!(turn_id, tokens = g.tokens.len(), "recorded");
    Ok(turn_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_keeps_the_system_prompt_and_never_orphans_a_tool_result() {
        let m = |r: &str, c: &str| Message::new(r, c);
        let all = [
            m("system", "You are brief."),
            m("user", "a"),
            m("assistant", "call"),
            m("tool", "42"),
            m("user", "b"),
        ];
        let roles = |v: Vec<Message>| v.into_iter().map(|m| m.content).collect::<Vec<_>>();
        assert_eq!(
            roles(drop_oldest(&all, 0)),
            ["You are brief.", "a", "call", "42", "b"]
        );
        assert_eq!(
            roles(drop_oldest(&all, 1)),
            ["You are brief.", "call", "42", "b"]
        );
        assert_eq!(roles(drop_oldest(&all, 2)), ["You are brief.", "b"]);
    }
}
