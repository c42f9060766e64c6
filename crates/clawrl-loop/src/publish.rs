//! PUBLISH (DESIGN.md §1): after a step, the checkpoint (written to a temporary directory and
//! renamed), the step's record, the new policy version, and the swap of its adapter into
//! serving between requests — never a pause. Serving an earlier version (roll back) and the
//! restore at start go through the same swap.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clawrl_model::Model;
use clawrl_store::{NewVersion, Sample};
use clawrl_trainer::{Gate, LoraConfig, StepMetrics, TrainablePolicy, Trainer};
use serde_json::json;
use tokio::runtime::Handle;
use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::events::{Event, StepRecord};
use crate::settings::TrainingSettings;
use crate::{Component, Live, Loop};

/// What the training thread needs to build, load and checkpoint its trainer.
pub(crate) struct TrainerSetup {
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

/// A trainer with a fresh adapter (the base policy), set up as `settings` say.
pub(crate) fn fresh(setup: &TrainerSetup, settings: &TrainingSettings) -> Result<Trainer> {
    let mut policy = TrainablePolicy::new(&setup.model, setup.lora.clone(), setup.seed)?;
    policy.set_gate(setup.gate.clone());
    Ok(Trainer::new(
        policy,
        settings.adamw(),
        settings.train_config(),
    )?)
}

/// A trainer holding `version`'s weights (a fresh adapter for the base, version 0) and the
/// policy that serves them. Errors: [`Error::Config`] when its checkpoint cannot be read.
pub(crate) fn load(
    lp: &Loop,
    setup: &TrainerSetup,
    settings: &TrainingSettings,
    version: i64,
    rt: &Handle,
) -> Result<(Trainer, Live)> {
    let mut trainer = fresh(setup, settings)?;
    let v = rt.block_on(lp.store.version(version))?;
    let Some(dir) = v.checkpoint else {
        return Ok((trainer, Live::default()));
    };
    let step = trainer
        .resume_from(Path::new(&dir))
        .map_err(|e| Error::Config(format!("resuming from {dir}: {e}")))?;
    // The optimizer's settings of the checkpoint yield to the server's.
    trainer.optimizer.config = settings.adamw();
    info!(version, step, "loaded policy version");
    let adapter = trainer.policy.adapter_snapshot(version as u64)?;
    Ok((
        trainer,
        Live {
            version,
            adapter: Some(Arc::new(adapter)),
        },
    ))
}

/// At start: serves the active version (or, when none was set, the latest) and returns the
/// trainer that continues from it.
pub(crate) fn restore(
    lp: &Loop,
    setup: &TrainerSetup,
    settings: &TrainingSettings,
    rt: &Handle,
) -> Result<Trainer> {
    let active = rt
        .block_on(lp.store.setting("active_version"))?
        .and_then(|v| v.as_i64());
    let version = match active {
        Some(v) => v,
        None => rt
            .block_on(lp.store.versions())?
            .last()
            .map_or(0, |v| v.version),
    };
    // A checkpoint that cannot be read (corrupt, deleted) must not keep the server down: the
    // newest earlier version that loads serves instead, down to the base, and says so.
    let mut earlier: Vec<i64> = rt
        .block_on(lp.store.versions())?
        .iter()
        .map(|v| v.version)
        .filter(|&v| v < version)
        .collect();
    earlier.push(0);
    earlier.sort_unstable_by(|a, b| b.cmp(a));
    earlier.dedup();
    let mut unreadable = Vec::new();
    for v in std::iter::once(version).chain(earlier) {
        match load(lp, setup, settings, v, rt) {
            Ok((trainer, live)) => {
                if !unreadable.is_empty() {
                    lp.report(
                        Component::Checkpoint,
                        format!(
                            "{}; serving v{v} instead (the next training step continues from it)",
                            unreadable.join("; ")
                        ),
                    );
                }
                lp.swap(live);
                return Ok(trainer);
            }
            Err(Error::Config(e)) => {
                error!(version = v, error = %e, "cannot load the checkpoint");
                unreadable.push(format!("the checkpoint of v{v} cannot be read ({e})"));
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Config(unreadable.join("; ")))
}

/// Serves an earlier `version` (roll back) and returns the trainer that continues from it.
pub(crate) fn activate(
    lp: &Loop,
    setup: &TrainerSetup,
    settings: &TrainingSettings,
    version: i64,
    rt: &Handle,
) -> Result<Trainer> {
    let (trainer, live) = load(lp, setup, settings, version, rt)?;
    rt.block_on(lp.store.set_setting("active_version", &json!(version)))?;
    lp.swap(live);
    info!(version, "activated");
    Ok(trainer)
}

/// Publishes the step `trainer` just took over `batch` (and `replayed` earlier samples):
/// checkpoint, record (its samples marked trained, the new version active, its parent the
/// version served until now, which the trainer continued from), swap. Returns the new version.
pub(crate) fn publish_step(
    lp: &Loop,
    setup: &TrainerSetup,
    trainer: &Trainer,
    (batch, replayed): (&[Sample], usize),
    m: &StepMetrics,
    seconds: f64,
    rt: &Handle,
) -> Result<i64> {
    let store = &lp.store;
    let version = rt
        .block_on(store.versions())?
        .last()
        .map_or(0, |v| v.version)
        + 1;
    let dir = setup.checkpoints.join(format!("v{version}"));
    if let Err(e) = trainer.save_checkpoint_to(&dir) {
        // A half-written checkpoint (a full disk) is no version: nothing refers to it yet.
        if let Err(rm) = std::fs::remove_dir_all(&dir) {
            warn!(dir = %dir.display(), error = %rm, "removing a half-written checkpoint");
        }
        return Err(Error::Config(format!("checkpoint {}: {e}", dir.display())));
    }
    let record = StepRecord::new(m, batch, replayed, seconds);
    // A rollout's advantage was computed for this batch: it is stored with the step.
    let ids: Vec<(i64, Option<f64>)> = batch
        .iter()
        .map(|s| (s.id, s.rollout.as_ref().and(s.advantage)))
        .collect();
    rt.block_on(store.record_step(
        &NewVersion {
            version,
            parent: lp.live().version,
            step: m.step as i64,
            checkpoint: &dir.to_string_lossy(),
        },
        &record,
        seconds,
        &ids,
    ))?;
    rt.block_on(store.set_setting("active_version", &json!(version)))?;
    let adapter = trainer.policy.adapter_snapshot(version as u64)?;
    lp.counters.steps.fetch_add(1, Ordering::Relaxed);
    lp.emit(Event::Trained {
        step: m.step,
        version,
        metrics: record,
    });
    lp.swap(Live {
        version,
        adapter: Some(Arc::new(adapter)),
    });
    lp.resolve(Component::Training);
    lp.resolve(Component::Checkpoint);
    info!(
        step = m.step,
        version,
        seconds,
        loss = m.loss.loss,
        "published"
    );
    Ok(version)
}
