//! Training on an accelerator (wgpu's `clawrl_gpu::Gpu`, `clawrl_cuda::Cuda`):
//! [`crate::pass`]'s passes there, joined to candle's graph at the gathered log-probs.
//!
//! A training pass returns its `[T, m]` log-probs as a fresh candle variable and keeps its
//! [`Tape`] here; once the objective's backward has given that variable its gradient,
//! [`OnDevice::gradients`] carries it down the tape on the device to the adapters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};
use clawrl_kernels::Accelerator;
use clawrl_model::{DeviceEngine, Engine, ModelConfig, QMatrix, Target, Weights, WithEngine};
use tracing::warn;

use crate::head::{Gather, HeadStats};
use crate::lora::{LoraConfig, LoraPair};
use crate::pass::{DeviceLora, DevicePass, Tape};

/// The adapters as the policy holds them, how they are scaled, and whether the pass trains.
pub(crate) type Adapters<'a> = (
    &'a LoraConfig,
    &'a BTreeMap<(usize, Target), LoraPair>,
    bool,
);

/// What the policy asks of the accelerator its passes run on, whichever it is.
pub(crate) trait Accelerated: Send + Sync {
    /// Whether a pass over `len` tokens scoring the last `len − from` fits the device.
    fn fits(&self, len: usize, from: usize) -> bool;
    /// The device, for display.
    fn describe(&self) -> String;
    /// [`crate::TrainablePolicy::head`] there; `None` when the device failed the pass.
    fn head(
        &self,
        tokens: &[u32],
        from: usize,
        gather: Gather,
        adapters: Option<Adapters<'_>>,
    ) -> Result<Option<(Tensor, HeadStats)>>;
    /// The adapters' gradients from the training passes since the last call.
    fn gradients(
        &self,
        store: &GradStore,
        pairs: &BTreeMap<(usize, Target), LoraPair>,
    ) -> Result<Vec<Option<Tensor>>>;
}

/// The passes on the accelerator `engine` holds the model on, with the embedding on the host.
pub(crate) fn on_device(
    engine: &Engine,
    config: ModelConfig,
    embed: Arc<QMatrix>,
) -> Box<dyn Accelerated> {
    struct Build(ModelConfig, Arc<QMatrix>);
    impl WithEngine for Build {
        type Output = Box<dyn Accelerated>;
        fn call<B: Accelerator>(self, e: &DeviceEngine<B>) -> Self::Output {
            Box::new(OnDevice::new(
                e.backend().clone(),
                self.0,
                e.weights().clone(),
                self.1,
            ))
        }
    }
    engine.with(Build(config, embed))
}

/// The frozen model on the device and the tapes of the training passes not yet
/// differentiated.
pub(crate) struct OnDevice<B: Accelerator> {
    pass: DevicePass<B>,
    tapes: Mutex<Vec<(Tensor, Tape<B>)>>,
}

fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl<B: Accelerator> OnDevice<B> {
    /// The model (`weights` already uploaded to `backend`'s device; the embedding on the
    /// host).
    pub(crate) fn new(
        backend: B,
        config: ModelConfig,
        weights: Weights<B::Matrix, B::Tensor>,
        embed: Arc<QMatrix>,
    ) -> Self {
        Self {
            pass: DevicePass::new(backend, config, weights, embed),
            tapes: Mutex::default(),
        }
    }

    /// The adapters' current values on the device.
    fn upload(
        &self,
        cfg: &LoraConfig,
        pairs: &BTreeMap<(usize, Target), LoraPair>,
        train: bool,
    ) -> Result<DeviceLora<B>> {
        let be = self.pass.backend();
        let up = |v: &Var| -> Result<B::Tensor> {
            Ok(be.upload(&v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
        };
        let mut on_device = BTreeMap::new();
        for (&key, p) in pairs {
            on_device.insert(key, (up(&p.a)?, up(&p.b)?));
        }
        Ok(DeviceLora {
            pairs: on_device,
            scale: cfg.scale() as f32,
            rank: cfg.rank,
            dropout: if train { cfg.dropout as f32 } else { 0.0 },
        })
    }
}

impl<B: Accelerator> Accelerated for OnDevice<B> {
    /// Whether a pass over `len` tokens scoring the last `len − from` fits the device's
    /// largest tensor: the attention probabilities (`heads × len²`), the log-softmax
    /// (`(len − from) × vocab`) and the MLP's activations (`len × intermediate`); and whether
    /// the attention kernels take the model's heads (`head_dim` ≤ 128).
    fn fits(&self, len: usize, from: usize) -> bool {
        let c = self.pass.config();
        if c.head_dim > self.pass.backend().max_head_dim() {
            return false;
        }
        let largest = [
            c.heads.saturating_mul(len).saturating_mul(len),
            len.saturating_sub(from).saturating_mul(c.vocab_size),
            len.saturating_mul(c.intermediate),
        ];
        let limit = self.pass.backend().max_tensor_len();
        largest.iter().all(|&n| n <= limit)
    }

    fn describe(&self) -> String {
        self.pass.backend().describe()
    }

    /// `adapters` `None` is the frozen base. `None` when the device failed the pass (out of
    /// memory): the caller runs it on the CPU.
    fn head(
        &self,
        tokens: &[u32],
        from: usize,
        gather: Gather,
        adapters: Option<Adapters<'_>>,
    ) -> Result<Option<(Tensor, HeadStats)>> {
        let (lora, train) = match adapters {
            None => (None, false),
            Some((cfg, pairs, train)) => (Some(self.upload(cfg, pairs, train)?), train),
        };
        let (values, m, stats, tape) = match self
            .pass
            .backend()
            .capture(|| self.pass.forward(tokens, from, &gather, lora, train))
        {
            Ok(pass) => pass.map_err(msg)?,
            Err(e) => {
                warn!(tokens = tokens.len(), error = %e, "a pass failed on the device; running it on the CPU");
                return Ok(None);
            }
        };
        let lp = Tensor::from_vec(values, (tokens.len() - from, m), &Device::Cpu)?;
        let Some(tape) = tape else {
            return Ok(Some((lp, stats)));
        };
        let leaf = Var::from_tensor(&lp)?.as_tensor().clone();
        self.tapes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((leaf.clone(), tape));
        Ok(Some((leaf, stats)))
    }

    /// The adapters' gradients, aligned with `pairs` as [`crate::TrainablePolicy::vars`]
    /// orders them (A then B per adapter), summed over the training passes since the last
    /// call whose log-probs `store` has a gradient for; the tapes are dropped.
    fn gradients(
        &self,
        store: &GradStore,
        pairs: &BTreeMap<(usize, Target), LoraPair>,
    ) -> Result<Vec<Option<Tensor>>> {
        let tapes = std::mem::take(&mut *self.tapes.lock().unwrap_or_else(PoisonError::into_inner));
        let mut sum: Option<Vec<f32>> = None;
        for (leaf, tape) in tapes {
            let Some(g) = store.get(&leaf) else {
                continue;
            };
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let flat = self
                .pass
                .backend()
                .capture(|| self.pass.backward(&tape, &g))
                .map_err(msg)?
                .map_err(msg)?;
            match &mut sum {
                Some(s) => s.iter_mut().zip(&flat).for_each(|(a, b)| *a += b),
                None => sum = Some(flat),
            }
        }
        let Some(sum) = sum else {
            return Ok(vec![None; 2 * pairs.len()]);
        };
        let mut out = Vec::with_capacity(2 * pairs.len());
        let mut at = 0;
        for p in pairs.values() {
            for v in [&p.a, &p.b] {
                let dims = v.as_tensor().dims2()?;
                let n = dims.0 * dims.1;
                let part = sum
                    .get(at..at + n)
                    .ok_or_else(|| msg("the device's gradients are shorter than the adapters"))?;
                out.push(Some(Tensor::from_slice(part, dims, &Device::Cpu)?));
                at += n;
            }
        }
        Ok(out)
    }
}
