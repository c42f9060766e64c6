//! Fused RMSNorm, RoPE, SwiGLU and causal attention, each one graph node with its own
//! backward, computed by the engine's kernels on plain slices.
//!
//! Composed from candle's elementwise ops these keep 5–10 intermediate tensors per call in the
//! graph, each a pass over memory, a fresh allocation and a wake-up of candle's thread pool;
//! candle's own fused kernels have no backward at all (they drop gradients silently). Each op
//! here runs its forward in one pass outside the graph and gives its inputs' gradients in
//! closed form.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Result, Shape};
use clawrl_kernels::matmul::{Operand, matmul};
use clawrl_kernels::ops::{self, causal_softmax, causal_softmax_backward};
use rayon::prelude::*;

use crate::values::{f32_input, with_values};

/// Rows one parallel task takes: enough work to outweigh handing it to a thread.
const ROWS_PER_TASK: usize = 16;
/// Elements one parallel task of an element-wise op takes.
const ELEMENTS_PER_TASK: usize = 16 * 1024;

fn tensor(values: Vec<f32>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(values, shape.clone(), &Device::Cpu)
}

/// `out = f(x)` row by row in parallel, for rows of `width` values.
fn rows_map(x: &[f32], width: usize, f: impl Fn(usize, &[f32], &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let chunk = width * ROWS_PER_TASK;
    out.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .enumerate()
        .for_each(|(i, (o, x))| f(i * ROWS_PER_TASK, x, o));
    out
}

/// RMSNorm over the last dimension with a frozen weight: `y = x / rms(x) · w`.
#[derive(Clone)]
pub struct RmsNorm {
    w: Arc<[f32]>,
    eps: f32,
}

impl RmsNorm {
    /// A norm with weight `w` (frozen) and epsilon `eps`.
    pub fn new(w: Arc<[f32]>, eps: f32) -> Self {
        Self { w, eps }
    }

    /// Normalises `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_input("rms-norm", s, l)?;
        if x.len() % self.w.len() != 0 {
            candle_core::bail!(
                "rms-norm: rows of {} values, weight of {}",
                x.len(),
                self.w.len()
            )
        }
        let y = rows_map(x, self.w.len(), |_, x, y| {
            ops::rms_norm(x, &self.w, self.eps, y)
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_values([x, dy], |[x, dy]| {
            let mut dx = vec![0f32; x.len()];
            let chunk = self.w.len() * ROWS_PER_TASK;
            dx.par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk)))
                .for_each(|(dx, (x, dy))| ops::rms_norm_backward(x, &self.w, self.eps, dy, dx));
            Ok(dx)
        })?;
        Ok(Some(tensor(dx, x.shape())?))
    }
}

/// Rotary embedding of `[len, heads, head_dim]` (position = row), by the engine's table.
#[derive(Clone)]
pub struct Rope {
    table: Arc<ops::Rope>,
}

impl Rope {
    /// Rotates by `table` (whose positions cover every row this op will see).
    pub fn new(table: Arc<ops::Rope>) -> Self {
        Self { table }
    }

    /// Rotates `x: [len, heads, head_dim]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }

    /// `x` rotated forward (`inverse` false) or back, with the shape `[len, heads, head_dim]`.
    fn rotate(&self, x: &[f32], shape: &Shape, inverse: bool) -> Result<Vec<f32>> {
        let (len, heads, head_dim) = shape.dims3()?;
        if len > self.table.max_positions() {
            candle_core::bail!(
                "rope: {len} positions, the table has {}",
                self.table.max_positions()
            )
        }
        Ok(rows_map(x, heads * head_dim, |pos0, x, y| {
            y.copy_from_slice(x);
            if inverse {
                self.table.apply_inverse(y, heads, head_dim, pos0);
            } else {
                self.table.apply(y, heads, head_dim, pos0);
            }
        }))
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = self.rotate(f32_input("rope", s, l)?, l.shape(), false)?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_values([dy], |[dy]| self.rotate(dy, x.shape(), true))?;
        Ok(Some(tensor(dx, x.shape())?))
    }
}

/// The SwiGLU gate `silu(g) · u`, element-wise.
#[derive(Clone, Copy)]
pub struct SwiGlu;

impl SwiGlu {
    /// `silu(g) · u` for `g` and `u` of one shape.
    pub fn forward(g: &Tensor, u: &Tensor) -> Result<Tensor> {
        g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (f32_input("swiglu", gs, gl)?, f32_input("swiglu", us, ul)?);
        if gl.shape() != ul.shape() {
            candle_core::bail!(
                "swiglu: gate {:?} and up {:?} differ",
                gl.shape(),
                ul.shape()
            )
        }
        let mut y = g.to_vec();
        y.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(u.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(y, u)| ops::silu_mul(y, u));
        Ok((CpuStorage::F32(y), gl.shape().clone()))
    }

    fn bwd(
        &self,
        g: &Tensor,
        u: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dg, du) = with_values([g, u, dy], |[g, u, dy]| {
            let (mut dg, mut du) = (vec![0f32; g.len()], vec![0f32; g.len()]);
            let n = ELEMENTS_PER_TASK;
            dg.par_chunks_mut(n)
                .zip(du.par_chunks_mut(n))
                .zip(g.par_chunks(n).zip(u.par_chunks(n)).zip(dy.par_chunks(n)))
                .for_each(|((dg, du), ((g, u), dy))| ops::silu_mul_backward(g, u, dy, dg, du));
            Ok((dg, du))
        })?;
        Ok((Some(tensor(dg, g.shape())?), Some(tensor(du, u.shape())?)))
    }
}

/// Causal softmax attention of `q: [heads, len, d]` over `k, v: [kv_heads, len, d]`, query head
/// `h` reading key/value head `h / (heads / kv_heads)` (grouped queries, no copies). Keeps
/// the attention weights P for the backward: `dV = Pᵀ·dO`, `dS = s·P ⊙ (dP − rowsum(P ⊙ dP))`
/// with `dP = dO·Vᵀ`, `dQ = dS·K`, `dK = dSᵀ·Q`, summed over a key/value head's queries.
#[derive(Clone)]
pub struct Attention {
    scale: f32,
    probs: Arc<Mutex<Vec<Vec<f32>>>>,
}

impl Attention {
    /// Attention with scores scaled by `scale`.
    pub fn new(scale: f32) -> Self {
        Self {
            scale,
            probs: Arc::default(),
        }
    }

    /// Attends `q` to `k` and `v`.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, self.clone())
    }
}

/// `(heads, kv_heads, len, d)` of an attention call, checked.
fn attention_dims(q: &Shape, k: &Shape, v: &Shape) -> Result<(usize, usize, usize, usize)> {
    let (heads, len, d) = q.dims3()?;
    let (kv_heads, k_len, k_d) = k.dims3()?;
    if k != v || k_len != len || k_d != d || kv_heads == 0 || heads % kv_heads != 0 {
        candle_core::bail!("attention: q {q:?}, k {k:?} and v {v:?} do not fit together")
    }
    Ok((heads, kv_heads, len, d))
}

/// One head's product `a·b` (`m × k` by `k × n`) on the calling thread: the heads already run
/// in parallel.
fn head_product(a: Operand, b: Operand, m: usize, n: usize, k: usize) -> Vec<f32> {
    matmul(a, b, m, n, k, false)
}

/// `m` read as stored, as an operand of [`head_product`].
fn plain(m: &[f32]) -> Operand<'_> {
    Operand::plain(m)
}

/// `m` read transposed, as an operand of [`head_product`].
fn transposed(m: &[f32]) -> Operand<'_> {
    Operand::transposed(m)
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (heads, kv_heads, len, d) = attention_dims(ql.shape(), kl.shape(), vl.shape())?;
        let (q, k, v) = (
            f32_input("attention", qs, ql)?,
            f32_input("attention", ks, kl)?,
            f32_input("attention", vs, vl)?,
        );
        let group = heads / kv_heads;
        let block = len * d;
        let per_head: Vec<(Vec<f32>, Vec<f32>)> = (0..heads)
            .into_par_iter()
            .map(|h| {
                let q = &q[h * block..(h + 1) * block];
                let kv = (h / group) * block;
                let (k, v) = (&k[kv..kv + block], &v[kv..kv + block]);
                let mut p = head_product(plain(q), transposed(k), len, len, d);
                causal_softmax(&mut p, len, self.scale);
                let o = head_product(plain(&p), plain(v), len, d, len);
                (p, o)
            })
            .collect();
        let mut out = Vec::with_capacity(heads * block);
        let mut probs = Vec::with_capacity(heads);
        for (p, o) in per_head {
            out.extend_from_slice(&o);
            probs.push(p);
        }
        if let Ok(mut saved) = self.probs.lock() {
            *saved = probs;
        }
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        d_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (heads, kv_heads, len, d) = attention_dims(q.shape(), k.shape(), v.shape())?;
        let probs = self.probs.lock().map_err(|_| {
            candle_core::Error::Msg("attention's saved weights are poisoned".into())
        })?;
        if probs.len() != heads {
            candle_core::bail!("attention backward before its forward")
        }
        let group = heads / kv_heads;
        let block = len * d;
        let grads: Vec<[Vec<f32>; 3]> = with_values([q, k, v, d_out], |[q, k, v, d_out]| {
            Ok((0..heads)
                .into_par_iter()
                .map(|h| {
                    let head = h * block..(h + 1) * block;
                    let (q, d_o) = (&q[head.clone()], &d_out[head]);
                    let kv = (h / group) * block..(h / group + 1) * block;
                    let (k, v, p) = (&k[kv.clone()], &v[kv], &probs[h]);
                    let dv = head_product(transposed(p), plain(d_o), len, d, len);
                    let mut ds = head_product(plain(d_o), transposed(v), len, len, d);
                    causal_softmax_backward(p, &mut ds, len, self.scale);
                    let dq = head_product(plain(&ds), plain(k), len, d, len);
                    let dk = head_product(transposed(&ds), plain(q), len, d, len);
                    [dq, dk, dv]
                })
                .collect())
        })?;
        let mut dq = Vec::with_capacity(heads * block);
        let (mut dk, mut dv) = (vec![0f32; kv_heads * block], vec![0f32; kv_heads * block]);
        for (h, [q_h, k_h, v_h]) in grads.into_iter().enumerate() {
            dq.extend_from_slice(&q_h);
            let kv = (h / group) * block;
            for (acc, g) in dk[kv..kv + block].iter_mut().zip(&k_h) {
                *acc += g;
            }
            for (acc, g) in dv[kv..kv + block].iter_mut().zip(&v_h) {
                *acc += g;
            }
        }
        Ok((
            Some(tensor(dq, q.shape())?),
            Some(tensor(dk, k.shape())?),
            Some(tensor(dv, v.shape())?),
        ))
    }
}
