//! Every GPU kernel against its CPU twin on random inputs, through the one [`Backend`] seam.
//!
//! Runs on whatever adapter wgpu finds, software ones included (CI: Mesa's lavapipe).
//! Tolerances: 1e-4 relative to the largest output for the f32 kernels (only the order of
//! additions differs), 2e-4 for the quantized products (long sums of exact products).

mod common;

use clawrl_gpu::Gpu;
use clawrl_kernels::ops::{AttnShape, Rope, RopeStyle};
use clawrl_kernels::quant::{quantize_q4_1, quantize_q8_0};
use clawrl_kernels::{Backend, Cpu, QMatrix, Storage};
use common::{close, context, random};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn matrices(rng: &mut StdRng, rows: usize, cols: usize) -> Vec<(&'static str, QMatrix)> {
    let v = random(rng, rows * cols);
    vec![
        (
            "f32",
            QMatrix::new(rows, cols, Storage::F32(v.clone())).expect("shape"),
        ),
        (
            "q4_1",
            QMatrix::new(rows, cols, Storage::Q4_1(quantize_q4_1(&v))).expect("shape"),
        ),
        (
            "q8_0",
            QMatrix::new(rows, cols, Storage::Q8_0(quantize_q8_0(&v))).expect("shape"),
        ),
    ]
}

#[test]
fn matmul_matches_the_cpu_in_every_format_for_decode_and_prefill() {
    let ctx = context();
    let rope = Rope::new(16, 10_000.0, RopeStyle::Interleaved, 64);
    let (cpu, gpu) = (Cpu { rope: &rope }, Gpu::new(ctx.clone(), &rope));
    let mut rng = StdRng::seed_from_u64(1);
    for (rows, cols) in [(96, 64), (200, 576)] {
        for (name, w) in matrices(&mut rng, rows, cols) {
            let gw = ctx.upload_matrix(&w);
            // t = 1 takes the decode path (8-bit activations for quantized weights), t = 7
            // the GEMM path (f32 activations): the GPU follows the CPU on both.
            for t in [1, 7] {
                let x = random(&mut rng, t * cols);
                let mut want = cpu.zeros(t * rows);
                cpu.matmul(&w, &x, t, &mut want);
                let mut y = gpu.zeros(t * rows);
                gpu.matmul(&gw, &gpu.upload(&x), t, &mut y);
                close(
                    &gpu.download(&y),
                    &want,
                    2e-4,
                    &format!("{name} {rows}×{cols} t={t}"),
                );
            }
        }
    }
}

#[test]
fn lora_norm_elementwise_and_rope_match_the_cpu() {
    let ctx = context();
    let mut rng = StdRng::seed_from_u64(2);
    for style in [RopeStyle::Interleaved, RopeStyle::Half] {
        let rope = Rope::new(16, 10_000.0, style, 64);
        let (cpu, gpu) = (Cpu { rope: &rope }, Gpu::new(ctx.clone(), &rope));
        let (t, hidden, rank, out) = (5, 64, 8, 48);
        let x = random(&mut rng, t * hidden);
        let a = QMatrix::new(rank, hidden, Storage::F32(random(&mut rng, rank * hidden)))
            .expect("shape");
        let b = QMatrix::new(out, rank, Storage::F32(random(&mut rng, out * rank))).expect("shape");
        let y0 = random(&mut rng, t * out);
        let mut want = y0.clone();
        cpu.lora(&a, &b, 0.5, &x, t, &mut want);
        let mut y = gpu.upload(&y0);
        let gx = gpu.upload(&x);
        gpu.lora(
            &ctx.upload_matrix(&a),
            &ctx.upload_matrix(&b),
            0.5,
            &gx,
            t,
            &mut y,
        );
        close(&gpu.download(&y), &want, 1e-4, "lora");

        let w = random(&mut rng, hidden);
        let mut want = vec![0.0; t * hidden];
        cpu.rms_norm(&x, &w, 1e-5, &mut want);
        let mut got = gpu.zeros(t * hidden);
        gpu.rms_norm(&gx, &gpu.upload(&w), 1e-5, &mut got);
        close(&gpu.download(&got), &want, 1e-4, "rms_norm");

        let y = random(&mut rng, t * hidden);
        for (name, op) in [("add", 0), ("add_rows", 1), ("silu_mul", 2)] {
            let mut want = x.clone();
            let mut got = gpu.upload(&x);
            match op {
                0 => {
                    cpu.add(&mut want, &y);
                    gpu.add(&mut got, &gpu.upload(&y));
                }
                1 => {
                    cpu.add_rows(&mut want, &w);
                    gpu.add_rows(&mut got, &gpu.upload(&w));
                }
                _ => {
                    cpu.silu_mul(&mut want, &y);
                    gpu.silu_mul(&mut got, &gpu.upload(&y));
                }
            }
            close(&gpu.download(&got), &want, 1e-5, name);
        }

        // 4 heads of 16 over rows at positions 9..14.
        let q = random(&mut rng, t * 64);
        let mut want = q.clone();
        cpu.rope(&mut want, 4, 16, 9);
        let mut got = gpu.upload(&q);
        gpu.rope(&mut got, 4, 16, 9);
        close(&gpu.download(&got), &want, 1e-5, &format!("rope {style:?}"));
    }
}

#[test]
fn attention_over_the_cache_matches_the_cpu() {
    let ctx = context();
    let rope = Rope::new(16, 10_000.0, RopeStyle::Interleaved, 512);
    let (cpu, gpu) = (Cpu { rope: &rope }, Gpu::new(ctx, &rope));
    let mut rng = StdRng::seed_from_u64(3);
    // Grouped-query (6 heads over 2), head_dim 64 and 128; more positions than one tile.
    for (heads, kv_heads, head_dim) in [(6, 2, 64), (4, 4, 128), (4, 2, 16)] {
        let shape = AttnShape {
            heads,
            kv_heads,
            head_dim,
        };
        let kv = kv_heads * head_dim;
        let (mut ck, mut cv) = (cpu.new_cache(), cpu.new_cache());
        let (mut gk, mut gv) = (gpu.new_cache(), gpu.new_cache());
        let mut pos0 = 0;
        // A prefill of 150 positions, then two decode steps: the cache grows on the device.
        for t in [150, 1, 1] {
            let (k, v) = (random(&mut rng, t * kv), random(&mut rng, t * kv));
            cpu.append(&mut ck, &k);
            cpu.append(&mut cv, &v);
            gpu.append(&mut gk, &gpu.upload(&k));
            gpu.append(&mut gv, &gpu.upload(&v));
            let q: Vec<f32> = random(&mut rng, t * heads * head_dim)
                .into_iter()
                .map(|x| 3.0 * x)
                .collect();
            let mut want = vec![0.0; q.len()];
            cpu.attention(&q, &ck, &cv, shape, pos0, &mut want);
            let mut got = gpu.zeros(q.len());
            gpu.attention(&gpu.upload(&q), &gk, &gv, shape, pos0, &mut got);
            close(
                &gpu.download(&got),
                &want,
                1e-4,
                &format!("attention {heads}/{kv_heads}×{head_dim} at {pos0}+{t}"),
            );
            pos0 += t;
        }
    }
}
