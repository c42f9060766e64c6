//! The event stream, API keys, liveness and Prometheus metrics.

use std::convert::Infallible;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use clawrl_store::Role;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson, ApiPath as Path, ApiResult, ErrorBody};
use crate::state::Shared;

/// `GET /studio/events`: the loop's events as server-sent events, after a first `ready` event
/// (`{"policy_version"}`) that tells the client it is subscribed: nothing after it is missed.
#[utoipa::path(
    get,
    path = "/studio/events",
    tag = "annotate",
    summary = "The loop's events as server-sent events: ready (once, first), then turn, next_state, judged, sample, hint, train_started, trained, train_failed, published, refused, settings.",
    responses((status = 200, description = "An endless event stream, opened by a ready event.", content_type = "text/event-stream", body = crate::openapi::ServerSentEvent)),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn events(
    State(s): State<Shared>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let events = BroadcastStream::new(s.lp.subscribe());
    let ready = SseEvent::default()
        .event("ready")
        .data(json!({ "type": "ready", "policy_version": s.lp.live().version }).to_string());
    let stream = tokio_stream::once(Ok(ready)).chain(events.filter_map(|e| {
        // A lagging subscriber skips what it missed.
        let e = e.ok()?;
        let data = serde_json::to_string(&e).ok()?;
        Some(Ok(SseEvent::default().event(e.kind()).data(data)))
    }));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A new key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Who it is for, 1 to 100 characters, not blank.
    #[schema(max_length = 100, pattern = "\\S")]
    name: String,
    role: Role,
}

/// `GET /studio/keys`.
#[utoipa::path(
    get,
    path = "/studio/keys",
    tag = "own",
    summary = "API keys: names and roles (never the keys).",
    responses(
        (status = 200, description = "{keys: [...]}", body = Object),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn keys(State(s): State<Shared>) -> ApiResult<Json<Value>> {
    Ok(Json(json!({ "keys": s.lp.store.keys().await? })))
}

/// `POST /studio/keys`: creates a key; the key itself is shown once, only its hash is kept.
#[utoipa::path(
    post,
    path = "/studio/keys",
    tag = "own",
    summary = "Create a key; the key is shown once.",
    request_body = NewKey,
    responses(
        (status = 201, description = "{id, name, role, key}", body = Object),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn create_key(
    State(s): State<Shared>,
    ApiJson(k): ApiJson<NewKey>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = k.name.trim();
    if name.is_empty() || k.name.chars().count() > 100 {
        return Err(ApiError::invalid_param(
            "name",
            "name must be 1 to 100 characters",
        ));
    }
    let key = format!("clawrl-{:032x}", rand::random::<u128>());
    let id = s.lp.store.add_key(name, &key, k.role).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": name, "role": k.role, "key": key })),
    ))
}

/// `DELETE /studio/keys/{id}`.
#[utoipa::path(
    delete,
    path = "/studio/keys/{id}",
    tag = "own",
    summary = "Delete a key: it is refused from now on.",
    params(("id" = i64, Path, description = "The key id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such key.", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn delete_key(State(s): State<Shared>, Path(id): Path<i64>) -> ApiResult<StatusCode> {
    s.lp.store.delete_key(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /studio/keys/{id}/reject`: everything the key contributed stops training (hints
/// rejected, samples dropped, waiting next states set aside) and serving rolls back before
/// the first version trained on it. The key itself stays (delete it to lock it out).
#[utoipa::path(
    post,
    path = "/studio/keys/{id}/reject",
    tag = "own",
    summary = "Reject everything a key contributed (poisoning) and roll back before the first version trained on it.",
    params(("id" = i64, Path, description = "The key id.")),
    responses(
        (status = 200, description = "What was rejected and the version now served.", body = Object),
        (status = 404, description = "No such key.", body = ErrorBody),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn reject_key(
    State(s): State<Shared>,
    Path(id): Path<i64>,
) -> ApiResult<Json<clawrl_loop::sample::KeyRejection>> {
    Ok(Json(clawrl_loop::sample::reject_key(&s.lp, id).await?))
}

/// `GET /healthz`: 200 while serving; `status` is `degraded` while a component fails
/// (`problems`: component, message, since_ms).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "open",
    summary = "Liveness: 200 while serving; status ok or degraded, with the failing components.",
    responses((status = 200, description = "{status, problems, model, device, judge, policy_version, sampling_defaults}", body = Object))
)]
pub async fn healthz(State(s): State<Shared>) -> Json<Value> {
    let problems = s.lp.problems();
    Json(
        json!({ "status": if problems.is_empty() { "ok" } else { "degraded" }, "problems": problems, "model": s.model_id, "device": s.lp.model.device(), "judge": s.lp.judge.name(), "policy_version": s.lp.live().version, "sampling_defaults": s.lp.model.sampling }),
    )
}

/// `GET /metrics`: Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "openai",
    summary = "Prometheus metrics.",
    responses(
        (status = 200, description = "Prometheus text format.", content_type = "text/plain", body = String),
        (status = 503, description = "The database is locked by another process (`database_locked`).", body = ErrorBody),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn metrics(State(s): State<Shared>) -> ApiResult<impl IntoResponse> {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let c = s.lp.store.counts().await?;
    let settings = s.lp.settings();
    let mut out = String::new();
    let rows: [(&str, &str, &str, f64); 13] = [
        (
            "completions_total",
            "counter",
            "Chat completions served since start.",
            s.lp.counters.completions.load(Relaxed) as f64,
        ),
        (
            "generated_tokens_total",
            "counter",
            "Tokens generated since start.",
            s.lp.counters.tokens.load(Relaxed) as f64,
        ),
        (
            "stream_errors_total",
            "counter",
            "Streams that ended in an error.",
            s.lp.counters.errors.load(Relaxed) as f64,
        ),
        (
            "train_steps_total",
            "counter",
            "Training steps since start.",
            s.lp.counters.steps.load(Relaxed) as f64,
        ),
        (
            "policy_version",
            "gauge",
            "The policy version being served.",
            s.lp.live().version as f64,
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
