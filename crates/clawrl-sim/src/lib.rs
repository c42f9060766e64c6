//! Simulated users (DESIGN.md §7): personas with a preference their first message never
//! states, driving the live server through its OpenAI API exactly as a client would, and the
//! paper's metric — sessions until the first answer of a session satisfies the preference in
//! three consecutive sessions.

mod persona;
mod plot;
mod run;

pub use persona::{Persona, Preference, Replies, Task, builtin_personas, load_tasks};
pub use plot::satisfaction_svg;
pub use run::{SessionOutcome, Simulation, sessions_to_preference};

/// A simulation failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A persona or task file is unusable.
    #[error("{0}")]
    Input(String),
    /// The server failed or answered wrongly.
    #[error("server: {0}")]
    Server(String),
}

/// Results of simulation.
pub type Result<T> = std::result::Result<T, Error>;
