//! The engine's commands: model, chat, generate, score.

use std::io::{BufRead, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use clawrl_model::{
    GenerateParams, Generation, LoraAdapter, MAX_TOP_LOGPROBS, Message, Model, SMOLLM2_135M,
    Sampling,
};
use serde::{Deserialize, Serialize};

use crate::ModelSource;

#[derive(Subcommand)]
pub(crate) enum ModelCmd {
    /// Download the embedded model into the cache (checks its sha256).
    Fetch,
    /// Print the path of the model in use.
    Path,
    /// Print the model's shape and memory.
    Info,
}

pub(crate) fn model(cmd: ModelCmd, source: &ModelSource) -> Result<()> {
    match cmd {
        ModelCmd::Fetch => {
            let path = if SMOLLM2_135M.is_cached()? {
                SMOLLM2_135M.cached_path()?
            } else {
                SMOLLM2_135M.fetch(&mut crate::fetch_progress())?
            };
            println!("{}", path.display());
        }
        ModelCmd::Path => println!("{}", source.path()?.display()),
        ModelCmd::Info => {
            let m = source.load()?;
            let info = serde_json::json!({
                "source": m.source,
                "config": m.config,
                "weight_mb": m.weight_bytes() as f64 / 1e6,
                "end_of_generation_ids": m.tokenizer.end_of_generation(),
            });
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
    }
    Ok(())
}

/// Sampling flags shared by `chat` and `generate`.
#[derive(Args)]
pub(crate) struct SamplingArgs {
    /// Always take the most likely token (same as --temperature 0).
    #[arg(long)]
    greedy: bool,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Nucleus sampling mass, in (0, 1].
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Seed for reproducible sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Most new tokens per reply.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Stop when this string appears (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// System message placed before the conversation.
    #[arg(long)]
    system: Option<String>,
}

impl SamplingArgs {
    fn params(&self, top_logprobs: usize) -> GenerateParams {
        let temperature = if self.greedy { 0.0 } else { self.temperature };
        GenerateParams {
            max_tokens: self.max_tokens,
            sampling: Sampling {
                temperature,
                top_p: self.top_p,
                seed: self.seed,
            },
            stop: self.stop.clone(),
            top_logprobs,
            ignore_eos: false,
            grammar: None,
        }
    }

    fn start(&self) -> Vec<Message> {
        self.system
            .iter()
            .map(|s| Message::new("system", s.clone()))
            .collect()
    }
}

#[derive(Args)]
pub(crate) struct ChatArgs {
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub(crate) fn chat(args: ChatArgs, model: &Model) -> Result<()> {
    let params = args.sampling.params(0);
    let mut history = args.sampling.start();
    eprintln!(
        "Chatting with {} — /reset clears the conversation, /exit or Ctrl-D quits.",
        model.source
    );
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        eprint!("\n> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                history = args.sampling.start();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::user(line));
        let prompt = match model.chat_prompt(&history, None).and_then(|p| {
            model.check_context(p.len(), 1)?;
            Ok(p)
        }) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e} — /reset to start over");
                history.pop();
                continue;
            }
        };
        let reply = model.generate(&prompt, &params, |_, text| {
            print!("{text}");
            let _ = out.flush();
            ControlFlow::Continue(())
        })?;
        println!();
        history.push(Message::new("assistant", reply.text));
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct GenerateArgs {
    /// The user message (rendered with the chat template unless --raw).
    prompt: String,
    /// Use PROMPT as the exact model input, without the chat template.
    #[arg(long)]
    raw: bool,
    /// Print JSON: {"text", "token_ids", "logprobs", "top_logprobs", ...}.
    #[arg(long)]
    json: bool,
    /// Alternatives per token in --json output (0–20).
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Generate with this LoRA adapter (a PEFT directory) on top of the model.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Serialize)]
struct GenerateJson {
    text: String,
    token_ids: Vec<u32>,
    tokens: Vec<String>,
    logprobs: Vec<f32>,
    top_logprobs: Vec<Vec<(u32, f32)>>,
    prompt_tokens: usize,
    finish_reason: clawrl_model::FinishReason,
}

pub(crate) fn generate(args: GenerateArgs, model: &Model) -> Result<()> {
    if args.top_k > MAX_TOP_LOGPROBS {
        bail!("--top-k must be at most {MAX_TOP_LOGPROBS}");
    }
    let prompt = if args.raw {
        model.tokenizer.encode(&args.prompt)?
    } else {
        let mut msgs = args.sampling.start();
        msgs.push(Message::user(args.prompt.clone()));
        model.chat_prompt(&msgs, None)?
    };
    let params = args.sampling.params(if args.json { args.top_k } else { 0 });
    let adapter = adapter_of(model, args.adapter.as_deref())?;
    let mut out = std::io::stdout();
    let stream = !args.json;
    let g: Generation = model
        .policy(adapter.as_ref())
        .generate(&prompt, &params, |_, text| {
            if stream {
                print!("{text}");
                let _ = out.flush();
            }
            ControlFlow::Continue(())
        })?;
    if args.json {
        let json = GenerateJson {
            token_ids: g.token_ids(),
            tokens: g
                .tokens
                .iter()
                .map(|t| model.tokenizer.decode(&[t.id]).unwrap_or_default())
                .collect(),
            logprobs: g.tokens.iter().map(|t| t.logprob).collect(),
            top_logprobs: g.tokens.iter().map(|t| t.top.clone()).collect(),
            text: g.text,
            prompt_tokens: g.prompt_tokens,
            finish_reason: g.finish_reason,
        };
        println!("{}", serde_json::to_string(&json)?);
    } else {
        println!();
    }
    Ok(())
}

#[derive(Args)]
pub(crate) struct ScoreArgs {
    /// JSON request file ('-' or nothing: standard input). Shape:
    /// {"prompts": [[{"role": "user", "content": "…"}], …] | "raw_prompts": ["…"],
    ///  "response": "…" | "response_ids": [..], "top_k": 4}
    input: Option<PathBuf>,
    /// Score with this LoRA adapter (a PEFT directory) on top of the model.
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScoreRequest {
    #[serde(default)]
    prompts: Vec<Vec<Message>>,
    #[serde(default)]
    raw_prompts: Vec<String>,
    response: Option<String>,
    response_ids: Option<Vec<u32>>,
    #[serde(default = "default_top_k")]
    top_k: usize,
}

fn default_top_k() -> usize {
    4
}

/// The adapter in `dir` (PEFT layout) for `model`, if any.
fn adapter_of(model: &Model, dir: Option<&Path>) -> Result<Option<LoraAdapter>> {
    dir.map(|dir| {
        clawrl_trainer::load_adapter(model, dir, 0)
            .with_context(|| format!("loading the adapter in {}", dir.display()))
    })
    .transpose()
}

#[derive(Serialize)]
struct ScoreRow {
    prompt_ids: Vec<u32>,
    logprobs: Vec<f32>,
    top_logprobs: Vec<Vec<(u32, f32)>>,
}

pub(crate) fn score(args: ScoreArgs, model: &Model) -> Result<()> {
    let mut text = String::new();
    match &args.input {
        Some(p) if p.as_os_str() != "-" => {
            text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        _ => {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
        }
    }
    let req: ScoreRequest = serde_json::from_str(&text).context("parsing the score request")?;
    let mut prompts = Vec::new();
    for msgs in &req.prompts {
        prompts.push(model.chat_prompt(msgs, None)?);
    }
    for raw in &req.raw_prompts {
        prompts.push(model.tokenizer.encode(raw)?);
    }
    if prompts.is_empty() {
        bail!("the request needs at least one of \"prompts\" or \"raw_prompts\"");
    }
    let response = match (req.response, req.response_ids) {
        (Some(t), None) => model.tokenizer.encode(&t)?,
        (None, Some(ids)) => ids,
        _ => bail!("give exactly one of \"response\" (text) or \"response_ids\""),
    };
    let adapter = adapter_of(model, args.adapter.as_deref())?;
    let rows = model
        .policy(adapter.as_ref())
        .score(&prompts, &response, req.top_k)?;
    let scores: Vec<ScoreRow> = rows
        .into_iter()
        .zip(&prompts)
        .map(|(row, p)| ScoreRow {
            prompt_ids: p.clone(),
            logprobs: row.iter().map(|s| s.logprob).collect(),
            top_logprobs: row.into_iter().map(|s| s.top).collect(),
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "response_ids": response, "scores": scores })
    );
    Ok(())
}
