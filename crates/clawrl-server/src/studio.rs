//! The Studio API (DESIGN.md §4): sessions and turns with per-token data, feedback, hints with
//! a preview, training control, policy versions with roll back, the event stream, keys,
//! `/metrics`, `/healthz` and the OpenAPI document.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::{Extension, Json};
use clawrl_store::{HintRef, HintSource, HintStatus, NewHint, NewSample, Role, TurnType};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath as Path, ApiQuery as Query, ApiResult};
use crate::pipeline::{analyse, messages_of};
use crate::state::{Event, Shared, TrainingSettings};
use crate::training::Control;

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

/// `GET /studio/sessions`.
pub async fn sessions(State(s): State<Shared>, Query(p): Query<Page>) -> ApiResult<Json<Value>> {
    let list = s.store.sessions(p.limit()?, p.offset()?).await?;
    Ok(Json(json!({ "sessions": list })))
}

/// `GET /studio/sessions/{id}`: the session and its turns (without per-token data).
pub async fn session(State(s): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let session = s.store.session(&id).await?;
    let mut turns = Vec::new();
    for t in s.store.turns_of(&id).await? {
        let votes = s.store.votes_of(t.id).await?;
        turns.push(json!({
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
pub async fn turn(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let t = s.store.turn(id).await?;
    let tok = &s.model.tokenizer;
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
    let samples = s.store.samples_of(id).await?;
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
        },
        "tokens": tokens,
        "advantage": advantage,
        "next_states": s.store.next_states_of(id).await?,
        "votes": s.store.votes_of(id).await?,
        "hints": s.store.hints_of(id).await?,
        "samples": samples.iter().map(|x| json!({
            "id": x.id,
            "advantage": x.advantage,
            "hint_id": x.hint_id,
            "selection": x.selection.as_ref().map(|j| &j.0),
            "status": x.status,
            "step": x.step,
        })).collect::<Vec<_>>(),
    })))
}

/// `GET /studio/turns/{id}/inspect`: the student's and each candidate hint's teacher top-k per
/// token, O[h,i] and Δ under the live policy, and the selection's choice.
pub async fn inspect(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let t = s.store.turn(id).await?;
    let hints: Vec<_> = s
        .store
        .hints_of(id)
        .await?
        .into_iter()
        .filter(|h| h.status != HintStatus::Rejected)
        .collect();
    let texts: Vec<String> = hints.iter().map(|h| h.text.clone()).collect();
    let a = analyse_now(&s, &t, &texts).await?;
    let advantage = s
        .store
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

/// The turn under the live policy and the current settings, with `hints` as candidates.
async fn analyse_now(
    s: &Shared,
    t: &clawrl_store::Turn,
    hints: &[String],
) -> ApiResult<crate::pipeline::Analysis> {
    let settings = s.settings();
    analyse(
        s,
        t,
        &messages_of(t)?,
        hints,
        settings.top_k,
        settings.selection_mode(),
    )
    .await
}

/// A hint's text.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HintBody {
    text: String,
}

fn hint_text(text: &str) -> ApiResult<String> {
    let t = text.trim();
    if t.is_empty() || t.chars().count() > MAX_TEXT_CHARS {
        return Err(ApiError::invalid_param(
            "text",
            format!("a hint must be 1 to {MAX_TEXT_CHARS} characters"),
        ));
    }
    Ok(t.to_string())
}

async fn main_turn(s: &Shared, id: i64) -> ApiResult<clawrl_store::Turn> {
    let t = s.store.turn(id).await?;
    if t.turn_type == TurnType::Side {
        return Err(ApiError::invalid(format!(
            "turn {id} is a side turn: side turns are served, never trained on"
        )));
    }
    if t.response_ids.0.is_empty() {
        return Err(ApiError::invalid(format!(
            "turn {id} has an empty response"
        )));
    }
    Ok(t)
}

/// `POST /studio/turns/{id}/hints/preview`: what a candidate hint would do — its O[h,i] and Δ
/// per token beside the turn's other candidates — without saving anything.
pub async fn preview(
    State(s): State<Shared>,
    Path(id): Path<i64>,
    ApiJson(b): ApiJson<HintBody>,
) -> ApiResult<Json<Value>> {
    let text = hint_text(&b.text)?;
    let t = main_turn(&s, id).await?;
    let mut texts: Vec<String> = s
        .store
        .hints_of(id)
        .await?
        .into_iter()
        .filter(|h| h.status != HintStatus::Rejected && h.text != text)
        .map(|h| h.text)
        .collect();
    texts.push(text);
    let a = analyse_now(&s, &t, &texts).await?;
    let candidate = a.hints.last().cloned();
    Ok(Json(json!({
        "turn_id": id,
        "candidate": candidate,
        "would_be_chosen": a.chosen == Some(texts.len() - 1),
        "analysis": a,
    })))
}

/// `POST /studio/turns/{id}/hints`: an annotator's candidate hint.
pub async fn add_hint(
    State(s): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<i64>,
    ApiJson(b): ApiJson<HintBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let text = hint_text(&b.text)?;
    let t = main_turn(&s, id).await?;
    let a = analyse_now(&s, &t, std::slice::from_ref(&text)).await?;
    let hint_id = s
        .store
        .add_hint(
            id,
            &NewHint {
                text,
                source: HintSource::Annotator,
                author: caller.name,
                overlap: a.totals.first().map(|&t| t as i64),
                status: HintStatus::Candidate,
            },
        )
        .await?;
    s.emit(Event::Hint {
        hint_id,
        turn_id: id,
        status: HintStatus::Candidate,
    });
    Ok((
        StatusCode::CREATED,
        Json(json!({ "hint": s.store.hint(hint_id).await? })),
    ))
}

/// `POST /studio/hints/{id}/accept`: the hint becomes the turn's OPD sample.
pub async fn accept_hint(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let h = s.store.hint(id).await?;
    if h.status == HintStatus::Accepted {
        return Err(ApiError::conflict(format!("hint {id} is already accepted")));
    }
    let t = main_turn(&s, h.turn_id).await?;
    let hint_prompt = s
        .model
        .chat_prompt(&clawrl_signals::with_hint(&messages_of(&t)?, &h.text), None)
        .map_err(|e| ApiError::invalid(format!("the hint does not fit the template: {e}")))?;
    let sample_id = s
        .store
        .accept_hint(
            id,
            &NewSample {
                turn_id: t.id,
                advantage: None,
                hint: Some(HintRef::Stored(id)),
                hint_prompt_ids: Some(hint_prompt),
                selection: Some(json!({ "mode": "annotator", "chosen_hint_id": id })),
            },
        )
        .await?;
    let pending = s.store.count_pending().await?;
    s.emit(Event::Hint {
        hint_id: id,
        turn_id: t.id,
        status: HintStatus::Accepted,
    });
    s.emit(Event::Sample {
        sample_id,
        turn_id: t.id,
        pending,
    });
    s.wake_trainer();
    Ok(Json(json!({ "hint_id": id, "sample_id": sample_id })))
}

/// `POST /studio/hints/{id}/reject`: the hint never trains (its pending sample is dropped).
pub async fn reject_hint(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let h = s.store.hint(id).await?;
    s.store.reject_hint(id).await?;
    s.emit(Event::Hint {
        hint_id: id,
        turn_id: h.turn_id,
        status: HintStatus::Rejected,
    });
    Ok(Json(json!({ "hint_id": id, "status": "rejected" })))
}

/// Explicit feedback.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    /// 1 (👍) or −1 (👎).
    #[serde(default)]
    thumb: Option<i8>,
    /// What the answer should have been or done.
    #[serde(default)]
    correction: Option<String>,
}

/// `POST /studio/turns/{id}/feedback`: a thumb and/or a correction, judged like a next state.
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
    let correction = match b.correction.as_deref().map(str::trim) {
        Some("") | None => None,
        Some(c) if c.chars().count() > MAX_TEXT_CHARS => {
            return Err(ApiError::invalid_param(
                "correction",
                format!("a correction must be at most {MAX_TEXT_CHARS} characters"),
            ));
        }
        Some(c) => Some(c.to_string()),
    };
    if b.thumb.is_none() && correction.is_none() {
        return Err(ApiError::invalid(
            "feedback needs a thumb (1 or -1) or a correction",
        ));
    }
    main_turn(&s, id).await?;
    let next_state_id = s
        .store
        .record_feedback(id, b.thumb, correction.as_deref(), &caller.name)
        .await?;
    s.emit(Event::NextState {
        turn_id: id,
        kind: clawrl_store::NextKind::Feedback,
    });
    s.judge_wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "turn_id": id, "next_state_id": next_state_id })),
    ))
}

/// `GET /studio/queue`: judged turns, newest first, with votes and hints (the annotation queue).
pub async fn queue(State(s): State<Shared>, Query(p): Query<Page>) -> ApiResult<Json<Value>> {
    let mut items = Vec::new();
    for t in s.store.judged_turns(p.limit()?).await? {
        items.push(json!({
            "turn_id": t.id,
            "session_id": t.session_id,
            "messages": t.messages.0,
            "response": t.response,
            "policy_version": t.policy_version,
            "next_states": s.store.next_states_of(t.id).await?,
            "votes": s.store.votes_of(t.id).await?,
            "hints": s.store.hints_of(t.id).await?,
        }));
    }
    Ok(Json(json!({ "queue": items })))
}

async fn training_status(s: &Shared) -> ApiResult<Value> {
    let counts = s.store.counts().await?;
    Ok(json!({
        "settings": s.settings(),
        "policy_version": s.live().version,
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
    method: Option<String>,
    selection: Option<String>,
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
            paused
        );
        t
    }
}

/// `PATCH /studio/training`: change method and hyper-parameters while the server runs.
pub async fn update_training(
    State(s): State<Shared>,
    ApiJson(patch): ApiJson<SettingsPatch>,
) -> ApiResult<Json<Value>> {
    let next = patch.apply(s.settings());
    next.validate()?;
    s.set_settings(next);
    Ok(Json(training_status(&s).await?))
}

async fn set_paused(s: &Shared, paused: bool) -> ApiResult<Json<Value>> {
    let mut next = s.settings();
    next.paused = paused;
    s.set_settings(next);
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
        json!({ "steps": s.store.steps(q.after.unwrap_or(0), limit).await? }),
    ))
}

/// `GET /studio/versions`.
pub async fn versions(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    let active = s.live().version;
    let list: Vec<Value> = s
        .store
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
    s.store.version(v).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    s.control
        .send(Control::Activate(v, tx))
        .map_err(|_| ApiError::internal("the training thread has stopped"))?;
    rx.await
        .map_err(|_| ApiError::internal("the training thread has stopped"))?
        .map_err(ApiError::internal)?;
    Ok(Json(json!({ "active": v })))
}

/// `GET /studio/events`: the loop's events as server-sent events.
pub async fn events(
    State(s): State<Shared>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = BroadcastStream::new(s.events.subscribe()).filter_map(|e| {
        // A lagging subscriber skips what it missed.
        let e = e.ok()?;
        let kind = serde_json::to_value(&e)
            .ok()?
            .get("type")?
            .as_str()?
            .to_string();
        Some(Ok(SseEvent::default()
            .event(kind)
            .data(serde_json::to_string(&e).unwrap_or_default())))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A new key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    name: String,
    role: Role,
}

/// `GET /studio/keys`.
pub async fn keys(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "keys": s.store.keys().await? })))
}

/// `POST /studio/keys`: creates a key; the key itself is shown once, only its hash is kept.
pub async fn create_key(
    State(s): State<Shared>,
    ApiJson(k): ApiJson<NewKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = k.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiError::invalid_param(
            "name",
            "name must be 1 to 100 characters",
        ));
    }
    let key = format!("clawrl-{:032x}", rand::random::<u128>());
    let id = s.store.add_key(name, &key, k.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": name, "role": k.role, "key": key })),
    ))
}

/// `DELETE /studio/keys/{id}`.
pub async fn delete_key(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    s.store.delete_key(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /healthz`.
pub async fn healthz(State(s): State<Shared>) -> Json<Value> {
    Json(
        json!({ "status": "ok", "model": s.model_id, "judge": s.judge.name(), "policy_version": s.live().version }),
    )
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let c = s.store.counts().await?;
    let settings = s.settings();
    let mut out = String::new();
    let rows: [(&str, &str, &str, f64); 13] = [
        (
            "completions_total",
            "counter",
            "Chat completions served since start.",
            s.counters.completions.load(Relaxed) as f64,
        ),
        (
            "generated_tokens_total",
            "counter",
            "Tokens generated since start.",
            s.counters.tokens.load(Relaxed) as f64,
        ),
        (
            "stream_errors_total",
            "counter",
            "Streams that ended in an error.",
            s.counters.errors.load(Relaxed) as f64,
        ),
        (
            "train_steps_total",
            "counter",
            "Training steps since start.",
            s.counters.steps.load(Relaxed) as f64,
        ),
        (
            "policy_version",
            "gauge",
            "The policy version being served.",
            s.live().version as f64,
        ),
        (
            "training_paused",
            "gauge",
            "1 while training is paused.",
            f64::from(u8::from(settings.paused)),
        ),
        ("sessions", "gauge", "Sessions stored.", c.sessions as f64),
        ("turns", "gauge", "Turns stored.", c.turns as f64),
        ("votes", "gauge", "Judge votes stored.", c.votes as f64),
        ("hints", "gauge", "Hints stored.", c.hints as f64),
        ("samples", "gauge", "Samples stored.", c.samples as f64),
        (
            "pending_samples",
            "gauge",
            "Samples waiting for training.",
            c.pending_samples as f64,
        ),
        ("steps", "gauge", "Training steps stored.", c.steps as f64),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP clawrl_{name} {help}\n# TYPE clawrl_{name} {kind}\nclawrl_{name} {value}"
        );
    }
    Ok(([("content-type", "text/plain; version=0.0.4")], out))
}
