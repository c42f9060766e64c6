//! The rules judge: explicit feedback and the plain cases of a reply, without a model.

use crate::Result;
use clawrl_store::NextKind;

use crate::judge::{Judge, JudgeInput, Verdict};

/// Replies that say the answer was fine.
const THANKS: &[&str] = &[
    "thanks",
    "thank you",
    "thx",
    "great",
    "perfect",
    "awesome",
    "exactly",
    "well done",
    "nice",
    "that's right",
    "that is right",
    "correct",
    "good job",
    "helpful",
    "brilliant",
    "excellent",
    "love it",
    "that works",
];

/// Openings of a reply that says the answer was wrong; the reply is the correction.
const CORRECTIONS: &[&str] = &[
    "no",
    "nope",
    "wrong",
    "that's wrong",
    "that is wrong",
    "incorrect",
    "that's not",
    "that is not",
    "not what",
    "you didn't",
    "you did not",
    "please don't",
    "please do not",
    "don't",
    "do not",
    "stop",
    "actually",
    "i said",
    "i asked",
    "try again",
    "please",
    "instead",
    // A complaint about the answer's form ("That is too long. …") is a correction too.
    "that is too",
    "that's too",
    "too long",
    "too short",
];

/// Words of a tool output that mean it failed.
const FAILURES: &[&str] = &["error", "traceback", "exception", "failed", "not found"];

/// Line prefixes by which tools say what to do next (git's `hint:`, rustc's and cargo's
/// `help:`): such a line of a tool output is a directive signal.
const TOOL_HINTS: &[&str] = &["hint:", "help:"];

/// The directive lines of a tool output (see [`TOOL_HINTS`]), without their prefixes, joined
/// by spaces; `None` when it has none.
fn tool_hint(text: &str) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            TOOL_HINTS.iter().find_map(|p| {
                l.get(..p.len())
                    .filter(|head| head.eq_ignore_ascii_case(p))
                    .map(|_| l[p.len()..].trim())
            })
        })
        .filter(|h| !h.is_empty())
        .collect();
    (!lines.is_empty()).then(|| lines.join(" "))
}

/// Explicit feedback and plain replies, judged by rule:
/// - feedback: 👍 → +1, 👎 → −1, a correction → −1 with the correction as the hint;
/// - a reply that thanks → +1; one that opens with a correction ("no, …", "please don't …")
///   → −1 with the reply as the hint; the same question asked again → −1;
/// - a tool output with an error → −1; anything else → 0; its `hint:`/`help:` lines, if any,
///   are the hint.
#[derive(Clone, Copy, Debug, Default)]
pub struct RulesJudge;

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Whether `phrase` (words) occurs in `text` as whole words.
fn has_phrase(text: &[String], phrase: &str) -> bool {
    let p = words(phrase);
    !p.is_empty() && text.windows(p.len()).any(|w| w == p.as_slice())
}

fn opens_with(text: &[String], phrase: &str) -> bool {
    let p = words(phrase);
    text.len() >= p.len() && text[..p.len()] == p[..]
}

/// Jaccard similarity of two texts' word sets.
fn similarity(a: &[String], b: &[String]) -> f64 {
    use std::collections::BTreeSet;
    let (a, b): (BTreeSet<_>, BTreeSet<_>) = (a.iter().collect(), b.iter().collect());
    let union = a.union(&b).count();
    if union == 0 {
        return 0.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

fn verdict(value: i8, hint: Option<&str>, rule: &str) -> Verdict {
    Verdict {
        value: Some(value),
        hint: hint.map(|h| h.trim().to_string()).filter(|h| !h.is_empty()),
        raw: format!("rules: {rule}"),
    }
}

impl Judge for RulesJudge {
    fn name(&self) -> &str {
        "rules"
    }

    fn judge(&self, input: &JudgeInput<'_>) -> Result<Verdict> {
        let text = input.next_state.trim();
        Ok(match input.kind {
            NextKind::Feedback => {
                let (thumb, correction) = if let Some(rest) = text.strip_prefix("[thumbs up]") {
                    (Some(1), rest.trim())
                } else if let Some(rest) = text.strip_prefix("[thumbs down]") {
                    (Some(-1), rest.trim())
                } else {
                    (None, text)
                };
                match (thumb, correction.is_empty()) {
                    (Some(1), true) => verdict(1, None, "thumbs up"),
                    (Some(1), false) => verdict(1, Some(correction), "thumbs up with a note"),
                    (_, false) => verdict(-1, Some(correction), "correction"),
                    (Some(_), true) => verdict(-1, None, "thumbs down"),
                    (None, true) => verdict(0, None, "empty feedback"),
                }
            }
            NextKind::Tool => {
                let w = words(text);
                let hint = tool_hint(text);
                if FAILURES.iter().any(|f| has_phrase(&w, f)) {
                    verdict(-1, hint.as_deref(), "the tool failed")
                } else {
                    verdict(0, hint.as_deref(), "tool output")
                }
            }
            NextKind::Reply => {
                let w = words(text);
                let asked = input
                    .conversation
                    .iter()
                    .rev()
                    .find(|m| m.role == "user")
                    .map(|m| words(&m.content))
                    .unwrap_or_default();
                if CORRECTIONS.iter().any(|c| opens_with(&w, c)) {
                    verdict(-1, Some(text), "the user corrected the answer")
                } else if THANKS.iter().any(|t| has_phrase(&w, t)) {
                    verdict(1, None, "the user was satisfied")
                } else if w.len() >= 3 && similarity(&w, &asked) >= 0.7 {
                    verdict(-1, None, "the user asked again")
                } else {
                    verdict(0, None, "no clear signal")
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clawrl_model::Message;

    fn judge(kind: NextKind, next: &str) -> Verdict {
        let conversation = [Message::user("What is 2 + 2?")];
        let input = JudgeInput {
            conversation: &conversation,
            response: "It is 5.",
            next_state: next,
            kind,
        };
        RulesJudge.judge(&input).expect("rules never fail")
    }

    #[test]
    fn feedback_gives_votes_and_corrections_give_hints() {
        assert_eq!(judge(NextKind::Feedback, "[thumbs up]").value, Some(1));
        let down = judge(NextKind::Feedback, "[thumbs down]");
        assert_eq!((down.value, down.hint), (Some(-1), None));
        let fix = judge(NextKind::Feedback, "[thumbs down] Show the sum: 2 + 2 = 4.");
        assert_eq!(fix.value, Some(-1));
        assert_eq!(fix.hint.as_deref(), Some("Show the sum: 2 + 2 = 4."));
        assert_eq!(judge(NextKind::Feedback, "Be brief.").value, Some(-1));
    }

    #[test]
    fn replies_are_judged_by_their_plain_meaning() {
        assert_eq!(judge(NextKind::Reply, "Thanks, that helps!").value, Some(1));
        let no = judge(NextKind::Reply, "No, please don't use bold text.");
        assert_eq!(no.value, Some(-1));
        assert_eq!(no.hint.as_deref(), Some("No, please don't use bold text."));
        assert_eq!(judge(NextKind::Reply, "what is 2 + 2 ?").value, Some(-1));
        assert_eq!(
            judge(NextKind::Reply, "And what about 3 + 3?").value,
            Some(0)
        );
        // "no" must open the reply as a word, not as the start of another word.
        assert_eq!(judge(NextKind::Reply, "Nothing else, bye").value, Some(0));
        let long = judge(
            NextKind::Reply,
            "That is too long. Give me just the answer.",
        );
        assert_eq!(long.value, Some(-1));
        assert_eq!(
            long.hint.as_deref(),
            Some("That is too long. Give me just the answer.")
        );
        assert_eq!(judge(NextKind::Reply, "That's too short.").value, Some(-1));
    }

    #[test]
    fn tool_errors_are_bad() {
        assert_eq!(
            judge(NextKind::Tool, "Traceback (most recent call last)").value,
            Some(-1)
        );
        assert_eq!(judge(NextKind::Tool, "42").value, Some(0));
    }

    #[test]
    fn a_tool_outputs_hint_lines_are_its_directive_signal() {
        // (tool output, vote, hint): only a line that opens with the prefix counts, in any
        // case, and an empty one gives nothing.
        let cases = [
            (
                "error: failed to push some refs\nhint: Updates were rejected.\nHINT: Pull first.",
                -1,
                Some("Updates were rejected. Pull first."),
            ),
            (
                "exit status 0\n  help: run `mkdir logs`",
                0,
                Some("run `mkdir logs`"),
            ),
            ("no hint: here\nhint:", 0, None),
        ];
        for (output, value, hint) in cases {
            let v = judge(NextKind::Tool, output);
            assert_eq!(
                (v.value, v.hint.as_deref()),
                (Some(value), hint),
                "{output}"
            );
        }
    }
}
