//! Device buffers: activations, and weight matrices in their stored format.

use std::sync::{Arc, Mutex, PoisonError};

use clawrl_kernels::Format;
use cudarc::driver::CudaSlice;

/// A device allocation, freed with its context made current on the dropping thread (a
/// thread that never ran CUDA work may drop the last tensor: without the context, the free
/// would fail and its error surface in an unrelated later call).
#[derive(Debug)]
struct Buffer(CudaSlice<u32>);

impl Drop for Buffer {
    fn drop(&mut self) {
        // The slice's own drop, after this, frees it on its stream.
        let _ = self.0.context().bind_to_thread();
    }
}

/// `len` f32 values (or u32 words: quants, indices) in device memory. Clones share the
/// buffer, as the engine's tensors on wgpu do; the kernels write through its address.
#[derive(Clone, Debug)]
pub struct CudaTensor {
    buf: Arc<Buffer>,
    /// The buffer's device address (`CUdeviceptr`), read once.
    ptr: u64,
    len: usize,
}

impl CudaTensor {
    pub(crate) fn new(buf: CudaSlice<u32>, ptr: u64, len: usize) -> Self {
        Self {
            buf: Arc::new(Buffer(buf)),
            ptr,
            len,
        }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The device address of value `at` (4 bytes a value).
    pub(crate) fn at(&self, at: usize) -> u64 {
        self.ptr + 4 * at as u64
    }

    /// The device address of its first value.
    pub(crate) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Bytes the device buffer holds.
    pub fn size_in_bytes(&self) -> u64 {
        4 * self.buf.0.len() as u64
    }
}

/// A `rows × cols` weight matrix on the device in the format it was stored in on the host
/// (repacked so every block's quants start on a 4-byte boundary), and, for cuBLAS, its f32
/// values, made on first use (prefill and training) and kept.
#[derive(Clone, Debug)]
pub struct CudaMatrix {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) format: Format,
    /// f32 values, or the packed quants.
    pub(crate) data: CudaTensor,
    /// Per-block scales (quantized formats).
    pub(crate) d: Option<CudaTensor>,
    /// Per-block minimums (Q4_1).
    pub(crate) m: Option<CudaTensor>,
    /// The f32 values of a quantized matrix, once dequantized.
    pub(crate) dense: Arc<Mutex<Option<CudaTensor>>>,
}

impl CudaMatrix {
    /// Output size.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input size.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The stored format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes held on the device (with the f32 copy, once made).
    pub fn size_in_bytes(&self) -> u64 {
        let dense = self
            .dense
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map_or(0, CudaTensor::size_in_bytes);
        [Some(&self.data), self.d.as_ref(), self.m.as_ref()]
            .into_iter()
            .flatten()
            .map(CudaTensor::size_in_bytes)
            .sum::<u64>()
            + dense
    }
}
