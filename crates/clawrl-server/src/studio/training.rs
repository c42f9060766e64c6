//! Training control: status, run-time settings, pause and resume, the steps' metrics, policy
//! versions and roll back.

use axum::Json;
use axum::extract::State;
use clawrl_loop::TrainingSettings;
use clawrl_objective::{Method, SelectionMode, Support};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Page;
use crate::error::{ApiJson, ApiPath as Path, ApiQuery as Query, ApiResult};
use crate::state::Shared;

async fn training_status(s: &Shared) -> ApiResult<Value> {
    let counts = s.lp.store.counts().await?;
    Ok(json!({
        "settings": s.lp.settings(),
        "policy_version": s.lp.live().version,
        "pending_samples": counts.pending_samples,
        "unjudged": counts.unjudged,
        "samples": counts.samples,
        "steps": counts.steps,
    }))
}

/// `GET /studio/training`.
pub async fn training(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    Ok(Json(training_status(&s).await?))
}

/// A partial update of the training settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    batch_size: Option<usize>,
    method: Option<Method>,
    selection: Option<SelectionMode>,
    top_k: Option<usize>,
    lr: Option<f64>,
    weight_decay: Option<f64>,
    max_grad_norm: Option<f64>,
    delta_clip: Option<f64>,
    eps_lo: Option<f64>,
    eps_hi: Option<f64>,
    w_rl: Option<f64>,
    w_opd: Option<f64>,
    beta: Option<f64>,
    intersect_support: Option<bool>,
    support: Option<Support>,
    w_fkl: Option<f64>,
    w_retry: Option<f64>,
    epochs: Option<usize>,
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
            paused
        );
        t
    }
}

/// `POST /studio/training/settings`: change method and hyper-parameters while the server runs.
pub async fn update_training(
    State(s): State<Shared>,
    ApiJson(patch): ApiJson<SettingsPatch>,
) -> ApiResult<Json<Value>> {
    s.lp.set_settings(patch.apply(s.lp.settings()))?;
    Ok(Json(training_status(&s).await?))
}

async fn set_paused(s: &Shared, paused: bool) -> ApiResult<Json<Value>> {
    let mut next = s.lp.settings();
    next.paused = paused;
    s.lp.set_settings(next)?;
    Ok(Json(training_status(s).await?))
}

/// `POST /studio/training/pause`.
pub async fn pause(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    set_paused(&s, true).await
}

/// `POST /studio/training/resume`.
pub async fn resume(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    set_paused(&s, false).await
}

/// `?after=` (a step row id) and `?limit=`.
#[derive(Deserialize)]
pub struct After {
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /studio/steps`: training steps with their metrics, oldest first.
pub async fn steps(State(s): State<Shared>, Query(q): Query<After>) -> ApiResult<Json<Value>> {
    let limit = Page {
        limit: q.limit,
        offset: None,
    }
    .limit()?;
    Ok(Json(
        json!({ "steps": s.lp.store.steps(q.after.unwrap_or(0), limit).await? }),
    ))
}

/// `GET /studio/versions`.
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
                    "created_at": v.created_at,
                    "active": v.version == active,
                })
            })
            .collect();
    Ok(Json(json!({ "versions": list, "active": active })))
}

/// `POST /studio/versions/{v}/activate`: serve an earlier version (roll back) and continue
/// training from it.
pub async fn activate(State(s): State<Shared>, Path(v): Path<i64>) -> ApiResult<Json<Value>> {
    s.lp.activate(v).await?;
    Ok(Json(json!({ "active": v })))
}
