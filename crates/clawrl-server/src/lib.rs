//! The live loop in one server (DESIGN.md §1, §4): an OpenAI-compatible API that serves the
//! live policy and records every turn; a judge worker that pairs next states with turns, votes,
//! selects hints by overlap and stores samples; a training thread that steps the hybrid
//! objective at `batch_size` samples and publishes each new adapter between requests; and the
//! Studio API around them.

mod auth;
mod error;
mod openai;
mod openapi;
mod pipeline;
mod state;
mod studio;
mod training;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::response::Redirect;
use axum::routing::{delete, get, post};
use clawrl_model::Model;
use clawrl_signals::{HttpJudge, Judge, ModelJudge, RulesJudge};
use clawrl_store::{Role, Store};
use clawrl_trainer::LoraConfig;
use tokio::net::TcpListener;
use tokio::sync::{Notify, broadcast, oneshot};
use tower_http::services::ServeDir;
use tower_http::trace::TraceLayer;
use tracing::{info, warn};

pub use error::ApiError;
pub use openapi::ROUTES;
pub use state::{Limits, TrainingSettings};

use crate::state::{AppState, Counters, Shared};
use crate::training::{Control, TrainerSetup};

/// A server failure at start-up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] clawrl_store::Error),
    /// Binding or threads failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The trainer could not be restored.
    #[error("restoring training: {0}")]
    Trainer(String),
}

/// Which judge reads replies and tool outputs (explicit feedback always goes to the rules).
#[derive(Clone, Debug)]
pub enum JudgeChoice {
    /// The rules judge.
    Rules,
    /// The served base model with the judge prompt, sampled at this temperature.
    Model {
        /// Sampling temperature of each vote.
        temperature: f32,
    },
    /// An OpenAI-compatible endpoint.
    Http {
        /// Base URL, e.g. `http://localhost:8000/v1`.
        url: String,
        /// Model name to ask for.
        model: String,
        /// Bearer key.
        key: Option<String>,
    },
}

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on; anything but loopback needs `owner_key`.
    pub bind: SocketAddr,
    /// The SQLite file.
    pub db: PathBuf,
    /// Checkpoints directory (one sub-directory per policy version).
    pub checkpoints: PathBuf,
    /// The model id `/v1/models` reports.
    pub model_id: String,
    /// The owner's key; when set (or when keys exist in the store) every request needs a key.
    pub owner_key: Option<String>,
    /// The judge.
    pub judge: JudgeChoice,
    /// Votes per next state (m).
    pub votes: usize,
    /// Sessions end after this long without a request.
    pub idle_timeout: Duration,
    /// Starting training settings.
    pub training: TrainingSettings,
    /// Adapter shape.
    pub lora: LoraConfig,
    /// Seed of fresh adapters.
    pub seed: u64,
    /// Request limits.
    pub limits: Limits,
    /// Threads the training pool uses.
    pub train_threads: usize,
    /// The built Studio UI (`ui/dist`), served at `/ui/` when set.
    pub ui: Option<PathBuf>,
}

impl ServerConfig {
    /// Defaults for `model_id` with the database and checkpoints under `data_dir`.
    pub fn new(model_id: &str, data_dir: &std::path::Path) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            db: data_dir.join("clawrl.sqlite"),
            checkpoints: data_dir.join("checkpoints"),
            model_id: model_id.to_string(),
            owner_key: None,
            judge: JudgeChoice::Rules,
            votes: 1,
            idle_timeout: Duration::from_secs(15 * 60),
            training: TrainingSettings::default(),
            lora: LoraConfig::default(),
            seed: 0,
            limits: Limits::default(),
            train_threads: 1,
            ui: None,
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
    workers: Vec<tokio::task::JoinHandle<()>>,
    trainer: Option<std::thread::JoinHandle<()>>,
    state: Shared,
}

impl Server {
    /// The policy version being served.
    pub fn policy_version(&self) -> i64 {
        self.state.live().version
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
        for w in &self.workers {
            w.abort();
        }
        let _ = self.state.control.send(Control::Stop);
        if let Some(t) = self.trainer.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Opens the store, restores training, binds, and starts serving and the workers.
pub async fn start(config: ServerConfig, model: Arc<Model>) -> Result<Server, Error> {
    config
        .training
        .validate()
        .map_err(|e| Error::Config(e.message))?;
    if config.votes == 0 || config.votes > 16 {
        return Err(Error::Config("--votes must be 1..=16".into()));
    }
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
    let judge: Arc<dyn Judge> = match &config.judge {
        JudgeChoice::Rules => Arc::new(RulesJudge),
        JudgeChoice::Model { temperature } => {
            Arc::new(ModelJudge::new(model.clone(), *temperature))
        }
        JudgeChoice::Http { url, model, key } => Arc::new(
            HttpJudge::new(url, model, key.clone()).map_err(|e| Error::Config(e.to_string()))?,
        ),
    };
    let (control, control_rx) = std::sync::mpsc::channel();
    let (events, _) = broadcast::channel(1024);
    let state: Shared = Arc::new(AppState {
        model: model.clone(),
        model_id: config.model_id.clone(),
        store,
        live: RwLock::new(state::Live::default()),
        settings: RwLock::new(config.training.clone()),
        control,
        judge_wake: Notify::new(),
        judge,
        votes: config.votes,
        auth_required: has_keys,
        limits: config.limits,
        idle_timeout: config.idle_timeout,
        events,
        counters: Counters::default(),
        gate: clawrl_trainer::Gate::default(),
    });
    let setup = TrainerSetup {
        model,
        lora: config.lora.clone(),
        checkpoints: config.checkpoints.clone(),
        seed: config.seed,
        threads: config.train_threads.max(1),
        gate: state.gate.clone(),
    };
    let rt = tokio::runtime::Handle::current();
    let (trainer, live, setup) = {
        let state = state.clone();
        let training = config.training.clone();
        tokio::task::spawn_blocking(move || {
            training::restore(&state, &setup, &training, &rt).map(|(t, l)| (t, l, setup))
        })
        .await
        .map_err(|e| Error::Trainer(e.to_string()))?
        .map_err(Error::Trainer)?
    };
    state.publish(live);
    let trainer = training::spawn(state.clone(), setup, trainer, control_rx)?;
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
    let workers = vec![
        tokio::spawn(pipeline::run(state.clone())),
        tokio::spawn(end_idle_sessions(state.clone())),
    ];
    // Samples left pending by a previous run train as soon as there are enough.
    state.wake_trainer();
    state.judge_wake.notify_one();
    info!(%addr, version = state.live().version, auth = state.auth_required, "serving");
    Ok(Server {
        addr,
        stop: Some(stop),
        serve,
        workers,
        trainer: Some(trainer),
        state,
    })
}

async fn end_idle_sessions(s: Shared) {
    let every = (s.idle_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        tokio::time::sleep(every).await;
        let before = clawrl_store::now_ms() - s.idle_timeout.as_millis() as i64;
        match s.store.end_idle_sessions(before).await {
            Ok(ended) if !ended.is_empty() => info!(sessions = ended.len(), "idle sessions ended"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "ending idle sessions"),
        }
    }
}

fn router(s: Shared) -> Router {
    use studio::*;
    let client = Router::new()
        .route("/v1/models", get(openai::models))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/metrics", get(metrics))
        .route_layer(from_fn_with_state(s.clone(), auth::client));
    let annotator = Router::new()
        .route("/studio/sessions", get(sessions))
        .route("/studio/sessions/{id}", get(session))
        .route("/studio/turns/{id}", get(turn))
        .route("/studio/turns/{id}/inspect", get(inspect))
        .route("/studio/turns/{id}/feedback", post(feedback))
        .route("/studio/turns/{id}/hints", post(add_hint))
        .route("/studio/turns/{id}/hints/preview", post(preview))
        .route("/studio/hints/{id}/accept", post(accept_hint))
        .route("/studio/hints/{id}/reject", post(reject_hint))
        .route("/studio/queue", get(queue))
        .route("/studio/training", get(training))
        .route("/studio/steps", get(steps))
        .route("/studio/versions", get(versions))
        .route("/studio/events", get(events))
        .route_layer(from_fn_with_state(s.clone(), auth::annotator));
    let owner = Router::new()
        .route("/studio/training/settings", post(update_training))
        .route("/studio/training/pause", post(pause))
        .route("/studio/training/resume", post(resume))
        .route("/studio/versions/{v}/activate", post(activate))
        .route("/studio/keys", get(keys).post(create_key))
        .route("/studio/keys/{id}", delete(delete_key))
        .route_layer(from_fn_with_state(s.clone(), auth::owner));
    let limit = s.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::document()) }),
        )
        .merge(client)
        .merge(annotator)
        .merge(owner)
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(TraceLayer::new_for_http())
        .with_state(s)
}
