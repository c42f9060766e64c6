//! The trainer's errors.

/// What a training step can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (a shape or dtype mismatch: a bug, or a corrupt checkpoint).
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Reading or writing an adapter or checkpoint failed.
    #[error("{0}")]
    Io(String),
    /// A sample cannot be trained on.
    #[error("invalid sample: {0}")]
    InvalidSample(String),
}

/// The trainer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
