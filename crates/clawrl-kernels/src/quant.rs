//! Block-quantized formats, bit-compatible with ggml's, and their (de)quantization.
//!
//! Every block covers [`QK`] consecutive values of one matrix row.

use half::f16;

/// Values per quantization block (ggml's QK4_1 = QK8_0 = 32).
pub const QK: usize = 32;

/// ggml `block_q4_1` with its scale and minimum widened to f32 (converting them once at
/// load keeps half-float conversions out of the dot-product loop): `x = d·q + m`.
///
/// `qs[j]` holds value `j` in its low nibble and value `j + 16` in its high nibble.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f32,
    /// Minimum.
    pub m: f32,
    /// Packed nibbles.
    pub qs: [u8; QK / 2],
}

/// ggml `block_q8_0` with its scale widened to f32: `x = d·q` with signed 8-bit `q`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f32,
    /// Quants.
    pub qs: [i8; QK],
}

/// Activation block for dot products with [`BlockQ4_1`] (ggml's `block_q8_1`, kept in f32):
/// `x = d·q`, and `s = d·Σq` so the Q4_1 minimum folds in without touching the quants.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f32,
    /// `d · Σ qs`.
    pub s: f32,
    /// Quants.
    pub qs: [i8; QK],
}

/// Bytes of one [`BlockQ4_1`] in a GGUF file.
pub const Q4_1_BYTES: usize = 20;
/// Bytes of one [`BlockQ8_0`] in a GGUF file.
pub const Q8_0_BYTES: usize = 34;

/// Parses ggml Q4_1 blocks from little-endian bytes (a multiple of [`Q4_1_BYTES`]).
pub fn q4_1_from_bytes(bytes: &[u8]) -> Vec<BlockQ4_1> {
    bytes
        .chunks_exact(Q4_1_BYTES)
        .map(|b| {
            let mut qs = [0u8; QK / 2];
            qs.copy_from_slice(&b[4..20]);
            BlockQ4_1 {
                d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                m: f16::from_le_bytes([b[2], b[3]]).to_f32(),
                qs,
            }
        })
        .collect()
}

/// Parses ggml Q8_0 blocks from little-endian bytes (a multiple of [`Q8_0_BYTES`]).
pub fn q8_0_from_bytes(bytes: &[u8]) -> Vec<BlockQ8_0> {
    bytes
        .chunks_exact(Q8_0_BYTES)
        .map(|b| {
            let mut qs = [0i8; QK];
            for (q, &byte) in qs.iter_mut().zip(&b[2..34]) {
                *q = byte as i8;
            }
            BlockQ8_0 {
                d: f16::from_le_bytes([b[0], b[1]]).to_f32(),
                qs,
            }
        })
        .collect()
}

/// Quantizes `x` (length a multiple of [`QK`]) to Q8_0, as ggml's reference does.
pub fn quantize_q8_0(x: &[f32]) -> Vec<BlockQ8_0> {
    x.chunks_exact(QK)
        .map(|c| {
            let amax = c.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0i8; QK];
            for (q, v) in qs.iter_mut().zip(c) {
                *q = (v * id).round() as i8;
            }
            BlockQ8_0 {
                d: f16::from_f32(d).to_f32(),
                qs,
            }
        })
        .collect()
}

/// Quantizes `x` (length a multiple of [`QK`]) to Q4_1, as ggml's reference does.
pub fn quantize_q4_1(x: &[f32]) -> Vec<BlockQ4_1> {
    x.chunks_exact(QK)
        .map(|c| {
            let min = c.iter().copied().fold(f32::INFINITY, f32::min);
            let max = c.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut qs = [0u8; QK / 2];
            for j in 0..QK / 2 {
                let lo = (((c[j] - min) * id + 0.5) as u8).min(15);
                let hi = (((c[j + QK / 2] - min) * id + 0.5) as u8).min(15);
                qs[j] = lo | (hi << 4);
            }
            BlockQ4_1 {
                d: f16::from_f32(d).to_f32(),
                m: f16::from_f32(min).to_f32(),
                qs,
            }
        })
        .collect()
}

/// Quantizes activations into `out` (one block per [`QK`] values) for Q4_1 dot products.
pub fn quantize_q8_1_into(x: &[f32], out: &mut [BlockQ8_1]) {
    for (c, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = c.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in b.qs.iter_mut().zip(c) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        b.d = d;
        b.s = d * sum as f32;
    }
}

/// Quantizes activations into `out` for Q8_0 dot products.
pub fn quantize_q8_0_into(x: &[f32], out: &mut [BlockQ8_0]) {
    for (c, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        let amax = c.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, v) in b.qs.iter_mut().zip(c) {
            *q = (v * id).round() as i8;
        }
        b.d = d;
    }
}

/// Dequantizes Q4_1 blocks into `out` (`out.len() == blocks.len() * QK`).
pub fn dequantize_q4_1(blocks: &[BlockQ4_1], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let (d, m) = (b.d, b.m);
        for j in 0..QK / 2 {
            o[j] = (b.qs[j] & 0x0F) as f32 * d + m;
            o[j + QK / 2] = (b.qs[j] >> 4) as f32 * d + m;
        }
    }
}

/// Dequantizes Q8_0 blocks into `out` (`out.len() == blocks.len() * QK`).
pub fn dequantize_q8_0(blocks: &[BlockQ8_0], out: &mut [f32]) {
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(QK)) {
        let d = b.d;
        for (v, &q) in o.iter_mut().zip(&b.qs) {
            *v = q as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_round_trip_is_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5)
            .collect();
        let q = quantize_q4_1(&x);
        let mut y = vec![0.0; 64];
        dequantize_q4_1(&q, &mut y);
        for (block, (xs, ys)) in q.iter().zip(x.chunks(QK).zip(y.chunks(QK))) {
            let step = block.d;
            for (a, b) in xs.iter().zip(ys) {
                assert!((a - b).abs() <= step * 0.5 + 1e-2, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn q8_0_bytes_parse_like_ggml() {
        let mut bytes = vec![0u8; Q8_0_BYTES];
        bytes[0..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        bytes[2] = 2;
        bytes[3] = 0xFE; // -2
        let b = q8_0_from_bytes(&bytes);
        let mut y = vec![0.0; QK];
        dequantize_q8_0(&b, &mut y);
        assert_eq!(&y[..3], &[1.0, -1.0, 0.0]);
    }
}
