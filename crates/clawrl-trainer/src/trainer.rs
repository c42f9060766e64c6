//! One step of learning: score the teacher under the chosen hint, re-score π_old, apply the
//! hybrid objective, step AdamW (once, or `epochs` times over the batch).

use candle_core::{D, DType, Device, Tensor};
use clawrl_kernels::ops::top_k;
use clawrl_objective::{
    FklTerms, LossMetrics, ObjectiveConfig, OpdTerms, SampleTerms, Support, batch_loss,
};
use tracing::{info, info_span};

use crate::adamw::{AdamW, AdamWConfig};
use crate::error::{Error, Result};
use crate::head::Gather;
use crate::policy::{Mode, TrainablePolicy};

/// One training sample: a recorded turn and what it trains with.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSample {
    /// The prompt s_t as the policy saw it (token ids).
    pub prompt: Vec<u32>,
    /// The response y exactly as generated.
    pub response: Vec<u32>,
    /// The advantage r_t broadcast to every token: an RL sample when present.
    pub advantage: Option<f32>,
    /// The hinted teacher: an OPD sample when present.
    pub teacher: Option<Teacher>,
    /// s_orig: the prompt of an earlier turn that this accepted response retried (token ids);
    /// accepted-retry distillation trains the response under it when present.
    pub retry_prompt: Option<Vec<u32>>,
}

/// The teacher of an OPD sample (DESIGN.md §2): at response position i, π_T(·|s_t ⊕ h*_i) is
/// the policy on `prompts[per_position[i]]` — one prompt in sequence mode, one per hint chosen
/// somewhere in token mode.
#[derive(Clone, Debug, PartialEq)]
pub struct Teacher {
    /// s_t ⊕ h for each hint used (token ids).
    pub prompts: Vec<Vec<u32>>,
    /// For each response position, the index into `prompts` of its teacher.
    pub per_position: Vec<usize>,
}

impl Teacher {
    /// One hint prompt teaching all `positions` response positions (sequence mode).
    pub fn single(prompt: Vec<u32>, positions: usize) -> Self {
        Self {
            prompts: vec![prompt],
            per_position: vec![0; positions],
        }
    }
}

/// What a step's first pass over a sample fixes for its later passes: π_old and the teacher.
struct Fixed {
    /// The student's context: the prompt, then the response without its last token.
    tokens: Vec<u32>,
    /// The position of the prompt's last token (the first scored).
    from: usize,
    /// The gathered ids per position: y_i, S^q_i (k), then K_i (k_T).
    ids: Vec<Vec<u32>>,
    /// ℓ_old at `ids`, `[T, 1 + k + k_T]`.
    lp_old: Tensor,
    /// Width of S^q_i.
    k: usize,
    /// Width of the gathered K_i (0 when not gathered).
    k_t: usize,
    /// The teacher at the gathered columns, for samples with one.
    teacher: Option<TeacherColumns>,
    /// ℓ_ref(y_i), `[T]`, when the KL term is on.
    lp_ref: Option<Tensor>,
}

/// ℓ_T at the gathered columns after ℓ(y_i), `[T, k + k_T]`, and the mask of S_i over the
/// support's columns.
struct TeacherColumns {
    lp: Tensor,
    mask: Tensor,
}

/// Trainer settings beside the optimizer's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainConfig {
    /// The objective (method, clips, weights, β).
    pub objective: ObjectiveConfig,
    /// k of the OPD support S_i (top-k of π_old).
    pub top_k: usize,
    /// S_i = S^q_i ∩ S^p_{i,h*} instead of S^q_i (with the student support).
    pub intersect_support: bool,
    /// Which tokens S_i the OPD term ranges over.
    pub support: Support,
    /// Optimizer steps per batch (PPO's epochs): π_old stays the policy before the first.
    pub epochs: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            objective: ObjectiveConfig::default(),
            top_k: 4,
            intersect_support: false,
            support: Support::Student,
            epochs: 1,
        }
    }
}

/// What a step did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepMetrics {
    /// Optimizer steps taken after this batch (`epochs` per batch: 1 for the first batch of
    /// one pass).
    pub step: usize,
    /// The objective's measurements.
    pub loss: LossMetrics,
    /// Mean entropy of π_cur over response positions, in nats.
    pub entropy: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Samples in the batch.
    pub samples: usize,
    /// Response tokens in the batch.
    pub tokens: usize,
}

/// The policy, its optimizer and the step count.
pub struct Trainer {
    /// The policy.
    pub policy: TrainablePolicy,
    /// The optimizer.
    pub optimizer: AdamW,
    /// Step settings.
    pub config: TrainConfig,
}

impl Trainer {
    /// A trainer over `policy`.
    pub fn new(
        policy: TrainablePolicy,
        optimizer: AdamWConfig,
        config: TrainConfig,
    ) -> Result<Self> {
        let optimizer = AdamW::new(policy.vars(), optimizer)?;
        Ok(Self {
            policy,
            optimizer,
            config,
        })
    }

    /// Optimizer steps taken (`epochs` per batch).
    pub fn steps(&self) -> usize {
        self.optimizer.steps()
    }

    /// Whether a sample with a teacher needs the teacher's own top-k K_i as gathered columns.
    fn gathers_teacher_top_k(&self) -> bool {
        self.config.support != Support::Student
            || (self.config.objective.w_fkl != 0.0 && self.config.objective.method.directive())
    }

    /// The first pass over a sample: fixes π_old and the teacher for every pass of the step
    /// and returns the first pass's terms and entropy sum.
    fn first_pass(&self, s: &TrainSample) -> Result<(SampleTerms, f64, Fixed)> {
        let t = s.response.len();
        if s.prompt.is_empty() {
            return Err(Error::InvalidSample("a sample has an empty prompt".into()));
        }
        let mut tokens = s.prompt.clone();
        tokens.extend_from_slice(&s.response[..t - 1]);
        let from = s.prompt.len() - 1;
        let k = self.config.top_k.max(1);
        // The teacher first, over the whole vocabulary: any support can then be read from it.
        let teacher_rows = s
            .teacher
            .as_ref()
            .map(|plan| self.teacher_rows(plan, &s.response))
            .transpose()?;
        let teacher_top: Vec<Vec<u32>> = teacher_rows
            .as_ref()
            .map(|rows| {
                rows.iter()
                    .map(|r| top_k(r, k).into_iter().map(|(v, _)| v).collect())
                    .collect()
            })
            .unwrap_or_default();
        let extra = if self.gathers_teacher_top_k() {
            teacher_top.clone()
        } else {
            Vec::new()
        };
        let k_t = extra.first().map_or(0, Vec::len);
        let by_token = Gather::TokenAndTopK {
            tokens: s.response.clone(),
            k,
            extra,
        };
        // Columns: ℓ(y_i), ℓ over S^q_i = top-k of π_old, then ℓ over K_i when gathered. π_old
        // is the policy before this step: the same weights, without dropout when there is any.
        let (lp, lp_old, stats) = if self.policy.dropout() > 0.0 {
            let (old, stats) = self.policy.head(&tokens, from, by_token, Mode::Eval)?;
            let (lp, _) =
                self.policy
                    .head(&tokens, from, Gather::Ids(stats.ids.clone()), Mode::Train)?;
            (lp, old.detach(), stats)
        } else {
            let (lp, stats) = self.policy.head(&tokens, from, by_token, Mode::Train)?;
            let old = lp.detach();
            (lp, old, stats)
        };
        let k = stats.ids.first().map_or(0, |r| r.len() - 1 - k_t);
        let teacher = match &teacher_rows {
            None => None,
            Some(rows) => Some(self.teacher_columns(rows, &teacher_top, &stats.ids, k)?),
        };
        // ℓ_ref(y_i) under the frozen base: the same on every pass.
        let lp_ref = if self.config.objective.beta != 0.0 {
            let ys = s.response.iter().map(|&y| vec![y]).collect();
            let (r, _) = self
                .policy
                .head(&tokens, from, Gather::Ids(ys), Mode::Reference)?;
            Some(r.narrow(1, 0, 1)?.squeeze(1)?)
        } else {
            None
        };
        let fixed = Fixed {
            tokens,
            from,
            ids: stats.ids,
            lp_old,
            k,
            k_t,
            teacher,
            lp_ref,
        };
        let terms = self.terms(s, &fixed, &lp)?;
        Ok((terms, stats.entropy_sum, fixed))
    }

    /// A later pass of the same step: π_cur moved, π_old and the teacher stay as fixed.
    fn later_pass(&self, s: &TrainSample, fixed: &Fixed) -> Result<(SampleTerms, f64)> {
        let (lp, stats) = self.policy.head(
            &fixed.tokens,
            fixed.from,
            Gather::Ids(fixed.ids.clone()),
            Mode::Train,
        )?;
        Ok((self.terms(s, fixed, &lp)?, stats.entropy_sum))
    }

    /// One sample's objective terms from π_cur's log-probs `lp` at `fixed.ids`.
    fn terms(&self, s: &TrainSample, fixed: &Fixed, lp: &Tensor) -> Result<SampleTerms> {
        let t = s.response.len();
        let (k, k_t) = (fixed.k, fixed.k_t);
        let first = |x: &Tensor| x.narrow(1, 0, 1)?.squeeze(1);
        let advantage = s
            .advantage
            .map(|a| Tensor::full(a, t, &Device::Cpu))
            .transpose()?;
        // Columns of S_i among the gathered ones (after ℓ(y_i)), by support.
        let (at, width) = match self.config.support {
            Support::Student => (0, k),
            Support::Teacher => (k, k_t),
            Support::Union => (0, k + k_t),
        };
        let (opd, fkl) = match &fixed.teacher {
            None => (None, None),
            Some(tc) => {
                let opd = OpdTerms {
                    lp_cur: lp.narrow(1, 1 + at, width)?,
                    lp_old: fixed.lp_old.narrow(1, 1 + at, width)?,
                    lp_teacher: tc.lp.narrow(1, at, width)?,
                    mask: tc.mask.clone(),
                };
                let fkl = (k_t > 0).then(|| -> Result<FklTerms> {
                    Ok(FklTerms {
                        lp_cur: lp.narrow(1, 1 + k, k_t)?,
                        lp_teacher: tc.lp.narrow(1, k, k_t)?,
                    })
                });
                (Some(opd), fkl.transpose()?)
            }
        };
        let directive = self.config.objective.method.directive();
        let retry = match (
            &s.retry_prompt,
            directive && self.config.objective.w_retry != 0.0,
        ) {
            (Some(prompt), true) => {
                if prompt.is_empty() {
                    return Err(Error::InvalidSample("a retry prompt is empty".into()));
                }
                let mut tokens = prompt.clone();
                tokens.extend_from_slice(&s.response[..t - 1]);
                let ys = s.response.iter().map(|&y| vec![y]).collect();
                let (lp, _) =
                    self.policy
                        .head(&tokens, prompt.len() - 1, Gather::Ids(ys), Mode::Train)?;
                Some(first(&lp)?)
            }
            _ => None,
        };
        Ok(SampleTerms {
            lp_cur: first(lp)?,
            lp_old: first(&fixed.lp_old)?,
            advantage,
            opd,
            lp_ref: fixed.lp_ref.clone(),
            fkl,
            retry,
        })
    }

    /// The hinted teacher's log-softmax at every response position, each under its own hint's
    /// prompt: `T` rows of `vocab`.
    fn teacher_rows(&self, plan: &Teacher, response: &[u32]) -> Result<Vec<Vec<f32>>> {
        let t = response.len();
        if plan.per_position.len() != t {
            return Err(Error::InvalidSample(format!(
                "the teacher names {} positions for a response of {t} tokens",
                plan.per_position.len()
            )));
        }
        if let Some(&h) = plan.per_position.iter().find(|&&h| h >= plan.prompts.len()) {
            return Err(Error::InvalidSample(format!(
                "position teacher {h} of {} hint prompts",
                plan.prompts.len()
            )));
        }
        let mut rows: Vec<Vec<f32>> = vec![Vec::new(); t];
        // Each hint's prompt is scored once, over every position; position i keeps the row of
        // its own hint h*_i.
        for (h, hint) in plan.prompts.iter().enumerate() {
            if !plan.per_position.contains(&h) {
                continue;
            }
            if hint.is_empty() {
                return Err(Error::InvalidSample("a hint prompt is empty".into()));
            }
            let mut tokens = hint.clone();
            tokens.extend_from_slice(&response[..t - 1]);
            let (lp, _) = self
                .policy
                .head(&tokens, hint.len() - 1, Gather::All, Mode::Eval)?;
            let all = lp.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (i, row) in all.into_iter().enumerate() {
                if plan.per_position.get(i) == Some(&h) {
                    rows[i] = row;
                }
            }
        }
        Ok(rows)
    }

    /// ℓ_T at the gathered columns after ℓ(y_i) (`[T, k + k_T]`), and the mask of S_i over the
    /// support's own columns: the student's top-k (∩ K_i with `intersect_support`), K_i, or
    /// their union (a K_i entry already in S^q_i counted once).
    fn teacher_columns(
        &self,
        rows: &[Vec<f32>],
        teacher_top: &[Vec<u32>],
        ids: &[Vec<u32>],
        k: usize,
    ) -> Result<TeacherColumns> {
        let t = rows.len();
        let m = ids.first().map_or(0, |r| r.len() - 1);
        let mut lp = Vec::with_capacity(t * m);
        let mut mask = Vec::new();
        for ((row, top), gathered) in rows.iter().zip(teacher_top).zip(ids) {
            let cols = &gathered[1..];
            lp.extend(cols.iter().map(|&v| row[v as usize]));
            let (student, teacher) = cols.split_at(k);
            let keep_student = |v: &u32| !self.config.intersect_support || top.contains(v);
            match self.config.support {
                Support::Student => {
                    mask.extend(student.iter().map(|v| f32::from(u8::from(keep_student(v)))));
                }
                Support::Teacher => mask.extend(teacher.iter().map(|_| 1f32)),
                Support::Union => {
                    mask.extend(student.iter().map(|v| f32::from(u8::from(keep_student(v)))));
                    mask.extend(
                        teacher
                            .iter()
                            .map(|v| f32::from(u8::from(!student.contains(v)))),
                    );
                }
            }
        }
        let width = mask.len().checked_div(t).unwrap_or(0);
        Ok(TeacherColumns {
            lp: Tensor::from_vec(lp, (t, m), &Device::Cpu)?,
            mask: Tensor::from_vec(mask, (t, width), &Device::Cpu)?,
        })
    }

    /// Trains on `batch`: `epochs` optimizer steps over it, π_old and the teacher fixed by the
    /// first (so ρ = 1 on the first and the clips act on the later ones); samples with an
    /// empty response are skipped. The metrics are the last pass's.
    ///
    /// Each sample's graph is built, differentiated and dropped before the next (gradient
    /// accumulation), so memory holds one sample's activations, not the batch's.
    pub fn train_step(&mut self, batch: &[TrainSample]) -> Result<StepMetrics> {
        // The caller's span (the loop's `train_step`) names the step this batch ends at; this
        // one, the optimizer steps it takes.
        let _span = info_span!(
            "optimize",
            from_step = self.steps() + 1,
            epochs = self.config.epochs.max(1),
            samples = batch.len()
        )
        .entered();
        let usable: Vec<&TrainSample> = batch.iter().filter(|s| !s.response.is_empty()).collect();
        if usable.is_empty() {
            return Err(Error::InvalidSample(
                "the batch has no sample with a response".into(),
            ));
        }
        let n = usable.len() as f64;
        let mut fixed: Vec<Fixed> = Vec::with_capacity(usable.len());
        let mut out = StepMetrics::default();
        for epoch in 0..self.config.epochs.max(1) {
            let mut grads: Vec<Option<Tensor>> = vec![None; self.optimizer.params().len()];
            let mut parts = Vec::with_capacity(usable.len());
            let (mut entropy, mut tokens) = (0.0, 0);
            for (j, s) in usable.iter().enumerate() {
                let _span = info_span!("sample", epoch, tokens = s.response.len()).entered();
                let (terms, e) = match fixed.get(j) {
                    Some(f) => self.later_pass(s, f)?,
                    None => {
                        let (terms, e, f) = self.first_pass(s)?;
                        fixed.push(f);
                        (terms, e)
                    }
                };
                entropy += e;
                tokens += s.response.len();
                let (loss, metrics) =
                    batch_loss(std::slice::from_ref(&terms), &self.config.objective)?;
                parts.push(metrics);
                // The batch loss is the mean over samples: each contributes 1/n of its gradient.
                let store = loss.affine(1.0 / n, 0.0)?.backward()?;
                // On a GPU the adapters are outside candle's graph: their gradients come from
                // the device's backward, fed with those of the gathered log-probs.
                let on_device = self.policy.device_gradients(&store)?;
                for (i, (acc, p)) in grads.iter_mut().zip(self.optimizer.params()).enumerate() {
                    // Both, when a pass too long for the device ran on the CPU.
                    let g = match (
                        store.get(p.as_tensor()),
                        on_device.get(i).and_then(Option::as_ref),
                    ) {
                        (Some(a), Some(b)) => Some(a.add(b)?),
                        (a, b) => a.or(b).cloned(),
                    };
                    if let Some(g) = g.as_ref() {
                        *acc = Some(match acc.take() {
                            Some(a) => a.add(g)?,
                            None => g.clone(),
                        });
                    }
                }
            }
            let grad_norm = self.optimizer.step(&grads)?;
            out = StepMetrics {
                step: self.steps(),
                loss: LossMetrics::merge(&parts),
                entropy: entropy / tokens.max(1) as f64,
                grad_norm,
                samples: usable.len(),
                tokens,
            };
        }
        info!(
            step = out.step,
            loss = out.loss.loss,
            grad_norm = out.grad_norm,
            "trained"
        );
        Ok(out)
    }

    /// Mean log-prob the current policy gives `response` after `prompt` (for tests and demos).
    pub fn mean_logprob(&self, prompt: &[u32], response: &[u32]) -> Result<f64> {
        if prompt.is_empty() || response.is_empty() {
            return Err(Error::InvalidSample("need a prompt and a response".into()));
        }
        let mut tokens = prompt.to_vec();
        tokens.extend_from_slice(&response[..response.len() - 1]);
        let ys = response.iter().map(|&y| vec![y]).collect();
        let (lp, _) = self
            .policy
            .head(&tokens, prompt.len() - 1, Gather::Ids(ys), Mode::Eval)?;
        Ok(lp.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }

    /// KL(π_cur ‖ π_T) over the OPD support S_i, both renormalised over S_i and averaged over
    /// positions (for tests and demos).
    pub fn support_kl(&self, prompt: &[u32], hint: &[u32], response: &[u32]) -> Result<f64> {
        if prompt.is_empty() || hint.is_empty() || response.is_empty() {
            return Err(Error::InvalidSample(
                "need a prompt, a hint prompt and a response".into(),
            ));
        }
        let mut tokens = prompt.to_vec();
        tokens.extend_from_slice(&response[..response.len() - 1]);
        let k = self.config.top_k.max(1);
        let gather = Gather::TokenAndTopK {
            tokens: response.to_vec(),
            k,
            extra: Vec::new(),
        };
        let (student, stats) = self
            .policy
            .head(&tokens, prompt.len() - 1, gather, Mode::Eval)?;
        let plan = Teacher::single(hint.to_vec(), response.len());
        let rows = self.teacher_rows(&plan, response)?;
        let k = stats.ids.first().map_or(0, |r| r.len() - 1);
        let values: Vec<f32> = rows
            .iter()
            .zip(&stats.ids)
            .flat_map(|(row, ids)| ids[1..].iter().map(|&v| row[v as usize]))
            .collect();
        let teacher = Tensor::from_vec(values, (response.len(), k), &Device::Cpu)?;
        let norm = |x: &Tensor| -> candle_core::Result<Tensor> {
            x.broadcast_sub(&x.log_sum_exp(D::Minus1)?.unsqueeze(1)?)
        };
        let (s, t) = (norm(&student.narrow(1, 1, k)?)?, norm(&teacher)?);
        let kl = s.exp()?.mul(&s.sub(&t)?)?.sum(D::Minus1)?.mean_all()?;
        Ok(kl.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }
}
