//! Weight matrices laid out for an accelerator's kernels (`clawrl-gpu`, `clawrl-cuda`).

use crate::{QMatrix, Storage};

/// How an accelerator's copy of a matrix stores its values: which of its matrix kernels read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Plain f32.
    F32,
    /// ggml Q4_1: scale, minimum and 16 bytes of nibbles per 32 values.
    Q4_1,
    /// ggml Q8_0: scale and 32 signed bytes per 32 values.
    Q8_0,
}

/// A matrix's stored values as the accelerators upload them, bit for bit: the f32 values, or
/// the quants as little-endian u32 words (each 32-value block's quants start on a word: 4
/// words of Q4_1 nibbles, 8 of Q8_0 bytes) with the per-block scales, and Q4_1's minimums, in
/// arrays of their own.
#[derive(Clone, Debug)]
pub struct Packed {
    /// The format.
    pub format: Format,
    /// f32 bits, or the quants.
    pub words: Vec<u32>,
    /// Per-block scales (quantized formats).
    pub d: Option<Vec<f32>>,
    /// Per-block minimums (Q4_1).
    pub m: Option<Vec<f32>>,
}

fn le_word(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

impl QMatrix {
    /// The values laid out for an accelerator ([`Packed`]).
    pub fn packed(&self) -> Packed {
        match self.storage() {
            Storage::F32(v) => Packed {
                format: Format::F32,
                words: v.iter().map(|x| x.to_bits()).collect(),
                d: None,
                m: None,
            },
            Storage::Q4_1(blocks) => Packed {
                format: Format::Q4_1,
                words: blocks
                    .iter()
                    .flat_map(|b| b.qs.chunks_exact(4).map(le_word))
                    .collect(),
                d: Some(blocks.iter().map(|b| b.d).collect()),
                m: Some(blocks.iter().map(|b| b.m).collect()),
            },
            Storage::Q8_0(blocks) => Packed {
                format: Format::Q8_0,
                words: blocks
                    .iter()
                    .flat_map(|b| {
                        let bytes = b.qs.map(|q| q as u8);
                        bytes.chunks_exact(4).map(le_word).collect::<Vec<_>>()
                    })
                    .collect(),
                d: Some(blocks.iter().map(|b| b.d).collect()),
                m: None,
            },
        }
    }
}
