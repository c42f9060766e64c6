//! `clawrl serve`: the live loop behind an OpenAI-compatible API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use clawrl_model::Model;
use clawrl_objective::{Method, SelectionMode};
use clawrl_server::{JudgeChoice, ServerConfig, TrainingSettings};
use clawrl_trainer::LoraConfig;

/// Which judge reads replies and tool outputs.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum JudgeKind {
    /// Rules: thanks → +1; "no, …" or the same question again → −1 (the reply as the hint).
    Rules,
    /// The served base model with the judge prompt (votes from \boxed{}, hints from markers).
    Model,
    /// An OpenAI-compatible endpoint (--judge-url, --judge-model; key in CLAWRL_JUDGE_API_KEY).
    Http,
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on. Anything but loopback needs --owner-key.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    bind: SocketAddr,
    /// The SQLite database (default: clawrl.sqlite in the user's data directory).
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Where checkpoints go (default: checkpoints/ beside the database).
    #[arg(long, value_name = "DIR")]
    checkpoints: Option<PathBuf>,
    /// The owner's API key (≥ 16 characters). With it every request needs a key; the owner
    /// creates client and annotator keys through /studio/keys.
    #[arg(
        long,
        env = "CLAWRL_OWNER_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    owner_key: Option<String>,
    /// The model id /v1/models reports (what clients put in "model").
    #[arg(long, default_value = "clawrl")]
    model_id: String,
    /// The judge of replies and tool outputs (explicit feedback always goes to the rules).
    #[arg(long, value_enum, default_value_t = JudgeKind::Rules)]
    judge: JudgeKind,
    /// Base URL of the judge endpoint, e.g. http://localhost:8000/v1 (with --judge http).
    #[arg(long, value_name = "URL")]
    judge_url: Option<String>,
    /// Model name at the judge endpoint (with --judge http).
    #[arg(long, value_name = "NAME")]
    judge_model: Option<String>,
    /// Judge votes per next state (m); r_t is their majority.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    votes: u8,
    /// Serve the Studio UI from this directory (the built `ui/dist`) at /ui/, for annotators
    /// in a browser.
    #[arg(long, value_name = "DIR")]
    ui: Option<PathBuf>,
    /// Samples per training step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Which signals train: combined, rl, opd, or none (serve and judge only: the control).
    #[arg(long, default_value = "combined")]
    method: Method,
    /// Hint selection: sequence, token, random or longest.
    #[arg(long, default_value = "sequence")]
    selection: SelectionMode,
    /// k of the top-k supports.
    #[arg(long, default_value_t = 4)]
    top_k: usize,
    /// LoRA rank (α is twice the rank).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Sessions end after this many seconds without a request.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    idle_timeout: u64,
    /// Threads for training (it runs at a lower priority than serving).
    #[arg(long, default_value_t = 1)]
    train_threads: usize,
    /// Concurrent requests decoded together in one model step, at most (continuous
    /// batching); more wait, after their first token, for a place (1 decodes one request at
    /// a time). A request's tokens are the same either way.
    #[arg(long, value_name = "N", default_value_t = clawrl_model::DEFAULT_MAX_BATCH, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    max_batch: usize,
    #[command(flatten)]
    levers: crate::levers::Levers,
    /// Start with training paused.
    #[arg(long)]
    paused: bool,
    /// When a conversation does not fit the model's context, drop its oldest messages after
    /// the system prompt (never the last user message) instead of refusing it with
    /// `context_length_exceeded`: for clients that never compact. Each turn records how many.
    #[arg(long)]
    drop_oldest_messages: bool,
    /// Most new tokens one answer may have; a request's larger `max_tokens` is lowered to it
    /// (the answer's usage says so).
    #[arg(long, value_name = "N", default_value_t = clawrl_server::Limits::default().max_new_tokens as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_new_tokens: u64,
}

fn data_dir() -> Result<PathBuf> {
    clawrl_server::default_data_dir().context("no user data directory here; pass --db")
}

/// Runs the server until Ctrl-C.
pub(crate) fn serve(a: ServeArgs, model: Model) -> Result<()> {
    let db = match a.db {
        Some(p) => p,
        None => data_dir()?.join("clawrl.sqlite"),
    };
    let checkpoints = a.checkpoints.unwrap_or_else(|| {
        db.parent()
            .map_or_else(|| PathBuf::from("checkpoints"), |d| d.join("checkpoints"))
    });
    let judge = match a.judge {
        JudgeKind::Rules => JudgeChoice::Rules,
        JudgeKind::Model => JudgeChoice::Model { temperature: 0.7 },
        JudgeKind::Http => {
            let (Some(url), Some(model)) = (a.judge_url, a.judge_model) else {
                bail!("--judge http needs --judge-url and --judge-model");
            };
            JudgeChoice::Http {
                url,
                model,
                key: std::env::var("CLAWRL_JUDGE_API_KEY").ok(),
            }
        }
    };
    if a.rank == 0 {
        bail!("--rank must be at least 1");
    }
    let mut config = ServerConfig::new(&a.model_id, &data_dir().unwrap_or_default());
    config.bind = a.bind;
    config.db = db.clone();
    config.lp.checkpoints = checkpoints;
    config.owner_key = a.owner_key;
    config.lp.judge = judge;
    config.lp.votes = usize::from(a.votes);
    config.lp.idle_timeout = Duration::from_secs(a.idle_timeout.max(1));
    config.limits.drop_oldest_messages = a.drop_oldest_messages;
    config.limits.max_new_tokens = a.max_new_tokens as usize;
    config.lp.training = TrainingSettings {
        batch_size: a.batch_size,
        method: a.method,
        selection: a.selection,
        top_k: a.top_k,
        paused: a.paused,
        ..a.levers.settings()?
    };
    config.lp.training.validate()?;
    config.lp.lora = LoraConfig::with_rank(a.rank);
    config.lp.train_threads = a.train_threads.max(1);
    config.lp.max_batch = a.max_batch;
    config.ui = a.ui;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let source = model.source.clone();
        let server = clawrl_server::start(config, Arc::new(model)).await?;
        eprintln!(
            "clawrl serving {source}\n  OpenAI API: http://{}/v1  (model \"{}\")\n  database:   {}\n  Ctrl-C stops.",
            server.addr,
            a.model_id,
            db.display()
        );
        server.run_until_ctrl_c().await?;
        anyhow::Ok(())
    })
}
