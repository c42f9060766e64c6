//! Environments for general agents (DESIGN.md §8). An environment is a client of the same
//! OpenAI API a person uses: a rollout is a session, the model's answer is the action, and
//! what the environment answers (a tool's output) is the next state the loop judges. The
//! episode ends with the model's final answer, which the environment checks (the outcome).
//!
//! Built in: `tool-call` ([`ToolCallEnv`]), GSM8K questions with a calculator tool, and
//! `terminal` ([`TerminalEnv`]), shell tasks in a sandbox. GUI and SWE environments are the
//! same loop run from outside: any client that plays [`Agent`]'s part over the API.

mod rollout;
mod terminal;
mod tool_call;

use std::future::Future;

use serde_json::Value;

pub use rollout::{Agent, Episode, Step};
pub use terminal::{Sandbox, ShellTask, Split, TerminalEnv, sandboxed};
pub use tool_call::{ToolCallEnv, calculator, final_number, reference_number};

/// An environment: its tools, how an episode of a task starts, what a call returns, and
/// whether the episode solved the task.
pub trait Environment: Send + Sync {
    /// What one episode holds while it runs (a sandbox directory; nothing for a calculator).
    type State: Send;

    /// The environment's name (`tool-call`, `terminal`).
    fn name(&self) -> &'static str;

    /// How many tasks it has.
    fn len(&self) -> usize;

    /// Whether it has no task.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tools the model may call, in OpenAI's shape.
    fn tools(&self) -> Value;

    /// Starts an episode of task `task`: its state and first messages.
    fn start(&self, task: usize) -> impl Future<Output = Result<(Self::State, Vec<Value>)>> + Send;

    /// The observation a call returns (what the model reads as the tool's output).
    fn observe(
        &self,
        state: &mut Self::State,
        name: &str,
        arguments: &str,
    ) -> impl Future<Output = Result<String>> + Send;

    /// Whether the episode that ended with `answer` solved task `task` (the outcome).
    fn outcome(
        &self,
        state: Self::State,
        task: usize,
        answer: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// An environment or rollout failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A task file or setting is unusable.
    #[error("{0}")]
    Input(String),
    /// The server failed or answered wrongly.
    #[error("server: {0}")]
    Server(String),
}

/// Results of environments.
pub type Result<T> = std::result::Result<T, Error>;
