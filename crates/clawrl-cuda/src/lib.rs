//! The CUDA backend of the ClawRL engine, for NVIDIA GPUs: cuBLAS for the products and the
//! CUDA C kernels of `src/kernels.cu` (twins of the WGSL kernels of `shaders/`) for the rest.
//!
//! Nothing of CUDA is linked: the driver, cuBLAS and NVRTC are opened at run time
//! ([`libs::search_dirs`] says where they are looked for) and the kernels are compiled by NVRTC
//! for the GPU at hand, so the crate builds and its CPU-only users run on machines without
//! CUDA. [`Context::open`] opens a GPU; [`Cuda`] implements [`clawrl_kernels::Backend`] and
//! [`clawrl_kernels::TrainBackend`] for one model, so the engine's forward pass and the
//! trainer's passes run here unchanged. Every operation is queued on one stream; only a
//! read-back ([`Backend::download`]) waits.

mod cache;
mod context;
pub mod libs;
mod tensor;
mod train;

pub use cache::CudaCache;
pub use context::{Context, CudaError, KERNEL_NAMES, KERNELS, compile};
pub use tensor::{CudaMatrix, CudaTensor};

use std::sync::Arc;

use clawrl_kernels::ops::{AttnShape, Rope, RopeStyle};
use clawrl_kernels::{Accelerator, Activations, Backend, QMatrix};

use context::{Arg, Kernel, WG};

/// The largest `head_dim` the attention kernels take: a head is one block of `WG` threads.
pub const MAX_HEAD_DIM: usize = WG as usize;

/// The backend for one model: the device, and the model's rotary tables uploaded.
#[derive(Clone, Debug)]
pub struct Cuda {
    ctx: Arc<Context>,
    cos: CudaTensor,
    sin: CudaTensor,
    rope_half: usize,
    rope_style: RopeStyle,
}

impl Cuda {
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

    /// RoPE in place at positions `pos0…`, or (`inverse`) its inverse rotation.
    fn rotate(&self, x: &CudaTensor, heads: usize, head_dim: usize, pos0: usize, inverse: bool) {
        // CUDA, unlike WGSL, does not clamp an access out of bounds: every size is checked.
        check(
            heads * head_dim > 0
                && x.len().is_multiple_of(heads * head_dim)
                && 2 * self.rope_half <= head_dim,
            "RoPE sizes",
        );
        let rows = x.len() / (heads * head_dim);
        check(
            (pos0 + rows) * self.rope_half <= self.cos.len(),
            "RoPE position beyond the table",
        );
        let total = rows * heads * self.rope_half;
        let style = match self.rope_style {
            RopeStyle::Interleaved => 0,
            RopeStyle::Half => 1,
        };
        self.ctx.elementwise(
            Kernel::Rope,
            total,
            &[
                Arg::P(x.ptr()),
                Arg::P(self.cos.ptr()),
                Arg::P(self.sin.ptr()),
                Arg::U(heads as u32),
                Arg::U(head_dim as u32),
                Arg::U(self.rope_half as u32),
                Arg::U(pos0 as u32),
                Arg::U(total as u32),
                Arg::U(style),
                Arg::U(u32::from(inverse)),
            ],
        );
    }

    /// `y = W·x` for `t` rows, the activations as `act` says.
    fn product(&self, w: &CudaMatrix, x: &CudaTensor, t: usize, act: Activations, y: &CudaTensor) {
        check(x.len() == t * w.cols(), "matmul input size");
        check(y.len() == t * w.rows(), "matmul output size");
        self.ctx.matmul(w, x, t, 1.0, false, act, y);
    }

    /// One element-wise kernel `x ∘= y`.
    fn pointwise(&self, kernel: Kernel, x: &CudaTensor, y: &CudaTensor) {
        self.ctx.elementwise(
            kernel,
            x.len(),
            &[Arg::P(x.ptr()), Arg::P(y.ptr()), Arg::U(x.len() as u32)],
        );
    }
}

/// Fails loudly on a shape mismatch: the model code checks shapes before calling in, so a
/// mismatch here is a bug, and on a GPU it would otherwise read out of bounds silently.
fn check(ok: bool, what: &str) {
    assert!(ok, "clawrl-cuda: {what}");
}

impl Backend for Cuda {
    type Tensor = CudaTensor;
    type Matrix = CudaMatrix;
    type Cache = CudaCache;

    fn zeros(&self, len: usize) -> CudaTensor {
        self.ctx.zeros(len)
    }

    fn upload(&self, x: &[f32]) -> CudaTensor {
        self.ctx.upload(x)
    }

    fn download(&self, x: &CudaTensor) -> Vec<f32> {
        self.ctx.download(x)
    }

    fn slice(&self, x: &CudaTensor, from: usize, len: usize) -> CudaTensor {
        check(from + len <= x.len(), "slice beyond the tensor");
        let out = self.ctx.zeros(len);
        self.ctx.copy(x, from, &out, 0, len);
        out
    }

    fn concat(&self, parts: &[&CudaTensor]) -> CudaTensor {
        let out = self.ctx.zeros(parts.iter().map(|p| p.len()).sum());
        let mut at = 0;
        for p in parts {
            self.ctx.copy(p, 0, &out, at, p.len());
            at += p.len();
        }
        out
    }

    fn matmul(
        &self,
        w: &CudaMatrix,
        x: &CudaTensor,
        t: usize,
        act: Activations,
        y: &mut CudaTensor,
    ) {
        self.product(w, x, t, act, y);
    }

    fn lora(
        &self,
        a: &CudaMatrix,
        b: &CudaMatrix,
        scale: f32,
        x: &CudaTensor,
        t: usize,
        act: Activations,
        y: &mut CudaTensor,
    ) {
        check(x.len() == t * a.cols(), "LoRA input size");
        check(b.cols() == a.rows(), "LoRA rank");
        check(y.len() == t * b.rows(), "LoRA output size");
        let ax = self.ctx.zeros(t * a.rows());
        self.ctx.matmul(a, x, t, 1.0, false, act, &ax);
        self.ctx.matmul(b, &ax, t, scale, true, act, y);
    }

    fn rms_norm(&self, x: &CudaTensor, w: &CudaTensor, eps: f32, out: &mut CudaTensor) {
        check(
            !w.is_empty() && x.len().is_multiple_of(w.len()) && out.len() == x.len(),
            "RMSNorm sizes",
        );
        let (n, rows) = (w.len(), x.len() / w.len());
        self.ctx.launch(
            Kernel::RmsNorm,
            (rows as u32, 1, 1),
            WG,
            &[
                Arg::P(x.ptr()),
                Arg::P(w.ptr()),
                Arg::P(out.ptr()),
                Arg::U(n as u32),
                Arg::U(rows as u32),
                Arg::F(eps),
            ],
        );
    }

    fn add(&self, x: &mut CudaTensor, y: &CudaTensor) {
        check(x.len() == y.len(), "add sizes");
        self.pointwise(Kernel::Add, x, y);
    }

    fn add_rows(&self, x: &mut CudaTensor, bias: &CudaTensor) {
        check(
            !bias.is_empty() && x.len().is_multiple_of(bias.len()),
            "bias size",
        );
        self.ctx.elementwise(
            Kernel::AddRows,
            x.len(),
            &[
                Arg::P(x.ptr()),
                Arg::P(bias.ptr()),
                Arg::U(x.len() as u32),
                Arg::U(bias.len() as u32),
            ],
        );
    }

    fn silu_mul(&self, g: &mut CudaTensor, u: &CudaTensor) {
        check(g.len() == u.len(), "SwiGLU sizes");
        self.pointwise(Kernel::SiluMul, g, u);
    }

    fn rope(&self, x: &mut CudaTensor, heads: usize, head_dim: usize, pos0: usize) {
        self.rotate(x, heads, head_dim, pos0, false);
    }

    fn new_cache(&self) -> CudaCache {
        CudaCache::new(self.ctx.clone())
    }

    fn append(&self, cache: &mut CudaCache, x: &CudaTensor) {
        cache.append(x);
    }

    fn attention(
        &self,
        q: &CudaTensor,
        k: &CudaCache,
        v: &CudaCache,
        shape: AttnShape,
        pos0: usize,
        out: &mut CudaTensor,
    ) {
        let AttnShape {
            heads,
            kv_heads,
            head_dim,
        } = shape;
        check(
            head_dim <= MAX_HEAD_DIM,
            "attention supports head_dim ≤ 128",
        );
        check(
            kv_heads > 0
                && heads.is_multiple_of(kv_heads)
                && heads * head_dim > 0
                && q.len().is_multiple_of(heads * head_dim)
                && out.len() == q.len(),
            "attention sizes",
        );
        let rows = q.len() / (heads * head_dim);
        check(
            k.len() >= (pos0 + rows) * kv_heads * head_dim && k.len() == v.len(),
            "attention cache shorter than the queries' positions",
        );
        let scale = 1.0 / (head_dim as f32).sqrt();
        self.ctx.launch(
            Kernel::Attention,
            (heads as u32, rows as u32, 1),
            WG,
            &[
                Arg::P(q.ptr()),
                Arg::P(k.tensor().ptr()),
                Arg::P(v.tensor().ptr()),
                Arg::P(out.ptr()),
                Arg::U(heads as u32),
                Arg::U(kv_heads as u32),
                Arg::U(head_dim as u32),
                Arg::U(pos0 as u32),
                Arg::F(scale),
            ],
        );
    }
}

impl Accelerator for Cuda {
    fn upload_matrix(&self, w: &QMatrix) -> CudaMatrix {
        self.ctx.upload_matrix(w)
    }

    fn describe(&self) -> String {
        format!("cuda: {}", self.ctx.describe())
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
