//! Training on a GPU (wgpu; in CI Mesa's lavapipe) against training on the CPU: the same
//! log-probs, the same adapter gradients, the same step.
//!
//! Tolerances: 1e-3 on log-probs and entropies (f32 sums over the vocabulary in another
//! order), 1e-4 of the largest gradient entry (a backward through every block; measured on
//! lavapipe: 1.3e-6).

#![cfg(feature = "gpu")]

mod common;

use candle_core::{Device as CandleDevice, Tensor};
use clawrl_model::{Device, Model};
use clawrl_trainer::{
    Gather, LoraConfig, Mode, Teacher, TrainConfig, TrainSample, TrainablePolicy,
};
use common::{prompt, trainer_with};
use rand::{Rng, SeedableRng};

fn on_gpu(mut g: Model) -> Model {
    let device = g.set_device(Device::Gpu).unwrap_or_else(|e| {
        panic!("{e}: install a Vulkan driver (Debian: mesa-vulkan-drivers) to run the GPU tests")
    });
    assert!(device.starts_with("gpu: "), "{device}");
    g
}

/// The tiny model with Qwen's extras on: biases on q, k, v and a per-head RMSNorm of queries
/// and keys, so the GPU's backward covers them too.
fn with_qwen_extras(mut m: Model) -> Model {
    let c = m.config.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut draw = |n: usize, around: f32| -> Vec<f32> {
        (0..n)
            .map(|_| around + rng.random_range(-0.2..0.2))
            .collect()
    };
    for b in &mut m.weights.blocks {
        b.qkv_bias = Some([
            draw(c.q_dim(), 0.0),
            draw(c.kv_dim(), 0.0),
            draw(c.kv_dim(), 0.0),
        ]);
        b.qk_norm = Some([draw(c.head_dim, 1.0), draw(c.head_dim, 1.0)]);
    }
    m
}

/// A rank-4 adapter on every projection with B random too, so every A has a gradient.
fn policy(m: &Model) -> TrainablePolicy {
    let p = TrainablePolicy::new(
        m,
        LoraConfig {
            rank: 4,
            alpha: 8.0,
            ..Default::default()
        },
        3,
    )
    .expect("policy");
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    for pair in p.lora.values() {
        let (out, r) = pair.b.as_tensor().dims2().expect("B is 2-d");
        let b: Vec<f32> = (0..out * r).map(|_| rng.random_range(-0.3..0.3)).collect();
        pair.b
            .set(&Tensor::from_vec(b, (out, r), &CandleDevice::Cpu).expect("B"))
            .expect("set B");
    }
    p
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

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().expect("flat").to_vec1().expect("f32")
}

#[test]
fn log_probs_and_adapter_gradients_match_the_cpu() {
    // Each model built twice from its seed: one stays on the CPU, one moves to the GPU.
    let llama = || Model::tiny(21);
    let qwen = || with_qwen_extras(Model::tiny(22));
    for (name, make) in [
        ("llama", &llama as &dyn Fn() -> Model),
        ("qwen extras", &qwen),
    ] {
        let (m, g) = (make(), on_gpu(make()));
        let (cpu, gpu) = (policy(&m), policy(&g));
        assert_eq!(cpu.device(), "cpu");
        assert!(gpu.device().starts_with("gpu: "), "{}", gpu.device());
        let p = prompt(&m, "what is the capital of france");
        let response = m.tokenizer.encode("the answer is paris").expect("encodes");
        let mut tokens = p.clone();
        tokens.extend_from_slice(&response[..response.len() - 1]);
        let from = p.len() - 1;
        let gather = Gather::TokenAndTopK {
            tokens: response.clone(),
            k: 3,
            extra: vec![vec![5, 9]; response.len()],
        };
        // Every mode's forward; the eval and reference heads leave nothing to differentiate.
        for mode in [Mode::Reference, Mode::Eval] {
            let (a, sa) = cpu.head(&tokens, from, gather.clone(), mode).expect("cpu");
            let (b, sb) = gpu.head(&tokens, from, gather.clone(), mode).expect("gpu");
            assert!(
                rel_err(&flat(&b), &flat(&a)) < 1e-3,
                "{name} {mode:?} log-probs"
            );
            assert_eq!(sa.ids, sb.ids, "{name} {mode:?} gathered ids");
            assert!((sa.entropy_sum - sb.entropy_sum).abs() < 1e-3 * sa.entropy_sum.abs());
        }
        // A weighted sum of the gathered log-probs: every column gets its own gradient.
        let (a, _) = cpu
            .head(&tokens, from, gather.clone(), Mode::Train)
            .expect("cpu");
        let (b, _) = gpu
            .head(&tokens, from, gather.clone(), Mode::Train)
            .expect("gpu");
        let dims = a.dims2().expect("2-d");
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        let w: Vec<f32> = (0..dims.0 * dims.1)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let w = Tensor::from_vec(w, dims, &CandleDevice::Cpu).expect("weights");
        let loss = |lp: &Tensor| lp.mul(&w).and_then(|x| x.sum_all()).expect("loss");
        let (store_cpu, store_gpu) = (
            loss(&a).backward().expect("backward"),
            loss(&b).backward().expect("backward"),
        );
        assert!(cpu.device_gradients(&store_cpu).expect("none").is_empty());
        let on_device = gpu.device_gradients(&store_gpu).expect("device backward");
        let vars = cpu.vars();
        assert_eq!(on_device.len(), vars.len());
        for (i, (v, got)) in vars.iter().zip(&on_device).enumerate() {
            let want = flat(store_cpu.get(v.as_tensor()).expect("CPU gradient"));
            let got = flat(got.as_ref().expect("GPU gradient"));
            assert!(
                want.iter().any(|&x| x != 0.0),
                "{name}: var {i} has no gradient"
            );
            let err = rel_err(&got, &want);
            assert!(err < 1e-4, "{name}: var {i} gradient off by {err}");
        }
        // The tapes were consumed: a second call has nothing left to give.
        assert!(
            gpu.device_gradients(&store_gpu)
                .expect("none")
                .iter()
                .all(Option::is_none)
        );
    }
}

#[test]
fn a_training_step_on_the_gpu_matches_the_cpu() {
    let (m, g) = (Model::tiny(23), on_gpu(Model::tiny(23)));
    let p = prompt(&m, "hi");
    let response = m.tokenizer.encode("then the cat sat").expect("encodes");
    let sample = TrainSample {
        prompt: p.clone(),
        advantage: Some(1.0),
        teacher: Some(Teacher::single(
            prompt(&m, "hi\n\n[user's hint / instruction]\nbe brief"),
            response.len(),
        )),
        retry_prompt: Some(prompt(&m, "hello there")),
        response,
    };
    let config = TrainConfig {
        epochs: 2,
        ..TrainConfig::default()
    };
    let mut on_cpu = trainer_with(&m, 1e-2, config);
    let mut on_gpu = trainer_with(&g, 1e-2, config);
    for step in 0..2 {
        // Each step runs two passes (epochs), the second with ρ ≠ 1 and the clips active.
        let a = on_cpu
            .train_step(std::slice::from_ref(&sample))
            .expect("cpu step");
        let b = on_gpu
            .train_step(std::slice::from_ref(&sample))
            .expect("gpu step");
        let close = |x: f64, y: f64, what: &str| {
            assert!(
                (x - y).abs() <= 2e-3 * y.abs().max(1e-3),
                "step {step} {what}: GPU {x} vs CPU {y}"
            );
        };
        close(b.loss.loss, a.loss.loss, "loss");
        close(b.loss.loss_opd, a.loss.loss_opd, "OPD loss");
        close(b.grad_norm, a.grad_norm, "gradient norm");
        close(b.entropy, a.entropy, "entropy");
        assert!(a.grad_norm > 0.0);
    }
    // The second step's losses were computed on the adapters the first step moved: the
    // updates agree too.
    assert!(on_gpu.policy.device().starts_with("gpu: "));
}
