//! The policy's forward and backward on a [`TrainBackend`] (the GPU), outside candle's graph.
//!
//! The forward keeps what the backward needs on the device ([`Tape`]); only the gathered
//! log-probs the objective uses (`[T, m]`), the top-k ids and the entropies come back. The
//! objective then runs in candle on those few values, and the gradient it gives them goes
//! back down here: through the head (`∂L/∂z = scatter(G) − p·ΣG`), the final norm and every
//! block, to the adapters' A and B, which are the only values read back.
//!
//! The math is [`crate::policy::TrainablePolicy::head`]'s, op for op: the same frozen
//! projections in f32, the same fused RMSNorm, RoPE, SwiGLU and causal attention backwards
//! (closed forms in `clawrl_kernels::ops`), and `y = W x + s·B(A x̃)` with x̃ the adapter's
//! (dropped-out) input, s = α / r (Hu et al. 2021, eq. 3; PEFT's dropout placement).

use std::collections::BTreeMap;
use std::sync::Arc;

use clawrl_kernels::ops::AttnShape;
use clawrl_kernels::{Activations, Backend, Gemm, TrainBackend};
use clawrl_model::{ModelConfig, QMatrix, Target, Weights};
use rand::Rng;

use crate::error::{Error, Result};
use crate::head::{Gather, HeadStats};

/// A pair of device tensors per adapter, by (block, target): `(A: r × in, B: out × r)`, or
/// their gradients.
pub(crate) type Pairs<B> =
    BTreeMap<(usize, Target), (<B as Backend>::Tensor, <B as Backend>::Tensor)>;

/// Per position, the ids a gather names before the top-k (`None`: the whole vocabulary).
type FirstIds = Option<Vec<Vec<u32>>>;

/// The adapters for one pass, on the device.
pub(crate) struct DeviceLora<B: TrainBackend> {
    pub(crate) pairs: Pairs<B>,
    /// α / r.
    pub(crate) scale: f32,
    /// Rank r.
    pub(crate) rank: usize,
    /// Dropout on the adapters' input (0 outside training).
    pub(crate) dropout: f32,
}

/// What one adapted projection keeps for the backward.
struct LinearTape<B: TrainBackend> {
    /// `x̃·Aᵀ`, `n × r`.
    xa: B::Tensor,
    /// The dropped-out input x̃ and the mask (scaled by 1/(1 − p)), when dropout is on.
    dropped: Option<(B::Tensor, B::Tensor)>,
}

/// What one block keeps for the backward.
struct BlockTape<B: TrainBackend> {
    x0: B::Tensor,
    h: B::Tensor,
    /// Queries and keys before their per-head RMSNorm (Qwen3).
    qk_pre: Option<(B::Tensor, B::Tensor)>,
    q: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    p: B::Tensor,
    att: B::Tensor,
    x1: B::Tensor,
    h2: B::Tensor,
    g: B::Tensor,
    u: B::Tensor,
    a: B::Tensor,
    linear: BTreeMap<Target, LinearTape<B>>,
}

/// One training forward's saved state, on the device.
pub(crate) struct Tape<B: TrainBackend> {
    blocks: Vec<BlockTape<B>>,
    /// The final norm's input, positions `from..len`.
    xf: B::Tensor,
    /// The log-softmax, `T × vocab`.
    lp: B::Tensor,
    /// Flat indices into `lp` of the gathered entries, `T × m`.
    idx: Vec<u32>,
    len: usize,
    from: usize,
    lora: DeviceLora<B>,
}

/// The gathered log-probs `[T, m]` (row-major, on the host), their width m, the head's stats
/// and, for a training pass, the tape.
pub(crate) type Forward<B> = (Vec<f32>, usize, HeadStats, Option<Tape<B>>);

/// The frozen model on a device.
pub(crate) struct DevicePass<B: TrainBackend> {
    backend: B,
    config: ModelConfig,
    weights: Weights<B::Matrix, B::Tensor>,
    /// The embedding on the host: its rows are looked up there and uploaded.
    embed: Arc<QMatrix>,
}

impl<B: TrainBackend> DevicePass<B> {
    /// The model `weights` (already on the backend's device) of shape `config`.
    pub(crate) fn new(
        backend: B,
        config: ModelConfig,
        weights: Weights<B::Matrix, B::Tensor>,
        embed: Arc<QMatrix>,
    ) -> Self {
        Self {
            backend,
            config,
            weights,
            embed,
        }
    }

    /// The backend.
    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// The model's shape.
    pub(crate) fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// [`crate::TrainablePolicy::head`] on the device: `lora` `None` is the frozen base, and a
    /// pass with `train` keeps its [`Tape`] (with dropout when `lora.dropout > 0`).
    pub(crate) fn forward(
        &self,
        tokens: &[u32],
        from: usize,
        gather: &Gather,
        lora: Option<DeviceLora<B>>,
        train: bool,
    ) -> Result<Forward<B>> {
        let c = &self.config;
        let (be, len, d) = (&self.backend, tokens.len(), c.hidden);
        let mut rows = vec![0.0f32; len * d];
        for (row, &t) in rows.chunks_exact_mut(d).zip(tokens) {
            self.embed.dequantize_rows(t as usize, row);
        }
        let mut x = be.upload(&rows);
        let shape = AttnShape {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        };
        let mut blocks = Vec::with_capacity(if train { c.layers } else { 0 });
        for (l, b) in self.weights.blocks.iter().enumerate() {
            let mut linear = BTreeMap::new();
            let lin = |t: Target, input: &B::Tensor, linear: &mut BTreeMap<_, _>| {
                let (y, tape) = self.linear(l, t, input, len, lora.as_ref(), train);
                if let Some(tape) = tape {
                    linear.insert(t, tape);
                }
                y
            };
            let mut h = be.zeros(len * d);
            be.rms_norm(&x, &b.attn_norm, c.rms_eps, &mut h);
            let mut q = lin(Target::Q, &h, &mut linear);
            let mut k = lin(Target::K, &h, &mut linear);
            let mut v = lin(Target::V, &h, &mut linear);
            if let Some([bq, bk, bv]) = &b.qkv_bias {
                be.add_rows(&mut q, bq);
                be.add_rows(&mut k, bk);
                be.add_rows(&mut v, bv);
            }
            let qk_pre = match &b.qk_norm {
                Some([qn, kn]) => {
                    let (mut qo, mut ko) = (be.zeros(be.numel(&q)), be.zeros(be.numel(&k)));
                    be.rms_norm(&q, qn, c.rms_eps, &mut qo);
                    be.rms_norm(&k, kn, c.rms_eps, &mut ko);
                    Some((std::mem::replace(&mut q, qo), std::mem::replace(&mut k, ko)))
                }
                None => None,
            };
            be.rope(&mut q, c.heads, c.head_dim, 0);
            be.rope(&mut k, c.kv_heads, c.head_dim, 0);
            let (mut att, mut p) = (be.zeros(be.numel(&q)), be.zeros(c.heads * len * len));
            be.attention_probs(&q, &k, &v, shape, &mut att, &mut p);
            let mut x1 = lin(Target::O, &att, &mut linear);
            be.add(&mut x1, &x);
            let mut h2 = be.zeros(len * d);
            be.rms_norm(&x1, &b.ffn_norm, c.rms_eps, &mut h2);
            let g = lin(Target::Gate, &h2, &mut linear);
            let u = lin(Target::Up, &h2, &mut linear);
            let mut a = be.slice(&g, 0, be.numel(&g));
            be.silu_mul(&mut a, &u);
            let mut x2 = lin(Target::Down, &a, &mut linear);
            be.add(&mut x2, &x1);
            let x0 = std::mem::replace(&mut x, x2);
            if train {
                blocks.push(BlockTape {
                    x0,
                    h,
                    qk_pre,
                    q,
                    k,
                    v,
                    p,
                    att,
                    x1,
                    h2,
                    g,
                    u,
                    a,
                    linear,
                });
            }
        }
        let n = len - from;
        let xf = be.slice(&x, from * d, n * d);
        let mut hn = be.zeros(n * d);
        be.rms_norm(&xf, &self.weights.norm, c.rms_eps, &mut hn);
        let vocab = be.shape(self.weights.head()).0;
        let (ids, k) = gathered_ids(gather, n, vocab)?;
        let mut lp = be.zeros(n * vocab);
        be.matmul(self.weights.head(), &hn, n, Activations::Exact, &mut lp);
        // Top-k on the logits, as the CPU's head: the log-softmax's shift could round two
        // close logits into a tie.
        let top: Vec<u32> = if k > 0 {
            be.top_k(&lp, vocab, k)
        } else {
            Vec::new()
        };
        // A NaN logit wins no comparison, so its row runs out of ids.
        if top.iter().any(|&v| v as usize >= vocab) {
            return Err(Error::InvalidSample(
                "the policy's logits are not finite (has training diverged?)".into(),
            ));
        }
        let mut entropy = be.zeros(n);
        be.log_softmax(&mut lp, vocab, &mut entropy);
        let entropy_sum = be.download(&entropy).iter().map(|&e| f64::from(e)).sum();

        let top_rows: Vec<Vec<u32>> = (0..n)
            .map(|r| {
                top.get(r * k..(r + 1) * k)
                    .map_or_else(Vec::new, <[u32]>::to_vec)
            })
            .collect();
        let (values, m, ids) = match ids {
            None => (be.download(&lp), vocab, vec![Vec::new(); n]),
            Some(mut ids) => {
                if let Gather::TokenAndTopK { extra, .. } = gather {
                    for (r, (row, top)) in ids.iter_mut().zip(&top_rows).enumerate() {
                        row.extend_from_slice(top);
                        row.extend_from_slice(extra.get(r).map_or(&[][..], Vec::as_slice));
                    }
                }
                self.gathered(&lp, ids, vocab)
            }
        };
        let stats = HeadStats {
            ids,
            top_k: top_rows,
            entropy_sum,
        };
        let tape = match (train, lora) {
            (true, Some(lora)) => Some(Tape {
                blocks,
                xf,
                idx: flat(&stats.ids, vocab),
                lp,
                len,
                from,
                lora,
            }),
            _ => None,
        };
        Ok((values, m, stats, tape))
    }

    /// The entries of `lp` at `ids` (a row of ids per position), read back.
    fn gathered(
        &self,
        lp: &B::Tensor,
        ids: Vec<Vec<u32>>,
        vocab: usize,
    ) -> (Vec<f32>, usize, Vec<Vec<u32>>) {
        let m = ids.first().map_or(0, Vec::len);
        let values = self
            .backend
            .download(&self.backend.gather(lp, &flat(&ids, vocab)));
        (values, m, ids)
    }

    /// `y = W x (+ s·B(A x̃))` for `n` rows, with the adapter's tape when training.
    fn linear(
        &self,
        l: usize,
        t: Target,
        x: &B::Tensor,
        n: usize,
        lora: Option<&DeviceLora<B>>,
        train: bool,
    ) -> (B::Tensor, Option<LinearTape<B>>) {
        let be = &self.backend;
        let w = self.weights.blocks[l].projection(t);
        let (out, input) = be.shape(w);
        let mut y = be.zeros(n * out);
        be.matmul(w, x, n, Activations::Exact, &mut y);
        let Some((lora, (a, b))) = lora.and_then(|lo| lo.pairs.get(&(l, t)).map(|p| (lo, p)))
        else {
            return (y, None);
        };
        let r = lora.rank;
        let dropped = (train && lora.dropout > 0.0).then(|| {
            let p = lora.dropout;
            let mut rng = rand::rng();
            let mask: Vec<f32> = (0..n * input)
                .map(|_| {
                    if rng.random::<f32>() >= p {
                        1.0 / (1.0 - p)
                    } else {
                        0.0
                    }
                })
                .collect();
            let mask = be.upload(&mask);
            let mut xd = be.slice(x, 0, be.numel(x));
            be.mul(&mut xd, &mask);
            (xd, mask)
        });
        let xin = dropped.as_ref().map_or(x, |(xd, _)| xd);
        let mut xa = be.zeros(n * r);
        be.gemm(xin, a, Gemm::new(n, r, input).tb(), &mut xa);
        be.gemm(
            &xa,
            b,
            Gemm::new(n, out, r).tb().add_scaled(lora.scale),
            &mut y,
        );
        (y, train.then_some(LinearTape { xa, dropped }))
    }

    /// `dx (+)= ∂L/∂x` of [`Self::linear`] given `dy`, adding the adapter's gradients into
    /// `grads`: `dx = dy·W + s·((dy·B)·A) ⊙ mask`, `dA = s·(dy·B)ᵀ·x̃`, `dB = s·dyᵀ·(x̃·Aᵀ)`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        l: usize,
        t: Target,
        x: &B::Tensor,
        tape: &Tape<B>,
        saved: Option<&LinearTape<B>>,
        dy: &B::Tensor,
        accumulate: bool,
        dx: &mut B::Tensor,
        grads: &mut Pairs<B>,
    ) {
        let be = &self.backend;
        let n = tape.len;
        let w = self.weights.blocks[l].projection(t);
        let (out, input) = be.shape(w);
        be.matmul_backward(w, dy, n, accumulate, dx);
        let (Some(saved), Some((a, b)), Some((da, db))) =
            (saved, tape.lora.pairs.get(&(l, t)), grads.get_mut(&(l, t)))
        else {
            return;
        };
        let (r, s) = (tape.lora.rank, tape.lora.scale);
        let mut dyb = be.zeros(n * r);
        be.gemm(dy, b, Gemm::new(n, r, out), &mut dyb);
        match &saved.dropped {
            Some((_, mask)) => {
                let mut part = be.zeros(n * input);
                be.gemm(&dyb, a, Gemm::new(n, input, r).scaled(s), &mut part);
                be.mul(&mut part, mask);
                be.add(dx, &part);
            }
            None => be.gemm(&dyb, a, Gemm::new(n, input, r).add_scaled(s), dx),
        }
        let xin = saved.dropped.as_ref().map_or(x, |(xd, _)| xd);
        be.gemm(&dyb, xin, Gemm::new(r, input, n).ta().add_scaled(s), da);
        be.gemm(dy, &saved.xa, Gemm::new(out, r, n).ta().add_scaled(s), db);
    }

    /// The adapters' gradients from `tape` given `g = ∂L/∂(gathered log-probs)` (`[T, m]`
    /// row-major): `dA` then `dB` of each adapter in (block, target) order, concatenated.
    pub(crate) fn backward(&self, tape: &Tape<B>, g: &[f32]) -> Result<Vec<f32>> {
        let c = &self.config;
        let be = &self.backend;
        let (len, d) = (tape.len, c.hidden);
        let n = len - tape.from;
        if g.len() != tape.idx.len() {
            return Err(Error::InvalidSample(format!(
                "{} gradients for {} gathered log-probs",
                g.len(),
                tape.idx.len()
            )));
        }
        let vocab = be.shape(self.weights.head()).0;
        let m = g.len().checked_div(n).unwrap_or(0);
        let totals: Vec<f32> = (0..n).map(|r| g[r * m..(r + 1) * m].iter().sum()).collect();
        let mut dz = be.zeros(n * vocab);
        be.log_softmax_backward(&tape.lp, vocab, &totals, &tape.idx, g, &mut dz);
        let mut dhn = be.zeros(n * d);
        be.matmul_backward(self.weights.head(), &dz, n, false, &mut dhn);
        drop(dz);
        let mut dxf = be.zeros(n * d);
        be.rms_norm_backward(&tape.xf, &self.weights.norm, c.rms_eps, &dhn, &mut dxf);
        let mut dx = be.place(&dxf, len * d, tape.from * d);
        let mut grads: Pairs<B> = tape
            .lora
            .pairs
            .iter()
            .map(|(&key, (a, b))| (key, (be.zeros(be.numel(a)), be.zeros(be.numel(b)))))
            .collect();
        let shape = AttnShape {
            heads: c.heads,
            kv_heads: c.kv_heads,
            head_dim: c.head_dim,
        };
        for (l, (b, s)) in self
            .weights
            .blocks
            .iter()
            .zip(&tape.blocks)
            .enumerate()
            .rev()
        {
            let mut back =
                |t: Target, x: &B::Tensor, dy: &B::Tensor, acc: bool, dx: &mut B::Tensor| {
                    self.linear_backward(l, t, x, tape, s.linear.get(&t), dy, acc, dx, &mut grads);
                };
            // x2 = x1 + Down(silu(g)·u), h2 = norm(x1).
            let mut da = be.zeros(be.numel(&s.a));
            back(Target::Down, &s.a, &dx, false, &mut da);
            let (mut dg, mut du) = (be.zeros(be.numel(&s.g)), be.zeros(be.numel(&s.u)));
            be.silu_mul_backward(&s.g, &s.u, &da, &mut dg, &mut du);
            let mut dh2 = be.zeros(len * d);
            back(Target::Gate, &s.h2, &dg, false, &mut dh2);
            back(Target::Up, &s.h2, &du, true, &mut dh2);
            let mut dx1 = be.zeros(len * d);
            be.rms_norm_backward(&s.x1, &b.ffn_norm, c.rms_eps, &dh2, &mut dx1);
            be.add(&mut dx1, &dx);
            // x1 = x0 + O(attention(rope(q), rope(k), v)), h = norm(x0).
            let mut datt = be.zeros(be.numel(&s.att));
            back(Target::O, &s.att, &dx1, false, &mut datt);
            let (mut dq, mut dk, mut dv) = (
                be.zeros(be.numel(&s.q)),
                be.zeros(be.numel(&s.k)),
                be.zeros(be.numel(&s.v)),
            );
            be.attention_backward(
                &s.q, &s.k, &s.v, &s.p, &datt, shape, &mut dq, &mut dk, &mut dv,
            );
            be.rope_backward(&mut dq, c.heads, c.head_dim);
            be.rope_backward(&mut dk, c.kv_heads, c.head_dim);
            if let (Some((q_pre, k_pre)), Some([qn, kn])) = (&s.qk_pre, &b.qk_norm) {
                let (mut gq, mut gk) = (be.zeros(be.numel(&dq)), be.zeros(be.numel(&dk)));
                be.rms_norm_backward(q_pre, qn, c.rms_eps, &dq, &mut gq);
                be.rms_norm_backward(k_pre, kn, c.rms_eps, &dk, &mut gk);
                (dq, dk) = (gq, gk);
            }
            let mut dh = be.zeros(len * d);
            back(Target::Q, &s.h, &dq, false, &mut dh);
            back(Target::K, &s.h, &dk, true, &mut dh);
            back(Target::V, &s.h, &dv, true, &mut dh);
            let mut dx0 = be.zeros(len * d);
            be.rms_norm_backward(&s.x0, &b.attn_norm, c.rms_eps, &dh, &mut dx0);
            be.add(&mut dx0, &dx1);
            dx = dx0;
        }
        let parts: Vec<&B::Tensor> = grads.values().flat_map(|(da, db)| [da, db]).collect();
        Ok(be.download(&be.concat(&parts)))
    }
}

/// Per position, the ids a gather names before the top-k (`None` for `All`), and k: the
/// top-k width the head computes. Checks them against `n` positions and the vocabulary.
fn gathered_ids(gather: &Gather, n: usize, vocab: usize) -> Result<(FirstIds, usize)> {
    let (ids, k, extra): (FirstIds, usize, &[Vec<u32>]) = match gather {
        Gather::TokenAndTopK { tokens, k, extra } => {
            let same = extra.is_empty()
                || (extra.len() == n && extra.iter().all(|r| r.len() == extra[0].len()));
            if tokens.len() != n || !same {
                return Err(positions_error(n));
            }
            (Some(tokens.iter().map(|&y| vec![y]).collect()), *k, extra)
        }
        Gather::Ids(ids) => {
            let k = ids.first().map_or(0, Vec::len);
            if ids.len() != n || ids.iter().any(|r| r.len() != k) {
                return Err(positions_error(n));
            }
            (Some(ids.clone()), k, &[])
        }
        Gather::All => (None, 0, &[]),
    };
    if ids
        .iter()
        .flatten()
        .chain(extra)
        .flatten()
        .any(|&v| v as usize >= vocab)
    {
        return Err(Error::InvalidSample(format!(
            "a gathered id is outside the vocabulary of {vocab}"
        )));
    }
    Ok((ids, k.min(vocab)))
}

fn positions_error(n: usize) -> Error {
    Error::InvalidSample(format!(
        "the head was given ids for a different number of positions than {n}"
    ))
}

/// Row r's ids as flat indices `r · vocab + id`.
fn flat(ids: &[Vec<u32>], vocab: usize) -> Vec<u32> {
    ids.iter()
        .enumerate()
        .flat_map(|(r, row)| row.iter().map(move |&v| (r * vocab) as u32 + v))
        .collect()
}
