//! Exporting a trained assistant: the base GGUF with an adapter merged into it,
//! `W' = W + (α/r)·B A` for every projection the adapter wraps, written as a GGUF file that
//! llama.cpp and Ollama load like any other. Reading and writing the container is candle's
//! (`gguf_file`); only the merge is ours.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tracing::info_span;

use crate::adapter::{LoraAdapter, Target};
use crate::error::{Error, Result};

/// The format of the merged projections in the exported file (the others keep theirs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergedType {
    /// 32-bit floats: the merge exactly, 4 bytes a weight. A LoRA update is often smaller
    /// than a 4-bit quantization step, so requantizing to the base's format could erase it.
    F32,
    /// 16-bit floats: half the size; each merged weight rounded to f16.
    F16,
    /// llama.cpp's Q8_0 (blocks of 32 with an f16 scale): about a quarter of F32.
    Q8_0,
}

impl MergedType {
    fn ggml(self) -> GgmlDType {
        match self {
            MergedType::F32 => GgmlDType::F32,
            MergedType::F16 => GgmlDType::F16,
            MergedType::Q8_0 => GgmlDType::Q8_0,
        }
    }
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Projections the adapter changed (written in the [`MergedType`]).
    pub merged: usize,
    /// Tensors copied unchanged from the base.
    pub copied: usize,
    /// Size of the written file, bytes.
    pub bytes: u64,
}

/// Writes `base` (a GGUF file) with `adapter` merged into it to `out`, merged projections in
/// `merged_type`; every other tensor and all metadata are copied (`general.name` gets the
/// adapter's version appended). The file appears whole or not at all: it is written beside
/// `out` and renamed. `on_tensor(done, total)` reports progress.
///
/// Errors: [`Error::BadModel`] when `base` is not a GGUF file or a wrapped tensor is missing
/// or of another shape than the adapter's; [`Error::InvalidArgument`] when the adapter spans
/// another number of blocks or Q8_0 does not fit a row; [`Error::Io`] for the files.
pub fn merge_to_gguf(
    base: &Path,
    adapter: &LoraAdapter,
    out: &Path,
    merged_type: MergedType,
    mut on_tensor: impl FnMut(usize, usize),
) -> Result<ExportSummary> {
    let _span = info_span!("export_gguf", base = %base.display(), out = %out.display()).entered();
    let mut reader = BufReader::new(File::open(base).map_err(|e| Error::io(base, e))?);
    let content = Content::read(&mut reader)
        .map_err(|e| Error::bad_model(base, format!("not a GGUF file ({e})")))?;
    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(a)) => a.clone(),
        _ => return Err(Error::bad_model(base, "general.architecture is missing")),
    };
    let blocks = content
        .metadata
        .get(&format!("{arch}.block_count"))
        .and_then(|v| v.to_u32().ok())
        .ok_or_else(|| Error::bad_model(base, format!("{arch}.block_count is missing")))?;
    if adapter.layers() != blocks as usize {
        return Err(Error::InvalidArgument(format!(
            "the adapter spans {} blocks, {} has {blocks}",
            adapter.layers(),
            base.display()
        )));
    }
    // Which (block, target) each wrapped tensor name belongs to.
    let wrapped: BTreeMap<String, (usize, Target)> = (0..adapter.layers())
        .flat_map(|l| Target::ALL.map(|t| (l, t)))
        .filter(|&(l, t)| adapter.wraps(l, t))
        .map(|(l, t)| (format!("blk.{l}.{}.weight", t.gguf_name()), (l, t)))
        .collect();
    if let Some(name) = wrapped
        .keys()
        .find(|n| !content.tensor_infos.contains_key(*n))
    {
        return Err(Error::bad_model(
            base,
            format!("the adapter wraps {name}, which the file lacks"),
        ));
    }

    // Tensors in the base's order, so that the copy reads like the original.
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort_by_key(|n| content.tensor_infos[*n].offset);
    let total = names.len();
    let mut tensors = Vec::with_capacity(total);
    let mut merged = 0;
    for (i, name) in names.iter().enumerate() {
        let q = content
            .tensor(&mut reader, name, &Device::Cpu)
            .map_err(|e| Error::bad_model(base, format!("tensor {name}: {e}")))?;
        let q = match wrapped.get(*name) {
            Some(&(l, t)) => {
                merged += 1;
                merge(&q, adapter, l, t, merged_type)
                    .map_err(|e| Error::bad_model(base, format!("merging {name}: {e}")))?
            }
            None => q,
        };
        tensors.push(((*name).clone(), q));
        on_tensor(i + 1, total);
    }

    // The writer sets its own alignment (32); the base's name says what was merged.
    let mut metadata: Vec<(String, Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.alignment")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let name = match content.metadata.get("general.name") {
        Some(Value::String(n)) => format!("{n} + ClawRL adapter v{}", adapter.version),
        _ => format!("ClawRL adapter v{}", adapter.version),
    };
    metadata.retain(|(k, _)| k != "general.name");
    metadata.push(("general.name".into(), Value::String(name)));
    metadata.sort_by(|a, b| a.0.cmp(&b.0));

    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        let meta: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        gguf_file::write(&mut w, &meta, &ts)
            .map_err(|e| Error::io(out, std::io::Error::other(format!("writing GGUF: {e}"))))?;
        std::io::Write::flush(&mut w).map_err(|e| Error::io(out, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(out, e))?;
    let file = tmp.persist(out).map_err(|e| Error::io(out, e.error))?;
    let bytes = file.metadata().map_err(|e| Error::io(out, e))?.len();
    Ok(ExportSummary {
        merged,
        copied: total - merged,
        bytes,
    })
}

/// `q + ΔW` of projection `t` in block `l`, as `ty`.
fn merge(
    q: &QTensor,
    adapter: &LoraAdapter,
    l: usize,
    t: Target,
    ty: MergedType,
) -> Result<QTensor> {
    let candle = |e: candle_core::Error| Error::InvalidArgument(e.to_string());
    let w = q.dequantize(&Device::Cpu).map_err(candle)?;
    let &[rows, cols] = w.dims() else {
        return Err(Error::InvalidArgument(format!(
            "shape {:?}, expected 2-D",
            w.dims()
        )));
    };
    let delta = adapter
        .delta(l, t)
        .ok_or_else(|| Error::InvalidArgument("the adapter has no update here".into()))?;
    if delta.len() != rows * cols {
        return Err(Error::InvalidArgument(format!(
            "the base is {rows}×{cols}, the adapter's update has {} weights",
            delta.len()
        )));
    }
    if ty == MergedType::Q8_0 && cols % GgmlDType::Q8_0.block_size() != 0 {
        return Err(Error::InvalidArgument(format!(
            "rows of {cols} weights do not split into Q8_0 blocks of 32; use F32 or F16"
        )));
    }
    let delta = Tensor::from_vec(delta, (rows, cols), &Device::Cpu).map_err(candle)?;
    let merged = (w + delta).map_err(candle)?;
    QTensor::quantize(&merged, ty.ggml()).map_err(candle)
}
