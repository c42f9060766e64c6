//! API keys and roles: client (chat) < annotator (+ feedback and hints) < owner (+ training
//! control, keys, roll back). Keys arrive as `Authorization: Bearer KEY` (what OpenAI SDKs
//! send) or `X-Api-Key`. On loopback with no keys configured, every caller is the owner.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clawrl_store::Role;

use crate::error::ApiError;
use crate::state::Shared;

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The key's id (`None` without keys).
    pub key_id: Option<i64>,
    /// The key's name (`local` without keys).
    pub name: String,
    /// Its role.
    pub role: Role,
}

fn key_of(req: &Request) -> Option<&str> {
    let h = req.headers();
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

async fn check(s: Shared, mut req: Request, next: Next, need: Role) -> Response {
    let caller = if s.auth_required {
        let Some(key) = key_of(&req) else {
            return ApiError::unauthorized(
                "this server needs an API key: send Authorization: Bearer KEY",
            )
            .into_response();
        };
        match s.lp.store.key_role(key).await {
            Ok(Some((id, name, role))) => Caller {
                key_id: Some(id),
                name,
                role,
            },
            Ok(None) => return ApiError::unauthorized("unknown API key").into_response(),
            Err(e) => return ApiError::from(e).into_response(),
        }
    } else {
        Caller {
            key_id: None,
            name: "local".into(),
            role: Role::Owner,
        }
    };
    if caller.role < need {
        return ApiError::forbidden(format!(
            "a {:?} key cannot do this; it needs the {:?} role",
            caller.role, need
        ))
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Requires a client key (or better).
pub async fn client(State(s): State<Shared>, req: Request, next: Next) -> Response {
    check(s, req, next, Role::Client).await
}

/// Requires an annotator key (or better).
pub async fn annotator(State(s): State<Shared>, req: Request, next: Next) -> Response {
    check(s, req, next, Role::Annotator).await
}

/// Requires the owner's key.
pub async fn owner(State(s): State<Shared>, req: Request, next: Next) -> Response {
    check(s, req, next, Role::Owner).await
}
