//! `clawrl agent eval|train`: the model as a general agent in a built-in environment (DESIGN.md
//! §8), episodes driven through the live server's API. `eval` reports the success rate on
//! held-out tasks; `train` runs groups of rollouts on training tasks while the loop trains on
//! them (step rewards R_t = o + mean vote, standardised by step index), and reports the
//! held-out success rate before and after.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use clawrl_env::{Agent, Environment, Episode, TerminalEnv, ToolCallEnv};
use clawrl_model::Model;
use clawrl_server::{Server, ServerConfig, TrainingSettings};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::levers::Preset;

/// GSM8K tasks from this index on are held out: never trained on, only evaluated.
const GSM8K_HELD_OUT_FROM: usize = 1000;

#[derive(Subcommand)]
pub(crate) enum AgentCmd {
    /// Run episodes on held-out tasks and report the success rate (nothing is trained: the
    /// in-process server runs with method none).
    Eval(EvalArgs),
    /// Train on groups of rollouts of training tasks, then report the held-out success rate
    /// before and after, per seed (each seed trains its own adapter from the base).
    Train(TrainArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Env {
    /// GSM8K questions with a calculator tool; success = the right final number.
    ToolCall,
    /// Shell tasks in a sandbox directory (bubblewrap); success = the task's check passes.
    Terminal,
}

/// What `eval` and `train` share.
#[derive(Args)]
pub(crate) struct Common {
    /// The environment.
    #[arg(long, value_enum, default_value = "tool-call")]
    env: Env,
    /// Drive a running server instead of starting one in-process (its own policy answers and,
    /// for `train`, its own settings train).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// API key for --url (`train` needs an owner key to flush the last partial batch).
    #[arg(long, env = "CLAWRL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// tool-call's tasks: a JSON array of {"question", "ground_truth_answer"}; those from
    /// index 1000 on are the held-out split. (terminal's are shipped: 120 training and 120
    /// held-out tasks from crates/clawrl-env/tasks/terminal.toml, the held-out ones naming no
    /// file, directory or word that training saw.)
    #[arg(long, value_name = "FILE", default_value = crate::simulate::DEFAULT_TASKS)]
    tasks: PathBuf,
    /// Held-out tasks to evaluate (at most the first N of the split).
    #[arg(long, default_value_t = 100)]
    n: usize,
    /// Seed (repeatable): each gives one episode per held-out task (and, for `train`, its own
    /// training run).
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
    /// Print the result as one line of JSON, with every held-out episode (`train`: before and
    /// after, each with its seed).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    c: Common,
}

#[derive(Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    c: Common,
    /// Training tasks (the first N of the training split: tool-call's tasks before 1000,
    /// terminal's 120 training tasks).
    #[arg(long, default_value_t = 32)]
    train_tasks: usize,
    /// Rollouts per task: a group, whose steps' rewards are standardised together.
    #[arg(long, default_value_t = 4)]
    group_size: usize,
    /// Passes over the training tasks.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Training settings to start from (in-process only).
    #[arg(long, value_enum, default_value = "agentic")]
    preset: Preset,
    /// Learning rate (default: the preset's).
    #[arg(long)]
    lr: Option<f64>,
    /// Samples per training step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// terminal: a tutor in the training episodes. A command that leaves the task undone is
    /// answered with its output and "hint: run <a solution>", which the judge turns into a
    /// directive signal for that call. Held-out episodes never get one.
    #[arg(long)]
    tutor: bool,
}

impl AgentCmd {
    /// The flags both commands take.
    fn common(&self) -> &Common {
        match self {
            AgentCmd::Eval(a) => &a.c,
            AgentCmd::Train(a) => &a.c,
        }
    }

    /// Refuses flags that cannot work together, before any model is loaded.
    pub(crate) fn validate(&self) -> Result<()> {
        let c = self.common();
        if c.n == 0 || c.max_steps == 0 || c.parallel == 0 {
            bail!("--n, --max-steps and --parallel must be at least 1");
        }
        if let AgentCmd::Train(t) = self {
            if t.train_tasks == 0 || t.group_size == 0 || t.rounds == 0 {
                bail!("--train-tasks, --group-size and --rounds must be at least 1");
            }
            if t.tutor && matches!(c.env, Env::ToolCall) {
                bail!("--tutor is for --env terminal (a calculator has no solution to name)");
            }
        }
        Ok(())
    }

    /// Whether a running server is driven (no local model needed).
    pub(crate) fn uses_url(&self) -> bool {
        self.common().url.is_some()
    }
}

pub(crate) fn run(cmd: AgentCmd, model: Option<Model>) -> Result<()> {
    let model = model.map(Arc::new);
    let c = cmd.common();
    let train = match &cmd {
        AgentCmd::Eval(_) => None,
        AgentCmd::Train(a) => Some(a),
    };
    let train_tasks = train.map_or(0, |t| t.train_tasks);
    match c.env {
        Env::ToolCall => {
            let all = clawrl_sim::load_tasks(&c.tasks)
                .context("reading the tasks (run from the project root, or pass --tasks FILE)")?;
            if all.len() <= GSM8K_HELD_OUT_FROM {
                bail!(
                    "{} has {} tasks; the held-out split starts at task {GSM8K_HELD_OUT_FROM}",
                    c.tasks.display(),
                    all.len()
                );
            }
            let train_env = ToolCallEnv {
                tasks: all[..train_tasks.min(GSM8K_HELD_OUT_FROM)].to_vec(),
            };
            let held = ToolCallEnv {
                tasks: all
                    .into_iter()
                    .skip(GSM8K_HELD_OUT_FROM)
                    .take(c.n)
                    .collect(),
            };
            dispatch(&cmd, (train_env, 0), (held, GSM8K_HELD_OUT_FROM), model)
        }
        Env::Terminal => {
            let mut train_env = TerminalEnv::builtin(clawrl_env::Split::Train)?;
            let mut held = TerminalEnv::builtin(clawrl_env::Split::HeldOut)?;
            let from = train_env.len();
            held.tasks.truncate(c.n);
            train_env.tasks.truncate(train_tasks);
            train_env.tutor = train.is_some_and(|t| t.tutor);
            dispatch(&cmd, (train_env, 0), (held, from), model)
        }
    }
}

/// An environment with the index of its first task in the full set.
type Split<E> = (E, usize);

fn dispatch<E: Environment + 'static>(
    cmd: &AgentCmd,
    train_split: Split<E>,
    held: Split<E>,
    model: Option<Arc<Model>>,
) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = match cmd {
        AgentCmd::Eval(a) => rt.block_on(eval(&a.c, held, model))?,
        AgentCmd::Train(a) => rt.block_on(train(a, train_split, held, model))?,
    };
    if cmd.common().json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// A server to drive: one started in-process (with its scratch directory), or `--url`'s.
struct Target {
    base: String,
    server: Option<(Server, tempfile::TempDir)>,
}

impl Target {
    /// `--url`'s server, or a fresh in-process one training with `settings`.
    async fn start(
        c: &Common,
        model: Option<&Arc<Model>>,
        settings: TrainingSettings,
    ) -> Result<Target> {
        if let Some(u) = &c.url {
            return Ok(Target {
                base: u.trim_end_matches('/').to_string(),
                server: None,
            });
        }
        let Some(m) = model else { bail!("no model") };
        let dir = tempfile::tempdir().context("a scratch directory")?;
        let mut config = ServerConfig::new("clawrl", dir.path());
        config.bind = "127.0.0.1:0".parse()?;
        config.lp.training = settings;
        let server = clawrl_server::start(config, m.clone()).await?;
        Ok(Target {
            base: format!("http://{}", server.addr),
            server: Some((server, dir)),
        })
    }

    /// A client of the server; `evaluate`: its episodes are never trained on.
    fn agent(&self, c: &Common, evaluate: bool) -> Arc<Agent> {
        let mut agent = Agent::new(&self.base, c.api_key.clone());
        agent.evaluate = evaluate;
        agent.max_steps = c.max_steps;
        agent.max_tokens = c.max_tokens;
        agent.temperature = c.temperature;
        agent.call_first = c.call_first;
        Arc::new(agent)
    }

    async fn stop(self) {
        if let Some((s, _dir)) = self.server {
            s.shutdown().await;
        }
    }
}

/// One episode to run.
struct Job {
    seed: u64,
    task: usize,
    session_id: String,
    group_id: Option<String>,
}

fn bar(c: &Common, len: usize, what: &str) -> ProgressBar {
    let bar = if c.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(len as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{bar:30}} {{pos}}/{{len}} {what} episodes, {{msg}} [{{elapsed}}, ~{{eta}} left]"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Runs `jobs` on `env`, `parallel` at a time, with a progress bar; returns (seed, episode).
async fn episodes<E: Environment + 'static>(
    agent: &Arc<Agent>,
    env: &Arc<E>,
    jobs: Vec<Job>,
    parallel: usize,
    bar: &ProgressBar,
) -> Result<Vec<(u64, Episode)>> {
    let mut solved = 0;
    let mut out = Vec::with_capacity(jobs.len());
    let mut runs = futures_util::stream::iter(jobs)
        .map(|j| {
            let (agent, env) = (agent.clone(), env.clone());
            async move {
                agent
                    .episode(&*env, j.task, &j.session_id, j.group_id.as_deref(), j.seed)
                    .await
                    .map(|e| (j.seed, e))
            }
        })
        .buffer_unordered(parallel);
    while let Some(r) = runs.next().await {
        let (seed, e) = r?;
        solved += usize::from(e.success);
        bar.inc(1);
        bar.set_message(format!("{solved} solved"));
        out.push((seed, e));
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The held-out episodes of one seed, or of several.
async fn held_out<E: Environment + 'static>(
    c: &Common,
    agent: &Arc<Agent>,
    (env, offset): (&Arc<E>, usize),
    seeds: &[u64],
    label: &str,
) -> Result<Vec<(u64, Episode)>> {
    let n = env.len();
    let jobs = seeds
        .iter()
        .flat_map(|&seed| {
            (0..n).map(move |task| Job {
                seed,
                task,
                session_id: format!("{label}-{}-{seed}-{}", env.name(), offset + task),
                group_id: None,
            })
        })
        .collect();
    let bar = bar(c, n * seeds.len(), label);
    episodes(agent, env, jobs, c.parallel, &bar).await
}

/// Success, tool use and truncation rates of `episodes`.
fn rates(episodes: &[&Episode]) -> Value {
    let rate = |f: &dyn Fn(&Episode) -> bool| {
        episodes.iter().filter(|e| f(e)).count() as f64 / episodes.len().max(1) as f64
    };
    json!({
        "success": rate(&|e| e.success),
        "called_a_tool": rate(&|e| e.steps.iter().any(|s| !s.calls.is_empty())),
        "truncated": rate(&|e| e.truncated),
    })
}

fn of_seed(episodes: &[(u64, Episode)], seed: u64) -> Vec<&Episode> {
    episodes
        .iter()
        .filter(|(s, _)| *s == seed)
        .map(|(_, e)| e)
        .collect()
}

async fn eval<E: Environment + 'static>(
    c: &Common,
    (env, offset): Split<E>,
    model: Option<Arc<Model>>,
) -> Result<Value> {
    let untrained = TrainingSettings {
        method: "none".parse().map_err(anyhow::Error::msg)?,
        ..TrainingSettings::default()
    };
    let target = Target::start(c, model.as_ref(), untrained).await?;
    let agent = target.agent(c, true);
    let env = Arc::new(env);
    let eps = held_out(c, &agent, (&env, offset), &c.seed, "eval").await?;
    target.stop().await;
    let every: Vec<&Episode> = eps.iter().map(|(_, e)| e).collect();
    let per_seed: Vec<Value> = c
        .seed
        .iter()
        .map(|&s| {
            let mut r = rates(&of_seed(&eps, s));
            r["seed"] = json!(s);
            r
        })
        .collect();
    let all = rates(&every);
    let mut report = json!({
        "env": env.name(),
        "tasks": env.len(),
        "first_task": offset,
        "seeds": c.seed,
        "call_first": c.call_first,
        "success": all["success"],
        "called_a_tool": all["called_a_tool"],
        "per_seed": per_seed,
    });
    if c.json {
        report["episodes"] = serde_json::to_value(&every)?;
    }
    Ok(report)
}

async fn train<E: Environment + 'static>(
    a: &TrainArgs,
    (train_env, train_offset): Split<E>,
    (held, offset): Split<E>,
    model: Option<Arc<Model>>,
) -> Result<Value> {
    let c = &a.c;
    let mut settings = a.preset.settings();
    if let Some(lr) = a.lr {
        settings.lr = lr;
    }
    settings.batch_size = a.batch_size;
    settings.validate()?;
    let (train_env, held) = (Arc::new(train_env), Arc::new(held));
    let mut per_seed = Vec::new();
    let mut before_all = Vec::new();
    let mut after_all = Vec::new();
    for &seed in &c.seed {
        // Each seed trains its own adapter from the base (in-process; `--url`'s server keeps
        // what it learned).
        let target = Target::start(c, model.as_ref(), settings.clone()).await?;
        let (evaluator, agent) = (target.agent(c, true), target.agent(c, false));
        let before = held_out(c, &evaluator, (&held, offset), &[seed], "before").await?;
        let (name, count, group_size) = (train_env.name(), train_env.len(), a.group_size);
        let jobs: Vec<Job> = (0..a.rounds)
            .flat_map(|round| {
                (0..count).flat_map(move |task| {
                    let group = format!("train-{name}-{seed}-{round}-{}", train_offset + task);
                    (0..group_size).map(move |k| Job {
                        // Distinct sampling per rollout, reproducible per seed.
                        seed: seed
                            .wrapping_mul(1_000_003)
                            .wrapping_add((round * 10_007 + task * 101 + k) as u64),
                        task,
                        session_id: format!("{group}-{k}"),
                        group_id: Some(group.clone()),
                    })
                })
            })
            .collect();
        let bar = bar(c, jobs.len(), "training");
        let rollouts = episodes(&agent, &train_env, jobs, c.parallel, &bar).await?;
        let trained = drain(c, &target.base).await?;
        let after = held_out(c, &evaluator, (&held, offset), &[seed], "after").await?;
        target.stop().await;
        let (b, r, f) = (
            rates(&of_seed(&before, seed)),
            rates(&rollouts.iter().map(|(_, e)| e).collect::<Vec<_>>()),
            rates(&of_seed(&after, seed)),
        );
        // Each seed's result as soon as it is known: a run of several seeds takes hours here.
        eprintln!(
            "seed {seed}: held-out success {} before, {} after; {} steps trained (policy v{}); \
             training rollouts solved {}",
            b["success"], f["success"], trained["steps"], trained["policy_version"], r["success"]
        );
        per_seed.push(json!({
            "seed": seed,
            "success_before": b["success"],
            "success_after": f["success"],
            "called_a_tool_before": b["called_a_tool"],
            "called_a_tool_after": f["called_a_tool"],
            "training_rollout_success": r["success"],
            "policy_version": trained["policy_version"],
            "steps": trained["steps"],
        }));
        before_all.extend(before);
        after_all.extend(after);
    }
    let all = |eps: &[(u64, Episode)]| rates(&eps.iter().map(|(_, e)| e).collect::<Vec<_>>());
    let (b, f) = (all(&before_all), all(&after_all));
    let mut report = json!({
        "env": held.name(),
        "tasks": held.len(),
        "first_task": offset,
        "train_tasks": train_env.len(),
        "group_size": a.group_size,
        "rounds": a.rounds,
        "seeds": c.seed,
        "call_first": c.call_first,
        "tutor": a.tutor,
        "settings": if c.url.is_some() { Value::Null } else { serde_json::to_value(&settings)? },
        "success_before": b["success"],
        "success_after": f["success"],
        "called_a_tool_before": b["called_a_tool"],
        "called_a_tool_after": f["called_a_tool"],
        "per_seed": per_seed,
    });
    if c.json {
        for (key, eps) in [
            ("episodes_before", &before_all),
            ("episodes_after", &after_all),
        ] {
            report[key] = eps
                .iter()
                .map(|(seed, e)| {
                    let mut v = serde_json::to_value(e)?;
                    v["seed"] = json!(seed);
                    Ok(v)
                })
                .collect::<Result<Value>>()?;
        }
    }
    Ok(report)
}

/// Waits until every rollout's next states are judged, their samples trained and the newest
/// version served, flushing a last partial batch (the batch size is lowered to what is left,
/// then restored). Returns the server's training status.
async fn drain(c: &Common, base: &str) -> Result<Value> {
    let http = &reqwest::Client::new();
    let auth = &|r: reqwest::RequestBuilder| match &c.api_key {
        Some(k) => r.bearer_auth(k),
        None => r,
    };
    let get = |path: &'static str| async move {
        let r = auth(http.get(format!("{base}{path}")))
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        if !r.status().is_success() {
            bail!("GET {path}: {}", r.status());
        }
        anyhow::Ok(r.json::<Value>().await?)
    };
    let set_batch = |n: i64| async move {
        let r = auth(http.post(format!("{base}/studio/training/settings")))
            .json(&json!({"batch_size": n}))
            .send()
            .await
            .context("changing the batch size")?;
        if !r.status().is_success() {
            bail!(
                "POST /studio/training/settings: {} (flushing the last batch needs an owner key)",
                r.status()
            );
        }
        anyhow::Ok(())
    };
    let spinner = if c.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    spinner.enable_steady_tick(Duration::from_millis(200));
    let mut restore = None;
    let result = loop {
        let s = get("/studio/training").await?;
        let pending = s["pending_samples"].as_i64().unwrap_or(0);
        let unjudged = s["unjudged"].as_i64().unwrap_or(0);
        let batch = s["settings"]["batch_size"].as_i64().unwrap_or(1);
        let paused = s["settings"]["paused"].as_bool().unwrap_or(false);
        spinner.set_message(format!(
            "training: policy v{}, {pending} samples and {unjudged} next states waiting",
            s["policy_version"]
        ));
        if paused {
            bail!("training is paused (a failed step pauses it; see the server's log)");
        }
        // A step marks its samples trained before it serves its version: wait for the swap.
        if pending == 0 && unjudged == 0 && s["training"] == false {
            break s;
        }
        if unjudged == 0 && pending < batch {
            restore.get_or_insert(batch);
            set_batch(pending).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(b) = restore {
        set_batch(b).await?;
    }
    spinner.finish_and_clear();
    Ok(result)
}
