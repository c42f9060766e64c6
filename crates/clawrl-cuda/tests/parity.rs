//! Every CUDA kernel against its CPU twin ([`clawrl_kernels::parity`]). They need an NVIDIA
//! GPU, so they are ignored by default; on a machine with one (the test binary can be built
//! elsewhere and carried there):
//!
//!     cargo test -p clawrl-cuda --test parity -- --ignored

use std::sync::Arc;

use clawrl_cuda::{Context, Cuda};
use clawrl_kernels::ops::Rope;
use clawrl_kernels::parity;

fn context() -> Arc<Context> {
    Context::open(0).unwrap_or_else(|e| panic!("{e}: these tests need an NVIDIA GPU"))
}

/// The backend for a rotary table, on one device.
fn backend() -> impl Fn(&Rope) -> Cuda {
    let ctx = context();
    move |rope| Cuda::new(ctx.clone(), rope)
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn matmul_matches_the_cpu_in_every_format_for_decode_and_prefill() {
    parity::matmul_matches_the_cpu_in_every_format_for_decode_and_prefill(backend());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn lora_norm_elementwise_and_rope_match_the_cpu() {
    parity::lora_norm_elementwise_and_rope_match_the_cpu(backend());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn attention_over_the_cache_matches_the_cpu() {
    parity::attention_over_the_cache_matches_the_cpu(backend());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn products_and_their_backwards_match_the_cpu() {
    parity::products_and_their_backwards_match_the_cpu(backend());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn element_wise_backwards_match_the_cpu() {
    parity::element_wise_backwards_match_the_cpu(backend());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn training_attention_and_its_backward_match_the_cpu() {
    parity::training_attention_and_its_backward_match_the_cpu(backend());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn the_head_matches_the_cpu() {
    parity::the_head_matches_the_cpu(backend());
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_failed_allocation_is_an_error_and_the_device_still_works() {
    let ctx = context();
    // 2⁶¹ bytes: beyond any GPU's memory.
    let err = ctx
        .capture(|| ctx.zeros(1 << 59))
        .expect_err("an impossible buffer fails");
    assert!(err.to_string().starts_with("CUDA failed"), "{err}");
    let x = [1.0f32, -2.0, 3.5];
    assert_eq!(ctx.download(&ctx.upload(&x)), x);
}
