//! What every handler and worker shares: the model, the live policy, the store, the training
//! settings, the event bus and the counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clawrl_model::{LoraAdapter, Model};
use clawrl_objective::{Method, SelectionMode};
use clawrl_signals::Judge;
use clawrl_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, broadcast};

use crate::error::ApiError;
use crate::training::Control;

/// The policy being served: a version and its adapter (none for the base, version 0).
#[derive(Clone, Default)]
pub struct Live {
    /// Policy version.
    pub version: i64,
    /// The adapter on top of the base; `None` serves the base.
    pub adapter: Option<Arc<LoraAdapter>>,
}

/// Limits on what one request may ask.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most messages in one request.
    pub max_messages: usize,
    /// Most new tokens one request may ask for.
    pub max_new_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_messages: 512,
            max_new_tokens: 4096,
        }
    }
}

/// Training settings a user may change while the server runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingSettings {
    /// Samples per step.
    pub batch_size: usize,
    /// `combined`, `rl` or `opd`.
    pub method: String,
    /// Hint selection: `sequence`, `token`, `random` or `longest`.
    pub selection: String,
    /// k of the supports (selection and OPD).
    pub top_k: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Gradient-norm clip (0 = off).
    pub max_grad_norm: f64,
    /// C, the clip of the log-prob gap Δ.
    pub delta_clip: f64,
    /// ε_lo.
    pub eps_lo: f64,
    /// ε_hi.
    pub eps_hi: f64,
    /// w_RL.
    pub w_rl: f64,
    /// w_OPD.
    pub w_opd: f64,
    /// β of the KL to the base.
    pub beta: f64,
    /// S_i = S^q_i ∩ S^p_{i,h*}.
    pub intersect_support: bool,
    /// No steps while paused (samples keep arriving).
    pub paused: bool,
}

impl Default for TrainingSettings {
    fn default() -> Self {
        let o = clawrl_objective::ObjectiveConfig::default();
        Self {
            batch_size: 16,
            method: o.method.name().into(),
            selection: SelectionMode::default().name().into(),
            top_k: 4,
            lr: 1e-4,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            delta_clip: o.delta_clip,
            eps_lo: o.eps_lo,
            eps_hi: o.eps_hi,
            w_rl: o.w_rl,
            w_opd: o.w_opd,
            beta: o.beta,
            intersect_support: false,
            paused: false,
        }
    }
}

impl TrainingSettings {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ApiError> {
        let bad = |p: &'static str, m: String| Err(ApiError::invalid_param(p, m));
        if !(1..=1024).contains(&self.batch_size) {
            return bad(
                "batch_size",
                format!("batch_size must be 1..=1024, got {}", self.batch_size),
            );
        }
        if Method::parse(&self.method).is_none() {
            return bad(
                "method",
                format!("method must be combined, rl or opd, got {:?}", self.method),
            );
        }
        if SelectionMode::parse(&self.selection).is_none() {
            return bad(
                "selection",
                format!(
                    "selection must be sequence, token, random or longest, got {:?}",
                    self.selection
                ),
            );
        }
        if !(1..=clawrl_model::MAX_TOP_LOGPROBS).contains(&self.top_k) {
            return bad("top_k", format!("top_k must be 1..=20, got {}", self.top_k));
        }
        let positive = [("lr", self.lr), ("delta_clip", self.delta_clip)];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(name, format!("{name} must be a positive number, got {v}"));
            }
        }
        let non_negative = [
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
            ("eps_lo", self.eps_lo),
            ("eps_hi", self.eps_hi),
            ("w_rl", self.w_rl),
            ("w_opd", self.w_opd),
            ("beta", self.beta),
        ];
        for (name, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return bad(name, format!("{name} must be a number ≥ 0, got {v}"));
            }
        }
        if self.eps_lo >= 1.0 {
            return bad(
                "eps_lo",
                format!("eps_lo must be below 1, got {}", self.eps_lo),
            );
        }
        Ok(())
    }

    /// The parsed selection mode (validated settings always parse).
    pub fn selection_mode(&self) -> SelectionMode {
        SelectionMode::parse(&self.selection).unwrap_or_default()
    }
}

/// Something that happened, for the Studio's event stream.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A turn was served and recorded.
    Turn {
        /// Turn id.
        turn_id: i64,
        /// Session id.
        session_id: String,
        /// main or side.
        turn_type: clawrl_store::TurnType,
        /// Version that answered.
        policy_version: i64,
    },
    /// A next state arrived for a turn.
    NextState {
        /// Turn id.
        turn_id: i64,
        /// What it is.
        kind: clawrl_store::NextKind,
    },
    /// A next state was judged.
    Judged {
        /// Turn id.
        turn_id: i64,
        /// r_t.
        reward: i8,
        /// Candidate hints.
        hints: Vec<String>,
        /// The chosen hint's index.
        chosen: Option<usize>,
        /// The sample stored, if any.
        sample_id: Option<i64>,
    },
    /// A sample is waiting for training.
    Sample {
        /// Sample id.
        sample_id: i64,
        /// Turn id.
        turn_id: i64,
        /// Samples pending now.
        pending: i64,
    },
    /// A hint was added, accepted or rejected.
    Hint {
        /// Hint id.
        hint_id: i64,
        /// Turn id.
        turn_id: i64,
        /// candidate, accepted or rejected.
        status: clawrl_store::HintStatus,
    },
    /// A step began.
    TrainStarted {
        /// Step number it will be.
        step: usize,
        /// Samples in it.
        samples: usize,
    },
    /// A step finished.
    Trained {
        /// Step number.
        step: usize,
        /// Version it published.
        version: i64,
        /// Its metrics.
        metrics: serde_json::Value,
    },
    /// A step failed; the samples stay pending.
    TrainFailed {
        /// What went wrong.
        error: String,
    },
    /// A policy version is now served.
    Published {
        /// Version.
        version: i64,
    },
    /// Training settings changed.
    Settings {
        /// The new settings.
        settings: TrainingSettings,
    },
}

/// Request and token counters for `/metrics`.
#[derive(Default)]
pub struct Counters {
    /// Chat completions served.
    pub completions: AtomicU64,
    /// Tokens generated.
    pub tokens: AtomicU64,
    /// Requests answered with an error.
    pub errors: AtomicU64,
    /// Training steps taken since start.
    pub steps: AtomicU64,
}

impl Counters {
    /// Adds `n` to a counter.
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The shared state.
pub struct AppState {
    /// The base model.
    pub model: Arc<Model>,
    /// The id `/v1/models` reports.
    pub model_id: String,
    /// The store.
    pub store: Store,
    /// The served policy.
    pub live: RwLock<Live>,
    /// Training settings.
    pub settings: RwLock<TrainingSettings>,
    /// Messages to the training thread.
    pub control: std::sync::mpsc::Sender<Control>,
    /// Wakes the judge worker.
    pub judge_wake: Notify,
    /// The judge of replies and tool outputs.
    pub judge: Arc<dyn Judge>,
    /// Votes per next state (m).
    pub votes: usize,
    /// Keys are required.
    pub auth_required: bool,
    /// Request limits.
    pub limits: Limits,
    /// Sessions end after this long without a request.
    pub idle_timeout: Duration,
    /// The event bus.
    pub events: broadcast::Sender<Event>,
    /// Counters.
    pub counters: Counters,
    /// Held while a request waits for its first token: training pauses meanwhile.
    pub gate: clawrl_trainer::Gate,
}

impl AppState {
    /// The served policy now.
    pub fn live(&self) -> Live {
        self.live
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Swaps in a new served policy; requests already running finish on the old one.
    pub fn publish(&self, live: Live) {
        let version = live.version;
        match self.live.write() {
            Ok(mut l) => *l = live,
            Err(p) => *p.into_inner() = live,
        }
        self.emit(Event::Published { version });
    }

    /// The training settings now.
    pub fn settings(&self) -> TrainingSettings {
        self.settings
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Replaces the training settings and tells the trainer.
    pub fn set_settings(&self, s: TrainingSettings) {
        match self.settings.write() {
            Ok(mut cur) => *cur = s.clone(),
            Err(p) => *p.into_inner() = s.clone(),
        }
        // The trainer thread is gone only at shutdown.
        let _ = self.control.send(Control::Settings(s.clone()));
        self.emit(Event::Settings { settings: s });
    }

    /// Sends an event to every subscriber (none listening is fine).
    pub fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Wakes the trainer to look at the pending samples.
    pub fn wake_trainer(&self) {
        let _ = self.control.send(Control::Wake);
    }
}

/// Shared state as handlers see it.
pub type Shared = Arc<AppState>;
