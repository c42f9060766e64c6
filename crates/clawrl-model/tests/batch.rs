//! Continuous batching on the CPU: sequences decoded together get exactly the logits and
//! tokens they get alone, whatever they are batched with.

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use clawrl_kernels::quant::{quantize_q4_1, quantize_q8_0};
use clawrl_model::{
    Batcher, Error, FinishReason, GenerateParams, LoraAdapter, LoraWeights, Message, Model,
    QMatrix, Sampling, Storage, Target,
};
use rand::{Rng, SeedableRng};

/// The tiny model with quantized projections (Q4_1 and Q8_0 in turn), so that a batch of
/// four or more rows would take the GEMM path if it were treated as one sequence's prefill.
fn quantized(seed: u64) -> Model {
    let mut m = Model::tiny(seed);
    let quantize = |w: &mut QMatrix, q4: bool| {
        let v = w.to_f32();
        let storage = if q4 {
            Storage::Q4_1(quantize_q4_1(&v))
        } else {
            Storage::Q8_0(quantize_q8_0(&v))
        };
        *w = QMatrix::new(w.rows(), w.cols(), storage).expect("same shape");
    };
    for b in &mut m.weights.blocks {
        for (i, w) in [
            &mut b.wq,
            &mut b.wk,
            &mut b.wv,
            &mut b.wo,
            &mut b.gate,
            &mut b.up,
            &mut b.down,
        ]
        .into_iter()
        .enumerate()
        {
            quantize(w, i % 2 == 0);
        }
    }
    quantize(&mut m.weights.embed, false);
    m
}

/// A LoRA adapter on the query and down projections, large enough to move the logits.
fn adapter(m: &Model, seed: u64) -> LoraAdapter {
    let c = &m.config;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut a = LoraAdapter::new(1, 2.0, c.layers);
    for l in 0..c.layers {
        for (t, input, out) in [
            (Target::Q, c.hidden, c.q_dim()),
            (Target::Down, c.intermediate, c.hidden),
        ] {
            let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-0.1..0.1)).collect();
            let w =
                LoraWeights::new(4, input, out, draw(4 * input), draw(out * 4)).expect("shapes");
            a.insert(l, t, w).expect("block in range");
        }
    }
    a
}

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

#[test]
fn a_batched_step_gives_each_sequence_its_logits_alone_bit_for_bit() {
    let m = quantized(3);
    let vocab = m.config.vocab_size;
    let texts = [
        "the quick brown fox",
        "hello",
        "a much longer prompt that runs on for a while before it stops",
        "xyz",
        "one two three four five",
    ];
    let mut alone = Vec::new();
    let mut together = Vec::new();
    let mut next = Vec::new();
    for t in texts {
        let tokens = m.tokenizer.encode(t).expect("encodes");
        let mut cache = m.new_cache();
        let logits = m.forward(&tokens, &mut cache, 1).expect("prefill");
        next.push(argmax(&logits));
        together.push(cache.clone());
        alone.push(cache);
    }
    for _ in 0..6 {
        let mut steps: Vec<_> = next.iter().copied().zip(together.iter_mut()).collect();
        let batched = m
            .policy(None)
            .forward_batch(&mut steps)
            .expect("batched step");
        assert_eq!(batched.len(), texts.len() * vocab);
        for (i, row) in batched.chunks_exact(vocab).enumerate() {
            let one = m.forward(&[next[i]], &mut alone[i], 1).expect("step alone");
            assert_eq!(row, &one[..], "sequence {i}");
            assert_eq!(together[i].len(), alone[i].len());
            next[i] = argmax(row);
        }
    }
}

#[test]
fn a_bad_batch_is_refused_and_changes_no_cache() {
    let m = quantized(4);
    let mut a = m.new_cache();
    let mut b = m.new_cache();
    m.forward(&[5, 6, 7], &mut a, 1).expect("prefill");
    m.forward(&[8], &mut b, 1).expect("prefill");
    let outside = m.config.vocab_size as u32;
    let err = m
        .policy(None)
        .forward_batch(&mut [(9, &mut a), (outside, &mut b)])
        .expect_err("a token outside the vocabulary");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!((a.len(), b.len()), (3, 1));
    let short = LoraAdapter::new(0, 1.0, m.config.layers - 1);
    let err = m
        .policy(Some(&short))
        .forward_batch(&mut [(9, &mut a)])
        .expect_err("an adapter of another depth");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(a.len(), 3);
    assert!(
        m.policy(None)
            .forward_batch(&mut [])
            .expect("empty")
            .is_empty()
    );
}

#[test]
fn concurrent_generations_decoded_together_equal_each_generated_alone() {
    let m = Arc::new(quantized(5));
    let tuned = Arc::new(adapter(&m, 6));
    let batcher = Batcher::new(m.clone(), 8).expect("decode thread");
    // Greedy and sampled, with and without the adapter, stop strings and log-probs: each
    // generation must not depend on what it was decoded with.
    let cases: Vec<(String, GenerateParams, Option<Arc<LoraAdapter>>)> = (0..7u64)
        .map(|i| {
            let params = GenerateParams {
                max_tokens: 12 + 5 * i as usize,
                sampling: if i % 3 == 0 {
                    Sampling::greedy()
                } else {
                    Sampling {
                        temperature: 0.9,
                        top_p: 0.95,
                        seed: Some(i),
                    }
                },
                stop: if i == 4 { vec!["e".into()] } else { Vec::new() },
                top_logprobs: (i % 4) as usize,
                ..Default::default()
            };
            let adapter = (i % 2 == 1).then(|| tuned.clone());
            (format!("question number {i}, please"), params, adapter)
        })
        .collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(text, params, adapter)| {
                let (m, batcher) = (&m, &batcher);
                s.spawn(move || {
                    let prompt = m
                        .chat_prompt(&[Message::user(text.clone())], None)
                        .expect("prompt");
                    let pieces = Arc::new(Mutex::new(String::new()));
                    let seen = pieces.clone();
                    let g = batcher
                        .generate(
                            &prompt,
                            params,
                            adapter.clone(),
                            Box::new(move |_, piece| {
                                seen.lock().expect("not poisoned").push_str(piece);
                                ControlFlow::Continue(())
                            }),
                        )
                        .expect("generates");
                    let streamed = pieces.lock().expect("not poisoned").clone();
                    (prompt, g, streamed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("no panic"))
            .collect()
    });
    for ((_, params, adapter), (prompt, g, streamed)) in cases.iter().zip(results) {
        let alone = m
            .policy(adapter.as_deref())
            .generate(&prompt, params, |_, _| ControlFlow::Continue(()))
            .expect("generates alone");
        assert_eq!(g.token_ids(), alone.token_ids());
        assert_eq!(g.tokens, alone.tokens, "log-probs and alternatives");
        assert_eq!(g.text, alone.text);
        assert_eq!(g.finish_reason, alone.finish_reason);
        assert_eq!(streamed, g.text, "the streamed pieces make the text");
    }
}

#[test]
fn a_batched_generation_stops_when_its_caller_says() {
    let m = Arc::new(quantized(7));
    let batcher = Batcher::new(m.clone(), 4).expect("decode thread");
    let prompt = m.tokenizer.encode("stop me").expect("encodes");
    let params = GenerateParams {
        max_tokens: 50,
        sampling: Sampling::greedy(),
        ignore_eos: true,
        ..Default::default()
    };
    let mut n = 0;
    let g = batcher
        .generate(
            &prompt,
            &params,
            None,
            Box::new(move |_, _| {
                n += 1;
                if n == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            }),
        )
        .expect("generates");
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert_eq!(g.tokens.len(), 3);
    let err = batcher
        .generate(
            &[],
            &params,
            None,
            Box::new(|_, _| ControlFlow::Continue(())),
        )
        .expect_err("an empty prompt");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
}
