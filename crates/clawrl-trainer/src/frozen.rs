//! Frozen linear layers as a candle custom op: the base weight stays in its stored
//! (quantized) format, the forward runs the engine's f32 GEMM on dequantized panels, and the
//! backward returns the input's gradient only. candle's own matmul would also compute a
//! gradient for the frozen weight at every step: a third of the backward's work, and a
//! weight-sized tensor per layer, for nothing.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use clawrl_model::QMatrix;

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
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("frozen-linear takes f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("frozen-linear takes a contiguous input")
        };
        let x = &data[start..end];
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
