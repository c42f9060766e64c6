//! The engine's errors: each says what went wrong and, where it can, what to do.

use std::path::PathBuf;

/// Anything the engine can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model path does not exist.
    #[error("model not found at {0}: pass --model PATH to a GGUF file or a Hugging Face directory")]
    ModelNotFound(PathBuf),
    /// Reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a readable model (truncated, corrupt, wrong format).
    #[error("{path} is not a usable model file: {reason}")]
    BadModel {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The model's architecture has no implementation here.
    #[error("unsupported model architecture '{0}' (supported: llama, qwen2, qwen3)")]
    UnsupportedArchitecture(String),
    /// The tokenizer could not be built or failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// The request does not fit the model's context window.
    #[error(
        "the prompt has {prompt} tokens; with {extra} more it exceeds the model's context of {context} tokens"
    )]
    ContextOverflow {
        /// Tokens in the prompt.
        prompt: usize,
        /// Tokens the request adds (response or new tokens).
        extra: usize,
        /// The context window.
        context: usize,
    },
    /// An argument is out of range or malformed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Fetching the embedded model failed.
    #[error("fetching the embedded model: {0}")]
    Fetch(String),
    /// `--device gpu` and no GPU could be opened.
    #[error("{0} (run with --device cpu or auto to use the CPU)")]
    Gpu(String),
    /// The batched decode thread failed: a kernel panicked (logged), or the thread is gone.
    #[error("decoding failed: {0}")]
    Decode(String),
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn bad_model(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        Self::BadModel {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
