//! `clawrl`: the command line of ClawRL Studio.

mod agent;
mod bench;
mod bench_serve;
mod cmd;
mod export;
mod levers;
mod serve;
mod simulate;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use clawrl_model::{Device, FetchProgress, Model};
use indicatif::{ProgressBar, ProgressStyle};

/// ClawRL Studio: a personal assistant that learns by being used (OpenClaw-RL on a laptop).
#[derive(Parser)]
#[command(name = "clawrl", version, about, long_about = None)]
struct Cli {
    /// Model to use: a GGUF file or a Hugging Face directory (config.json, *.safetensors,
    /// tokenizer.json). Default: the embedded SmolLM2-135M-Instruct, fetched on first use.
    /// For benchmarks, `random:smollm2-135m` or `random:qwen3-4b`: that shape with random
    /// weights (Q8_0) and a byte-level tokenizer, built in memory.
    #[arg(long, global = true, env = "CLAWRL_MODEL", value_name = "PATH")]
    model: Option<PathBuf>,

    /// Where the model runs: auto (an NVIDIA GPU through CUDA in builds with the `cuda`
    /// feature, else a real GPU when wgpu finds one, else the CPU), cpu, gpu (wgpu: any adapter,
    /// software ones such as lavapipe included) or cuda (an NVIDIA GPU); gpu and cuda are an
    /// error when there is none. LoRA training runs there too (full fine-tuning on the CPU).
    #[arg(long, global = true, env = "CLAWRL_DEVICE", default_value = "auto", value_parser = ["auto", "cpu", "gpu", "cuda"])]
    device: String,

    /// Compute threads (default: all cores).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,

    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the embedded model.
    #[command(subcommand)]
    Model(cmd::ModelCmd),
    /// Chat with the model in the terminal, streaming its replies.
    Chat(cmd::ChatArgs),
    /// Generate a reply to one prompt.
    Generate(cmd::GenerateArgs),
    /// Score a fixed response under one or more prompts (JSON in, JSON out).
    Score(cmd::ScoreArgs),
    /// Serve the OpenAI-compatible API and learn from every next state in the background.
    Serve(serve::ServeArgs),
    /// Simulated users chat with the live server: sessions until each persona's preference
    /// is learned, per method, hint selection and seed.
    Simulate(simulate::SimulateArgs),
    /// The model as a general agent in a built-in environment (DESIGN.md §8).
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// The live training curves in a native window (egui), full screen for talks (F11).
    Monitor(MonitorArgs),
    /// Export a trained assistant for other runtimes.
    #[command(subcommand)]
    Export(export::ExportCmd),
    /// Measure speed and memory.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Show learning live on the model.
    #[command(subcommand)]
    Demo(DemoCmd),
}

#[derive(clap::Args)]
struct MonitorArgs {
    /// The server to watch.
    #[arg(default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An annotator's or owner's key when the server needs one.
    #[arg(long, env = "CLAWRL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Start full screen (F11 toggles).
    #[arg(long)]
    fullscreen: bool,
    /// Write a PNG of the window to FILE once the curves are drawn, then exit (for slides and
    /// tests).
    #[arg(long, value_name = "FILE")]
    screenshot: Option<PathBuf>,
    /// With --screenshot: seconds to wait for a first training step before taking it anyway.
    #[arg(long, default_value_t = 30)]
    wait: u64,
}

#[derive(Subcommand)]
enum DemoCmd {
    /// A few RL and OPD steps and one hint selection, printed as they happen.
    Train {
        /// Steps of each kind.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
        steps: u16,
        /// Save the OPD-trained adapter into this directory (PEFT layout).
        #[arg(long, value_name = "DIR")]
        save: Option<PathBuf>,
    },
}

fn main() {
    // SAFETY: the first statements of main, before any other thread exists.
    unsafe {
        clawrl_trainer::keep_candle_on_the_calling_thread();
        // Mesa's implicit Vulkan layer that orders GPUs opens a Wayland/X connection just to
        // do so, printing an error on headless machines; the adapter is chosen here anyway.
        if std::env::var_os("NODEVICE_SELECT").is_none() {
            std::env::set_var("NODEVICE_SELECT", "1");
        }
    }
    let cli = Cli::parse();
    init_logging(cli.verbose);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let threads = cli.threads.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .context("starting the compute threads")?;
    let model = ModelSource {
        path: cli.model,
        device: cli.device.parse()?,
    };
    match cli.command {
        Command::Model(c) => cmd::model(c, &model),
        Command::Chat(a) => cmd::chat(a, &model.load()?),
        Command::Generate(a) => cmd::generate(a, &model.load()?),
        Command::Score(a) => cmd::score(a, &model.load()?),
        Command::Serve(a) => serve::serve(a, model.load()?),
        Command::Simulate(a) => {
            // A remote server brings its own model.
            let m = if a.uses_url() {
                None
            } else {
                Some(model.load()?)
            };
            simulate::simulate(a, m, threads)
        }
        Command::Agent(c) => {
            c.validate()?;
            let m = if c.uses_url() {
                None
            } else {
                Some(model.load()?)
            };
            agent::run(c, m)
        }
        Command::Export(c) => export::run(c, &model),
        Command::Monitor(a) => Ok(clawrl_monitor::run(clawrl_monitor::Options {
            url: a.url,
            api_key: a.api_key,
            fullscreen: a.fullscreen,
            screenshot: a.screenshot,
            wait: std::time::Duration::from_secs(a.wait),
        })?),
        Command::Bench(b) => bench::run(b, model.load()?, threads),
        Command::Demo(DemoCmd::Train { steps, save }) => {
            let m = model.load()?;
            eprintln!("Learning demo on {}", m.source);
            clawrl_trainer::demo::run(&m, usize::from(steps), save.as_deref(), |line| {
                println!("{line}")
            })?;
            Ok(())
        }
    }
}

/// The model the user chose, loaded on demand onto the device they chose.
pub(crate) struct ModelSource {
    path: Option<PathBuf>,
    device: Device,
}

impl ModelSource {
    /// The model's path, fetching the embedded one if needed.
    pub(crate) fn path(&self) -> Result<PathBuf> {
        match &self.path {
            Some(p) => Ok(p.clone()),
            None => Ok(clawrl_model::default_model_path(&mut fetch_progress())?),
        }
    }

    /// Loads the model (or builds `random:<shape>`) and moves it to the chosen device.
    pub(crate) fn load(&self) -> Result<Model> {
        let random = self
            .path
            .as_deref()
            .and_then(|p| p.to_str())
            .and_then(|p| p.strip_prefix("random:"));
        let mut m = match random {
            Some(shape) => Model::random(shape, 0)?,
            None => {
                let path = self.path()?;
                Model::load(&path).with_context(|| format!("loading {}", path.display()))?
            }
        };
        let on = m.set_device(self.device)?;
        tracing::info!(device = %on, "model placed");
        Ok(m)
    }
}

/// A progress callback that draws a bar on stderr while the model is fetched.
pub(crate) fn fetch_progress() -> impl FnMut(FetchProgress) {
    let mut bar: Option<ProgressBar> = None;
    move |p| match p {
        FetchProgress::Downloading => {
            eprintln!("Fetching the embedded model (SmolLM2-135M-Instruct, 98 MB)…")
        }
        FetchProgress::Extracting { done, total } => {
            let b = bar.get_or_insert_with(|| {
                let b = ProgressBar::new(total);
                b.set_style(
                    ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                );
                b.set_message("extracting and verifying");
                b
            });
            b.set_position(done);
        }
        FetchProgress::Ready => {
            if let Some(b) = bar.take() {
                b.finish_with_message("verified");
            }
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
