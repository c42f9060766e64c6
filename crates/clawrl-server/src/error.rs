//! Errors as OpenAI-style bodies: `{"error": {"message", "type", "param", "code"}}` with a 4xx
//! status for anything the request got wrong.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI's error type (`invalid_request_error`, `authentication_error`, …).
    pub kind: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The offending field, when there is one.
    pub param: Option<&'static str>,
    /// OpenAI's error code where it names one (`context_length_exceeded`); else the status.
    pub code: Option<&'static str>,
    /// The session of the refused request, when known (for the log and the Studio).
    pub session: Option<String>,
}

/// What a refusal said, left on the response for the refusal log (see `refusals.rs`).
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The error message.
    pub message: String,
    /// The session, when known.
    pub session: Option<String>,
}

impl ApiError {
    /// 400: the request is malformed or invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: None,
            session: None,
        }
    }

    /// 400 naming the field.
    pub fn invalid_param(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param),
            ..Self::invalid(message)
        }
    }

    /// 401: no key or an unknown key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            kind: "authentication_error",
            message: message.into(),
            param: None,
            code: None,
            session: None,
        }
    }

    /// 403: the key's role does not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            kind: "permission_error",
            message: message.into(),
            param: None,
            code: None,
            session: None,
        }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "not_found_error",
            message: message.into(),
            param: None,
            code: None,
            session: None,
        }
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            kind: "invalid_request_error",
            message: message.into(),
            param: None,
            code: None,
            session: None,
        }
    }

    /// 503 with `code`: the server cannot do it now, and a retry may succeed (OpenAI's SDKs
    /// retry a 503 by themselves).
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::warn!(%message, "unavailable");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            message,
            param: None,
            code: Some(code),
            session: None,
        }
    }

    /// 500: our fault; the message is logged and answered.
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(%message, "internal error");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message,
            param: None,
            code: None,
            session: None,
        }
    }

    /// 400 `context_length_exceeded` in OpenAI's shape and words, which clients such as
    /// OpenClaw recognise (and then compact the conversation and retry).
    pub fn context_length_exceeded(context: usize, prompt: usize) -> Self {
        Self {
            param: Some("messages"),
            code: Some("context_length_exceeded"),
            ..Self::invalid(format!(
                "This model's maximum context length is {context} tokens. However, your \
                 messages resulted in {prompt} tokens. Please reduce the length of the messages."
            ))
        }
    }

    /// The same error, naming the request's session (unless it names one already: the
    /// session recovered from the history is more precise than the request's fields).
    pub fn in_session(mut self, session: Option<&str>) -> Self {
        if self.session.is_none() {
            self.session = session.map(str::to_string);
        }
        self
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                kind: self.kind,
                param: self.param,
                code: match self.code {
                    Some(c) => ErrorCode::Name(c),
                    None => ErrorCode::Status(self.status.as_u16()),
                },
            },
        }
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The error inside [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong, for people.
    pub message: String,
    /// OpenAI's error type: `invalid_request_error`, `authentication_error`,
    /// `permission_error`, `not_found_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The offending request field, when there is one.
    pub param: Option<&'static str>,
    /// OpenAI's code where it names one (`context_length_exceeded`, `database_locked`), else
    /// the HTTP status.
    pub code: ErrorCode,
}

/// An error's `code`: a name, or the HTTP status.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ErrorCode {
    /// A named code.
    Name(&'static str),
    /// The HTTP status.
    Status(u16),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(self.body())).into_response();
        r.extensions_mut().insert(Refusal {
            message: self.message,
            session: self.session,
        });
        r
    }
}

impl From<clawrl_store::Error> for ApiError {
    fn from(e: clawrl_store::Error) -> Self {
        match e {
            clawrl_store::Error::NotFound(what) => Self::not_found(format!("{what} not found")),
            e if e.is_busy() => Self::unavailable(
                "database_locked",
                format!(
                    "the database is locked by another process ({e}); nothing of this request \
                     was recorded: retry later"
                ),
            ),
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<clawrl_loop::Error> for ApiError {
    fn from(e: clawrl_loop::Error) -> Self {
        use clawrl_loop::Error as E;
        match e {
            E::Invalid {
                param: Some(p),
                message,
            } => Self::invalid_param(p, message),
            E::Invalid {
                param: None,
                message,
            } => Self::invalid(message),
            E::Conflict(m) => Self::conflict(m),
            E::Store(s) => s.into(),
            E::Model(m @ clawrl_model::Error::Decode(_)) => Self::internal(m.to_string()),
            // The model refuses what does not fit or cannot be rendered: the request's fault.
            E::Model(m) => Self::invalid(m.to_string()),
            other => Self::internal(other.to_string()),
        }
    }
}

/// A generation's failure: the request's fault (400), unless decoding itself failed (500).
impl From<clawrl_model::Error> for ApiError {
    fn from(e: clawrl_model::Error) -> Self {
        clawrl_loop::Error::Model(e).into()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        // OpenAI answers 400 for bodies of the wrong shape (axum says 422); a body too large
        // (413) or of the wrong content type (415) keeps its status.
        let status = match r.status() {
            s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
            _ => StatusCode::BAD_REQUEST,
        };
        Self {
            status,
            kind: "invalid_request_error",
            message: r.body_text(),
            param: None,
            code: None,
            session: None,
        }
    }
}

/// `Json<T>` whose rejections are OpenAI-style errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let Json(v) = Json::<T>::from_request(req, state).await?;
        Ok(Self(v))
    }
}

/// Handler results.
pub type ApiResult<T> = Result<T, ApiError>;

/// `Path<T>` whose rejections are OpenAI-style errors.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Self(v))
            .map_err(|r| ApiError::invalid(r.body_text()))
    }
}

/// `Query<T>` whose rejections are OpenAI-style errors.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|r| ApiError::invalid(r.body_text()))
    }
}
