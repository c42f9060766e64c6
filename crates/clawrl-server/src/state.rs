//! What every handler shares: the live loop, and what only HTTP needs (the model id clients
//! see, whether keys are required, request limits).

use std::sync::Arc;

use clawrl_loop::Loop;

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
    pub refusals: crate::refusals::Refusals,
}

/// Shared state as handlers see it.
pub type Shared = Arc<AppState>;
