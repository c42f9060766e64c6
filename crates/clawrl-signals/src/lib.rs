//! The signals of a next state (DESIGN.md §2): judges turn (a_t, s_{t+1}) into evaluative
//! votes in {+1, −1, 0} and, when s_{t+1} holds a meaningful correction, a directive hint.
//!
//! Judges: [`RulesJudge`] (explicit feedback and plain cases), [`ModelJudge`] (the embedded
//! model with the judge prompt), [`HttpJudge`] (any OpenAI-compatible endpoint). People judge
//! through the Studio API, which stores their votes and hints directly.

mod judge;
mod parse;
mod rules;

pub use judge::{HttpJudge, Judge, JudgeInput, ModelJudge, NextKind, Verdict, judge_prompt};
pub use parse::{parse_hint, parse_vote};
pub use rules::RulesJudge;

/// A judge failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded model failed.
    #[error("judge model: {0}")]
    Model(#[from] clawrl_model::Error),
    /// The remote judge failed.
    #[error("judge endpoint: {0}")]
    Http(String),
}

/// Results of judging.
pub type Result<T> = std::result::Result<T, Error>;

/// The marker under which a hint is appended to the last user message (DESIGN.md §2).
pub const HINT_MARKER: &str = "[user's hint / instruction]";

/// The teacher prompt s_t ⊕ h: the conversation with `hint` appended to its last user message
/// after a blank line, under [`HINT_MARKER`].
pub fn with_hint(messages: &[clawrl_model::Message], hint: &str) -> Vec<clawrl_model::Message> {
    let mut out = messages.to_vec();
    if let Some(last) = out.iter_mut().rev().find(|m| m.role == "user") {
        last.content = format!("{}\n\n{HINT_MARKER}\n{hint}", last.content);
    }
    out
}

/// r_t: the majority of the verdicts' votes (ties → 0).
pub fn majority(verdicts: &[Verdict]) -> i8 {
    let votes: Vec<i8> = verdicts.iter().map(|v| v.value).collect();
    clawrl_objective::majority(&votes)
}

/// The distinct hints of the verdicts, in order.
pub fn candidate_hints(verdicts: &[Verdict]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in verdicts.iter().filter_map(|v| v.hint.as_ref()) {
        if !out.contains(h) {
            out.push(h.clone());
        }
    }
    out
}
