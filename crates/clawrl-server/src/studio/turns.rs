//! Sessions, turns (with per-token data and the inspector's analysis), feedback, and the
//! annotation queue.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use clawrl_store::HintStatus;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use clawrl_loop::pair;
use clawrl_loop::sample::trainable_turn;
use clawrl_loop::select::analyse;

use super::{Limit, MAX_TEXT_CHARS, Page};
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath as Path, ApiQuery as Query, ApiResult, ErrorBody};
use crate::state::Shared;

/// `GET /studio/sessions`.
#[utoipa::path(
    get,
    path = "/studio/sessions",
    tag = "annotate",
    summary = "Sessions, most recent first.",
    params(Page),
    responses(
        (status = 200, description = "{sessions: [...]}", body = Object),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn sessions(State(s): State<Shared>, Query(p): Query<Page>) -> ApiResult<Json<Value>> {
    let list = s.lp.store.sessions(p.limit()?, p.offset()?).await?;
    Ok(Json(json!({ "sessions": list })))
}

/// `GET /studio/first-answers?limit=`: how each recent session's first answer was judged,
/// oldest first — whether the assistant now answers as its users want without being told.
#[utoipa::path(
    get,
    path = "/studio/first-answers",
    tag = "annotate",
    summary = "Each recent session's first answer and its reward r_t, oldest first.",
    params(Limit),
    responses(
        (status = 200, description = "{sessions: [...]}", body = Object),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn first_answers(
    State(s): State<Shared>,
    Query(p): Query<Limit>,
) -> ApiResult<Json<Value>> {
    let list = s.lp.store.first_answers(p.get()?).await?;
    Ok(Json(json!({ "sessions": list })))
}

/// `GET /studio/sessions/{id}`: the session (a rollout's with its group and outcome) and its
/// turns with their next states, votes and advantage (without per-token data).
#[utoipa::path(
    get,
    path = "/studio/sessions/{id}",
    tag = "annotate",
    summary = "A session with its turns, next states, votes and advantages.",
    params(("id" = String, Path, description = "The session id.")),
    responses(
        (status = 200, description = "{session, turns: [...]}", body = Object),
        (status = 404, description = "No such session.", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn session(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let session = s.lp.store.session(&id).await?;
    let mut turns = Vec::new();
    for t in s.lp.store.turns_of(&id).await? {
        let votes = s.lp.store.votes_of(t.id).await?;
        // A rollout's steps as the Studio shows them: action, observation, votes, advantage.
        let samples = s.lp.store.samples_of(t.id).await?;
        turns.push(json!({
            "next_states": s.lp.store.next_states_of(t.id).await?,
            "advantage": samples.iter().find_map(|x| x.advantage),
            "sample_status": samples.last().map(|x| x.status.as_str()),
            "id": t.id,
            "turn_type": t.turn_type,
            "messages": t.messages.0,
            "response": t.response,
            "policy_version": t.policy_version,
            "finish_reason": t.finish_reason,
            "created_at": t.created_at,
            "votes": votes,
        }));
    }
    Ok(Json(json!({ "session": session, "turns": turns })))
}

/// `GET /studio/turns/{id}`: a turn with its tokens, next states, votes, hints and samples.
#[utoipa::path(
    get,
    path = "/studio/turns/{id}",
    tag = "annotate",
    summary = "A turn: tokens with log-probs and the student top-k, next states, votes, hints, samples.",
    params(("id" = i64, Path, description = "The turn id.")),
    responses(
        (status = 200, description = "{turn, tokens, advantage, next_states, votes, hints, samples}", body = Object),
        (status = 404, description = "No such turn.", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn turn(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let t = s.lp.store.turn(id).await?;
    let tok = &s.lp.model.tokenizer;
    let text = |id: u32| String::from_utf8_lossy(&tok.token_bytes(id)).into_owned();
    let tokens: Vec<Value> = t
        .response_ids
        .0
        .iter()
        .zip(&t.logprobs.0)
        .enumerate()
        .map(|(i, (&id, lp))| {
            json!({
                "id": id,
                "text": text(id),
                "logprob": lp,
                "top": t.top_logprobs.0.get(i).map(|top| top.iter().map(|&(v, l)| json!([v, text(v), l])).collect::<Vec<_>>()),
            })
        })
        .collect();
    let samples = s.lp.store.samples_of(id).await?;
    let advantage = samples.iter().find_map(|x| x.advantage);
    Ok(Json(json!({
        "turn": {
            "id": t.id,
            "session_id": t.session_id,
            "turn_type": t.turn_type,
            "messages": t.messages.0,
            "response": t.response,
            "policy_version": t.policy_version,
            "finish_reason": t.finish_reason,
            "created_at": t.created_at,
            "prompt_tokens": t.prompt_ids.0.len(),
            "tools": t.tools.as_ref().map(|j| &j.0),
            "dropped_messages": t.dropped_messages,
        },
        "tokens": tokens,
        "advantage": advantage,
        "next_states": s.lp.store.next_states_of(id).await?,
        "votes": s.lp.store.votes_of(id).await?,
        "hints": s.lp.store.hints_of(id).await?,
        "samples": samples.iter().map(|x| json!({
            "id": x.id,
            "advantage": x.advantage,
            "hint_id": x.hint_id,
            "selection": x.selection,
            "status": x.status,
            "step": x.step,
        })).collect::<Vec<_>>(),
    })))
}

/// `GET /studio/turns/{id}/inspect`: the student's and each candidate hint's teacher top-k per
/// token, O[h,i] and Δ under the live policy, and the selection's choice.
#[utoipa::path(
    get,
    path = "/studio/turns/{id}/inspect",
    tag = "annotate",
    summary = "Per token: the student top-k, the teacher top-k under each candidate hint, O[h,i], Δ and the selection.",
    params(("id" = i64, Path, description = "The turn id.")),
    responses(
        (status = 200, description = "{turn_id, advantage, hint_ids, analysis}", body = Object),
        (status = 404, description = "No such turn.", body = ErrorBody),
        (status = 409, description = "The turn cannot be trained on (a side turn).", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn inspect(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let t = s.lp.store.turn(id).await?;
    let hints: Vec<_> =
        s.lp.store
            .hints_of(id)
            .await?
            .into_iter()
            .filter(|h| h.status != HintStatus::Rejected)
            .collect();
    let texts: Vec<String> = hints.iter().map(|h| h.text.clone()).collect();
    let settings = s.lp.settings();
    let a = analyse(&s.lp, &t, &texts, settings.top_k, settings.selection).await?;
    let advantage =
        s.lp.store
            .samples_of(id)
            .await?
            .iter()
            .find_map(|x| x.advantage);
    Ok(Json(json!({
        "turn_id": id,
        "advantage": advantage,
        "hint_ids": hints.iter().map(|h| h.id).collect::<Vec<_>>(),
        "analysis": a,
    })))
}

/// Explicit feedback: a thumb, a correction, or both.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// 1 (👍) or −1 (👎).
    #[serde(default, deserialize_with = "crate::integer::optional")]
    #[schema(schema_with = thumb_schema)]
    thumb: Option<i8>,
    /// What the answer should have been or done (at most 4000 characters; blank is none).
    #[serde(default)]
    #[schema(max_length = 4000)]
    correction: Option<String>,
}

/// `thumb`: 1, −1 or null.
fn thumb_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::Integer, Type::Null]))
        .enum_values(Some([Some(1), Some(-1), None]))
        .description(Some("1 (👍) or −1 (👎)."))
        .build()
}

/// `POST /studio/turns/{id}/feedback`: a thumb and/or a correction, judged like a next state.
#[utoipa::path(
    post,
    path = "/studio/turns/{id}/feedback",
    tag = "annotate",
    summary = "A thumb and/or a correction, judged as the turn's next state.",
    params(("id" = i64, Path, description = "The turn id.")),
    request_body = FeedbackBody,
    responses(
        (status = 201, description = "{turn_id, next_state_id}", body = Object),
        (status = 404, description = "No such turn.", body = ErrorBody),
        (status = 409, description = "The turn cannot be trained on (a side turn).", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn feedback(
    State(s): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    ApiJson(b): ApiJson<FeedbackBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if let Some(t) = b.thumb
        && t != 1
        && t != -1
    {
        return Err(ApiError::invalid_param("thumb", "thumb must be 1 or -1"));
    }
    if b.correction
        .as_deref()
        .is_some_and(|c| c.chars().count() > MAX_TEXT_CHARS)
    {
        return Err(ApiError::invalid_param(
            "correction",
            format!("a correction must be at most {MAX_TEXT_CHARS} characters"),
        ));
    }
    let correction = b
        .correction
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if b.thumb.is_none() && correction.is_none() {
        return Err(ApiError::invalid(
            "feedback needs a thumb (1 or -1) or a correction",
        ));
    }
    trainable_turn(&s.lp, id).await?;
    let next_state_id = pair::feedback(
        &s.lp,
        id,
        b.thumb,
        correction,
        (&caller.name, caller.key_id),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "turn_id": id, "next_state_id": next_state_id })),
    ))
}

/// `GET /studio/queue`: judged turns, newest first, with votes and hints (the annotation queue).
#[utoipa::path(
    get,
    path = "/studio/queue",
    tag = "annotate",
    summary = "Judged turns with their votes and hints (the annotation queue), newest first.",
    params(Limit),
    responses(
        (status = 200, description = "{queue: [...]}", body = Object),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn queue(State(s): State<Shared>, Query(p): Query<Limit>) -> ApiResult<Json<Value>> {
    let mut items = Vec::new();
    for t in s.lp.store.judged_turns(p.get()?).await? {
        items.push(json!({
            "turn_id": t.id,
            "session_id": t.session_id,
            "messages": t.messages.0,
            "response": t.response,
            "policy_version": t.policy_version,
            "next_states": s.lp.store.next_states_of(t.id).await?,
            "votes": s.lp.store.votes_of(t.id).await?,
            "hints": s.lp.store.hints_of(t.id).await?,
        }));
    }
    Ok(Json(json!({ "queue": items })))
}
