//! TRAIN → PUBLISH (DESIGN.md §1): a thread of its own that takes a batch when `batch_size`
//! samples are pending, steps the hybrid objective, checkpoints, records the step, and swaps
//! the new adapter into serving between requests. It runs at a lower CPU priority in its own
//! thread pool, and pauses at every projection while a request waits for its first token, so
//! serving keeps answering promptly while it works.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use clawrl_model::Model;
use clawrl_objective::{Method, ObjectiveConfig};
use clawrl_store::Sample;
use clawrl_trainer::{
    AdamWConfig, Gate, LoraConfig, StepMetrics, TrainConfig, TrainSample, TrainablePolicy, Trainer,
};
use serde_json::json;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{error, info, info_span, warn};

use crate::state::{Event, Live, Shared, TrainingSettings};

/// Messages to the training thread.
pub enum Control {
    /// New samples may be pending.
    Wake,
    /// Settings changed.
    Settings(TrainingSettings),
    /// Serve (and continue training from) an earlier version; the reply says how it went.
    Activate(i64, oneshot::Sender<Result<(), String>>),
    /// Finish and end the thread.
    Stop,
}

/// What the training thread needs to start.
pub struct TrainerSetup {
    /// The base model.
    pub model: Arc<Model>,
    /// Adapter shape.
    pub lora: LoraConfig,
    /// Checkpoints go under this directory, one per version.
    pub checkpoints: PathBuf,
    /// Seed of fresh adapters.
    pub seed: u64,
    /// Threads of the training pool.
    pub threads: usize,
    /// Held by serving while a request waits for its first token.
    pub gate: Gate,
}

fn objective(s: &TrainingSettings) -> TrainConfig {
    TrainConfig {
        objective: ObjectiveConfig {
            method: Method::parse(&s.method).unwrap_or_default(),
            w_rl: s.w_rl,
            w_opd: s.w_opd,
            eps_lo: s.eps_lo,
            eps_hi: s.eps_hi,
            delta_clip: s.delta_clip,
            beta: s.beta,
        },
        top_k: s.top_k,
        intersect_support: s.intersect_support,
    }
}

fn adamw(s: &TrainingSettings) -> AdamWConfig {
    AdamWConfig {
        lr: s.lr,
        weight_decay: s.weight_decay,
        max_grad_norm: s.max_grad_norm,
        ..Default::default()
    }
}

fn fresh(setup: &TrainerSetup, s: &TrainingSettings) -> clawrl_trainer::Result<Trainer> {
    let mut policy = TrainablePolicy::new(&setup.model, setup.lora.clone(), setup.seed)?;
    policy.set_gate(setup.gate.clone());
    Trainer::new(policy, adamw(s), objective(s))
}

/// The training thread's state.
struct Worker {
    state: Shared,
    setup: TrainerSetup,
    trainer: Trainer,
    settings: TrainingSettings,
    rt: Handle,
}

/// Lowers the calling thread's CPU priority (Linux: per-thread nice) so training yields to
/// serving; elsewhere a no-op.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the current thread; failure only leaves the priority as is.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Restores the served version at start: the active version's checkpoint, or a fresh adapter.
/// Returns the trainer and the version it holds.
pub fn restore(
    state: &Shared,
    setup: &TrainerSetup,
    settings: &TrainingSettings,
    rt: &Handle,
) -> Result<(Trainer, Live), String> {
    let mut trainer = fresh(setup, settings).map_err(|e| e.to_string())?;
    let active = rt
        .block_on(state.store.setting("active_version"))
        .map_err(|e| e.to_string())?
        .and_then(|v| v.as_i64());
    let version = match active {
        Some(v) => v,
        None => rt
            .block_on(state.store.versions())
            .map_err(|e| e.to_string())?
            .last()
            .map_or(0, |v| v.version),
    };
    if version == 0 {
        return Ok((trainer, Live::default()));
    }
    let v = rt
        .block_on(state.store.version(version))
        .map_err(|e| e.to_string())?;
    let dir = v
        .checkpoint
        .ok_or_else(|| format!("policy version {version} has no checkpoint"))?;
    let step = trainer
        .resume_from(Path::new(&dir))
        .map_err(|e| format!("resuming from {dir}: {e}"))?;
    // The optimizer's settings of the checkpoint yield to the server's.
    trainer.optimizer.config = adamw(settings);
    info!(version, step, "resumed training");
    let adapter = trainer
        .policy
        .publish(version as u64)
        .map_err(|e| e.to_string())?;
    Ok((
        trainer,
        Live {
            version,
            adapter: Some(Arc::new(adapter)),
        },
    ))
}

/// Starts the training thread.
pub fn spawn(
    state: Shared,
    setup: TrainerSetup,
    trainer: Trainer,
    rx: Receiver<Control>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = Handle::current();
    let settings = state.settings();
    std::thread::Builder::new()
        .name("clawrl-train".into())
        .spawn(move || {
            lower_priority();
            let pool = match rayon::ThreadPoolBuilder::new()
                .num_threads(setup.threads)
                .thread_name(|i| format!("clawrl-train-{i}"))
                .start_handler(|_| lower_priority())
                .build()
            {
                Ok(p) => p,
                Err(e) => {
                    error!(error = %e, "cannot start the training threads");
                    return;
                }
            };
            let mut w = Worker {
                state,
                setup,
                trainer,
                settings,
                rt,
            };
            pool.install(move || w.run(&rx));
        })
}

impl Worker {
    fn run(&mut self, rx: &Receiver<Control>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(Control::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(c) => self.handle(c),
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Drain what else arrived before deciding to train.
            while let Ok(c) = rx.try_recv() {
                if matches!(c, Control::Stop) {
                    return;
                }
                self.handle(c);
            }
            if self.settings.paused {
                continue;
            }
            let pending = match self.rt.block_on(self.state.store.count_pending()) {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "counting samples");
                    continue;
                }
            };
            if pending >= self.settings.batch_size as i64 {
                self.step();
            }
        }
    }

    fn handle(&mut self, c: Control) {
        match c {
            Control::Wake | Control::Stop => {}
            Control::Settings(s) => {
                self.trainer.config = objective(&s);
                let steps = self.trainer.optimizer.config;
                self.trainer.optimizer.config = AdamWConfig {
                    lr: s.lr,
                    weight_decay: s.weight_decay,
                    max_grad_norm: s.max_grad_norm,
                    ..steps
                };
                self.settings = s;
            }
            Control::Activate(version, reply) => {
                let _ = reply.send(self.activate(version));
            }
        }
    }

    fn activate(&mut self, version: i64) -> Result<(), String> {
        let _span = info_span!("activate", version).entered();
        let store = &self.state.store;
        let v = self
            .rt
            .block_on(store.version(version))
            .map_err(|e| e.to_string())?;
        let mut trainer = fresh(&self.setup, &self.settings).map_err(|e| e.to_string())?;
        let adapter = match &v.checkpoint {
            None => None,
            Some(dir) => {
                trainer
                    .resume_from(Path::new(dir))
                    .map_err(|e| format!("loading {dir}: {e}"))?;
                trainer.optimizer.config = adamw(&self.settings);
                Some(Arc::new(
                    trainer
                        .policy
                        .publish(version as u64)
                        .map_err(|e| e.to_string())?,
                ))
            }
        };
        self.rt
            .block_on(store.set_setting("active_version", &json!(version)))
            .map_err(|e| e.to_string())?;
        self.trainer = trainer;
        self.state.publish(Live { version, adapter });
        info!(version, "activated");
        Ok(())
    }

    fn step(&mut self) {
        let store = &self.state.store;
        let batch: Vec<Sample> = match self
            .rt
            .block_on(store.pending_samples(self.settings.batch_size as i64))
        {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "reading samples");
                return;
            }
        };
        let step = self.trainer.steps() + 1;
        let _span = info_span!("train_step", step, samples = batch.len()).entered();
        self.state.emit(Event::TrainStarted {
            step,
            samples: batch.len(),
        });
        let samples: Vec<TrainSample> = batch
            .iter()
            .map(|s| TrainSample {
                prompt: s.prompt_ids.0.clone(),
                response: s.response_ids.0.clone(),
                advantage: s.advantage.map(|a| a as f32),
                hint_prompt: s.hint_prompt_ids.as_ref().map(|h| h.0.clone()),
            })
            .collect();
        let t0 = Instant::now();
        let metrics = match self.trainer.train_step(&samples) {
            Ok(m) => m,
            Err(e) => {
                // Samples stay pending; pausing keeps a bad batch from failing in a loop.
                error!(error = %e, "training step failed; training paused");
                self.settings.paused = true;
                self.state.set_settings(self.settings.clone());
                self.state.emit(Event::TrainFailed {
                    error: e.to_string(),
                });
                return;
            }
        };
        let seconds = t0.elapsed().as_secs_f64();
        if let Err(e) = self.publish(&batch, &metrics, seconds) {
            error!(error = %e, "publishing the step failed; training paused");
            self.settings.paused = true;
            self.state.set_settings(self.settings.clone());
            self.state.emit(Event::TrainFailed { error: e });
        }
    }

    fn publish(&mut self, batch: &[Sample], m: &StepMetrics, seconds: f64) -> Result<(), String> {
        let store = &self.state.store;
        let version = self
            .rt
            .block_on(store.versions())
            .map_err(|e| e.to_string())?
            .last()
            .map_or(0, |v| v.version)
            + 1;
        let dir = self.setup.checkpoints.join(format!("v{version}"));
        self.trainer
            .save_checkpoint_to(&dir)
            .map_err(|e| format!("checkpoint {}: {e}", dir.display()))?;
        let metrics = metrics_json(m, batch, seconds);
        let ids: Vec<i64> = batch.iter().map(|s| s.id).collect();
        self.rt
            .block_on(store.record_step(
                m.step as i64,
                version,
                &dir.to_string_lossy(),
                &metrics,
                seconds,
                &ids,
            ))
            .map_err(|e| e.to_string())?;
        self.rt
            .block_on(store.set_setting("active_version", &json!(version)))
            .map_err(|e| e.to_string())?;
        let adapter = self
            .trainer
            .policy
            .publish(version as u64)
            .map_err(|e| e.to_string())?;
        self.state.counters.steps.fetch_add(1, Ordering::Relaxed);
        self.state.emit(Event::Trained {
            step: m.step,
            version,
            metrics,
        });
        self.state.publish(Live {
            version,
            adapter: Some(Arc::new(adapter)),
        });
        info!(
            step = m.step,
            version,
            seconds,
            loss = m.loss.loss,
            "published"
        );
        Ok(())
    }
}

/// A step's metrics as stored and streamed.
fn metrics_json(m: &StepMetrics, batch: &[Sample], seconds: f64) -> serde_json::Value {
    let l = &m.loss;
    let rewards: Vec<f64> = batch.iter().filter_map(|s| s.advantage).collect();
    let mean_reward = if rewards.is_empty() {
        None
    } else {
        Some(rewards.iter().sum::<f64>() / rewards.len() as f64)
    };
    let overlaps: Vec<f64> = batch
        .iter()
        .filter_map(|s| {
            let sel = &s.selection.as_ref()?.0;
            let chosen = sel["chosen"].as_u64()? as usize;
            let total = sel["totals"].get(chosen)?.as_f64()?;
            let positions = s.response_ids.0.len().max(1) as f64;
            Some(total / positions)
        })
        .collect();
    let mean_overlap = if overlaps.is_empty() {
        None
    } else {
        Some(overlaps.iter().sum::<f64>() / overlaps.len() as f64)
    };
    json!({
        "loss": l.loss,
        "loss_rl": l.loss_rl,
        "loss_opd": l.loss_opd,
        "kl": l.kl,
        "clip_frac": l.clip_frac,
        "opd_clip_frac": l.opd_clip_frac,
        "mean_abs_delta": l.mean_abs_delta,
        "delta_clip_frac": l.delta_clip_frac,
        "mean_ratio": l.mean_ratio,
        "rl_samples": l.rl_samples,
        "opd_samples": l.opd_samples,
        "samples": m.samples,
        "tokens": m.tokens,
        "entropy": m.entropy,
        "grad_norm": m.grad_norm,
        "mean_reward": mean_reward,
        "mean_overlap": mean_overlap,
        "seconds": seconds,
    })
}
