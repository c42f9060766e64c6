//! The output head as one fused op: logits, log-softmax, top-k and the gather of the few
//! log-probs the objective uses, in one pass over the vocabulary.
//!
//! Composed from candle ops, the head keeps half a dozen `[T, vocab]` tensors in the graph
//! (and as many gradients): for 256 tokens and 49k words, about 300 MB per sample, and most of
//! the elementwise time. Here the graph keeps only the `[T, m]` gathered log-probs; the
//! softmax is kept for the backward, which is `∂L/∂z = scatter(G) − p·ΣG`, carried to the
//! hidden state through the frozen output matrix.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use clawrl_kernels::ops::top_k;
use clawrl_model::QMatrix;

use crate::values::f32_input;
use rayon::prelude::*;

/// Which log-probs the head returns per position.
#[derive(Clone, Debug)]
pub enum Gather {
    /// `ℓ(y_i)` then the `k` most likely tokens' log-probs (the student support S^q_i).
    TokenAndTopK {
        /// The response token at each position.
        tokens: Vec<u32>,
        /// k.
        k: usize,
        /// Further ids gathered after the top-k at each position (the teacher's own top-k K_i,
        /// for the teacher and union supports and the forward KL); empty rows, or no rows, for
        /// none.
        extra: Vec<Vec<u32>>,
    },
    /// The log-probs of the given ids at each position (a teacher on the student's support).
    Ids(Vec<Vec<u32>>),
    /// The whole log-softmax, `[T, vocab]`: a teacher scored once for any support (no
    /// gradient is taken through it).
    All,
}

/// What the head measured beside the gathered log-probs.
#[derive(Clone, Debug, Default)]
pub struct HeadStats {
    /// The gathered ids per position (for `TokenAndTopK`: `y_i`, then S_i most likely first,
    /// then the extra ids; empty for `All`).
    pub ids: Vec<Vec<u32>>,
    /// The `k` most likely ids per position (of this distribution).
    pub top_k: Vec<Vec<u32>>,
    /// Σ over positions of the distribution's entropy, in nats.
    pub entropy_sum: f64,
}

/// One position's gathered ids, their log-probs, the entropy and the top-k ids.
type Row = (Vec<u32>, Vec<f32>, f64, Vec<u32>);

#[derive(Default)]
struct Saved {
    probs: Vec<f32>,
    stats: HeadStats,
}

/// The fused head over a frozen output matrix (`vocab × hidden`).
#[derive(Clone)]
pub struct Head {
    w: Arc<QMatrix>,
    gather: Arc<Gather>,
    saved: Arc<Mutex<Saved>>,
}

impl Head {
    /// A head gathering `gather` through the output matrix `w`.
    pub fn new(w: Arc<QMatrix>, gather: Gather) -> Self {
        Self {
            w,
            gather: Arc::new(gather),
            saved: Arc::default(),
        }
    }

    /// `[T, m]` gathered log-probs of the final hidden states `h: [T, hidden]`, and the stats.
    pub fn forward(&self, h: &Tensor) -> Result<(Tensor, HeadStats)> {
        let out = h.contiguous()?.apply_op1(self.clone())?;
        let stats = self
            .saved
            .lock()
            .map(|s| s.stats.clone())
            .unwrap_or_default();
        Ok((out, stats))
    }

    fn k(&self) -> usize {
        match &*self.gather {
            Gather::TokenAndTopK { k, .. } => *k,
            Gather::Ids(ids) => ids.first().map_or(0, Vec::len),
            Gather::All => 0,
        }
    }
}

impl CustomOp1 for Head {
    fn name(&self) -> &'static str {
        "vocab-head"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_input("the head", storage, layout)?;
        let (t, hidden) = layout.shape().dims2()?;
        if hidden != self.w.cols() {
            candle_core::bail!("the head takes {} features, got {hidden}", self.w.cols());
        }
        let vocab = self.w.rows();
        let k = self.k();
        let rows: Vec<Vec<u32>> = match &*self.gather {
            Gather::TokenAndTopK { tokens, extra, .. }
                if tokens.len() == t
                    && (extra.is_empty()
                        || (extra.len() == t
                            && extra.iter().all(|r| r.len() == extra[0].len()))) =>
            {
                tokens.iter().map(|&y| vec![y]).collect()
            }
            Gather::Ids(ids) if ids.len() == t && ids.iter().all(|r| r.len() == k) => ids.clone(),
            Gather::All => vec![Vec::new(); t],
            _ => candle_core::bail!(
                "the head was given ids for a different number of positions than {t}"
            ),
        };
        let extra: &[Vec<u32>] = match &*self.gather {
            Gather::TokenAndTopK { extra, .. } => extra,
            _ => &[],
        };
        if rows
            .iter()
            .chain(extra)
            .flatten()
            .any(|&v| v as usize >= vocab)
        {
            candle_core::bail!("a gathered id is outside the vocabulary of {vocab}");
        }
        let all = matches!(&*self.gather, Gather::All);
        let mut probs = vec![0f32; t * vocab];
        self.w.matmul_f32(x, t, &mut probs);
        // Per row: top-k and the gathered entries on the logits (the log-softmax keeps their
        // order), then one exponential pass: e_v = exp(z_v − max), Σe and Σe·(z_v − max), so
        // that ℓ(v) = z_v − lse and the entropy H = ln Σe − Σe·(z − max)/Σe; then the row
        // becomes its softmax.
        let gather_top = matches!(&*self.gather, Gather::TokenAndTopK { .. });
        let per_row: Vec<Row> = probs
            .par_chunks_mut(vocab)
            .zip(rows.into_par_iter().enumerate())
            .map(|(z, (pos, mut ids))| {
                let top: Vec<u32> = top_k(z, k).into_iter().map(|(i, _)| i).collect();
                if gather_top {
                    ids.extend_from_slice(&top);
                    if let Some(e) = extra.get(pos) {
                        ids.extend_from_slice(e);
                    }
                }
                let picked: Vec<f32> = if all {
                    z.to_vec()
                } else {
                    ids.iter().map(|&i| z[i as usize]).collect()
                };
                let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let (mut sum, mut weighted) = (0f64, 0f64);
                for v in z.iter_mut() {
                    let shifted = *v - max;
                    let e = shifted.exp();
                    sum += e as f64;
                    weighted += (e * shifted) as f64;
                    *v = e;
                }
                let inv = (1.0 / sum) as f32;
                for v in z.iter_mut() {
                    *v *= inv;
                }
                let lse = max + sum.ln() as f32;
                let lp = picked.iter().map(|&z| z - lse).collect();
                (ids, lp, sum.ln() - weighted / sum, top)
            })
            .collect();
        let m = per_row.first().map_or(0, |r| r.1.len());
        let mut stats = HeadStats::default();
        let mut out = Vec::with_capacity(t * m);
        for (ids, lp, e, top) in per_row {
            out.extend_from_slice(&lp);
            stats.entropy_sum += e;
            stats.ids.push(ids);
            stats.top_k.push(top);
        }
        if let Ok(mut s) = self.saved.lock() {
            *s = Saved { probs, stats };
        }
        Ok((CpuStorage::F32(out), Shape::from((t, m))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?.to_vec2::<f32>()?;
        let saved = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("the head's saved state is poisoned".into()))?;
        let vocab = self.w.rows();
        let t = g.len();
        // ∂L/∂z[v] = Σ_j G_j·(1[v = id_j] − p_v) = scatter(G)[v] − p_v·Σ_j G_j.
        let mut dz = vec![0f32; t * vocab];
        dz.par_chunks_mut(vocab)
            .zip(saved.probs.par_chunks(vocab))
            .zip(g.par_iter().zip(saved.stats.ids.par_iter()))
            .for_each(|((d, p), (gr, ids))| {
                let total: f32 = gr.iter().sum();
                for (dv, pv) in d.iter_mut().zip(p) {
                    *dv = -pv * total;
                }
                if ids.is_empty() && gr.len() == d.len() {
                    // `All`: every id gathered in order.
                    for (dv, &gj) in d.iter_mut().zip(gr) {
                        *dv += gj;
                    }
                }
                for (&gj, &id) in gr.iter().zip(ids) {
                    d[id as usize] += gj;
                }
            });
        let mut dh = vec![0f32; t * self.w.cols()];
        self.w.matmul_transposed(&dz, t, &mut dh);
        Ok(Some(Tensor::from_vec(
            dh,
            (t, self.w.cols()),
            &candle_core::Device::Cpu,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clawrl_model::Storage;

    #[test]
    fn gathered_log_probs_top_k_and_entropy_match_a_direct_softmax() -> Result<()> {
        // W = identity (4 words, 4 features): the logits are the hidden states themselves.
        let mut eye = vec![0f32; 16];
        for i in 0..4 {
            eye[i * 5] = 1.0;
        }
        let w = QMatrix::new(4, 4, Storage::F32(eye))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let logits = [[2.0f32, -1.0, 0.5, 0.5], [-3.0, 1.0, 1.0, 0.0]];
        let h = Tensor::new(&logits, &candle_core::Device::Cpu)?;
        let gather = Gather::TokenAndTopK {
            tokens: vec![1, 3],
            k: 2,
            extra: vec![vec![3], vec![0]],
        };
        let w = Arc::new(w);
        let (lp, stats) = Head::new(w.clone(), gather).forward(&h)?;
        let (full, _) = Head::new(w, Gather::All).forward(&h)?;
        let full = full.to_vec2::<f32>()?;
        let lp = lp.to_vec2::<f32>()?;
        let mut entropy = 0.0;
        for (row, z) in logits.iter().enumerate() {
            let lse = z.iter().map(|v| v.exp()).sum::<f32>().ln();
            let ids = &stats.ids[row];
            for (j, &id) in ids.iter().enumerate() {
                assert!((lp[row][j] - (z[id as usize] - lse)).abs() < 1e-6);
            }
            for (v, &zv) in z.iter().enumerate() {
                assert!((full[row][v] - (zv - lse)).abs() < 1e-6);
            }
            entropy -= z.iter().map(|v| (v - lse).exp() * (v - lse)).sum::<f32>() as f64;
        }
        // Ties go to the lower index.
        assert_eq!(stats.ids, vec![vec![1, 0, 2, 3], vec![3, 1, 2, 0]]);
        assert_eq!(stats.top_k, vec![vec![0, 2], vec![1, 2]]);
        assert!((stats.entropy_sum - entropy).abs() < 1e-5);
        Ok(())
    }
}
