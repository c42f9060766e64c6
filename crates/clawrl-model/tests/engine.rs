//! The engine on the tiny random model: the forward paths agree with each other, generation
//! and scoring agree, and bad input gets a clear error.

use std::ops::ControlFlow;

use clawrl_model::{Error, FinishReason, GenerateParams, Generation, Message, Model, Sampling};

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: Sampling::greedy(),
        top_logprobs: 3,
        ..Default::default()
    }
}

fn go(_: &clawrl_model::TokenInfo, _: &str) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "index {i}: {x} vs {y}");
    }
}

#[test]
fn prefill_and_token_by_token_decoding_give_the_same_logits() {
    let m = Model::tiny(1);
    let tokens = m
        .tokenizer
        .encode("the quick brown fox jumps over the lazy dog")
        .expect("encodes");
    let vocab = m.config.vocab_size;
    let mut cache = m.new_cache();
    let all = m
        .forward(&tokens, &mut cache, tokens.len())
        .expect("prefill");
    assert_eq!(cache.len(), tokens.len());
    let mut step = m.new_cache();
    for (i, &t) in tokens.iter().enumerate() {
        let one = m.forward(&[t], &mut step, 1).expect("decode");
        assert_close(&one, &all[i * vocab..(i + 1) * vocab], 1e-3);
    }
}

#[test]
fn generation_log_probs_equal_scoring_the_same_response() {
    let m = Model::tiny(2);
    let prompt = m
        .chat_prompt(&[Message::user("hello there")], None)
        .expect("prompt");
    let g = m.generate(&prompt, &greedy(24), go).expect("generates");
    assert_eq!(g.tokens.len(), 24);
    assert_eq!(g.finish_reason, FinishReason::Length);
    let rows = m
        .score(std::slice::from_ref(&prompt), &g.token_ids(), 3)
        .expect("scores");
    for (tok, pos) in g.tokens.iter().zip(&rows[0]) {
        assert!(
            (tok.logprob - pos.logprob).abs() < 1e-3,
            "{} vs {}",
            tok.logprob,
            pos.logprob
        );
        assert_eq!(
            tok.top.iter().map(|t| t.0).collect::<Vec<_>>(),
            pos.top.iter().map(|t| t.0).collect::<Vec<_>>()
        );
        // Greedy picks the most likely token, so it heads its own top-k.
        assert_eq!(tok.top[0].0, tok.id);
    }
}

#[test]
fn scoring_several_prompts_at_once_equals_scoring_each_alone() {
    let m = Model::tiny(3);
    let p1 = m
        .chat_prompt(&[Message::user("what is two plus two")], None)
        .expect("prompt");
    let p2 = m
        .chat_prompt(
            &[Message::user(
                "what is two plus two\n\n[hint] answer in one word",
            )],
            None,
        )
        .expect("prompt");
    let response = m.tokenizer.encode("four, I think").expect("encodes");
    let both = m
        .score(&[p1.clone(), p2.clone()], &response, 4)
        .expect("scores");
    let one = m
        .score(std::slice::from_ref(&p1), &response, 4)
        .expect("scores");
    let two = m
        .score(std::slice::from_ref(&p2), &response, 4)
        .expect("scores");
    for (a, b) in both[0]
        .iter()
        .zip(&one[0])
        .chain(both[1].iter().zip(&two[0]))
    {
        assert!((a.logprob - b.logprob).abs() < 1e-4);
        assert_eq!(a.top.len(), 4);
    }
    assert_ne!(
        both[0][0].logprob, both[1][0].logprob,
        "a different prompt changes the scores"
    );

    // The student's support read under the teacher prompt: exact log-probs of prompt 0's top
    // tokens, wherever they rank under prompt 1 (checked against the full distribution).
    let on = m
        .policy(None)
        .score_on_support(&[p1.clone(), p2.clone()], &response, 4, 3)
        .expect("scores");
    let full = m.score(&[p2], &response, 100_000).expect("scores");
    for (i, (student, teacher)) in on[0].iter().zip(&on[1]).enumerate() {
        assert_eq!(student.support.len(), 3);
        for ((&(v, lp_top), lp_old), lp_t) in student
            .top
            .iter()
            .zip(&student.support)
            .zip(&teacher.support)
        {
            assert!((lp_old - lp_top).abs() < 1e-6);
            let exact = full[0][i]
                .top
                .iter()
                .find(|t| t.0 == v)
                .expect("in vocab")
                .1;
            assert!((lp_t - exact).abs() < 1e-4, "{lp_t} vs {exact}");
        }
    }
    assert!(
        m.policy(None)
            .score_on_support(&[p1], &response, 2, 3)
            .is_err()
    );
}

#[test]
fn top_k_beyond_the_vocabulary_and_an_empty_response_are_handled() {
    let m = Model::tiny(4);
    let prompt = m.tokenizer.encode("abc").expect("encodes");
    let rows = m
        .score(std::slice::from_ref(&prompt), &[5], 100_000)
        .expect("scores");
    assert_eq!(rows[0][0].top.len(), m.config.vocab_size);
    let total: f32 = rows[0][0].top.iter().map(|(_, lp)| lp.exp()).sum();
    assert!((total - 1.0).abs() < 1e-3);
    assert!(m.score(&[prompt], &[], 4).expect("scores")[0].is_empty());
}

/// Generates, collecting the streamed pieces.
fn generate_streamed(m: &Model, prompt: &[u32], params: &GenerateParams) -> (Generation, String) {
    let mut streamed = String::new();
    let g = m
        .generate(prompt, params, |_, t| {
            streamed.push_str(t);
            ControlFlow::Continue(())
        })
        .expect("generates");
    (g, streamed)
}

#[test]
fn same_seed_same_tokens_and_streamed_text_is_the_final_text() {
    let m = Model::tiny(5);
    let prompt = m
        .chat_prompt(&[Message::user("tell me a story")], None)
        .expect("prompt");
    let params = GenerateParams {
        max_tokens: 40,
        sampling: Sampling {
            temperature: 1.0,
            top_p: 0.9,
            seed: Some(7),
        },
        ..Default::default()
    };
    let (a, streamed) = generate_streamed(&m, &prompt, &params);
    let b = m.generate(&prompt, &params, go).expect("generates");
    assert_eq!(a.token_ids(), b.token_ids());
    assert_eq!(streamed, a.text);
}

#[test]
fn text_held_back_is_streamed_when_the_token_budget_ends_generation() {
    // The tiny model often ends a budget inside a multi-byte character, or on a possible stop
    // prefix: what was held back must still reach the stream.
    let m = Model::tiny(7);
    let prompt = m.chat_prompt(&[Message::user("hi")], None).expect("prompt");
    for seed in 0..40 {
        let params = GenerateParams {
            max_tokens: 6,
            sampling: Sampling {
                temperature: 1.0,
                top_p: 1.0,
                seed: Some(seed),
            },
            stop: vec!["zzzz".into()],
            ..Default::default()
        };
        let (g, streamed) = generate_streamed(&m, &prompt, &params);
        assert_eq!(streamed, g.text, "seed {seed}, {:?}", g.finish_reason);
    }
}

#[test]
fn a_stop_string_ends_generation_and_is_not_in_the_text() {
    let m = Model::tiny(6);
    let prompt = m.chat_prompt(&[Message::user("go")], None).expect("prompt");
    let free = m.generate(&prompt, &greedy(30), go).expect("generates");
    // Stop at a piece of the free-running text, so the stop certainly occurs.
    let stop: String = free.text.chars().skip(3).take(2).collect();
    assert!(
        !stop.is_empty(),
        "the tiny model produced too little text: {:?}",
        free.text
    );
    let params = GenerateParams {
        stop: vec![stop.clone()],
        ..greedy(30)
    };
    let (g, streamed) = generate_streamed(&m, &prompt, &params);
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert!(!g.text.contains(&stop));
    assert!(free.text.starts_with(&g.text));
    assert_eq!(streamed, g.text);
}

#[test]
fn a_callback_can_cancel() {
    let m = Model::tiny(7);
    let prompt = m.tokenizer.encode("x").expect("encodes");
    let g = m
        .generate(&prompt, &greedy(50), |_, _| ControlFlow::Break(()))
        .expect("generates");
    assert_eq!(g.tokens.len(), 1);
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let m = Model::tiny(8);
    let ctx = m.config.context_length;
    let long = vec![5u32; ctx];
    assert!(matches!(
        m.generate(&long, &greedy(4), go),
        Err(Error::ContextOverflow { .. })
    ));
    assert!(matches!(
        m.score(&[vec![5; ctx - 2]], &[5, 5, 5], 4),
        Err(Error::ContextOverflow { .. })
    ));
    assert!(matches!(
        m.generate(&[], &greedy(4), go),
        Err(Error::InvalidArgument(_))
    ));
    let huge = m.config.vocab_size as u32;
    assert!(matches!(
        m.score(&[vec![huge]], &[1], 4),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        m.score(&[vec![1]], &[huge], 4),
        Err(Error::InvalidArgument(_))
    ));
    let msg = m
        .generate(&long, &greedy(4), go)
        .expect_err("overflows")
        .to_string();
    assert!(msg.contains("context"), "{msg}");
}

#[test]
fn a_missing_or_corrupt_model_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.gguf");
    let err = Model::load(&missing).expect_err("missing");
    assert!(matches!(err, Error::ModelNotFound(_)), "{err}");

    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"definitely not a gguf file").expect("write");
    let err = Model::load(&junk).expect_err("junk");
    assert!(matches!(err, Error::BadModel { .. }), "{err}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let err = Model::load(&empty).expect_err("empty dir");
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn token_bytes_concatenate_to_the_text() {
    let m = Model::tiny(9);
    let text = "héllo <|im_end|> wörld 🦀";
    let ids = m.tokenizer.encode(text).expect("encodes");
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&id| m.tokenizer.token_bytes(id))
        .collect();
    assert_eq!(bytes, text.as_bytes());
}
