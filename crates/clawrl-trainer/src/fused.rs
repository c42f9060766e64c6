//! Fused RMSNorm, RoPE and causal attention, each one graph node with its own backward.
//!
//! Composed from candle's elementwise ops these keep 5–10 intermediate tensors per call in the
//! graph, and candle's own fused kernels have no backward at all (they drop gradients
//! silently). Each op here computes its forward on fresh tensors outside the graph and gives
//! the input gradient in closed form.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp3, D, Device, Layout, Result, Shape, Tensor};

use crate::frozen::f32_input;

/// A contiguous f32 view of a custom op's input as a fresh tensor (outside any graph).
fn input(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    Tensor::from_slice(f32_input("fused op", s, l)?, l.shape(), &Device::Cpu)
}

fn output(t: &Tensor) -> Result<(CpuStorage, Shape)> {
    let shape = t.shape().clone();
    Ok((CpuStorage::F32(t.flatten_all()?.to_vec1::<f32>()?), shape))
}

/// RMSNorm over the last dimension with a frozen weight: `y = x / rms(x) · w`.
#[derive(Clone)]
pub struct RmsNorm {
    w: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// A norm with weight `w` (frozen) and epsilon `eps`.
    pub fn new(w: Tensor, eps: f64) -> Self {
        Self { w, eps }
    }

    /// Normalises `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }

    fn inv_rms(&self, x: &Tensor) -> Result<Tensor> {
        x.sqr()?
            .mean_keepdim(D::Minus1)?
            .affine(1.0, self.eps)?
            .sqrt()?
            .recip()
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = input(s, l)?;
        output(
            &x.broadcast_mul(&self.inv_rms(&x)?)?
                .broadcast_mul(&self.w)?,
        )
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        // With g = dy·w and r = 1/rms(x): dx = r·g − x·r³·mean(g·x).
        let x = x.detach();
        let r = self.inv_rms(&x)?;
        let g = dy.detach().broadcast_mul(&self.w)?;
        let m = g.mul(&x)?.mean_keepdim(D::Minus1)?;
        let dx = g
            .broadcast_mul(&r)?
            .sub(&x.broadcast_mul(&r.powf(3.0)?.mul(&m)?)?)?;
        Ok(Some(dx))
    }
}

/// Rotary embedding of `[heads, len, head_dim]` by precomputed `[len, dim/2]` cos/sin.
#[derive(Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    dim: usize,
    interleaved: bool,
}

impl Rope {
    /// Rotates the first `dim` dimensions of each head; `interleaved` pairs (2i, 2i+1), else
    /// (i, i + dim/2).
    pub fn new(cos: Tensor, sin: Tensor, dim: usize, interleaved: bool) -> Self {
        Self {
            cos,
            sin,
            dim,
            interleaved,
        }
    }

    /// Rotates `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }

    /// The rotation by `sin_sign·θ` (the backward of a rotation is the rotation back).
    fn rotate(&self, x: &Tensor, sin_sign: f64) -> Result<Tensor> {
        let (heads, len, hd) = x.dims3()?;
        let half = self.dim / 2;
        let sin = self.sin.affine(sin_sign, 0.0)?;
        let rot = x.narrow(2, 0, self.dim)?;
        let rotated = if self.interleaved {
            let pairs = rot.reshape((heads, len, half, 2))?;
            let (x0, x1) = (
                pairs.narrow(3, 0, 1)?.squeeze(3)?,
                pairs.narrow(3, 1, 1)?.squeeze(3)?,
            );
            let r0 = x0.broadcast_mul(&self.cos)?.sub(&x1.broadcast_mul(&sin)?)?;
            let r1 = x0.broadcast_mul(&sin)?.add(&x1.broadcast_mul(&self.cos)?)?;
            Tensor::stack(&[r0, r1], 3)?.reshape((heads, len, self.dim))?
        } else {
            let (x0, x1) = (rot.narrow(2, 0, half)?, rot.narrow(2, half, half)?);
            let r0 = x0.broadcast_mul(&self.cos)?.sub(&x1.broadcast_mul(&sin)?)?;
            let r1 = x0.broadcast_mul(&sin)?.add(&x1.broadcast_mul(&self.cos)?)?;
            Tensor::cat(&[r0, r1], 2)?
        };
        if self.dim == hd {
            Ok(rotated)
        } else {
            Tensor::cat(&[rotated, x.narrow(2, self.dim, hd - self.dim)?], 2)
        }
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        output(&self.rotate(&input(s, l)?, 1.0)?)
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.rotate(&dy.detach().contiguous()?, -1.0)?))
    }
}

/// 0 on and below the diagonal, −∞ above: position i sees positions ≤ i.
pub fn causal_mask(len: usize) -> Result<Tensor> {
    let v: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(v, (len, len), &Device::Cpu)
}

/// Causal softmax attention of `q, k, v: [heads, len, d]` (k and v already repeated for
/// grouped queries). Keeps the attention weights P for the backward:
/// `dV = Pᵀ·dO`, `dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))`, `dQ = s·dS·K`, `dK = s·dSᵀ·Q`.
#[derive(Clone)]
pub struct Attention {
    scale: f64,
    mask: Tensor,
    probs: Arc<Mutex<Option<Tensor>>>,
}

impl Attention {
    /// Attention under `mask` (see [`causal_mask`]) with scores scaled by `scale`.
    pub fn new(mask: Tensor, scale: f64) -> Self {
        Self {
            scale,
            mask,
            probs: Arc::default(),
        }
    }

    /// Attends `q` to `k` and `v`.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, self.clone())
    }
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
        let (q, k, v) = (input(qs, ql)?, input(ks, kl)?, input(vs, vl)?);
        let scores = q
            .matmul(&k.t()?)?
            .affine(self.scale, 0.0)?
            .broadcast_add(&self.mask)?;
        let e = scores
            .broadcast_sub(&scores.max_keepdim(D::Minus1)?)?
            .exp()?;
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let out = p.matmul(&v)?;
        if let Ok(mut saved) = self.probs.lock() {
            *saved = Some(p);
        }
        output(&out)
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        d_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let p = self
            .probs
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .ok_or_else(|| {
                candle_core::Error::Msg("attention backward before its forward".into())
            })?;
        let (q, k, v, out, d_out) = (
            q.detach(),
            k.detach(),
            v.detach(),
            out.detach(),
            d_out.detach().contiguous()?,
        );
        let dv = p.t()?.matmul(&d_out)?;
        let dp = d_out.matmul(&v.t()?)?;
        let row = d_out.mul(&out)?.sum_keepdim(D::Minus1)?;
        let ds = p.mul(&dp.broadcast_sub(&row)?)?;
        let dq = ds.matmul(&k)?.affine(self.scale, 0.0)?;
        let dk = ds.t()?.matmul(&q)?.affine(self.scale, 0.0)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
