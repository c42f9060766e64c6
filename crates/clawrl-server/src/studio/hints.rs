//! Annotators' hints: previewed (overlap and Δ per token beside the turn's other candidates,
//! nothing saved), added, accepted into the turn's selection, rejected.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use clawrl_loop::sample::{self, trainable_turn};
use clawrl_loop::select::analyse;
use clawrl_store::{HintSource, HintStatus};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::MAX_TEXT_CHARS;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath as Path, ApiResult, ErrorBody};
use crate::state::Shared;

/// A hint's text.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HintBody {
    /// What the answer should have done, 1 to 4000 characters, not blank.
    #[schema(max_length = 4000, pattern = "\\S")]
    text: String,
}

fn hint_text(text: &str) -> ApiResult<String> {
    let t = text.trim();
    if t.is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::invalid_param(
            "text",
            format!("a hint must be 1 to {MAX_TEXT_CHARS} characters"),
        ));
    }
    Ok(t.to_string())
}

/// `POST /studio/turns/{id}/hints/preview`: what a candidate hint would do — its O[h,i] and Δ
/// per token beside the candidates it would compete with (the judge's and accepted ones) —
/// without saving anything.
#[utoipa::path(
    post,
    path = "/studio/turns/{id}/hints/preview",
    tag = "annotate",
    summary = "Overlap O[h,i] and Δ of a candidate hint beside the turn's others, without saving it.",
    params(("id" = i64, Path, description = "The turn id.")),
    request_body = HintBody,
    responses(
        (status = 200, description = "{turn_id, candidate, would_be_chosen, analysis}", body = Object),
        (status = 404, description = "No such turn.", body = ErrorBody),
        (status = 409, description = "The turn cannot be trained on, or the hint was already decided.", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn preview(
    State(s): State<Shared>,
    Path(id): Path<i64>,
    ApiJson(b): ApiJson<HintBody>,
) -> ApiResult<Json<Value>> {
    let text = hint_text(&b.text)?;
    let t = trainable_turn(&s.lp, id).await?;
    let mut texts: Vec<String> =
        s.lp.store
            .hints_of(id)
            .await?
            .into_iter()
            .filter(|h| {
                h.status != HintStatus::Rejected
                    && h.text != text
                    && (h.source == HintSource::Judge || h.status == HintStatus::Accepted)
            })
            .map(|h| h.text)
            .collect();
    texts.push(text);
    let settings = s.lp.settings();
    let a = analyse(&s.lp, &t, &texts, settings.top_k, settings.selection).await?;
    let candidate = a.hints.last().cloned();
    Ok(Json(json!({
        "turn_id": id,
        "candidate": candidate,
        "would_be_chosen": a.selection.used().contains(&(texts.len() - 1)),
        "analysis": a,
    })))
}

/// `POST /studio/turns/{id}/hints`: an annotator's candidate hint (it trains once accepted).
#[utoipa::path(
    post,
    path = "/studio/turns/{id}/hints",
    tag = "annotate",
    summary = "Add a candidate hint (it trains once accepted).",
    params(("id" = i64, Path, description = "The turn id.")),
    request_body = HintBody,
    responses(
        (status = 201, description = "{hint}", body = Object),
        (status = 404, description = "No such turn.", body = ErrorBody),
        (status = 409, description = "The turn cannot be trained on, or the hint was already decided.", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn add_hint(
    State(s): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    ApiJson(b): ApiJson<HintBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let text = hint_text(&b.text)?;
    let hint_id = sample::add_hint(&s.lp, id, text, (caller.name, caller.key_id)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "hint": s.lp.store.hint(hint_id).await? })),
    ))
}

/// `POST /studio/hints/{id}/accept`: the hint joins the turn's candidates; selection runs over
/// all of them and the turn's one OPD sample takes the result. The answer says which hints
/// teach (`chosen`).
#[utoipa::path(
    post,
    path = "/studio/hints/{id}/accept",
    tag = "annotate",
    summary = "Accept a hint: selection runs over the turn's accepted hints and its OPD sample takes the result.",
    params(("id" = i64, Path, description = "The hint id.")),
    responses(
        (status = 200, description = "What was accepted and which hints teach (chosen).", body = Object),
        (status = 404, description = "No such hint.", body = ErrorBody),
        (status = 409, description = "The turn cannot be trained on, or the hint was already decided.", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn accept_hint(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let accepted = sample::accept_hint(&s.lp, id).await?;
    Ok(Json(json!(accepted)))
}

/// `POST /studio/hints/{id}/reject`: the hint never trains (pending samples using it are
/// dropped).
#[utoipa::path(
    post,
    path = "/studio/hints/{id}/reject",
    tag = "annotate",
    summary = "Reject a hint: it never trains.",
    params(("id" = i64, Path, description = "The hint id.")),
    responses(
        (status = 200, description = "{hint_id, status}", body = Object),
        (status = 404, description = "No such hint.", body = ErrorBody),
        (status = 409, description = "The turn cannot be trained on, or the hint was already decided.", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn reject_hint(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    sample::reject_hint(&s.lp, id).await?;
    Ok(Json(json!({ "hint_id": id, "status": "rejected" })))
}
