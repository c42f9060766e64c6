//! What the loop tells the Studio as it works (the event stream), and its counters.

use std::sync::atomic::{AtomicU64, Ordering};

use clawrl_objective::LossMetrics;
use clawrl_store::{HintStatus, NextKind, Sample, TurnType};
use clawrl_trainer::StepMetrics;
use serde::{Deserialize, Serialize};

use crate::settings::TrainingSettings;

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
        turn_type: TurnType,
        /// Version that answered.
        policy_version: i64,
    },
    /// A next state arrived for a turn.
    NextState {
        /// Turn id.
        turn_id: i64,
        /// What it is.
        kind: NextKind,
    },
    /// A next state was judged.
    Judged {
        /// Turn id.
        turn_id: i64,
        /// r_t.
        reward: i8,
        /// The candidate hints, in selection order.
        hints: Vec<String>,
        /// The candidates chosen at one position at least (one in sequence mode).
        used: Vec<usize>,
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
        status: HintStatus,
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
        metrics: StepRecord,
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
    /// A request was refused (a 4xx), with why.
    Refused {
        /// HTTP method.
        method: String,
        /// Path.
        path: String,
        /// HTTP status.
        status: u16,
        /// Why.
        reason: String,
        /// The request's session, when known.
        session_id: Option<String>,
    },
    /// Training settings changed.
    Settings {
        /// The new settings.
        settings: TrainingSettings,
    },
}

impl Event {
    /// The event's `type` tag, as the stream names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Turn { .. } => "turn",
            Self::NextState { .. } => "next_state",
            Self::Judged { .. } => "judged",
            Self::Sample { .. } => "sample",
            Self::Hint { .. } => "hint",
            Self::TrainStarted { .. } => "train_started",
            Self::Trained { .. } => "trained",
            Self::TrainFailed { .. } => "train_failed",
            Self::Published { .. } => "published",
            Self::Refused { .. } => "refused",
            Self::Settings { .. } => "settings",
        }
    }
}

/// A training step's metrics as stored and streamed (`/studio/steps`, `trained` events).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The objective's measurements (loss, its parts, clip fractions, ratios, counts).
    #[serde(flatten)]
    pub loss: LossMetrics,
    /// Response tokens trained: the batch's and the replayed samples'.
    pub tokens: usize,
    /// Mean entropy of π_cur over the trained response positions (the replayed included), nats.
    pub entropy: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Mean r_t over the batch's RL samples.
    pub mean_reward: Option<f64>,
    /// Mean O[h*_i, i] over the OPD samples' positions, in tokens (of k).
    pub mean_overlap: Option<f64>,
    /// Earlier accepted-retry samples the step replayed besides the batch (retry replay).
    #[serde(default)]
    pub replayed: usize,
    /// Wall time of the step, seconds.
    pub seconds: f64,
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

impl StepRecord {
    /// The record of a step `m` over `batch` and `replayed` earlier samples (retry replay) that
    /// took `seconds`.
    pub fn new(m: &StepMetrics, batch: &[Sample], replayed: usize, seconds: f64) -> Self {
        let rewards: Vec<f64> = batch.iter().filter_map(|s| s.advantage).collect();
        let overlaps: Vec<f64> = batch
            .iter()
            .filter_map(|s| s.selection.as_ref())
            .filter(|r| !r.selection.per_position.is_empty())
            .map(|r| r.selection.mean_overlap(&r.overlap))
            .collect();
        Self {
            loss: m.loss,
            tokens: m.tokens,
            entropy: m.entropy,
            grad_norm: m.grad_norm,
            mean_reward: mean(&rewards),
            mean_overlap: mean(&overlaps),
            replayed,
            seconds,
        }
    }
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
