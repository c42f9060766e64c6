//! Exporting the embedded model with an adapter merged in (GGUF), loaded back by the engine.
//! llama.cpp's side is `scripts/check_gguf_export.py`.

use std::path::PathBuf;

use clawrl_model::{Error, LoraAdapter, LoraWeights, MergedType, Message, Model, Target};
use rand::{Rng, SeedableRng};

fn base_path() -> PathBuf {
    clawrl_model::default_model_path(&mut |_| {}).expect("the embedded model is fetched")
}

/// An adapter on q_proj and v_proj of every block, with random A and B large enough to change
/// the model's log-probs by far more than rounding.
fn adapter(m: &Model) -> LoraAdapter {
    let c = &m.config;
    let rank = 4;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut a = LoraAdapter::new(3, 2.0, c.layers);
    for l in 0..c.layers {
        for (t, out) in [(Target::Q, c.q_dim()), (Target::V, c.kv_dim())] {
            let mut draw = |n: usize, s: f32| (0..n).map(|_| rng.random_range(-s..s)).collect();
            let w = LoraWeights::new(
                rank,
                c.hidden,
                out,
                draw(rank * c.hidden, 0.05),
                draw(out * rank, 0.05),
            )
            .expect("shapes");
            a.insert(l, t, w).expect("block");
        }
    }
    a
}

fn logprobs(m: &Model, adapter: Option<&LoraAdapter>) -> Vec<f32> {
    let prompt = m
        .chat_prompt(&[Message::user("Name three colours.")], None)
        .expect("renders");
    let response = m
        .tokenizer
        .encode("Red, green and blue are three colours.")
        .expect("encodes");
    m.policy(adapter)
        .score(&[prompt], &response, 0)
        .expect("scores")
        .remove(0)
        .into_iter()
        .map(|p| p.logprob)
        .collect()
}

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn the_merged_file_scores_like_the_base_with_its_adapter() {
    let base = Model::load(&base_path()).expect("loads");
    let adapter = adapter(&base);
    let dir = tempfile::tempdir().expect("dir");
    let out = dir.path().join("merged.gguf");
    let mut reported = 0;
    let summary = clawrl_model::merge_to_gguf(
        &base_path(),
        &adapter,
        &out,
        MergedType::F32,
        |done, total| {
            assert!(done <= total);
            reported = done;
        },
    )
    .expect("exports");
    assert_eq!(summary.merged, 2 * base.config.layers);
    assert_eq!(reported, summary.merged + summary.copied);
    assert_eq!(
        summary.bytes,
        std::fs::metadata(&out).expect("written").len()
    );

    let merged = Model::load(&out).expect("the merged file loads");
    assert_eq!(merged.config.layers, base.config.layers);
    let msgs = [Message::user("Hi!")];
    assert_eq!(
        merged.chat_prompt(&msgs, None).expect("renders"),
        base.chat_prompt(&msgs, None).expect("renders"),
        "tokenizer and template travel with the file"
    );

    let with_adapter = logprobs(&base, Some(&adapter));
    let without = logprobs(&base, None);
    let of_merged = logprobs(&merged, None);
    let effect = max_gap(&with_adapter, &without);
    let error = max_gap(&with_adapter, &of_merged);
    eprintln!("adapter's effect {effect:.4} nats, merged vs adapter {error:.6} nats");
    assert!(effect > 0.1, "the adapter must matter: {effect}");
    assert!(
        error < 1e-3,
        "merged differs from base + adapter by {error}"
    );
}

#[test]
fn a_smaller_type_rounds_the_merge_and_an_adapter_for_another_shape_writes_nothing() {
    let base = Model::load(&base_path()).expect("loads");
    let adapter = adapter(&base);
    let dir = tempfile::tempdir().expect("dir");

    let out = dir.path().join("q8.gguf");
    let summary =
        clawrl_model::merge_to_gguf(&base_path(), &adapter, &out, MergedType::Q8_0, |_, _| {})
            .expect("exports");
    let merged = Model::load(&out).expect("loads");
    let error = max_gap(&logprobs(&base, Some(&adapter)), &logprobs(&merged, None));
    let effect = max_gap(&logprobs(&base, Some(&adapter)), &logprobs(&base, None));
    assert!(
        error < effect / 4.0,
        "Q8_0 rounding {error} vs the adapter's effect {effect}"
    );
    assert!(summary.bytes < std::fs::metadata(base_path()).expect("base").len() * 2);

    let short = LoraAdapter::new(0, 1.0, base.config.layers - 1);
    let bad = dir.path().join("bad.gguf");
    let e = clawrl_model::merge_to_gguf(&base_path(), &short, &bad, MergedType::F32, |_, _| {})
        .expect_err("another number of blocks");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(!bad.exists());

    let not_gguf = dir.path().join("x.gguf");
    std::fs::write(&not_gguf, b"not a model").expect("write");
    let e = clawrl_model::merge_to_gguf(&not_gguf, &adapter, &bad, MergedType::F32, |_, _| {})
        .expect_err("not GGUF");
    assert!(matches!(e, Error::BadModel { .. }), "{e}");
    assert!(!bad.exists());
}
