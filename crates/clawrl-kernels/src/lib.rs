//! CPU compute kernels of the ClawRL engine.
//!
//! Small and model-agnostic, in the spirit of candle-core: block-quantized formats
//! bit-compatible with ggml ([`quant`]), SIMD dot products chosen at run time ([`dot`]),
//! weight matrices that multiply in their stored format ([`matmul`]), and the element-wise,
//! rotary and attention kernels of a Llama-family transformer ([`ops`]), and the seam a
//! forward pass calls them through on any device ([`backend`]).

pub mod backend;
pub mod checks;
pub mod dot;
pub mod matmul;
pub mod ops;
pub mod packed;
#[cfg(feature = "parity")]
pub mod parity;
pub mod quant;

pub use backend::{Accelerator, Backend, Cpu, Gemm, TrainBackend};
pub use matmul::{Activations, GEMM_MIN_TOKENS, QMatrix, ShapeError, Storage};
pub use packed::{Format, Packed};
