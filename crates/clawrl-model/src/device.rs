//! Where the model runs: the CPU, a GPU through wgpu (`clawrl-gpu`, the `gpu` feature), or an
//! NVIDIA GPU through CUDA (`clawrl-cuda`, the `cuda` feature).

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Where to run the model (`--device`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// An NVIDIA GPU through CUDA when a driver sees one (builds with the `cuda` feature), else
    /// a real GPU when wgpu finds one, else the CPU.
    #[default]
    Auto,
    /// The CPU kernels.
    Cpu,
    /// A GPU through wgpu, software adapters (lavapipe) included; an error when there is none.
    Gpu,
    /// An NVIDIA GPU through CUDA; an error when there is none or the build lacks the `cuda`
    /// feature.
    Cuda,
}

impl FromStr for Device {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            "cuda" => Ok(Device::Cuda),
            _ => Err(Error::InvalidArgument(format!(
                "unknown device {s:?}: expected auto, cpu, gpu or cuda"
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
            Device::Cuda => "cuda",
        })
    }
}

#[cfg(any(feature = "gpu", feature = "cuda"))]
pub use accelerated::{DeviceEngine, Engine, WithEngine};

#[cfg(any(feature = "gpu", feature = "cuda"))]
mod accelerated {
    use std::sync::{Arc, Mutex, PoisonError};

    use clawrl_kernels::Accelerator;

    use crate::adapter::LoraAdapter;
    use crate::weights::Weights;

    /// A model's copy on an accelerator: the backend, the weights uploaded once, and the
    /// adapter snapshot last used (uploaded once per snapshot, so a publish costs one upload).
    pub struct DeviceEngine<B: Accelerator> {
        backend: B,
        weights: Weights<B::Matrix, B::Tensor>,
        adapter: Mutex<Option<Arc<LoraAdapter<B::Matrix>>>>,
    }

    impl<B: Accelerator> DeviceEngine<B> {
        pub(crate) fn new(backend: B, host: &Weights) -> Self {
            let weights = host.map(|m| backend.upload_matrix(m), |v| backend.upload(v));
            Self {
                backend,
                weights,
                adapter: Mutex::new(None),
            }
        }

        /// The backend.
        pub fn backend(&self) -> &B {
            &self.backend
        }

        /// The weights on the device (training runs its passes on this copy).
        pub fn weights(&self) -> &Weights<B::Matrix, B::Tensor> {
            &self.weights
        }

        /// `a` on the device: the copy made for it before, or a new one.
        pub(crate) fn adapter(&self, a: &LoraAdapter) -> Arc<LoraAdapter<B::Matrix>> {
            let mut held = self.adapter.lock().unwrap_or_else(PoisonError::into_inner);
            match held.as_ref() {
                Some(g) if g.id() == a.id() => g.clone(),
                _ => {
                    let g = Arc::new(a.map(|m| self.backend.upload_matrix(m)));
                    *held = Some(g.clone());
                    g
                }
            }
        }
    }

    /// The accelerator a model runs on.
    pub enum Engine {
        /// A GPU through wgpu.
        #[cfg(feature = "gpu")]
        Wgpu(DeviceEngine<clawrl_gpu::Gpu>),
        /// An NVIDIA GPU through CUDA.
        #[cfg(feature = "cuda")]
        Cuda(DeviceEngine<clawrl_cuda::Cuda>),
    }

    /// Work on a model's accelerator copy, whichever backend holds it: what depends on the
    /// backend's types (the trainer's passes) without naming them.
    pub trait WithEngine {
        /// What the work gives.
        type Output;
        /// Does it on `engine`.
        fn call<B: Accelerator>(self, engine: &DeviceEngine<B>) -> Self::Output;
    }

    impl Engine {
        /// Runs `work` on this engine's backend.
        pub fn with<W: WithEngine>(&self, work: W) -> W::Output {
            match self {
                #[cfg(feature = "gpu")]
                Engine::Wgpu(e) => work.call(e),
                #[cfg(feature = "cuda")]
                Engine::Cuda(e) => work.call(e),
            }
        }

        /// The device, for display (`gpu: <adapter>`, `cuda: <GPU>`).
        pub fn describe(&self) -> String {
            match self {
                #[cfg(feature = "gpu")]
                Engine::Wgpu(e) => e.backend.describe(),
                #[cfg(feature = "cuda")]
                Engine::Cuda(e) => e.backend.describe(),
            }
        }

        /// `host` uploaded to the same device.
        pub(crate) fn share(&self, host: &Weights) -> Engine {
            match self {
                #[cfg(feature = "gpu")]
                Engine::Wgpu(e) => Engine::Wgpu(DeviceEngine::new(e.backend.clone(), host)),
                #[cfg(feature = "cuda")]
                Engine::Cuda(e) => Engine::Cuda(DeviceEngine::new(e.backend.clone(), host)),
            }
        }
    }
}
