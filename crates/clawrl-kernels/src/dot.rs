//! Row-by-vector dot products: each function fills `out[r] = W[r] · a` for a run of rows.
//!
//! The x86-64 build carries AVX2+FMA versions chosen at run time (`is_x86_feature_detected!`),
//! so one binary is fast where the CPU has them and still correct everywhere else.

use crate::quant::{BlockQ4_1, BlockQ8_0, BlockQ8_1, QK};

/// Whether the AVX2+FMA kernels are used on this CPU.
pub fn simd_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[r] = Σ_b dot(w[r·nb + b], a[b])` for Q4_1 weights and Q8_1 activations.
pub fn rows_q4_1(w: &[BlockQ4_1], nb: usize, a: &[BlockQ8_1], out: &mut [f32]) {
    debug_assert_eq!(w.len(), nb * out.len());
    debug_assert_eq!(a.len(), nb);
    #[cfg(target_arch = "x86_64")]
    if simd_enabled() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { avx2::rows_q4_1(w, nb, a, out) };
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
        *o = row.iter().zip(a).map(|(w, a)| scalar_q4_1(w, a)).sum();
    }
}

/// `out[r] = Σ_b dot(w[r·nb + b], a[b])` for Q8_0 weights and Q8_0 activations.
pub fn rows_q8_0(w: &[BlockQ8_0], nb: usize, a: &[BlockQ8_0], out: &mut [f32]) {
    debug_assert_eq!(w.len(), nb * out.len());
    debug_assert_eq!(a.len(), nb);
    #[cfg(target_arch = "x86_64")]
    if simd_enabled() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { avx2::rows_q8_0(w, nb, a, out) };
        return;
    }
    for (o, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
        *o = row.iter().zip(a).map(|(w, a)| scalar_q8_0(w, a)).sum();
    }
}

/// `out[r] = w[r·k .. (r+1)·k] · a` for f32 weights.
pub fn rows_f32(w: &[f32], k: usize, a: &[f32], out: &mut [f32]) {
    debug_assert_eq!(w.len(), k * out.len());
    for (o, row) in out.iter_mut().zip(w.chunks_exact(k)) {
        *o = dot_f32(row, a);
    }
}

/// `a · b` in f32.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if simd_enabled() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { avx2::dot_f32(a, b) };
    }
    // Four partial sums let the compiler vectorise without reassociating.
    let mut acc = [0f32; 4];
    let (ca, ra) = a.split_at(a.len() / 4 * 4);
    let (cb, rb) = b.split_at(ca.len());
    for (x, y) in ca.chunks_exact(4).zip(cb.chunks_exact(4)) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + ra.iter().zip(rb).map(|(x, y)| x * y).sum::<f32>()
}

fn scalar_q4_1(w: &BlockQ4_1, a: &BlockQ8_1) -> f32 {
    let mut sumi = 0i32;
    for j in 0..QK / 2 {
        sumi += (w.qs[j] & 0x0F) as i32 * a.qs[j] as i32;
        sumi += (w.qs[j] >> 4) as i32 * a.qs[j + QK / 2] as i32;
    }
    w.d * a.d * sumi as f32 + w.m * a.s
}

fn scalar_q8_0(w: &BlockQ8_0, a: &BlockQ8_0) -> f32 {
    let sumi: i32 =
        w.qs.iter()
            .zip(&a.qs)
            .map(|(&x, &y)| x as i32 * y as i32)
            .sum();
    w.d * a.d * sumi as f32
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::*;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// One Q4_1 × Q8_1 block: the integer products as 8 f32 lanes (still to be scaled).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn q4_1_block(w: &BlockQ4_1, a: &BlockQ8_1) -> __m256 {
        // SAFETY: `qs` are 16 and 32 bytes; unaligned loads are allowed.
        let (packed, q8) = unsafe {
            (
                _mm_loadu_si128(w.qs.as_ptr().cast()),
                _mm256_loadu_si256(a.qs.as_ptr().cast()),
            )
        };
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(packed, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
        let q4 = _mm256_set_m128i(hi, lo);
        // u8 × i8 pairs summed to i16 cannot saturate: 2·15·127 < 2^15.
        let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, q8), _mm256_set1_epi16(1));
        _mm256_cvtepi32_ps(p)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn rows_q4_1(w: &[BlockQ4_1], nb: usize, a: &[BlockQ8_1], out: &mut [f32]) {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
            // Two accumulators halve the FMA dependency chain.
            let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut summs = 0f32;
            let mut pairs = row.chunks_exact(2).zip(a.chunks_exact(2));
            for (wb, ab) in pairs.by_ref() {
                acc0 = _mm256_fmadd_ps(
                    _mm256_set1_ps(wb[0].d * ab[0].d),
                    q4_1_block(&wb[0], &ab[0]),
                    acc0,
                );
                acc1 = _mm256_fmadd_ps(
                    _mm256_set1_ps(wb[1].d * ab[1].d),
                    q4_1_block(&wb[1], &ab[1]),
                    acc1,
                );
                summs += wb[0].m * ab[0].s + wb[1].m * ab[1].s;
            }
            if nb % 2 == 1 {
                let (wb, ab) = (&row[nb - 1], &a[nb - 1]);
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), q4_1_block(wb, ab), acc0);
                summs += wb.m * ab.s;
            }
            *o = hsum(_mm256_add_ps(acc0, acc1)) + summs;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn rows_q8_0(w: &[BlockQ8_0], nb: usize, a: &[BlockQ8_0], out: &mut [f32]) {
        let ones = _mm256_set1_epi16(1);
        for (o, row) in out.iter_mut().zip(w.chunks_exact(nb)) {
            let mut acc = _mm256_setzero_ps();
            for (wb, ab) in row.iter().zip(a) {
                // SAFETY: `qs` are 32 bytes; unaligned loads are allowed.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_si256(wb.qs.as_ptr().cast()),
                        _mm256_loadu_si256(ab.qs.as_ptr().cast()),
                    )
                };
                // maddubs wants one unsigned operand: move x's sign onto y.
                let ax = _mm256_sign_epi8(x, x);
                let sy = _mm256_sign_epi8(y, x);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), ones);
                let scale = _mm256_set1_ps(wb.d * ab.d);
                acc = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(p), acc);
            }
            *o = hsum(acc);
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (l, acc) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8l + 8 <= n, within both slices.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_ps(a.as_ptr().add(i + 8 * l)),
                        _mm256_loadu_ps(b.as_ptr().add(i + 8 * l)),
                    )
                };
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        let mut s = hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ));
        while i < n {
            s += a[i] * b[i];
            i += 1;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-2.0..2.0)).collect()
    }

    #[test]
    fn simd_and_scalar_q4_1_agree() {
        let (rows, k) = (5, 96);
        let w = quantize_q4_1(&random(rows * k, 1));
        let mut a = vec![BlockQ8_1::default(); k / QK];
        quantize_q8_1_into(&random(k, 2), &mut a);
        let mut out = vec![0.0; rows];
        rows_q4_1(&w, k / QK, &a, &mut out);
        for (r, o) in out.iter().enumerate() {
            let expect: f32 = w[r * 3..r * 3 + 3]
                .iter()
                .zip(&a)
                .map(|(w, a)| scalar_q4_1(w, a))
                .sum();
            assert!(
                (o - expect).abs() < 1e-3 * expect.abs().max(1.0),
                "{o} vs {expect}"
            );
        }
    }

    #[test]
    fn simd_and_scalar_q8_0_agree() {
        let (rows, k) = (4, 64);
        let w = quantize_q8_0(&random(rows * k, 3));
        let a = quantize_q8_0(&random(k, 4));
        let mut out = vec![0.0; rows];
        rows_q8_0(&w, k / QK, &a, &mut out);
        for (r, o) in out.iter().enumerate() {
            let expect: f32 = w[r * 2..r * 2 + 2]
                .iter()
                .zip(&a)
                .map(|(w, a)| scalar_q8_0(w, a))
                .sum();
            assert!(
                (o - expect).abs() < 1e-3 * expect.abs().max(1.0),
                "{o} vs {expect}"
            );
        }
    }

    #[test]
    fn quantized_dot_is_close_to_the_exact_one() {
        let k = 256;
        let (x, y) = (random(k, 5), random(k, 6));
        let exact: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        let w = quantize_q4_1(&x);
        let mut dq = vec![0.0; k];
        dequantize_q4_1(&w, &mut dq);
        let on_grid: f32 = dq.iter().zip(&y).map(|(a, b)| a * b).sum();
        let mut a = vec![BlockQ8_1::default(); k / QK];
        quantize_q8_1_into(&y, &mut a);
        let mut out = [0.0];
        rows_q4_1(&w, k / QK, &a, &mut out);
        assert!((out[0] - on_grid).abs() < 0.2, "{} vs {on_grid}", out[0]);
        assert!((out[0] - exact).abs() < 2.0, "{} vs {exact}", out[0]);
        assert!((dot_f32(&x, &y) - exact).abs() < 1e-3);
    }
}
