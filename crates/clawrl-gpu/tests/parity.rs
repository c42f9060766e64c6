//! Every wgpu kernel against its CPU twin ([`clawrl_kernels::parity`]), on whatever adapter
//! wgpu finds, software ones included (CI: Mesa's lavapipe).

use std::sync::Arc;

use clawrl_gpu::{AdapterChoice, Context, Gpu};
use clawrl_kernels::ops::Rope;
use clawrl_kernels::parity;

fn context() -> Arc<Context> {
    Context::open(AdapterChoice::Any).unwrap_or_else(|e| {
        panic!("{e}: install a Vulkan driver (Debian: mesa-vulkan-drivers) to run the GPU tests")
    })
}

/// The backend for a rotary table, on one device.
fn backend() -> impl Fn(&Rope) -> Gpu {
    let ctx = context();
    move |rope| Gpu::new(ctx.clone(), rope)
}

#[test]
fn matmul_matches_the_cpu_in_every_format_for_decode_and_prefill() {
    parity::matmul_matches_the_cpu_in_every_format_for_decode_and_prefill(backend());
}

#[test]
fn lora_norm_elementwise_and_rope_match_the_cpu() {
    parity::lora_norm_elementwise_and_rope_match_the_cpu(backend());
}

#[test]
fn attention_over_the_cache_matches_the_cpu() {
    parity::attention_over_the_cache_matches_the_cpu(backend());
}

#[test]
fn products_and_their_backwards_match_the_cpu() {
    parity::products_and_their_backwards_match_the_cpu(backend());
}

#[test]
fn element_wise_backwards_match_the_cpu() {
    parity::element_wise_backwards_match_the_cpu(backend());
}

#[test]
fn training_attention_and_its_backward_match_the_cpu() {
    parity::training_attention_and_its_backward_match_the_cpu(backend());
}

#[test]
fn the_head_matches_the_cpu() {
    parity::the_head_matches_the_cpu(backend());
}

#[test]
fn a_request_beyond_the_device_is_an_error_and_the_device_still_works() {
    let ctx = context();
    // 2⁶¹ bytes: beyond every adapter's largest buffer.
    let err = ctx
        .capture(|| ctx.zeros(1 << 59))
        .expect_err("an impossible buffer fails");
    assert!(err.to_string().starts_with("the GPU failed"), "{err}");
    assert!(ctx.max_tensor_len() <= u32::MAX as usize);
    let x = [1.0f32, -2.0, 3.5];
    assert_eq!(ctx.download(&ctx.upload(&x)), x);
}
