//! `clawrl bench serve`: concurrent sessions chat with the live server while training steps
//! run; time to first token and decode speed, idle and during training, and failures.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use clawrl_model::Model;
use clawrl_server::{ServerConfig, TrainingSettings};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Args)]
pub(crate) struct ServeBench {
    /// Concurrent sessions.
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Turns per session in each phase (idle, then training).
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// Run each phase this long instead (seconds): every session keeps starting turns until
    /// then (--turns is ignored; a turn in flight finishes).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// New tokens per answer.
    #[arg(long, default_value_t = 32)]
    max_tokens: usize,
    /// Samples per training step.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Threads of the training pool.
    #[arg(long, default_value_t = 1)]
    train_threads: usize,
    /// Requests decoded together in one step, at most (as `clawrl serve --max-batch`; 1
    /// decodes one request at a time).
    #[arg(long, value_name = "N", default_value_t = clawrl_model::DEFAULT_MAX_BATCH, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    max_batch: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// One streamed request as the client saw it.
#[derive(Clone, Copy)]
struct Timing {
    start: Instant,
    first: Instant,
    tokens: usize,
    end: Instant,
}

#[derive(Serialize, Default)]
struct Stats {
    requests: usize,
    ttft_ms_p50: Option<f64>,
    ttft_ms_p95: Option<f64>,
    decode_tok_s_p50: Option<f64>,
    decode_tok_s_p95: Option<f64>,
    /// Streamed tokens per second across all sessions, from the first request's start to the
    /// last one's end.
    throughput_tok_s: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    sessions: usize,
    turns: usize,
    duration_s: Option<u64>,
    max_tokens: usize,
    max_batch: usize,
    idle: Stats,
    training: Stats,
    /// TTFT p95 during training ÷ idle.
    ttft_p95_ratio: Option<f64>,
    failed: usize,
    steps: usize,
}

fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    Some(v[i])
}

fn stats(t: &[Timing]) -> Stats {
    let mut ttft: Vec<f64> = t
        .iter()
        .map(|t| (t.first - t.start).as_secs_f64() * 1000.0)
        .collect();
    let mut decode: Vec<f64> = t
        .iter()
        .filter(|t| t.tokens > 1 && t.end > t.first)
        .map(|t| (t.tokens - 1) as f64 / (t.end - t.first).as_secs_f64())
        .collect();
    let span = t
        .iter()
        .map(|t| t.start)
        .min()
        .zip(t.iter().map(|t| t.end).max())
        .map(|(a, b)| (b - a).as_secs_f64())
        .filter(|&s| s > 0.0);
    Stats {
        throughput_tok_s: span.map(|s| t.iter().map(|t| t.tokens).sum::<usize>() as f64 / s),
        requests: t.len(),
        ttft_ms_p50: percentile(&mut ttft, 0.5),
        ttft_ms_p95: percentile(&mut ttft, 0.95),
        decode_tok_s_p50: percentile(&mut decode, 0.5),
        decode_tok_s_p95: percentile(&mut decode, 0.95),
    }
}

const QUESTIONS: &[&str] = &[
    "What is the capital of France?",
    "Which animal says moo?",
    "Name a yellow fruit.",
    "What colour is the sky on a clear day?",
    "How many legs does a spider have?",
    "What do bees make?",
];

/// One streamed chat request; `None` when it failed.
async fn turn(http: &reqwest::Client, url: &str, body: &Value) -> Option<(Timing, String)> {
    let start = Instant::now();
    let resp = http.post(url).json(body).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let (mut first, mut tokens, mut text, mut done) = (None, 0, String::new(), false);
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(data).ok()?;
            if v.get("error").is_some() {
                return None;
            }
            let delta = &v["choices"][0]["delta"];
            if delta.get("content").is_some() && delta.get("role").is_none() {
                first.get_or_insert_with(Instant::now);
                tokens += 1;
                text.push_str(delta["content"].as_str().unwrap_or(""));
            }
        }
    }
    Some((
        Timing {
            start,
            first: first?,
            tokens,
            end: Instant::now(),
        },
        text,
    ))
    .filter(|_| done)
}

/// Every session runs `turns` turns; each answer is corrected, so samples keep coming.
async fn phase(b: &ServeBench, base: &str, tag: &str) -> (Vec<Timing>, usize) {
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/chat/completions");
    let mut tasks = Vec::new();
    for s in 0..b.sessions {
        let (http, url) = (http.clone(), url.clone());
        let (turns, max_tokens) = (b.turns, b.max_tokens);
        let deadline = b.duration.map(|d| Instant::now() + Duration::from_secs(d));
        let session = format!("{tag}-{s}");
        tasks.push(tokio::spawn(async move {
            let mut messages =
                vec![json!({"role": "user", "content": QUESTIONS[s % QUESTIONS.len()]})];
            let (mut timings, mut failed) = (Vec::new(), 0);
            for i in 0.. {
                let more = match deadline {
                    Some(d) => Instant::now() < d,
                    None => i < turns,
                };
                if !more {
                    break;
                }
                let body = json!({"messages": messages, "max_tokens": max_tokens, "stream": true,
                                  "session_id": session, "seed": 0});
                match turn(&http, &url, &body).await {
                    Some((t, text)) => {
                        timings.push(t);
                        messages.push(json!({"role": "assistant", "content": text}));
                        messages.push(
                            json!({"role": "user", "content": "No, answer in one short sentence."}),
                        );
                    }
                    None => failed += 1,
                }
            }
            (timings, failed)
        }));
    }
    let (mut all, mut failed) = (Vec::new(), 0);
    for t in tasks {
        match t.await {
            Ok((t, f)) => {
                all.extend(t);
                failed += f;
            }
            // A session task that panicked: count it as one failure.
            Err(_) => failed += 1,
        }
    }
    (all, failed)
}

/// When each training step started and (once it has) ended.
type StepTimes = Arc<Mutex<Vec<(Instant, Option<Instant>)>>>;

/// Intervals during which a training step ran, from the Studio's event stream.
async fn watch_steps(base: String, steps: StepTimes) {
    let Ok(resp) = reqwest::get(format!("{base}/studio/events")).await else {
        return;
    };
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(Ok(chunk)) = stream.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let Ok(mut s) = steps.lock() else { return };
            if event.starts_with("event: train_started") {
                s.push((Instant::now(), None));
            } else if (event.starts_with("event: trained")
                || event.starts_with("event: train_failed"))
                && let Some(last) = s.last_mut()
            {
                last.1 = Some(Instant::now());
            }
        }
    }
}

pub(crate) fn run(b: ServeBench, model: Model, threads: usize) -> Result<()> {
    if b.sessions == 0 || b.turns < 2 || b.max_tokens < 2 || b.batch_size == 0 {
        bail!(
            "--sessions and --batch-size must be at least 1, --turns and --max-tokens at least 2"
        );
    }
    let dir = tempfile::tempdir().context("a scratch directory")?;
    let mut config = ServerConfig::new("clawrl", dir.path());
    config.bind = "127.0.0.1:0".parse()?;
    config.lp.training = TrainingSettings {
        batch_size: b.batch_size,
        paused: true,
        ..TrainingSettings::default()
    };
    config.lp.train_threads = b.train_threads.max(1);
    config.lp.max_batch = b.max_batch;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = rt.block_on(async {
        let server = clawrl_server::start(config, Arc::new(model)).await?;
        let base = format!("http://{}", server.addr);
        if !b.json {
            match b.duration {
                Some(d) => eprintln!(
                    "phase 1: {} sessions for {d} s, training paused",
                    b.sessions
                ),
                None => eprintln!(
                    "phase 1: {} sessions × {} turns, training paused",
                    b.sessions, b.turns
                ),
            }
        }
        let (idle, failed_idle) = phase(&b, &base, "idle").await;
        let steps: StepTimes = Arc::new(Mutex::new(Vec::new()));
        let watcher = tokio::spawn(watch_steps(base.clone(), steps.clone()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let http = reqwest::Client::new();
        http.post(format!("{base}/studio/training/resume"))
            .send()
            .await
            .context("resuming training")?;
        if !b.json {
            eprintln!(
                "phase 2: the same load while training steps run (batch {})",
                b.batch_size
            );
        }
        let (busy, failed_busy) = phase(&b, &base, "busy").await;
        watcher.abort();
        let intervals = steps.lock().map(|s| s.clone()).unwrap_or_default();
        let now = Instant::now();
        // A request counts as during training when a step ran while it waited for its first token.
        let during: Vec<Timing> = busy
            .into_iter()
            .filter(|t| {
                intervals
                    .iter()
                    .any(|&(s, e)| s < t.first && e.unwrap_or(now) > t.start)
            })
            .collect();
        server.shutdown().await;
        let (idle, training) = (stats(&idle), stats(&during));
        let ratio = match (training.ttft_ms_p95, idle.ttft_ms_p95) {
            (Some(t), Some(i)) if i > 0.0 => Some(t / i),
            _ => None,
        };
        anyhow::Ok(Report {
            sessions: b.sessions,
            turns: b.turns,
            duration_s: b.duration,
            max_tokens: b.max_tokens,
            max_batch: b.max_batch,
            idle,
            training,
            ttft_p95_ratio: ratio,
            failed: failed_idle + failed_busy,
            steps: intervals.len(),
        })
    })?;
    if b.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        println!(
            "{} sessions, {} threads, at most {} decoded together, {} training steps, {} failed requests",
            report.sessions, threads, report.max_batch, report.steps, report.failed
        );
        for (name, s) in [("idle", &report.idle), ("training", &report.training)] {
            println!(
                "{name:>9}: {:>3} requests, TTFT p50 {} ms p95 {} ms, decode p50 {} tok/s p95 {} tok/s, {} tok/s across sessions",
                s.requests,
                f(s.ttft_ms_p50),
                f(s.ttft_ms_p95),
                f(s.decode_tok_s_p50),
                f(s.decode_tok_s_p95),
                f(s.throughput_tok_s)
            );
        }
        println!(
            "TTFT p95 during training / idle: {}",
            f(report.ttft_p95_ratio)
        );
    }
    Ok(())
}
