//! Personas (TOML files) and tasks (JSON files).

use std::path::Path;

use regex::Regex;
use serde::Deserialize;

use crate::{Error, Result};

/// What a response must be to satisfy the persona.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preference {
    /// None may match.
    #[serde(default)]
    pub forbid_regex: Vec<String>,
    /// All must match.
    #[serde(default)]
    pub require_regex: Vec<String>,
    /// At least one phrase must occur (case-insensitive).
    #[serde(default)]
    pub require_any: Vec<String>,
    /// At least this many tokens (0 = no bound).
    #[serde(default)]
    pub min_tokens: usize,
    /// At most this many tokens (0 = no bound).
    #[serde(default)]
    pub max_tokens: usize,
}

/// What the user writes after an answer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replies {
    /// When the answer breaks the preference (the directive content).
    pub correction: String,
    /// When it meets it.
    pub satisfied: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonaFile {
    name: String,
    first_message: String,
    max_turns: usize,
    #[serde(default)]
    preference: Preference,
    replies: Replies,
    #[serde(default)]
    base_rate: Option<f64>,
    #[serde(default)]
    demo: bool,
    #[serde(default)]
    annotator_hints: Vec<String>,
}

/// A simulated user.
#[derive(Clone, Debug)]
pub struct Persona {
    /// Its name.
    pub name: String,
    /// The first message, with `{question}` and `{answer}` from the task.
    pub first_message: String,
    /// Turns per session before the user gives up.
    pub max_turns: usize,
    /// The hidden preference.
    pub preference: Preference,
    /// Its replies.
    pub replies: Replies,
    /// The measured fraction of first answers the untrained model gets right (the control,
    /// 15 sessions, 3 seeds), when measured.
    pub base_rate: Option<f64>,
    /// The persona `simulate --quick` shows (one the base fails and the loop learns quickly).
    pub demo: bool,
    /// What annotators reading a corrected answer would write as hints, one per annotator
    /// (`simulate --annotators`): with the judge's hint they are the M candidates that hint
    /// selection chooses among (DESIGN.md §2).
    pub annotator_hints: Vec<String>,
    forbid: Vec<Regex>,
    require: Vec<Regex>,
}

/// One task: a question and its reference answer.
#[derive(Clone, Debug, Deserialize)]
pub struct Task {
    /// The question.
    pub question: String,
    /// The reference answer (a worked solution).
    pub ground_truth_answer: String,
}

fn compile(patterns: &[String], field: &str, name: &str) -> Result<Vec<Regex>> {
    patterns
        .iter()
        .map(|p| {
            Regex::new(p).map_err(|e| Error::Input(format!("persona {name}: {field} {p:?}: {e}")))
        })
        .collect()
}

impl Persona {
    /// Parses a persona from TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let f: PersonaFile =
            toml::from_str(text).map_err(|e| Error::Input(format!("{origin}: {e}")))?;
        if f.name.trim().is_empty() {
            return Err(Error::Input(format!("{origin}: the persona needs a name")));
        }
        if f.max_turns == 0 {
            return Err(Error::Input(format!(
                "{origin}: max_turns must be at least 1"
            )));
        }
        let p = &f.preference;
        if p.max_tokens != 0 && p.max_tokens < p.min_tokens {
            return Err(Error::Input(format!(
                "{origin}: max_tokens ({}) is below min_tokens ({})",
                p.max_tokens, p.min_tokens
            )));
        }
        if let Some(r) = f.base_rate
            && !(0.0..=1.0).contains(&r)
        {
            return Err(Error::Input(format!(
                "{origin}: base_rate must be a fraction in 0..=1, got {r}"
            )));
        }
        if f.annotator_hints.iter().any(|h| h.trim().is_empty()) {
            return Err(Error::Input(format!(
                "{origin}: an annotator hint is blank"
            )));
        }
        let forbid = compile(&p.forbid_regex, "forbid_regex", &f.name)?;
        let require = compile(&p.require_regex, "require_regex", &f.name)?;
        Ok(Self {
            name: f.name,
            first_message: f.first_message,
            max_turns: f.max_turns,
            preference: f.preference,
            replies: f.replies,
            base_rate: f.base_rate,
            demo: f.demo,
            annotator_hints: f.annotator_hints,
            forbid,
            require,
        })
    }

    /// Whether the untrained model already satisfies it too often for it to measure learning
    /// (a measured base rate over 20 %).
    pub fn tests_the_base(&self) -> bool {
        self.base_rate.is_some_and(|r| r > 0.2)
    }

    /// Reads a persona file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// The first message of a session on `task`.
    pub fn first_message(&self, task: &Task) -> String {
        self.first_message
            .replace("{question}", &task.question)
            .replace("{answer}", &task.ground_truth_answer)
    }

    /// Why `text` (of `tokens` tokens) breaks the preference; empty when it satisfies it.
    pub fn violations(&self, text: &str, tokens: usize) -> Vec<String> {
        let p = &self.preference;
        let mut out = Vec::new();
        for r in &self.forbid {
            if r.is_match(text) {
                out.push(format!("matches {}", r.as_str()));
            }
        }
        for r in &self.require {
            if !r.is_match(text) {
                out.push(format!("does not match {}", r.as_str()));
            }
        }
        let lower = text.to_lowercase();
        if !p.require_any.is_empty()
            && !p
                .require_any
                .iter()
                .any(|w| lower.contains(&w.to_lowercase()))
        {
            out.push("has none of the required phrases".into());
        }
        if p.min_tokens > 0 && tokens < p.min_tokens {
            out.push(format!("{tokens} tokens, fewer than {}", p.min_tokens));
        }
        if p.max_tokens > 0 && tokens > p.max_tokens {
            out.push(format!("{tokens} tokens, more than {}", p.max_tokens));
        }
        out
    }
}

/// The shipped personas: DESIGN.md §7's student, TA and teacher, then preferences about form
/// that the base model rarely meets (answer first, brief, a sign-off).
pub fn builtin_personas() -> Result<Vec<Persona>> {
    [
        (
            "personas/student.toml",
            include_str!("../personas/student.toml"),
        ),
        ("personas/ta.toml", include_str!("../personas/ta.toml")),
        (
            "personas/teacher.toml",
            include_str!("../personas/teacher.toml"),
        ),
        (
            "personas/answer-first.toml",
            include_str!("../personas/answer-first.toml"),
        ),
        (
            "personas/brief.toml",
            include_str!("../personas/brief.toml"),
        ),
        (
            "personas/signoff.toml",
            include_str!("../personas/signoff.toml"),
        ),
    ]
    .iter()
    .map(|(origin, text)| Persona::from_toml(text, origin))
    .collect()
}

/// Reads a task file: a JSON array of `{"question", "ground_truth_answer"}`.
pub fn load_tasks(path: &Path) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let tasks: Vec<Task> = serde_json::from_str(&text)
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    if tasks.is_empty() {
        return Err(Error::Input(format!("{}: no tasks", path.display())));
    }
    Ok(tasks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persona(name: &str) -> Persona {
        builtin_personas()
            .expect("the shipped personas parse")
            .into_iter()
            .find(|p| p.name == name)
            .expect("persona")
    }

    #[test]
    fn the_student_wants_plain_prose() {
        let s = persona("student");
        let plain = "First I add 20 and 44 to get 64. Then I subtract that from 100, so they need 36 more signatures.";
        assert!(s.violations(plain, 40).is_empty());
        for ai in [
            "**64** signatures",
            "1. Add them\n2. Subtract",
            "- add\n- subtract",
            "# Solution\nfine",
            "so \\boxed{36}",
        ] {
            assert!(!s.violations(ai, 40).is_empty(), "{ai:?} passed");
        }
        assert!(
            !s.violations(plain, 5).is_empty(),
            "a bare answer drops the steps"
        );
    }

    #[test]
    fn the_ta_wants_length_and_the_teacher_warmth() {
        let ta = persona("ta");
        assert!(!ta.violations("Correct.", 2).is_empty());
        assert!(ta.violations("Step one is right because…", 120).is_empty());
        let teacher = persona("teacher");
        assert!(
            teacher
                .violations("Well done! Your steps are clear.", 8)
                .is_empty()
        );
        assert!(!teacher.violations("The answer is 36.", 6).is_empty());
    }

    #[test]
    fn first_messages_fill_the_task_and_never_state_the_preference() {
        let task = Task {
            question: "What is 2 + 2?".into(),
            ground_truth_answer: "2 + 2 = 4\n#### 4".into(),
        };
        for p in builtin_personas().expect("personas") {
            let m = p.first_message(&task);
            assert!(m.contains("What is 2 + 2?"), "{m}");
            let lower = m.to_lowercase();
            for hint in [
                "bold",
                "list",
                "heading",
                "boxed",
                "specific",
                "100",
                "friendly",
                "warm",
                "well done",
                "final answer",
                "first line",
                "one or two",
                "brief",
                "hope this helps",
            ] {
                assert!(
                    !lower.contains(hint),
                    "{}'s first message gives away {hint:?}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn bad_persona_files_are_refused_clearly() {
        let ok = "name = \"x\"\nfirst_message = \"hi\"\nmax_turns = 2\n[replies]\ncorrection = \"no\"\nsatisfied = \"yes\"\n";
        assert!(Persona::from_toml(ok, "ok.toml").is_ok());
        // (what follows `max_turns`, what the error must name)
        for (extra, names) in [
            ("[preference]\nforbid_regex = [\"(\"]\n", "forbid_regex"),
            ("annotator_hints = [\" \"]\n", "annotator hint"),
        ] {
            let bad = ok.replace("max_turns = 2\n", &format!("max_turns = 2\n{extra}"));
            let err = Persona::from_toml(&bad, "x.toml")
                .expect_err("refused")
                .to_string();
            assert!(err.contains(names), "{err}");
        }
        let zero = ok.replace("max_turns = 2", "max_turns = 0");
        assert!(Persona::from_toml(&zero, "x.toml").is_err());
        let unknown = format!("{ok}color = 1\n");
        assert!(Persona::from_toml(&unknown, "x.toml").is_err());
    }

    #[test]
    fn the_form_personas_check_what_their_corrections_ask_for() {
        // (persona, answer, its tokens, whether it meets the preference). Each also wants an
        // answer: a bare form with no number is not one.
        let cases = [
            ("answer-first", "Answer: 36\nThey need 36 more.", 10, true),
            ("answer-first", "They need 36 more.\nAnswer: 36", 10, false),
            ("answer-first", "Answer: see below\n36", 6, false),
            ("brief", "36.", 2, true),
            ("brief", "long", 41, false),
            ("brief", "Sure.", 2, false),
            ("signoff", "It is 36.\n\nHope this helps!\n", 9, true),
            ("signoff", "Hope this helps! It is 36.", 9, false),
            ("signoff", "Hope this helps!", 4, false),
        ];
        for (name, text, tokens, meets) in cases {
            let v = persona(name).violations(text, tokens);
            assert_eq!(v.is_empty(), meets, "{name} on {text:?}: {v:?}");
        }
    }

    #[test]
    fn every_shipped_persona_states_its_base_rate_and_one_is_the_demo() {
        let all = builtin_personas().expect("personas");
        assert!(all.iter().all(|p| p.base_rate.is_some()));
        // Three annotators each, so that selection chooses among M = 4 candidates.
        assert!(all.iter().all(|p| p.annotator_hints.len() == 3));
        let demo: Vec<&str> = all
            .iter()
            .filter(|p| p.demo)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(demo.len(), 1, "{demo:?}");
        // The demo must be one the untrained model fails.
        assert!(all.iter().any(|p| p.demo && !p.tests_the_base()));
        assert!(persona("student").tests_the_base() && persona("ta").tests_the_base());
    }
}
