//! The seam between the transformer and the device it runs on: the operations a forward pass
//! is made of, implemented here for the CPU ([`Cpu`]) and by `clawrl-gpu` for wgpu.
//!
//! The model code is written once against [`Backend`]; a backend owns how activations,
//! weights and the KV cache are stored (host vectors here, device buffers on a GPU).

use crate::QMatrix;
use crate::ops::{self, AttnShape, Rope};

/// The operations of a Llama-family forward pass on one device.
///
/// Tensors are flat, row-major f32 buffers; the shapes are given with each call. Operations
/// may run asynchronously: only [`Backend::download`] waits for the results.
pub trait Backend {
    /// Activations (and norm weights, biases): `len` f32 values.
    type Tensor;
    /// A weight matrix in its stored format (f32, Q4_1 or Q8_0), `rows × cols`.
    type Matrix;
    /// One block's keys or values of every position so far (`positions × kv_dim`).
    type Cache;

    /// `len` zeros.
    fn zeros(&self, len: usize) -> Self::Tensor;
    /// A copy of host values.
    fn upload(&self, x: &[f32]) -> Self::Tensor;
    /// The values, on the host, once every operation writing them has finished.
    fn download(&self, x: &Self::Tensor) -> Vec<f32>;
    /// Values `from..from + len` of `x`, copied.
    fn slice(&self, x: &Self::Tensor, from: usize, len: usize) -> Self::Tensor;
    /// `y = W·x` for `t` rows of `x` (`t × cols` in, `t × rows` out). Below
    /// [`GEMM_MIN_TOKENS`](crate::GEMM_MIN_TOKENS) rows a quantized `W` meets activations
    /// rounded to 8 bits per 32-value block (ggml's Q8_0/Q8_1, as llama.cpp decodes); from it
    /// on, f32 activations.
    fn matmul(&self, w: &Self::Matrix, x: &Self::Tensor, t: usize, y: &mut Self::Tensor);
    /// `y += scale · B(A x)` for `t` rows: a LoRA update (Hu et al. 2021, eq. 3), A `r × in`
    /// and B `out × r`.
    fn lora(
        &self,
        a: &Self::Matrix,
        b: &Self::Matrix,
        scale: f32,
        x: &Self::Tensor,
        t: usize,
        y: &mut Self::Tensor,
    );
    /// RMSNorm of every `w`-long row of `x` into `out` ([`ops::rms_norm`]).
    fn rms_norm(&self, x: &Self::Tensor, w: &Self::Tensor, eps: f32, out: &mut Self::Tensor);
    /// `x += y`.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor);
    /// `x[i] += bias[i mod bias.len()]`: a bias on every row.
    fn add_rows(&self, x: &mut Self::Tensor, bias: &Self::Tensor);
    /// `g ← silu(g) · u` ([`ops::silu_mul`]).
    fn silu_mul(&self, g: &mut Self::Tensor, u: &Self::Tensor);
    /// Rotary embedding of rows of `heads × head_dim` at positions `pos0, pos0 + 1, …`
    /// ([`Rope::apply`]).
    fn rope(&self, x: &mut Self::Tensor, heads: usize, head_dim: usize, pos0: usize);
    /// An empty cache.
    fn new_cache(&self) -> Self::Cache;
    /// Appends the rows of `x` to `cache`.
    fn append(&self, cache: &mut Self::Cache, x: &Self::Tensor);
    /// Causal attention of `q` at positions `pos0…` over the caches ([`ops::attention`]).
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Cache,
        v: &Self::Cache,
        shape: AttnShape,
        pos0: usize,
        out: &mut Self::Tensor,
    );
}

/// The CPU backend: host vectors, the kernels of this crate on the rayon pool.
#[derive(Clone, Copy, Debug)]
pub struct Cpu<'a> {
    /// The rotary tables of the model it runs.
    pub rope: &'a Rope,
}

impl Backend for Cpu<'_> {
    type Tensor = Vec<f32>;
    type Matrix = QMatrix;
    type Cache = Vec<f32>;

    fn zeros(&self, len: usize) -> Vec<f32> {
        vec![0.0; len]
    }

    fn upload(&self, x: &[f32]) -> Vec<f32> {
        x.to_vec()
    }

    fn download(&self, x: &Vec<f32>) -> Vec<f32> {
        x.clone()
    }

    fn slice(&self, x: &Vec<f32>, from: usize, len: usize) -> Vec<f32> {
        x[from..from + len].to_vec()
    }

    fn matmul(&self, w: &QMatrix, x: &Vec<f32>, t: usize, y: &mut Vec<f32>) {
        w.matmul(x, t, y);
    }

    fn lora(&self, a: &QMatrix, b: &QMatrix, scale: f32, x: &Vec<f32>, t: usize, y: &mut Vec<f32>) {
        let mut ax = vec![0.0; t * a.rows()];
        a.matmul(x, t, &mut ax);
        let mut bax = vec![0.0; y.len()];
        b.matmul(&ax, t, &mut bax);
        for (o, d) in y.iter_mut().zip(&bax) {
            *o += scale * d;
        }
    }

    fn rms_norm(&self, x: &Vec<f32>, w: &Vec<f32>, eps: f32, out: &mut Vec<f32>) {
        ops::rms_norm(x, w, eps, out);
    }

    fn add(&self, x: &mut Vec<f32>, y: &Vec<f32>) {
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    }

    fn add_rows(&self, x: &mut Vec<f32>, bias: &Vec<f32>) {
        for row in x.chunks_exact_mut(bias.len()) {
            for (a, b) in row.iter_mut().zip(bias) {
                *a += b;
            }
        }
    }

    fn silu_mul(&self, g: &mut Vec<f32>, u: &Vec<f32>) {
        ops::silu_mul(g, u);
    }

    fn rope(&self, x: &mut Vec<f32>, heads: usize, head_dim: usize, pos0: usize) {
        self.rope.apply(x, heads, head_dim, pos0);
    }

    fn new_cache(&self) -> Vec<f32> {
        Vec::new()
    }

    fn append(&self, cache: &mut Vec<f32>, x: &Vec<f32>) {
        cache.extend_from_slice(x);
    }

    fn attention(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        shape: AttnShape,
        pos0: usize,
        out: &mut Vec<f32>,
    ) {
        ops::attention(q, k, v, shape, pos0, out);
    }
}
