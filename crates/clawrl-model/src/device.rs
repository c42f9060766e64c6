//! Where the model runs: the CPU, or a GPU through `clawrl-gpu` (the `gpu` feature).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Where to run the model (`--device`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// A real GPU when wgpu finds one, else the CPU.
    #[default]
    Auto,
    /// The CPU kernels.
    Cpu,
    /// A GPU, software adapters (lavapipe) included; an error when there is none.
    Gpu,
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            _ => Err(Error::InvalidArgument(format!(
                "unknown device {s:?}: expected auto, cpu or gpu"
            ))),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        })
    }
}

#[cfg(feature = "gpu")]
pub(crate) use gpu::GpuEngine;

#[cfg(feature = "gpu")]
mod gpu {
    use std::sync::{Arc, Mutex, PoisonError};

    use clawrl_gpu::{Gpu, GpuMatrix, GpuTensor};

    use crate::adapter::LoraAdapter;
    use crate::weights::Weights;

    /// A model's copy on a GPU: the backend, the weights uploaded once, and the adapter
    /// snapshot last used (uploaded once per snapshot, so a publish costs one upload).
    pub(crate) struct GpuEngine {
        pub(crate) backend: Gpu,
        pub(crate) weights: Weights<GpuMatrix, GpuTensor>,
        adapter: Mutex<Option<Arc<LoraAdapter<GpuMatrix>>>>,
    }

    impl GpuEngine {
        pub(crate) fn new(backend: Gpu, host: &Weights) -> Self {
            let ctx = backend.context().clone();
            let weights = host.map(|m| ctx.upload_matrix(m), |v| ctx.upload(v));
            Self {
                backend,
                weights,
                adapter: Mutex::new(None),
            }
        }

        /// `a` on the device: the copy made for it before, or a new one.
        pub(crate) fn adapter(&self, a: &LoraAdapter) -> Arc<LoraAdapter<GpuMatrix>> {
            let mut held = self.adapter.lock().unwrap_or_else(PoisonError::into_inner);
            match held.as_ref() {
                Some(g) if g.id() == a.id() => g.clone(),
                _ => {
                    let ctx = self.backend.context();
                    let g = Arc::new(a.map(|m| ctx.upload_matrix(m)));
                    *held = Some(g.clone());
                    g
                }
            }
        }
    }
}
