//! What every handler shares: the live loop, and what only HTTP needs (the model id clients
//! see, whether keys are required, request limits, the latest refused requests).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use clawrl_loop::Loop;
use serde::Serialize;

/// Limits on what one request may ask.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most messages in one request.
    pub max_messages: usize,
    /// Most new tokens one answer may have (a larger `max_tokens` is lowered to it).
    pub max_new_tokens: usize,
    /// When a conversation does not fit the context, drop its oldest messages after the system
    /// prompt (never the last user message) instead of answering `context_length_exceeded`:
    /// for clients that never compact. The turn records how many were dropped.
    pub drop_oldest_messages: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_messages: 512,
            max_new_tokens: 4096,
            drop_oldest_messages: false,
        }
    }
}

/// The shared state of the HTTP layer.
pub struct AppState {
    /// The live loop: model, store, served policy, settings, events.
    pub lp: Arc<Loop>,
    /// The id `/v1/models` reports.
    pub model_id: String,
    /// Keys are required.
    pub auth_required: bool,
    /// Request limits.
    pub limits: Limits,
    /// The latest refused requests.
    pub refusals: Refusals,
}

/// Shared state as handlers see it.
pub type Shared = Arc<AppState>;

/// How many refusals the Studio can list.
const KEPT: usize = 200;

/// One refused request.
#[derive(Clone, Debug, Serialize)]
pub struct Refused {
    /// When, ms since the epoch.
    pub at: i64,
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// HTTP status.
    pub status: u16,
    /// Why.
    pub reason: String,
    /// The request's session, when known.
    pub session_id: Option<String>,
}

/// The latest refusals, oldest first.
#[derive(Default)]
pub struct Refusals(Mutex<VecDeque<Refused>>);

impl Refusals {
    pub(crate) fn push(&self, r: Refused) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == KEPT {
            q.pop_front();
        }
        q.push_back(r);
    }

    pub(crate) fn list(&self) -> Vec<Refused> {
        let q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().cloned().collect()
    }
}
