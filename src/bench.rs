//! `clawrl bench …`: speed and memory, measured (never asserted in tests).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use clawrl_model::{Batcher, GenerateParams, Model, Sampling};
use clawrl_trainer::{
    AdamWConfig, LoraConfig, Teacher, TrainConfig, TrainSample, TrainablePolicy, Trainer, Tuning,
};
use serde::Serialize;

#[derive(Subcommand)]
pub(crate) enum BenchCmd {
    /// Prefill and decode speed of greedy generation, and resident memory.
    Generate(GenerateBench),
    /// Time and peak memory of one hybrid (RL + OPD) LoRA training step.
    Train(TrainBench),
    /// Concurrent sessions against the live server, idle and while training runs.
    Serve(crate::bench_serve::ServeBench),
}

#[derive(Args)]
pub(crate) struct TrainBench {
    /// Samples in the batch.
    #[arg(long, default_value_t = 16)]
    samples: usize,
    /// Tokens per sample (a 32-token prompt, the rest response).
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Full fine-tuning (every projection trains) instead of LoRA.
    #[arg(long)]
    full: bool,
    /// Measured steps (the median is reported) after one warm-up step.
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct TrainReport {
    step_s: f64,
    peak_rss_mb: f64,
    samples: usize,
    tokens: usize,
    /// `null` under full fine-tuning.
    rank: Option<usize>,
    threads: usize,
    /// Where the passes ran: `cpu`, or `gpu: <adapter>` (LoRA on a model on a GPU).
    device: String,
}

#[derive(Args)]
pub(crate) struct GenerateBench {
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 230)]
    prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 128)]
    new_tokens: usize,
    /// Measured runs (the median is reported) after one warm-up run.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Generate with this LoRA adapter (a PEFT directory) on top of the model.
    #[arg(long, value_name = "DIR")]
    adapter: Option<std::path::PathBuf>,
    /// Also run this many generations at once, decoded together (continuous batching, as
    /// `clawrl serve` does) and, as the peer in the same run, each on its own thread (as the
    /// server decoded before batching); reports the tokens per second across them.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(2..=256))]
    concurrent: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct GenerateReport {
    prefill_tok_s: f64,
    decode_tok_s: f64,
    rss_mb: f64,
    prompt_tokens: usize,
    new_tokens: usize,
    threads: usize,
    runs: usize,
    simd: bool,
    /// Where the model ran (`--device`): `cpu`, or `gpu: <adapter>`.
    device: String,
    /// `--concurrent`: the generations run at once.
    concurrent: Option<usize>,
    /// New tokens per second across the concurrent generations, decoded together.
    batched_tok_s: Option<f64>,
    /// The same, each generation on its own thread through the one-sequence path (the peer).
    threads_tok_s: Option<f64>,
}

pub(crate) fn run(cmd: BenchCmd, model: Model, threads: usize) -> Result<()> {
    match cmd {
        BenchCmd::Generate(b) => generate(b, Arc::new(model), threads),
        BenchCmd::Train(b) => train(b, &model, threads),
        BenchCmd::Serve(b) => crate::bench_serve::run(b, model, threads),
    }
}

/// Text the bench prompt is cut from (any ordinary prose works; this keeps runs comparable).
const PROSE: &str = "The history of the printing press begins in the fifteenth century, when \
Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press into a \
system that could produce books quickly and cheaply. Before then, most books in Europe were \
copied by hand, a slow process that kept them rare and expensive. Within a few decades, print \
shops had spread to more than two hundred cities, and millions of volumes were in circulation. ";

fn prompt_of(model: &Model, n: usize) -> Result<Vec<u32>> {
    let unit = model.tokenizer.encode(PROSE)?;
    if unit.is_empty() {
        bail!("the tokenizer produced no tokens for the bench prompt");
    }
    Ok(unit.iter().copied().cycle().take(n).collect())
}

fn generate(b: GenerateBench, model: Arc<Model>, threads: usize) -> Result<()> {
    if b.prompt_tokens == 0 || b.new_tokens == 0 || b.runs == 0 {
        bail!("--prompt-tokens, --new-tokens and --runs must be at least 1");
    }
    model.check_context(b.prompt_tokens, b.new_tokens)?;
    let prompt = prompt_of(&model, b.prompt_tokens)?;
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let params = GenerateParams {
        max_tokens: b.new_tokens,
        sampling: Sampling::greedy(),
        ignore_eos: true,
        grammar: None,
        ..GenerateParams::default()
    };
    let adapter = match &b.adapter {
        Some(dir) => Some(Arc::new(
            clawrl_trainer::load_adapter(&model, dir, 0)
                .with_context(|| format!("loading the adapter in {}", dir.display()))?,
        )),
        None => None,
    };
    let policy = model.policy(adapter.as_deref());
    for run in 0..=b.runs {
        let t0 = Instant::now();
        let mut first: Option<Instant> = None;
        let g = policy.generate(&prompt, &params, |_, _| {
            first.get_or_insert_with(Instant::now);
            ControlFlow::Continue(())
        })?;
        let end = Instant::now();
        let first = first.unwrap_or(end);
        // The first token comes out of the prefill; the rest are decode steps.
        let t_prefill = (first - t0).as_secs_f64();
        let t_decode = (end - first).as_secs_f64();
        let decoded = g.tokens.len().saturating_sub(1).max(1);
        if run > 0 {
            prefill.push(b.prompt_tokens as f64 / t_prefill);
            decode.push(decoded as f64 / t_decode);
        }
        if !b.json {
            eprintln!(
                "run {run}{}: prefill {:.1} tok/s, decode {:.1} tok/s",
                if run == 0 { " (warm-up)" } else { "" },
                b.prompt_tokens as f64 / t_prefill,
                decoded as f64 / t_decode
            );
        }
    }
    let (batched, own_threads) = match b.concurrent {
        Some(n) => {
            let run = |batched| -> Result<f64> {
                let rate = concurrent(&b, &model, &prompt, &params, &adapter, n, batched)?;
                if !b.json {
                    eprintln!(
                        "{n} at once, {}: {rate:.1} tok/s across them",
                        if batched {
                            "decoded together"
                        } else {
                            "each on its own thread"
                        }
                    );
                }
                Ok(rate)
            };
            (Some(run(true)?), Some(run(false)?))
        }
        None => (None, None),
    };
    let report = GenerateReport {
        prefill_tok_s: median(&mut prefill),
        decode_tok_s: median(&mut decode),
        rss_mb: peak_rss_mb(),
        prompt_tokens: b.prompt_tokens,
        new_tokens: b.new_tokens,
        threads,
        runs: b.runs,
        simd: clawrl_model::simd_enabled(),
        device: model.device(),
        concurrent: b.concurrent,
        batched_tok_s: batched,
        threads_tok_s: own_threads,
    };
    if b.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "prefill {:.1} tok/s, decode {:.1} tok/s, peak RSS {:.0} MB ({} threads, {})",
            report.prefill_tok_s, report.decode_tok_s, report.rss_mb, threads, report.device
        );
        if let (Some(n), Some(on), Some(off)) = (b.concurrent, batched, own_threads) {
            println!(
                "{n} at once: {on:.1} tok/s decoded together, {off:.1} tok/s each on its own thread ({:.2}×)",
                on / off
            );
        }
    }
    Ok(())
}

/// New tokens per second across `n` generations of `prompt` started at once, each on its own
/// thread: through one [`Batcher`] (`batched`, decoded together) or each through the
/// one-sequence path. The median of `--runs` after a warm-up, from the first start to the
/// last end (prefill included, as a server sees it).
#[allow(clippy::too_many_arguments)]
fn concurrent(
    b: &GenerateBench,
    model: &Arc<Model>,
    prompt: &[u32],
    params: &GenerateParams,
    adapter: &Option<Arc<clawrl_model::LoraAdapter>>,
    n: usize,
    batched: bool,
) -> Result<f64> {
    let batcher = Batcher::new(model.clone(), n)?;
    let mut rates = Vec::new();
    for run in 0..=b.runs {
        let t0 = Instant::now();
        let generated = std::thread::scope(|s| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    s.spawn(|| {
                        let go = |_: &_, _: &_| ControlFlow::Continue(());
                        if batched {
                            batcher.generate(prompt, params, adapter.clone(), Box::new(go))
                        } else {
                            model
                                .policy(adapter.as_deref())
                                .generate(prompt, params, go)
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(g) => Ok(g?.tokens.len()),
                    Err(_) => bail!("a generation thread panicked"),
                })
                .sum::<Result<usize>>()
        })?;
        if run > 0 {
            rates.push(generated as f64 / t0.elapsed().as_secs_f64());
        }
    }
    Ok(median(&mut rates))
}

/// Tokens of the bench prompt that every sample starts with.
const TRAIN_PROMPT_TOKENS: usize = 32;

fn train(b: TrainBench, model: &Model, threads: usize) -> Result<()> {
    if b.samples == 0 || b.tokens <= TRAIN_PROMPT_TOKENS || b.steps == 0 || b.rank == 0 {
        bail!(
            "--samples, --steps and --rank must be at least 1 and --tokens above {TRAIN_PROMPT_TOKENS}"
        );
    }
    if b.full && model.device() != "cpu" {
        eprintln!("note: full fine-tuning trains on the CPU; LoRA trains on the GPU");
    }
    let text = prompt_of(model, b.tokens + TRAIN_PROMPT_TOKENS)?;
    let prompt = text[..TRAIN_PROMPT_TOKENS].to_vec();
    let response = text[TRAIN_PROMPT_TOKENS..b.tokens].to_vec();
    let mut hint_prompt = prompt.clone();
    hint_prompt.extend(
        model
            .tokenizer
            .encode("\n\n[user's hint / instruction]\nAnswer briefly.")?,
    );
    // Every sample carries both signals, the most work a step can do.
    let batch: Vec<TrainSample> = (0..b.samples)
        .map(|i| TrainSample {
            prompt: prompt.clone(),
            response: response.clone(),
            advantage: Some(if i % 2 == 0 { 1.0 } else { -1.0 }),
            teacher: Some(Teacher::single(hint_prompt.clone(), response.len())),
            retry_prompt: None,
        })
        .collect();
    let tuning = if b.full {
        Tuning::Full
    } else {
        Tuning::Lora(LoraConfig::with_rank(b.rank))
    };
    let policy = TrainablePolicy::with_tuning(model, tuning, 0)?;
    let device = policy.device();
    let mut trainer = Trainer::new(policy, AdamWConfig::default(), TrainConfig::default())?;
    let mut times = Vec::new();
    for step in 0..=b.steps {
        let t0 = Instant::now();
        let m = trainer.train_step(&batch)?;
        let dt = t0.elapsed().as_secs_f64();
        if !b.json {
            eprintln!(
                "step {step}{}: {dt:.2} s, loss {:.4}",
                if step == 0 { " (warm-up)" } else { "" },
                m.loss.loss
            );
        }
        if step > 0 {
            times.push(dt);
        }
    }
    let report = TrainReport {
        step_s: median(&mut times),
        peak_rss_mb: peak_rss_mb(),
        samples: b.samples,
        tokens: b.tokens,
        rank: (!b.full).then_some(b.rank),
        threads,
        device,
    };
    if b.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:.2} s per step, peak RSS {:.0} MB ({} threads, {})",
            report.step_s, report.peak_rss_mb, threads, report.device
        );
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Peak resident memory of this process in MB (Linux `VmHWM`; 0 where unavailable).
pub(crate) fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
