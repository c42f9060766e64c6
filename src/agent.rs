//! `clawrl agent eval`: the model as a general agent in a built-in environment (DESIGN.md §8),
//! episodes driven through the live server's API; the success rate on held-out tasks.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use clawrl_env::{Agent, Environment, Episode, TerminalEnv, ToolCallEnv};
use clawrl_model::Model;
use clawrl_server::ServerConfig;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// GSM8K tasks from this index on are held out: never trained on, only evaluated.
const GSM8K_HELD_OUT_FROM: usize = 1000;

#[derive(Subcommand)]
pub(crate) enum AgentCmd {
    /// Run episodes on held-out tasks and report the success rate (nothing is trained: the
    /// in-process server runs with method none).
    Eval(EvalArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Env {
    /// GSM8K questions with a calculator tool; success = the right final number.
    ToolCall,
    /// Shell tasks in a sandbox directory (bubblewrap); success = the task's check passes.
    Terminal,
}

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// The environment.
    #[arg(long, value_enum, default_value = "tool-call")]
    env: Env,
    /// Drive a running server instead of starting one in-process (its own policy answers).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// API key for --url.
    #[arg(long, env = "CLAWRL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// tool-call's tasks: a JSON array of {"question", "ground_truth_answer"}; those from
    /// index 1000 on are the held-out split. (terminal's are shipped: the second half of
    /// crates/clawrl-env/tasks/terminal.toml is held out.)
    #[arg(long, value_name = "FILE", default_value = crate::simulate::DEFAULT_TASKS)]
    tasks: PathBuf,
    /// Held-out tasks to run (at most the first N of the split).
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Seed (repeatable): each gives one episode per task.
    #[arg(long, default_values_t = vec![0u64])]
    seed: Vec<u64>,
    /// Answers per episode before it is cut off.
    #[arg(long, default_value_t = 4)]
    max_steps: usize,
    /// The first answer must call the tool (`tool_choice: "required"`, constrained decoding);
    /// by default the model chooses (`auto`).
    #[arg(long)]
    call_first: bool,
    /// New tokens per answer.
    #[arg(long, default_value_t = 160)]
    max_tokens: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Episodes in flight at once.
    #[arg(long, default_value_t = 2)]
    parallel: usize,
    /// Print the result as JSON (with every episode).
    #[arg(long)]
    json: bool,
}

impl AgentCmd {
    /// Whether a running server is driven (no local model needed).
    pub(crate) fn uses_url(&self) -> bool {
        match self {
            AgentCmd::Eval(a) => a.url.is_some(),
        }
    }
}

pub(crate) fn run(cmd: AgentCmd, model: Option<Model>) -> Result<()> {
    match cmd {
        AgentCmd::Eval(a) => eval(a, model),
    }
}

fn eval(a: EvalArgs, model: Option<Model>) -> Result<()> {
    if a.n == 0 || a.max_steps == 0 || a.parallel == 0 {
        bail!("--n, --max-steps and --parallel must be at least 1");
    }
    match a.env {
        Env::ToolCall => {
            let all = clawrl_sim::load_tasks(&a.tasks).context(
                "reading the tasks (run from the project root, or pass --tasks FILE)",
            )?;
            if all.len() <= GSM8K_HELD_OUT_FROM {
                bail!(
                    "{} has {} tasks; the held-out split starts at task {GSM8K_HELD_OUT_FROM}",
                    a.tasks.display(),
                    all.len()
                );
            }
            let tasks = all.into_iter().skip(GSM8K_HELD_OUT_FROM).take(a.n).collect();
            eval_in(&a, ToolCallEnv { tasks }, GSM8K_HELD_OUT_FROM, model)
        }
        Env::Terminal => {
            let mut env = TerminalEnv::builtin()?;
            let from = env.tasks.len() / 2;
            env.tasks = env.tasks.split_off(from);
            env.tasks.truncate(a.n);
            eval_in(&a, env, from, model)
        }
    }
}

/// Runs `env`'s tasks (the held-out split, whose first task is task `offset` of the full set)
/// once per seed and reports.
fn eval_in<E: Environment + 'static>(
    a: &EvalArgs,
    env: E,
    offset: usize,
    model: Option<Model>,
) -> Result<()> {
    let n = env.len();
    let name = env.name();
    let env = Arc::new(env);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let dir = tempfile::tempdir().context("a scratch directory")?;
    let server = match (&a.url, model) {
        (Some(_), _) => None,
        (None, Some(m)) => {
            let mut c = ServerConfig::new("clawrl", dir.path());
            c.bind = "127.0.0.1:0".parse()?;
            c.lp.training.method = "none".parse().map_err(anyhow::Error::msg)?;
            Some(rt.block_on(clawrl_server::start(c, Arc::new(m)))?)
        }
        (None, None) => bail!("no model"),
    };
    let base = match (&a.url, &server) {
        (Some(u), _) => u.clone(),
        (None, Some(s)) => format!("http://{}", s.addr),
        (None, None) => bail!("no server"),
    };
    let mut agent = Agent::new(&base, a.api_key.clone());
    agent.max_steps = a.max_steps;
    agent.max_tokens = a.max_tokens;
    agent.temperature = a.temperature;
    agent.call_first = a.call_first;
    let agent = Arc::new(agent);
    let bar = if a.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new((n * a.seed.len()) as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} episodes, {msg} [{elapsed}, ~{eta} left]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let jobs: Vec<(u64, usize)> = a
        .seed
        .iter()
        .flat_map(|&s| (0..n).map(move |t| (s, t)))
        .collect();
    let episodes: Vec<(u64, Episode)> = rt.block_on(async {
        let mut solved = 0;
        let mut out = Vec::with_capacity(jobs.len());
        let mut runs = futures_util::stream::iter(jobs)
            .map(|(seed, t)| {
                let (agent, env) = (agent.clone(), env.clone());
                async move {
                    let id = format!("env-{name}-{seed}-{}", offset + t);
                    agent.episode(&*env, t, &id, seed).await.map(|e| (seed, e))
                }
            })
            .buffer_unordered(a.parallel);
        while let Some(r) = runs.next().await {
            let (seed, e) = r?;
            solved += usize::from(e.success);
            bar.inc(1);
            bar.set_message(format!("{solved} solved"));
            out.push((seed, e));
        }
        anyhow::Ok(out)
    })?;
    bar.finish_and_clear();
    if let Some(s) = server {
        rt.block_on(s.shutdown());
    }
    let rate = |es: &[&Episode], f: fn(&Episode) -> bool| {
        es.iter().filter(|e| f(e)).count() as f64 / es.len().max(1) as f64
    };
    let called = |e: &Episode| e.steps.iter().any(|s| !s.calls.is_empty());
    let per_seed: Vec<_> = a
        .seed
        .iter()
        .map(|&s| {
            let es: Vec<&Episode> = episodes
                .iter()
                .filter(|(x, _)| *x == s)
                .map(|(_, e)| e)
                .collect();
            json!({
                "seed": s,
                "success": rate(&es, |e| e.success),
                "called_a_tool": rate(&es, called),
                "truncated": rate(&es, |e| e.truncated),
            })
        })
        .collect();
    let every: Vec<&Episode> = episodes.iter().map(|(_, e)| e).collect();
    let mut report = json!({
        "env": name,
        "tasks": n,
        "first_task": offset,
        "seeds": a.seed,
        "call_first": a.call_first,
        "success": rate(&every, |e| e.success),
        "called_a_tool": rate(&every, called),
        "per_seed": per_seed,
    });
    if a.json {
        report["episodes"] = serde_json::to_value(&every)?;
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
