//! Where the model runs: the CPU, or a GPU through `clawrl-gpu` (the `gpu` feature).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};
use crate::model::Model;

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
    use crate::model::Weights;

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

impl Model {
    /// Moves the model to `device`: on a GPU the weights are uploaded once and every later
    /// forward pass, KV cache and adapter runs there. Returns where it runs, for display
    /// (`cpu`, or the adapter: `gpu: <name> · <API> · <kind>`).
    ///
    /// # Errors
    /// [`Error::Gpu`] for [`Device::Gpu`] when no adapter opens (no driver, or a build
    /// without the `gpu` feature). [`Device::Auto`] never fails: it falls back to the CPU and
    /// logs why.
    pub fn set_device(&mut self, device: Device) -> Result<String> {
        #[cfg(feature = "gpu")]
        {
            use clawrl_gpu::{AdapterChoice, Context, Gpu};
            let choice = match device {
                Device::Cpu => {
                    self.gpu = None;
                    return Ok(self.device());
                }
                Device::Auto => AdapterChoice::Hardware,
                Device::Gpu => AdapterChoice::Any,
            };
            match Context::open(choice) {
                Ok(ctx) => {
                    let backend = Gpu::new(ctx, &self.rope);
                    self.gpu = Some(GpuEngine::new(backend, &self.weights));
                }
                Err(e) if device == Device::Auto => {
                    tracing::info!(reason = %e, "running on the CPU");
                    self.gpu = None;
                }
                Err(e) => return Err(Error::Gpu(e.to_string())),
            }
            Ok(self.device())
        }
        #[cfg(not(feature = "gpu"))]
        match device {
            Device::Gpu => Err(Error::Gpu(
                "this build has no GPU backend (built without the `gpu` feature)".into(),
            )),
            Device::Auto | Device::Cpu => Ok(self.device()),
        }
    }

    /// Where the model runs, for display: `cpu`, or `gpu: <adapter>`.
    pub fn device(&self) -> String {
        #[cfg(feature = "gpu")]
        if let Some(g) = &self.gpu {
            return format!("gpu: {}", g.backend.context().describe());
        }
        "cpu".into()
    }
}
