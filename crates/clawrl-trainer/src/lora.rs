//! What training updates: LoRA adapters (and their hyper-parameters) or every projection.

use candle_core::Var;
pub use clawrl_model::Target;

/// LoRA hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// α; the update is scaled by α / r.
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// Wrapped projections.
    pub targets: Vec<Target>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            targets: Target::ALL.to_vec(),
        }
    }
}

impl LoraConfig {
    /// The default adapter at rank `rank`, α = 2r as in the default (so the scale α / r stays 2).
    pub fn with_rank(rank: usize) -> Self {
        Self {
            rank,
            alpha: 2.0 * rank as f64,
            ..Self::default()
        }
    }

    /// α / r.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// What training updates.
#[derive(Clone, Debug, PartialEq)]
pub enum Tuning {
    /// Low-rank adapters over the frozen base.
    Lora(LoraConfig),
    /// Full fine-tuning: every block's seven projections, in f32. The embedding, the output
    /// head and the norms stay frozen (the head is tied to the embedding in the embedded model).
    Full,
}

/// One wrapped projection: `W x + (α/r)·B(A x)`.
pub struct LoraPair {
    /// A: `r × in`, random at start.
    pub a: Var,
    /// B: `out × r`, zero at start so a new adapter changes nothing.
    pub b: Var,
}
