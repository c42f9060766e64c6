//! Device buffers: activations, and weight matrices in their stored format.

use clawrl_kernels::Format;

/// `len` f32 values (or, for packed quants, `len` u32 words) in a device buffer.
#[derive(Clone, Debug)]
pub struct GpuTensor {
    buf: wgpu::Buffer,
    len: usize,
}

impl GpuTensor {
    pub(crate) fn new(buf: wgpu::Buffer, len: usize) -> Self {
        Self { buf, len }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buf
    }

    /// Bytes the device buffer holds (never 0: wgpu cannot bind an empty buffer).
    pub fn size_in_bytes(&self) -> u64 {
        self.buf.size()
    }
}

/// A `rows × cols` weight matrix on the device, in the format it was stored in on the host,
/// repacked so every block's quants start on a 4-byte boundary.
#[derive(Clone, Debug)]
pub struct GpuMatrix {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) format: Format,
    /// f32 values, or the packed quants (u32 words).
    pub(crate) data: GpuTensor,
    /// Per-block scales (quantized formats).
    pub(crate) d: Option<GpuTensor>,
    /// Per-block minimums (Q4_1).
    pub(crate) m: Option<GpuTensor>,
}

impl GpuMatrix {
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

    /// Bytes held on the device.
    pub fn size_in_bytes(&self) -> u64 {
        [Some(&self.data), self.d.as_ref(), self.m.as_ref()]
            .into_iter()
            .flatten()
            .map(GpuTensor::size_in_bytes)
            .sum()
    }
}
