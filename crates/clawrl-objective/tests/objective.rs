//! The hybrid objective against values computed by hand, against finite differences, and at
//! its edges.

use candle_core::{D, DType, Device, Tensor, Var};
use clawrl_objective::{
    FklTerms, LossMetrics, Method, ObjectiveConfig, OpdTerms, SampleTerms, batch_loss,
};

const CPU: Device = Device::Cpu;

fn t1(v: &[f64]) -> Tensor {
    Tensor::new(v, &CPU).expect("tensor")
}

fn t2(v: &[&[f64]]) -> Tensor {
    let rows: Vec<Tensor> = v.iter().map(|r| t1(r)).collect();
    Tensor::stack(&rows, 0).expect("stack")
}

fn ln(x: f64) -> f64 {
    x.ln()
}

fn rl_sample(cur: &[f64], old: &[f64], adv: f64) -> SampleTerms {
    SampleTerms {
        lp_cur: t1(cur),
        lp_old: t1(old),
        advantage: Some(t1(&vec![adv; cur.len()])),
        opd: None,
        lp_ref: None,
        fkl: None,
        retry: None,
    }
}

fn loss_of(samples: &[SampleTerms], cfg: &ObjectiveConfig) -> (f64, LossMetrics) {
    let (l, m) = batch_loss(samples, cfg).expect("loss");
    (
        l.to_dtype(DType::F64)
            .and_then(|l| l.to_scalar::<f64>())
            .expect("scalar"),
        m,
    )
}

#[test]
fn grpo_by_hand() {
    let cfg = ObjectiveConfig::default();
    // ρ = [1.2, 0.6]. A = +1: max(−1.2, −1.2) = −1.2 and max(−0.6, −0.8) = −0.6 → mean −0.9.
    let (l, m) = loss_of(
        &[rl_sample(&[ln(0.6), ln(0.3)], &[ln(0.5), ln(0.5)], 1.0)],
        &cfg,
    );
    assert!((l + 0.9).abs() < 1e-9, "{l}");
    assert_eq!(m.clip_frac, 0.0);
    assert!((m.mean_ratio - 0.9).abs() < 1e-9);
    // A = −1: max(1.2, 1.2) = 1.2 and max(0.6, 0.8) = 0.8 (clipped) → mean 1.0, half clipped.
    let (l, m) = loss_of(
        &[rl_sample(&[ln(0.6), ln(0.3)], &[ln(0.5), ln(0.5)], -1.0)],
        &cfg,
    );
    assert!((l - 1.0).abs() < 1e-9, "{l}");
    assert!((m.clip_frac - 0.5).abs() < 1e-12);
    // ρ = 1.5, A = +1: the upper clip 1 + ε_hi = 1.28 binds → −1.28.
    let (l, m) = loss_of(&[rl_sample(&[ln(0.75)], &[ln(0.5)], 1.0)], &cfg);
    assert!((l + 1.28).abs() < 1e-9, "{l}");
    assert_eq!(m.clip_frac, 1.0);
}

fn opd_sample(cur: &[f64], old: &[f64], teacher: &[f64], mask: &[f64]) -> SampleTerms {
    SampleTerms {
        lp_cur: t1(&[cur[0]]),
        lp_old: t1(&[old[0]]),
        advantage: None,
        opd: Some(OpdTerms {
            lp_cur: t2(&[cur]),
            lp_old: t2(&[old]),
            lp_teacher: t2(&[teacher]),
            mask: t2(&[mask]),
        }),
        lp_ref: None,
        fkl: None,
        retry: None,
    }
}

#[test]
fn opd_by_hand() {
    // S = two tokens with π_old 0.6 and 0.2 → w = softmax(ln .6, ln .2) = (0.75, 0.25).
    // Teacher 0.3 and 0.6 → Δ = (ln 0.5, ln 3) = (−0.6931, 1.0986), clipped at C = 1 to (−0.6931, 1).
    // A = Δ·w = (−0.5199, 0.25); with ρ = 1 the surrogate is −A → L = 0.5199 − 0.25 = 0.2699.
    let old = [ln(0.6), ln(0.2)];
    let s = opd_sample(&old, &old, &[ln(0.3), ln(0.6)], &[1.0, 1.0]);
    let (l, m) = loss_of(&[s], &ObjectiveConfig::default());
    let expect = 0.75 * -ln(0.5) - 0.25 * 1.0;
    assert!((l - expect).abs() < 1e-9, "{l} vs {expect}");
    assert!((m.delta_clip_frac - 0.5).abs() < 1e-12);
    assert!((m.mean_abs_delta - (ln(2.0) + ln(3.0)) / 2.0).abs() < 1e-9);
    assert_eq!(m.opd_samples, 1);
    // C = 2 leaves ln 3 unclipped.
    let s = opd_sample(&old, &old, &[ln(0.3), ln(0.6)], &[1.0, 1.0]);
    let (l, _) = loss_of(
        &[s],
        &ObjectiveConfig {
            delta_clip: 2.0,
            ..Default::default()
        },
    );
    assert!((l - (0.75 * -ln(0.5) - 0.25 * ln(3.0))).abs() < 1e-9);
}

#[test]
fn k3_kl_by_hand() {
    // ℓ_ref − ℓ_cur = ln 2 → e^{ln 2} − ln 2 − 1 = 0.30685.
    let mut s = rl_sample(&[ln(0.25)], &[ln(0.25)], 0.0);
    s.lp_ref = Some(t1(&[ln(0.5)]));
    let cfg = ObjectiveConfig {
        beta: 0.5,
        ..Default::default()
    };
    let (l, m) = loss_of(&[s], &cfg);
    let kl = 1.0 - ln(2.0);
    assert!((m.kl - kl).abs() < 1e-9);
    assert!((l - 0.5 * kl).abs() < 1e-9);
}

/// A sample whose log-probs come from trainable logits, so gradients can be checked.
struct Setup {
    logits: Var,
    y: Vec<u32>,
    support: Vec<Vec<u32>>,
    lp_old: Vec<Vec<f64>>,
    lp_teacher: Vec<Vec<f64>>,
}

fn setup() -> Setup {
    // Three positions over a vocabulary of five; values chosen away from the clip kinks.
    let logits = Var::from_tensor(&t2(&[
        &[0.3, -0.2, 1.1, 0.0, -0.7],
        &[-0.5, 0.9, 0.2, 0.4, -1.0],
        &[0.1, 0.1, -0.3, 1.4, 0.6],
    ]))
    .expect("var");
    Setup {
        logits,
        y: vec![2, 1, 3],
        support: vec![vec![2, 0, 3], vec![1, 3, 2], vec![3, 4, 0]],
        lp_old: vec![
            vec![-0.9, -1.6, -1.9],
            vec![-0.95, -1.5, -1.8],
            vec![-0.85, -1.7, -2.0],
        ],
        lp_teacher: vec![
            vec![-0.3, -2.5, -1.4],
            vec![-1.6, -0.7, -2.4],
            vec![-1.0, -0.9, -3.5],
        ],
    }
}

/// Row-wise log-softmax of `[T, V]` logits.
fn log_softmax(z: &Tensor) -> Tensor {
    z.broadcast_sub(
        &z.log_sum_exp(D::Minus1)
            .expect("lse")
            .unsqueeze(1)
            .expect("unsqueeze"),
    )
    .expect("log-softmax")
}

fn terms(s: &Setup, logits: &Tensor, adv: Option<f64>, opd: bool) -> SampleTerms {
    let lp = log_softmax(logits);
    let y = Tensor::new(s.y.as_slice(), &CPU)
        .expect("ids")
        .unsqueeze(1)
        .expect("unsqueeze");
    let lp_cur = lp
        .gather(&y, 1)
        .expect("gather")
        .squeeze(1)
        .expect("squeeze");
    let lp_old = t1(&s.lp_old.iter().map(|r| r[0] - 0.05).collect::<Vec<_>>());
    let sup: Vec<u32> = s.support.iter().flatten().copied().collect();
    let sup = Tensor::from_vec(sup, (3, 3), &CPU).expect("support");
    let old_rows: Vec<&[f64]> = s.lp_old.iter().map(Vec::as_slice).collect();
    let teacher_rows: Vec<&[f64]> = s.lp_teacher.iter().map(Vec::as_slice).collect();
    SampleTerms {
        lp_cur: lp_cur.clone(),
        lp_old,
        advantage: adv.map(|a| t1(&[a; 3])),
        opd: opd.then(|| OpdTerms {
            lp_cur: lp.gather(&sup, 1).expect("gather"),
            lp_old: t2(&old_rows),
            lp_teacher: t2(&teacher_rows),
            mask: Tensor::ones((3, 3), DType::F64, &CPU).expect("ones"),
        }),
        lp_ref: None,
        fkl: None,
        retry: None,
    }
}

/// Asserts that the gradient of `batch_loss([build(z)])` at the setup's logits matches central
/// finite differences in every entry; `what` names the case.
fn assert_gradient_matches_fd(
    s: &Setup,
    cfg: &ObjectiveConfig,
    what: &str,
    build: impl Fn(&Tensor) -> SampleTerms,
) {
    let (loss, _) = batch_loss(&[build(s.logits.as_tensor())], cfg).expect("loss");
    let g = loss
        .backward()
        .expect("backward")
        .get(s.logits.as_tensor())
        .expect("logits get a gradient")
        .to_vec2::<f64>()
        .expect("vec");
    let base = s.logits.as_tensor().to_vec2::<f64>().expect("vec");
    let h = 1e-6;
    for i in 0..3 {
        for v in 0..5 {
            let at = |delta: f64| {
                let mut x = base.clone();
                x[i][v] += delta;
                let rows: Vec<&[f64]> = x.iter().map(Vec::as_slice).collect();
                let (l, _) = batch_loss(&[build(&t2(&rows))], cfg).expect("loss");
                l.to_scalar::<f64>().expect("scalar")
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (fd - g[i][v]).abs() < 1e-6,
                "{what}: ∂L/∂z[{i}][{v}] = {} vs {fd}",
                g[i][v]
            );
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    let s = setup();
    for (adv, opd) in [
        (Some(1.0), false),
        (Some(-1.0), false),
        (None, true),
        (Some(1.0), true),
        (Some(-1.0), true),
    ] {
        assert_gradient_matches_fd(
            &s,
            &ObjectiveConfig::default(),
            &format!("adv {adv:?} opd {opd}"),
            |z| terms(&s, z, adv, opd),
        );
    }
}

#[test]
fn combined_reduces_to_rl_without_a_hint_and_to_opd_with_zero_reward() {
    let s = setup();
    let z = s.logits.as_tensor();
    let loss_grad = |sample: SampleTerms, method: Method| {
        let (l, _) = batch_loss(
            &[sample],
            &ObjectiveConfig {
                method,
                ..Default::default()
            },
        )
        .expect("loss");
        let g = l
            .backward()
            .expect("backward")
            .get(z)
            .map(|g| g.to_vec2::<f64>().expect("vec"));
        (l.to_scalar::<f64>().expect("scalar"), g)
    };
    let (c, gc) = loss_grad(terms(&s, z, Some(1.0), false), Method::Combined);
    let (r, gr) = loss_grad(terms(&s, z, Some(1.0), true), Method::Rl);
    assert!((c - r).abs() < 1e-12);
    assert_eq!(gc, gr);
    let (c, gc) = loss_grad(terms(&s, z, Some(0.0), true), Method::Combined);
    let (o, go) = loss_grad(terms(&s, z, Some(1.0), true), Method::Opd);
    assert!((c - o).abs() < 1e-12);
    let (gc, go) = (gc.expect("grad"), go.expect("grad"));
    for (a, b) in gc.iter().flatten().zip(go.iter().flatten()) {
        assert!((a - b).abs() < 1e-12);
    }
}

#[test]
fn empty_responses_padding_and_infinite_log_probs() {
    let cfg = ObjectiveConfig::default();
    // An empty response adds nothing and breaks nothing.
    let empty = SampleTerms {
        lp_cur: t1(&[]),
        lp_old: t1(&[]),
        advantage: Some(t1(&[])),
        opd: None,
        lp_ref: None,
        fkl: None,
        retry: None,
    };
    let (l, _) = loss_of(&[empty], &cfg);
    assert_eq!(l, 0.0);
    let (l, _) = loss_of(&[], &cfg);
    assert_eq!(l, 0.0);

    // k beyond the vocabulary: padded entries (mask 0, any values) change nothing.
    let old = [ln(0.6), ln(0.2)];
    let teacher = [ln(0.3), ln(0.6)];
    let (plain, _) = loss_of(&[opd_sample(&old, &old, &teacher, &[1.0, 1.0])], &cfg);
    let padded = opd_sample(
        &[old[0], old[1], 7.0],
        &[old[0], old[1], 3.0],
        &[teacher[0], teacher[1], -9.0],
        &[1.0, 1.0, 0.0],
    );
    let (l, _) = loss_of(&[padded], &cfg);
    assert!((l - plain).abs() < 1e-12);

    // −∞ in π_old leaves S_i; −∞ in the teacher clips Δ to −C; nothing becomes NaN.
    let inf = f64::NEG_INFINITY;
    let s = opd_sample(
        &[old[0], old[1], inf],
        &[old[0], old[1], inf],
        &[teacher[0], teacher[1], 0.0],
        &[1.0, 1.0, 1.0],
    );
    let (l, _) = loss_of(&[s], &cfg);
    assert!((l - plain).abs() < 1e-9, "{l} vs {plain}");
    let s = opd_sample(&old, &old, &[inf, teacher[1]], &[1.0, 1.0]);
    let (l, m) = loss_of(&[s], &cfg);
    assert!(l.is_finite());
    assert!((l - (0.75 * 1.0 - 0.25 * 1.0)).abs() < 1e-9, "{l}");
    assert!(m.mean_abs_delta.is_infinite() || m.mean_abs_delta > 1.0);
}

#[test]
fn metrics_of_parts_merge_into_the_metrics_of_the_whole() {
    let cfg = ObjectiveConfig::default();
    let old = [ln(0.6), ln(0.2)];
    let a = rl_sample(&[ln(0.6), ln(0.3)], &[ln(0.5), ln(0.5)], -1.0);
    let b = opd_sample(&old, &old, &[ln(0.3), ln(0.6)], &[1.0, 1.0]);
    let c = rl_sample(&[ln(0.75)], &[ln(0.5)], 1.0);
    let (_, whole) = loss_of(&[a.clone(), b.clone(), c.clone()], &cfg);
    let parts: Vec<LossMetrics> = [a, b, c]
        .into_iter()
        .map(|s| loss_of(&[s], &cfg).1)
        .collect();
    let merged = LossMetrics::merge(&parts);
    for (x, y) in [
        (merged.loss, whole.loss),
        (merged.loss_rl, whole.loss_rl),
        (merged.loss_opd, whole.loss_opd),
        (merged.clip_frac, whole.clip_frac),
        (merged.mean_ratio, whole.mean_ratio),
        (merged.mean_abs_delta, whole.mean_abs_delta),
        (merged.delta_clip_frac, whole.delta_clip_frac),
    ] {
        assert!((x - y).abs() < 1e-9, "{x} vs {y}");
    }
    assert_eq!(
        (merged.rl_samples, merged.opd_samples, merged.samples),
        (2, 1, 3)
    );
}

#[test]
fn forward_kl_by_hand() {
    // K = two tokens with teacher log-probs ln 0.3 and ln 0.1 → π̃_T = (0.75, 0.25); the student
    // gives them 0.5 and 0.05: L = 0.75·ln(0.75/0.5) + 0.25·ln(0.25/0.05).
    let mut s = rl_sample(&[ln(0.5)], &[ln(0.5)], 0.0);
    s.advantage = None;
    s.fkl = Some(FklTerms {
        lp_cur: t2(&[&[ln(0.5), ln(0.05)]]),
        lp_teacher: t2(&[&[ln(0.3), ln(0.1)]]),
    });
    let expect = 0.75 * ln(0.75 / 0.5) + 0.25 * ln(0.25 / 0.05);
    let cfg = ObjectiveConfig {
        w_fkl: 0.5,
        ..Default::default()
    };
    let (l, m) = loss_of(std::slice::from_ref(&s), &cfg);
    assert!((m.loss_fkl - expect).abs() < 1e-9, "{}", m.loss_fkl);
    assert!((l - 0.5 * expect).abs() < 1e-9, "{l}");
    assert_eq!(m.fkl_samples, 1);
    // A teacher entry at −∞ takes no part; λ = 0 (the paper) or an RL-only method turn it off.
    s.fkl = Some(FklTerms {
        lp_cur: t2(&[&[ln(0.5), ln(0.05), -3.0]]),
        lp_teacher: t2(&[&[ln(0.3), ln(0.1), f64::NEG_INFINITY]]),
    });
    let (_, m) = loss_of(std::slice::from_ref(&s), &cfg);
    assert!((m.loss_fkl - expect).abs() < 1e-9, "{}", m.loss_fkl);
    let (l, _) = loss_of(std::slice::from_ref(&s), &ObjectiveConfig::default());
    assert_eq!(l, 0.0);
    let rl = ObjectiveConfig {
        method: Method::Rl,
        ..cfg
    };
    assert_eq!(loss_of(&[s], &rl).0, 0.0);
}

#[test]
fn accepted_retry_by_hand() {
    // L^retry = −mean ℓ_cur(y | s_orig) = −(ln 0.5 + ln 0.25)/2, weighted by w_retry.
    let mut s = rl_sample(&[ln(0.5), ln(0.5)], &[ln(0.5), ln(0.5)], 0.0);
    s.advantage = None;
    s.retry = Some(t1(&[ln(0.5), ln(0.25)]));
    let cfg = ObjectiveConfig {
        w_retry: 2.0,
        ..Default::default()
    };
    let (l, m) = loss_of(std::slice::from_ref(&s), &cfg);
    let expect = -(ln(0.5) + ln(0.25)) / 2.0;
    assert!((m.loss_retry - expect).abs() < 1e-9);
    assert!((l - 2.0 * expect).abs() < 1e-9, "{l}");
    assert_eq!(m.retry_samples, 1);
    // The untrained control trains nothing at all.
    let none = ObjectiveConfig {
        method: Method::None,
        ..cfg
    };
    assert_eq!(loss_of(&[s], &none).0, 0.0);
    // Retry log-probs for a different number of tokens are refused, not broadcast.
    let mut bad = rl_sample(&[ln(0.5), ln(0.5)], &[ln(0.5), ln(0.5)], 1.0);
    bad.retry = Some(t1(&[ln(0.5)]));
    assert!(batch_loss(&[bad], &cfg).is_err());
}

#[test]
fn forward_kl_and_retry_gradients_match_finite_differences() {
    let s = setup();
    let cfg = ObjectiveConfig {
        w_fkl: 0.7,
        w_retry: 0.3,
        ..Default::default()
    };
    // The teacher's own top-k per position, and a second context's logits for the retry.
    let k_t: Vec<u32> = vec![2, 4, 0, 3, 1, 2, 4, 0, 1];
    let build = |z: &Tensor| {
        let lp = log_softmax(z);
        let ids = Tensor::from_vec(k_t.clone(), (3, 3), &CPU).expect("ids");
        let mut t = terms(&s, z, Some(1.0), true);
        t.fkl = Some(FklTerms {
            lp_cur: lp.gather(&ids, 1).expect("gather"),
            lp_teacher: t2(&[
                &[-0.4, -1.9, -2.2],
                &[-0.8, -1.1, -3.0],
                &[-0.2, -2.6, -2.7],
            ]),
        });
        // The retry scores the same tokens under other logits: here z shifted (a function of z).
        let shifted = z.affine(0.5, 0.1).expect("affine");
        let lp2 = log_softmax(&shifted);
        let y = Tensor::new(s.y.as_slice(), &CPU)
            .expect("y")
            .unsqueeze(1)
            .expect("u");
        t.retry = Some(
            lp2.gather(&y, 1)
                .expect("gather")
                .squeeze(1)
                .expect("squeeze"),
        );
        t
    };
    let (_, m) = batch_loss(&[build(s.logits.as_tensor())], &cfg).expect("loss");
    assert_eq!((m.fkl_samples, m.retry_samples), (1, 1));
    assert_gradient_matches_fd(&s, &cfg, "forward KL and retry", build);
}
