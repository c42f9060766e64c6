//! Every kernel of an accelerator against its CPU twin on random inputs, through the one
//! [`Backend`]/[`TrainBackend`] seam: the parity suite each device backend's tests run
//! (`clawrl-gpu` on lavapipe in CI; `clawrl-cuda` where an NVIDIA GPU is at hand).
//!
//! Each function builds the backend for a rotary table with `make` and panics on the first
//! mismatch. Tolerances, relative to the largest output: 1e-4 for f32 sums (only the order of
//! additions differs), 2e-4 for products with quantized weights; top-k ids are equal.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::ops::{AttnShape, Rope, RopeStyle};
use crate::quant::{quantize_q4_1, quantize_q8_0};
use crate::{Accelerator, Activations, Backend, Cpu, Gemm, QMatrix, Storage, TrainBackend};

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
            "{what}[{i}]: device {g} vs CPU {w} (scale {scale})"
        );
    }
}

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

pub fn matmul_matches_the_cpu_in_every_format_for_decode_and_prefill<B: Accelerator>(
    make: impl Fn(&Rope) -> B,
) {
    let rope = Rope::new(16, 10_000.0, RopeStyle::Interleaved, 64);
    let (cpu, gpu) = (Cpu { rope: &rope }, make(&rope));
    let mut rng = StdRng::seed_from_u64(1);
    for (rows, cols) in [(96, 64), (200, 576)] {
        for (name, w) in matrices(&mut rng, rows, cols) {
            let gw = gpu.upload_matrix(&w);
            // `Auto` at t = 1 takes the decode path (8-bit activations for quantized
            // weights), at t = 7 the GEMM path (f32 activations); `Rows` keeps 8-bit
            // activations at t = 7 (batched decoding): the GPU follows the CPU on each.
            for (t, act) in [
                (1, Activations::Auto),
                (7, Activations::Auto),
                (7, Activations::Rows),
            ] {
                let x = random(&mut rng, t * cols);
                let mut want = cpu.zeros(t * rows);
                cpu.matmul(&w, &x, t, act, &mut want);
                let mut y = gpu.zeros(t * rows);
                gpu.matmul(&gw, &gpu.upload(&x), t, act, &mut y);
                close(
                    &gpu.download(&y),
                    &want,
                    2e-4,
                    &format!("{name} {rows}×{cols} t={t} {act:?}"),
                );
            }
        }
    }
}

pub fn lora_norm_elementwise_and_rope_match_the_cpu<B: Accelerator>(make: impl Fn(&Rope) -> B) {
    let mut rng = StdRng::seed_from_u64(2);
    for style in [RopeStyle::Interleaved, RopeStyle::Half] {
        let rope = Rope::new(16, 10_000.0, style, 64);
        let (cpu, gpu) = (Cpu { rope: &rope }, make(&rope));
        let (t, hidden, rank, out) = (5, 64, 8, 48);
        let x = random(&mut rng, t * hidden);
        let a = QMatrix::new(rank, hidden, Storage::F32(random(&mut rng, rank * hidden)))
            .expect("shape");
        let b = QMatrix::new(out, rank, Storage::F32(random(&mut rng, out * rank))).expect("shape");
        let y0 = random(&mut rng, t * out);
        let mut want = y0.clone();
        cpu.lora(&a, &b, 0.5, &x, t, Activations::Auto, &mut want);
        let mut y = gpu.upload(&y0);
        let gx = gpu.upload(&x);
        gpu.lora(
            &gpu.upload_matrix(&a),
            &gpu.upload_matrix(&b),
            0.5,
            &gx,
            t,
            Activations::Auto,
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

pub fn attention_over_the_cache_matches_the_cpu<B: Accelerator>(make: impl Fn(&Rope) -> B) {
    let rope = Rope::new(16, 10_000.0, RopeStyle::Interleaved, 512);
    let (cpu, gpu) = (Cpu { rope: &rope }, make(&rope));
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

pub fn products_and_their_backwards_match_the_cpu<B: Accelerator>(make: impl Fn(&Rope) -> B) {
    let rope = Rope::new(16, 10_000.0, RopeStyle::Interleaved, 64);
    let (cpu, gpu) = (Cpu { rope: &rope }, make(&rope));
    let mut rng = StdRng::seed_from_u64(7);
    let (rows, cols) = (96, 160);
    let v = random(&mut rng, rows * cols);
    for (name, storage) in [
        ("f32", Storage::F32(v.clone())),
        ("q4_1", Storage::Q4_1(quantize_q4_1(&v))),
        ("q8_0", Storage::Q8_0(quantize_q8_0(&v))),
    ] {
        let w = QMatrix::new(rows, cols, storage).expect("shape");
        let gw = gpu.upload_matrix(&w);
        // t = 2: below the decode threshold, where `Exact` still keeps f32 activations.
        for t in [2, 9] {
            let x = random(&mut rng, t * cols);
            let mut want = vec![0.0; t * rows];
            cpu.matmul(&w, &x, t, Activations::Exact, &mut want);
            let mut y = gpu.zeros(t * rows);
            gpu.matmul(&gw, &gpu.upload(&x), t, Activations::Exact, &mut y);
            close(
                &gpu.download(&y),
                &want,
                2e-4,
                &format!("{name} exact matmul t={t}"),
            );

            let dy = random(&mut rng, t * rows);
            let base = random(&mut rng, t * cols);
            for accumulate in [false, true] {
                let mut want = base.clone();
                cpu.matmul_backward(&w, &dy, t, accumulate, &mut want);
                let mut dx = gpu.upload(&base);
                gpu.matmul_backward(&gw, &gpu.upload(&dy), t, accumulate, &mut dx);
                close(
                    &gpu.download(&dx),
                    &want,
                    2e-4,
                    &format!("{name} matmul_backward t={t} accumulate={accumulate}"),
                );
            }
        }
    }
    // Every transpose combination, sizes off the 16-tile grid.
    let (m, n, k) = (19, 37, 45);
    let c0 = random(&mut rng, m * n);
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
        let mut shape = Gemm::new(m, n, k).add_scaled(0.5);
        shape.trans_a = ta;
        shape.trans_b = tb;
        let mut want = c0.clone();
        cpu.gemm(&a, &b, shape, &mut want);
        let mut c = gpu.upload(&c0);
        gpu.gemm(&gpu.upload(&a), &gpu.upload(&b), shape, &mut c);
        close(
            &gpu.download(&c),
            &want,
            1e-4,
            &format!("gemm ta={ta} tb={tb}"),
        );
    }
}

pub fn element_wise_backwards_match_the_cpu<B: Accelerator>(make: impl Fn(&Rope) -> B) {
    let rope = Rope::new(32, 10_000.0, RopeStyle::Half, 64);
    let (cpu, gpu) = (Cpu { rope: &rope }, make(&rope));
    let mut rng = StdRng::seed_from_u64(8);
    let (rows, n) = (5, 96);
    let (x, w, dy) = (
        random(&mut rng, rows * n),
        random(&mut rng, n),
        random(&mut rng, rows * n),
    );
    let mut want = vec![0.0; rows * n];
    cpu.rms_norm_backward(&x, &w, 1e-5, &dy, &mut want);
    let mut dx = gpu.zeros(rows * n);
    gpu.rms_norm_backward(
        &gpu.upload(&x),
        &gpu.upload(&w),
        1e-5,
        &gpu.upload(&dy),
        &mut dx,
    );
    close(&gpu.download(&dx), &want, 1e-4, "RMSNorm backward");

    let (g, u) = (random(&mut rng, rows * n), random(&mut rng, rows * n));
    let (mut dg, mut du) = (vec![0.0; rows * n], vec![0.0; rows * n]);
    cpu.silu_mul_backward(&g, &u, &dy, &mut dg, &mut du);
    let (mut gdg, mut gdu) = (gpu.zeros(rows * n), gpu.zeros(rows * n));
    gpu.silu_mul_backward(
        &gpu.upload(&g),
        &gpu.upload(&u),
        &gpu.upload(&dy),
        &mut gdg,
        &mut gdu,
    );
    close(&gpu.download(&gdg), &dg, 1e-5, "SwiGLU backward dg");
    close(&gpu.download(&gdu), &du, 1e-5, "SwiGLU backward du");

    let mut want = g.clone();
    cpu.mul(&mut want, &u);
    let mut got = gpu.upload(&g);
    gpu.mul(&mut got, &gpu.upload(&u));
    close(&gpu.download(&got), &want, 1e-6, "mul");

    // 3 heads of 32 per row: the inverse rotation, then `place` at an offset.
    let mut want = x.clone();
    cpu.rope_backward(&mut want, 3, 32);
    let mut got = gpu.upload(&x);
    gpu.rope_backward(&mut got, 3, 32);
    close(&gpu.download(&got), &want, 1e-5, "RoPE backward");
    let placed = gpu.place(&got, rows * n + 10, 7);
    close(
        &gpu.download(&placed),
        &cpu.place(&want, rows * n + 10, 7),
        1e-5,
        "place",
    );
}

pub fn training_attention_and_its_backward_match_the_cpu<B: Accelerator>(
    make: impl Fn(&Rope) -> B,
) {
    let rope = Rope::new(16, 10_000.0, RopeStyle::Interleaved, 256);
    let (cpu, gpu) = (Cpu { rope: &rope }, make(&rope));
    let mut rng = StdRng::seed_from_u64(9);
    for (heads, kv_heads, head_dim, t) in [(6, 2, 64, 70), (4, 4, 128, 9), (3, 1, 16, 1)] {
        let shape = AttnShape {
            heads,
            kv_heads,
            head_dim,
        };
        let (q, k, v) = (
            random(&mut rng, t * heads * head_dim),
            random(&mut rng, t * kv_heads * head_dim),
            random(&mut rng, t * kv_heads * head_dim),
        );
        let what = format!("{heads}/{kv_heads}×{head_dim}, t={t}");
        let (mut out, mut p) = (vec![0.0; q.len()], vec![0.0; heads * t * t]);
        cpu.attention_probs(&q, &k, &v, shape, &mut out, &mut p);
        let (gq, gk, gv) = (gpu.upload(&q), gpu.upload(&k), gpu.upload(&v));
        let (mut gout, mut gp) = (gpu.zeros(q.len()), gpu.zeros(heads * t * t));
        gpu.attention_probs(&gq, &gk, &gv, shape, &mut gout, &mut gp);
        close(
            &gpu.download(&gout),
            &out,
            1e-4,
            &format!("attention {what}"),
        );
        close(
            &gpu.download(&gp),
            &p,
            1e-4,
            &format!("probabilities {what}"),
        );

        let dout = random(&mut rng, q.len());
        let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
        cpu.attention_backward(&q, &k, &v, &p, &dout, shape, &mut dq, &mut dk, &mut dv);
        let (mut gdq, mut gdk, mut gdv) =
            (gpu.zeros(q.len()), gpu.zeros(k.len()), gpu.zeros(v.len()));
        gpu.attention_backward(
            &gq,
            &gk,
            &gv,
            &gp,
            &gpu.upload(&dout),
            shape,
            &mut gdq,
            &mut gdk,
            &mut gdv,
        );
        close(&gpu.download(&gdq), &dq, 1e-4, &format!("dQ {what}"));
        close(&gpu.download(&gdk), &dk, 1e-4, &format!("dK {what}"));
        close(&gpu.download(&gdv), &dv, 1e-4, &format!("dV {what}"));
    }
}

pub fn the_head_matches_the_cpu<B: Accelerator>(make: impl Fn(&Rope) -> B) {
    let rope = Rope::new(16, 10_000.0, RopeStyle::Interleaved, 64);
    let (cpu, gpu) = (Cpu { rope: &rope }, make(&rope));
    let mut rng = StdRng::seed_from_u64(10);
    let (rows, width, k) = (4, 1000, 5);
    let mut z: Vec<f32> = random(&mut rng, rows * width)
        .iter()
        .map(|v| 8.0 * v)
        .collect();
    // A tie: the lower column comes first.
    z[17] = 20.0;
    z[3] = 20.0;
    let mut gz = gpu.upload(&z);
    let (mut entropy, mut gentropy) = (vec![0.0; rows], gpu.zeros(rows));
    cpu.log_softmax(&mut z, width, &mut entropy);
    gpu.log_softmax(&mut gz, width, &mut gentropy);
    close(&gpu.download(&gz), &z, 1e-5, "log-softmax");
    close(&gpu.download(&gentropy), &entropy, 1e-4, "entropy");

    let top = cpu.top_k(&z, width, k);
    assert_eq!(gpu.top_k(&gz, width, k), top, "top-k ids");
    assert_eq!(&top[..2], &[3, 17], "ties go to the lower column");

    let idx: Vec<u32> = vec![3, 999, 1500, 1500, 3999, 2];
    close(
        &gpu.download(&gpu.gather(&gz, &idx)),
        &cpu.gather(&z, &idx),
        1e-6,
        "gather",
    );
    let g = random(&mut rng, idx.len());
    let totals: Vec<f32> = (0..rows)
        .map(|r| {
            idx.iter()
                .zip(&g)
                .filter(|(i, _)| **i as usize / width == r)
                .map(|(_, v)| v)
                .sum()
        })
        .collect();
    let mut want = vec![0.0; rows * width];
    cpu.log_softmax_backward(&z, width, &totals, &idx, &g, &mut want);
    let mut dz = gpu.zeros(rows * width);
    gpu.log_softmax_backward(&gz, width, &totals, &idx, &g, &mut dz);
    close(&gpu.download(&dz), &want, 1e-5, "log-softmax backward");
}
