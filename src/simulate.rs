//! `clawrl simulate`: simulated users chat with the live server; sessions until each persona's
//! preference is adopted, per method, selection mode and seed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use clawrl_model::Model;
use clawrl_server::{ServerConfig, TrainingSettings};
use clawrl_sim::{
    Persona, SessionOutcome, Simulation, Task, builtin_personas, load_tasks, sessions_to_preference,
};
use clawrl_trainer::LoraConfig;
use serde::Serialize;
use serde_json::json;

/// Where the shared task file sits relative to the project root.
pub(crate) const DEFAULT_TASKS: &str = "../shared/data/gsm8k-test.json";

#[derive(Args)]
pub(crate) struct SimulateArgs {
    /// Drive a running server instead of starting one in-process (its own settings apply).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// API key for --url.
    #[arg(long, env = "CLAWRL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A persona file (repeatable). Default: every shipped persona (crates/clawrl-sim/personas).
    #[arg(long, value_name = "FILE")]
    persona: Vec<PathBuf>,
    /// Tasks: a JSON array of {"question", "ground_truth_answer"}.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_TASKS)]
    tasks: PathBuf,
    /// Training method (repeatable for a sweep): combined, rl, opd, or none (the untrained
    /// control: serves and judges, never trains).
    #[arg(long, default_values_t = vec!["combined".to_string()])]
    method: Vec<String>,
    /// Hint selection (repeatable): sequence, token, random, longest.
    #[arg(long, default_values_t = vec!["sequence".to_string()])]
    selection: Vec<String>,
    /// Seed (repeatable).
    #[arg(long, default_values_t = vec![0u64])]
    seed: Vec<u64>,
    /// Sessions per persona before giving up (the metric is then null).
    #[arg(long, default_value_t = 30)]
    max_sessions: usize,
    /// One policy for all personas, sessions interleaved (the default).
    #[arg(long, conflicts_with = "separate")]
    joint: bool,
    /// One adapter (a fresh server) per persona.
    #[arg(long)]
    separate: bool,
    /// The speaker's demo: the shipped demo persona (else the one with the lowest measured base
    /// rate), one seed, 15 sessions at most, stopping once the preference is adopted (three
    /// satisfied first answers in a row); shows its first answers before and after.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The full benchmark: 15 sessions of every persona; the untrained control (`none`) and
    /// `combined` with seeds 0, 1, 2, then `rl` and `opd` with seed 0 (instead of --method,
    /// --selection and --seed). With --annotators also the `token`, `random` and `longest`
    /// selections with seed 0 (with one candidate hint per turn they would repeat `sequence`).
    #[arg(long, conflicts_with_all = ["url", "method", "selection", "seed"])]
    full: bool,
    /// Samples per training step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Threads for training in the in-process server (default: the compute threads, all
    /// cores). The simulated user waits for training between sessions, so a step is on the
    /// run's critical path; `serve` keeps one by default, for the people it serves.
    #[arg(long, value_name = "N", conflicts_with = "url", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    train_threads: Option<usize>,
    #[command(flatten)]
    levers: crate::levers::Levers,
    /// k of the top-k supports (hint selection and OPD).
    #[arg(long, default_value_t = 4)]
    top_k: usize,
    /// LoRA rank (α is twice the rank).
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// New tokens per answer.
    #[arg(long, default_value_t = 160)]
    max_tokens: usize,
    /// Start each session at once, without waiting for the server to judge and train what the
    /// previous ones produced (training then yields to the back-to-back requests).
    #[arg(long)]
    no_wait: bool,
    /// Simulated annotators: after each session, the persona's `annotator_hints` (three
    /// people's hints) are added to every corrected answer and accepted, so that hint selection
    /// chooses among M = 4 candidates (the judge's and theirs). Training pauses during each
    /// session, so a turn trains with all its candidates.
    #[arg(long)]
    annotators: bool,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Write results.json, table.md and satisfaction.svg (plotters) here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

impl SimulateArgs {
    /// Whether a running server is driven (no local model needed).
    pub(crate) fn uses_url(&self) -> bool {
        self.url.is_some()
    }
}

#[derive(Serialize)]
struct PersonaResult {
    sessions_to_preference: Option<usize>,
    sessions: Vec<SessionOutcome>,
}

#[derive(Serialize)]
struct RunResult {
    method: String,
    selection: String,
    seed: u64,
    mode: &'static str,
    /// Wall-clock seconds the run took (model load excluded).
    seconds: f64,
    personas: BTreeMap<String, PersonaResult>,
}

/// How many sessions a run has and how it paces them.
#[derive(Clone, Copy)]
struct Schedule {
    /// Sessions per persona at most.
    max_sessions: usize,
    /// Wait for training to catch up after each session.
    wait: bool,
    /// Stop once every persona's preference is learned.
    until_adopted: bool,
    /// Annotators hint every corrected answer ([`Simulation::annotate`]).
    annotate: bool,
}

fn sessions(
    rt: &tokio::runtime::Runtime,
    sim: &Simulation,
    personas: &[Persona],
    tasks: &[Task],
    schedule: Schedule,
    log: &mut dyn FnMut(&SessionOutcome),
) -> Result<BTreeMap<String, PersonaResult>> {
    let Schedule {
        max_sessions,
        wait,
        until_adopted,
        annotate,
    } = schedule;
    let mut by_persona: BTreeMap<String, Vec<SessionOutcome>> = BTreeMap::new();
    // Personas take turns: session n of every persona before session n + 1 of any.
    for n in 0..max_sessions {
        let adopted = |s: &Vec<SessionOutcome>| {
            let first: Vec<bool> = s.iter().map(|o| o.first_satisfied).collect();
            sessions_to_preference(&first).is_some()
        };
        if until_adopted && by_persona.len() == personas.len() && by_persona.values().all(adopted) {
            break;
        }
        for (p, persona) in personas.iter().enumerate() {
            let task = (sim.seed as usize * 7919 + n * personas.len() + p) % tasks.len();
            let o = if annotate {
                rt.block_on(async {
                    sim.set_training_paused(true).await?;
                    let annotated = async {
                        let mut o = sim.session(persona, &tasks[task], task, n + 1).await?;
                        // Paused, this returns once every next state is judged.
                        sim.wait_for_training().await?;
                        sim.annotate(persona, &mut o).await?;
                        Ok::<_, clawrl_sim::Error>(o)
                    }
                    .await;
                    // Resumed on failure too: a server driven by --url must not stay paused.
                    sim.set_training_paused(false).await?;
                    annotated
                })?
            } else {
                rt.block_on(sim.session(persona, &tasks[task], task, n + 1))?
            };
            log(&o);
            if wait {
                rt.block_on(sim.wait_for_training())?;
            }
            by_persona.entry(persona.name.clone()).or_default().push(o);
        }
    }
    Ok(by_persona
        .into_iter()
        .map(|(name, s)| {
            let first: Vec<bool> = s.iter().map(|o| o.first_satisfied).collect();
            (
                name,
                PersonaResult {
                    sessions_to_preference: sessions_to_preference(&first),
                    sessions: s,
                },
            )
        })
        .collect())
}

fn server_config(
    a: &SimulateArgs,
    dir: &Path,
    method: &str,
    selection: &str,
    seed: u64,
    threads: usize,
) -> Result<ServerConfig> {
    let mut c = ServerConfig::new("clawrl", dir);
    c.bind = "127.0.0.1:0".parse()?;
    c.lp.seed = seed;
    c.lp.train_threads = a.train_threads.unwrap_or(threads);
    c.lp.idle_timeout = std::time::Duration::from_secs(3600);
    c.lp.training = TrainingSettings {
        batch_size: a.batch_size,
        method: method.parse().map_err(anyhow::Error::msg)?,
        selection: selection.parse().map_err(anyhow::Error::msg)?,
        top_k: a.top_k,
        ..a.levers.settings()?
    };
    c.lp.training.validate()?;
    if a.rank == 0 {
        bail!("--rank must be at least 1");
    }
    c.lp.lora = LoraConfig::with_rank(a.rank);
    Ok(c)
}

/// Runs the simulation; `threads` is the size of the compute pool (training's default too).
pub(crate) fn simulate(a: SimulateArgs, model: Option<Model>, threads: usize) -> Result<()> {
    let mut personas = if a.persona.is_empty() {
        builtin_personas()?
    } else {
        a.persona
            .iter()
            .map(|p| Persona::load(p))
            .collect::<Result<Vec<_>, _>>()?
    };
    let tasks = load_tasks(&a.tasks)
        .context("reading the tasks (run from the project root, or pass --tasks FILE)")?;
    let mut max_sessions = a.max_sessions;
    let mut configs: Vec<(String, String, u64)> = Vec::new();
    for m in &a.method {
        for s in &a.selection {
            for &seed in &a.seed {
                configs.push((m.clone(), s.clone(), seed));
            }
        }
    }
    let mut seeds = a.seed.clone();
    if a.quick {
        // The demo persona when one is among them, else the one the base fails most often (an
        // unmeasured one counts as failing).
        let pick = personas.iter().find(|p| p.demo).or_else(|| {
            personas.iter().min_by(|x, y| {
                let r = |p: &Persona| p.base_rate.unwrap_or(0.0);
                r(x).total_cmp(&r(y))
            })
        });
        let pick = pick.cloned();
        personas = pick.into_iter().collect();
        if let (Some(p), false) = (personas.first(), a.json) {
            eprintln!(
                "demo: persona {} (the untrained model met it in {} of its first answers)",
                p.name,
                p.base_rate
                    .map_or("an unmeasured share".into(), |r| format!(
                        "{:.0} %",
                        r * 100.0
                    ))
            );
        }
        seeds.truncate(1);
        configs.retain(|c| Some(&c.2) == seeds.first());
        max_sessions = max_sessions.min(15);
    }
    if a.full {
        max_sessions = 15;
        configs = full_benchmark(a.annotators);
    }
    if max_sessions < 3 {
        bail!("--max-sessions must be at least 3 (the metric needs three sessions in a row)");
    }
    let schedule = Schedule {
        max_sessions,
        wait: !a.no_wait,
        until_adopted: a.quick,
        annotate: a.annotators,
    };
    // Every run's settings are checked before the first one starts, not midway through a sweep.
    if a.url.is_none() {
        for (method, selection, seed) in &configs {
            server_config(&a, Path::new("."), method, selection, *seed, threads)?;
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mode = if a.separate { "separate" } else { "joint" };
    let mut log = |o: &SessionOutcome| {
        if !a.json {
            eprintln!(
                "  {:>8} session {:>2} (v{}): first answer {}{}{}",
                o.persona,
                o.index,
                o.policy_version,
                if o.first_satisfied {
                    "satisfied"
                } else {
                    "missed"
                },
                if o.first_satisfied {
                    String::new()
                } else {
                    format!(" ({})", o.violations.join("; "))
                },
                if o.hints_chosen.is_empty() {
                    String::new()
                } else {
                    let turns: Vec<String> = o.hints_chosen.iter().map(|c| c.join(" + ")).collect();
                    format!("; hints chosen: {}", turns.join(", "))
                }
            );
        }
    };
    let mut runs = Vec::new();
    if let Some(url) = &a.url {
        if a.method.len() > 1 || a.selection.len() > 1 {
            bail!(
                "--url drives one server with its own settings: sweep methods and selections in-process"
            );
        }
        for &seed in &seeds {
            let mut sim = Simulation::new(url, a.api_key.clone(), seed);
            sim.max_tokens = a.max_tokens;
            let started = Instant::now();
            let results = sessions(&rt, &sim, &personas, &tasks, schedule, &mut log)?;
            runs.push(RunResult {
                method: "server's".into(),
                selection: "server's".into(),
                seed,
                mode,
                seconds: started.elapsed().as_secs_f64(),
                personas: results,
            });
        }
    } else {
        let model = Arc::new(model.context("no model")?);
        for (method, selection, seed) in &configs {
            let seed = *seed;
            if !a.json {
                eprintln!("run: method {method}, selection {selection}, seed {seed}, {mode}");
            }
            let groups: Vec<Vec<Persona>> = if a.separate {
                personas.iter().map(|p| vec![p.clone()]).collect()
            } else {
                vec![personas.clone()]
            };
            let mut results = BTreeMap::new();
            let started = Instant::now();
            for group in groups {
                let dir = tempfile::tempdir().context("a scratch directory")?;
                let config = server_config(&a, dir.path(), method, selection, seed, threads)?;
                let server = rt.block_on(clawrl_server::start(config, model.clone()))?;
                let mut sim = Simulation::new(&format!("http://{}", server.addr), None, seed);
                sim.max_tokens = a.max_tokens;
                let r = sessions(&rt, &sim, &group, &tasks, schedule, &mut log);
                rt.block_on(server.shutdown());
                results.extend(r?);
            }
            let seconds = started.elapsed().as_secs_f64();
            if !a.json {
                eprintln!("  run took {:.0} s", seconds);
            }
            runs.push(RunResult {
                method: method.clone(),
                selection: selection.clone(),
                seed,
                mode,
                seconds,
                personas: results,
            });
            // Every finished run is on disk at once: a long sweep stopped midway keeps them.
            report(&a, mode, max_sessions, &runs, &personas)?;
        }
    }
    let (report, table) = report(&a, mode, max_sessions, &runs, &personas)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        if a.quick {
            before_and_after(&runs);
        }
        println!("{table}");
    }
    Ok(())
}

/// The demo's summary: per persona, which first answers met the preference, and the first
/// answer of the first and of the last session.
fn before_and_after(runs: &[RunResult]) {
    for r in runs {
        for (name, p) in &r.personas {
            let strip: String = p
                .sessions
                .iter()
                .map(|o| if o.first_satisfied { '✓' } else { '·' })
                .collect();
            eprintln!("\n{name} ({}): first answers {strip}", r.method);
            match p.sessions_to_preference {
                Some(n) => eprintln!("  preference adopted from session {n} on"),
                None => eprintln!("  never three satisfied first answers in a row"),
            }
            let show = |o: &SessionOutcome| {
                let text: String = o.first_answer.chars().take(300).collect();
                eprintln!(
                    "  session {} (policy v{}), first answer:\n    {}",
                    o.index,
                    o.policy_version,
                    text.replace('\n', "\n    ")
                );
            };
            if let (Some(first), Some(last)) = (p.sessions.first(), p.sessions.last()) {
                show(first);
                show(last);
            }
        }
    }
}

/// The JSON report and the markdown table of `runs`, written to `--out` when given.
fn report(
    a: &SimulateArgs,
    mode: &str,
    max_sessions: usize,
    runs: &[RunResult],
    personas: &[Persona],
) -> Result<(serde_json::Value, String)> {
    let table = table(runs, personas, max_sessions);
    let report = json!({
        // The in-process server judges by rules; a remote one by whatever it was started with.
        "judge": if a.url.is_some() { "the server's" } else { "rules" },
        "mode": mode,
        "annotators": a.annotators,
        // What the in-process servers trained with (a remote server's own settings apply).
        "training": if a.url.is_some() {
            serde_json::Value::Null
        } else {
            // Every run's settings but its method and selection (in `runs`).
            let mut settings = serde_json::to_value(TrainingSettings {
                batch_size: a.batch_size,
                top_k: a.top_k,
                ..a.levers.settings()?
            })?;
            if let Some(o) = settings.as_object_mut() {
                o.remove("method");
                o.remove("selection");
                o.remove("paused");
            }
            json!({
                "settings": settings,
                "lora_rank": a.rank,
                "max_tokens": a.max_tokens,
            })
        },
        "max_sessions": max_sessions,
        "sessions_to_preference": summarize(runs),
        "runs": runs,
    });
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
        std::fs::write(dir.join("table.md"), &table)?;
        let svg = clawrl_sim::satisfaction_svg("first answer meets the preference", &curves(runs))?;
        std::fs::write(dir.join("satisfaction.svg"), svg)?;
    }
    Ok((report, table))
}

/// The row a run belongs to: its method, with the selection when it is not the default.
fn row_key(r: &RunResult) -> String {
    if r.selection == "sequence" {
        r.method.clone()
    } else {
        format!("{}/{}", r.method, r.selection)
    }
}

/// Per row, the fraction of sessions whose first answer met the preference, by session number.
fn curves(runs: &[RunResult]) -> Vec<(String, Vec<f64>)> {
    let mut acc: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in runs {
        let key = row_key(r);
        let i = match acc.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                acc.push((key, Vec::new()));
                acc.len() - 1
            }
        };
        for p in r.personas.values() {
            for (n, o) in p.sessions.iter().enumerate() {
                let sums = &mut acc[i].1;
                if sums.len() <= n {
                    sums.resize(n + 1, (0.0, 0.0));
                }
                sums[n].0 += f64::from(u8::from(o.first_satisfied));
                sums[n].1 += 1.0;
            }
        }
    }
    acc.into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|(s, n)| s / n.max(1.0)).collect()))
        .collect()
}

/// Mean sessions-to-preference per persona and method (over seeds and selections); a run that
/// never adopted the preference counts as null and makes the mean null.
fn summarize(runs: &[RunResult]) -> BTreeMap<String, BTreeMap<String, Option<f64>>> {
    let mut acc: BTreeMap<String, BTreeMap<String, Vec<Option<usize>>>> = BTreeMap::new();
    for r in runs {
        let key = row_key(r);
        for (p, res) in &r.personas {
            acc.entry(p.clone())
                .or_default()
                .entry(key.clone())
                .or_default()
                .push(res.sessions_to_preference);
        }
    }
    acc.into_iter()
        .map(|(p, m)| {
            let m = m
                .into_iter()
                .map(|(k, v)| {
                    let all: Option<Vec<usize>> = v.into_iter().collect();
                    (
                        k,
                        all.map(|v| v.iter().sum::<usize>() as f64 / v.len() as f64),
                    )
                })
                .collect();
            (p, m)
        })
        .collect()
}

/// The paper's Tables 3 and 4 in shape: rows method (and selection), columns personas, the
/// mean sessions until the preference is adopted (— where it never was).
fn table(runs: &[RunResult], personas: &[Persona], max_sessions: usize) -> String {
    let summary = summarize(runs);
    let mut rows: Vec<String> = Vec::new();
    for r in runs {
        let key = row_key(r);
        if !rows.contains(&key) {
            rows.push(key);
        }
    }
    let mut out = String::from("| method |");
    for p in personas {
        let base = match p.base_rate {
            Some(r) if p.tests_the_base() => format!(" (base {:.0} %, tests the base)", r * 100.0),
            Some(r) => format!(" (base {:.0} %)", r * 100.0),
            None => String::new(),
        };
        out.push_str(&format!(" {}{base} |", p.name));
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(personas.len()));
    out.push('\n');
    for row in rows {
        out.push_str(&format!("| {row} |"));
        for p in personas {
            let v = summary
                .get(&p.name)
                .and_then(|m| m.get(&row))
                .copied()
                .flatten();
            let learned = learned(runs, &row, &p.name, max_sessions)
                .map(|(k, n)| format!(" · learned {k}/{n}"))
                .unwrap_or_default();
            out.push_str(&match v {
                Some(v) => format!(" {v:.1}{learned} |"),
                None => format!(" —{learned} |"),
            });
        }
        out.push('\n');
    }
    out
}

/// Sessions a trained run must reach the preference before the control to have learned it.
const AHEAD_OF_CONTROL: usize = 5;

/// Of the runs of `row` whose seed has a control run (method none), how many learned
/// `persona`'s preference: reached it, and at least five sessions before the control did. A
/// control that never did within `max_sessions` counts as reaching it at the earliest session
/// it could have after them (`max_sessions − 1`), so "learned" never rests on the window's
/// end. `None` without a control or for the control's own row.
fn learned(
    runs: &[RunResult],
    row: &str,
    persona: &str,
    max_sessions: usize,
) -> Option<(usize, usize)> {
    if row.starts_with("none") {
        return None;
    }
    let stp = |r: &RunResult| r.personas.get(persona).map(|p| p.sessions_to_preference);
    let (mut k, mut n) = (0, 0);
    for r in runs.iter().filter(|r| row_key(r) == row) {
        let Some(control) = runs
            .iter()
            .find(|c| c.method == "none" && c.seed == r.seed)
            .and_then(stp)
        else {
            continue;
        };
        n += 1;
        let reached = stp(r).flatten();
        // Three in a row starting at max_sessions − 1 is the first run the window misses.
        let c = control.unwrap_or(max_sessions.saturating_sub(1));
        k += usize::from(reached.is_some_and(|t| t + AHEAD_OF_CONTROL <= c));
    }
    (n > 0).then_some((k, n))
}

/// The configurations of `--full`: (method, selection, seed); the other selections only when
/// `annotators` give them more than one candidate to choose between.
fn full_benchmark(annotators: bool) -> Vec<(String, String, u64)> {
    let mut c: Vec<(String, String, u64)> = ["none", "combined"]
        .into_iter()
        .flat_map(|m| (0..3).map(move |seed| (m.to_string(), "sequence".to_string(), seed)))
        .collect();
    for m in ["rl", "opd"] {
        c.push((m.into(), "sequence".into(), 0));
    }
    if annotators {
        for s in ["token", "random", "longest"] {
            c.push(("combined".into(), s.into(), 0));
        }
    }
    c
}
