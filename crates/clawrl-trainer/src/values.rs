//! Reading candle tensors as plain f32 slices: how the custom ops' forwards and backwards reach
//! their inputs without copies.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// A custom op's input as a contiguous f32 slice; `op` names the op in the error.
pub(crate) fn f32_input<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{op} takes f32")
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        candle_core::bail!("{op} takes contiguous inputs")
    };
    Ok(&data[start..end])
}

/// Runs `f` on the tensors' values, each as one contiguous f32 slice (no copy when a tensor
/// already is contiguous): how a backward reads its inputs.
pub(crate) fn with_values<R, const N: usize>(
    tensors: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> Result<R>,
) -> Result<R> {
    let tensors = tensors.map(Tensor::contiguous);
    let mut owned = Vec::with_capacity(N);
    for t in tensors {
        owned.push(t?);
    }
    let guards: Vec<_> = owned.iter().map(Tensor::storage_and_layout).collect();
    let mut slices = Vec::with_capacity(N);
    for (storage, layout) in &guards {
        let Storage::Cpu(s) = &**storage else {
            candle_core::bail!("the trainer runs on the CPU")
        };
        slices.push(f32_input("a fused op", s, layout)?);
    }
    let slices: [&[f32]; N] = slices
        .try_into()
        .map_err(|_| candle_core::Error::Msg("with_values: a tensor went missing".into()))?;
    f(slices)
}
