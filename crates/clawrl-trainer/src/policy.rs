//! The trainable policy: the engine's base weights dequantized to f32 and frozen, LoRA
//! adapters as variables, and a forward pass built only from ops that candle can
//! differentiate (candle's fused rms_norm / softmax / rope kernels drop gradients silently).

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};
use clawrl_model::{LoraAdapter, LoraWeights, Model, ModelConfig, QMatrix, RopeStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::frozen::{FrozenLinear, LoraLinear};
use crate::fused::{Attention, RmsNorm, Rope, causal_mask};
use crate::head::{Gather, Head, HeadStats};
use crate::lora::{LoraConfig, Target};

/// One wrapped projection: `W x + (α/r)·B(A x)`.
pub struct LoraPair {
    /// A: `r × in`, random at start.
    pub a: Var,
    /// B: `out × r`, zero at start so a new adapter changes nothing.
    pub b: Var,
}

struct Block {
    attn_norm: Tensor,
    ffn_norm: Tensor,
    proj: BTreeMap<Target, FrozenLinear>,
    qkv_bias: Option<[Tensor; 3]>,
    qk_norm: Option<[Tensor; 2]>,
}

/// How a forward pass treats the adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Adapters on, dropout on.
    Train,
    /// Adapters on, no dropout.
    Eval,
    /// Adapters off: the frozen base, the reference policy of the KL term.
    Reference,
}

/// The policy being trained.
pub struct TrainablePolicy {
    config: ModelConfig,
    embed: Arc<QMatrix>,
    /// The output projection (the embedding when tied).
    output: Arc<QMatrix>,
    norm: Tensor,
    blocks: Vec<Block>,
    /// Adapters by (block, target).
    pub lora: BTreeMap<(usize, Target), LoraPair>,
    lora_config: LoraConfig,
    cos: Tensor,
    sin: Tensor,
}

fn f32_tensor(v: Vec<f32>, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

impl TrainablePolicy {
    /// Wraps `model`'s weights (frozen, in their stored format) with fresh adapters drawn from
    /// `seed`.
    pub fn new(model: &Model, lora: LoraConfig, seed: u64) -> Result<Self> {
        let c = model.config.clone();
        let w = &model.weights;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut blocks = Vec::with_capacity(c.layers);
        let mut pairs = BTreeMap::new();
        for (l, b) in w.blocks.iter().enumerate() {
            let mut proj = BTreeMap::new();
            for (t, m) in b.projections() {
                proj.insert(t, FrozenLinear::new(Arc::new(m.clone())));
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
                attn_norm: vec(&b.attn_norm)?,
                ffn_norm: vec(&b.ffn_norm)?,
                proj,
                qkv_bias: match &b.qkv_bias {
                    Some([q, k, v]) => Some([vec(q)?, vec(k)?, vec(v)?]),
                    None => None,
                },
                qk_norm: match &b.qk_norm {
                    Some([q, k]) => Some([vec(q)?, vec(k)?]),
                    None => None,
                },
            });
        }
        let half = c.rope_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / c.rope_theta.powf((2 * i) as f32 / c.rope_dim as f32))
            .collect();
        let angles: Vec<f32> = (0..c.context_length)
            .flat_map(|p| inv.iter().map(move |f| p as f32 * f))
            .collect();
        let angles = f32_tensor(angles, &[c.context_length, half])?;
        let embed = Arc::new(w.embed.clone());
        let output = match &w.output {
            Some(o) => Arc::new(o.clone()),
            None => embed.clone(),
        };
        Ok(Self {
            embed,
            output,
            norm: f32_tensor(w.norm.clone(), &[w.norm.len()])?,
            blocks,
            lora: pairs,
            lora_config: lora,
            cos: angles.cos()?,
            sin: angles.sin()?,
            config: c,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The adapters' configuration.
    pub fn lora_config(&self) -> &LoraConfig {
        &self.lora_config
    }

    /// An immutable snapshot of the adapters for the serving engine (never a copy of the base).
    pub fn publish(&self, version: u64) -> Result<LoraAdapter> {
        let mut out =
            LoraAdapter::new(version, self.lora_config.scale() as f32, self.config.layers);
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

    /// Every trainable variable (A then B of each adapter, in (block, target) order).
    pub fn vars(&self) -> Vec<Var> {
        self.lora
            .values()
            .flat_map(|p| [p.a.clone(), p.b.clone()])
            .collect()
    }

    /// The log-probs `gather` asks for, `[len − from, m]`, at positions `from..len` of `tokens`
    /// (row j is the distribution of the token after `tokens[from + j]`), with the head's stats.
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
        // The embedding is frozen: its rows are inputs, not part of the graph.
        let mut rows = vec![0.0f32; len * c.hidden];
        for (row, &t) in rows.chunks_exact_mut(c.hidden).zip(tokens) {
            self.embed.dequantize_rows(t as usize, row);
        }
        let mut x = f32_tensor(rows, &[len, c.hidden])?;
        let mask = causal_mask(len)?;
        let rope = Rope::new(
            self.cos.narrow(0, 0, len)?.contiguous()?,
            self.sin.narrow(0, 0, len)?.contiguous()?,
            c.rope_dim,
            c.rope_style == RopeStyle::Interleaved,
        );
        let scale = 1.0 / (c.head_dim as f64).sqrt();
        for (l, b) in self.blocks.iter().enumerate() {
            let h = RmsNorm::new(b.attn_norm.clone(), c.rms_eps as f64).forward(&x)?;
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
                q = RmsNorm::new(qn.clone(), c.rms_eps as f64).forward(&q)?;
                k = RmsNorm::new(kn.clone(), c.rms_eps as f64).forward(&k)?;
            }
            let q = rope.forward(&q.transpose(0, 1)?)?;
            let k = rope.forward(&k.transpose(0, 1)?)?;
            let v = v
                .reshape((len, c.kv_heads, c.head_dim))?
                .transpose(0, 1)?
                .contiguous()?;
            let (k, v) = (
                repeat_kv(&k, c.heads / c.kv_heads)?,
                repeat_kv(&v, c.heads / c.kv_heads)?,
            );
            let att = Attention::new(mask.clone(), scale).forward(&q, &k, &v)?;
            let att = att.transpose(0, 1)?.reshape((len, c.q_dim()))?;
            x = x.add(&self.linear(l, Target::O, &att, mode)?)?;

            let h = RmsNorm::new(b.ffn_norm.clone(), c.rms_eps as f64).forward(&x)?;
            let g = self.linear(l, Target::Gate, &h, mode)?;
            let u = self.linear(l, Target::Up, &h, mode)?;
            x = x.add(&self.linear(l, Target::Down, &g.silu()?.mul(&u)?, mode)?)?;
        }
        let x = RmsNorm::new(self.norm.clone(), c.rms_eps as f64).forward(&x.narrow(
            0,
            from,
            len - from,
        )?)?;
        Head::new(self.output.clone(), gather).forward(&x)
    }

    fn linear(&self, l: usize, t: Target, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let base = &self.blocks[l].proj[&t];
        let Some(p) = self.lora.get(&(l, t)).filter(|_| mode != Mode::Reference) else {
            return base.forward(x);
        };
        let scale = self.lora_config.scale();
        if mode == Mode::Train && self.lora_config.dropout > 0.0 {
            // Dropout reaches the adapter's input only, so the adapter runs beside the base.
            let dropped = dropout(x, self.lora_config.dropout)?;
            let delta = dropped
                .matmul(&p.a.as_tensor().t()?)?
                .matmul(&p.b.as_tensor().t()?)?;
            return base.forward(x)?.add(&delta.affine(scale, 0.0)?);
        }
        LoraLinear::new(base.weight(), scale).forward(x, p.a.as_tensor(), p.b.as_tensor())
    }
}

/// `[kv, len, d]` → `[kv·n, len, d]`, each key/value head repeated for its query heads.
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (kv, len, d) = x.dims3()?;
    x.unsqueeze(1)?
        .broadcast_as((kv, n, len, d))?
        .contiguous()?
        .reshape((kv * n, len, d))
}

fn dropout(x: &Tensor, p: f64) -> Result<Tensor> {
    let keep = Tensor::rand(0f32, 1f32, x.shape(), x.device())?
        .ge(p)?
        .to_dtype(x.dtype())?;
    x.mul(&keep)?.affine(1.0 / (1.0 - p), 0.0)
}
