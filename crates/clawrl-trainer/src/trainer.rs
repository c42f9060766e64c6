//! One step of learning: re-score π_old, score the teacher under the chosen hint, apply the
//! hybrid objective, step AdamW.

use candle_core::{D, DType, Device, Tensor};
use clawrl_objective::{LossMetrics, ObjectiveConfig, OpdTerms, SampleTerms, batch_loss};
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

/// Trainer settings beside the optimizer's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainConfig {
    /// The objective (method, clips, weights, β).
    pub objective: ObjectiveConfig,
    /// k of the OPD support S_i (top-k of π_old).
    pub top_k: usize,
    /// S_i = S^q_i ∩ S^p_{i,h*} instead of S^q_i.
    pub intersect_support: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            objective: ObjectiveConfig::default(),
            top_k: 4,
            intersect_support: false,
        }
    }
}

/// What a step did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepMetrics {
    /// Step number after this step (1 for the first).
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

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.optimizer.steps()
    }

    /// Builds one sample's objective terms; returns them with the sample's entropy sum.
    fn terms(&self, s: &TrainSample) -> Result<(SampleTerms, f64)> {
        let t = s.response.len();
        if s.prompt.is_empty() {
            return Err(Error::InvalidSample("a sample has an empty prompt".into()));
        }
        let mut tokens = s.prompt.clone();
        tokens.extend_from_slice(&s.response[..t - 1]);
        let from = s.prompt.len() - 1;
        let k = self.config.top_k.max(1);
        let by_token = Gather::TokenAndTopK {
            tokens: s.response.clone(),
            k,
        };
        // Columns: ℓ(y_i), then ℓ over S_i = top-k of π_old. π_old is the policy before this
        // update: the same weights, and without dropout when there is dropout.
        let (lp, lp_old, stats) = if self.policy.dropout() > 0.0 {
            let (old, stats) = self.policy.head(&tokens, from, by_token, Mode::Eval)?;
            let (lp, _) =
                self.policy
                    .head(&tokens, from, Gather::Ids(stats.ids.clone()), Mode::Train)?;
            (lp, old, stats)
        } else {
            let (lp, stats) = self.policy.head(&tokens, from, by_token, Mode::Train)?;
            let old = lp.detach();
            (lp, old, stats)
        };
        let first = |x: &Tensor| x.narrow(1, 0, 1)?.squeeze(1);
        let lp_cur = first(&lp)?;
        let lp_old_y = first(&lp_old)?;
        let advantage = s
            .advantage
            .map(|a| Tensor::full(a, t, &Device::Cpu))
            .transpose()?;
        let opd = match &s.teacher {
            None => None,
            Some(plan) => {
                let support: Vec<Vec<u32>> = stats.ids.iter().map(|r| r[1..].to_vec()).collect();
                let (teacher, mask) = self.teacher(plan, &s.response, &support)?;
                let k = support.first().map_or(0, Vec::len);
                Some(OpdTerms {
                    lp_cur: lp.narrow(1, 1, k)?,
                    lp_old: lp_old.narrow(1, 1, k)?,
                    lp_teacher: teacher,
                    mask,
                })
            }
        };
        let lp_ref = if self.config.objective.beta != 0.0 {
            let ys = s.response.iter().map(|&y| vec![y]).collect();
            Some(first(
                &self
                    .policy
                    .head(&tokens, from, Gather::Ids(ys), Mode::Reference)?
                    .0,
            )?)
        } else {
            None
        };
        Ok((
            SampleTerms {
                lp_cur,
                lp_old: lp_old_y,
                advantage,
                opd,
                lp_ref,
            },
            stats.entropy_sum,
        ))
    }

    /// ℓ_T over the student's support, each position under its own hint's prompt, and the
    /// support mask (S_i, or S_i ∩ that teacher's own top-k with `intersect_support`); both
    /// `[T, k]`.
    fn teacher(
        &self,
        plan: &Teacher,
        response: &[u32],
        support: &[Vec<u32>],
    ) -> Result<(Tensor, Tensor)> {
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
        let k = support.first().map_or(0, Vec::len);
        // Each hint's prompt is scored once, over every position; position i keeps the row of
        // its own hint h*_i.
        let mut values = vec![0f32; t * k];
        let mut mask = vec![0f32; t * k];
        for (h, hint) in plan.prompts.iter().enumerate() {
            if !plan.per_position.contains(&h) {
                continue;
            }
            if hint.is_empty() {
                return Err(Error::InvalidSample("a hint prompt is empty".into()));
            }
            let mut tokens = hint.clone();
            tokens.extend_from_slice(&response[..t - 1]);
            let (lp, stats) = self.policy.head(
                &tokens,
                hint.len() - 1,
                Gather::Ids(support.to_vec()),
                Mode::Eval,
            )?;
            let rows = lp.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (i, _) in plan
                .per_position
                .iter()
                .enumerate()
                .filter(|(_, p)| **p == h)
            {
                values[i * k..(i + 1) * k].copy_from_slice(&rows[i]);
                for (j, v) in support[i].iter().enumerate() {
                    let kept = !self.config.intersect_support || stats.top_k[i].contains(v);
                    mask[i * k + j] = if kept { 1.0 } else { 0.0 };
                }
            }
        }
        Ok((
            Tensor::from_vec(values, (t, k), &Device::Cpu)?,
            Tensor::from_vec(mask, (t, k), &Device::Cpu)?,
        ))
    }

    /// One optimizer step on `batch`; samples with an empty response are skipped.
    ///
    /// Each sample's graph is built, differentiated and dropped before the next (gradient
    /// accumulation), so memory holds one sample's activations, not the batch's.
    pub fn train_step(&mut self, batch: &[TrainSample]) -> Result<StepMetrics> {
        let _span =
            info_span!("train_step", step = self.steps() + 1, samples = batch.len()).entered();
        let usable: Vec<&TrainSample> = batch.iter().filter(|s| !s.response.is_empty()).collect();
        if usable.is_empty() {
            return Err(Error::InvalidSample(
                "the batch has no sample with a response".into(),
            ));
        }
        let n = usable.len() as f64;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.optimizer.params().len()];
        let mut parts = Vec::with_capacity(usable.len());
        let (mut entropy, mut tokens) = (0.0, 0);
        for s in &usable {
            let _span = info_span!("sample", tokens = s.response.len()).entered();
            let (terms, e) = self.terms(s)?;
            entropy += e;
            tokens += s.response.len();
            let (loss, metrics) = batch_loss(std::slice::from_ref(&terms), &self.config.objective)?;
            parts.push(metrics);
            // The batch loss is the mean over samples: each contributes 1/n of its gradient.
            let store = loss.affine(1.0 / n, 0.0)?.backward()?;
            for (acc, p) in grads.iter_mut().zip(self.optimizer.params()) {
                if let Some(g) = store.get(p.as_tensor()) {
                    *acc = Some(match acc.take() {
                        Some(a) => a.add(g)?,
                        None => g.clone(),
                    });
                }
            }
        }
        let grad_norm = self.optimizer.step(&grads)?;
        let out = StepMetrics {
            step: self.steps(),
            loss: LossMetrics::merge(&parts),
            entropy: entropy / tokens.max(1) as f64,
            grad_norm,
            samples: usable.len(),
            tokens,
        };
        info!(step = out.step, loss = out.loss.loss, grad_norm, "trained");
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
        };
        let (student, stats) = self
            .policy
            .head(&tokens, prompt.len() - 1, gather, Mode::Eval)?;
        let support: Vec<Vec<u32>> = stats.ids.iter().map(|r| r[1..].to_vec()).collect();
        let plan = Teacher::single(hint.to_vec(), response.len());
        let (teacher, _) = self.teacher(&plan, response, &support)?;
        let k = support.first().map_or(0, Vec::len);
        let norm = |x: &Tensor| -> candle_core::Result<Tensor> {
            x.broadcast_sub(&x.log_sum_exp(D::Minus1)?.unsqueeze(1)?)
        };
        let (s, t) = (norm(&student.narrow(1, 1, k)?)?, norm(&teacher)?);
        let kl = s.exp()?.mul(&s.sub(&t)?)?.sum(D::Minus1)?.mean_all()?;
        Ok(kl.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }
}
