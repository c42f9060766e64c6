//! Training on the GPU: [`crate::pass`]'s passes on `clawrl_gpu::Gpu`, joined to candle's
//! graph at the gathered log-probs.
//!
//! A training pass returns its `[T, m]` log-probs as a fresh candle variable and keeps its
//! [`Tape`] here; once the objective's backward has given that variable its gradient,
//! [`OnDevice::gradients`] carries it down the tape on the device to the adapters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::backprop::GradStore;
use candle_core::{Device, Result, Tensor, Var};
use clawrl_gpu::{Gpu, GpuMatrix, GpuTensor};
use clawrl_kernels::Backend;
use clawrl_model::{ModelConfig, QMatrix, Target, Weights};
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

/// The frozen model on the GPU and the tapes of the training passes not yet differentiated.
pub(crate) struct OnDevice {
    pass: DevicePass<Gpu>,
    tapes: Mutex<Vec<(Tensor, Tape<Gpu>)>>,
}

fn msg(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl OnDevice {
    /// The model (`weights` already uploaded to `gpu`; the embedding on the host).
    pub(crate) fn new(
        gpu: Gpu,
        config: ModelConfig,
        weights: Weights<GpuMatrix, GpuTensor>,
        embed: Arc<QMatrix>,
    ) -> Self {
        Self {
            pass: DevicePass::new(gpu, config, weights, embed),
            tapes: Mutex::default(),
        }
    }

    /// Whether a pass over `len` tokens scoring the last `len − from` fits the device's
    /// largest tensor: the attention probabilities (`heads × len²`), the log-softmax
    /// (`(len − from) × vocab`) and the MLP's activations (`len × intermediate`); and whether
    /// the attention kernels take the model's heads (`head_dim` ≤ 128).
    pub(crate) fn fits(&self, len: usize, from: usize) -> bool {
        let c = self.pass.config();
        if c.head_dim > 128 {
            return false;
        }
        let largest = [
            c.heads.saturating_mul(len).saturating_mul(len),
            len.saturating_sub(from).saturating_mul(c.vocab_size),
            len.saturating_mul(c.intermediate),
        ];
        let limit = self.pass.backend().context().max_tensor_len();
        largest.iter().all(|&n| n <= limit)
    }

    /// `gpu: <adapter>`.
    pub(crate) fn describe(&self) -> String {
        format!("gpu: {}", self.pass.backend().context().describe())
    }

    /// [`crate::TrainablePolicy::head`] on the GPU; `adapters` `None` is the frozen base.
    /// `None` when the device failed the pass (out of memory): the caller runs it on the CPU.
    pub(crate) fn head(
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
        let ctx = self.pass.backend().context();
        let (values, m, stats, tape) = match ctx
            .capture(|| self.pass.forward(tokens, from, &gather, lora, train))
        {
            Ok(pass) => pass.map_err(msg)?,
            Err(e) => {
                warn!(tokens = tokens.len(), error = %e, "a pass failed on the GPU; running it on the CPU");
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

    /// The adapters' current values on the device.
    fn upload(
        &self,
        cfg: &LoraConfig,
        pairs: &BTreeMap<(usize, Target), LoraPair>,
        train: bool,
    ) -> Result<DeviceLora<Gpu>> {
        let gpu = self.pass.backend();
        let up = |v: &Var| -> Result<GpuTensor> {
            Ok(gpu.upload(&v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
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

    /// The adapters' gradients, aligned with `pairs` as [`crate::TrainablePolicy::vars`]
    /// orders them (A then B per adapter), summed over the training passes since the last
    /// call whose log-probs `store` has a gradient for; the tapes are dropped.
    pub(crate) fn gradients(
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
                .context()
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
