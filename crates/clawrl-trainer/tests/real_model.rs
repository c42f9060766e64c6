//! Learning on the real embedded model (slow: about 20 s; fetched on first use).

use clawrl_model::Model;

#[test]
fn slow_each_signal_teaches_what_it_should_on_the_embedded_model() {
    let path =
        clawrl_model::default_model_path(&mut |_| {}).expect("the embedded model is fetched");
    let model = Model::load(&path).expect("loads");
    let out =
        clawrl_trainer::demo::run(&model, 3, None, |line| eprintln!("{line}")).expect("demo runs");
    // RL: the +1 response gained log-prob, the −1 response lost it.
    assert!(
        out.rewarded[3] > out.rewarded[0],
        "rewarded: {:?}",
        out.rewarded
    );
    assert!(
        out.punished[3] < out.punished[0],
        "punished: {:?}",
        out.punished
    );
    // OPD: KL(student‖teacher) over S_i falls at every step.
    for w in out.opd_kl.windows(2) {
        assert!(w[1] < w[0], "KL rose: {:?}", out.opd_kl);
    }
    // Selection: the on-topic hint wins over the two off-topic ones.
    assert_eq!(
        out.hints[out.chosen].0, "Answer in one short sentence.",
        "{:?}",
        out.hints
    );
}
