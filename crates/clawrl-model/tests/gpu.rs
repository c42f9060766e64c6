//! The engine on a GPU (wgpu; in CI Mesa's lavapipe) against the same engine on the CPU: the
//! same forward pass through the other [`clawrl_kernels::Backend`], so logits agree within
//! rounding and greedy generation gives the same tokens.

#![cfg(feature = "gpu")]

use std::ops::ControlFlow;

use clawrl_model::{
    Device, GenerateParams, LoraAdapter, LoraWeights, Message, Model, Sampling, Target,
};
use rand::{Rng, SeedableRng};

fn greedy(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        max_tokens,
        sampling: Sampling::greedy(),
        ignore_eos: true,
        ..Default::default()
    }
}

fn go(_: &clawrl_model::TokenInfo, _: &str) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

fn on_gpu(mut m: Model) -> Model {
    let device = m.set_device(Device::Gpu).unwrap_or_else(|e| {
        panic!("{e}: install a Vulkan driver (Debian: mesa-vulkan-drivers) to run the GPU tests")
    });
    assert!(device.starts_with("gpu: "), "{device}");
    m
}

/// Largest |a − b| over the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// A LoRA adapter on every projection of every block, large enough to move the logits.
fn adapter(m: &Model, seed: u64) -> LoraAdapter {
    let c = &m.config;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut a = LoraAdapter::new(1, 2.0, c.layers);
    let rank = 4;
    for l in 0..c.layers {
        for (t, input, out) in [
            (Target::Q, c.hidden, c.q_dim()),
            (Target::V, c.hidden, c.kv_dim()),
            (Target::Down, c.intermediate, c.hidden),
        ] {
            let mut draw = |n: usize| (0..n).map(|_| rng.random_range(-0.1..0.1)).collect();
            let w = LoraWeights::new(rank, input, out, draw(rank * input), draw(out * rank))
                .expect("shapes");
            a.insert(l, t, w).expect("block in range");
        }
    }
    a
}

#[test]
fn the_tiny_model_gives_the_cpus_logits_and_greedy_tokens_on_the_gpu() {
    let cpu = Model::tiny(5);
    let gpu = on_gpu(Model::tiny(5));
    let tokens = cpu
        .tokenizer
        .encode("the quick brown fox jumps over the lazy dog")
        .expect("encodes");
    let n = tokens.len();
    let want = cpu.forward(&tokens, &mut cpu.new_cache(), n).expect("cpu");
    let got = gpu.forward(&tokens, &mut gpu.new_cache(), n).expect("gpu");
    let err = rel_err(&got, &want);
    assert!(err < 1e-4, "prefill logits differ by {err}");

    let prompt = cpu
        .chat_prompt(&[Message::user("hello there")], None)
        .expect("prompt");
    for a in [None, Some(adapter(&cpu, 9))] {
        let want = cpu
            .policy(a.as_ref())
            .generate(&prompt, &greedy(32), go)
            .expect("cpu generates");
        let got = gpu
            .policy(a.as_ref())
            .generate(&prompt, &greedy(32), go)
            .expect("gpu generates");
        assert_eq!(
            got.token_ids(),
            want.token_ids(),
            "adapter: {}",
            a.is_some()
        );
        for (g, w) in got.tokens.iter().zip(&want.tokens) {
            assert!(
                (g.logprob - w.logprob).abs() < 1e-3,
                "{} vs {}",
                g.logprob,
                w.logprob
            );
        }
        // Scoring clones the KV cache of the shared prefix on the device.
        let prompts = [prompt.clone(), [prompt.as_slice(), &[5, 6]].concat()];
        let (sw, sg) = (
            cpu.policy(a.as_ref())
                .score(&prompts, &want.token_ids(), 3)
                .expect("cpu scores"),
            gpu.policy(a.as_ref())
                .score(&prompts, &want.token_ids(), 3)
                .expect("gpu scores"),
        );
        for (rw, rg) in sw.iter().flatten().zip(sg.iter().flatten()) {
            assert!((rw.logprob - rg.logprob).abs() < 1e-3, "{rw:?} vs {rg:?}");
        }
    }
}

#[test]
fn a_batched_decode_step_on_the_gpu_gives_each_sequence_its_logits_alone() {
    let m = on_gpu(Model::tiny(8));
    let a = adapter(&m, 9);
    let policy = m.policy(Some(&a));
    let vocab = m.config.vocab_size;
    let prompts: [&[u32]; 5] = [&[1, 2, 3], &[4], &[5, 6, 7, 8, 9, 10, 11], &[12, 13], &[14]];
    let (mut alone, mut together) = (Vec::new(), Vec::new());
    for p in prompts {
        let mut cache = m.new_cache();
        policy.forward(p, &mut cache, 1).expect("prefill");
        together.push(cache.clone());
        alone.push(cache);
    }
    for step in 0..3u32 {
        let next: Vec<u32> = (0..prompts.len() as u32).map(|i| 20 + i + step).collect();
        let mut steps: Vec<_> = next.iter().copied().zip(together.iter_mut()).collect();
        let batched = policy.forward_batch(&mut steps).expect("batched step");
        for (i, row) in batched.chunks_exact(vocab).enumerate() {
            let one = policy.forward(&[next[i]], &mut alone[i], 1).expect("alone");
            let err = rel_err(row, &one);
            assert!(err < 1e-5, "step {step}, sequence {i}: {err}");
        }
    }
}

#[test]
fn the_embedded_model_generates_the_same_greedy_tokens_on_the_gpu() {
    let path = clawrl_model::default_model_path(&mut |_| {}).expect("the embedded model");
    let cpu = Model::load(&path).expect("loads");
    let gpu = on_gpu(Model::load(&path).expect("loads"));
    let prompt = cpu
        .chat_prompt(&[Message::user("What is the capital of France?")], None)
        .expect("prompt");
    let want = cpu
        .generate(&prompt, &greedy(32), go)
        .expect("cpu generates");
    let got = gpu
        .generate(&prompt, &greedy(32), go)
        .expect("gpu generates");
    assert_eq!(
        got.text, want.text,
        "GPU and CPU greedy text differ on the embedded model"
    );
}

#[test]
fn a_device_name_is_parsed_or_refused_clearly() {
    assert_eq!("auto".parse::<Device>().expect("parses"), Device::Auto);
    assert_eq!("cpu".parse::<Device>().expect("parses"), Device::Cpu);
    let e = "tpu".parse::<Device>().expect_err("refused");
    assert!(
        e.to_string().contains("expected auto, cpu, gpu or cuda"),
        "{e}"
    );
    assert_eq!("cuda".parse::<Device>().expect("parses"), Device::Cuda);
    let mut m = Model::tiny(1);
    assert_eq!(m.set_device(Device::Cpu).expect("cpu"), "cpu");
    // lavapipe is a software adapter: `auto` keeps the CPU unless a real GPU is there.
    let auto = m.set_device(Device::Auto).expect("auto never fails");
    assert!(auto == "cpu" || !auto.contains("Cpu"), "{auto}");
    // This build has no CUDA backend: asking for it is a clear error, and the model stays put.
    #[cfg(not(feature = "cuda"))]
    {
        let e = m.set_device(Device::Cuda).expect_err("no CUDA backend");
        assert!(
            e.to_string().contains("built without the `cuda` feature"),
            "{e}"
        );
        assert_eq!(m.device(), "cpu");
    }
}
