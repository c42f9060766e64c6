//! A short demonstration that each signal teaches what it should, on any model: RL moves
//! rewarded and punished responses apart, OPD pulls the student towards the hinted teacher,
//! and overlap-guided selection prefers the on-topic hint. `clawrl demo train` runs it;
//! the slow real-model test asserts on it.

use std::path::Path;

use clawrl_model::{Message, Model};
use clawrl_objective::{SelectionMode, overlap, select};
use clawrl_signals::with_hint;

use crate::adamw::AdamWConfig;
use crate::error::{Error, Result};
use crate::lora::LoraConfig;
use crate::policy::TrainablePolicy;
use crate::trainer::{Teacher, TrainConfig, TrainSample, Trainer};

/// What the demonstration measured.
#[derive(Clone, Debug, Default)]
pub struct DemoOutcome {
    /// Mean log-prob of the rewarded response, before and after each step.
    pub rewarded: Vec<f64>,
    /// Mean log-prob of the punished response, before and after each step.
    pub punished: Vec<f64>,
    /// KL(student ‖ teacher) over S_i, before and after each OPD step.
    pub opd_kl: Vec<f64>,
    /// The candidate hints, their overlap totals Σ_i O[h,i], and the one chosen.
    pub hints: Vec<(String, usize)>,
    /// Index of the chosen hint.
    pub chosen: usize,
}

/// Runs `steps` RL steps, `steps` OPD steps and one selection, calling `log` with each line;
/// with `save`, the OPD-trained adapter is written there in PEFT's layout.
pub fn run(
    model: &Model,
    steps: usize,
    save: Option<&Path>,
    mut log: impl FnMut(&str),
) -> Result<DemoOutcome> {
    let lora = LoraConfig::with_rank(8);
    // RL's gradient is the whole sequence's; OPD's is spread over k tokens per position and
    // needs a larger step to show in a few steps.
    let (rl_adamw, opd_adamw) = (
        AdamWConfig {
            lr: 5e-4,
            ..Default::default()
        },
        AdamWConfig {
            lr: 2e-3,
            ..Default::default()
        },
    );
    let mut out = DemoOutcome::default();
    let encode = |t: &str| {
        model
            .tokenizer
            .encode(t)
            .map_err(|e| Error::InvalidSample(e.to_string()))
    };
    let prompt = |m: &[Message]| {
        model
            .chat_prompt(m, None)
            .map_err(|e| Error::InvalidSample(e.to_string()))
    };

    log("RL: reward one answer (+1), punish another (−1)");
    let mut t = Trainer::new(
        TrainablePolicy::new(model, lora.clone(), 0)?,
        rl_adamw,
        TrainConfig::default(),
    )?;
    let q = [Message::user("What is the capital of France?")];
    let p = prompt(&q)?;
    let good = encode("The capital of France is Paris.")?;
    let bad = encode("I do not know, sorry.")?;
    let batch = [
        TrainSample {
            prompt: p.clone(),
            response: good.clone(),
            advantage: Some(1.0),
            teacher: None,
            retry_prompt: None,
        },
        TrainSample {
            prompt: p.clone(),
            response: bad.clone(),
            advantage: Some(-1.0),
            teacher: None,
            retry_prompt: None,
        },
    ];
    out.rewarded.push(t.mean_logprob(&p, &good)?);
    out.punished.push(t.mean_logprob(&p, &bad)?);
    for step in 1..=steps {
        let m = t.train_step(&batch)?;
        out.rewarded.push(t.mean_logprob(&p, &good)?);
        out.punished.push(t.mean_logprob(&p, &bad)?);
        log(&format!(
            "  step {step}: loss {:+.4}, mean log-prob rewarded {:.3} → {:.3}, punished {:.3} → {:.3}",
            m.loss.loss, out.rewarded[0], out.rewarded[step], out.punished[0], out.punished[step]
        ));
    }

    log("OPD: the same model, told \"Answer in one word.\", teaches token by token");
    // One policy in memory at a time: the base in f32 is most of a trainer's size.
    drop(t);
    let mut t = Trainer::new(
        TrainablePolicy::new(model, lora, 0)?,
        opd_adamw,
        TrainConfig::default(),
    )?;
    let q = [Message::user("Which animal says moo?")];
    let (p, hinted) = (prompt(&q)?, prompt(&with_hint(&q, "Answer in one word."))?);
    let response =
        encode("The animal that says moo is the cow. Cows are farm animals that give milk.")?;
    let sample = TrainSample {
        prompt: p.clone(),
        response: response.clone(),
        advantage: None,
        teacher: Some(Teacher::single(hinted.clone(), response.len())),
        retry_prompt: None,
    };
    out.opd_kl.push(t.support_kl(&p, &hinted, &response)?);
    for step in 1..=steps {
        let m = t.train_step(std::slice::from_ref(&sample))?;
        out.opd_kl.push(t.support_kl(&p, &hinted, &response)?);
        log(&format!(
            "  step {step}: loss {:+.4}, KL(student‖teacher) over S_i {:.4} → {:.4}, mean |Δ| {:.3}",
            m.loss.loss,
            out.opd_kl[step - 1],
            out.opd_kl[step],
            m.loss.mean_abs_delta
        ));
    }

    if let Some(dir) = save {
        t.save_peft(dir, Some(&model.source))?;
        log(&format!("  saved the OPD adapter to {}", dir.display()));
    }
    drop(t);

    log("Selection: which hint explains the response? (sequence mode, k = 4)");
    let q = [Message::user("Name a fruit that is yellow.")];
    let response = encode("A banana is a yellow fruit.")?;
    let candidates = [
        "Write a poem about the ocean.",
        "Answer in one short sentence.",
        "List three prime numbers.",
    ];
    let mut prompts = vec![prompt(&q)?];
    for h in candidates {
        prompts.push(prompt(&with_hint(&q, h))?);
    }
    let k = 4;
    let rows = model
        .score(&prompts, &response, k)
        .map_err(|e| Error::InvalidSample(e.to_string()))?;
    let ids = |row: &Vec<clawrl_model::PositionScore>| -> Vec<Vec<u32>> {
        row.iter()
            .map(|p| p.top.iter().map(|t| t.0).collect())
            .collect()
    };
    let student = ids(&rows[0]);
    let teachers: Vec<Vec<Vec<u32>>> = rows[1..].iter().map(ids).collect();
    let o = overlap(&student, &teachers);
    let lengths: Vec<usize> = candidates.iter().map(|h| h.len()).collect();
    let sel = select(&o, &lengths, SelectionMode::Sequence, 0)
        .ok_or_else(|| Error::InvalidSample("no candidates".into()))?;
    out.chosen = sel.sequence_hint().unwrap_or(0);
    for (h, total) in candidates.iter().zip(&sel.totals) {
        log(&format!("  {total:>4}  {h}"));
        out.hints.push((h.to_string(), *total));
    }
    log(&format!(
        "  chosen: {:?} (of {} positions × k = {k})",
        candidates[out.chosen],
        student.len()
    ));
    Ok(out)
}
