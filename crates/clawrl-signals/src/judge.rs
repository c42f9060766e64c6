//! The judge interface and the model-based judges (embedded model, OpenAI-compatible endpoint).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use clawrl_model::{GenerateParams, Message, Model, Sampling};
use clawrl_store::NextKind;
use serde::Serialize;

use crate::parse::{parse_hint, parse_vote};
use crate::{Error, Result};

/// How the judge prompt names a kind of next state.
fn describe(kind: NextKind) -> &'static str {
    match kind {
        NextKind::Reply => "the user's next message",
        NextKind::Feedback => "the user's explicit feedback",
        NextKind::Tool => "the tool's output",
    }
}

/// One action and what followed it.
#[derive(Clone, Copy, Debug)]
pub struct JudgeInput<'a> {
    /// s_t: the conversation the assistant answered.
    pub conversation: &'a [Message],
    /// a_t: the assistant's answer.
    pub response: &'a str,
    /// s_{t+1}: what followed.
    pub next_state: &'a str,
    /// What kind of next state it is.
    pub kind: NextKind,
}

/// One judge's vote, with a hint when the next state holds a meaningful correction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// +1, −1 or 0; `None` when the judge's answer held no readable vote (such a vote is
    /// dropped from the majority: it neither dilutes nor ties it).
    pub value: Option<i8>,
    /// The directive signal.
    pub hint: Option<String>,
    /// The judge's raw answer (or the rule that fired).
    pub raw: String,
}

/// Something that turns a next state into a verdict.
pub trait Judge: Send + Sync {
    /// A name recorded with every vote.
    fn name(&self) -> &str;
    /// Judges one action.
    fn judge(&self, input: &JudgeInput<'_>) -> Result<Verdict>;
}

/// The judge prompt (one user message): the conversation, the answer, what happened next, and
/// the output format — a vote in `\boxed{}` and an optional hint between markers.
pub fn judge_prompt(input: &JudgeInput<'_>) -> Vec<Message> {
    let mut transcript = String::new();
    for m in input.conversation {
        transcript.push_str(&format!("{}: {}\n", m.role, m.content));
    }
    let text = format!(
        "You judge an AI assistant's answer by what happened next.\n\n\
         Conversation:\n{transcript}\n\
         The assistant answered:\n{}\n\n\
         What happened next ({}):\n{}\n\n\
         Was the answer good (the user was satisfied or moved on, the tool succeeded), bad \
         (the user corrected it, complained or asked again, the tool failed), or unclear? \
         Reply with \\boxed{{1}} for good, \\boxed{{-1}} for bad or \\boxed{{0}} for unclear. \
         If what happened next contains a correction or instruction the assistant should have \
         followed, also write it as one short imperative hint between [HINT_START] and \
         [HINT_END].",
        input.response,
        describe(input.kind),
        input.next_state
    );
    vec![Message::user(text)]
}

fn verdict_of(raw: String) -> Verdict {
    Verdict {
        value: parse_vote(&raw),
        hint: parse_hint(&raw),
        raw,
    }
}

/// The embedded (or any local) model as the judge, sampling its answer to the judge prompt.
pub struct ModelJudge {
    model: Arc<Model>,
    name: String,
    max_tokens: usize,
    temperature: f32,
}

impl ModelJudge {
    /// A judge on `model`; each call samples at `temperature` (so m calls give m votes).
    pub fn new(model: Arc<Model>, temperature: f32) -> Self {
        Self {
            name: format!("model:{}", model.source),
            model,
            max_tokens: 160,
            temperature,
        }
    }
}

impl Judge for ModelJudge {
    fn name(&self) -> &str {
        &self.name
    }

    fn judge(&self, input: &JudgeInput<'_>) -> Result<Verdict> {
        let prompt = self.model.chat_prompt(&judge_prompt(input), None)?;
        let params = GenerateParams {
            max_tokens: self.max_tokens,
            sampling: Sampling {
                temperature: self.temperature,
                top_p: 0.95,
                seed: None,
            },
            ..Default::default()
        };
        let g = self
            .model
            .generate(&prompt, &params, |_, _| ControlFlow::Continue(()))?;
        Ok(verdict_of(g.text))
    }
}

/// Any OpenAI-compatible chat endpoint as the judge.
pub struct HttpJudge {
    /// Built on first use: judging runs on a blocking thread, and a blocking client must not
    /// be built inside the server's async runtime (reqwest panics there).
    client: std::sync::OnceLock<reqwest::blocking::Client>,
    url: String,
    model: String,
    key: Option<String>,
    name: String,
}

impl HttpJudge {
    /// A judge calling `base_url` (e.g. `http://localhost:8000/v1`) with `model`; `key` is sent
    /// as a bearer token.
    ///
    /// Errors: [`Error::Http`] when `base_url` is not an http(s) URL.
    pub fn new(base_url: &str, model: &str, key: Option<String>) -> Result<Self> {
        match reqwest::Url::parse(base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(Error::Http(format!(
                    "the judge URL {base_url:?} is not an http(s) URL (e.g. http://localhost:8000/v1)"
                )));
            }
        }
        Ok(Self {
            client: std::sync::OnceLock::new(),
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_string(),
            key,
            name: format!("http:{model}"),
        })
    }
}

/// An error with its chain of causes ("error sending request …: connection refused").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

impl HttpJudge {
    fn client(&self) -> Result<&reqwest::blocking::Client> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Error::Http(e.to_string()))?;
        Ok(self.client.get_or_init(|| c))
    }
}

impl Judge for HttpJudge {
    fn name(&self) -> &str {
        &self.name
    }

    fn judge(&self, input: &JudgeInput<'_>) -> Result<Verdict> {
        let body = serde_json::json!({
            "model": self.model,
            "messages": judge_prompt(input),
            "temperature": 0.6,
            "max_tokens": 512,
        });
        let mut req = self.client()?.post(&self.url).json(&body);
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().map_err(|e| Error::Http(with_causes(&e)))?;
        let status = resp.status();
        let value: serde_json::Value = resp.json().map_err(|e| Error::Http(e.to_string()))?;
        if !status.is_success() {
            return Err(Error::Http(format!("{status}: {value}")));
        }
        let text = value["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| Error::Http(format!("no message content in {value}")))?;
        Ok(verdict_of(text.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_answer_is_no_vote() {
        let v = verdict_of("I think it was fine.".into());
        assert_eq!(v.value, None);
        assert_eq!(verdict_of("\\boxed{-1}".into()).value, Some(-1));
    }

    #[test]
    fn the_model_judge_answers_the_judge_prompt_with_a_verdict() {
        let judge = ModelJudge::new(Arc::new(Model::tiny(3)), 0.7);
        let conversation = [Message::user("What is 2 + 2?")];
        let input = JudgeInput {
            conversation: &conversation,
            response: "5",
            next_state: "No, it is 4.",
            kind: NextKind::Reply,
        };
        let v = judge.judge(&input).expect("judges");
        // The tiny model's words are noise: what matters is that they were read as a verdict.
        assert_eq!(v.value, parse_vote(&v.raw));
        assert!(judge.name().starts_with("model:"));
        let prompt = &judge_prompt(&input)[0].content;
        assert!(prompt.contains("\\boxed{1}") && prompt.contains("[HINT_START]"));
        assert!(prompt.contains("the user's next message") && prompt.contains("No, it is 4."));
    }
}
