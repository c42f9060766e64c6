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

/// The shapes `random:<name>` builds ([`Model::random`]).
pub const RANDOM_SHAPES: [&str; 2] = ["smollm2-135m", "qwen3-4b"];

/// The shape of a published checkpoint, by name: SmolLM2-135M (the embedded model) and
/// Qwen3-4B (the paper's size); `None` for another name.
fn named_config(name: &str) -> Option<ModelConfig> {
    Some(match name {
        "smollm2-135m" => ModelConfig {
            arch: Arch::Llama,
            vocab_size: 49_152,
            hidden: 576,
            intermediate: 1536,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            rope_dim: 64,
            rope_theta: 100_000.0,
            rope_style: RopeStyle::Interleaved,
            rms_eps: 1e-5,
            context_length: 8192,
        },
        "qwen3-4b" => ModelConfig {
            arch: Arch::Qwen3,
            vocab_size: 151_936,
            hidden: 2560,
            intermediate: 9728,
            layers: 36,
            heads: 32,
            kv_heads: 8,
            head_dim: 128,
            rope_dim: 128,
            rope_theta: 1_000_000.0,
            rope_style: RopeStyle::Half,
            rms_eps: 1e-6,
            context_length: 40_960,
        },
        _ => return None,
    })
}

impl Model {
    /// A model of a published checkpoint's shape ([`RANDOM_SHAPES`]) with random Q8_0 weights
    /// drawn from `seed`, and a byte-level tokenizer padded to its vocabulary: for benchmarks
    /// where the checkpoint cannot travel (speed does not depend on the weights' values).
    /// `--model random:<name>`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] for an unknown name.
    pub fn random(name: &str, seed: u64) -> crate::Result<Model> {
        use rayon::prelude::*;

        let config = named_config(name).ok_or_else(|| {
            crate::Error::InvalidArgument(format!(
                "unknown random model shape {name:?}: expected one of {}",
                RANDOM_SHAPES.join(", ")
            ))
        })?;
        let c = &config;
        let mut vocab = tiny_vocab();
        let specials = vocab.tokens.len();
        vocab
            .tokens
            .extend((specials..c.vocab_size).map(|i| format!("<|random_{i}|>")));
        vocab.token_types.resize(c.vocab_size, 1);
        let tokenizer = Tokenizer::from_gguf(vocab)?;
        // Every matrix its own stream of the seed, so they are drawn in parallel.
        let matrix = |index: u64, rows: usize, cols: usize| {
            let mut rng = StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let a = (3.0 / cols as f32).sqrt();
            let v: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-a..a)).collect();
            QMatrix::new(
                rows,
                cols,
                Storage::Q8_0(clawrl_kernels::quant::quantize_q8_0(&v)),
            )
            .expect("sizes match by construction")
        };
        let blocks = (0..c.layers)
            .into_par_iter()
            .map(|l| {
                let i = 8 * l as u64 + 1;
                Block {
                    attn_norm: vec![1.0; c.hidden],
                    wq: matrix(i, c.q_dim(), c.hidden),
                    wk: matrix(i + 1, c.kv_dim(), c.hidden),
                    wv: matrix(i + 2, c.kv_dim(), c.hidden),
                    wo: matrix(i + 3, c.hidden, c.q_dim()),
                    qkv_bias: None,
                    qk_norm: (c.arch == Arch::Qwen3)
                        .then(|| [vec![1.0; c.head_dim], vec![1.0; c.head_dim]]),
                    ffn_norm: vec![1.0; c.hidden],
                    gate: matrix(i + 4, c.intermediate, c.hidden),
                    up: matrix(i + 5, c.intermediate, c.hidden),
                    down: matrix(i + 6, c.hidden, c.intermediate),
                }
            })
            .collect();
        let weights = Weights {
            embed: matrix(0, c.vocab_size, c.hidden),
            blocks,
            norm: vec![1.0; c.hidden],
            output: None,
        };
        let template = ChatTemplate::new(CHATML, tokenizer.bos_text(), tokenizer.eos_text())?;
        Model::new(
            config,
            weights,
            tokenizer,
            template,
            format!("random:{name} (seed {seed})"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_model_has_its_shape_and_generates() {
        let m = Model::random("smollm2-135m", 0).expect("builds");
        assert_eq!(m.config.hidden, 576);
        assert_eq!(m.config.layers, 30);
        assert_eq!(m.tokenizer.vocab_size(), 49_152);
        let prompt = m.tokenizer.encode("The printing press").expect("encodes");
        let mut cache = m.new_cache();
        let logits = m.forward(&prompt, &mut cache, 1).expect("runs");
        assert_eq!(logits.len(), 49_152);
        assert!(logits.iter().all(|v| v.is_finite()));
        let e = Model::random("gpt-5", 0).expect_err("unknown shape");
        assert!(e.to_string().contains("smollm2-135m, qwen3-4b"), "{e}");
    }
}
