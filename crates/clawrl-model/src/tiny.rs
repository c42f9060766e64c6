//! A tiny randomly initialised model of the same architecture, built in code, so tests of
//! everything above the engine run in milliseconds.

use clawrl_kernels::ops::RopeStyle;
use clawrl_kernels::{QMatrix, Storage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{Arch, ModelConfig};
use crate::model::{Block, Model, Weights};
use crate::template::{CHATML, ChatTemplate};
use crate::tokenizer::{GgufVocab, Tokenizer, byte_level_alphabet};

/// Control tokens of the tiny model, ids 0.., as in SmolLM2.
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// A few merges so the BPE path is exercised, not only single bytes.
const MERGES: [(&str, &str); 4] = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n")];

/// The tiny model's shape: SmolLM2's architecture at a fraction of the width and depth.
pub fn tiny_config(vocab_size: usize) -> ModelConfig {
    ModelConfig {
        arch: Arch::Llama,
        vocab_size,
        hidden: 64,
        intermediate: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        rope_dim: 16,
        rope_theta: 10_000.0,
        rope_style: RopeStyle::Interleaved,
        rms_eps: 1e-5,
        context_length: 2048,
    }
}

/// The tiny model's vocabulary, in the shape a GGUF stores it: all 256 bytes, a few merges
/// and ChatML's control tokens.
pub fn tiny_vocab() -> GgufVocab<'static> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_level_alphabet().iter().map(|c| c.to_string()));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    let mut token_types = vec![3; SPECIALS.len()];
    token_types.resize(tokens.len(), 1);
    GgufVocab {
        model: "gpt2",
        pre: Some("default"),
        merges: MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect(),
        tokens,
        token_types,
        bos: Some(1),
        eos: Some(2),
        add_bos: false,
    }
}

/// The tiny model's tokenizer (byte-level BPE over [`tiny_vocab`]).
pub fn tiny_tokenizer() -> Tokenizer {
    // The vocabulary is fixed and well-formed, so building it cannot fail.
    Tokenizer::from_gguf(tiny_vocab()).expect("the tiny tokenizer is well-formed")
}

impl Model {
    /// A tiny model with random f32 weights drawn from `seed`.
    pub fn tiny(seed: u64) -> Model {
        let tokenizer = tiny_tokenizer();
        let config = tiny_config(tokenizer.vocab_size());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut m = |rows: usize, cols: usize| {
            let a = (3.0 / cols as f32).sqrt();
            let v = (0..rows * cols).map(|_| rng.random_range(-a..a)).collect();
            QMatrix::new(rows, cols, Storage::F32(v)).expect("sizes match by construction")
        };
        let c = &config;
        let blocks = (0..c.layers)
            .map(|_| Block {
                attn_norm: vec![1.0; c.hidden],
                wq: m(c.q_dim(), c.hidden),
                wk: m(c.kv_dim(), c.hidden),
                wv: m(c.kv_dim(), c.hidden),
                wo: m(c.hidden, c.q_dim()),
                qkv_bias: None,
                qk_norm: None,
                ffn_norm: vec![1.0; c.hidden],
                gate: m(c.intermediate, c.hidden),
                up: m(c.intermediate, c.hidden),
                down: m(c.hidden, c.intermediate),
            })
            .collect();
        let embed = m(c.vocab_size, c.hidden);
        let weights = Weights {
            embed,
            blocks,
            norm: vec![1.0; c.hidden],
            output: None,
        };
        let template = ChatTemplate::new(CHATML, tokenizer.bos_text(), tokenizer.eos_text())
            .expect("ChatML compiles");
        Model::new(
            config,
            weights,
            tokenizer,
            template,
            format!("tiny random model (seed {seed})"),
        )
        .expect("the tiny model is consistent by construction")
    }
}
