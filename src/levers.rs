//! The training switches `serve` and `simulate` share: a preset, then the levers beyond the
//! paper (README, "Extensions"), each overriding the preset.

use anyhow::Result;
use clap::{Args, ValueEnum};
use clawrl_objective::Support;
use clawrl_server::TrainingSettings;

/// A starting configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Preset {
    /// DESIGN.md §2 exactly: the student's top-k support, one pass, no extension, lr 1e-4.
    Paper,
    /// The default: accepted-retry distillation, the forward KL, the paper's OPD support, two
    /// passes per batch, lr 5e-4 and β = 1, which learn what the paper's setting does not (README,
    /// "Simulated users").
    Extensions,
    /// DESIGN.md §2 for general agents: the paper's setting with C = 2 and β = 0.01 (the
    /// default of `clawrl agent train`).
    Agentic,
}

impl Preset {
    /// The preset's settings.
    pub(crate) fn settings(self) -> TrainingSettings {
        match self {
            Preset::Paper => TrainingSettings::default(),
            Preset::Extensions => TrainingSettings::extensions(),
            Preset::Agentic => TrainingSettings::agentic(),
        }
    }
}

#[derive(Args, Clone, Debug)]
pub(crate) struct Levers {
    /// Start from these settings; the flags below override single levers.
    #[arg(long, value_enum, default_value = "extensions")]
    pub(crate) preset: Preset,
    /// Learning rate (default: the preset's).
    #[arg(long)]
    pub(crate) lr: Option<f64>,
    /// The OPD support S_i: student (the paper), teacher or union.
    #[arg(long)]
    pub(crate) support: Option<Support>,
    /// λ of the forward KL toward the hinted teacher over its top-k (0: off).
    #[arg(long, value_name = "LAMBDA")]
    pub(crate) fkl: Option<f64>,
    /// Weight of accepted-retry distillation: an answer accepted after a correction also
    /// trains under the original prompt (0: off).
    #[arg(long, value_name = "WEIGHT")]
    pub(crate) retry: Option<f64>,
    /// Optimizer passes over each batch (1: the paper's, ρ = 1).
    #[arg(long)]
    pub(crate) epochs: Option<usize>,
    /// Retry replay: every step also trains this many earlier accepted retries, drawn from
    /// those already trained, on their retry term and the β brake (0: off; at most 64).
    #[arg(long, value_name = "N")]
    pub(crate) replay: Option<usize>,
    /// w_RL, the weight of the evaluative (policy-gradient) term.
    #[arg(long, value_name = "WEIGHT")]
    pub(crate) w_rl: Option<f64>,
    /// w_OPD, the weight of the directive (on-policy distillation) term.
    #[arg(long, value_name = "WEIGHT")]
    pub(crate) w_opd: Option<f64>,
    /// β of the KL to the base model (0: off): a brake on drift.
    #[arg(long)]
    pub(crate) beta: Option<f64>,
}

impl Levers {
    /// The preset with the given levers applied, checked.
    pub(crate) fn settings(&self) -> Result<TrainingSettings> {
        let mut t = self.preset.settings();
        set(&mut t.lr, self.lr);
        set(&mut t.support, self.support);
        set(&mut t.w_fkl, self.fkl);
        set(&mut t.w_retry, self.retry);
        set(&mut t.epochs, self.epochs);
        set(&mut t.replay, self.replay);
        set(&mut t.w_rl, self.w_rl);
        set(&mut t.w_opd, self.w_opd);
        set(&mut t.beta, self.beta);
        t.validate()?;
        Ok(t)
    }
}

/// A lever given on the command line replaces the preset's value.
fn set<T>(slot: &mut T, lever: Option<T>) {
    if let Some(v) = lever {
        *slot = v;
    }
}
