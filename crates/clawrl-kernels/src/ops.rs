//! Element-wise and attention kernels of a Llama-family transformer, in f32.

use rayon::prelude::*;

use crate::dot::dot_f32;

/// RMSNorm of every `w.len()`-long row of `x` into `out`: `out = x / rms(x) · w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = dot_f32(xr, xr) / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// The gradient of [`rms_norm`] with respect to `x`, given the output's gradient `dy`: with
/// `r = 1/rms(x)` and `g = dy·w`, `dx = r·g − x·r³·mean(g·x)`.
pub fn rms_norm_backward(x: &[f32], w: &[f32], eps: f32, dy: &[f32], dx: &mut [f32]) {
    let d = w.len();
    for ((xr, dyr), dxr) in x
        .chunks_exact(d)
        .zip(dy.chunks_exact(d))
        .zip(dx.chunks_exact_mut(d))
    {
        let r = 1.0 / (dot_f32(xr, xr) / d as f32 + eps).sqrt();
        let mut gx = 0.0;
        for ((o, &g), &v) in dxr.iter_mut().zip(dyr).zip(w) {
            *o = g * v;
        }
        for (&g, &v) in dxr.iter().zip(xr) {
            gx += g * v;
        }
        let c = r * r * r * gx / d as f32;
        for (o, &v) in dxr.iter_mut().zip(xr) {
            *o = r * *o - v * c;
        }
    }
}

/// `g ← silu(g) · u`, element-wise (the SwiGLU gate).
pub fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + (-*a).exp()) * b;
    }
}

/// The gradients of [`silu_mul`] given the output's gradient `dy`: with `s = σ(g)`,
/// `dg = dy·u·s·(1 + g·(1 − s))` and `du = dy·g·s`.
pub fn silu_mul_backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    for ((((&g, &u), &d), dg), du) in g.iter().zip(u).zip(dy).zip(dg).zip(du) {
        let s = 1.0 / (1.0 + (-g).exp());
        *dg = d * u * s * (1.0 + g * (1.0 - s));
        *du = d * g * s;
    }
}

/// Which pairs of a head's dimensions RoPE rotates together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: GGUF Llama weights (llama.cpp's "normal" RoPE).
    Interleaved,
    /// Split halves `(i, i + d/2)`: Hugging Face checkpoints and GGUF Qwen ("neox").
    Half,
}

/// Cosines and sines of rotary embeddings for every position up to a maximum.
#[derive(Clone, Debug)]
pub struct Rope {
    dim: usize,
    style: RopeStyle,
    max_positions: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Rotary embedding over the first `dim` dimensions of each head, base `theta`,
    /// for positions `0..max_positions`.
    pub fn new(dim: usize, theta: f32, style: RopeStyle, max_positions: usize) -> Self {
        let half = dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32))
            .collect();
        for p in 0..max_positions {
            for f in &inv_freq {
                let (s, c) = (p as f32 * f).sin_cos();
                cos.push(c);
                sin.push(s);
            }
        }
        Self {
            dim,
            style,
            max_positions,
            cos,
            sin,
        }
    }

    /// Positions this table covers.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// Dimensions rotated per head.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Which dimensions are paired.
    pub fn style(&self) -> RopeStyle {
        self.style
    }

    /// The cosine and sine tables, `max_positions × dim/2` each, row-major: entry
    /// `(p, j)` is of the angle `p · θ^(−2j/dim)`.
    pub fn tables(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// Rotates `x`, rows of `heads × head_dim` values at positions `pos0, pos0 + 1, …`.
    ///
    /// # Panics
    /// If a row's position is beyond [`Rope::max_positions`]; callers check the context first.
    pub fn apply(&self, x: &mut [f32], heads: usize, head_dim: usize, pos0: usize) {
        self.rotate(x, heads, head_dim, pos0, 1.0);
    }

    /// Rotates `x` back (by −θ): the inverse of [`Rope::apply`], and so its backward, since a
    /// rotation's transpose is its inverse.
    ///
    /// # Panics
    /// As [`Rope::apply`].
    pub fn apply_inverse(&self, x: &mut [f32], heads: usize, head_dim: usize, pos0: usize) {
        self.rotate(x, heads, head_dim, pos0, -1.0);
    }

    fn rotate(&self, x: &mut [f32], heads: usize, head_dim: usize, pos0: usize, sign: f32) {
        let half = self.dim / 2;
        for (i, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
            let base = (pos0 + i) * half;
            let (cos, sin) = (&self.cos[base..base + half], &self.sin[base..base + half]);
            for h in row.chunks_exact_mut(head_dim) {
                for j in 0..half {
                    let (a, b) = match self.style {
                        RopeStyle::Interleaved => (2 * j, 2 * j + 1),
                        RopeStyle::Half => (j, j + half),
                    };
                    let (x0, x1, s) = (h[a], h[b], sign * sin[j]);
                    h[a] = x0 * cos[j] - x1 * s;
                    h[b] = x0 * s + x1 * cos[j];
                }
            }
        }
    }
}

/// Shapes of one causal attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
}

/// Causal attention of the queries `q` (rows of `heads × head_dim`, at positions
/// `pos0, pos0 + 1, …`) over a cache whose rows of `kv_heads × head_dim` keys and values are
/// filled up to the last query's position; `out` has the shape of `q`.
pub fn attention(
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    shape: AttnShape,
    pos0: usize,
    out: &mut [f32],
) {
    let AttnShape {
        heads,
        kv_heads,
        head_dim,
    } = shape;
    let group = heads / kv_heads;
    let kv_stride = kv_heads * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    out.par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(idx, o)| {
            let (i, h) = (idx / heads, idx % heads);
            let kvh = h / group;
            let qh = &q[idx * head_dim..(idx + 1) * head_dim];
            let n = pos0 + i + 1;
            let mut scores: Vec<f32> = (0..n)
                .map(|p| {
                    let off = p * kv_stride + kvh * head_dim;
                    dot_f32(qh, &k_cache[off..off + head_dim]) * scale
                })
                .collect();
            softmax(&mut scores);
            o.fill(0.0);
            for (p, &s) in scores.iter().enumerate() {
                let off = p * kv_stride + kvh * head_dim;
                for (a, &v) in o.iter_mut().zip(&v_cache[off..off + head_dim]) {
                    *a += s * v;
                }
            }
        });
}

/// Softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Causal softmax of an `n × n` block of attention scores in place: row `i` is scaled by
/// `scale` and becomes a distribution over its entries `0..=i`; the entries above the diagonal
/// become 0.
pub fn causal_softmax(scores: &mut [f32], n: usize, scale: f32) {
    for (i, row) in scores.chunks_exact_mut(n).enumerate() {
        let (seen, future) = row.split_at_mut(i + 1);
        for v in seen.iter_mut() {
            *v *= scale;
        }
        softmax(seen);
        future.fill(0.0);
    }
}

/// The gradient of [`causal_softmax`] with respect to the unscaled scores, in place over the
/// gradient of its output: `ds = scale · p ⊙ (dp − rowsum(p ⊙ dp))`.
pub fn causal_softmax_backward(p: &[f32], dp: &mut [f32], n: usize, scale: f32) {
    for (pr, dr) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
        let dot = dot_f32(pr, dr);
        for (d, &pv) in dr.iter_mut().zip(pr) {
            *d = scale * pv * (*d - dot);
        }
    }
}

/// Log-softmax in place; returns nothing but leaves `x[v] = log p(v)`.
pub fn log_softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    let lse = max + sum.ln();
    for v in x.iter_mut() {
        *v -= lse;
    }
}

/// The `k` largest entries as `(index, value)`, largest first; ties go to the lower index.
pub fn top_k(x: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(x.len());
    if k == 0 {
        return Vec::new();
    }
    // A sorted buffer of k beats a heap for the small k used here (≤ 20).
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in x.iter().enumerate() {
        if best.len() == k && v.partial_cmp(&best[k - 1].1) != Some(std::cmp::Ordering::Greater) {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= v);
        best.insert(at, (i as u32, v));
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let x = [0.1, 0.5, 0.5, -1.0, 0.9];
        assert_eq!(top_k(&x, 3), vec![(4, 0.9), (1, 0.5), (2, 0.5)]);
        assert_eq!(top_k(&x, 10).len(), 5);
        assert!(top_k(&x, 0).is_empty());
    }

    #[test]
    fn log_softmax_normalises() {
        let mut x = [1.0, 2.0, 3.0];
        log_softmax(&mut x);
        let total: f32 = x.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!((x[2] - x[1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        for style in [RopeStyle::Interleaved, RopeStyle::Half] {
            let rope = Rope::new(4, 10000.0, style, 8);
            let mut x = vec![1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0];
            rope.apply(&mut x, 1, 4, 0);
            assert_eq!(&x[..4], &[1.0, 2.0, 3.0, 4.0]);
            let norm: f32 = x[4..].iter().map(|v| v * v).sum();
            assert!((norm - 30.0).abs() < 1e-4);
        }
    }

    /// Central differences of `f` at `x` along every coordinate, against `analytic`.
    fn check_gradient(x: &[f32], analytic: &[f32], f: impl Fn(&[f32]) -> f32) {
        let h = 1e-2;
        for i in 0..x.len() {
            let (mut up, mut down) = (x.to_vec(), x.to_vec());
            up[i] += h;
            down[i] -= h;
            let numeric = (f(&up) - f(&down)) / (2.0 * h);
            assert!(
                (numeric - analytic[i]).abs() < 2e-3,
                "coordinate {i}: numeric {numeric} vs analytic {}",
                analytic[i]
            );
        }
    }

    /// Σ dy ⊙ y: the loss whose gradient with respect to y is dy.
    fn weighted(y: &[f32], dy: &[f32]) -> f32 {
        y.iter().zip(dy).map(|(a, b)| a * b).sum()
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let (w, eps) = ([0.5, -1.0, 2.0], 1e-5);
        let x = [0.3, -1.2, 0.8, 1.5, 0.1, -0.4];
        let dy = [1.0, 0.5, -0.25, -1.0, 2.0, 0.75];
        let mut dx = [0.0; 6];
        rms_norm_backward(&x, &w, eps, &dy, &mut dx);
        check_gradient(&x, &dx, |x| {
            let mut y = [0.0; 6];
            rms_norm(x, &w, eps, &mut y);
            weighted(&y, &dy)
        });
    }

    #[test]
    fn silu_mul_backward_matches_finite_differences() {
        let (g, u, dy) = ([0.7, -1.3, 2.1], [1.5, 0.4, -0.6], [0.9, -1.1, 0.3]);
        let (mut dg, mut du) = ([0.0; 3], [0.0; 3]);
        silu_mul_backward(&g, &u, &dy, &mut dg, &mut du);
        let out = |g: &[f32], u: &[f32]| {
            let mut y = g.to_vec();
            silu_mul(&mut y, u);
            weighted(&y, &dy)
        };
        check_gradient(&g, &dg, |g| out(g, &u));
        check_gradient(&u, &du, |u| out(&g, u));
    }

    #[test]
    fn causal_softmax_masks_the_future_and_its_backward_matches_finite_differences() {
        let (n, scale) = (3, 0.5);
        let s = [0.2, 9.0, 9.0, 1.0, -0.5, 9.0, 0.3, 0.8, -1.2];
        let mut p = s;
        causal_softmax(&mut p, n, scale);
        assert_eq!(&p[..3], &[1.0, 0.0, 0.0]);
        assert_eq!(p[5], 0.0);
        let e = ((1.0f32 - -0.5) * scale).exp();
        assert!((p[3] - e / (1.0 + e)).abs() < 1e-6);
        let dy = [0.4, 1.0, -2.0, -0.7, 1.3, 0.2, 0.5, -0.9, 1.1];
        let mut ds = dy;
        causal_softmax_backward(&p, &mut ds, n, scale);
        check_gradient(&s, &ds, |s| {
            let mut p = s.to_vec();
            causal_softmax(&mut p, n, scale);
            weighted(&p, &dy)
        });
    }

    #[test]
    fn rope_inverse_undoes_the_rotation() {
        for style in [RopeStyle::Interleaved, RopeStyle::Half] {
            let rope = Rope::new(4, 10000.0, style, 8);
            let x = vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 0.25, 2.0];
            let mut y = x.clone();
            rope.apply(&mut y, 1, 4, 3);
            assert_ne!(y, x);
            rope.apply_inverse(&mut y, 1, 4, 3);
            for (a, b) in y.iter().zip(&x) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn attention_of_one_position_returns_its_value() {
        let shape = AttnShape {
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
        };
        let q = [1.0, 0.0, 0.0, 1.0];
        let k = [0.3, 0.7];
        let v = [5.0, -2.0];
        let mut out = [0.0; 4];
        attention(&q, &k, &v, shape, 0, &mut out);
        assert_eq!(out, [5.0, -2.0, 5.0, -2.0]);
    }
}
