//! Training control: status, run-time settings, pause and resume, the steps' metrics, policy
//! versions and roll back.

use axum::Json;
use axum::extract::State;
use clawrl_loop::TrainingSettings;
use clawrl_objective::{Method, SelectionMode, Support};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::Limit;
use crate::error::{ApiError, ApiJson, ApiPath as Path, ApiQuery as Query, ApiResult, ErrorBody};
use crate::state::Shared;

async fn training_status(s: &Shared) -> ApiResult<Value> {
    let counts = s.lp.store.counts().await?;
    Ok(json!({
        "settings": s.lp.settings(),
        "policy_version": s.lp.live().version,
        "training": s.lp.stepping(),
        "pending_samples": counts.pending_samples,
        "unjudged": counts.unjudged,
        "samples": counts.samples,
        "steps": counts.steps,
    }))
}

/// `GET /studio/training`.
#[utoipa::path(
    get,
    path = "/studio/training",
    tag = "annotate",
    summary = "Training settings and status.",
    responses(
        (status = 200, description = "{settings, policy_version, training (a step is under way: its samples may no longer count as pending, its version is not yet served), pending_samples, unjudged, samples, steps}", body = Object),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn training(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    Ok(Json(training_status(&s).await?))
}

/// A partial update of the training settings (DESIGN.md §2 names each); absent or `null`
/// fields keep their value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// Samples per training step.
    #[schema(minimum = 1, maximum = 1024)]
    #[serde(default, deserialize_with = "crate::integer::optional")]
    batch_size: Option<usize>,
    method: Option<Method>,
    selection: Option<SelectionMode>,
    /// k of the top-k OPD term.
    #[schema(minimum = 1, maximum = 20)]
    #[serde(default, deserialize_with = "crate::integer::optional")]
    top_k: Option<usize>,
    /// Learning rate.
    #[schema(exclusive_minimum = 0.0)]
    lr: Option<f64>,
    #[schema(minimum = 0.0)]
    weight_decay: Option<f64>,
    #[schema(minimum = 0.0)]
    max_grad_norm: Option<f64>,
    /// The clip of the teacher–student log-prob gap Δ.
    #[schema(exclusive_minimum = 0.0)]
    delta_clip: Option<f64>,
    /// ε_lo of the clipped ratio, below 1.
    #[schema(minimum = 0.0, exclusive_maximum = 1.0)]
    eps_lo: Option<f64>,
    /// ε_hi of the clipped ratio.
    #[schema(minimum = 0.0)]
    eps_hi: Option<f64>,
    /// Weight of the RL term.
    #[schema(minimum = 0.0)]
    w_rl: Option<f64>,
    /// Weight of the OPD term.
    #[schema(minimum = 0.0)]
    w_opd: Option<f64>,
    /// β of the KL to the base.
    #[schema(minimum = 0.0)]
    beta: Option<f64>,
    /// Narrow the OPD support to the student's top-k (with `support: student` only).
    intersect_support: Option<bool>,
    support: Option<Support>,
    /// λ of the forward-KL term.
    #[schema(minimum = 0.0)]
    w_fkl: Option<f64>,
    /// Weight of the retry term.
    #[schema(minimum = 0.0)]
    w_retry: Option<f64>,
    /// Passes over each batch.
    #[schema(minimum = 1, maximum = 16)]
    #[serde(default, deserialize_with = "crate::integer::optional")]
    epochs: Option<usize>,
    /// Earlier accepted retries each step replays (retry replay; 0: off).
    #[schema(minimum = 0, maximum = 64)]
    #[serde(default, deserialize_with = "crate::integer::optional")]
    replay: Option<usize>,
    paused: Option<bool>,
}

impl SettingsPatch {
    fn apply(self, mut t: TrainingSettings) -> TrainingSettings {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { t.$f = v; } )* };
        }
        set!(
            batch_size,
            method,
            selection,
            top_k,
            lr,
            weight_decay,
            max_grad_norm,
            delta_clip,
            eps_lo,
            eps_hi,
            w_rl,
            w_opd,
            beta,
            intersect_support,
            support,
            w_fkl,
            w_retry,
            epochs,
            replay,
            paused
        );
        t
    }
}

/// `POST /studio/training/settings`: change method and hyper-parameters while the server runs.
#[utoipa::path(
    post,
    path = "/studio/training/settings",
    tag = "own",
    summary = "Change the method and hyper-parameters (a partial settings object).",
    request_body = SettingsPatch,
    responses(
        (status = 200, description = "The training status, as GET /studio/training.", body = Object),
        (status = 409, description = "The change conflicts with the current settings.", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn update_training(
    State(s): State<Shared>,
    ApiJson(patch): ApiJson<SettingsPatch>,
) -> ApiResult<Json<Value>> {
    // A patch that contradicts itself is invalid (400); one that contradicts what is set now
    // conflicts with the state (409): the same patch may succeed after another change.
    let contradicts_itself = patch.intersect_support == Some(true)
        && patch.support.is_some_and(|x| x != Support::Student);
    s.lp.set_settings(patch.apply(s.lp.settings()))
        .map_err(|e| match e {
            clawrl_loop::Error::Invalid {
                param: Some("intersect_support"),
                message,
            } if !contradicts_itself => ApiError::conflict(message),
            other => other.into(),
        })?;
    Ok(Json(training_status(&s).await?))
}

async fn set_paused(s: &Shared, paused: bool) -> ApiResult<Json<Value>> {
    let mut next = s.lp.settings();
    next.paused = paused;
    s.lp.set_settings(next)?;
    Ok(Json(training_status(s).await?))
}

/// `POST /studio/training/pause`.
#[utoipa::path(
    post,
    path = "/studio/training/pause",
    tag = "own",
    summary = "Pause training.",
    responses(
        (status = 200, description = "The training status.", body = Object),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn pause(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    set_paused(&s, true).await
}

/// `POST /studio/training/resume`.
#[utoipa::path(
    post,
    path = "/studio/training/resume",
    tag = "own",
    summary = "Resume training.",
    responses(
        (status = 200, description = "The training status.", body = Object),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn resume(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    set_paused(&s, false).await
}

/// `?after=` (a step row id) and `?limit=`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct After {
    /// Only steps after this row id (default 0: from the first).
    after: Option<i64>,
    /// How many, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// `GET /studio/steps`: training steps with their metrics, oldest first.
#[utoipa::path(
    get,
    path = "/studio/steps",
    tag = "annotate",
    summary = "Training steps with their metrics, oldest first.",
    params(After),
    responses(
        (status = 200, description = "{steps: [...]}", body = Object),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn steps(State(s): State<Shared>, Query(q): Query<After>) -> ApiResult<Json<Value>> {
    let limit = Limit { limit: q.limit }.get()?;
    Ok(Json(
        json!({ "steps": s.lp.store.steps(q.after.unwrap_or(0), limit).await? }),
    ))
}

/// `GET /studio/versions`.
#[utoipa::path(
    get,
    path = "/studio/versions",
    tag = "annotate",
    summary = "Policy versions and the active one.",
    responses(
        (status = 200, description = "{versions: [{version, step, parent (the version its step continued from; null for the base), created_at, active}], active}", body = Object),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn versions(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    let active = s.lp.live().version;
    let list: Vec<Value> =
        s.lp.store
            .versions()
            .await?
            .into_iter()
            .map(|v| {
                json!({
                    "version": v.version,
                    "step": v.step,
                    "parent": v.parent,
                    "created_at": v.created_at,
                    "active": v.version == active,
                })
            })
            .collect();
    Ok(Json(json!({ "versions": list, "active": active })))
}

/// `POST /studio/versions/{v}/activate`: serve an earlier version (roll back) and continue
/// training from it.
#[utoipa::path(
    post,
    path = "/studio/versions/{v}/activate",
    tag = "own",
    summary = "Serve an earlier version (roll back) and train on from it.",
    params(("v" = i64, Path, description = "The policy version.")),
    responses(
        (status = 200, description = "{active}", body = Object),
        (status = 404, description = "No such version.", body = ErrorBody),
        (status = 409, description = "The version cannot be served now (its checkpoint is missing, or a step is publishing).", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn activate(State(s): State<Shared>, Path(v): Path<i64>) -> ApiResult<Json<Value>> {
    s.lp.activate(v).await?;
    Ok(Json(json!({ "active": v })))
}
