//! The trainable policy: the engine's base weights frozen in their stored format, LoRA
//! adapters (or, for full fine-tuning, every projection dequantized to f32) as variables, and a
//! forward pass built from ops with a backward (candle's fused rms_norm / softmax / rope
//! kernels drop gradients silently; ours in [`crate::fused`] carry them).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};
use clawrl_kernels::ops;
use clawrl_kernels::quant::{QK, quantize_q8_0};
use clawrl_model::{LoraAdapter, LoraWeights, Model, ModelConfig, QMatrix, Storage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::frozen::{FrozenLinear, LoraLinear};
use crate::fused::{Attention, RmsNorm, Rope, SwiGlu};
use crate::gate::Gate;
use crate::head::{Gather, Head, HeadStats};
use crate::lora::{LoraConfig, LoraPair, Target, Tuning};

struct Block {
    attn_norm: Arc<[f32]>,
    ffn_norm: Arc<[f32]>,
    proj: BTreeMap<Target, FrozenLinear>,
    qkv_bias: Option<[Tensor; 3]>,
    qk_norm: Option<[Arc<[f32]>; 2]>,
}

/// How a forward pass treats the adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Adapters on, dropout on.
    Train,
    /// Adapters on, no dropout.
    Eval,
    /// Adapters (or fine-tuned weights) off: the frozen base, the reference policy of the KL
    /// term.
    Reference,
}

/// The policy being trained.
pub struct TrainablePolicy {
    config: ModelConfig,
    embed: Arc<QMatrix>,
    /// The output projection (the embedding when tied).
    output: Arc<QMatrix>,
    norm: Arc<[f32]>,
    blocks: Vec<Block>,
    /// Adapters by (block, target); empty under full fine-tuning.
    pub lora: BTreeMap<(usize, Target), LoraPair>,
    /// Full fine-tuning's weights (`out × in`, f32) by (block, target); empty under LoRA.
    pub full: BTreeMap<(usize, Target), Var>,
    tuning: Tuning,
    gate: Gate,
    rope: Arc<ops::Rope>,
    /// The accelerator the passes run on, when the model runs on one (LoRA only).
    #[cfg(any(feature = "gpu", feature = "cuda"))]
    device: Option<Box<dyn crate::device::Accelerated>>,
}

fn f32_tensor(v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

impl TrainablePolicy {
    /// Wraps `model`'s weights (frozen, in their stored format) with fresh adapters drawn from
    /// `seed`.
    pub fn new(model: &Model, lora: LoraConfig, seed: u64) -> Result<Self> {
        Self::with_tuning(model, Tuning::Lora(lora), seed)
    }

    /// Full fine-tuning of `model`: every projection becomes an f32 variable starting at the
    /// base's (dequantized) values; the base stays as the frozen reference.
    pub fn full(model: &Model) -> Result<Self> {
        Self::with_tuning(model, Tuning::Full, 0)
    }

    /// The policy that `tuning` trains, adapters (if any) drawn from `seed`.
    pub fn with_tuning(model: &Model, tuning: Tuning, seed: u64) -> Result<Self> {
        let c = model.config.clone();
        let w = &model.weights;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut blocks = Vec::with_capacity(c.layers);
        let (mut pairs, mut full) = (BTreeMap::new(), BTreeMap::new());
        for (l, b) in w.blocks.iter().enumerate() {
            let mut proj = BTreeMap::new();
            for (t, m) in b.projections() {
                proj.insert(t, FrozenLinear::new(Arc::new(m.clone())));
                let Tuning::Lora(lora) = &tuning else {
                    let weight = f32_tensor(m.to_f32(), &[m.rows(), m.cols()])?;
                    full.insert((l, t), Var::from_tensor(&weight)?);
                    continue;
                };
                if lora.targets.contains(&t) {
                    // PEFT's default: A ~ U(−1/√in, 1/√in), B = 0.
                    let bound = 1.0 / (m.cols() as f32).sqrt();
                    let a: Vec<f32> = (0..lora.rank * m.cols())
                        .map(|_| rng.random_range(-bound..bound))
                        .collect();
                    let a = Var::from_tensor(&f32_tensor(a, &[lora.rank, m.cols()])?)?;
                    let b = Var::zeros((m.rows(), lora.rank), DType::F32, &Device::Cpu)?;
                    pairs.insert((l, t), LoraPair { a, b });
                }
            }
            let vec = |v: &Vec<f32>| f32_tensor(v.clone(), &[v.len()]);
            blocks.push(Block {
                attn_norm: b.attn_norm.as_slice().into(),
                ffn_norm: b.ffn_norm.as_slice().into(),
                proj,
                qkv_bias: match &b.qkv_bias {
                    Some([q, k, v]) => Some([vec(q)?, vec(k)?, vec(v)?]),
                    None => None,
                },
                qk_norm: b
                    .qk_norm
                    .as_ref()
                    .map(|[q, k]| [q.as_slice().into(), k.as_slice().into()]),
            });
        }
        let embed = Arc::new(w.embed.clone());
        let output = match &w.output {
            Some(o) => Arc::new(o.clone()),
            None => embed.clone(),
        };
        // Full fine-tuning's f32 weights stay on the CPU.
        #[cfg(any(feature = "gpu", feature = "cuda"))]
        let device = match (&tuning, model.engine()) {
            (Tuning::Lora(_), Some(engine)) => {
                Some(crate::device::on_device(engine, c.clone(), embed.clone()))
            }
            _ => None,
        };
        Ok(Self {
            embed,
            output,
            norm: w.norm.as_slice().into(),
            blocks,
            lora: pairs,
            full,
            tuning,
            gate: Gate::default(),
            rope: Arc::new(ops::Rope::new(
                c.rope_dim,
                c.rope_theta,
                c.rope_style,
                c.context_length,
            )),
            #[cfg(any(feature = "gpu", feature = "cuda"))]
            device,
            config: c,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Lets `gate`'s holders pause this policy's forward and backward passes at every
    /// projection.
    pub fn set_gate(&mut self, gate: Gate) {
        self.gate = gate;
    }

    /// What training updates.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// The adapters' configuration; `None` under full fine-tuning.
    pub fn lora_config(&self) -> Option<&LoraConfig> {
        match &self.tuning {
            Tuning::Lora(c) => Some(c),
            Tuning::Full => None,
        }
    }

    /// Dropout on the adapters' input while training (0 under full fine-tuning).
    pub fn dropout(&self) -> f64 {
        self.lora_config().map_or(0.0, |c| c.dropout)
    }

    /// An immutable snapshot of the adapters for the serving engine (never a copy of the base).
    /// Full fine-tuning has no adapter: it is snapshotted with [`Self::full_snapshot`].
    pub fn adapter_snapshot(&self, version: u64) -> Result<LoraAdapter> {
        let Some(lora) = self.lora_config() else {
            candle_core::bail!("full fine-tuning snapshots weights (full_snapshot), not an adapter")
        };
        let mut out = LoraAdapter::new(version, lora.scale() as f32, self.config.layers);
        for (&(l, t), p) in &self.lora {
            let (a, b) = (p.a.as_tensor(), p.b.as_tensor());
            let (rank, input) = a.dims2()?;
            let output = b.dims2()?.0;
            let w = LoraWeights::new(
                rank,
                input,
                output,
                a.flatten_all()?.to_vec1()?,
                b.flatten_all()?.to_vec1()?,
            )
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            out.insert(l, t, w)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        Ok(out)
    }

    /// Full fine-tuning's snapshot: `base` with every projection replaced by the trained one,
    /// requantized to Q8_0 for serving (f32 where a row does not fill whole Q8_0 blocks), on
    /// the base's device.
    pub fn full_snapshot(&self, base: &Model) -> Result<Model> {
        if self.full.is_empty() {
            candle_core::bail!("a LoRA policy snapshots an adapter (adapter_snapshot), not weights")
        }
        let mut weights = base.weights.clone();
        for (&(l, t), w) in &self.full {
            let (rows, cols) = w.dims2()?;
            let data = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let storage = if cols % QK == 0 {
                Storage::Q8_0(quantize_q8_0(&data))
            } else {
                Storage::F32(data)
            };
            let block = weights
                .blocks
                .get_mut(l)
                .ok_or_else(|| candle_core::Error::Msg(format!("the base has no block {l}")))?;
            *block.projection_mut(t) = QMatrix::new(rows, cols, storage)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        }
        let model = Model::new(
            base.config.clone(),
            weights,
            base.tokenizer.clone(),
            base.template.clone(),
            format!("{} (fine-tuned)", base.source),
        )
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        // It serves where the base does.
        #[cfg(any(feature = "gpu", feature = "cuda"))]
        let model = {
            let mut m = model;
            m.share_device(base);
            m
        };
        Ok(model)
    }

    /// Every trainable variable: A then B of each adapter, or each full weight, in (block,
    /// target) order.
    pub fn vars(&self) -> Vec<Var> {
        self.lora
            .values()
            .flat_map(|p| [p.a.clone(), p.b.clone()])
            .chain(self.full.values().cloned())
            .collect()
    }

    /// The log-probs `gather` asks for, `[len − from, m]`, at positions `from..len` of `tokens`
    /// (row j is the distribution of the token after `tokens[from + j]`), with the head's stats.
    ///
    /// On a GPU ([`Self::device`]) the pass runs outside candle's graph: after the backward of
    /// a loss over a [`Mode::Train`] result, the adapters' gradients come from
    /// [`Self::device_gradients`], not from candle's store.
    pub fn head(
        &self,
        tokens: &[u32],
        from: usize,
        gather: Gather,
        mode: Mode,
    ) -> Result<(Tensor, HeadStats)> {
        let c = &self.config;
        let len = tokens.len();
        if len == 0 || from >= len || len > c.context_length {
            candle_core::bail!(
                "cannot score positions {from}..{len} in a context of {}",
                c.context_length
            );
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            candle_core::bail!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            );
        }
        // A pass too large for the device's largest buffer runs here instead: its gradients
        // join the device's in the step.
        #[cfg(any(feature = "gpu", feature = "cuda"))]
        if let Some(device) = &self.device
            && device.fits(len, from)
        {
            self.gate.wait();
            let lora = match (mode, self.lora_config()) {
                (Mode::Reference, _) | (_, None) => None,
                (_, Some(cfg)) => Some((cfg, &self.lora, mode == Mode::Train)),
            };
            if let Some(out) = device.head(tokens, from, gather.clone(), lora)? {
                return Ok(out);
            }
        }
        // The embedding is frozen: its rows are inputs, not part of the graph.
        let mut rows = vec![0.0f32; len * c.hidden];
        for (row, &t) in rows.chunks_exact_mut(c.hidden).zip(tokens) {
            self.embed.dequantize_rows(t as usize, row);
        }
        let mut x = f32_tensor(rows, &[len, c.hidden])?;
        let rope = Rope::new(self.rope.clone());
        let attention_scale = 1.0 / (c.head_dim as f32).sqrt();
        let norm = |w: &Arc<[f32]>| RmsNorm::new(w.clone(), c.rms_eps);
        for (l, b) in self.blocks.iter().enumerate() {
            let h = norm(&b.attn_norm).forward(&x)?;
            let mut q = self.linear(l, Target::Q, &h, mode)?;
            let mut k = self.linear(l, Target::K, &h, mode)?;
            let mut v = self.linear(l, Target::V, &h, mode)?;
            if let Some([bq, bk, bv]) = &b.qkv_bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            let mut q = q.reshape((len, c.heads, c.head_dim))?;
            let mut k = k.reshape((len, c.kv_heads, c.head_dim))?;
            if let Some([qn, kn]) = &b.qk_norm {
                q = norm(qn).forward(&q)?;
                k = norm(kn).forward(&k)?;
            }
            // Rotated as `[len, heads, d]` rows, then laid out by head for attention.
            let q = rope.forward(&q)?.transpose(0, 1)?;
            let k = rope.forward(&k)?.transpose(0, 1)?;
            let v = v.reshape((len, c.kv_heads, c.head_dim))?.transpose(0, 1)?;
            let att = Attention::new(attention_scale).forward(&q, &k, &v)?;
            let att = att.transpose(0, 1)?.reshape((len, c.q_dim()))?;
            x = x.add(&self.linear(l, Target::O, &att, mode)?)?;

            let h = norm(&b.ffn_norm).forward(&x)?;
            let g = self.linear(l, Target::Gate, &h, mode)?;
            let u = self.linear(l, Target::Up, &h, mode)?;
            x = x.add(&self.linear(l, Target::Down, &SwiGlu::forward(&g, &u)?, mode)?)?;
        }
        let x = norm(&self.norm).forward(&x.narrow(0, from, len - from)?)?;
        Head::new(self.output.clone(), gather).forward(&x)
    }

    /// Where the passes run, for display: `cpu`, or `gpu: <adapter>`.
    pub fn device(&self) -> String {
        #[cfg(any(feature = "gpu", feature = "cuda"))]
        if let Some(d) = &self.device {
            return d.describe();
        }
        "cpu".into()
    }

    /// The adapters' gradients from the passes run on the GPU since the last call, given the
    /// objective's gradients `store` (which holds those of the gathered log-probs each pass
    /// returned), aligned with [`Self::vars`]; empty when the passes run on the CPU, where
    /// `store` holds the adapters' gradients itself.
    pub fn device_gradients(
        &self,
        store: &candle_core::backprop::GradStore,
    ) -> Result<Vec<Option<Tensor>>> {
        #[cfg(any(feature = "gpu", feature = "cuda"))]
        if let Some(d) = &self.device {
            self.gate.wait();
            return d.gradients(store, &self.lora);
        }
        let _ = store;
        Ok(Vec::new())
    }

    fn linear(&self, l: usize, t: Target, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.gate.wait();
        let base = &self.blocks[l].proj[&t];
        if mode == Mode::Reference {
            return base.forward(x);
        }
        if let Some(w) = self.full.get(&(l, t)) {
            return x.matmul(&w.as_tensor().t()?);
        }
        let (Some(p), Some(lora)) = (self.lora.get(&(l, t)), self.lora_config()) else {
            return base.forward(x);
        };
        let scale = lora.scale();
        if mode == Mode::Train && lora.dropout > 0.0 {
            // Dropout reaches the adapter's input only, so the adapter runs beside the base.
            let dropped = dropout(x, lora.dropout)?;
            let delta = dropped
                .matmul(&p.a.as_tensor().t()?)?
                .matmul(&p.b.as_tensor().t()?)?;
            return base.forward(x)?.add(&delta.affine(scale, 0.0)?);
        }
        LoraLinear::new(base.weight(), scale, self.gate.clone()).forward(
            x,
            p.a.as_tensor(),
            p.b.as_tensor(),
        )
    }
}

fn dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    let keep = Tensor::rand(0f32, 1f32, x.shape(), x.device())?
        .ge(p)?
        .to_dtype(x.dtype())?;
    x.mul(&keep)?.affine(1.0 / (1.0 - p), 0.0)
}
