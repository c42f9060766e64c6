//! The pure math of OpenClaw-RL (DESIGN.md §2), on candle tensors and nothing else:
//!
//! - [`advantage`]: votes → the majority reward r_t; step rewards and group advantages;
//! - [`select`]: overlap-guided hint selection, O[h,i] = |S^q_i ∩ S^p_{i,h}|;
//! - [`loss`]: the GRPO clipped surrogate, the top-k OPD loss with the clipped
//!   log-probability gap Δ, the k3 KL, the forward KL toward the teacher and accepted-retry
//!   distillation (extensions), and the hybrid batch loss with its metrics.
//!
//! No I/O, no model: callers bring log-probs, this crate brings the objective and its gradient.

pub mod advantage;
pub mod loss;
pub mod select;

pub use advantage::{group_advantages, majority, step_reward};
pub use loss::{
    FklTerms, LossMetrics, Method, ObjectiveConfig, OpdTerms, SampleTerms, Support, batch_loss,
    clipped_delta, fkl_token_losses, k3_kl,
};
pub use select::{Selection, SelectionMode, overlap, select};
