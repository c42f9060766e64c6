//! AdamW with decoupled weight decay and global gradient-norm clipping; its moments are plain
//! tensors so a checkpoint can hold them.

use candle_core::{Result, Tensor, Var};

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Largest global gradient norm; larger gradients are scaled down to it (0 = off).
    pub max_grad_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // LoRA wants a larger rate than the paper's 1e-5 for full fine-tuning.
        Self {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
        }
    }
}

/// The optimizer: first and second moments per parameter, and the step count.
pub struct AdamW {
    /// Hyper-parameters (may be changed between steps).
    pub config: AdamWConfig,
    params: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
}

impl AdamW {
    /// An optimizer for `params`, moments at zero.
    pub fn new(params: Vec<Var>, config: AdamWConfig) -> Result<Self> {
        let m = params
            .iter()
            .map(|p| p.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            config,
            params,
            m,
            v,
            step: 0,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// The moments and step count, for a checkpoint.
    pub fn state(&self) -> (&[Tensor], &[Tensor], usize) {
        (&self.m, &self.v, self.step)
    }

    /// Restores moments and step count saved by [`AdamW::state`].
    pub fn restore(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, step: usize) -> Result<()> {
        if m.len() != self.params.len() || v.len() != self.params.len() {
            candle_core::bail!(
                "optimizer state holds {} tensors, expected {}",
                m.len(),
                self.params.len()
            );
        }
        for ((p, a), b) in self.params.iter().zip(&m).zip(&v) {
            if a.dims() != p.dims() || b.dims() != p.dims() {
                candle_core::bail!(
                    "optimizer state shape {:?} does not match parameter {:?}",
                    a.dims(),
                    p.dims()
                );
            }
        }
        (self.m, self.v, self.step) = (m, v, step);
        Ok(())
    }

    /// The parameters, in the order [`AdamW::step`] takes their gradients.
    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// One update from `grads` (one per parameter, `None`: no gradient); returns the global
    /// gradient norm before clipping.
    pub fn step(&mut self, grads: &[Option<Tensor>]) -> Result<f64> {
        if grads.len() != self.params.len() {
            candle_core::bail!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            );
        }
        let mut sq = 0f64;
        for g in grads.iter().flatten() {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        let c = self.config;
        let clip = if c.max_grad_norm > 0.0 && norm > c.max_grad_norm {
            c.max_grad_norm / norm
        } else {
            1.0
        };
        self.step += 1;
        let t = self.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        for (((p, m), v), g) in self
            .params
            .iter()
            .zip(self.m.iter_mut())
            .zip(self.v.iter_mut())
            .zip(grads)
        {
            let Some(g) = g else { continue };
            let g = g.affine(clip, 0.0)?;
            *m = m
                .affine(c.beta1, 0.0)?
                .add(&g.affine(1.0 - c.beta1, 0.0)?)?;
            *v = v
                .affine(c.beta2, 0.0)?
                .add(&g.sqr()?.affine(1.0 - c.beta2, 0.0)?)?;
            let m_hat = m.affine(1.0 / bc1, 0.0)?;
            let v_hat = v.affine(1.0 / bc2, 0.0)?;
            let update = m_hat.div(&v_hat.sqrt()?.affine(1.0, c.eps)?)?;
            let decayed = p.as_tensor().affine(1.0 - c.lr * c.weight_decay, 0.0)?;
            p.set(&decayed.sub(&update.affine(c.lr, 0.0)?)?)?;
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_step_moves_each_weight_by_the_learning_rate_against_the_gradient() {
        // Adam's first bias-corrected step is lr·g/|g| per coordinate.
        let w = Var::new(&[1.0f64, -2.0], &Device::Cpu).expect("var");
        let loss = w.as_tensor().sqr().expect("sqr").sum_all().expect("sum");
        let grads = loss.backward().expect("backward");
        let cfg = AdamWConfig {
            lr: 0.1,
            max_grad_norm: 0.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![w.clone()], cfg).expect("opt");
        let norm = opt
            .step(&[grads.get(w.as_tensor()).cloned()])
            .expect("step");
        assert!((norm - 20f64.sqrt()).abs() < 1e-12);
        let got = w.as_tensor().to_vec1::<f64>().expect("vec");
        assert!(
            (got[0] - 0.9).abs() < 1e-6 && (got[1] + 1.9).abs() < 1e-6,
            "{got:?}"
        );
    }

    #[test]
    fn weight_decay_and_clipping() {
        let w = Var::new(&[3.0f64], &Device::Cpu).expect("var");
        let loss = w
            .as_tensor()
            .affine(100.0, 0.0)
            .expect("affine")
            .sum_all()
            .expect("sum");
        let grads = loss.backward().expect("backward");
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            max_grad_norm: 1.0,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![w.clone()], cfg).expect("opt");
        assert_eq!(
            opt.step(&[grads.get(w.as_tensor()).cloned()])
                .expect("step"),
            100.0
        );
        // 3·(1 − 0.1·0.5) − 0.1 = 2.75: decay, then a unit step.
        let got = w.as_tensor().to_vec1::<f64>().expect("vec")[0];
        assert!((got - 2.75).abs() < 1e-6, "{got}");
    }
}
