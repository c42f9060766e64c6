//! What is failing while the server keeps serving: the judge, training, a checkpoint. Each
//! stage reports its own failure and clears it when it works again; `/healthz` lists them.

use std::collections::BTreeMap;

use serde::Serialize;
use tracing::error;

use crate::Loop;

/// A part of the loop that can fail on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// The judge (an unreachable HTTP judge, a failing model judge): next states wait.
    Judge,
    /// A training step or its publication failed: training is paused.
    Training,
    /// A checkpoint could not be read at start: an earlier version serves.
    Checkpoint,
}

/// One failing component.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// Which.
    pub component: Component,
    /// What happened and what the server does about it, for people.
    pub message: String,
    /// When it was first reported (ms since the Unix epoch).
    pub since_ms: i64,
}

/// The failing components, one problem each.
pub(crate) type Problems = std::sync::Mutex<BTreeMap<Component, Problem>>;

impl Loop {
    /// Records that `component` is failing (logged once per new message).
    pub fn report(&self, component: Component, message: String) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.get(&component).is_some_and(|old| old.message == message) {
            return;
        }
        error!(?component, %message, "problem");
        let since_ms = p
            .get(&component)
            .map_or_else(clawrl_store::now_ms, |old| old.since_ms);
        p.insert(
            component,
            Problem {
                component,
                message,
                since_ms,
            },
        );
    }

    /// Records that `component` works again.
    pub fn resolve(&self, component: Component) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.remove(&component).is_some() {
            tracing::info!(?component, "resolved");
        }
    }

    /// The failing components now (empty when all is well).
    pub fn problems(&self) -> Vec<Problem> {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.values().cloned().collect()
    }
}
