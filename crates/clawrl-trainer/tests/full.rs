//! Full fine-tuning on the tiny model: every projection trains, learns what the signal says,
//! publishes as a servable model and resumes from its checkpoint.

use clawrl_model::{Message, Model};
use clawrl_trainer::{
    AdamWConfig, Gather, Mode, Teacher, TrainConfig, TrainSample, TrainablePolicy, Trainer, Tuning,
};

fn prompt(m: &Model, text: &str) -> Vec<u32> {
    m.chat_prompt(&[Message::user(text)], None).expect("prompt")
}

fn full_trainer(m: &Model) -> Trainer {
    let policy = TrainablePolicy::full(m).expect("policy");
    assert_eq!(policy.tuning(), &Tuning::Full);
    Trainer::new(
        policy,
        AdamWConfig {
            lr: 1e-3,
            ..Default::default()
        },
        TrainConfig::default(),
    )
    .expect("trainer")
}

/// The trained policy's per-token log-probs of `response` after `p` (adapters on).
fn trained_logprobs(t: &Trainer, p: &[u32], response: &[u32]) -> Vec<f32> {
    let mut tokens = p.to_vec();
    tokens.extend_from_slice(&response[..response.len() - 1]);
    let ys = response.iter().map(|&y| vec![y]).collect();
    let (lp, _) = t
        .policy
        .head(&tokens, p.len() - 1, Gather::Ids(ys), Mode::Eval)
        .expect("forward");
    lp.flatten_all().and_then(|x| x.to_vec1()).expect("vec")
}

#[test]
fn full_fine_tuning_trains_every_projection_and_publishes_a_model() {
    let m = Model::tiny(17);
    let mut t = full_trainer(&m);
    assert_eq!(t.policy.vars().len(), 7 * m.config.layers);
    let p = prompt(&m, "pick one");
    let good = m.tokenizer.encode("in the end").expect("encodes");
    let bad = m.tokenizer.encode("zzz qqq").expect("encodes");

    // Before any step the trainable forward is the engine's.
    let engine = m.score(std::slice::from_ref(&p), &good, 1).expect("scores");
    for (ours, theirs) in trained_logprobs(&t, &p, &good).iter().zip(&engine[0]) {
        assert!(
            (ours - theirs.logprob).abs() < 1e-3,
            "{ours} vs {}",
            theirs.logprob
        );
    }

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
            teacher: Some(Teacher::single(
                prompt(&m, "pick one\n\n[user's hint / instruction]\nbe brief"),
                bad.len(),
            )),
            retry_prompt: None,
        },
    ];
    let (good0, bad0) = (
        t.mean_logprob(&p, &good).expect("lp"),
        t.mean_logprob(&p, &bad).expect("lp"),
    );
    for _ in 0..4 {
        let metrics = t.train_step(&batch).expect("step");
        assert!(metrics.loss.loss.is_finite() && metrics.grad_norm > 0.0);
    }
    let (good1, bad1) = (
        t.mean_logprob(&p, &good).expect("lp"),
        t.mean_logprob(&p, &bad).expect("lp"),
    );
    assert!(good1 > good0, "rewarded: {good0} → {good1}");
    assert!(bad1 < bad0, "punished: {bad0} → {bad1}");

    // Every projection receives gradient.
    let mut tokens = p.clone();
    tokens.extend_from_slice(&good[..good.len() - 1]);
    let gather = Gather::TokenAndTopK {
        tokens: good.clone(),
        k: 4,
        extra: Vec::new(),
    };
    let (lp, _) = t
        .policy
        .head(&tokens, p.len() - 1, gather, Mode::Train)
        .expect("forward");
    let grads = lp.sum_all().and_then(|l| l.backward()).expect("backward");
    for (i, v) in t.policy.vars().iter().enumerate() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("weight {i} got no gradient"));
        let norm = g
            .sqr()
            .and_then(|x| x.sum_all())
            .and_then(|x| x.to_scalar::<f32>())
            .expect("norm");
        assert!(norm > 0.0, "weight {i} got a zero gradient");
    }

    // Full fine-tuning has no adapter; it publishes a model that serves what it learned
    // (requantized to Q8_0, hence the looser tolerance).
    assert!(t.policy.adapter_snapshot(1).is_err());
    assert!(t.save_peft(std::path::Path::new("unused"), None).is_err());
    let served = t.policy.full_snapshot(&m).expect("snapshot");
    let scores = served
        .score(std::slice::from_ref(&p), &good, 1)
        .expect("scores");
    for ((ours, theirs), base) in trained_logprobs(&t, &p, &good)
        .iter()
        .zip(&scores[0])
        .zip(&engine[0])
    {
        assert!(
            (ours - theirs.logprob).abs() < 0.05,
            "{ours} vs {}",
            theirs.logprob
        );
        assert!(
            (theirs.logprob - base.logprob).abs() > 1e-4,
            "publishing changed nothing"
        );
    }
    // The reference policy is still the untouched base.
    let reference = {
        let ys = good.iter().map(|&y| vec![y]).collect();
        let (lp, _) = t
            .policy
            .head(&tokens, p.len() - 1, Gather::Ids(ys), Mode::Reference)
            .expect("forward");
        lp.flatten_all()
            .and_then(|x| x.to_vec1::<f32>())
            .expect("vec")
    };
    for (r, e) in reference.iter().zip(&engine[0]) {
        assert!((r - e.logprob).abs() < 1e-3);
    }
}

#[test]
fn a_full_fine_tuning_checkpoint_resumes_identically() {
    let m = Model::tiny(18);
    let p = prompt(&m, "again");
    let sample = TrainSample {
        prompt: p.clone(),
        response: m.tokenizer.encode("in the end").expect("encodes"),
        advantage: Some(1.0),
        teacher: None,
        retry_prompt: None,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = full_trainer(&m);
    a.train_step(std::slice::from_ref(&sample)).expect("step");
    let ckpt = a.save_checkpoint(dir.path()).expect("checkpoint");
    assert!(ckpt.join("model.safetensors").exists());
    assert!(!ckpt.join("adapter_config.json").exists());

    let mut b = full_trainer(&m);
    assert_eq!(b.resume(dir.path()).expect("resume"), Some(1));
    let ma = a.train_step(std::slice::from_ref(&sample)).expect("step");
    let mb = b.train_step(std::slice::from_ref(&sample)).expect("step");
    assert!((ma.loss.loss - mb.loss.loss).abs() < 1e-6);
    let (la, lb) = (
        a.mean_logprob(&p, &sample.response).expect("lp"),
        b.mean_logprob(&p, &sample.response).expect("lp"),
    );
    assert!((la - lb).abs() < 1e-5, "{la} vs {lb}");
}
