//! Driving the server as a user would, and the paper's metric.

use serde::Serialize;
use serde_json::{Value, json};

use crate::persona::{Persona, Task};
use crate::{Error, Result};

/// Consecutive satisfied sessions that count as "preference adopted".
const RUN: usize = 3;

/// The 1-based index of the first session of the first run of three consecutive sessions whose
/// first answer satisfied the preference; `None` when there is no such run.
pub fn sessions_to_preference(first_satisfied: &[bool]) -> Option<usize> {
    first_satisfied
        .windows(RUN)
        .position(|w| w.iter().all(|&s| s))
        .map(|i| i + 1)
}

/// What one session did.
#[derive(Clone, Debug, Serialize)]
pub struct SessionOutcome {
    /// 1-based session number within the run.
    pub index: usize,
    /// The persona.
    pub persona: String,
    /// The session id sent to the server.
    pub session_id: String,
    /// Which task it used.
    pub task: usize,
    /// The session's first answer met the preference.
    pub first_satisfied: bool,
    /// Some answer of the session met it.
    pub satisfied: bool,
    /// Answers the user read.
    pub turns: usize,
    /// The policy version of the first answer.
    pub policy_version: i64,
    /// Why the first answer missed (empty when it met the preference).
    pub violations: Vec<String>,
    /// The first answer's text.
    pub first_answer: String,
    /// The turn ids of the answers the user corrected.
    pub corrected_turns: Vec<i64>,
    /// Per corrected turn that annotators hinted (`--annotators`), the candidates selection
    /// chose at one position at least: `judge` or `annotator N` (1-based, the persona's order).
    pub hints_chosen: Vec<Vec<String>>,
}

/// A client of one server.
pub struct Simulation {
    http: reqwest::Client,
    base: String,
    url: String,
    key: Option<String>,
    /// New tokens per answer.
    pub max_tokens: usize,
    /// Sampling temperature of the answers.
    pub temperature: f32,
    /// Seed; each answer's sampler seed derives from it.
    pub seed: u64,
}

impl Simulation {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`), with `key` if it needs one.
    pub fn new(base: &str, key: Option<String>, seed: u64) -> Self {
        let base = base.trim_end_matches('/').to_string();
        Self {
            http: reqwest::Client::new(),
            url: format!("{base}/v1/chat/completions"),
            base,
            key,
            max_tokens: 160,
            temperature: 0.7,
            seed,
        }
    }

    /// Sends `req` with the key, and reads a JSON body from a success.
    async fn send(&self, mut req: reqwest::RequestBuilder) -> Result<Value> {
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.map_err(|e| Error::Server(e.to_string()))?;
        let status = resp.status();
        let v: Value = resp
            .json()
            .await
            .map_err(|e| Error::Server(e.to_string()))?;
        if !status.is_success() {
            return Err(Error::Server(format!("{status}: {v}")));
        }
        Ok(v)
    }

    async fn get(&self, path: &str) -> Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// Waits until the server has judged every next state and trained every full batch: the
    /// pause a real user leaves between sessions. Back-to-back simulated sessions would
    /// otherwise starve training, which yields to serving (and the result would measure the
    /// machine's speed rather than the method). Needs a key with the annotator role.
    pub async fn wait_for_training(&self) -> Result<()> {
        loop {
            let t = self.get("/studio/training").await?;
            let batch = t["settings"]["batch_size"].as_i64().unwrap_or(1);
            // The untrained control (method none) never trains: only judging is waited for.
            let paused = t["settings"]["paused"].as_bool().unwrap_or(false)
                || t["settings"]["method"].as_str() == Some("none");
            let unjudged = t["unjudged"].as_i64().unwrap_or(0);
            let pending = t["pending_samples"].as_i64().unwrap_or(0);
            // A step marks its samples trained before it serves its version: wait for both.
            let stepping = t["training"].as_bool().unwrap_or(false);
            if unjudged == 0 && !stepping && (paused || pending < batch) {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// Pauses or resumes training (a key with the owner role when the server has keys).
    pub async fn set_training_paused(&self, paused: bool) -> Result<()> {
        let action = if paused { "pause" } else { "resume" };
        self.post(&format!("/studio/training/{action}"), &json!({}))
            .await
            .map(drop)
    }

    /// Simulated annotators: each of the persona's `annotator_hints` is added to every answer
    /// of `o` the user corrected and accepted, so that selection runs over the judge's hint and
    /// theirs (M = 1 + n candidates); records which candidates it chose. Call it once the
    /// session's next states are judged and with training paused, so that each turn's sample
    /// trains with all its candidates.
    pub async fn annotate(&self, persona: &Persona, o: &mut SessionOutcome) -> Result<()> {
        if persona.annotator_hints.is_empty() {
            return Ok(());
        }
        for &turn in &o.corrected_turns {
            let mut ids = Vec::new();
            let mut chosen = Vec::new();
            for text in &persona.annotator_hints {
                let added = self
                    .post(
                        &format!("/studio/turns/{turn}/hints"),
                        &json!({"text": text}),
                    )
                    .await?;
                let id = added["hint"]["id"]
                    .as_i64()
                    .ok_or_else(|| Error::Server(format!("a hint without an id: {added}")))?;
                ids.push(id);
                let accepted = self
                    .post(&format!("/studio/hints/{id}/accept"), &json!({}))
                    .await?;
                chosen = accepted["chosen"]
                    .as_array()
                    .map(|c| c.iter().filter_map(Value::as_i64).collect())
                    .unwrap_or_default();
            }
            // The last acceptance ran selection over every candidate.
            o.hints_chosen.push(
                chosen
                    .iter()
                    .map(|c| match ids.iter().position(|i| i == c) {
                        Some(n) => format!("annotator {}", n + 1),
                        None => "judge".to_string(),
                    })
                    .collect(),
            );
        }
        Ok(())
    }

    async fn chat(&self, body: &Value) -> Result<Value> {
        self.send(self.http.post(&self.url).json(body)).await
    }

    /// One session: the first message, then a correction after each answer that misses the
    /// preference (up to the persona's `max_turns` answers), or thanks once one meets it. The
    /// last reply goes to the server too, as the next state of the last answer, in a request
    /// that ends the session.
    pub async fn session(
        &self,
        persona: &Persona,
        task: &Task,
        task_index: usize,
        index: usize,
    ) -> Result<SessionOutcome> {
        let session_id = format!("sim-{}-{}-{index}", persona.name, self.seed);
        let mut messages = vec![json!({"role": "user", "content": persona.first_message(task)})];
        let mut out = SessionOutcome {
            index,
            persona: persona.name.clone(),
            session_id: session_id.clone(),
            task: task_index,
            first_satisfied: false,
            satisfied: false,
            turns: 0,
            policy_version: 0,
            violations: Vec::new(),
            first_answer: String::new(),
            corrected_turns: Vec::new(),
            hints_chosen: Vec::new(),
        };
        for turn in 0..persona.max_turns {
            let r = self
                .chat(&json!({
                    "messages": messages,
                    "max_tokens": self.max_tokens,
                    "temperature": self.temperature,
                    "seed": self.seed.wrapping_mul(1_000_003).wrapping_add((index * 16 + turn) as u64),
                    "session_id": session_id,
                }))
                .await?;
            let text = r["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let tokens = r["usage"]["completion_tokens"].as_u64().unwrap_or(0) as usize;
            let violations = persona.violations(&text, tokens);
            if turn == 0 {
                out.first_satisfied = violations.is_empty();
                out.policy_version = r["policy_version"].as_i64().unwrap_or(0);
                out.violations = violations.clone();
                out.first_answer = text.clone();
            }
            out.turns += 1;
            messages.push(json!({"role": "assistant", "content": text}));
            if violations.is_empty() {
                out.satisfied = true;
                messages.push(json!({"role": "user", "content": persona.replies.satisfied}));
                break;
            }
            messages.push(json!({"role": "user", "content": persona.replies.correction}));
            if let Some(id) = r["turn_id"].as_i64() {
                out.corrected_turns.push(id);
            }
        }
        self.chat(&json!({
            "messages": messages,
            "max_tokens": 1,
            "session_id": session_id,
            "session_done": true,
        }))
        .await?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metric_is_the_start_of_the_first_run_of_three() {
        let s = |v: &[u8]| v.iter().map(|&b| b == 1).collect::<Vec<_>>();
        assert_eq!(sessions_to_preference(&s(&[1, 1, 1])), Some(1));
        assert_eq!(
            sessions_to_preference(&s(&[0, 1, 1, 0, 1, 1, 1, 0])),
            Some(5)
        );
        assert_eq!(sessions_to_preference(&s(&[1, 1, 0, 1, 1])), None);
        assert_eq!(sessions_to_preference(&[]), None);
    }
}
