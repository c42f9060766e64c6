//! The signals of a next state (DESIGN.md §2): judges turn (a_t, s_{t+1}) into evaluative
//! votes in {+1, −1, 0} and, when s_{t+1} holds a meaningful correction, a directive hint.
//!
//! Judges: [`RulesJudge`] (explicit feedback and plain cases), [`ModelJudge`] (the embedded
//! model with the judge prompt), [`HttpJudge`] (any OpenAI-compatible endpoint). People judge
//! through the Studio API, which stores their votes and hints directly. Judges read what the
//! user typed: [`user_text`] takes off what clients wrap around it.

mod clients;
mod judge;
mod parse;
mod rules;

pub use clawrl_store::NextKind;
pub use clients::user_text;
pub use judge::{HttpJudge, Judge, JudgeInput, ModelJudge, Verdict, judge_prompt};
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
/// after a blank line, under [`HINT_MARKER`]; with no user message, to the last message (as
/// the reference implementation does), so that the teacher always differs from the student
/// by the hint. The messages' tools and roles are untouched.
pub fn with_hint(messages: &[clawrl_model::Message], hint: &str) -> Vec<clawrl_model::Message> {
    let mut out = messages.to_vec();
    let target = match out.iter().rposition(|m| m.role == "user") {
        Some(i) => Some(i),
        None => out.len().checked_sub(1),
    };
    if let Some(last) = target.and_then(|i| out.get_mut(i)) {
        last.content = if last.content.is_empty() {
            format!("{HINT_MARKER}\n{hint}")
        } else {
            format!("{}\n\n{HINT_MARKER}\n{hint}", last.content)
        };
    }
    out
}

/// r_t: the majority of the verdicts' readable votes (ties, and no readable vote, → 0).
pub fn majority(verdicts: &[Verdict]) -> i8 {
    let votes: Vec<i8> = verdicts.iter().filter_map(|v| v.value).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use clawrl_model::Message;

    fn vote(value: Option<i8>) -> Verdict {
        Verdict {
            value,
            hint: None,
            raw: String::new(),
        }
    }

    #[test]
    fn unreadable_votes_neither_dilute_nor_tie_the_majority() {
        // One readable vote beside two unreadable answers decides (counted as 0s, the two
        // would have outvoted it).
        assert_eq!(majority(&[vote(Some(-1)), vote(None), vote(None)]), -1);
        assert_eq!(majority(&[vote(Some(1)), vote(None), vote(None)]), 1);
        assert_eq!(majority(&[vote(None)]), 0);
        assert_eq!(majority(&[vote(Some(1)), vote(Some(-1)), vote(None)]), 0);
    }

    #[test]
    fn the_hint_goes_to_the_last_user_message_or_else_the_last_message() {
        let m = [
            Message::new("system", "Be brief."),
            Message::user("What is 2 + 2?"),
            Message::new("assistant", "5"),
        ];
        let h = with_hint(&m, "Add carefully.");
        assert_eq!(
            h[1].content,
            format!("What is 2 + 2?\n\n{HINT_MARKER}\nAdd carefully.")
        );
        assert_eq!(
            (h[0].content.as_str(), h[2].content.as_str()),
            ("Be brief.", "5")
        );
        let only_system = [Message::new("system", "You are a calculator.")];
        let h = with_hint(&only_system, "Show the steps.");
        assert_eq!(
            h[0].content,
            format!("You are a calculator.\n\n{HINT_MARKER}\nShow the steps.")
        );
        assert!(with_hint(&[], "x").is_empty());
    }
}
