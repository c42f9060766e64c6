//! Frozen linear layers as a candle custom op: the base weight stays in its stored
//! (quantized) format, the forward runs the engine's f32 GEMM on dequantized panels, and the
//! backward returns the input's gradient only. candle's own matmul would also compute a
//! gradient for the frozen weight at every step: a third of the backward's work, and a
//! weight-sized tensor per layer, for nothing.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use clawrl_kernels::matmul::{Operand, matmul, xwt};
use clawrl_model::QMatrix;

use crate::gate::Gate;
use crate::values::{f32_input, with_values};

/// `y = x·Wᵀ` (or `y = x·W` when `transposed`) with W frozen.
#[derive(Clone)]
pub struct FrozenLinear {
    w: Arc<QMatrix>,
    transposed: bool,
}

impl FrozenLinear {
    /// Wraps a frozen weight.
    pub fn new(w: Arc<QMatrix>) -> Self {
        Self {
            w,
            transposed: false,
        }
    }

    /// The frozen weight.
    pub fn weight(&self) -> Arc<QMatrix> {
        self.w.clone()
    }

    /// Applies the layer to `x: [n, in]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_input("frozen-linear", storage, layout)?;
        let (n, k) = layout.shape().dims2()?;
        let (input, output) = if self.transposed {
            (self.w.rows(), self.w.cols())
        } else {
            (self.w.cols(), self.w.rows())
        };
        if k != input {
            candle_core::bail!("frozen-linear: input has {k} features, the weight takes {input}");
        }
        let mut y = vec![0.0f32; n * output];
        if self.transposed {
            self.w.matmul_transposed(x, n, &mut y);
        } else {
            self.w.matmul_f32(x, n, &mut y);
        }
        Ok((CpuStorage::F32(y), Shape::from((n, output))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = Self {
            w: self.w.clone(),
            transposed: !self.transposed,
        };
        Ok(Some(grad.contiguous()?.apply_op1(back)?))
    }
}

/// `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` as one op over `(x, A, B)` with W frozen: the adapter's
/// intermediates never enter the graph, and the backward gives x, A and B their gradients:
/// `dx = dy·W + s·(dy·B)·A`, `dA = s·(dy·B)ᵀ·x`, `dB = s·dyᵀ·(x·Aᵀ)`.
#[derive(Clone)]
pub struct LoraLinear {
    w: Arc<QMatrix>,
    scale: f64,
    gate: Gate,
}

impl LoraLinear {
    /// The frozen weight `w` with an adapter scaled by `scale` (α / r); the backward waits at
    /// `gate`.
    pub fn new(w: Arc<QMatrix>, scale: f64, gate: Gate) -> Self {
        Self { w, scale, gate }
    }

    /// Applies the layer to `x: [n, in]` with adapter `a: [r, in]`, `b: [out, r]`.
    pub fn forward(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op3(a, b, self.clone())
    }
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, a, b) = (
            f32_input("lora-linear", xs, xl)?,
            f32_input("lora-linear", as_, al)?,
            f32_input("lora-linear", bs, bl)?,
        );
        let (n, input) = xl.shape().dims2()?;
        let (rank, a_in) = al.shape().dims2()?;
        let (output, b_rank) = bl.shape().dims2()?;
        if input != self.w.cols() || a_in != input || b_rank != rank || output != self.w.rows() {
            candle_core::bail!(
                "lora-linear: shapes x {n}×{input}, A {rank}×{a_in}, B {output}×{b_rank} do not fit W {}×{}",
                self.w.rows(),
                self.w.cols()
            );
        }
        let mut y = vec![0f32; n * output];
        self.w.matmul_f32(x, n, &mut y);
        let xa = xwt(x, a, n, rank, input);
        let delta = xwt(&xa, b, n, output, rank);
        let s = self.scale as f32;
        for (o, d) in y.iter_mut().zip(&delta) {
            *o += s * d;
        }
        Ok((CpuStorage::F32(y), Shape::from((n, output))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.gate.wait();
        let (n, input) = x.dims2()?;
        let (rank, output) = (a.dim(0)?, b.dim(0)?);
        let s = self.scale as f32;
        let (dx, da, db) = with_values([x, a, b, dy], |[x, a, b, dy]| {
            let (plain, transposed) = (Operand::plain, Operand::transposed);
            let dyb = matmul(plain(dy), plain(b), n, rank, output, true);
            let mut dx = vec![0f32; n * input];
            self.w.matmul_transposed(dy, n, &mut dx);
            let dyb_a = matmul(plain(&dyb), plain(a), n, input, rank, true);
            for (d, e) in dx.iter_mut().zip(&dyb_a) {
                *d += s * e;
            }
            let mut da = matmul(transposed(&dyb), plain(x), rank, input, n, true);
            let xa = xwt(x, a, n, rank, input);
            let mut db = matmul(transposed(dy), plain(&xa), output, rank, n, true);
            for v in da.iter_mut().chain(db.iter_mut()) {
                *v *= s;
            }
            Ok((dx, da, db))
        })?;
        let cpu = &candle_core::Device::Cpu;
        let (dx, da, db) = (
            Tensor::from_vec(dx, (n, input), cpu)?,
            Tensor::from_vec(da, (rank, input), cpu)?,
            Tensor::from_vec(db, (output, rank), cpu)?,
        );
        Ok((Some(dx), Some(da), Some(db)))
    }
}
