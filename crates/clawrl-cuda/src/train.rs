//! [`TrainBackend`] on CUDA: cuBLAS for every product and its backward, the training
//! kernels of `kernels.cu` for attention with probabilities and the vocabulary head.

use std::collections::BTreeMap;

use clawrl_kernels::ops::AttnShape;
use clawrl_kernels::{Backend, Gemm, TrainBackend, checks};

use crate::context::{Arg, Kernel, WG};
use crate::{Cuda, CudaMatrix, CudaTensor, MAX_HEAD_DIM, check};

impl TrainBackend for Cuda {
    fn numel(&self, x: &CudaTensor) -> usize {
        x.len()
    }

    fn shape(&self, w: &CudaMatrix) -> (usize, usize) {
        (w.rows(), w.cols())
    }

    fn matmul_backward(
        &self,
        w: &CudaMatrix,
        dy: &CudaTensor,
        t: usize,
        accumulate: bool,
        dx: &mut CudaTensor,
    ) {
        check(dy.len() == t * w.rows(), "matmul backward input size");
        check(dx.len() == t * w.cols(), "matmul backward output size");
        // dx (t × cols) = dy (t × rows) · W (rows × cols).
        let s = Gemm::new(t, w.cols(), w.rows());
        let s = if accumulate { s.add_scaled(1.0) } else { s };
        let dense = self.ctx.dense(w);
        self.ctx.gemm(dy.ptr(), dense.ptr(), s, dx.ptr());
    }

    fn gemm(&self, a: &CudaTensor, b: &CudaTensor, s: Gemm, c: &mut CudaTensor) {
        checks::gemm(a.len(), b.len(), s, c.len());
        self.ctx.gemm(a.ptr(), b.ptr(), s, c.ptr());
    }

    fn mul(&self, x: &mut CudaTensor, y: &CudaTensor) {
        check(x.len() == y.len(), "mul sizes");
        self.pointwise(Kernel::Mul, x, y);
    }

    fn place(&self, x: &CudaTensor, len: usize, offset: usize) -> CudaTensor {
        check(offset + x.len() <= len, "place beyond the tensor");
        let out = self.ctx.zeros(len);
        self.ctx.copy(x, 0, &out, offset, x.len());
        out
    }

    fn rms_norm_backward(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        eps: f32,
        dy: &CudaTensor,
        dx: &mut CudaTensor,
    ) {
        checks::rms_norm_backward(x.len(), w.len(), dy.len(), dx.len());
        let (n, rows) = (w.len(), x.len() / w.len());
        self.ctx.launch(
            Kernel::RmsNormBackward,
            (rows as u32, 1, 1),
            WG,
            &[
                Arg::P(x.ptr()),
                Arg::P(w.ptr()),
                Arg::P(dy.ptr()),
                Arg::P(dx.ptr()),
                Arg::U(n as u32),
                Arg::U(rows as u32),
                Arg::F(eps),
            ],
        );
    }

    fn silu_mul_backward(
        &self,
        g: &CudaTensor,
        u: &CudaTensor,
        dy: &CudaTensor,
        dg: &mut CudaTensor,
        du: &mut CudaTensor,
    ) {
        let n = g.len();
        checks::silu_mul_backward([n, u.len(), dy.len(), dg.len(), du.len()]);
        self.ctx.elementwise(
            Kernel::SiluMulBackward,
            n,
            &[
                Arg::P(g.ptr()),
                Arg::P(u.ptr()),
                Arg::P(dy.ptr()),
                Arg::P(dg.ptr()),
                Arg::P(du.ptr()),
                Arg::U(n as u32),
            ],
        );
    }

    fn rope_backward(&self, dx: &mut CudaTensor, heads: usize, head_dim: usize) {
        self.rotate(dx, heads, head_dim, 0, true);
    }

    fn attention_probs(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        shape: AttnShape,
        out: &mut CudaTensor,
        p: &mut CudaTensor,
    ) {
        let t = checks::attention(q.len(), k.len(), v.len(), shape, MAX_HEAD_DIM);
        checks::attention_probs(q.len(), out.len(), p.len(), shape, t);
        let [heads, kv_heads, head_dim, tt, scale] = attention_params(shape, t);
        self.ctx.launch(
            Kernel::AttentionProbs,
            (shape.heads as u32, t as u32, 1),
            WG,
            &[
                Arg::P(q.ptr()),
                Arg::P(k.ptr()),
                Arg::P(v.ptr()),
                Arg::P(p.ptr()),
                Arg::P(out.ptr()),
                heads,
                kv_heads,
                head_dim,
                tt,
                scale,
            ],
        );
    }

    fn attention_backward(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        p: &CudaTensor,
        dout: &CudaTensor,
        shape: AttnShape,
        dq: &mut CudaTensor,
        dk: &mut CudaTensor,
        dv: &mut CudaTensor,
    ) {
        let t = checks::attention(q.len(), k.len(), v.len(), shape, MAX_HEAD_DIM);
        checks::attention_backward(
            [q.len(), k.len(), v.len()],
            [p.len(), dout.len(), dq.len(), dk.len(), dv.len()],
            shape,
            t,
        );
        let ds = self.ctx.zeros(p.len());
        let [heads, kv_heads, head_dim, tt, scale] = attention_params(shape, t);
        self.ctx.launch(
            Kernel::AttentionBackwardQ,
            (shape.heads as u32, t as u32, 1),
            WG,
            &[
                Arg::P(k.ptr()),
                Arg::P(v.ptr()),
                Arg::P(p.ptr()),
                Arg::P(dout.ptr()),
                Arg::P(dq.ptr()),
                Arg::P(ds.ptr()),
                heads,
                kv_heads,
                head_dim,
                tt,
                scale,
            ],
        );
        self.ctx.launch(
            Kernel::AttentionBackwardKv,
            (shape.kv_heads as u32, t as u32, 1),
            WG,
            &[
                Arg::P(q.ptr()),
                Arg::P(p.ptr()),
                Arg::P(dout.ptr()),
                Arg::P(ds.ptr()),
                Arg::P(dk.ptr()),
                Arg::P(dv.ptr()),
                heads,
                kv_heads,
                head_dim,
                tt,
            ],
        );
    }

    fn log_softmax(&self, z: &mut CudaTensor, width: usize, entropy: &mut CudaTensor) {
        checks::log_softmax(z.len(), width, entropy.len());
        let rows = entropy.len();
        self.ctx.launch(
            Kernel::LogSoftmax,
            (rows as u32, 1, 1),
            WG,
            &[
                Arg::P(z.ptr()),
                Arg::P(entropy.ptr()),
                Arg::U(width as u32),
                Arg::U(rows as u32),
            ],
        );
    }

    fn top_k(&self, x: &CudaTensor, width: usize, k: usize) -> Vec<u32> {
        check(width > 0 && x.len().is_multiple_of(width), "top-k sizes");
        let (rows, k) = (x.len() / width, k.min(width));
        if rows == 0 || k == 0 {
            return Vec::new();
        }
        let ids = self.ctx.zeros(rows * k);
        self.ctx.launch(
            Kernel::TopK,
            (rows as u32, 1, 1),
            WG,
            &[
                Arg::P(x.ptr()),
                Arg::P(ids.ptr()),
                Arg::U(width as u32),
                Arg::U(rows as u32),
                Arg::U(k as u32),
            ],
        );
        self.ctx.download_words(&ids)
    }

    fn gather(&self, x: &CudaTensor, idx: &[u32]) -> CudaTensor {
        check(
            idx.iter().all(|&i| (i as usize) < x.len()),
            "gather index beyond the tensor",
        );
        let out = self.ctx.zeros(idx.len());
        if idx.is_empty() {
            return out;
        }
        let ids = self.ctx.upload_u32(idx);
        self.ctx.elementwise(
            Kernel::Gather,
            idx.len(),
            &[
                Arg::P(x.ptr()),
                Arg::P(ids.ptr()),
                Arg::P(out.ptr()),
                Arg::U(idx.len() as u32),
            ],
        );
        out
    }

    fn log_softmax_backward(
        &self,
        lp: &CudaTensor,
        width: usize,
        totals: &[f32],
        idx: &[u32],
        g: &[f32],
        dz: &mut CudaTensor,
    ) {
        checks::log_softmax_backward(lp.len(), width, totals.len(), idx, g.len(), dz.len());
        let rows = totals.len();
        let totals = self.upload(totals);
        self.ctx.launch(
            Kernel::LogSoftmaxBackward,
            (rows as u32, 1, 1),
            WG,
            &[
                Arg::P(lp.ptr()),
                Arg::P(totals.ptr()),
                Arg::P(dz.ptr()),
                Arg::U(width as u32),
                Arg::U(rows as u32),
            ],
        );
        // Repeated indices add on the host, so the scatter's writes never race.
        let mut merged: BTreeMap<u32, f32> = BTreeMap::new();
        for (&i, &gj) in idx.iter().zip(g) {
            *merged.entry(i).or_default() += gj;
        }
        if merged.is_empty() {
            return;
        }
        let (ids, values): (Vec<u32>, Vec<f32>) = merged.into_iter().unzip();
        let n = ids.len();
        let (ids, values) = (self.ctx.upload_u32(&ids), self.upload(&values));
        self.ctx.elementwise(
            Kernel::ScatterAdd,
            n,
            &[
                Arg::P(values.ptr()),
                Arg::P(ids.ptr()),
                Arg::P(dz.ptr()),
                Arg::U(n as u32),
            ],
        );
    }
}

/// `heads, kv_heads, head_dim, t, scale` as the training attention kernels take them.
fn attention_params(shape: AttnShape, t: usize) -> [Arg; 5] {
    [
        Arg::U(shape.heads as u32),
        Arg::U(shape.kv_heads as u32),
        Arg::U(shape.head_dim as u32),
        Arg::U(t as u32),
        Arg::F(1.0 / (shape.head_dim as f32).sqrt()),
    ]
}
