//! The transformer: weights, KV cache and the forward pass.

use clawrl_kernels::QMatrix;
use clawrl_kernels::ops::{self, AttnShape, Rope};
use tracing::trace_span;

use crate::adapter::{LoraAdapter, Target};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// Prefill runs in chunks of this many tokens to bound the activations' memory.
const PREFILL_CHUNK: usize = 512;

/// The weights of one transformer block.
#[derive(Clone, Debug)]
pub struct Block {
    /// RMSNorm before attention.
    pub attn_norm: Vec<f32>,
    /// Query projection (`q_dim × hidden`).
    pub wq: QMatrix,
    /// Key projection (`kv_dim × hidden`).
    pub wk: QMatrix,
    /// Value projection (`kv_dim × hidden`).
    pub wv: QMatrix,
    /// Output projection (`hidden × q_dim`).
    pub wo: QMatrix,
    /// Query/key/value biases (Qwen2).
    pub qkv_bias: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm of queries and keys (Qwen3).
    pub qk_norm: Option<[Vec<f32>; 2]>,
    /// RMSNorm before the MLP.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate (`intermediate × hidden`).
    pub gate: QMatrix,
    /// SwiGLU up (`intermediate × hidden`).
    pub up: QMatrix,
    /// SwiGLU down (`hidden × intermediate`).
    pub down: QMatrix,
}

impl Block {
    /// The projection `t`, to replace its weights (full fine-tuning publishes this way).
    pub fn projection_mut(&mut self, t: Target) -> &mut QMatrix {
        match t {
            Target::Q => &mut self.wq,
            Target::K => &mut self.wk,
            Target::V => &mut self.wv,
            Target::O => &mut self.wo,
            Target::Gate => &mut self.gate,
            Target::Up => &mut self.up,
            Target::Down => &mut self.down,
        }
    }

    /// The projections an adapter can wrap, with their targets.
    pub fn projections(&self) -> [(Target, &QMatrix); 7] {
        [
            (Target::Q, &self.wq),
            (Target::K, &self.wk),
            (Target::V, &self.wv),
            (Target::O, &self.wo),
            (Target::Gate, &self.gate),
            (Target::Up, &self.up),
            (Target::Down, &self.down),
        ]
    }
}

/// All weights of a model.
#[derive(Clone, Debug)]
pub struct Weights {
    /// Token embedding (`vocab × hidden`).
    pub embed: QMatrix,
    /// The blocks, first to last.
    pub blocks: Vec<Block>,
    /// Final RMSNorm.
    pub norm: Vec<f32>,
    /// Output projection (`vocab × hidden`); `None` when tied to the embedding.
    pub output: Option<QMatrix>,
}

/// Keys and values of the positions seen so far, per block.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A model with an optional adapter on top: what generates and scores.
#[derive(Clone, Copy)]
pub struct Policy<'a> {
    /// The base.
    pub model: &'a Model,
    /// The adapter, if any.
    pub adapter: Option<&'a LoraAdapter>,
}

impl Policy<'_> {
    /// [`Model::forward`] with this policy's adapter.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        n_logits: usize,
    ) -> Result<Vec<f32>> {
        in_pool(|| {
            self.model
                .forward_in_pool(tokens, cache, n_logits, self.adapter)
        })
    }
}

/// A loaded model: its shape, weights, tokenizer and chat template.
pub struct Model {
    /// Shape.
    pub config: ModelConfig,
    /// Weights.
    pub weights: Weights,
    /// Tokenizer.
    pub tokenizer: Tokenizer,
    /// Chat template.
    pub template: ChatTemplate,
    rope: Rope,
    /// Where the model came from, for display.
    pub source: String,
    /// Temperature and top-p for requests that name none.
    pub sampling: crate::SamplingDefaults,
    /// llguidance's view of the vocabulary, built on the first constrained generation.
    pub(crate) constraints: crate::constrain::Constraints,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Assembles a model, checking that every weight has the shape the config implies.
    pub fn new(
        config: ModelConfig,
        weights: Weights,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        source: String,
    ) -> Result<Self> {
        let bad = |reason: String| Error::BadModel {
            path: source.clone().into(),
            reason,
        };
        config.validate().map_err(&bad)?;
        check_weights(&config, &weights).map_err(&bad)?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(bad(format!(
                "the tokenizer has {} tokens but the embedding only {} rows",
                tokenizer.vocab_size(),
                config.vocab_size
            )));
        }
        let rope = Rope::new(
            config.rope_dim,
            config.rope_theta,
            config.rope_style,
            config.context_length,
        );
        Ok(Self {
            config,
            weights,
            tokenizer,
            template,
            rope,
            sampling: crate::SamplingDefaults::for_name(&source),
            source,
            constraints: crate::constrain::Constraints::new(),
        })
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            k: vec![Vec::new(); self.config.layers],
            v: vec![Vec::new(); self.config.layers],
            len: 0,
        }
    }

    /// Bytes held by the weights.
    pub fn weight_bytes(&self) -> usize {
        let w = &self.weights;
        let blocks: usize = w
            .blocks
            .iter()
            .map(|b| {
                [&b.wq, &b.wk, &b.wv, &b.wo, &b.gate, &b.up, &b.down]
                    .iter()
                    .map(|m| m.size_in_bytes())
                    .sum::<usize>()
            })
            .sum();
        blocks + w.embed.size_in_bytes() + w.output.as_ref().map_or(0, QMatrix::size_in_bytes)
    }

    /// Fails unless `extra` more positions fit after `prompt` in the context window.
    pub fn check_context(&self, prompt: usize, extra: usize) -> Result<()> {
        if prompt + extra > self.config.context_length {
            return Err(Error::ContextOverflow {
                prompt,
                extra,
                context: self.config.context_length,
            });
        }
        Ok(())
    }

    /// Runs `tokens` after the positions already in `cache` and returns the logits of the last
    /// `n_logits` of them, row-major (`n_logits × vocab`).
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        n_logits: usize,
    ) -> Result<Vec<f32>> {
        self.policy(None).forward(tokens, cache, n_logits)
    }

    /// The base model with `adapter` on top (or alone, with `None`).
    pub fn policy<'a>(&'a self, adapter: Option<&'a LoraAdapter>) -> Policy<'a> {
        Policy {
            model: self,
            adapter,
        }
    }

    pub(crate) fn forward_in_pool(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        n_logits: usize,
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<f32>> {
        let n_logits = n_logits.min(tokens.len());
        self.check_context(cache.len, tokens.len())?;
        if let Some(&bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        if let Some(a) = adapter {
            self.check_adapter(a)?;
        }
        let hidden = self.config.hidden;
        let mut last = Vec::with_capacity(n_logits * hidden);
        let first_kept = tokens.len() - n_logits;
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + PREFILL_CHUNK).min(tokens.len());
            let x = self.forward_chunk(&tokens[start..end], cache, adapter);
            if end > first_kept {
                let from = first_kept.saturating_sub(start);
                last.extend_from_slice(&x[from * hidden..]);
            }
            start = end;
        }
        Ok(self.logits(&last, n_logits))
    }

    fn check_adapter(&self, a: &LoraAdapter) -> Result<()> {
        if a.layers() != self.config.layers {
            return Err(Error::InvalidArgument(format!(
                "the adapter spans {} blocks, the model has {}",
                a.layers(),
                self.config.layers
            )));
        }
        for (l, b) in self.weights.blocks.iter().enumerate() {
            for (t, m) in b.projections() {
                a.check(l, t, m)?;
            }
        }
        Ok(())
    }

    /// Final norm and output projection of `n` residual rows.
    fn logits(&self, x: &[f32], n: usize) -> Vec<f32> {
        let _span = trace_span!("logits", n).entered();
        let mut h = vec![0.0; x.len()];
        ops::rms_norm(x, &self.weights.norm, self.config.rms_eps, &mut h);
        let out = self.weights.output.as_ref().unwrap_or(&self.weights.embed);
        let mut logits = vec![0.0; n * self.config.vocab_size];
        out.matmul(&h, n, &mut logits);
        logits
    }

    /// The residual stream after all blocks for `tokens` (`t × hidden`), extending `cache`.
    fn forward_chunk(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        adapter: Option<&LoraAdapter>,
    ) -> Vec<f32> {
        let c = &self.config;
        let t = tokens.len();
        let pos0 = cache.len;
        let (hidden, q_dim, kv_dim) = (c.hidden, c.q_dim(), c.kv_dim());
        let mut x = vec![0.0; t * hidden];
        for (row, &tok) in x.chunks_exact_mut(hidden).zip(tokens) {
            self.weights.embed.dequantize_rows(tok as usize, row);
        }
        let mut h = vec![0.0; t * hidden];
        let mut q = vec![0.0; t * q_dim];
        let mut k = vec![0.0; t * kv_dim];
        let mut v = vec![0.0; t * kv_dim];
        let mut attn = vec![0.0; t * q_dim];
        let mut proj = vec![0.0; t * hidden];
        let mut gate = vec![0.0; t * c.intermediate];
        let mut up = vec![0.0; t * c.intermediate];
        let shape = AttnShape {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        };
        // y = W x, plus the adapter's (α/r)·B(A x) where it wraps this projection.
        let project = |l: usize, target: Target, w: &QMatrix, x: &[f32], y: &mut [f32]| {
            w.matmul(x, t, y);
            if let Some(a) = adapter {
                a.apply(l, target, x, t, y);
            }
        };
        for (l, b) in self.weights.blocks.iter().enumerate() {
            let _span = trace_span!("block", l, t).entered();
            ops::rms_norm(&x, &b.attn_norm, c.rms_eps, &mut h);
            project(l, Target::Q, &b.wq, &h, &mut q);
            project(l, Target::K, &b.wk, &h, &mut k);
            project(l, Target::V, &b.wv, &h, &mut v);
            if let Some([bq, bk, bv]) = &b.qkv_bias {
                add_rows(&mut q, bq);
                add_rows(&mut k, bk);
                add_rows(&mut v, bv);
            }
            if let Some([qn, kn]) = &b.qk_norm {
                norm_heads(&mut q, qn, c.rms_eps);
                norm_heads(&mut k, kn, c.rms_eps);
            }
            self.rope.apply(&mut q, c.heads, c.head_dim, pos0);
            self.rope.apply(&mut k, c.kv_heads, c.head_dim, pos0);
            cache.k[l].extend_from_slice(&k);
            cache.v[l].extend_from_slice(&v);
            ops::attention(&q, &cache.k[l], &cache.v[l], shape, pos0, &mut attn);
            project(l, Target::O, &b.wo, &attn, &mut proj);
            add_into(&mut x, &proj);

            ops::rms_norm(&x, &b.ffn_norm, c.rms_eps, &mut h);
            project(l, Target::Gate, &b.gate, &h, &mut gate);
            project(l, Target::Up, &b.up, &h, &mut up);
            ops::silu_mul(&mut gate, &up);
            project(l, Target::Down, &b.down, &gate, &mut proj);
            add_into(&mut x, &proj);
        }
        cache.len += t;
        x
    }
}

/// Runs `f` on a thread of the compute pool. Parallel kernels called from inside the pool
/// split work by stealing; called from outside, every kernel would hand its work over and
/// sleep until it is done, which costs a thread wake-up per matrix product.
pub(crate) fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::join(f, || ()).0
    }
}

fn add_into(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn add_rows(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_into(row, bias);
    }
}

fn norm_heads(x: &mut [f32], w: &[f32], eps: f32) {
    let src = x.to_vec();
    ops::rms_norm(&src, w, eps, x);
}

fn check_weights(c: &ModelConfig, w: &Weights) -> std::result::Result<(), String> {
    let expect = |name: &str, m: &QMatrix, rows: usize, cols: usize| {
        if (m.rows(), m.cols()) == (rows, cols) {
            Ok(())
        } else {
            Err(format!(
                "{name} is {}×{}, expected {rows}×{cols}",
                m.rows(),
                m.cols()
            ))
        }
    };
    let vec_len = |name: &str, v: &[f32], n: usize| {
        if v.len() == n {
            Ok(())
        } else {
            Err(format!("{name} has {} values, expected {n}", v.len()))
        }
    };
    expect("token embedding", &w.embed, c.vocab_size, c.hidden)?;
    if let Some(out) = &w.output {
        expect("output", out, c.vocab_size, c.hidden)?;
    }
    vec_len("output norm", &w.norm, c.hidden)?;
    if w.blocks.len() != c.layers {
        return Err(format!("{} blocks, expected {}", w.blocks.len(), c.layers));
    }
    for (i, b) in w.blocks.iter().enumerate() {
        let n = |s: &str| format!("block {i} {s}");
        expect(&n("q"), &b.wq, c.q_dim(), c.hidden)?;
        expect(&n("k"), &b.wk, c.kv_dim(), c.hidden)?;
        expect(&n("v"), &b.wv, c.kv_dim(), c.hidden)?;
        expect(&n("o"), &b.wo, c.hidden, c.q_dim())?;
        expect(&n("gate"), &b.gate, c.intermediate, c.hidden)?;
        expect(&n("up"), &b.up, c.intermediate, c.hidden)?;
        expect(&n("down"), &b.down, c.hidden, c.intermediate)?;
        vec_len(&n("attention norm"), &b.attn_norm, c.hidden)?;
        vec_len(&n("ffn norm"), &b.ffn_norm, c.hidden)?;
        if let Some([bq, bk, bv]) = &b.qkv_bias {
            vec_len(&n("q bias"), bq, c.q_dim())?;
            vec_len(&n("k bias"), bk, c.kv_dim())?;
            vec_len(&n("v bias"), bv, c.kv_dim())?;
        }
        if let Some([qn, kn]) = &b.qk_norm {
            vec_len(&n("q norm"), qn, c.head_dim)?;
            vec_len(&n("k norm"), kn, c.head_dim)?;
        }
    }
    Ok(())
}
