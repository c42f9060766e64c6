//! PAIR (DESIGN.md §1): the next main-line request of a session carries the next state
//! s_{t+1} of its previous main turn; sessions that go quiet end by themselves.

use std::sync::Arc;
use std::time::Duration;

use clawrl_model::Message;
use clawrl_store::{NextKind, TurnType};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::Loop;
use crate::error::Result;
use crate::events::Event;

/// The key of a conversation that ends in an answer: what a client that replays the history
/// sends back (roles, texts with their ends trimmed, tool calls as id, name and arguments),
/// hashed (SHA-256, hex). A request whose messages up to its last assistant message have the
/// key of a recorded turn's messages plus its answer continues that turn's session
/// (DESIGN.md §4).
pub fn continuation_key(messages: &[Message]) -> String {
    let canonical: Vec<Canonical> = messages
        .iter()
        .map(|m| {
            (
                m.role.as_str(),
                m.content.trim(),
                m.tool_calls.as_ref().map(call_keys).unwrap_or_default(),
            )
        })
        .collect();
    let text = serde_json::to_string(&canonical).unwrap_or_default();
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A message as its key sees it: role, trimmed text, and its calls ([`call_keys`]).
type Canonical<'a> = (&'a str, &'a str, Vec<(String, String)>);

/// Each call as (id, name and arguments as compact JSON): what survives a client that
/// re-serialises the calls it replays (field order, whitespace).
fn call_keys(tool_calls: &serde_json::Value) -> Vec<(String, String)> {
    let ids = tool_calls
        .as_array()
        .map(|a| {
            a.iter()
                .map(|c| {
                    c.get("id")
                        .and_then(|i| i.as_str())
                        .unwrap_or("")
                        .to_string()
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    ids.into_iter()
        .zip(clawrl_model::tools::calls_of(tool_calls))
        .map(|(id, c)| (id, format!("{}{}", c.name, c.arguments)))
        .collect()
}

/// The turn a request without a session id continues, as (turn id, session id): the
/// recorded turn whose messages and answer its messages extend, up to their last assistant
/// message.
pub async fn continued_turn(lp: &Loop, messages: &[Message]) -> Result<Option<(i64, String)>> {
    let Some(last) = messages.iter().rposition(|m| m.role == "assistant") else {
        return Ok(None);
    };
    let key = continuation_key(&messages[..=last]);
    Ok(lp.store.continued_turn(&key).await?)
}

/// The next state a request carries for the session's previous answer: the user and tool
/// messages after the last assistant message (a reply when a user spoke, else a tool output).
pub fn next_state_of(messages: &[Message]) -> Option<(NextKind, String)> {
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

/// Stores the next state a main-line request carries, before generating (the user's reply
/// exists whether or not this answer completes), and wakes the judge: for `continued`, the
/// turn its replayed history continues, when known; else for the session's latest unpaired
/// main turn. Side turns carry none. Marks the session seen (and a rollout of `group_id`)
/// either way. `key_id` is the API key that sent it (`None`: no key).
pub async fn pair(
    lp: &Loop,
    session_id: &str,
    group_id: Option<&str>,
    turn_type: TurnType,
    messages: &[Message],
    continued: Option<i64>,
    key_id: Option<i64>,
) -> Result<()> {
    lp.store.touch_session(session_id, group_id).await?;
    let (TurnType::Main, Some((kind, text))) = (turn_type, next_state_of(messages)) else {
        return Ok(());
    };
    let paired = match continued {
        Some(turn_id) => lp
            .store
            .pair_turn(turn_id, kind, &text, key_id)
            .await?
            .map(|_| turn_id),
        None => lp
            .store
            .pair_next_state(session_id, kind, &text, key_id)
            .await?
            .map(|(turn_id, _)| turn_id),
    };
    if let Some(turn_id) = paired {
        lp.emit(Event::NextState { turn_id, kind });
        lp.wake_judge();
    }
    Ok(())
}

/// Records explicit feedback (a thumb and/or a correction) as a turn's next state, and wakes
/// the judge. `author` names the key `key_id` that sent it. Returns the next state's id.
pub async fn feedback(
    lp: &Loop,
    turn_id: i64,
    thumb: Option<i8>,
    correction: Option<&str>,
    (author, key_id): (&str, Option<i64>),
) -> Result<i64> {
    let id = lp
        .store
        .record_feedback(turn_id, thumb, correction, author, key_id)
        .await?;
    lp.emit(Event::NextState {
        turn_id,
        kind: NextKind::Feedback,
    });
    lp.wake_judge();
    Ok(id)
}

/// Runs until aborted: ends every session not seen for the idle timeout (clients such as
/// OpenClaw never say `session_done`).
pub async fn end_idle_sessions(lp: Arc<Loop>) {
    let every = (lp.idle_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        tokio::time::sleep(every).await;
        let before = clawrl_store::now_ms() - lp.idle_timeout.as_millis() as i64;
        match lp.store.end_idle_sessions(before).await {
            Ok(ended) if !ended.is_empty() => info!(sessions = ended.len(), "idle sessions ended"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "ending idle sessions"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replayed_history_has_the_key_of_the_recorded_turn() {
        let m = |r: &str, c: &str| Message::new(r, c);
        let recorded = [m("user", "What is 12*7?"), m("assistant", "84")];
        let replayed = [m("user", "What is 12*7?"), m("assistant", "84\n")];
        assert_eq!(continuation_key(&recorded), continuation_key(&replayed));
        let other = [m("user", "What is 12*8?"), m("assistant", "84")];
        assert_ne!(continuation_key(&recorded), continuation_key(&other));
        let swapped = [m("assistant", "What is 12*7?"), m("user", "84")];
        assert_ne!(continuation_key(&recorded), continuation_key(&swapped));
    }

    #[test]
    fn the_next_state_is_what_follows_the_last_answer() {
        let m = |r: &str, c: &str| Message::new(r, c);
        assert_eq!(next_state_of(&[m("user", "hi")]), None);
        assert_eq!(
            next_state_of(&[
                m("user", "hi"),
                m("assistant", "hello"),
                m("user", "no, shorter")
            ]),
            Some((NextKind::Reply, "no, shorter".into()))
        );
        assert_eq!(
            next_state_of(&[m("user", "2+2"), m("assistant", "calc"), m("tool", "4")]),
            Some((NextKind::Tool, "4".into()))
        );
        assert_eq!(
            next_state_of(&[m("user", "hi"), m("assistant", "hello")]),
            None
        );
    }
}
