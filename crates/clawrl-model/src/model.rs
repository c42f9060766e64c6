//! The transformer: weights, KV cache and the forward pass.

use clawrl_kernels::ops::{AttnShape, Rope};
use clawrl_kernels::{Activations, Backend, Cpu, QMatrix};
use tracing::trace_span;

use crate::adapter::{LoraAdapter, Target};
use crate::config::ModelConfig;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;
pub use crate::weights::{Block, Weights};

/// Prefill runs in chunks of this many tokens to bound the activations' memory.
const PREFILL_CHUNK: usize = 512;

/// Keys and values of the positions seen so far, per block, where the model runs.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Layers,
    len: usize,
}

/// Each block's `[keys, values]`, in host memory or in a GPU's.
#[derive(Clone, Debug)]
enum Layers {
    Cpu(Vec<[Vec<f32>; 2]>),
    #[cfg(feature = "gpu")]
    Gpu(Vec<[clawrl_gpu::GpuCache; 2]>),
    #[cfg(feature = "cuda")]
    Cuda(Vec<[clawrl_cuda::CudaCache; 2]>),
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
    /// One decode step of several sequences at once: `steps[i]` is sequence i's next token
    /// and its cache, which gains that position. Returns the logits, row i for sequence i
    /// (`steps.len() × vocab`). Each row is what [`Self::forward`] gives that sequence alone
    /// (bit for bit on the CPU): the weights are read once for the whole batch, and no
    /// sequence sees another's keys.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a token outside the vocabulary, a cache on another
    /// device than the model's, or an adapter of another shape; [`Error::ContextOverflow`]
    /// for a full cache. No cache changes then.
    pub fn forward_batch(&self, steps: &mut [(u32, &mut KvCache)]) -> Result<Vec<f32>> {
        in_pool(|| self.model.forward_batch_in_pool(steps, self.adapter))
    }

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
    pub(crate) rope: Rope,
    /// Where the model came from, for display.
    pub source: String,
    /// Temperature and top-p for requests that name none.
    pub sampling: crate::SamplingDefaults,
    /// llguidance's view of the vocabulary, built on the first constrained generation.
    pub(crate) constraints: crate::constrain::Constraints,
    /// The copy on an accelerator, when the model runs there ([`Model::set_device`]).
    #[cfg(any(feature = "gpu", feature = "cuda"))]
    pub(crate) engine: Option<crate::device::Engine>,
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
            #[cfg(any(feature = "gpu", feature = "cuda"))]
            engine: None,
        })
    }

    /// An empty KV cache for this model, on the device it runs on.
    pub fn new_cache(&self) -> KvCache {
        let n = self.config.layers;
        #[cfg(any(feature = "gpu", feature = "cuda"))]
        if let Some(e) = &self.engine {
            use crate::device::Engine;
            fn caches<B: Backend>(be: &B, n: usize) -> Vec<[B::Cache; 2]> {
                (0..n).map(|_| [be.new_cache(), be.new_cache()]).collect()
            }
            let layers = match e {
                #[cfg(feature = "gpu")]
                Engine::Wgpu(g) => Layers::Gpu(caches(g.backend(), n)),
                #[cfg(feature = "cuda")]
                Engine::Cuda(g) => Layers::Cuda(caches(g.backend(), n)),
            };
            return KvCache { layers, len: 0 };
        }
        KvCache {
            layers: Layers::Cpu(vec![[Vec::new(), Vec::new()]; n]),
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
        self.check_tokens(tokens)?;
        if let Some(a) = adapter {
            self.check_adapter(a)?;
        }
        let pos = &mut cache.len;
        match &mut cache.layers {
            Layers::Cpu(layers) => {
                let cpu = Cpu { rope: &self.rope };
                Ok(self.run(&cpu, &self.weights, layers, pos, tokens, n_logits, adapter))
            }
            #[cfg(feature = "gpu")]
            Layers::Gpu(layers) => match &self.engine {
                Some(crate::device::Engine::Wgpu(g)) => {
                    Ok(self.run_on(g, layers, pos, tokens, n_logits, adapter))
                }
                _ => Err(Error::InvalidArgument(
                    "a wgpu KV cache given to a model not on wgpu".into(),
                )),
            },
            #[cfg(feature = "cuda")]
            Layers::Cuda(layers) => match &self.engine {
                Some(crate::device::Engine::Cuda(g)) => {
                    Ok(self.run_on(g, layers, pos, tokens, n_logits, adapter))
                }
                _ => Err(Error::InvalidArgument(
                    "a CUDA KV cache given to a model not on CUDA".into(),
                )),
            },
        }
    }

    /// [`Self::run`] on an accelerator's copy, with `adapter` uploaded there.
    #[cfg(any(feature = "gpu", feature = "cuda"))]
    fn run_on<B: clawrl_kernels::Accelerator>(
        &self,
        g: &crate::device::DeviceEngine<B>,
        layers: &mut [[B::Cache; 2]],
        pos: &mut usize,
        tokens: &[u32],
        n_logits: usize,
        adapter: Option<&LoraAdapter>,
    ) -> Vec<f32> {
        let adapter = adapter.map(|a| g.adapter(a));
        self.run(
            g.backend(),
            g.weights(),
            layers,
            pos,
            tokens,
            n_logits,
            adapter.as_deref(),
        )
    }

    /// The forward pass on backend `be` with weights `w` there: prefill in chunks, then the
    /// logits of the last `n_logits` tokens (`n_logits × vocab`, on the host).
    #[allow(clippy::too_many_arguments)]
    fn run<B: Backend>(
        &self,
        be: &B,
        w: &Weights<B::Matrix, B::Tensor>,
        layers: &mut [[B::Cache; 2]],
        pos: &mut usize,
        tokens: &[u32],
        n_logits: usize,
        adapter: Option<&LoraAdapter<B::Matrix>>,
    ) -> Vec<f32> {
        let hidden = self.config.hidden;
        let mut logits = Vec::with_capacity(n_logits * self.config.vocab_size);
        let first_kept = tokens.len() - n_logits;
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + PREFILL_CHUNK).min(tokens.len());
            let rows = Rows::Sequence {
                layers: &mut *layers,
                pos0: *pos,
            };
            let x = self.forward_chunk(be, w, &tokens[start..end], rows, adapter);
            *pos += end - start;
            if end > first_kept {
                let from = first_kept.saturating_sub(start);
                let kept = be.slice(&x, from * hidden, (end - start - from) * hidden);
                logits.extend(self.logits(be, w, &kept, end - start - from, Activations::Auto));
            }
            start = end;
        }
        logits
    }

    /// One decode step of several sequences at once ([`Policy::forward_batch`]).
    fn forward_batch_in_pool(
        &self,
        steps: &mut [(u32, &mut KvCache)],
        adapter: Option<&LoraAdapter>,
    ) -> Result<Vec<f32>> {
        let tokens: Vec<u32> = steps.iter().map(|&(t, _)| t).collect();
        self.check_tokens(&tokens)?;
        for (_, cache) in steps.iter() {
            self.check_context(cache.len, 1)?;
        }
        if let Some(a) = adapter {
            self.check_adapter(a)?;
        }
        let Some((_, first)) = steps.first() else {
            return Ok(Vec::new());
        };
        let logits = match first.layers {
            Layers::Cpu(_) => {
                let seqs = batch_layers(steps, |l| match l {
                    Layers::Cpu(v) => Some(v),
                    #[cfg(any(feature = "gpu", feature = "cuda"))]
                    _ => None,
                })?;
                let cpu = Cpu { rope: &self.rope };
                self.run_batch(&cpu, &self.weights, seqs, &tokens, adapter)
            }
            #[cfg(feature = "gpu")]
            Layers::Gpu(_) => {
                let seqs = batch_layers(steps, |l| match l {
                    Layers::Gpu(v) => Some(v),
                    _ => None,
                })?;
                match &self.engine {
                    Some(crate::device::Engine::Wgpu(g)) => {
                        self.run_batch_on(g, seqs, &tokens, adapter)
                    }
                    _ => return Err(not_here()),
                }
            }
            #[cfg(feature = "cuda")]
            Layers::Cuda(_) => {
                let seqs = batch_layers(steps, |l| match l {
                    Layers::Cuda(v) => Some(v),
                    _ => None,
                })?;
                match &self.engine {
                    Some(crate::device::Engine::Cuda(g)) => {
                        self.run_batch_on(g, seqs, &tokens, adapter)
                    }
                    _ => return Err(not_here()),
                }
            }
        };
        for (_, cache) in steps.iter_mut() {
            cache.len += 1;
        }
        Ok(logits)
    }

    /// A batched decode step on backend `be`: row i of `tokens` is the next token of
    /// `seqs[i]` (its caches and position). Returns `tokens.len() × vocab` logits.
    fn run_batch<B: Backend>(
        &self,
        be: &B,
        w: &Weights<B::Matrix, B::Tensor>,
        seqs: Vec<Seq<'_, B::Cache>>,
        tokens: &[u32],
        adapter: Option<&LoraAdapter<B::Matrix>>,
    ) -> Vec<f32> {
        let _span = trace_span!("decode_batch", sequences = tokens.len()).entered();
        let x = self.forward_chunk(be, w, tokens, Rows::Batch(seqs), adapter);
        self.logits(be, w, &x, tokens.len(), Activations::Rows)
    }

    /// [`Self::run_batch`] on an accelerator's copy, with `adapter` uploaded there.
    #[cfg(any(feature = "gpu", feature = "cuda"))]
    fn run_batch_on<B: clawrl_kernels::Accelerator>(
        &self,
        g: &crate::device::DeviceEngine<B>,
        seqs: Vec<Seq<'_, B::Cache>>,
        tokens: &[u32],
        adapter: Option<&LoraAdapter>,
    ) -> Vec<f32> {
        let adapter = adapter.map(|a| g.adapter(a));
        self.run_batch(g.backend(), g.weights(), seqs, tokens, adapter.as_deref())
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        match tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            Some(bad) => Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.config.vocab_size
            ))),
            None => Ok(()),
        }
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

    /// Final norm and output projection of `n` residual rows (`n × vocab`, on the host).
    fn logits<B: Backend>(
        &self,
        be: &B,
        w: &Weights<B::Matrix, B::Tensor>,
        x: &B::Tensor,
        n: usize,
        act: Activations,
    ) -> Vec<f32> {
        let _span = trace_span!("logits", n).entered();
        let mut h = be.zeros(n * self.config.hidden);
        be.rms_norm(x, &w.norm, self.config.rms_eps, &mut h);
        let mut logits = be.zeros(n * self.config.vocab_size);
        be.matmul(w.head(), &h, n, act, &mut logits);
        be.download(&logits)
    }

    /// The residual stream after all blocks for `tokens` (`t × hidden`), each row attending
    /// as `rows` says and appending its key and value there. Written once for every
    /// [`Backend`].
    fn forward_chunk<B: Backend>(
        &self,
        be: &B,
        w: &Weights<B::Matrix, B::Tensor>,
        tokens: &[u32],
        mut rows: Rows<'_, B::Cache>,
        adapter: Option<&LoraAdapter<B::Matrix>>,
    ) -> B::Tensor {
        let c = &self.config;
        let t = tokens.len();
        let act = rows.activations();
        let (hidden, q_dim, kv_dim) = (c.hidden, c.q_dim(), c.kv_dim());
        // The embedding rows are gathered on the host: t rows, not a vocabulary's worth.
        let mut embedded = vec![0.0; t * hidden];
        for (row, &tok) in embedded.chunks_exact_mut(hidden).zip(tokens) {
            self.weights.embed.dequantize_rows(tok as usize, row);
        }
        let mut x = be.upload(&embedded);
        let mut h = be.zeros(t * hidden);
        let mut q = be.zeros(t * q_dim);
        let mut k = be.zeros(t * kv_dim);
        let mut v = be.zeros(t * kv_dim);
        let mut attn = be.zeros(t * q_dim);
        let mut proj = be.zeros(t * hidden);
        let mut gate = be.zeros(t * c.intermediate);
        let mut up = be.zeros(t * c.intermediate);
        let shape = AttnShape {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        };
        // y = W x, plus the adapter's (α/r)·B(A x) where it wraps this projection.
        let project = |l: usize,
                       target: Target,
                       b: &Block<B::Matrix, B::Tensor>,
                       x: &B::Tensor,
                       y: &mut B::Tensor| {
            be.matmul(b.projection(target), x, t, act, y);
            if let Some(a) = adapter
                && let Some(p) = a.pair(l, target)
            {
                be.lora(&p.a, &p.b, a.scale, x, t, act, y);
            }
        };
        for (l, b) in w.blocks.iter().enumerate() {
            let _span = trace_span!("block", l, t).entered();
            be.rms_norm(&x, &b.attn_norm, c.rms_eps, &mut h);
            project(l, Target::Q, b, &h, &mut q);
            project(l, Target::K, b, &h, &mut k);
            project(l, Target::V, b, &h, &mut v);
            if let Some([bq, bk, bv]) = &b.qkv_bias {
                be.add_rows(&mut q, bq);
                be.add_rows(&mut k, bk);
                be.add_rows(&mut v, bv);
            }
            if let Some([qn, kn]) = &b.qk_norm {
                // Per-head RMSNorm: rows of head_dim, out of place.
                let src = be.slice(&q, 0, t * q_dim);
                be.rms_norm(&src, qn, c.rms_eps, &mut q);
                let src = be.slice(&k, 0, t * kv_dim);
                be.rms_norm(&src, kn, c.rms_eps, &mut k);
            }
            match &mut rows {
                Rows::Sequence { layers, pos0 } => {
                    let [k_cache, v_cache] = &mut layers[l];
                    be.rope(&mut q, c.heads, c.head_dim, *pos0);
                    be.rope(&mut k, c.kv_heads, c.head_dim, *pos0);
                    be.append(k_cache, &k);
                    be.append(v_cache, &v);
                    be.attention(&q, k_cache, v_cache, shape, *pos0, &mut attn);
                }
                Rows::Batch(seqs) => {
                    // Row i is sequence i's next token: rotated at its own position, it
                    // attends over its own cache.
                    let mut out = Vec::with_capacity(t);
                    for (i, (layers, pos)) in seqs.iter_mut().enumerate() {
                        let [k_cache, v_cache] = &mut layers[l];
                        let mut qi = be.slice(&q, i * q_dim, q_dim);
                        let mut ki = be.slice(&k, i * kv_dim, kv_dim);
                        be.rope(&mut qi, c.heads, c.head_dim, *pos);
                        be.rope(&mut ki, c.kv_heads, c.head_dim, *pos);
                        be.append(k_cache, &ki);
                        be.append(v_cache, &be.slice(&v, i * kv_dim, kv_dim));
                        let mut row = be.zeros(q_dim);
                        be.attention(&qi, k_cache, v_cache, shape, *pos, &mut row);
                        out.push(row);
                    }
                    attn = be.concat(&out.iter().collect::<Vec<_>>());
                }
            }
            project(l, Target::O, b, &attn, &mut proj);
            be.add(&mut x, &proj);

            be.rms_norm(&x, &b.ffn_norm, c.rms_eps, &mut h);
            project(l, Target::Gate, b, &h, &mut gate);
            project(l, Target::Up, b, &h, &mut up);
            be.silu_mul(&mut gate, &up);
            project(l, Target::Down, b, &gate, &mut proj);
            be.add(&mut x, &proj);
        }
        x
    }
}

/// Where the rows of a forward pass sit, and so where each one attends.
enum Rows<'a, C> {
    /// Consecutive tokens of one sequence from position `pos0`: a prefill chunk or one
    /// sequence's decode step.
    Sequence {
        layers: &'a mut [[C; 2]],
        pos0: usize,
    },
    /// Row i is the next token of sequence i, with its caches and position: a batched
    /// decode step.
    Batch(Vec<Seq<'a, C>>),
}

/// One sequence of a batch: each block's `[keys, values]` and the position of its next token.
type Seq<'a, C> = (&'a mut [[C; 2]], usize);

impl<C> Rows<'_, C> {
    /// A batch's rows belong to different sequences, so each meets the weights as it would
    /// alone ([`Activations::Rows`]): a sequence's tokens never depend on its neighbours.
    fn activations(&self) -> Activations {
        match self {
            Self::Sequence { .. } => Activations::Auto,
            Self::Batch(_) => Activations::Rows,
        }
    }
}

/// Every step's caches of the kind `pick` accepts, with their positions; an error when the
/// batch mixes devices.
fn batch_layers<'c, C>(
    steps: &'c mut [(u32, &mut KvCache)],
    pick: fn(&mut Layers) -> Option<&mut Vec<[C; 2]>>,
) -> Result<Vec<Seq<'c, C>>> {
    steps
        .iter_mut()
        .map(|(_, cache)| {
            let pos = cache.len;
            pick(&mut cache.layers)
                .map(|l| (&mut l[..], pos))
                .ok_or_else(not_here)
        })
        .collect()
}

/// A cache handed to a model that runs elsewhere (or a batch mixing devices).
fn not_here() -> Error {
    Error::InvalidArgument("a KV cache held on another device than the model's".into())
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

impl Model {
    /// Moves the model to `device`: on an accelerator the weights are uploaded once and every
    /// later forward pass, KV cache and adapter runs there. Returns where it runs, for display
    /// (`cpu`, `gpu: <name> · <API> · <kind>` or `cuda: <GPU> · CUDA · <memory>`).
    ///
    /// # Errors
    /// [`Error::Gpu`] for [`Device::Gpu`] or [`Device::Cuda`] when that device does not open
    /// (no driver, no GPU, or a build without its feature) or the model's heads are wider than
    /// its attention kernels take (128). [`Device::Auto`] never fails: it tries CUDA, then a
    /// real GPU through wgpu, then falls back to the CPU, logging why.
    pub fn set_device(&mut self, device: Device) -> Result<String> {
        #[cfg(any(feature = "gpu", feature = "cuda"))]
        {
            if device == Device::Cpu {
                self.engine = None;
                return Ok(self.device());
            }
            // The attention kernels hold a head in one block of 128 threads.
            if self.config.head_dim > MAX_DEVICE_HEAD_DIM {
                let why = format!(
                    "the GPU kernels take heads of up to {MAX_DEVICE_HEAD_DIM} dimensions; this model's have {}",
                    self.config.head_dim
                );
                if device == Device::Auto {
                    tracing::info!(reason = %why, "running on the CPU");
                    self.engine = None;
                    return Ok(self.device());
                }
                return Err(Error::Gpu(why));
            }
            // A device asked for by name that does not open leaves the model where it was.
            let mut engine = None;
            let mut why = Vec::new();
            if matches!(device, Device::Auto | Device::Cuda) {
                match self.open_cuda() {
                    Ok(e) => engine = Some(e),
                    Err(e) if device == Device::Auto => why.push(e),
                    Err(e) => return Err(Error::Gpu(e)),
                }
            }
            if engine.is_none() && matches!(device, Device::Auto | Device::Gpu) {
                match self.open_wgpu(device == Device::Gpu) {
                    Ok(e) => engine = Some(e),
                    Err(e) if device == Device::Auto => why.push(e),
                    Err(e) => return Err(Error::Gpu(e)),
                }
            }
            if engine.is_none() {
                tracing::info!(reason = %why.join("; "), "running on the CPU");
            }
            self.engine = engine;
            Ok(self.device())
        }
        #[cfg(not(any(feature = "gpu", feature = "cuda")))]
        match device {
            Device::Gpu | Device::Cuda => Err(Error::Gpu(format!(
                "this build has no {device} backend (built without the `{device}` feature)"
            ))),
            Device::Auto | Device::Cpu => Ok(self.device()),
        }
    }

    /// The model on the first CUDA GPU.
    #[cfg(any(feature = "gpu", feature = "cuda"))]
    fn open_cuda(&self) -> std::result::Result<crate::device::Engine, String> {
        #[cfg(feature = "cuda")]
        {
            let ctx = clawrl_cuda::Context::open(0).map_err(|e| e.to_string())?;
            let backend = clawrl_cuda::Cuda::new(ctx, &self.rope);
            Ok(crate::device::Engine::Cuda(
                crate::device::DeviceEngine::new(backend, &self.weights),
            ))
        }
        #[cfg(not(feature = "cuda"))]
        Err("this build has no CUDA backend (built without the `cuda` feature)".into())
    }

    /// The model on wgpu's best adapter (`any`: software ones included).
    #[cfg(any(feature = "gpu", feature = "cuda"))]
    fn open_wgpu(&self, any: bool) -> std::result::Result<crate::device::Engine, String> {
        #[cfg(feature = "gpu")]
        {
            use clawrl_gpu::{AdapterChoice, Context, Gpu};
            let choice = if any {
                AdapterChoice::Any
            } else {
                AdapterChoice::Hardware
            };
            let ctx = Context::open(choice).map_err(|e| e.to_string())?;
            let backend = Gpu::new(ctx, &self.rope);
            Ok(crate::device::Engine::Wgpu(
                crate::device::DeviceEngine::new(backend, &self.weights),
            ))
        }
        #[cfg(not(feature = "gpu"))]
        {
            let _ = any;
            Err("this build has no wgpu backend (built without the `gpu` feature)".into())
        }
    }

    /// Where the model runs, for display: `cpu`, `gpu: <adapter>` or `cuda: <GPU>`.
    pub fn device(&self) -> String {
        #[cfg(any(feature = "gpu", feature = "cuda"))]
        if let Some(e) = &self.engine {
            return e.describe();
        }
        "cpu".into()
    }
}

/// The largest `head_dim` the accelerators' attention kernels take.
#[cfg(any(feature = "gpu", feature = "cuda"))]
const MAX_DEVICE_HEAD_DIM: usize = 128;

#[cfg(any(feature = "gpu", feature = "cuda"))]
impl Model {
    /// Runs this model on the device `other` runs on (its device, not a new one), or on the
    /// CPU when `other` does: a fine-tuned snapshot serves where its base does. The weights
    /// are uploaded once.
    pub fn share_device(&mut self, other: &Model) {
        self.engine = other.engine.as_ref().map(|e| e.share(&self.weights));
    }

    /// The accelerator and the weights uploaded to it, when the model runs on one: training
    /// runs its passes on the same copy.
    pub fn engine(&self) -> Option<&crate::device::Engine> {
        self.engine.as_ref()
    }
}
