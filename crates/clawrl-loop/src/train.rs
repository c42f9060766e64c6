//! TRAIN (DESIGN.md §1): the training worker, a thread of its own that takes a batch when
//! `batch_size` samples are pending, steps the hybrid objective and hands the result to
//! `publish.rs`. It runs at a lower CPU priority in its own thread pool and pauses at
//! every projection while a request waits for its first token, so serving keeps answering
//! promptly while it works.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use clawrl_objective::{group_advantages, step_reward};
use clawrl_store::Sample;
use clawrl_trainer::{Teacher, TrainSample, Trainer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::{error, info_span, warn};

use crate::error::{Error, Result};
use crate::events::Event;
use crate::publish::{TrainerSetup, activate, load, publish_step};
use crate::settings::TrainingSettings;
use crate::{Component, Loop};

/// Messages to the training thread.
pub(crate) enum Control {
    /// New samples may be pending.
    Wake,
    /// Settings changed.
    Settings(TrainingSettings),
    /// Serve (and continue training from) an earlier version; the reply says how it went.
    Activate(i64, oneshot::Sender<Result<()>>),
    /// Finish and end the thread.
    Stop,
}

/// A stored sample as the trainer takes it.
fn train_sample(s: &Sample) -> TrainSample {
    TrainSample {
        prompt: s.prompt_ids.clone(),
        response: s.response_ids.clone(),
        advantage: s.advantage.map(|a| a as f32),
        teacher: s.teacher.as_ref().map(|t| Teacher {
            prompts: t.prompts.clone(),
            per_position: t.per_position.clone(),
        }),
        retry_prompt: s.retry_prompt_ids.clone(),
    }
}

/// A trained accepted-retry sample replayed: its response y' under the original prompt s_t
/// (L^retry) and the β brake under its own prompt; no vote and no teacher train again.
fn replay_sample(s: &Sample) -> TrainSample {
    TrainSample {
        advantage: None,
        teacher: None,
        ..train_sample(s)
    }
}

/// The advantage each sample of `batch` trains with, same order: r_t (as stored) for a
/// conversation's turn; for a rollout's step the step reward `R_t = o + (1/m)·Σ_j r_t^(j)`,
/// standardised among the batch's rollout steps that share its step index t (DESIGN.md §2,
/// general agents; `clawrl_objective::group_advantages`).
fn batch_advantages(batch: &[Sample]) -> Vec<Option<f64>> {
    let steps: Vec<(usize, &clawrl_store::RolloutStep)> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.rollout.as_ref().map(|r| (i, r)))
        .collect();
    let index: Vec<usize> = steps.iter().map(|(_, r)| r.step_index).collect();
    let rewards: Vec<f32> = steps
        .iter()
        .map(|(_, r)| step_reward(r.outcome as f32, &r.votes))
        .collect();
    let mut out: Vec<Option<f64>> = batch.iter().map(|s| s.advantage).collect();
    for ((i, _), a) in steps.iter().zip(group_advantages(&index, &rewards)) {
        out[*i] = Some(f64::from(a));
    }
    out
}

impl Loop {
    /// Serves an earlier policy version (roll back); training continues from it. Waits for the
    /// training thread to load it.
    pub async fn activate(&self, version: i64) -> Result<()> {
        self.store.version(version).await?;
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Activate(version, tx))
            .map_err(|_| Error::Stopped("training thread"))?;
        rx.await.map_err(|_| Error::Stopped("training thread"))?
    }
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

/// The training thread's state.
struct Worker {
    lp: Arc<Loop>,
    setup: TrainerSetup,
    trainer: Trainer,
    settings: TrainingSettings,
    rt: Handle,
}

/// Starts the training thread with `trainer` (restored by `publish.rs`).
pub(crate) fn spawn(
    lp: Arc<Loop>,
    setup: TrainerSetup,
    trainer: Trainer,
    rx: Receiver<Control>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = Handle::current();
    let settings = lp.settings();
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
                lp,
                setup,
                trainer,
                settings,
                rt,
            };
            pool.install(move || w.run(&rx));
        })
}

/// Marks a training step under way (`Loop::stepping`) until dropped, whichever way the step ends.
struct Stepping(Arc<Loop>);

impl Stepping {
    fn start(lp: &Arc<Loop>) -> Self {
        lp.stepping.store(true, Ordering::Release);
        Self(lp.clone())
    }
}

impl Drop for Stepping {
    fn drop(&mut self) {
        self.0.stepping.store(false, Ordering::Release);
    }
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
            // The untrained control serves and judges; its samples stay pending.
            if self.settings.paused || !self.settings.method.trains() {
                continue;
            }
            let pending = match self.rt.block_on(self.lp.store.count_pending()) {
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
                self.trainer.config = s.train_config();
                // The optimizer keeps its moments and β's; lr, decay and the clip follow.
                let (new, cur) = (s.adamw(), self.trainer.optimizer.config);
                self.trainer.optimizer.config = clawrl_trainer::AdamWConfig {
                    lr: new.lr,
                    weight_decay: new.weight_decay,
                    max_grad_norm: new.max_grad_norm,
                    ..cur
                };
                // Resuming is the owner's word that the cause is fixed; a new failure reports again.
                if self.settings.paused && !s.paused {
                    self.lp.resolve(Component::Training);
                }
                self.settings = s;
            }
            Control::Activate(version, reply) => {
                let _span = info_span!("activate", version).entered();
                let result = activate(&self.lp, &self.setup, &self.settings, version, &self.rt)
                    .map(|t| self.trainer = t);
                let _ = reply.send(result);
            }
        }
    }

    /// Pauses training after a failure, so that a bad batch does not fail in a loop; its
    /// samples stay pending.
    fn pause(&mut self, what: &str, e: &Error) {
        error!(error = %e, "{what} failed; training paused");
        self.lp.report(
            Component::Training,
            format!(
                "{what} failed ({e}); training is paused and its samples stay pending: resume it \
                 (POST /studio/training/settings with \"paused\": false) once fixed"
            ),
        );
        self.settings.paused = true;
        // Validated settings stay valid with `paused` set.
        let _ = self.lp.set_settings(self.settings.clone());
        self.lp.emit(Event::TrainFailed {
            error: e.to_string(),
        });
    }

    /// Retry replay (README, "Extensions"): `replay` earlier accepted-retry samples, drawn
    /// uniformly without replacement from those that trained the served version's ancestors
    /// (so a roll back forgets what it abandoned; seeded by the step, so a run repeats), when
    /// the retry term trains at all. A store error skips the replay, not the step.
    fn replay(&self, step: usize) -> Vec<Sample> {
        let cfg = &self.trainer.config.objective;
        let n = self.settings.replay;
        if n == 0 || !cfg.method.directive() || cfg.w_retry == 0.0 {
            return Vec::new();
        }
        let drawn = self.rt.block_on(async {
            let live = self.lp.live().version;
            let pool = self.lp.store.trained_retry_ids(live).await?;
            let mut rng = StdRng::seed_from_u64(step as u64);
            let ids: Vec<i64> = rand::seq::index::sample(&mut rng, pool.len(), n.min(pool.len()))
                .into_iter()
                .map(|i| pool[i])
                .collect();
            self.lp.store.samples_by_id(&ids).await
        });
        drawn.unwrap_or_else(|e| {
            warn!(error = %e, "reading samples to replay");
            Vec::new()
        })
    }

    fn step(&mut self) {
        let _stepping = Stepping::start(&self.lp);
        let mut batch: Vec<Sample> = match self.rt.block_on(
            self.lp
                .store
                .pending_samples(self.settings.batch_size as i64),
        ) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "reading samples");
                return;
            }
        };
        // Step numbers count optimizer steps: `epochs` per batch.
        let step = self.trainer.steps() + self.trainer.config.epochs.max(1);
        let replayed = self.replay(step);
        let _span = info_span!(
            "train_step",
            step,
            samples = batch.len(),
            replayed = replayed.len()
        )
        .entered();
        self.lp.emit(Event::TrainStarted {
            step,
            samples: batch.len(),
        });
        let advantages = batch_advantages(&batch);
        for (s, a) in batch.iter_mut().zip(advantages) {
            s.advantage = a;
        }
        let mut samples: Vec<TrainSample> = batch.iter().map(train_sample).collect();
        samples.extend(replayed.iter().map(replay_sample));
        let t0 = Instant::now();
        let metrics = match self.trainer.train_step(&samples) {
            Ok(m) => m,
            Err(e) => return self.pause("the training step", &e.into()),
        };
        let seconds = t0.elapsed().as_secs_f64();
        if let Err(e) = publish_step(
            &self.lp,
            &self.setup,
            &self.trainer,
            (&batch, replayed.len()),
            &metrics,
            seconds,
            &self.rt,
        ) {
            // The step's samples stay pending: the trainer goes back to the served version, so
            // that they are not trained twice once training resumes.
            let live = self.lp.live().version;
            match load(&self.lp, &self.setup, &self.settings, live, &self.rt) {
                Ok((trainer, _)) => self.trainer = trainer,
                Err(e) => warn!(error = %e, version = live, "reloading the served version"),
            }
            self.pause("publishing the step", &e);
        }
    }
}
