//! The shape of a Llama-family model.

use clawrl_kernels::ops::RopeStyle;
use serde::Serialize;

/// The model families the engine runs; they differ only in small details of one block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Llama (and SmolLM, Mistral-style checkpoints).
    Llama,
    /// Qwen2: biases on the q/k/v projections.
    Qwen2,
    /// Qwen3: RMSNorm on each query and key head.
    Qwen3,
}

impl Arch {
    /// Parses an architecture name as GGUF and `config.json` spell it.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "llama" | "mistral" | "llamaforcausallm" | "mistralforcausallm" => Some(Self::Llama),
            "qwen2" | "qwen2forcausallm" => Some(Self::Qwen2),
            "qwen3" | "qwen3forcausallm" => Some(Self::Qwen3),
            _ => None,
        }
    }
}

/// Hyper-parameters of a decoder-only transformer of the Llama family.
#[derive(Clone, Debug, Serialize)]
pub struct ModelConfig {
    /// Family.
    pub arch: Arch,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Residual width.
    pub hidden: usize,
    /// SwiGLU width.
    pub intermediate: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Rotated dimensions per head.
    pub rope_dim: usize,
    /// RoPE base.
    pub rope_theta: f32,
    /// RoPE pairing.
    #[serde(skip)]
    pub rope_style: RopeStyle,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Context window in tokens.
    pub context_length: usize,
}

impl ModelConfig {
    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Checks the relations the forward pass relies on.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.heads == 0 || self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "{} heads cannot share {} key/value heads",
                self.heads, self.kv_heads
            ));
        }
        if self.rope_dim > self.head_dim || !self.rope_dim.is_multiple_of(2) {
            return Err(format!(
                "rope dimension {} does not fit head dimension {}",
                self.rope_dim, self.head_dim
            ));
        }
        if self.layers == 0 || self.hidden == 0 || self.vocab_size == 0 || self.context_length == 0
        {
            return Err("a model needs layers, a hidden size, a vocabulary and a context".into());
        }
        Ok(())
    }
}
