//! The trainer on the tiny model: it computes what the engine computes, every adapter
//! receives gradient, and steps move the policy the way each signal says.

mod common;

use clawrl_model::Model;
use clawrl_trainer::{
    AdamWConfig, Gather, LoraConfig, Mode, Teacher, TrainConfig, TrainSample, TrainablePolicy,
    Trainer,
};
use common::{prompt, trainer_with};

fn trainer(m: &Model, lr: f64) -> Trainer {
    trainer_with(m, lr, TrainConfig::default())
}

#[test]
fn the_trainable_forward_matches_the_engine() {
    let m = Model::tiny(11);
    let t = trainer(&m, 1e-3);
    let p = prompt(&m, "hello");
    let response = m.tokenizer.encode("the answer").expect("encodes");
    let engine = m
        .score(std::slice::from_ref(&p), &response, 3)
        .expect("scores");
    let mut tokens = p.clone();
    tokens.extend_from_slice(&response[..response.len() - 1]);
    // A fresh adapter (B = 0) is the identity: Eval and Reference both equal the base.
    for mode in [Mode::Eval, Mode::Reference] {
        let gather = Gather::TokenAndTopK {
            tokens: response.clone(),
            k: 3,
            extra: Vec::new(),
        };
        let (lp, stats) = t
            .policy
            .head(&tokens, p.len() - 1, gather, mode)
            .expect("forward");
        let lp = lp.to_vec2::<f32>().expect("vec");
        for ((row, ids), pos) in lp.iter().zip(&stats.ids).zip(&engine[0]) {
            assert!(
                (row[0] - pos.logprob).abs() < 1e-3,
                "{} vs {}",
                row[0],
                pos.logprob
            );
            assert_eq!(
                ids[1..].to_vec(),
                pos.top.iter().map(|x| x.0).collect::<Vec<_>>()
            );
            for (lp, (_, want)) in row[1..].iter().zip(&pos.top) {
                assert!((lp - want).abs() < 1e-3);
            }
        }
        assert!(stats.entropy_sum > 0.0);
    }
}

#[test]
fn every_adapter_tensor_receives_a_nonzero_gradient() {
    let m = Model::tiny(12);
    let mut t = trainer(&m, 1e-2);
    let p = prompt(&m, "hi");
    let response = m.tokenizer.encode("then the cat").expect("encodes");
    let sample = TrainSample {
        prompt: p.clone(),
        advantage: Some(1.0),
        teacher: Some(Teacher::single(
            prompt(&m, "hi\n\n[user's hint / instruction]\nbe brief"),
            response.len(),
        )),
        response,
        retry_prompt: None,
    };
    // B starts at zero, so A's gradient is zero until B has moved once.
    t.train_step(std::slice::from_ref(&sample)).expect("step");
    let mut tokens = sample.prompt.clone();
    tokens.extend_from_slice(&sample.response[..sample.response.len() - 1]);
    let gather = Gather::TokenAndTopK {
        tokens: sample.response.clone(),
        k: 4,
        extra: Vec::new(),
    };
    let (lp, _) = t
        .policy
        .head(&tokens, p.len() - 1, gather, Mode::Train)
        .expect("forward");
    let loss = lp.sum_all().expect("sum");
    let grads = loss.backward().expect("backward");
    let vars = t.policy.vars();
    assert_eq!(vars.len(), 2 * 7 * m.config.layers);
    for (i, v) in vars.iter().enumerate() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("variable {i} got no gradient"));
        let norm = g
            .sqr()
            .and_then(|x| x.sum_all())
            .and_then(|x| x.to_scalar::<f32>())
            .expect("norm");
        assert!(norm > 0.0, "variable {i} got a zero gradient");
    }
}

#[test]
fn rl_steps_raise_a_rewarded_response_and_lower_a_punished_one() {
    let m = Model::tiny(13);
    let mut t = trainer(&m, 5e-3);
    let p = prompt(&m, "pick one");
    let good = m.tokenizer.encode("in the end").expect("encodes");
    let bad = m.tokenizer.encode("zzz qqq").expect("encodes");
    let (good0, bad0) = (
        t.mean_logprob(&p, &good).expect("lp"),
        t.mean_logprob(&p, &bad).expect("lp"),
    );
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
    for _ in 0..4 {
        let metrics = t.train_step(&batch).expect("step");
        assert!(metrics.loss.loss.is_finite() && metrics.grad_norm > 0.0);
        assert_eq!(metrics.loss.rl_samples, 2);
    }
    let (good1, bad1) = (
        t.mean_logprob(&p, &good).expect("lp"),
        t.mean_logprob(&p, &bad).expect("lp"),
    );
    assert!(good1 > good0, "rewarded: {good0} → {good1}");
    assert!(bad1 < bad0, "punished: {bad0} → {bad1}");
}

#[test]
fn opd_steps_bring_the_student_towards_the_hinted_teacher() {
    let m = Model::tiny(14);
    let mut t = trainer(&m, 1e-3);
    let p = prompt(&m, "describe the sea");
    let hinted = prompt(
        &m,
        "describe the sea\n\n[user's hint / instruction]\nanswer in one word",
    );
    let response = m.tokenizer.encode("the sea in the end").expect("encodes");
    let sample = TrainSample {
        prompt: p.clone(),
        response: response.clone(),
        advantage: None,
        teacher: Some(Teacher::single(hinted.clone(), response.len())),
        retry_prompt: None,
    };
    let mut kl = t.support_kl(&p, &hinted, &response).expect("kl");
    assert!(kl > 0.0);
    for _ in 0..4 {
        let metrics = t.train_step(std::slice::from_ref(&sample)).expect("step");
        assert_eq!(metrics.loss.opd_samples, 1);
        let next = t.support_kl(&p, &hinted, &response).expect("kl");
        eprintln!("KL {kl} → {next}");
        assert!(
            next < kl,
            "KL(student‖teacher) over S_i rose: {kl} → {next}"
        );
        kl = next;
    }
}

#[test]
fn a_published_adapter_serves_what_the_trainer_learned() {
    let m = Model::tiny(15);
    let mut t = trainer(&m, 1e-2);
    let p = prompt(&m, "say something");
    let response = m.tokenizer.encode("the thing").expect("encodes");
    let sample = TrainSample {
        prompt: p.clone(),
        response: response.clone(),
        advantage: Some(1.0),
        teacher: None,
        retry_prompt: None,
    };
    for _ in 0..3 {
        t.train_step(std::slice::from_ref(&sample)).expect("step");
    }
    let adapter = t.policy.adapter_snapshot(3).expect("snapshot");
    assert_eq!(adapter.version, 3);
    let served = m
        .policy(Some(&adapter))
        .score(std::slice::from_ref(&p), &response, 2)
        .expect("scores");
    let base = m
        .score(std::slice::from_ref(&p), &response, 2)
        .expect("scores");
    let mut tokens = p.clone();
    tokens.extend_from_slice(&response[..response.len() - 1]);
    let ys = response.iter().map(|&y| vec![y]).collect();
    let (trained, _) = t
        .policy
        .head(&tokens, p.len() - 1, Gather::Ids(ys), Mode::Eval)
        .expect("forward");
    let trained = trained.to_vec2::<f32>().expect("vec");
    let mut moved = 0.0f32;
    for (row, (s, b)) in trained.iter().zip(served[0].iter().zip(&base[0])) {
        assert!(
            (row[0] - s.logprob).abs() < 1e-3,
            "{} vs {}",
            row[0],
            s.logprob
        );
        moved += (s.logprob - b.logprob).abs();
    }
    assert!(moved > 1e-3, "the adapter changed nothing");
}

#[test]
fn peft_round_trip_and_a_resumed_checkpoint_continue_identically() {
    let m = Model::tiny(16);
    let p = prompt(&m, "again");
    let sample = TrainSample {
        prompt: p.clone(),
        response: m.tokenizer.encode("in the end").expect("encodes"),
        advantage: Some(1.0),
        teacher: None,
        retry_prompt: None,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = trainer(&m, 1e-2);
    a.train_step(std::slice::from_ref(&sample)).expect("step");
    a.train_step(std::slice::from_ref(&sample)).expect("step");
    let ckpt = a.save_checkpoint(dir.path()).expect("checkpoint");
    assert!(
        ckpt.join("adapter_config.json").exists()
            && ckpt.join("adapter_model.safetensors").exists()
    );
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ckpt.join("adapter_config.json")).expect("read"),
    )
    .expect("json");
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);

    // A fresh trainer resumed from the checkpoint takes the same next step as the original.
    let mut b = trainer(&m, 1e-2);
    assert_eq!(b.resume(dir.path()).expect("resume"), Some(2));
    assert_eq!(b.steps(), 2);
    let (la, lb) = (
        a.mean_logprob(&p, &sample.response).expect("lp"),
        b.mean_logprob(&p, &sample.response).expect("lp"),
    );
    assert!((la - lb).abs() < 1e-6, "{la} vs {lb}");
    let ma = a.train_step(std::slice::from_ref(&sample)).expect("step");
    let mb = b.train_step(std::slice::from_ref(&sample)).expect("step");
    assert_eq!(ma.step, 3);
    assert!((ma.loss.loss - mb.loss.loss).abs() < 1e-6);
    let (la, lb) = (
        a.mean_logprob(&p, &sample.response).expect("lp"),
        b.mean_logprob(&p, &sample.response).expect("lp"),
    );
    assert!((la - lb).abs() < 1e-5, "{la} vs {lb}");

    // No checkpoint: nothing to resume.
    let empty = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        trainer(&m, 1e-2).resume(empty.path()).expect("resume"),
        None
    );
}

#[test]
fn adapter_gradients_through_the_whole_model_match_finite_differences() {
    let m = Model::tiny(17);
    let mut t = trainer(&m, 1e-2);
    let p = prompt(&m, "grad");
    let response = m.tokenizer.encode("the end").expect("encodes");
    let sample = TrainSample {
        prompt: p.clone(),
        response: response.clone(),
        advantage: Some(1.0),
        teacher: None,
        retry_prompt: None,
    };
    t.train_step(std::slice::from_ref(&sample)).expect("step");
    let mut tokens = p.clone();
    tokens.extend_from_slice(&response[..response.len() - 1]);
    // Fixed ids keep the objective smooth: ℓ of each response token and of a few others.
    let ids: Vec<Vec<u32>> = response.iter().map(|&y| vec![y, 5, 40, 100]).collect();
    let objective = |t: &Trainer| -> f64 {
        let gather = Gather::Ids(ids.clone());
        let (lp, _) = t
            .policy
            .head(&tokens, p.len() - 1, gather, Mode::Eval)
            .expect("forward");
        lp.sum_all()
            .and_then(|x| x.to_scalar::<f32>())
            .expect("sum") as f64
    };
    let gather = Gather::Ids(ids.clone());
    let (lp, _) = t
        .policy
        .head(&tokens, p.len() - 1, gather, Mode::Eval)
        .expect("forward");
    let grads = lp.sum_all().expect("sum").backward().expect("backward");
    // Check one entry of A and of B in the first and last block's q and down projections.
    for var in [
        0usize,
        1,
        6 * 2,
        6 * 2 + 1,
        t.policy.vars().len() - 2,
        t.policy.vars().len() - 1,
    ] {
        let v = t.policy.vars()[var].clone();
        let g = grads
            .get(v.as_tensor())
            .expect("gradient")
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
        let (i, _) = g.iter().enumerate().fold((0, 0f32), |best, (i, x)| {
            if x.abs() > best.1 { (i, x.abs()) } else { best }
        });
        let base = v
            .as_tensor()
            .flatten_all()
            .expect("flat")
            .to_vec1::<f32>()
            .expect("vec");
        let h = 1e-2f32;
        let at = |delta: f32| {
            let mut w = base.clone();
            w[i] += delta;
            v.set(
                &candle_core::Tensor::from_vec(w, v.as_tensor().shape(), &candle_core::Device::Cpu)
                    .expect("tensor"),
            )
            .expect("set");
            objective(&t)
        };
        let fd = (at(h) - at(-h)) / (2.0 * h as f64);
        at(0.0);
        let an = g[i] as f64;
        assert!(
            (fd - an).abs() <= 0.05 * an.abs().max(1e-2),
            "variable {var}[{i}]: analytic {an} vs numeric {fd}"
        );
    }
}

#[test]
fn adapter_dropout_trains_too() {
    let m = Model::tiny(18);
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        ..Default::default()
    };
    let policy = TrainablePolicy::new(&m, lora, 1).expect("policy");
    let mut t = Trainer::new(
        policy,
        AdamWConfig {
            lr: 5e-3,
            ..Default::default()
        },
        TrainConfig::default(),
    )
    .expect("trainer");
    let p = prompt(&m, "pick one");
    let good = m.tokenizer.encode("in the end").expect("encodes");
    let before = t.mean_logprob(&p, &good).expect("lp");
    let sample = TrainSample {
        prompt: p.clone(),
        response: good.clone(),
        advantage: Some(1.0),
        teacher: None,
        retry_prompt: None,
    };
    for _ in 0..4 {
        assert!(
            t.train_step(std::slice::from_ref(&sample))
                .expect("step")
                .loss
                .loss
                .is_finite()
        );
    }
    assert!(t.mean_logprob(&p, &good).expect("lp") > before);
}

/// Token mode (DESIGN.md §2): the teacher at position i is the hint chosen at i. With a policy
/// that does not move (lr 0), the OPD loss is a mean of per-position terms, so a plan and its
/// complement add up to the two single-hint plans: L(mixed) + L(complement) = L(h0) + L(h1).
/// A sample-level rule (one hint for the whole response) would make `mixed` equal one of them.
#[test]
fn each_position_learns_from_the_teacher_of_its_own_hint() {
    let m = Model::tiny(14);
    let mut t = trainer(&m, 0.0);
    let p = prompt(&m, "describe the sea");
    let response = m
        .tokenizer
        .encode("the sea is big and blue")
        .expect("encodes");
    let n = response.len();
    assert!(n >= 4);
    let hints = [
        prompt(
            &m,
            "describe the sea\n\n[user's hint / instruction]\nanswer in one word",
        ),
        prompt(
            &m,
            "describe the sea\n\n[user's hint / instruction]\nwrite a long poem",
        ),
    ];
    let mut opd_loss = |per_position: Vec<usize>| {
        let sample = TrainSample {
            prompt: p.clone(),
            response: response.clone(),
            advantage: None,
            teacher: Some(Teacher {
                prompts: hints.to_vec(),
                per_position,
            }),
            retry_prompt: None,
        };
        t.train_step(std::slice::from_ref(&sample))
            .expect("step")
            .loss
            .loss_opd
    };
    let mixed: Vec<usize> = (0..n).map(|i| usize::from(i % 3 == 0)).collect();
    let complement: Vec<usize> = mixed.iter().map(|h| 1 - h).collect();
    let (l0, l1) = (opd_loss(vec![0; n]), opd_loss(vec![1; n]));
    let (lm, lc) = (opd_loss(mixed), opd_loss(complement));
    assert!(
        (l0 - l1).abs() > 1e-4,
        "the two hints teach alike: {l0} vs {l1}"
    );
    assert!((lm - l0).abs() > 1e-5 && (lm - l1).abs() > 1e-5);
    assert!(
        ((lm + lc) - (l0 + l1)).abs() < 1e-5,
        "{lm} + {lc} vs {l0} + {l1}"
    );

    // A plan that does not fit the response is refused, not silently truncated.
    let bad = TrainSample {
        prompt: p.clone(),
        response: response.clone(),
        advantage: None,
        teacher: Some(Teacher {
            prompts: hints.to_vec(),
            per_position: vec![0; n - 1],
        }),
        retry_prompt: None,
    };
    assert!(t.train_step(std::slice::from_ref(&bad)).is_err());
}
