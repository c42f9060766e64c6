//! The GPU backend of the ClawRL engine: the WGSL kernels of the top-level `shaders/` folder,
//! run through wgpu on whatever the machine has (Vulkan, Metal, DX12).
//!
//! [`Context::open`] finds an adapter and compiles the kernels once; [`Gpu`] implements
//! [`clawrl_kernels::Backend`] for one model, so the engine's single forward pass runs here
//! unchanged. Weights are uploaded once ([`Context::upload_matrix`]), the KV cache lives in
//! device buffers ([`GpuCache`]), and operations are recorded into one command encoder that is
//! submitted only when a result is read back ([`Backend::download`]).

mod cache;
mod context;
mod tensor;
mod train;

pub use cache::GpuCache;
pub use context::{AdapterChoice, Context, GpuError};
pub use tensor::{GpuMatrix, GpuTensor};

use std::sync::Arc;

use clawrl_kernels::ops::{AttnShape, Rope, RopeStyle};
use clawrl_kernels::{Accelerator, Activations, Backend, QMatrix};

use context::Kernel;

/// The largest `head_dim` the attention kernels take (`shaders/attention*.wgsl` hold a head
/// in one workgroup's registers).
pub const MAX_HEAD_DIM: usize = 128;

/// The backend for one model: the device, and the model's rotary tables uploaded.
#[derive(Clone, Debug)]
pub struct Gpu {
    ctx: Arc<Context>,
    cos: GpuTensor,
    sin: GpuTensor,
    rope_half: usize,
    rope_style: RopeStyle,
}

impl Gpu {
    /// The backend on `ctx` for a model with rotary tables `rope`.
    pub fn new(ctx: Arc<Context>, rope: &Rope) -> Self {
        let (cos, sin) = rope.tables();
        Self {
            cos: ctx.upload(cos),
            sin: ctx.upload(sin),
            rope_half: rope.dim() / 2,
            rope_style: rope.style(),
            ctx,
        }
    }

    /// The device.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// `y = W·x` for `t` rows, the activations as `act` says.
    fn product(&self, w: &GpuMatrix, x: &GpuTensor, t: usize, act: Activations, y: &GpuTensor) {
        check(x.len() == t * w.cols(), "matmul input size");
        check(y.len() == t * w.rows(), "matmul output size");
        self.ctx.matmul(w, x, t, 1.0, false, act, y);
    }

    /// RoPE in place at positions `pos0…`, or (`inverse`) its inverse rotation.
    fn rotate(&self, x: &GpuTensor, heads: usize, head_dim: usize, pos0: usize, inverse: bool) {
        let rows = x.len() / (heads * head_dim);
        check(
            (pos0 + rows) * self.rope_half <= self.cos.len(),
            "RoPE position beyond the table",
        );
        let total = rows * heads * self.rope_half;
        let (gx, gy, width) = context::grid_1d(total);
        let style = match self.rope_style {
            RopeStyle::Interleaved => 0,
            RopeStyle::Half => 1,
        };
        self.ctx.dispatch(
            Kernel::Rope,
            [
                heads as u32,
                head_dim as u32,
                self.rope_half as u32,
                pos0 as u32,
                total as u32,
                style,
                width,
                u32::from(inverse),
            ],
            &[x, &self.cos, &self.sin],
            (gx, gy, 1),
        );
    }
}

/// Fails loudly on a shape mismatch: the model code checks shapes before calling in, so a
/// mismatch here is a bug, and on a GPU it would otherwise read out of bounds silently.
fn check(ok: bool, what: &str) {
    assert!(ok, "clawrl-gpu: {what}");
}

impl Backend for Gpu {
    type Tensor = GpuTensor;
    type Matrix = GpuMatrix;
    type Cache = GpuCache;

    fn zeros(&self, len: usize) -> GpuTensor {
        self.ctx.zeros(len)
    }

    fn upload(&self, x: &[f32]) -> GpuTensor {
        self.ctx.upload(x)
    }

    fn download(&self, x: &GpuTensor) -> Vec<f32> {
        self.ctx.download(x)
    }

    fn slice(&self, x: &GpuTensor, from: usize, len: usize) -> GpuTensor {
        check(from + len <= x.len(), "slice beyond the tensor");
        let out = self.ctx.zeros(len);
        self.ctx.copy(x.buffer(), from, out.buffer(), 0, len);
        out
    }

    fn concat(&self, parts: &[&GpuTensor]) -> GpuTensor {
        let out = self.ctx.zeros(parts.iter().map(|p| p.len()).sum());
        let mut at = 0;
        for p in parts {
            self.ctx.copy(p.buffer(), 0, out.buffer(), at, p.len());
            at += p.len();
        }
        out
    }

    fn matmul(&self, w: &GpuMatrix, x: &GpuTensor, t: usize, act: Activations, y: &mut GpuTensor) {
        self.product(w, x, t, act, y);
    }

    fn lora(
        &self,
        a: &GpuMatrix,
        b: &GpuMatrix,
        scale: f32,
        x: &GpuTensor,
        t: usize,
        act: Activations,
        y: &mut GpuTensor,
    ) {
        check(x.len() == t * a.cols(), "LoRA input size");
        check(b.cols() == a.rows(), "LoRA rank");
        check(y.len() == t * b.rows(), "LoRA output size");
        let ax = self.ctx.zeros(t * a.rows());
        self.ctx.matmul(a, x, t, 1.0, false, act, &ax);
        self.ctx.matmul(b, &ax, t, scale, true, act, y);
    }

    fn rms_norm(&self, x: &GpuTensor, w: &GpuTensor, eps: f32, out: &mut GpuTensor) {
        check(
            !w.is_empty() && x.len().is_multiple_of(w.len()) && out.len() == x.len(),
            "RMSNorm sizes",
        );
        let (n, rows) = (w.len(), x.len() / w.len());
        let (gx, gy) = context::grid(rows);
        self.ctx.dispatch(
            Kernel::RmsNorm,
            [n as u32, rows as u32, eps.to_bits(), gx, 0, 0, 0, 0],
            &[x, w, out],
            (gx, gy, 1),
        );
    }

    fn add(&self, x: &mut GpuTensor, y: &GpuTensor) {
        check(x.len() == y.len(), "add sizes");
        self.ctx.elementwise(Kernel::Add, x, y, 0);
    }

    fn add_rows(&self, x: &mut GpuTensor, bias: &GpuTensor) {
        check(
            !bias.is_empty() && x.len().is_multiple_of(bias.len()),
            "bias size",
        );
        self.ctx.elementwise(Kernel::AddRows, x, bias, bias.len());
    }

    fn silu_mul(&self, g: &mut GpuTensor, u: &GpuTensor) {
        check(g.len() == u.len(), "SwiGLU sizes");
        self.ctx.elementwise(Kernel::SiluMul, g, u, 0);
    }

    fn rope(&self, x: &mut GpuTensor, heads: usize, head_dim: usize, pos0: usize) {
        self.rotate(x, heads, head_dim, pos0, false);
    }

    fn new_cache(&self) -> GpuCache {
        GpuCache::new(self.ctx.clone())
    }

    fn append(&self, cache: &mut GpuCache, x: &GpuTensor) {
        cache.append(x);
    }

    fn attention(
        &self,
        q: &GpuTensor,
        k: &GpuCache,
        v: &GpuCache,
        shape: AttnShape,
        pos0: usize,
        out: &mut GpuTensor,
    ) {
        let AttnShape {
            heads,
            kv_heads,
            head_dim,
        } = shape;
        check(head_dim <= 128, "attention supports head_dim ≤ 128");
        let rows = q.len() / (heads * head_dim);
        check(
            k.len() >= (pos0 + rows) * kv_heads * head_dim && k.len() == v.len(),
            "attention cache shorter than the queries' positions",
        );
        let scale = 1.0 / (head_dim as f32).sqrt();
        self.ctx.dispatch(
            Kernel::Attention,
            [
                heads as u32,
                kv_heads as u32,
                head_dim as u32,
                pos0 as u32,
                scale.to_bits(),
                0,
                0,
                0,
            ],
            &[q, k.tensor(), v.tensor(), out],
            (heads as u32, rows as u32, 1),
        );
    }
}

impl Accelerator for Gpu {
    fn upload_matrix(&self, w: &QMatrix) -> GpuMatrix {
        self.ctx.upload_matrix(w)
    }

    fn describe(&self) -> String {
        format!("gpu: {}", self.ctx.describe())
    }

    fn max_tensor_len(&self) -> usize {
        self.ctx.max_tensor_len()
    }

    fn max_head_dim(&self) -> usize {
        MAX_HEAD_DIM
    }

    fn capture<R>(&self, f: impl FnOnce() -> R) -> Result<R, String> {
        self.ctx.capture(f).map_err(|e| e.to_string())
    }
}
