//! What the GPU tests share: the device, random inputs, and the comparison with the CPU.

use std::sync::Arc;

use clawrl_gpu::{AdapterChoice, Context};
use rand::Rng;
use rand::rngs::StdRng;

/// Any adapter, software ones included (CI: Mesa's lavapipe).
pub fn context() -> Arc<Context> {
    Context::open(AdapterChoice::Any).unwrap_or_else(|e| {
        panic!("{e}: install a Vulkan driver (Debian: mesa-vulkan-drivers) to run the GPU tests")
    })
}

/// `n` values in [−1, 1).
pub fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// Asserts `got ≈ want` within `tol` of the largest |want|.
pub fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * scale,
            "{what}[{i}]: GPU {g} vs CPU {w} (scale {scale})"
        );
    }
}
