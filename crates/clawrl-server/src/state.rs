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
}

/// Shared state as handlers see it.
pub type Shared = Arc<AppState>;
