//! `clawrl bench …`: speed and memory, measured (never asserted in tests).

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use std::ops::ControlFlow;
use std::time::Instant;

use clawrl_model::{GenerateParams, Model, Sampling};
use serde::Serialize;

#[derive(Subcommand)]
pub(crate) enum BenchCmd {
    /// Prefill and decode speed of greedy generation, and resident memory.
    Generate(GenerateBench),
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
}

pub(crate) fn run(cmd: BenchCmd, model: &Model, threads: usize) -> Result<()> {
    match cmd {
        BenchCmd::Generate(b) => generate(b, model, threads),
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

fn generate(b: GenerateBench, model: &Model, threads: usize) -> Result<()> {
    if b.prompt_tokens == 0 || b.new_tokens == 0 || b.runs == 0 {
        bail!("--prompt-tokens, --new-tokens and --runs must be at least 1");
    }
    model.check_context(b.prompt_tokens, b.new_tokens)?;
    let prompt = prompt_of(model, b.prompt_tokens)?;
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let params = GenerateParams {
        max_tokens: b.new_tokens,
        sampling: Sampling::greedy(),
        ignore_eos: true,
        ..GenerateParams::default()
    };
    for run in 0..=b.runs {
        let t0 = Instant::now();
        let mut first: Option<Instant> = None;
        let g = model.generate(&prompt, &params, |_, _| {
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
    let report = GenerateReport {
        prefill_tok_s: median(&mut prefill),
        decode_tok_s: median(&mut decode),
        rss_mb: peak_rss_mb(),
        prompt_tokens: b.prompt_tokens,
        new_tokens: b.new_tokens,
        threads,
        runs: b.runs,
        simd: clawrl_model::simd_enabled(),
    };
    if b.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "prefill {:.1} tok/s, decode {:.1} tok/s, peak RSS {:.0} MB ({} threads)",
            report.prefill_tok_s, report.decode_tok_s, report.rss_mb, threads
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
