//! [`TrainBackend`] on the GPU: the training kernels of `shaders/` (gemm, the backwards,
//! attention with probabilities, the vocabulary head).

use std::collections::BTreeMap;

use clawrl_kernels::ops::AttnShape;
use clawrl_kernels::{Backend, Gemm, TrainBackend, checks};

use crate::context::{self, Kernel};
use crate::{Gpu, GpuMatrix, GpuTensor, check};

impl TrainBackend for Gpu {
    fn numel(&self, x: &GpuTensor) -> usize {
        x.len()
    }

    fn shape(&self, w: &GpuMatrix) -> (usize, usize) {
        (w.rows(), w.cols())
    }

    fn matmul_backward(
        &self,
        w: &GpuMatrix,
        dy: &GpuTensor,
        t: usize,
        accumulate: bool,
        dx: &mut GpuTensor,
    ) {
        check(dy.len() == t * w.rows(), "matmul backward input size");
        check(dx.len() == t * w.cols(), "matmul backward output size");
        self.ctx.matmul_backward(w, dy, t, accumulate, dx);
    }

    fn gemm(&self, a: &GpuTensor, b: &GpuTensor, s: Gemm, c: &mut GpuTensor) {
        checks::gemm(a.len(), b.len(), s, c.len());
        if s.m == 0 || s.n == 0 {
            return;
        }
        self.ctx.dispatch(
            Kernel::Gemm,
            [
                s.m as u32,
                s.n as u32,
                s.k as u32,
                u32::from(s.trans_a),
                u32::from(s.trans_b),
                s.alpha.to_bits(),
                u32::from(s.accumulate),
                0,
            ],
            &[a, b, c],
            ((s.n as u32).div_ceil(16), (s.m as u32).div_ceil(16), 1),
        );
    }

    fn mul(&self, x: &mut GpuTensor, y: &GpuTensor) {
        check(x.len() == y.len(), "mul sizes");
        self.ctx.elementwise(Kernel::Mul, x, y, 0);
    }

    fn place(&self, x: &GpuTensor, len: usize, offset: usize) -> GpuTensor {
        check(offset + x.len() <= len, "place beyond the tensor");
        let out = self.ctx.zeros(len);
        self.ctx.copy(x.buffer(), 0, out.buffer(), offset, x.len());
        out
    }

    fn rms_norm_backward(
        &self,
        x: &GpuTensor,
        w: &GpuTensor,
        eps: f32,
        dy: &GpuTensor,
        dx: &mut GpuTensor,
    ) {
        checks::rms_norm_backward(x.len(), w.len(), dy.len(), dx.len());
        let (n, rows) = (w.len(), x.len() / w.len());
        let (gx, gy) = context::grid(rows);
        self.ctx.dispatch(
            Kernel::RmsNormBackward,
            [n as u32, rows as u32, eps.to_bits(), gx, 0, 0, 0, 0],
            &[x, w, dx, dy],
            (gx, gy, 1),
        );
    }

    fn silu_mul_backward(
        &self,
        g: &GpuTensor,
        u: &GpuTensor,
        dy: &GpuTensor,
        dg: &mut GpuTensor,
        du: &mut GpuTensor,
    ) {
        let n = g.len();
        checks::silu_mul_backward([n, u.len(), dy.len(), dg.len(), du.len()]);
        if n == 0 {
            return;
        }
        let (gx, gy, width) = context::grid_1d(n);
        self.ctx.dispatch(
            Kernel::SiluMulBackward,
            [n as u32, 0, width, 0, 0, 0, 0, 0],
            &[g, u, dy, dg, du],
            (gx, gy, 1),
        );
    }

    fn rope_backward(&self, dx: &mut GpuTensor, heads: usize, head_dim: usize) {
        self.rotate(dx, heads, head_dim, 0, true);
    }

    fn attention_probs(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        shape: AttnShape,
        out: &mut GpuTensor,
        p: &mut GpuTensor,
    ) {
        let t = checks::attention(q.len(), k.len(), v.len(), shape, crate::MAX_HEAD_DIM);
        checks::attention_probs(q.len(), out.len(), p.len(), shape, t);
        self.ctx.dispatch_at(
            Kernel::AttentionProbs,
            attention_params(shape, t),
            &[(1, q), (2, k), (3, v), (4, p), (5, out)],
            (shape.heads as u32, t as u32, 1),
        );
    }

    fn attention_backward(
        &self,
        q: &GpuTensor,
        k: &GpuTensor,
        v: &GpuTensor,
        p: &GpuTensor,
        dout: &GpuTensor,
        shape: AttnShape,
        dq: &mut GpuTensor,
        dk: &mut GpuTensor,
        dv: &mut GpuTensor,
    ) {
        let t = checks::attention(q.len(), k.len(), v.len(), shape, crate::MAX_HEAD_DIM);
        checks::attention_backward(
            [q.len(), k.len(), v.len()],
            [p.len(), dout.len(), dq.len(), dk.len(), dv.len()],
            shape,
            t,
        );
        let ds = self.ctx.zeros(p.len());
        let params = attention_params(shape, t);
        self.ctx.dispatch_at(
            Kernel::AttentionBackwardQ,
            params,
            &[(2, k), (3, v), (4, p), (5, dout), (6, dq), (7, &ds)],
            (shape.heads as u32, t as u32, 1),
        );
        self.ctx.dispatch_at(
            Kernel::AttentionBackwardKv,
            params,
            &[(1, q), (4, p), (5, dout), (7, &ds), (8, dk), (9, dv)],
            (shape.kv_heads as u32, t as u32, 1),
        );
    }

    fn log_softmax(&self, z: &mut GpuTensor, width: usize, entropy: &mut GpuTensor) {
        checks::log_softmax(z.len(), width, entropy.len());
        let rows = entropy.len();
        let (gx, gy) = context::grid(rows);
        self.ctx.dispatch_at(
            Kernel::LogSoftmax,
            [width as u32, rows as u32, gx, 0, 0, 0, 0, 0],
            &[(1, z), (2, entropy)],
            (gx, gy, 1),
        );
    }

    fn top_k(&self, x: &GpuTensor, width: usize, k: usize) -> Vec<u32> {
        check(width > 0 && x.len().is_multiple_of(width), "top-k sizes");
        let (rows, k) = (x.len() / width, k.min(width));
        if rows == 0 || k == 0 {
            return Vec::new();
        }
        let ids = self.ctx.zeros(rows * k);
        let (gx, gy) = context::grid(rows);
        self.ctx.dispatch(
            Kernel::TopK,
            [width as u32, rows as u32, k as u32, gx, 0, 0, 0, 0],
            &[x, &ids],
            (gx, gy, 1),
        );
        self.ctx.download_u32(&ids)
    }

    fn gather(&self, x: &GpuTensor, idx: &[u32]) -> GpuTensor {
        check(
            idx.iter().all(|&i| (i as usize) < x.len()),
            "gather index beyond the tensor",
        );
        let out = self.ctx.zeros(idx.len());
        if idx.is_empty() {
            return out;
        }
        let ids = self.ctx.upload_u32(idx);
        let (gx, gy, width) = context::grid_1d(idx.len());
        self.ctx.dispatch(
            Kernel::Gather,
            [idx.len() as u32, width, 0, 0, 0, 0, 0, 0],
            &[x, &ids, &out],
            (gx, gy, 1),
        );
        out
    }

    fn log_softmax_backward(
        &self,
        lp: &GpuTensor,
        width: usize,
        totals: &[f32],
        idx: &[u32],
        g: &[f32],
        dz: &mut GpuTensor,
    ) {
        checks::log_softmax_backward(lp.len(), width, totals.len(), idx, g.len(), dz.len());
        let rows = totals.len();
        let totals = self.upload(totals);
        let (gx, gy) = context::grid(rows);
        self.ctx.dispatch_at(
            Kernel::LogSoftmaxBackward,
            [width as u32, rows as u32, gx, 0, 0, 0, 0, 0],
            &[(1, lp), (2, &totals), (3, dz)],
            (gx, gy, 1),
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
        let (ids, values) = (self.ctx.upload_u32(&ids), self.upload(&values));
        let (gx, gy, width) = context::grid_1d(ids.len());
        self.ctx.dispatch(
            Kernel::ScatterAdd,
            [ids.len() as u32, width, 0, 0, 0, 0, 0, 0],
            &[&values, &ids, dz],
            (gx, gy, 1),
        );
    }
}

fn attention_params(shape: AttnShape, t: usize) -> [u32; 8] {
    let scale = 1.0 / (shape.head_dim as f32).sqrt();
    [
        shape.heads as u32,
        shape.kv_heads as u32,
        shape.head_dim as u32,
        t as u32,
        scale.to_bits(),
        0,
        0,
        0,
    ]
}
