//! The engine the window shows: the model loaded and the live-loop server started in-process,
//! restarted on another model, and the serving adapter exported.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use clawrl_model::{Device, FetchProgress, Model};
use clawrl_server::{Server, ServerConfig, TrainingSettings};

/// How the engine starts: flags and environment, fixed for the app's life.
#[derive(Clone, Debug)]
pub struct Options {
    /// The model at start (None: the embedded one).
    pub model: Option<PathBuf>,
    /// Where to listen.
    pub bind: SocketAddr,
    /// Where the database and checkpoints of the embedded model live.
    pub data_dir: PathBuf,
    /// Samples per training step.
    pub batch_size: usize,
    /// The built UI.
    pub ui: PathBuf,
    /// Where the model runs at start (`--device`); File ▸ Device changes it.
    pub device: Device,
}

struct Running {
    server: Server,
    data_dir: PathBuf,
    model: Arc<Model>,
    model_path: PathBuf,
}

/// The server the window talks to, one at a time.
pub struct Engine {
    options: Options,
    rt: tokio::runtime::Runtime,
    running: Mutex<Option<Running>>,
    /// Where the next start runs the model.
    device: Mutex<Device>,
    /// The model the last start was asked for, running or not.
    last_model: Mutex<Option<PathBuf>>,
}

impl Engine {
    /// An engine that has not started yet.
    pub fn new(options: Options) -> Result<Arc<Self>> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        Ok(Arc::new(Self {
            device: Mutex::new(options.device),
            last_model: Mutex::new(None),
            options,
            rt,
            running: Mutex::new(None),
        }))
    }

    /// Where the next [`Engine::start`] runs the model.
    pub fn device(&self) -> Device {
        *self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the model on `device` from the next [`Engine::start`] on.
    pub fn set_device(&self, device: Device) {
        *self.device.lock().unwrap_or_else(|e| e.into_inner()) = device;
    }

    /// The model the last start was asked for (served, or failed to start).
    pub fn model_path(&self) -> Option<PathBuf> {
        self.last_model
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the engine runs, on the device it would start on now.
    pub fn runs_on(&self, device: Device) -> bool {
        self.lock().is_some() && self.device() == device
    }

    /// Loads `model` (None: the one given at start, else the embedded one, fetched if needed)
    /// on the engine's device and serves it, stopping the previous server first; returns the
    /// address.
    pub fn start(&self, model: Option<PathBuf>, status: &dyn Fn(&str)) -> Result<SocketAddr> {
        let previous = self.stop();
        let path = match model.or_else(|| self.options.model.clone()) {
            Some(p) => p,
            None => clawrl_model::default_model_path(&mut |p| match p {
                FetchProgress::Downloading => {
                    status("Fetching the embedded model (SmolLM2-135M-Instruct, 98 MB)…")
                }
                FetchProgress::Extracting { done, total } => status(&format!(
                    "Unpacking the model: {} of {} MB",
                    done >> 20,
                    total >> 20
                )),
                FetchProgress::Ready => status("Model ready."),
            })?,
        };
        *self.last_model.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
        status(&format!("Loading {}…", path.display()));
        let mut model =
            Model::load(&path).with_context(|| format!("loading {}", path.display()))?;
        let device = self.device();
        let on = model
            .set_device(device)
            .with_context(|| format!("running the model on the device `{device}`"))?;
        status(&format!("Running on {on}."));
        let model = Arc::new(model);
        // Adapters fit one base model only: another model gets a database of its own.
        let data_dir = if self.options.model.as_ref() == Some(&path)
            || self.options.model.is_none() && is_embedded(&path)
        {
            self.options.data_dir.clone()
        } else {
            self.options.data_dir.join("models").join(stem(&path))
        };
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let mut config = ServerConfig::new("clawrl", &data_dir);
        config.bind = previous.unwrap_or_else(|| free_or_any(self.options.bind));
        config.ui = Some(self.options.ui.clone());
        config.lp.training = TrainingSettings {
            batch_size: self.options.batch_size,
            // The product's defaults: the levers that learn (README, "Extensions beyond the paper").
            ..TrainingSettings::extensions()
        };
        status("Starting the server…");
        let server = self
            .rt
            .block_on(clawrl_server::start(config, model.clone()))
            .context("starting the server")?;
        let addr = server.addr;
        tracing::info!(%addr, model = %path.display(), data = %data_dir.display(), "engine started");
        *self.lock() = Some(Running {
            server,
            data_dir,
            model,
            model_path: path,
        });
        Ok(addr)
    }

    /// Stops the server (after its current training step); returns where it listened.
    pub fn stop(&self) -> Option<SocketAddr> {
        let running = self.lock().take()?;
        let addr = running.server.addr;
        self.rt.block_on(running.server.shutdown());
        Some(addr)
    }

    /// Copies the serving adapter (PEFT layout) into `to`; returns its version.
    pub fn export_adapter(&self, to: &Path) -> Result<i64> {
        let guard = self.lock();
        let Some(r) = guard.as_ref() else {
            bail!("the engine is not running");
        };
        let (version, from) = r.serving_checkpoint()?;
        for f in ["adapter_config.json", "adapter_model.safetensors"] {
            std::fs::copy(from.join(f), to.join(f)).with_context(|| {
                format!("copying {} to {}", from.join(f).display(), to.display())
            })?;
        }
        Ok(version)
    }

    /// Writes the base model with the serving adapter merged into it (GGUF, merged projections
    /// in f32) to `to`; returns the version. The base must be a GGUF file.
    pub fn export_gguf(&self, to: &Path) -> Result<i64> {
        let (model, path, version, from) = {
            let guard = self.lock();
            let Some(r) = guard.as_ref() else {
                bail!("the engine is not running");
            };
            let (version, from) = r.serving_checkpoint()?;
            (r.model.clone(), r.model_path.clone(), version, from)
        };
        if path.is_dir() {
            bail!(
                "{} is a Hugging Face folder: a merged GGUF needs a GGUF base (export the adapter in PEFT's layout instead)",
                path.display()
            );
        }
        let adapter = clawrl_trainer::load_adapter(&model, &from, version as u64)
            .with_context(|| format!("loading {}", from.display()))?;
        clawrl_model::merge_to_gguf(
            &path,
            &adapter,
            to,
            clawrl_model::MergedType::F32,
            |_, _| {},
        )
        .with_context(|| format!("writing {}", to.display()))?;
        Ok(version)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        // A panic elsewhere leaves the slot itself valid.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Running {
    /// The serving version and its checkpoint directory; an error for the base (version 0).
    fn serving_checkpoint(&self) -> Result<(i64, PathBuf)> {
        let version = self.server.policy_version();
        if version == 0 {
            bail!("version 0 is the base model: there is no adapter to export yet");
        }
        Ok((
            version,
            self.data_dir
                .join("checkpoints")
                .join(format!("v{version}")),
        ))
    }
}

fn is_embedded(path: &Path) -> bool {
    path.file_name().and_then(|f| f.to_str()) == Some(clawrl_model::SMOLLM2_135M.file_name)
}

/// A directory name for a model file or folder.
fn stem(path: &Path) -> String {
    let s = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `addr` when it is free, else any free port on the same interface (another server may
/// already hold the default port).
fn free_or_any(addr: SocketAddr) -> SocketAddr {
    if addr.port() == 0 || TcpListener::bind(addr).is_ok() {
        return addr;
    }
    tracing::warn!(%addr, "address in use; listening on a free port instead");
    SocketAddr::new(addr.ip(), 0)
}
