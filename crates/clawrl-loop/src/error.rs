//! What can go wrong in the loop, by whose fault: the caller's (`Invalid`, `Conflict`, a store
//! `NotFound`) or ours.

/// A failure of a loop stage or of a request the loop was asked to carry out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the caller asked for cannot be done (bad settings, a hint that does not fit).
    #[error("{message}")]
    Invalid {
        /// The offending field, when there is one.
        param: Option<&'static str>,
        /// What is wrong, for people.
        message: String,
    },
    /// The request conflicts with the current state (a hint accepted twice).
    #[error("{0}")]
    Conflict(String),
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The store failed, or a record is missing (`clawrl_store::Error::NotFound`).
    #[error(transparent)]
    Store(#[from] clawrl_store::Error),
    /// The model failed to render or score.
    #[error("model: {0}")]
    Model(#[from] clawrl_model::Error),
    /// A tensor operation of the objective failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// A judge failed.
    #[error(transparent)]
    Judge(#[from] clawrl_signals::Error),
    /// The trainer failed.
    #[error("training: {0}")]
    Trainer(#[from] clawrl_trainer::Error),
    /// Files or threads failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A worker thread is gone (only at shutdown).
    #[error("the {0} has stopped")]
    Stopped(&'static str),
}

impl Error {
    /// An [`Error::Invalid`] naming no field.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::Invalid {
            param: None,
            message: message.into(),
        }
    }

    /// An [`Error::Invalid`] naming `param`.
    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            param: Some(param),
            message: message.into(),
        }
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Io(std::io::Error::other(format!("a worker task failed: {e}")))
    }
}

/// Results of the loop.
pub type Result<T> = std::result::Result<T, Error>;
