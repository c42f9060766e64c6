//! The embedded model against llama.cpp on the same GGUF (fixtures written by
//! `scripts/llama_cpp_fixtures.py`). These load the real model (fetched on first use).

use std::sync::OnceLock;

use clawrl_model::{GenerateParams, Message, Model, Sampling};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    tokenize: Vec<Tokenized>,
    greedy: Vec<Greedy>,
    score: Scored,
}

#[derive(Deserialize)]
struct Tokenized {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Greedy {
    messages: Vec<Message>,
    rendered: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    margins: Vec<f32>,
}

#[derive(Deserialize)]
struct Scored {
    messages: Vec<Message>,
    prompt_ids: Vec<u32>,
    response_ids: Vec<u32>,
    logprobs: Vec<f32>,
}

fn fixture() -> Fixture {
    let text = include_str!("fixtures/llama_cpp.json");
    serde_json::from_str(text).expect("the fixture parses")
}

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let path =
            clawrl_model::default_model_path(&mut |_| {}).expect("the embedded model is fetched");
        Model::load(&path).expect("the embedded model loads")
    })
}

#[test]
fn tokenizer_ids_match_llama_cpp_and_round_trip() {
    let m = model();
    let f = fixture();
    assert!(f.tokenize.len() >= 20);
    for t in &f.tokenize {
        let ids = m.tokenizer.encode(&t.text).expect("encodes");
        assert_eq!(ids, t.ids, "token ids of {:?}", t.text);
        assert_eq!(
            m.tokenizer.decode(&ids).expect("decodes"),
            t.text,
            "round trip of {:?}",
            t.text
        );
    }
}

#[test]
fn chat_template_renders_like_jinja2() {
    let m = model();
    for g in fixture().greedy {
        let text = m.template.render(&g.messages, None, true).expect("renders");
        assert_eq!(text, g.rendered);
        assert_eq!(
            m.chat_prompt(&g.messages, None).expect("tokenizes"),
            g.prompt_ids
        );
    }
}

/// llama.cpp quantizes every activation to 8 bits before each matrix product; our prefill
/// multiplies in f32. Its log-probs differ from the exact product by up to ~0.4 nats at some
/// positions (see the log-prob test), so where its own top-2 logits are closer than this,
/// which token wins is rounding, not the model.
const NEAR_TIE: f32 = 0.4;

#[test]
fn greedy_continuations_match_llama_cpp_except_at_near_ties() {
    let m = model();
    let params = GenerateParams {
        max_tokens: 32,
        sampling: Sampling::greedy(),
        ..Default::default()
    };
    let mut full_matches = 0;
    for g in fixture().greedy {
        let ours = m
            .generate(&g.prompt_ids, &params, |_, _| {
                std::ops::ControlFlow::Continue(())
            })
            .expect("generates");
        let ours = ours.token_ids();
        let parted = ours.iter().zip(&g.greedy_ids).position(|(a, b)| a != b);
        let question = g
            .messages
            .last()
            .map(|x| x.content.clone())
            .unwrap_or_default();
        match parted {
            Some(p) if p < 16.min(g.greedy_ids.len()) => {
                eprintln!(
                    "{question:?}: parted at token {p}, llama.cpp's top-2 margin there {:.3}",
                    g.margins[p]
                );
                assert!(
                    g.margins[p] < NEAR_TIE,
                    "{question:?}: parted from llama.cpp at token {p} where its margin is {} (not a near tie)\n ours: {ours:?}\n llama.cpp: {:?}",
                    g.margins[p],
                    g.greedy_ids
                );
            }
            _ => {
                eprintln!(
                    "{question:?}: identical for {} tokens",
                    parted.unwrap_or(ours.len())
                );
                full_matches += 1;
            }
        }
    }
    assert!(
        full_matches >= 3,
        "only {full_matches} of 5 continuations match llama.cpp for 16 tokens"
    );
}

#[test]
fn response_logprobs_match_llama_cpp_within_0_05_nats() {
    let m = model();
    let s = fixture().score;
    assert_eq!(
        m.chat_prompt(&s.messages, None).expect("tokenizes"),
        s.prompt_ids
    );
    let rows = m
        .score(std::slice::from_ref(&s.prompt_ids), &s.response_ids, 4)
        .expect("scores");
    let ours: Vec<f32> = rows[0].iter().map(|p| p.logprob).collect();
    let mad = ours
        .iter()
        .zip(&s.logprobs)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / ours.len() as f32;
    eprintln!(
        "mean |Δ logprob| vs llama.cpp: {mad:.4} nats over {} tokens",
        ours.len()
    );
    assert!(
        mad <= 0.05,
        "mean absolute log-prob difference {mad} > 0.05"
    );
}
