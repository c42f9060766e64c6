//! The hybrid loss of DESIGN.md §2: the GRPO clipped surrogate on the sampled tokens and the
//! top-k OPD loss with a clipped log-probability gap, per token, then averaged — and two
//! directive terms beyond the paper (README, "Extensions"): a forward KL toward the hinted
//! teacher over its own top-k, and accepted-retry distillation.
//!
//! Symbols follow §2: ℓ_old, ℓ_T, ℓ_cur are log-probs under π_old, the teacher π_T(·|s_t ⊕ h*)
//! and π_cur; ρ = exp(ℓ_cur − ℓ_old); S_i is the OPD support at position i; K_i is the
//! teacher's own top-k.

use candle_core::{D, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Which signals train (the user's `--method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Both terms (w_RL = w_OPD = 1 by default).
    #[default]
    Combined,
    /// Evaluative only: w_OPD = 0.
    Rl,
    /// Directive only: w_RL = 0.
    Opd,
    /// Nothing trains: the server serves and judges only (the untrained control).
    None,
}

impl Method {
    /// Parses `combined`, `rl`, `opd` or `none`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "combined" => Some(Self::Combined),
            "rl" => Some(Self::Rl),
            "opd" => Some(Self::Opd),
            "none" => Some(Self::None),
            _ => None,
        }
    }

    /// Whether the directive terms (OPD, forward KL, accepted retries) train.
    pub fn directive(self) -> bool {
        matches!(self, Self::Combined | Self::Opd)
    }

    /// Whether anything trains.
    pub fn trains(self) -> bool {
        self != Self::None
    }

    /// The name [`Method::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Self::Combined => "combined",
            Self::Rl => "rl",
            Self::Opd => "opd",
            Self::None => "none",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("method must be combined, rl, opd or none, not {s:?}"))
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which tokens S_i the OPD term ranges over at response position i.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Support {
    /// S^q_i, the top-k of π_old (the paper).
    #[default]
    Student,
    /// K_i, the top-k of the hinted teacher π_T(·|s_t ⊕ h*_i) (the reference implementation's
    /// option): tokens the student would not sample can rise.
    Teacher,
    /// S^q_i ∪ K_i.
    Union,
}

impl std::str::FromStr for Support {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "student" => Ok(Self::Student),
            "teacher" => Ok(Self::Teacher),
            "union" => Ok(Self::Union),
            _ => Err(format!(
                "support must be student, teacher or union, not {s:?}"
            )),
        }
    }
}

impl std::fmt::Display for Support {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Student => "student",
            Self::Teacher => "teacher",
            Self::Union => "union",
        })
    }
}

/// Hyper-parameters of the objective (defaults: the paper's personal-agent setting).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ObjectiveConfig {
    /// Which terms train.
    pub method: Method,
    /// w_RL.
    pub w_rl: f64,
    /// w_OPD.
    pub w_opd: f64,
    /// ε_lo: ρ is clipped below at 1 − ε_lo.
    pub eps_lo: f64,
    /// ε_hi: ρ is clipped above at 1 + ε_hi.
    pub eps_hi: f64,
    /// C: the log-prob gap Δ is clipped to [−C, C] (1 personal, 2 agentic).
    pub delta_clip: f64,
    /// β of the k3 KL to the reference policy (0 for personal agents).
    pub beta: f64,
    /// λ of the forward KL toward the hinted teacher over its top-k (0: the paper).
    pub w_fkl: f64,
    /// w_retry of accepted-retry distillation (0: the paper).
    pub w_retry: f64,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        Self {
            method: Method::Combined,
            w_rl: 1.0,
            w_opd: 1.0,
            eps_lo: 0.2,
            eps_hi: 0.28,
            delta_clip: 1.0,
            beta: 0.0,
            w_fkl: 0.0,
            w_retry: 0.0,
        }
    }
}

impl ObjectiveConfig {
    /// The effective (w_RL, w_OPD) after the method.
    pub fn weights(&self) -> (f64, f64) {
        match self.method {
            Method::Combined => (self.w_rl, self.w_opd),
            Method::Rl => (self.w_rl, 0.0),
            Method::Opd => (0.0, self.w_opd),
            Method::None => (0.0, 0.0),
        }
    }
}

/// The OPD inputs of one sample over its support sets, padded to `[T, k]`.
#[derive(Clone, Debug)]
pub struct OpdTerms {
    /// ℓ_cur(v) for v ∈ S_i (carries the gradient).
    pub lp_cur: Tensor,
    /// ℓ_old(v).
    pub lp_old: Tensor,
    /// ℓ_T(v) under the chosen hint.
    pub lp_teacher: Tensor,
    /// 1 where (i, v) is in S_i, 0 for padding (f32).
    pub mask: Tensor,
}

/// The forward-KL inputs of one sample over the teacher's own top-k K_i, `[T, k]`.
#[derive(Clone, Debug)]
pub struct FklTerms {
    /// ℓ_cur(v) for v ∈ K_i (carries the gradient).
    pub lp_cur: Tensor,
    /// ℓ_T(v) for v ∈ K_i.
    pub lp_teacher: Tensor,
}

/// One sample's inputs: the response tokens' log-probs and what trains on them.
#[derive(Clone, Debug)]
pub struct SampleTerms {
    /// ℓ_cur(y_i), `[T]` (carries the gradient).
    pub lp_cur: Tensor,
    /// ℓ_old(y_i), `[T]`.
    pub lp_old: Tensor,
    /// Per-token advantage A_i, `[T]` (r_t broadcast for personal agents); `None`: no RL sample.
    pub advantage: Option<Tensor>,
    /// The OPD sample, if a hint was accepted.
    pub opd: Option<OpdTerms>,
    /// ℓ_ref(y_i) under the reference policy, for the KL term.
    pub lp_ref: Option<Tensor>,
    /// The forward KL toward the hinted teacher, when the sample has a teacher.
    pub fkl: Option<FklTerms>,
    /// ℓ_cur(y_i | s_orig, y_<i), `[T]`: this (accepted) response under the prompt of the
    /// earlier turn it retried, for accepted-retry distillation.
    pub retry: Option<Tensor>,
}

/// What one loss evaluation measured (means over the batch's samples).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossMetrics {
    /// The batch loss.
    pub loss: f64,
    /// Mean L^GRPO over the samples that have an advantage.
    pub loss_rl: f64,
    /// Mean L^OPD over the samples that have an OPD part.
    pub loss_opd: f64,
    /// Mean k3 KL to the reference (0 without one).
    pub kl: f64,
    /// Fraction of RL tokens whose clipped term was the active one.
    pub clip_frac: f64,
    /// Fraction of OPD support entries whose clipped term was the active one.
    pub opd_clip_frac: f64,
    /// Mean |Δ_v| before clipping, over OPD support entries.
    pub mean_abs_delta: f64,
    /// Fraction of Δ_v that the clip to [−C, C] changed.
    pub delta_clip_frac: f64,
    /// Mean ρ over RL tokens.
    pub mean_ratio: f64,
    /// Samples with an RL part.
    pub rl_samples: usize,
    /// Samples with an OPD part.
    pub opd_samples: usize,
    /// Samples the loss averaged over.
    pub samples: usize,
    /// Response tokens of the RL samples.
    pub rl_tokens: usize,
    /// Support entries (i, v ∈ S_i) of the OPD samples.
    pub opd_entries: usize,
    /// Mean L^FKL over the samples that have a forward-KL part.
    pub loss_fkl: f64,
    /// Samples with a forward-KL part.
    pub fkl_samples: usize,
    /// Mean L^retry over the samples that have an accepted-retry part.
    pub loss_retry: f64,
    /// Samples with an accepted-retry part.
    pub retry_samples: usize,
}

impl LossMetrics {
    /// The metrics of a batch from those of its parts (each part's means weighted by what it
    /// averaged over), for batches whose samples were evaluated one at a time.
    pub fn merge(parts: &[LossMetrics]) -> LossMetrics {
        let w = |f: fn(&LossMetrics) -> f64, n: fn(&LossMetrics) -> usize| {
            let total: usize = parts.iter().map(n).sum();
            if total == 0 {
                0.0
            } else {
                parts.iter().map(|p| f(p) * n(p) as f64).sum::<f64>() / total as f64
            }
        };
        LossMetrics {
            loss: w(|p| p.loss, |p| p.samples),
            loss_rl: w(|p| p.loss_rl, |p| p.rl_samples),
            loss_opd: w(|p| p.loss_opd, |p| p.opd_samples),
            kl: w(|p| p.kl, |p| p.samples),
            clip_frac: w(|p| p.clip_frac, |p| p.rl_tokens),
            mean_ratio: if parts.iter().any(|p| p.rl_tokens > 0) {
                w(|p| p.mean_ratio, |p| p.rl_tokens)
            } else {
                1.0
            },
            opd_clip_frac: w(|p| p.opd_clip_frac, |p| p.opd_entries),
            mean_abs_delta: w(|p| p.mean_abs_delta, |p| p.opd_entries),
            delta_clip_frac: w(|p| p.delta_clip_frac, |p| p.opd_entries),
            rl_samples: parts.iter().map(|p| p.rl_samples).sum(),
            opd_samples: parts.iter().map(|p| p.opd_samples).sum(),
            samples: parts.iter().map(|p| p.samples).sum(),
            rl_tokens: parts.iter().map(|p| p.rl_tokens).sum(),
            opd_entries: parts.iter().map(|p| p.opd_entries).sum(),
            loss_fkl: w(|p| p.loss_fkl, |p| p.fkl_samples),
            fkl_samples: parts.iter().map(|p| p.fkl_samples).sum(),
            loss_retry: w(|p| p.loss_retry, |p| p.retry_samples),
            retry_samples: parts.iter().map(|p| p.retry_samples).sum(),
        }
    }
}

/// The clipped surrogate `max(−A·ρ, −A·clip(ρ, 1−ε_lo, 1+ε_hi))`, element-wise.
fn clipped_surrogate(
    ratio: &Tensor,
    adv: &Tensor,
    cfg: &ObjectiveConfig,
) -> Result<(Tensor, Tensor)> {
    let neg = adv.neg()?;
    let unclipped = neg.mul(ratio)?;
    let clipped = neg.mul(&ratio.clamp(1.0 - cfg.eps_lo, 1.0 + cfg.eps_hi)?)?;
    // Where the clipped term is strictly larger it is active (its gradient is zero).
    let active = clipped.gt(&unclipped)?;
    Ok((unclipped.maximum(&clipped)?, active))
}

/// L^GRPO_i for every token: ρ_i = exp(ℓ_cur(y_i) − ℓ_old(y_i)). Returns the per-token losses,
/// the clip indicator and ρ.
pub fn grpo_token_losses(
    lp_cur: &Tensor,
    lp_old: &Tensor,
    adv: &Tensor,
    cfg: &ObjectiveConfig,
) -> Result<(Tensor, Tensor, Tensor)> {
    let ratio = lp_cur.sub(lp_old)?.exp()?;
    let (loss, active) = clipped_surrogate(&ratio, adv, cfg)?;
    Ok((loss, active, ratio))
}

/// The teacher's clipped log-prob gap Δ = clip(ℓ_T − ℓ_old, −C, C), element-wise (DESIGN.md §2,
/// top-k OPD): what the OPD loss trains on, and what the inspector shows.
pub fn clipped_delta(lp_teacher: &Tensor, lp_old: &Tensor, c: f64) -> Result<Tensor> {
    lp_teacher.sub(lp_old)?.clamp(-c, c)
}

/// L^OPD_i for every position: w_v = softmax over S_i of ℓ_old(v); Δ_v = clip(ℓ_T(v) − ℓ_old(v),
/// −C, C); A_v = Δ_v·w_v; ρ_v = exp(ℓ_cur(v) − ℓ_old(v)); the clipped surrogate summed over S_i.
///
/// Entries outside S_i (mask 0) and entries with ℓ_old = −∞ add nothing and pass no gradient.
/// Returns the `[T]` losses, and the `[T, k]` masks of clipped-surrogate activity and of Δ clipping
/// plus the raw |Δ| (for metrics).
pub fn opd_token_losses(
    t: &OpdTerms,
    cfg: &ObjectiveConfig,
) -> Result<(Tensor, Tensor, Tensor, Tensor, Tensor)> {
    let zeros = t.lp_old.zeros_like()?;
    // A −∞ log-prob (a token the policy cannot produce) is taken out of S_i.
    let finite = t.lp_old.gt(f64::NEG_INFINITY)?.to_dtype(t.mask.dtype())?;
    let mask = t.mask.mul(&finite)?;
    let on = mask.gt(0.0)?;
    let lp_old = on.where_cond(&t.lp_old, &zeros)?;
    let lp_cur = on.where_cond(&t.lp_cur, &zeros)?;
    let lp_teacher = on.where_cond(&t.lp_teacher.maximum(-1e30)?, &zeros)?;
    // w_v: softmax of ℓ_old over the entries of S_i only.
    let big_neg = zeros.affine(0.0, -1e30)?;
    let masked_old = on.where_cond(&lp_old, &big_neg)?;
    let max = masked_old.max_keepdim(D::Minus1)?;
    let e = masked_old.broadcast_sub(&max)?.exp()?.mul(&mask)?;
    let denom = e.sum_keepdim(D::Minus1)?.maximum(1e-30)?;
    let w = e.broadcast_div(&denom)?;
    let raw_delta = lp_teacher.sub(&lp_old)?;
    let delta = clipped_delta(&lp_teacher, &lp_old, cfg.delta_clip)?;
    let delta_clipped = raw_delta
        .abs()?
        .gt(cfg.delta_clip)?
        .to_dtype(mask.dtype())?
        .mul(&mask)?;
    let adv = delta.mul(&w)?.detach();
    let ratio = lp_cur.sub(&lp_old)?.exp()?;
    let (surrogate, active) = clipped_surrogate(&ratio, &adv, cfg)?;
    let loss = surrogate.mul(&mask)?.sum(D::Minus1)?;
    let active = active.to_dtype(mask.dtype())?.mul(&mask)?;
    Ok((
        loss,
        active,
        delta_clipped,
        raw_delta.abs()?.mul(&mask)?,
        mask,
    ))
}

/// L^FKL_i = Σ_{v∈K_i} π̃_T(v)·(ln π̃_T(v) − ℓ_cur(v)) for every position, with π̃_T = π_T
/// renormalised over K_i (an extension, README "Extensions"): the forward KL from the hinted
/// teacher to the student over the teacher's own top-k. Its gradient −Σ π̃_T(v)·∇ℓ_cur(v) lifts
/// every token the teacher ranks high, including those outside the student's top-k, which the
/// OPD term over S^q_i cannot reach. Entries with ℓ_T = −∞ add nothing. Returns `[T]`.
pub fn fkl_token_losses(t: &FklTerms) -> Result<Tensor> {
    let finite = t.lp_teacher.gt(f64::NEG_INFINITY)?;
    let zeros = t.lp_teacher.zeros_like()?;
    let big_neg = zeros.affine(0.0, -1e30)?;
    let teacher = finite.where_cond(&t.lp_teacher, &big_neg)?;
    let log_p = teacher.broadcast_sub(&teacher.log_sum_exp(D::Minus1)?.unsqueeze(1)?)?;
    let p = log_p.exp()?;
    let gap = finite.where_cond(&log_p.sub(&t.lp_cur)?, &zeros)?;
    p.mul(&gap)?.sum(D::Minus1)
}

/// k3 estimator of KL(π_cur ‖ π_ref) per token: exp(ℓ_ref − ℓ_cur) − (ℓ_ref − ℓ_cur) − 1.
pub fn k3_kl(lp_cur: &Tensor, lp_ref: &Tensor) -> Result<Tensor> {
    let d = lp_ref.sub(lp_cur)?;
    d.exp()?.sub(&d)?.affine(1.0, -1.0)
}

fn scalar(t: &Tensor) -> Result<f64> {
    t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
}

/// The batch loss: L_i = w_RL·L^GRPO_i + w_OPD·L^OPD_i + λ·L^FKL_i + w_retry·L^retry_i + β·KL_i,
/// a sample's loss the mean over its tokens, the batch's the mean over samples, where
/// L^retry_i = −ℓ_cur(y_i | s_orig, y_<i) (accepted-retry distillation; README "Extensions").
/// The forward-KL and retry terms are directive: they train under `combined` and `opd`.
/// Samples with an empty response add 0.
pub fn batch_loss(samples: &[SampleTerms], cfg: &ObjectiveConfig) -> Result<(Tensor, LossMetrics)> {
    let (w_rl, w_opd) = cfg.weights();
    let mut total: Option<Tensor> = None;
    let mut m = LossMetrics::default();
    let (mut clip_n, mut clip_d, mut ratio_sum) = (0.0, 0.0, 0.0);
    let (mut opd_clip_n, mut sup_n, mut dclip_n, mut abs_delta) = (0.0, 0.0, 0.0, 0.0);
    let mut kl_sum = 0.0;
    let directive = cfg.method.directive();
    // The untrained control: no term at all.
    let samples = if cfg.method.trains() { samples } else { &[] };
    for s in samples {
        let t = s.lp_cur.dim(0)?;
        if t == 0 {
            continue;
        }
        let mut per_token = s.lp_cur.zeros_like()?;
        if let (Some(adv), true) = (&s.advantage, w_rl != 0.0) {
            let (l, active, ratio) = grpo_token_losses(&s.lp_cur, &s.lp_old, adv, cfg)?;
            let mean = l.mean_all()?;
            m.loss_rl += scalar(&mean)?;
            m.rl_samples += 1;
            clip_n += scalar(&active.to_dtype(candle_core::DType::F64)?.sum_all()?)?;
            clip_d += t as f64;
            ratio_sum += scalar(&ratio.sum_all()?)?;
            per_token = per_token.add(&l.affine(w_rl, 0.0)?)?;
        }
        if let (Some(opd), true) = (&s.opd, w_opd != 0.0) {
            let (l, active, dclip, absd, mask) = opd_token_losses(opd, cfg)?;
            m.loss_opd += scalar(&l.mean_all()?)?;
            m.opd_samples += 1;
            opd_clip_n += scalar(&active.sum_all()?)?;
            sup_n += scalar(&mask.sum_all()?)?;
            dclip_n += scalar(&dclip.sum_all()?)?;
            abs_delta += scalar(&absd.sum_all()?)?;
            per_token = per_token.add(&l.affine(w_opd, 0.0)?)?;
        }
        if let (Some(f), true) = (&s.fkl, directive && cfg.w_fkl != 0.0) {
            let l = fkl_token_losses(f)?;
            m.loss_fkl += scalar(&l.mean_all()?)?;
            m.fkl_samples += 1;
            per_token = per_token.add(&l.affine(cfg.w_fkl, 0.0)?)?;
        }
        if let (Some(lp), true) = (&s.retry, directive && cfg.w_retry != 0.0) {
            if lp.dims() != s.lp_cur.dims() {
                candle_core::bail!(
                    "the retry log-probs have shape {:?}, the response {:?}",
                    lp.dims(),
                    s.lp_cur.dims()
                );
            }
            let l = lp.neg()?;
            m.loss_retry += scalar(&l.mean_all()?)?;
            m.retry_samples += 1;
            per_token = per_token.add(&l.affine(cfg.w_retry, 0.0)?)?;
        }
        if let (Some(lp_ref), true) = (&s.lp_ref, cfg.beta != 0.0) {
            let kl = k3_kl(&s.lp_cur, lp_ref)?;
            kl_sum += scalar(&kl.mean_all()?)?;
            per_token = per_token.add(&kl.affine(cfg.beta, 0.0)?)?;
        }
        let sample = per_token.mean_all()?;
        total = Some(match total {
            Some(acc) => acc.add(&sample)?,
            None => sample,
        });
    }
    let n = samples.len().max(1) as f64;
    let loss = match total {
        Some(t) => t.affine(1.0 / n, 0.0)?,
        // Nothing to learn from: a zero of the inputs' kind (f32 on the CPU when there are none).
        None => match samples.first() {
            Some(s) => Tensor::zeros((), s.lp_cur.dtype(), s.lp_cur.device())?,
            None => Tensor::zeros((), candle_core::DType::F32, &candle_core::Device::Cpu)?,
        },
    };
    m.loss = scalar(&loss)?;
    m.samples = samples.len();
    m.rl_tokens = clip_d as usize;
    m.opd_entries = sup_n as usize;
    m.loss_rl /= m.rl_samples.max(1) as f64;
    m.loss_opd /= m.opd_samples.max(1) as f64;
    m.loss_fkl /= m.fkl_samples.max(1) as f64;
    m.loss_retry /= m.retry_samples.max(1) as f64;
    m.kl = kl_sum / n;
    m.clip_frac = if clip_d > 0.0 { clip_n / clip_d } else { 0.0 };
    m.mean_ratio = if clip_d > 0.0 {
        ratio_sum / clip_d
    } else {
        1.0
    };
    m.opd_clip_frac = if sup_n > 0.0 { opd_clip_n / sup_n } else { 0.0 };
    m.delta_clip_frac = if sup_n > 0.0 { dclip_n / sup_n } else { 0.0 };
    m.mean_abs_delta = if sup_n > 0.0 { abs_delta / sup_n } else { 0.0 };
    Ok((loss, m))
}

#[cfg(test)]
mod tests {
    use super::Method;

    #[test]
    fn method_names_round_trip() {
        for m in [Method::Combined, Method::Rl, Method::Opd, Method::None] {
            assert_eq!(Method::parse(m.name()), Some(m));
        }
        assert_eq!(Method::parse("ppo"), None);
    }
}
