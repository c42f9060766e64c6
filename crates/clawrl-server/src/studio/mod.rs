//! The Studio API (DESIGN.md §4): sessions and turns with per-token data, feedback, hints with
//! a preview, training control, policy versions with roll back, the event stream, keys,
//! `/metrics` and `/healthz`. Handlers are thin: the loop (`clawrl-loop`) does the work.

pub(crate) mod admin;
pub(crate) mod hints;
pub(crate) mod training;
pub(crate) mod turns;

use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::{ApiError, ApiResult};

/// Longest hint or correction, in characters.
const MAX_TEXT_CHARS: usize = 4000;

/// `?limit=&offset=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// How many, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// How many to skip (default 0).
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// `?limit=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    /// How many, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

impl Limit {
    fn get(&self) -> ApiResult<i64> {
        Page {
            limit: self.limit,
            offset: None,
        }
        .limit()
    }
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
