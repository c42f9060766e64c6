//! One step of learning: re-score π_old, score the teacher under the chosen hint, apply the
//! hybrid objective, step AdamW.

use candle_core::{D, DType, Device, Tensor};
use clawrl_kernels::ops::top_k;
use clawrl_objective::{LossMetrics, ObjectiveConfig, OpdTerms, SampleTerms, batch_loss};
use tracing::{info, info_span};

use crate::adamw::{AdamW, AdamWConfig};
use crate::error::{Error, Result};
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
    /// s_t ⊕ h*, the prompt with the chosen hint: an OPD sample when present.
    pub hint_prompt: Option<Vec<u32>>,
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

fn gather_rows(lp: &Tensor, ids: &[u32]) -> candle_core::Result<Tensor> {
    let idx = Tensor::new(ids, &Device::Cpu)?.unsqueeze(1)?;
    lp.gather(&idx, 1)?.squeeze(1)
}

fn gather_support(lp: &Tensor, support: &[Vec<u32>], k: usize) -> candle_core::Result<Tensor> {
    let flat: Vec<u32> = support
        .iter()
        .flat_map(|s| (0..k).map(move |j| s.get(j).copied().unwrap_or(0)))
        .collect();
    let idx = Tensor::from_vec(flat, (support.len(), k), &Device::Cpu)?;
    lp.gather(&idx, 1)
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
        let lp = self.policy.log_probs(&tokens, from, Mode::Train)?;
        // π_old is the policy before this update: the same weights, without dropout.
        let lp_old_full = if self.policy.lora_config().dropout > 0.0 {
            self.policy.log_probs(&tokens, from, Mode::Eval)?
        } else {
            lp.detach()
        };
        let entropy = lp
            .exp()?
            .mul(&lp)?
            .sum_all()?
            .neg()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        let lp_cur = gather_rows(&lp, &s.response)?;
        let lp_old = gather_rows(&lp_old_full, &s.response)?;
        let advantage = s
            .advantage
            .map(|a| Tensor::full(a, t, &Device::Cpu))
            .transpose()?;
        let opd = match &s.hint_prompt {
            None => None,
            Some(hint) => Some(self.opd_terms(&lp, &lp_old_full, hint, &s.response)?),
        };
        let lp_ref = if self.config.objective.beta != 0.0 {
            Some(gather_rows(
                &self.policy.log_probs(&tokens, from, Mode::Reference)?,
                &s.response,
            )?)
        } else {
            None
        };
        Ok((
            SampleTerms {
                lp_cur,
                lp_old,
                advantage,
                opd,
                lp_ref,
            },
            entropy,
        ))
    }

    fn opd_terms(
        &self,
        lp: &Tensor,
        lp_old: &Tensor,
        hint: &[u32],
        response: &[u32],
    ) -> Result<OpdTerms> {
        let k = self.config.top_k.max(1);
        let old_rows = lp_old.to_vec2::<f32>()?;
        let support: Vec<Vec<u32>> = old_rows
            .iter()
            .map(|r| top_k(r, k).into_iter().map(|(i, _)| i).collect())
            .collect();
        if hint.is_empty() {
            return Err(Error::InvalidSample("a hint prompt is empty".into()));
        }
        let mut tokens = hint.to_vec();
        tokens.extend_from_slice(&response[..response.len() - 1]);
        let teacher = self
            .policy
            .log_probs(&tokens, hint.len() - 1, Mode::Eval)?
            .detach();
        let mut mask: Vec<f32> = support
            .iter()
            .flat_map(|s| (0..k).map(move |j| if j < s.len() { 1.0 } else { 0.0 }))
            .collect();
        if self.config.intersect_support {
            let teacher_rows = teacher.to_vec2::<f32>()?;
            for (i, (row, s)) in teacher_rows.iter().zip(&support).enumerate() {
                let tk: Vec<u32> = top_k(row, k).into_iter().map(|(v, _)| v).collect();
                for (j, v) in s.iter().enumerate() {
                    if !tk.contains(v) {
                        mask[i * k + j] = 0.0;
                    }
                }
            }
        }
        Ok(OpdTerms {
            lp_cur: gather_support(lp, &support, k)?,
            lp_old: gather_support(lp_old, &support, k)?,
            lp_teacher: gather_support(&teacher, &support, k)?,
            mask: Tensor::from_vec(mask, (support.len(), k), &Device::Cpu)?,
        })
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
        let lp = self
            .policy
            .log_probs(&tokens, prompt.len() - 1, Mode::Eval)?;
        Ok(gather_rows(&lp, response)?
            .mean_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?)
    }

    /// KL(π_cur ‖ π_T) over the OPD support S_i, averaged over positions (for tests and demos).
    pub fn support_kl(&self, prompt: &[u32], hint: &[u32], response: &[u32]) -> Result<f64> {
        if prompt.is_empty() || hint.is_empty() || response.is_empty() {
            return Err(Error::InvalidSample(
                "need a prompt, a hint prompt and a response".into(),
            ));
        }
        let mut tokens = prompt.to_vec();
        tokens.extend_from_slice(&response[..response.len().saturating_sub(1)]);
        let student = self
            .policy
            .log_probs(&tokens, prompt.len() - 1, Mode::Eval)?;
        let mut ttokens = hint.to_vec();
        ttokens.extend_from_slice(&response[..response.len().saturating_sub(1)]);
        let teacher = self
            .policy
            .log_probs(&ttokens, hint.len() - 1, Mode::Eval)?;
        let k = self.config.top_k.max(1);
        let rows = student.to_vec2::<f32>()?;
        let support: Vec<Vec<u32>> = rows
            .iter()
            .map(|r| top_k(r, k).into_iter().map(|(i, _)| i).collect())
            .collect();
        let s = gather_support(&student, &support, k)?;
        let t = gather_support(&teacher, &support, k)?;
        // Renormalise both over S_i, then KL(s ‖ t).
        let norm = |x: &Tensor| -> candle_core::Result<Tensor> {
            x.broadcast_sub(&x.log_sum_exp(D::Minus1)?.unsqueeze(1)?)
        };
        let (s, t) = (norm(&s)?, norm(&t)?);
        let kl = s.exp()?.mul(&s.sub(&t)?)?.sum(D::Minus1)?.mean_all()?;
        Ok(kl.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }
}
