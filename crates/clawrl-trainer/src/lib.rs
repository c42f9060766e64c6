//! Training the policy on the hybrid objective of OpenClaw-RL.
//!
//! [`TrainablePolicy`] holds the engine's base weights frozen in their stored format, with LoRA
//! adapters ([`LoraConfig`]) as the only variables, or every projection trainable
//! ([`Tuning::Full`]); [`Trainer::train_step`] re-scores π_old, scores the
//! hint-conditioned teacher, applies [`clawrl_objective::batch_loss`] and steps [`AdamW`].

mod adamw;
pub mod demo;
#[cfg(any(feature = "gpu", feature = "cuda"))]
mod device;
mod error;
mod frozen;
mod fused;
mod gate;
mod head;
mod lora;
#[cfg(any(feature = "gpu", feature = "cuda"))]
mod pass;
mod peft;
mod policy;
mod trainer;
mod values;

pub use adamw::{AdamW, AdamWConfig};
pub use error::{Error, Result};
pub use gate::{Gate, Hold};
pub use head::{Gather, HeadStats};
pub use lora::{LoraConfig, LoraPair, Target, Tuning};
pub use peft::load_adapter;
pub use policy::{Mode, TrainablePolicy};
pub use trainer::{StepMetrics, Teacher, TrainConfig, TrainSample, Trainer};

/// Runs candle's element-wise ops on the calling thread instead of in candle's own pool.
///
/// The heavy work of a step runs in the engine's kernels on rayon's threads; what candle still
/// computes (residual adds, layout copies, the objective) is small, while the workers of
/// candle's pool spin after each of its ops and take a core from the GEMM threads: about a
/// tenth of a training step on 2 cores (`clawrl bench train`). An explicit
/// `CANDLE_NUM_THREADS` is left alone.
///
/// # Safety
/// It sets an environment variable: call it before the process starts any other thread.
pub unsafe fn keep_candle_on_the_calling_thread() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees that no other thread runs.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}
