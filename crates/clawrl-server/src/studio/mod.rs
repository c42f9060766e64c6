//! The Studio API (DESIGN.md §4): sessions and turns with per-token data, feedback, hints with
//! a preview, training control, policy versions with roll back, the event stream, keys,
//! `/metrics` and `/healthz`. Handlers are thin: the loop (`clawrl-loop`) does the work.

mod admin;
mod hints;
mod training;
mod turns;

use serde::Deserialize;

use crate::error::{ApiError, ApiResult};

pub use admin::{create_key, delete_key, events, healthz, keys, metrics, reject_key};
pub use hints::{accept_hint, add_hint, preview, reject_hint};
pub use training::{activate, pause, resume, steps, training, update_training, versions};
pub use turns::{feedback, first_answers, inspect, queue, session, sessions, turn};

/// Longest hint or correction, in characters.
const MAX_TEXT_CHARS: usize = 4000;

/// `?limit=&offset=`.
#[derive(Deserialize)]
pub struct Page {
    limit: Option<i64>,
    offset: Option<i64>,
}

impl Page {
    fn limit(&self) -> ApiResult<i64> {
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=1000).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::invalid_param(
                "limit",
                format!("limit must be 1..=1000, got {n}"),
            )),
        }
    }

    fn offset(&self) -> ApiResult<i64> {
        match self.offset {
            None => Ok(0),
            Some(n) if n >= 0 => Ok(n),
            Some(n) => Err(ApiError::invalid_param(
                "offset",
                format!("offset must be ≥ 0, got {n}"),
            )),
        }
    }
}
