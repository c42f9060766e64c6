//! The KV cache on the device.

use std::sync::Arc;

use crate::context::Context;
use crate::tensor::CudaTensor;

/// One block's keys or values on the device: positions appended in order into a buffer
/// that doubles when full, so a decode step copies one row, not the whole cache.
#[derive(Debug)]
pub struct CudaCache {
    ctx: Arc<Context>,
    data: CudaTensor,
    len: usize,
}

impl CudaCache {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        let data = ctx.zeros(0);
        Self { ctx, data, len: 0 }
    }

    /// Values held (positions × kv_dim).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn tensor(&self) -> &CudaTensor {
        &self.data
    }

    pub(crate) fn append(&mut self, x: &CudaTensor) {
        let need = self.len + x.len();
        if need > self.data.len() {
            let grown = self.ctx.zeros(need.max(2 * self.data.len()).max(1024));
            self.ctx.copy(&self.data, 0, &grown, 0, self.len);
            self.data = grown;
        }
        self.ctx.copy(x, 0, &self.data, self.len, x.len());
        self.len = need;
    }
}

impl Clone for CudaCache {
    /// A copy on the device (prompts that share a prefix each extend their own).
    fn clone(&self) -> Self {
        let data = self.ctx.zeros(self.data.len());
        self.ctx.copy(&self.data, 0, &data, 0, self.len);
        Self {
            ctx: self.ctx.clone(),
            data,
            len: self.len,
        }
    }
}
