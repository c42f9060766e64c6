//! Driving an episode through the API: each answer is an action; a call gets the tool's output
//! as the next message (the next state the server pairs and judges); the final answer ends the
//! episode and is checked. A rollout of a group (training) then delivers its outcome reward o:
//! one last request carries the check's verdict as the final answer's next state, with
//! `session_done` and `outcome` (DESIGN.md §8).

use serde::Serialize;
use serde_json::{Value, json};

use crate::{Environment, Error, Result};

/// One step of an episode.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// The answer's text (the content; empty when it only called).
    pub action: String,
    /// The calls it made, as `name(arguments)`.
    pub calls: Vec<String>,
    /// What the environment answered (tool outputs, one per call); empty for the final answer.
    pub observation: Vec<String>,
    /// The server's turn id for the answer.
    pub turn_id: i64,
}

/// One rollout.
#[derive(Clone, Debug, Serialize)]
pub struct Episode {
    /// The task's index in the pool.
    pub task: usize,
    /// The session id the rollout used.
    pub session_id: String,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The final answer was checked and right.
    pub success: bool,
    /// The episode ran out of steps before a final answer.
    pub truncated: bool,
}

/// A client of one server that runs episodes.
pub struct Agent {
    http: reqwest::Client,
    url: String,
    key: Option<String>,
    /// New tokens per answer.
    pub max_tokens: usize,
    /// Sampling temperature.
    pub temperature: f32,
    /// Answers per episode before it is cut off.
    pub max_steps: usize,
    /// The first answer must call a tool (`tool_choice: "required"`); later ones choose.
    pub call_first: bool,
    /// Evaluation: the episodes are side turns, served and never trained on (held-out tasks
    /// must not leak into training).
    pub evaluate: bool,
}

impl Agent {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:8080`), with `key` if it needs
    /// one.
    pub fn new(base: &str, key: Option<String>) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: format!("{}/v1/chat/completions", base.trim_end_matches('/')),
            key,
            max_tokens: 160,
            temperature: 0.7,
            max_steps: 4,
            call_first: false,
            evaluate: false,
        }
    }

    async fn chat(&self, body: &Value) -> Result<Value> {
        let mut req = self.http.post(&self.url).json(body);
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

    /// Runs task `task` of `env` as session `session_id`, sampling with `seed`: answers until
    /// one calls no tool (the final answer, then checked) or `max_steps` answers. With
    /// `group_id` the session is a rollout of that group, and its outcome (1 solved, 0 not) is
    /// delivered when it ends.
    pub async fn episode<E: Environment>(
        &self,
        env: &E,
        task: usize,
        session_id: &str,
        group_id: Option<&str>,
        seed: u64,
    ) -> Result<Episode> {
        let (mut state, mut messages) = env.start(task).await?;
        let mut episode = Episode {
            task,
            session_id: session_id.to_string(),
            steps: Vec::new(),
            success: false,
            truncated: true,
        };
        for step in 0..self.max_steps {
            let r = self
                .chat(&json!({
                    "messages": messages,
                    "tools": env.tools(),
                    "tool_choice": if step == 0 && self.call_first { "required" } else { "auto" },
                    "parallel_tool_calls": false,
                    "max_tokens": self.max_tokens,
                    "temperature": self.temperature,
                    "seed": seed.wrapping_mul(1000).wrapping_add(step as u64),
                    "session_id": session_id,
                    "group_id": group_id,
                    "turn_type": if self.evaluate { "side" } else { "main" },
                }))
                .await?;
            let message = r["choices"][0]["message"].clone();
            let turn_id = r["turn_id"].as_i64().unwrap_or(0);
            let action = message["content"].as_str().unwrap_or("").to_string();
            let calls = message["tool_calls"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let mut step = Step {
                action,
                calls: Vec::new(),
                observation: Vec::new(),
                turn_id,
            };
            messages.push(message);
            if calls.is_empty() {
                episode.truncated = false;
                episode.steps.push(step);
                break;
            }
            for c in &calls {
                let name = c["function"]["name"].as_str().unwrap_or("");
                let args = c["function"]["arguments"].as_str().unwrap_or("{}");
                let out = env.observe(&mut state, name, args).await?;
                step.calls.push(format!("{name}({args})"));
                messages.push(json!({"role": "tool", "tool_call_id": c["id"], "content": out}));
                step.observation.push(out);
            }
            episode.steps.push(step);
        }
        // A cut-off episode is checked too: a shell task may be done without a last word.
        let answer = episode.steps.last().map_or("", |s| s.action.as_str());
        episode.success = env.outcome(state, task, answer).await?;
        if group_id.is_some() {
            self.deliver_outcome(&mut messages, &episode, session_id, group_id)
                .await?;
        }
        Ok(episode)
    }

    /// Ends rollout `session_id` with its outcome: the check's verdict follows the final answer
    /// as a user message (a cut-off episode already ends in tool output), so the last action is
    /// paired and judged like the others. The request's own one-token answer is never trained:
    /// nothing follows it.
    async fn deliver_outcome(
        &self,
        messages: &mut Vec<Value>,
        episode: &Episode,
        session_id: &str,
        group_id: Option<&str>,
    ) -> Result<()> {
        if !episode.truncated {
            let verdict = if episode.success {
                "The check passed: that is right."
            } else {
                "The check failed: that is wrong."
            };
            messages.push(json!({"role": "user", "content": verdict}));
        }
        self.chat(&json!({
            "messages": messages,
            "max_tokens": 1,
            "session_id": session_id,
            "group_id": group_id,
            "session_done": true,
            "outcome": if episode.success { 1.0 } else { 0.0 },
        }))
        .await?;
        Ok(())
    }
}
