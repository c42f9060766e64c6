//! The live loop of OpenClaw-RL (DESIGN.md §1), between the API and the trainer. One file per
//! stage:
//!
//! - [`serve`]: SERVE — generate with the live policy, record the turn;
//! - [`pair`]: PAIR — the next main-line request carries the previous turn's next state;
//!   quiet sessions end;
//! - [`judge`]: JUDGE — the judge worker: m votes → r_t, candidate hints, then SELECT and
//!   SAMPLE in the same transaction;
//! - [`select`]: SELECT — the teacher under every candidate, O[h,i], h* (or h*_i per position);
//! - [`sample`]: SAMPLE — the RL and OPD parts of a turn's sample; annotators' hints compete
//!   with the judge's;
//! - `train.rs`: TRAIN — the training worker: a batch at `batch_size` pending samples, one step;
//! - `publish.rs`: PUBLISH — checkpoint, record, swap the adapter in between requests; serve an
//!   earlier version (roll back, [`Loop::activate`]).
//!
//! [`Loop`] is the live state every stage and every API handler shares; [`start`] opens it
//! and starts the workers. Nothing here speaks HTTP: `clawrl-server` does.

mod error;
mod events;
mod health;
pub mod judge;
pub mod pair;
mod publish;
pub mod sample;
pub mod select;
pub mod serve;
mod settings;
mod train;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clawrl_model::{Batcher, LoraAdapter, Model};
use clawrl_signals::{HttpJudge, Judge, ModelJudge, RulesJudge};
use clawrl_store::Store;
use clawrl_trainer::LoraConfig;
use tokio::sync::{Notify, broadcast};
use tracing::info;

pub use error::{Error, Result};
pub use events::{Counters, Event, StepRecord};
pub use health::{Component, Problem};
pub use select::Analysis;
pub use settings::TrainingSettings;

use crate::train::Control;

/// Which judge reads replies and tool outputs (explicit feedback always goes to the rules).
#[derive(Clone, Debug)]
pub enum JudgeChoice {
    /// The rules judge.
    Rules,
    /// The served base model with the judge prompt, sampled at this temperature.
    Model {
        /// Sampling temperature of each vote.
        temperature: f32,
    },
    /// An OpenAI-compatible endpoint.
    Http {
        /// Base URL, e.g. `http://localhost:8000/v1`.
        url: String,
        /// Model name to ask for.
        model: String,
        /// Bearer key.
        key: Option<String>,
    },
}

/// What the loop needs to start.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// Checkpoints directory (one sub-directory per policy version).
    pub checkpoints: PathBuf,
    /// The judge.
    pub judge: JudgeChoice,
    /// Votes per next state (m), 1..=16.
    pub votes: usize,
    /// Sessions end after this long without a request.
    pub idle_timeout: Duration,
    /// Starting training settings.
    pub training: TrainingSettings,
    /// Adapter shape.
    pub lora: LoraConfig,
    /// Seed of fresh adapters.
    pub seed: u64,
    /// Threads the training pool uses.
    pub train_threads: usize,
    /// Concurrent requests decoded together in one model step, at most (continuous
    /// batching); more wait, prefilled, for a place, so 1 decodes one request at a time.
    pub max_batch: usize,
}

impl LoopConfig {
    /// Defaults (rules judge, one vote, 15 minutes idle, the default training settings and
    /// adapter, one training thread) with checkpoints under `checkpoints`.
    pub fn new(checkpoints: &std::path::Path) -> Self {
        Self {
            checkpoints: checkpoints.to_path_buf(),
            judge: JudgeChoice::Rules,
            votes: 1,
            idle_timeout: Duration::from_secs(15 * 60),
            training: TrainingSettings::default(),
            lora: LoraConfig::default(),
            seed: 0,
            train_threads: 1,
            max_batch: clawrl_model::DEFAULT_MAX_BATCH,
        }
    }
}

/// The policy being served: a version and its adapter (none for the base, version 0).
#[derive(Clone, Default)]
pub struct Live {
    /// Policy version.
    pub version: i64,
    /// The adapter on top of the base; `None` serves the base.
    pub adapter: Option<Arc<LoraAdapter>>,
}

/// The live state every stage shares: the model, the served policy, the store, the training
/// settings, the judge, the event bus and the counters.
pub struct Loop {
    /// The base model.
    pub model: Arc<Model>,
    /// The store.
    pub store: Store,
    /// The judge of replies and tool outputs.
    pub judge: Arc<dyn Judge>,
    /// Votes per next state (m).
    pub votes: usize,
    /// Sessions end after this long without a request.
    pub idle_timeout: Duration,
    /// Counters for `/metrics`.
    pub counters: Counters,
    /// Held while a request waits for its first token: training pauses meanwhile.
    pub gate: clawrl_trainer::Gate,
    /// Decodes the requests in flight together.
    pub batcher: Batcher,
    live: RwLock<Live>,
    /// True from a training step's batch read until its version is served (or it failed).
    stepping: std::sync::atomic::AtomicBool,
    settings: RwLock<TrainingSettings>,
    control: std::sync::mpsc::Sender<Control>,
    judge_wake: Notify,
    events: broadcast::Sender<Event>,
    problems: health::Problems,
}

impl Loop {
    /// The served policy now.
    pub fn live(&self) -> Live {
        self.live
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Serves `live` from the next request on; requests already running finish on the old one.
    /// The only way a policy reaches serving (`publish.rs` calls it).
    fn swap(&self, live: Live) {
        let version = live.version;
        match self.live.write() {
            Ok(mut l) => *l = live,
            Err(p) => *p.into_inner() = live,
        }
        self.emit(Event::Published { version });
    }

    /// Whether a training step is under way: its batch is read and its version not yet
    /// served. Its samples stop counting as pending before the swap, so a client waiting for
    /// training to catch up needs this too.
    pub fn stepping(&self) -> bool {
        self.stepping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The training settings now.
    pub fn settings(&self) -> TrainingSettings {
        self.settings
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Validates and applies new training settings, and tells the trainer.
    pub fn set_settings(&self, s: TrainingSettings) -> Result<()> {
        s.validate()?;
        match self.settings.write() {
            Ok(mut cur) => *cur = s.clone(),
            Err(p) => *p.into_inner() = s.clone(),
        }
        // The trainer thread is gone only at shutdown.
        let _ = self.control.send(Control::Settings(s.clone()));
        self.emit(Event::Settings { settings: s });
        Ok(())
    }

    /// Sends an event to every subscriber (none listening is fine).
    pub fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// A receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Wakes the trainer to look at the pending samples.
    fn wake_trainer(&self) {
        let _ = self.control.send(Control::Wake);
    }

    /// Wakes the judge worker: a next state is waiting.
    fn wake_judge(&self) {
        self.judge_wake.notify_one();
    }
}

/// The running loop: the shared state and its workers.
pub struct LoopHandle {
    /// The shared state.
    pub state: Arc<Loop>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    trainer: Option<std::thread::JoinHandle<()>>,
}

impl LoopHandle {
    /// Stops the workers and the training thread (after its current step).
    pub async fn shutdown(mut self) {
        for w in &self.workers {
            w.abort();
        }
        let _ = self.state.control.send(Control::Stop);
        if let Some(t) = self.trainer.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Opens the loop on `store`: builds the judge, restores the served version (the active
/// version's checkpoint, or the base), and starts the judge worker, the idle-session worker and
/// the training thread. Samples left pending by an earlier run train as soon as there are
/// enough.
pub async fn start(config: LoopConfig, model: Arc<Model>, store: Store) -> Result<LoopHandle> {
    config.training.validate()?;
    if !(1..=16).contains(&config.votes) {
        return Err(Error::Config(format!(
            "votes must be 1..=16, got {}",
            config.votes
        )));
    }
    let judge: Arc<dyn Judge> = match &config.judge {
        JudgeChoice::Rules => Arc::new(RulesJudge),
        JudgeChoice::Model { temperature } => {
            Arc::new(ModelJudge::new(model.clone(), *temperature))
        }
        JudgeChoice::Http { url, model, key } => Arc::new(HttpJudge::new(url, model, key.clone())?),
    };
    let (control, control_rx) = std::sync::mpsc::channel();
    let (events, _) = broadcast::channel(1024);
    let state = Arc::new(Loop {
        model: model.clone(),
        store,
        judge,
        votes: config.votes,
        idle_timeout: config.idle_timeout,
        counters: Counters::default(),
        gate: clawrl_trainer::Gate::default(),
        batcher: Batcher::new(model.clone(), config.max_batch)?,
        live: RwLock::new(Live::default()),
        stepping: Default::default(),
        settings: RwLock::new(config.training.clone()),
        control,
        judge_wake: Notify::new(),
        events,
        problems: Default::default(),
    });
    let setup = publish::TrainerSetup {
        model,
        lora: config.lora.clone(),
        checkpoints: config.checkpoints.clone(),
        seed: config.seed,
        threads: config.train_threads.max(1),
        gate: state.gate.clone(),
    };
    let trainer = {
        let (state, rt) = (state.clone(), tokio::runtime::Handle::current());
        let training = config.training.clone();
        tokio::task::spawn_blocking(move || {
            publish::restore(&state, &setup, &training, &rt).map(|t| (t, setup))
        })
        .await??
    };
    let (trainer, setup) = trainer;
    let trainer = train::spawn(state.clone(), setup, trainer, control_rx)?;
    let workers = vec![
        tokio::spawn(judge::run(state.clone())),
        tokio::spawn(pair::end_idle_sessions(state.clone())),
    ];
    state.wake_trainer();
    state.wake_judge();
    info!(
        version = state.live().version,
        judge = state.judge.name(),
        "loop started"
    );
    Ok(LoopHandle {
        state,
        workers,
        trainer: Some(trainer),
    })
}
