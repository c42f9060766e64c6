//! The HTTP face of the live loop (DESIGN.md §4): the OpenAI-compatible API that serves the
//! live policy, the Studio API, the event stream, keys and roles, and the OpenAPI document.
//! Routes, extractors and auth live here; the loop's stages live in `clawrl-loop`.

mod auth;
mod error;
mod integer;
mod openai;
mod openapi;
mod refusals;
mod state;
mod studio;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::response::Redirect;
use axum::routing::get;
use axum::{Extension, Router};
use clawrl_loop::LoopHandle;
use clawrl_model::Model;
use clawrl_store::{Role, Store};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;
use tracing::info;
use utoipa::OpenApi;

pub use clawrl_loop::{JudgeChoice, LoopConfig, TrainingSettings};
pub use error::ApiError;
pub use state::Limits;

use crate::state::{AppState, Shared};

/// A server failure at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] clawrl_store::Error),
    /// Binding failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The loop could not start (its judge, or restoring training).
    #[error("starting the loop: {0}")]
    Loop(#[from] clawrl_loop::Error),
}

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on; anything but loopback needs `owner_key`.
    pub bind: SocketAddr,
    /// The SQLite file.
    pub db: PathBuf,
    /// The model id `/v1/models` reports.
    pub model_id: String,
    /// The owner's key; when set (or when keys exist in the store) every request needs a key.
    pub owner_key: Option<String>,
    /// Request limits.
    pub limits: Limits,
    /// The built Studio UI (`ui/dist`), served at `/ui/` when set.
    pub ui: Option<PathBuf>,
    /// The live loop: judge, votes, idle timeout, training settings, adapter shape,
    /// checkpoints.
    pub lp: LoopConfig,
}

impl ServerConfig {
    /// Defaults for `model_id` with the database and checkpoints under `data_dir`.
    pub fn new(model_id: &str, data_dir: &std::path::Path) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            db: data_dir.join("clawrl.sqlite"),
            model_id: model_id.to_string(),
            owner_key: None,
            limits: Limits::default(),
            ui: None,
            lp: LoopConfig::new(&data_dir.join("checkpoints")),
        }
    }
}

/// Where the database and checkpoints live by default: `$CLAWRL_DATA_DIR`, else `clawrl/` in
/// the user's data directory.
pub fn default_data_dir() -> Option<PathBuf> {
    match std::env::var_os("CLAWRL_DATA_DIR") {
        Some(d) => Some(PathBuf::from(d)),
        None => dirs::data_dir().map(|d| d.join("clawrl")),
    }
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    serve: tokio::task::JoinHandle<std::io::Result<()>>,
    lp: Option<LoopHandle>,
}

impl Server {
    /// The policy version being served.
    pub fn policy_version(&self) -> i64 {
        self.lp.as_ref().map_or(0, |l| l.state.live().version)
    }

    /// Stops accepting, finishes open requests, stops the workers and the training thread
    /// (after its current step).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.serve).await;
        self.halt().await;
    }

    /// Serves until the listener fails or the process is interrupted (Ctrl-C).
    pub async fn run_until_ctrl_c(mut self) -> std::io::Result<()> {
        let result = tokio::select! {
            r = &mut self.serve => r.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            _ = tokio::signal::ctrl_c() => {
                info!("interrupted; finishing open requests");
                if let Some(stop) = self.stop.take() {
                    let _ = stop.send(());
                }
                let _ = (&mut self.serve).await;
                Ok(())
            }
        };
        self.halt().await;
        result
    }

    async fn halt(&mut self) {
        if let Some(lp) = self.lp.take() {
            lp.shutdown().await;
        }
    }
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Opens the store, restores training, binds, and starts serving and the workers.
pub async fn start(config: ServerConfig, model: Arc<Model>) -> Result<Server, Error> {
    if let Some(dir) = &config.ui
        && !dir.join("index.html").is_file()
    {
        return Err(Error::Config(format!(
            "{} has no index.html: build the UI first (npm --prefix ui ci && npm --prefix ui run build)",
            dir.display()
        )));
    }
    let store = Store::open(&config.db).await?;
    if let Some(key) = &config.owner_key {
        if key.len() < 16 {
            return Err(Error::Config(
                "the owner key must be at least 16 characters".into(),
            ));
        }
        store.add_key("owner", key, Role::Owner).await?;
    }
    let has_keys = !store.keys().await?.is_empty();
    if !is_loopback(&config.bind) && !has_keys {
        return Err(Error::Config(format!(
            "refusing to listen on {} without an API key: set --owner-key (or CLAWRL_OWNER_KEY), \
             or bind to 127.0.0.1",
            config.bind
        )));
    }
    let lp = clawrl_loop::start(config.lp.clone(), model, store)
        .await
        .map_err(|e| match e {
            clawrl_loop::Error::Invalid { message, .. } | clawrl_loop::Error::Config(message) => {
                Error::Config(message)
            }
            other => Error::Loop(other),
        })?;
    let state: Shared = Arc::new(AppState {
        lp: lp.state.clone(),
        model_id: config.model_id.clone(),
        auth_required: has_keys,
        limits: config.limits,
        refusals: Default::default(),
    });
    let listener = TcpListener::bind(config.bind).await?;
    let addr = listener.local_addr()?;
    let mut app = router(state.clone());
    if let Some(dir) = &config.ui {
        // The UI's files carry no data, so they need no key; everything they call does.
        app = app
            .nest_service("/ui", ServeDir::new(dir))
            .route("/", get(|| async { Redirect::temporary("/ui/") }));
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    info!(%addr, version = lp.state.live().version, auth = has_keys, "serving");
    Ok(Server {
        addr,
        stop: Some(stop),
        serve,
        lp: Some(lp),
    })
}

/// The routes with their middleware, and the OpenAPI document generated from the same
/// handlers (see `openapi.rs`).
fn router(s: Shared) -> Router {
    use studio::*;
    use utoipa_axum::{router::OpenApiRouter, routes};
    let client = OpenApiRouter::new()
        .routes(routes!(openai::models))
        .routes(routes!(openai::chat_completions))
        .routes(routes!(admin::metrics))
        .route_layer(from_fn_with_state(s.clone(), auth::client));
    let annotator = OpenApiRouter::new()
        .routes(routes!(turns::sessions))
        .routes(routes!(turns::session))
        .routes(routes!(turns::first_answers))
        .routes(routes!(turns::turn))
        .routes(routes!(turns::inspect))
        .routes(routes!(turns::feedback))
        .routes(routes!(hints::add_hint))
        .routes(routes!(hints::preview))
        .routes(routes!(hints::accept_hint))
        .routes(routes!(hints::reject_hint))
        .routes(routes!(turns::queue))
        .routes(routes!(training::training))
        .routes(routes!(training::steps))
        .routes(routes!(training::versions))
        .routes(routes!(admin::events))
        .routes(routes!(refusals::list))
        .route_layer(from_fn_with_state(s.clone(), auth::annotator));
    let owner = OpenApiRouter::new()
        .routes(routes!(training::update_training))
        .routes(routes!(training::pause))
        .routes(routes!(training::resume))
        .routes(routes!(training::activate))
        .routes(routes!(admin::keys, admin::create_key))
        .routes(routes!(admin::delete_key))
        .routes(routes!(admin::reject_key))
        .route_layer(from_fn_with_state(s.clone(), auth::owner));
    let (routes, api) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(admin::healthz))
        .routes(routes!(openapi::document))
        .merge(client)
        .merge(annotator)
        .merge(owner)
        .split_for_parts();
    let document = Arc::new(openapi::finish(api, s.auth_required));
    let limit = s.limits.max_body_bytes;
    routes
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(Extension(document))
        .layer(from_fn_with_state(s.clone(), refusals::note))
        .layer(DefaultBodyLimit::max(limit))
        .layer(TraceLayer::new_for_http())
        .with_state(s)
}
