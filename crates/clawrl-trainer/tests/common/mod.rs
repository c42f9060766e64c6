//! What the trainer's tests share: a chat prompt and a small LoRA trainer on the tiny model.

use clawrl_model::{Message, Model};
use clawrl_trainer::{AdamWConfig, LoraConfig, TrainConfig, TrainablePolicy, Trainer};

/// `text` as the user's message in the model's chat template (token ids).
pub fn prompt(m: &Model, text: &str) -> Vec<u32> {
    m.chat_prompt(&[Message::user(text)], None).expect("prompt")
}

/// A rank-4 LoRA trainer (adapters from seed 1) with learning rate `lr` and `config`.
pub fn trainer_with(m: &Model, lr: f64, config: TrainConfig) -> Trainer {
    let policy = TrainablePolicy::new(
        m,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..Default::default()
        },
        1,
    )
    .expect("policy");
    Trainer::new(
        policy,
        AdamWConfig {
            lr,
            ..Default::default()
        },
        config,
    )
    .expect("trainer")
}
