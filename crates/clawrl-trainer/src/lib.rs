//! Training the policy on the hybrid objective of OpenClaw-RL.
//!
//! [`TrainablePolicy`] holds the engine's base weights frozen in their stored format, with LoRA
//! adapters ([`LoraConfig`]) as the only variables, or every projection trainable
//! ([`Tuning::Full`]); [`Trainer::train_step`] re-scores π_old, scores the
//! hint-conditioned teacher, applies [`clawrl_objective::batch_loss`] and steps [`AdamW`].

mod adamw;
pub mod demo;
mod error;
mod frozen;
mod fused;
mod gate;
mod head;
mod lora;
mod peft;
mod policy;
mod trainer;

pub use adamw::{AdamW, AdamWConfig};
pub use error::{Error, Result};
pub use gate::{Gate, Hold};
pub use head::{Gather, HeadStats};
pub use lora::{LoraConfig, Target, Tuning};
pub use peft::load_adapter;
pub use policy::{LoraPair, Mode, TrainablePolicy};
pub use trainer::{StepMetrics, TrainConfig, TrainSample, Trainer};
