//! The ClawRL engine: a Llama-family transformer that generates, recording for every token
//! its id, log-prob and top-k alternatives, and that re-scores a fixed response under other
//! prompts (the hint-conditioned teacher of OpenClaw-RL's on-policy distillation).
//!
//! ```no_run
//! use clawrl_model::{GenerateParams, Message, Model};
//! let model = Model::load(&clawrl_model::default_model_path(&mut |_| {})?)?;
//! let prompt = model.chat_prompt(&[Message::user("Hi!")], None)?;
//! let out = model.generate(&prompt, &GenerateParams::default(), |_, text| {
//!     print!("{text}");
//!     std::ops::ControlFlow::Continue(())
//! })?;
//! # Ok::<(), clawrl_model::Error>(())
//! ```

mod adapter;
mod batch;
mod config;
mod constrain;
mod device;
mod error;
mod export;
pub mod fetch;
mod generate;
mod gguf;
mod hf;
mod model;
mod sampling;
mod score;
mod template;
mod tiny;
mod tokenizer;
pub mod tools;
mod weights;

use std::path::{Path, PathBuf};

pub use adapter::{LoraAdapter, LoraWeights, Target};
pub use batch::{Batcher, DEFAULT_MAX_BATCH, OnToken};
pub use clawrl_kernels::dot::simd_enabled;
pub use clawrl_kernels::ops::RopeStyle;
pub use clawrl_kernels::{QMatrix, Storage};
pub use config::{Arch, ModelConfig};
pub use constrain::Grammar;
pub use device::Device;
#[cfg(any(feature = "gpu", feature = "cuda"))]
pub use device::{DeviceEngine, Engine, WithEngine};
pub use error::{Error, Result};
pub use export::{ExportSummary, MergedType, merge_to_gguf};
pub use fetch::{FetchProgress, SMOLLM2_135M};
pub use generate::{
    FinishReason, GenerateParams, Generation, MAX_TOP_LOGPROBS, Sampling, TokenInfo,
};
pub use model::{Block, KvCache, Model, Policy, Weights};
pub use sampling::{SamplingDefaults, SamplingSource};
pub use score::PositionScore;
pub use template::{ChatTemplate, Message};
pub use tiny::{RANDOM_SHAPES, tiny_config, tiny_tokenizer, tiny_vocab};
pub use tokenizer::{GgufVocab, Tokenizer};

/// The embedded model's path, fetched into the cache on first use.
pub fn default_model_path(progress: &mut dyn FnMut(FetchProgress)) -> Result<PathBuf> {
    SMOLLM2_135M.ensure(progress)
}

impl Model {
    /// Loads a GGUF file or a Hugging Face checkpoint directory.
    pub fn load(path: &Path) -> Result<Model> {
        if !path.exists() {
            return Err(Error::ModelNotFound(path.to_path_buf()));
        }
        if path.is_dir() {
            hf::load(path)
        } else {
            gguf::load(path)
        }
    }

    /// Token ids of a conversation rendered with the chat template, the assistant's turn open;
    /// `tools` and tool calls go through the template when it renders them, else in
    /// [`tools`]' format (tools in the system prompt, calls and results as text).
    pub fn chat_prompt(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
    ) -> Result<Vec<u32>> {
        let text = if self.template.renders_tools() {
            self.template.render(messages, tools, true)?
        } else {
            self.template
                .render(&tools::fallback_messages(messages, tools), None, true)?
        };
        self.tokenizer.encode_prompt(&text)
    }
}
