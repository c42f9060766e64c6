//! The seam between the transformer and the device it runs on: the operations a forward pass
//! is made of, implemented here for the CPU ([`Cpu`]) and by `clawrl-gpu` for wgpu.
//!
//! The model code is written once against [`Backend`]; a backend owns how activations,
//! weights and the KV cache are stored (host vectors here, device buffers on a GPU).

use crate::matmul::{Operand, matmul};
use crate::ops::{self, AttnShape, Rope};
use crate::{Activations, QMatrix};

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
    /// The parts one after another (to read many small results back at once, or to gather
    /// rows computed one sequence at a time).
    fn concat(&self, parts: &[&Self::Tensor]) -> Self::Tensor;
    /// `y = W·x` for `t` rows of `x` (`t × cols` in, `t × rows` out), the activations
    /// meeting a quantized `W` as `act` says ([`Activations`]).
    fn matmul(
        &self,
        w: &Self::Matrix,
        x: &Self::Tensor,
        t: usize,
        act: Activations,
        y: &mut Self::Tensor,
    );
    /// `y += scale · B(A x)` for `t` rows: a LoRA update (Hu et al. 2021, eq. 3), A `r × in`
    /// and B `out × r`; `act` as in [`Self::matmul`].
    #[allow(clippy::too_many_arguments)]
    fn lora(
        &self,
        a: &Self::Matrix,
        b: &Self::Matrix,
        scale: f32,
        x: &Self::Tensor,
        t: usize,
        act: Activations,
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

    fn concat(&self, parts: &[&Vec<f32>]) -> Vec<f32> {
        parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    fn matmul(&self, w: &QMatrix, x: &Vec<f32>, t: usize, act: Activations, y: &mut Vec<f32>) {
        match act {
            Activations::Auto => w.matmul(x, t, y),
            Activations::Rows => w.matvec_rows(x, t, y),
            Activations::Exact => w.matmul_f32(x, t, y),
        }
    }

    fn lora(
        &self,
        a: &QMatrix,
        b: &QMatrix,
        scale: f32,
        x: &Vec<f32>,
        t: usize,
        act: Activations,
        y: &mut Vec<f32>,
    ) {
        let mut ax = vec![0.0; t * a.rows()];
        self.matmul(a, x, t, act, &mut ax);
        let mut bax = vec![0.0; y.len()];
        self.matmul(b, &ax, t, act, &mut bax);
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

/// The shape of a general product `C = α·op(A)·op(B)` (`+ C` when `accumulate`): `op(A)` is
/// `m × k` and `op(B)` is `k × n`, each stored row-major as itself or, when `trans_a` /
/// `trans_b`, as its transpose (`k × m`, `n × k`).
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The summed dimension.
    pub k: usize,
    /// A is stored `k × m`.
    pub trans_a: bool,
    /// B is stored `n × k`.
    pub trans_b: bool,
    /// α.
    pub alpha: f32,
    /// Add into C instead of overwriting it.
    pub accumulate: bool,
}

impl Gemm {
    /// `C = op(A)·op(B)`, `m × n` over `k`.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            accumulate: false,
        }
    }

    /// With A stored transposed.
    pub fn ta(self) -> Self {
        Self {
            trans_a: true,
            ..self
        }
    }

    /// With B stored transposed.
    pub fn tb(self) -> Self {
        Self {
            trans_b: true,
            ..self
        }
    }

    /// Scaled by `alpha` and added into C.
    pub fn add_scaled(self, alpha: f32) -> Self {
        Self {
            alpha,
            accumulate: true,
            ..self
        }
    }

    /// Scaled by `alpha`.
    pub fn scaled(self, alpha: f32) -> Self {
        Self { alpha, ..self }
    }
}

/// What training adds to a [`Backend`]: f32 products at any length, the backward of every
/// forward operation, attention that keeps its probabilities for the backward, and the
/// vocabulary head (log-softmax, top-k and gathers, so only the few log-probs the objective
/// uses leave the device).
///
/// A training forward always starts at position 0, so the attention here is over the
/// sequence itself (no cache).
pub trait TrainBackend: Backend {
    /// Values `x` holds.
    fn numel(&self, x: &Self::Tensor) -> usize;
    /// A matrix's `(rows, cols)`.
    fn shape(&self, w: &Self::Matrix) -> (usize, usize);
    /// The input gradient of a product with `W`: `dx = dy·W` (`+=` when `accumulate`), `dy`
    /// `t × rows`, `dx` `t × cols`.
    fn matmul_backward(
        &self,
        w: &Self::Matrix,
        dy: &Self::Tensor,
        t: usize,
        accumulate: bool,
        dx: &mut Self::Tensor,
    );
    /// `C = α·op(A)·op(B)` (`+ C`) on f32 tensors ([`Gemm`]).
    fn gemm(&self, a: &Self::Tensor, b: &Self::Tensor, shape: Gemm, c: &mut Self::Tensor);
    /// `x ← x ⊙ y`, element-wise (a dropout mask).
    fn mul(&self, x: &mut Self::Tensor, y: &Self::Tensor);
    /// `out` = a copy of `x` placed at value `offset` of `len` zeros.
    fn place(&self, x: &Self::Tensor, len: usize, offset: usize) -> Self::Tensor;
    /// [`ops::rms_norm_backward`]: `dx` from the input `x`, the weight `w` and `dy`.
    fn rms_norm_backward(
        &self,
        x: &Self::Tensor,
        w: &Self::Tensor,
        eps: f32,
        dy: &Self::Tensor,
        dx: &mut Self::Tensor,
    );
    /// [`ops::silu_mul_backward`]: `dg`, `du` from the gate's inputs `g`, `u` and `dy`.
    fn silu_mul_backward(
        &self,
        g: &Self::Tensor,
        u: &Self::Tensor,
        dy: &Self::Tensor,
        dg: &mut Self::Tensor,
        du: &mut Self::Tensor,
    );
    /// The backward of [`Backend::rope`]: the inverse rotation ([`Rope::apply_inverse`]).
    fn rope_backward(&self, dx: &mut Self::Tensor, heads: usize, head_dim: usize);
    /// Causal attention of `t` positions over themselves: `q` `t × heads × head_dim`, `k`, `v`
    /// `t × kv_heads × head_dim`, into `out` (the shape of `q`) and the probabilities `p`
    /// (`heads × t × t`, zero above the diagonal), kept for the backward.
    fn attention_probs(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        shape: AttnShape,
        out: &mut Self::Tensor,
        p: &mut Self::Tensor,
    );
    /// The backward of [`TrainBackend::attention_probs`]: with `dP = dO·Vᵀ` and
    /// `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dQ = s·dS·K`, `dK = s·dSᵀ·Q` and `dV = Pᵀ·dO`,
    /// summed over the query heads that share a key/value head (`s = 1/√head_dim`).
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        p: &Self::Tensor,
        dout: &Self::Tensor,
        shape: AttnShape,
        dq: &mut Self::Tensor,
        dk: &mut Self::Tensor,
        dv: &mut Self::Tensor,
    );
    /// Every `width`-long row of `z` becomes its log-softmax in place; `entropy` gets each
    /// row's entropy in nats (`H = −Σ p·ln p`).
    fn log_softmax(&self, z: &mut Self::Tensor, width: usize, entropy: &mut Self::Tensor);
    /// The `k` largest entries' columns of every `width`-long row, largest first, ties to the
    /// lower column ([`ops::top_k`]): `rows × k` ids, on the host.
    fn top_k(&self, x: &Self::Tensor, width: usize, k: usize) -> Vec<u32>;
    /// `x[idx[j]]` for every j.
    fn gather(&self, x: &Self::Tensor, idx: &[u32]) -> Self::Tensor;
    /// The backward of gathering from a log-softmax `lp` (rows of `width`): with G the
    /// gathered entries' gradients `g` at flat indices `idx` (repeats add) and `totals[r]` the
    /// sum of row r's, `dz[r, v] = Σ_{idx_j = (r, v)} g_j − exp(lp[r, v])·totals[r]`.
    fn log_softmax_backward(
        &self,
        lp: &Self::Tensor,
        width: usize,
        totals: &[f32],
        idx: &[u32],
        g: &[f32],
        dz: &mut Self::Tensor,
    );
}

/// A [`TrainBackend`] on an accelerator (wgpu's `clawrl-gpu`, `clawrl-cuda`): what the engine
/// needs to hold a model there and train on it, beyond the operations.
pub trait Accelerator:
    TrainBackend<Tensor: Clone + Send + Sync, Matrix: Clone + Send + Sync>
    + Clone
    + Send
    + Sync
    + 'static
{
    /// A device copy of a weight matrix, in its stored format.
    fn upload_matrix(&self, w: &QMatrix) -> Self::Matrix;
    /// The device, for display: `gpu: <adapter>` or `cuda: <GPU>`.
    fn describe(&self) -> String;
    /// The most f32 values one tensor may hold.
    fn max_tensor_len(&self) -> usize;
    /// The largest `head_dim` the attention kernels take.
    fn max_head_dim(&self) -> usize;
    /// Runs `f`, turning the device's failures inside it on this thread (out of memory, a
    /// request beyond its limits), which would otherwise end the process, into an error.
    ///
    /// # Errors
    /// The device's message for the first failure.
    fn capture<R>(&self, f: impl FnOnce() -> R) -> Result<R, String>;
}

impl TrainBackend for Cpu<'_> {
    fn numel(&self, x: &Vec<f32>) -> usize {
        x.len()
    }

    fn shape(&self, w: &QMatrix) -> (usize, usize) {
        (w.rows(), w.cols())
    }

    fn matmul_backward(
        &self,
        w: &QMatrix,
        dy: &Vec<f32>,
        t: usize,
        accumulate: bool,
        dx: &mut Vec<f32>,
    ) {
        if accumulate {
            let mut part = vec![0.0; dx.len()];
            w.matmul_transposed(dy, t, &mut part);
            self.add(dx, &part);
        } else {
            w.matmul_transposed(dy, t, dx);
        }
    }

    fn gemm(&self, a: &Vec<f32>, b: &Vec<f32>, s: Gemm, c: &mut Vec<f32>) {
        fn op(x: &[f32], t: bool) -> Operand<'_> {
            if t {
                Operand::transposed(x)
            } else {
                Operand::plain(x)
            }
        }
        let r = matmul(op(a, s.trans_a), op(b, s.trans_b), s.m, s.n, s.k, true);
        for (o, v) in c.iter_mut().zip(r) {
            *o = if s.accumulate {
                *o + s.alpha * v
            } else {
                s.alpha * v
            };
        }
    }

    fn mul(&self, x: &mut Vec<f32>, y: &Vec<f32>) {
        for (a, b) in x.iter_mut().zip(y) {
            *a *= b;
        }
    }

    fn place(&self, x: &Vec<f32>, len: usize, offset: usize) -> Vec<f32> {
        let mut out = vec![0.0; len];
        out[offset..offset + x.len()].copy_from_slice(x);
        out
    }

    fn rms_norm_backward(
        &self,
        x: &Vec<f32>,
        w: &Vec<f32>,
        eps: f32,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) {
        ops::rms_norm_backward(x, w, eps, dy, dx);
    }

    fn silu_mul_backward(
        &self,
        g: &Vec<f32>,
        u: &Vec<f32>,
        dy: &Vec<f32>,
        dg: &mut Vec<f32>,
        du: &mut Vec<f32>,
    ) {
        ops::silu_mul_backward(g, u, dy, dg, du);
    }

    fn rope_backward(&self, dx: &mut Vec<f32>, heads: usize, head_dim: usize) {
        self.rope.apply_inverse(dx, heads, head_dim, 0);
    }

    fn attention_probs(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        shape: AttnShape,
        out: &mut Vec<f32>,
        p: &mut Vec<f32>,
    ) {
        let (hd, t) = (shape.head_dim, q.len() / (shape.heads * shape.head_dim));
        let scale = 1.0 / (hd as f32).sqrt();
        let heads = by_head(q, shape.heads, hd);
        let (keys, values) = (
            by_head(k, shape.kv_heads, hd),
            by_head(v, shape.kv_heads, hd),
        );
        let group = shape.heads / shape.kv_heads;
        let mut o = vec![0.0; out.len()];
        for (h, qh) in heads.iter().enumerate() {
            let (kh, vh) = (&keys[h / group], &values[h / group]);
            let mut s = matmul(Operand::plain(qh), Operand::transposed(kh), t, t, hd, true);
            ops::causal_softmax(&mut s, t, scale);
            let oh = matmul(Operand::plain(&s), Operand::plain(vh), t, hd, t, true);
            scatter_head(&oh, &mut o, h, shape.heads, hd);
            p[h * t * t..(h + 1) * t * t].copy_from_slice(&s);
        }
        *out = o;
    }

    fn attention_backward(
        &self,
        q: &Vec<f32>,
        k: &Vec<f32>,
        v: &Vec<f32>,
        p: &Vec<f32>,
        dout: &Vec<f32>,
        shape: AttnShape,
        dq: &mut Vec<f32>,
        dk: &mut Vec<f32>,
        dv: &mut Vec<f32>,
    ) {
        let (hd, t) = (shape.head_dim, q.len() / (shape.heads * shape.head_dim));
        let scale = 1.0 / (hd as f32).sqrt();
        let (qs, dos) = (by_head(q, shape.heads, hd), by_head(dout, shape.heads, hd));
        let (keys, values) = (
            by_head(k, shape.kv_heads, hd),
            by_head(v, shape.kv_heads, hd),
        );
        let group = shape.heads / shape.kv_heads;
        let (mut gq, mut gk, mut gv) = (
            vec![0.0; dq.len()],
            vec![0.0; dk.len()],
            vec![0.0; dv.len()],
        );
        for h in 0..shape.heads {
            let kvh = h / group;
            let ph = &p[h * t * t..(h + 1) * t * t];
            let mut ds = matmul(
                Operand::plain(&dos[h]),
                Operand::transposed(&values[kvh]),
                t,
                t,
                hd,
                true,
            );
            ops::causal_softmax_backward(ph, &mut ds, t, scale);
            let dqh = matmul(
                Operand::plain(&ds),
                Operand::plain(&keys[kvh]),
                t,
                hd,
                t,
                true,
            );
            scatter_head(&dqh, &mut gq, h, shape.heads, hd);
            let dkh = matmul(
                Operand::transposed(&ds),
                Operand::plain(&qs[h]),
                t,
                hd,
                t,
                true,
            );
            let dvh = matmul(
                Operand::transposed(ph),
                Operand::plain(&dos[h]),
                t,
                hd,
                t,
                true,
            );
            add_head(&dkh, &mut gk, kvh, shape.kv_heads, hd);
            add_head(&dvh, &mut gv, kvh, shape.kv_heads, hd);
        }
        (*dq, *dk, *dv) = (gq, gk, gv);
    }

    fn log_softmax(&self, z: &mut Vec<f32>, width: usize, entropy: &mut Vec<f32>) {
        for (row, e) in z.chunks_exact_mut(width).zip(entropy.iter_mut()) {
            ops::log_softmax(row);
            *e = -row.iter().map(|&l| l.exp() * l).sum::<f32>();
        }
    }

    fn top_k(&self, x: &Vec<f32>, width: usize, k: usize) -> Vec<u32> {
        x.chunks_exact(width)
            .flat_map(|row| ops::top_k(row, k).into_iter().map(|(i, _)| i))
            .collect()
    }

    fn gather(&self, x: &Vec<f32>, idx: &[u32]) -> Vec<f32> {
        idx.iter().map(|&i| x[i as usize]).collect()
    }

    fn log_softmax_backward(
        &self,
        lp: &Vec<f32>,
        width: usize,
        totals: &[f32],
        idx: &[u32],
        g: &[f32],
        dz: &mut Vec<f32>,
    ) {
        for ((d, l), &total) in dz
            .chunks_exact_mut(width)
            .zip(lp.chunks_exact(width))
            .zip(totals)
        {
            for (dv, &lv) in d.iter_mut().zip(l) {
                *dv = -lv.exp() * total;
            }
        }
        for (&i, &gj) in idx.iter().zip(g) {
            dz[i as usize] += gj;
        }
    }
}

/// Rows `t × heads × d` as one contiguous `t × d` matrix per head.
fn by_head(x: &[f32], heads: usize, d: usize) -> Vec<Vec<f32>> {
    (0..heads)
        .map(|h| {
            x.chunks_exact(heads * d)
                .flat_map(|row| &row[h * d..(h + 1) * d])
                .copied()
                .collect()
        })
        .collect()
}

/// Writes head `h`'s `t × d` matrix into rows of `heads × d`.
fn scatter_head(xh: &[f32], out: &mut [f32], h: usize, heads: usize, d: usize) {
    for (row, src) in out.chunks_exact_mut(heads * d).zip(xh.chunks_exact(d)) {
        row[h * d..(h + 1) * d].copy_from_slice(src);
    }
}

/// Adds head `h`'s `t × d` matrix into rows of `heads × d`.
fn add_head(xh: &[f32], out: &mut [f32], h: usize, heads: usize, d: usize) {
    for (row, src) in out.chunks_exact_mut(heads * d).zip(xh.chunks_exact(d)) {
        for (o, s) in row[h * d..(h + 1) * d].iter_mut().zip(src) {
            *o += s;
        }
    }
}
