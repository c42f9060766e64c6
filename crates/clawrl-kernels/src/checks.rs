//! The shape preconditions of the training operations ([`crate::TrainBackend`]), which the
//! accelerators assert before they launch: the model code checks shapes before calling in, so
//! a mismatch is a bug, and on a GPU it would otherwise read or write out of bounds silently.
//! Each function panics naming what does not fit.

use crate::Gemm;
use crate::ops::AttnShape;

fn check(ok: bool, what: &str) {
    assert!(ok, "accelerator: {what}");
}

/// Training attention over `t` positions, with `q`, `k`, `v` of these lengths (heads of at
/// most `max_head_dim`); returns `t`.
pub fn attention(q: usize, k: usize, v: usize, shape: AttnShape, max_head_dim: usize) -> usize {
    let AttnShape {
        heads,
        kv_heads,
        head_dim,
    } = shape;
    check(
        head_dim <= max_head_dim,
        "attention head wider than the kernels take",
    );
    check(
        kv_heads > 0 && heads.is_multiple_of(kv_heads) && heads * head_dim > 0,
        "query heads in whole groups",
    );
    let t = q / (heads * head_dim);
    check(
        q == t * heads * head_dim && k == t * kv_heads * head_dim && v == k,
        "attention sizes",
    );
    t
}

/// The probabilities `p` (`heads × t × t`) and output `out` of training attention.
pub fn attention_probs(q: usize, out: usize, p: usize, shape: AttnShape, t: usize) {
    check(out == q, "attention output size");
    check(p == shape.heads * t * t, "attention probabilities size");
}

/// The backward of training attention: `[p, dout, dq, dk, dv]` against `q`, `k`, `v`.
pub fn attention_backward(qkv: [usize; 3], grads: [usize; 5], shape: AttnShape, t: usize) {
    let ([q, k, v], [p, dout, dq, dk, dv]) = (qkv, grads);
    check(
        p == shape.heads * t * t && dout == q && dq == q && dk == k && dv == v,
        "attention backward sizes",
    );
}

/// `C = α·op(A)·op(B)` on tensors of these lengths.
pub fn gemm(a: usize, b: usize, s: Gemm, c: usize) {
    check(
        a == s.m * s.k && b == s.k * s.n && c == s.m * s.n,
        "gemm sizes",
    );
}

/// RMSNorm's backward: `x`, `dy`, `dx` rows of the weight `w`'s length.
pub fn rms_norm_backward(x: usize, w: usize, dy: usize, dx: usize) {
    check(
        w > 0 && x.is_multiple_of(w) && dy == x && dx == x,
        "RMSNorm backward sizes",
    );
}

/// SwiGLU's backward: `[g, u, dy, dg, du]`, all one length.
pub fn silu_mul_backward(lens: [usize; 5]) {
    check(lens.iter().all(|&n| n == lens[0]), "SwiGLU backward sizes");
}

/// Row-wise log-softmax of `z` in rows of `width`, one entropy per row.
pub fn log_softmax(z: usize, width: usize, entropy: usize) {
    check(width > 0 && z == entropy * width, "log-softmax sizes");
}

/// The backward of gathering from a log-softmax `lp` of `rows` rows of `width`.
pub fn log_softmax_backward(
    lp: usize,
    width: usize,
    rows: usize,
    idx: &[u32],
    g: usize,
    dz: usize,
) {
    check(
        width > 0
            && lp == rows * width
            && dz == lp
            && idx.len() == g
            && idx.iter().all(|&i| (i as usize) < lp),
        "log-softmax backward sizes",
    );
}
