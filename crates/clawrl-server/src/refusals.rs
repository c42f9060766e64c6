//! Every refused request (a 4xx) is logged at info with its reason and session, kept in a
//! short in-memory list for the Studio (`GET /studio/refused`), and streamed as a `refused`
//! event: a client whose turns never arrive shows why here.

use axum::Json;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use clawrl_loop::Event;
use serde_json::{Value, json};
use tracing::info;

use crate::error::Refusal;
use crate::state::{Refused, Shared};

/// Middleware: notes every 4xx answer.
pub async fn note(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().to_string(), req.uri().path().to_string());
    let header_session = req
        .headers()
        .get("x-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let r = next.run(req).await;
    let status = r.status();
    if !status.is_client_error() {
        return r;
    }
    let refusal = r.extensions().get::<Refusal>().cloned();
    let reason = refusal
        .as_ref()
        .map(|f| f.message.clone())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("refused").to_string());
    let session_id = refusal.and_then(|f| f.session).or(header_session);
    info!(%method, %path, status = status.as_u16(), session = ?session_id, %reason, "refused");
    let refused = Refused {
        at: clawrl_store::now_ms(),
        method,
        path,
        status: status.as_u16(),
        reason,
        session_id,
    };
    s.refusals.push(refused.clone());
    s.lp.emit(Event::Refused {
        method: refused.method,
        path: refused.path,
        status: refused.status,
        reason: refused.reason,
        session_id: refused.session_id,
    });
    r
}

/// `GET /studio/refused`: the latest refused requests, newest first.
#[utoipa::path(
    get,
    path = "/studio/refused",
    tag = "annotate",
    summary = "The latest refused requests (4xx), newest first, with why and the session.",
    responses(
        (status = 200, description = "{refused: [...]}", body = Object),
    ),
    security(("bearer" = []), ("api_key" = []))
)]
pub async fn list(State(s): State<Shared>) -> Json<Value> {
    let mut all = s.refusals.list();
    all.reverse();
    Json(json!({ "refused": all }))
}
