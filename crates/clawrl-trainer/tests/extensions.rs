//! The switches beyond the paper on the tiny model: the OPD support, the forward KL toward the
//! hinted teacher, accepted-retry distillation and several passes per batch.

mod common;

use clawrl_model::Model;
use clawrl_objective::{Method, ObjectiveConfig, Support};
use clawrl_trainer::{Teacher, TrainConfig, TrainSample, Trainer};
use common::prompt;

fn trainer(m: &Model, lr: f64, config: TrainConfig) -> Trainer {
    common::trainer_with(m, lr, config)
}

/// An OPD sample of `response` after "hi", taught under a hint.
fn hinted(m: &Model, response: &[u32]) -> TrainSample {
    TrainSample {
        prompt: prompt(m, "hi"),
        response: response.to_vec(),
        advantage: None,
        teacher: Some(Teacher::single(
            prompt(m, "hi\n\n[user's hint / instruction]\nanswer with numbers"),
            response.len(),
        )),
        retry_prompt: None,
    }
}

fn directive_only(w_opd: f64, w_fkl: f64, w_retry: f64) -> ObjectiveConfig {
    ObjectiveConfig {
        method: Method::Opd,
        w_opd,
        w_fkl,
        w_retry,
        ..Default::default()
    }
}

#[test]
fn each_support_ranges_over_its_own_tokens() {
    let m = Model::tiny(21);
    let response = m.tokenizer.encode("the cat sat").expect("encodes");
    let t = response.len();
    let k = 3;
    let entries = |support: Support| {
        let mut tr = trainer(
            &m,
            1e-3,
            TrainConfig {
                top_k: k,
                support,
                ..Default::default()
            },
        );
        let step = tr.train_step(&[hinted(&m, &response)]).expect("step").loss;
        assert_eq!(step.opd_samples, 1);
        assert!(step.loss_opd.is_finite());
        step.opd_entries
    };
    let (student, teacher, union) = (
        entries(Support::Student),
        entries(Support::Teacher),
        entries(Support::Union),
    );
    assert_eq!(student, t * k);
    assert_eq!(teacher, t * k);
    // The union counts a token in both top-k's once.
    assert!(
        union >= t * k && union <= 2 * t * k,
        "{union} entries for {t} positions"
    );
}

#[test]
fn the_forward_kl_pulls_the_student_toward_the_teacher() {
    let m = Model::tiny(22);
    let response = m.tokenizer.encode("the cat sat on").expect("encodes");
    let mut tr = trainer(
        &m,
        2e-2,
        TrainConfig {
            objective: directive_only(0.0, 1.0, 0.0),
            ..Default::default()
        },
    );
    let sample = hinted(&m, &response);
    let first = tr.train_step(std::slice::from_ref(&sample)).expect("step");
    assert_eq!((first.loss.fkl_samples, first.loss.opd_samples), (1, 0));
    let mut last = first;
    for _ in 0..6 {
        last = tr.train_step(std::slice::from_ref(&sample)).expect("step");
    }
    assert!(
        last.loss.loss_fkl < first.loss.loss_fkl * 0.9,
        "KL(π̃_T ‖ π) went from {} to {}",
        first.loss.loss_fkl,
        last.loss.loss_fkl
    );
}

#[test]
fn accepted_retry_raises_the_accepted_answer_under_the_original_prompt() {
    let m = Model::tiny(23);
    let original = prompt(&m, "what is two plus two");
    let accepted = m.tokenizer.encode("four, well done").expect("encodes");
    let mut tr = trainer(
        &m,
        2e-2,
        TrainConfig {
            objective: directive_only(1.0, 0.0, 1.0),
            ..Default::default()
        },
    );
    let sample = TrainSample {
        prompt: prompt(&m, "what is two plus two\n\nplease be warm"),
        response: accepted.clone(),
        advantage: Some(1.0),
        teacher: None,
        retry_prompt: Some(original.clone()),
    };
    let before = tr.mean_logprob(&original, &accepted).expect("scores");
    let step = tr.train_step(std::slice::from_ref(&sample)).expect("step");
    // L^retry is −mean ℓ(y | s_orig) under the policy before the step.
    assert_eq!(step.loss.retry_samples, 1);
    assert!(
        (step.loss.loss_retry + before).abs() < 1e-4,
        "{} vs {}",
        step.loss.loss_retry,
        -before
    );
    for _ in 0..4 {
        tr.train_step(std::slice::from_ref(&sample)).expect("step");
    }
    let after = tr.mean_logprob(&original, &accepted).expect("scores");
    assert!(after > before + 0.1, "{before} → {after}");
    // Under `rl` (evaluative only) the retry does not train.
    let mut rl = trainer(
        &m,
        2e-2,
        TrainConfig {
            objective: ObjectiveConfig {
                method: Method::Rl,
                w_retry: 1.0,
                ..Default::default()
            },
            ..Default::default()
        },
    );
    let step = rl.train_step(std::slice::from_ref(&sample)).expect("step");
    assert_eq!(step.loss.retry_samples, 0);
}

#[test]
fn later_passes_over_a_batch_see_a_moved_policy() {
    let m = Model::tiny(24);
    let response = m.tokenizer.encode("the cat").expect("encodes");
    let sample = TrainSample {
        prompt: prompt(&m, "hi"),
        response,
        advantage: Some(1.0),
        teacher: None,
        retry_prompt: None,
    };
    let mut once = trainer(&m, 5e-2, TrainConfig::default());
    let one = once
        .train_step(std::slice::from_ref(&sample))
        .expect("step");
    assert!((one.loss.mean_ratio - 1.0).abs() < 1e-6);
    assert_eq!(one.step, 1);
    let mut thrice = trainer(
        &m,
        5e-2,
        TrainConfig {
            epochs: 3,
            ..Default::default()
        },
    );
    let three = thrice
        .train_step(std::slice::from_ref(&sample))
        .expect("step");
    assert_eq!(three.step, 3);
    assert!(
        three.loss.mean_ratio > 1.0 + 1e-4,
        "ρ = {} after two passes with A = +1",
        three.loss.mean_ratio
    );
}
