//! LoRA adapters on the serving model: `y = W x + (α/r)·B(A x)` on top of the quantized base,
//! so a newly trained adapter is published without reloading or copying the base.

use std::sync::atomic::{AtomicU64, Ordering};

use clawrl_kernels::{QMatrix, Storage};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// A projection of a transformer block that an adapter can wrap (PEFT's module names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// SwiGLU gate.
    Gate,
    /// SwiGLU up.
    Up,
    /// SwiGLU down.
    Down,
}

impl Target {
    /// Every target, in block order.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// PEFT's module name (`q_proj`, …).
    pub fn peft_name(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// Parses a PEFT module name.
    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.peft_name() == name)
    }

    /// llama.cpp's tensor name in a GGUF block (`attn_q`, …, `ffn_down`; the tensor is
    /// `blk.N.<name>.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Target::Q => "attn_q",
            Target::K => "attn_k",
            Target::V => "attn_v",
            Target::O => "attn_output",
            Target::Gate => "ffn_gate",
            Target::Up => "ffn_up",
            Target::Down => "ffn_down",
        }
    }

    /// PEFT's parent module (`self_attn` or `mlp`).
    pub fn peft_parent(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            Target::Gate | Target::Up | Target::Down => "mlp",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One adapted projection: A (`r × in`) and B (`out × r`), as host matrices or, on a GPU,
/// as device ones (`M`).
#[derive(Clone, Debug)]
pub struct LoraWeights<M = QMatrix> {
    pub(crate) a: M,
    pub(crate) b: M,
}

impl LoraWeights {
    /// A and B from row-major f32 values.
    pub fn new(rank: usize, input: usize, output: usize, a: Vec<f32>, b: Vec<f32>) -> Result<Self> {
        let bad =
            |e: clawrl_kernels::ShapeError| Error::InvalidArgument(format!("LoRA weights: {e}"));
        Ok(Self {
            a: QMatrix::new(rank, input, Storage::F32(a)).map_err(bad)?,
            b: QMatrix::new(output, rank, Storage::F32(b)).map_err(bad)?,
        })
    }
}

/// Source of [`LoraAdapter::id`]s.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// An immutable adapter snapshot, as the trainer publishes it; `M` is where its matrices
/// live (host [`QMatrix`], or a GPU's copy made once per snapshot).
#[derive(Clone, Debug)]
pub struct LoraAdapter<M = QMatrix> {
    /// Policy version it belongs to.
    pub version: u64,
    /// α / r.
    pub scale: f32,
    /// Identifies these exact weights (a clone keeps it, a change gets a new one): a device
    /// copy is made once per id.
    id: u64,
    blocks: Vec<[Option<LoraWeights<M>>; 7]>,
}

impl LoraAdapter {
    /// An adapter over `layers` blocks with nothing wrapped yet.
    pub fn new(version: u64, scale: f32, layers: usize) -> Self {
        Self {
            version,
            scale,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            blocks: (0..layers).map(|_| Default::default()).collect(),
        }
    }

    /// Wraps projection `target` of block `layer`.
    pub fn insert(&mut self, layer: usize, target: Target, w: LoraWeights) -> Result<()> {
        let slot = self.blocks.get_mut(layer).ok_or_else(|| {
            Error::InvalidArgument(format!("LoRA block {layer} is beyond the model"))
        })?;
        slot[target.index()] = Some(w);
        self.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The same adapter with every matrix mapped by `f` (uploaded to a device).
    pub(crate) fn map<N>(&self, mut f: impl FnMut(&QMatrix) -> N) -> LoraAdapter<N> {
        LoraAdapter {
            version: self.version,
            scale: self.scale,
            id: self.id,
            blocks: self
                .blocks
                .iter()
                .map(|b| {
                    b.each_ref().map(|w| {
                        w.as_ref().map(|w| LoraWeights {
                            a: f(&w.a),
                            b: f(&w.b),
                        })
                    })
                })
                .collect(),
        }
    }

    /// Checks every wrapped projection against the base matrix it wraps.
    pub(crate) fn check(&self, layer: usize, target: Target, base: &QMatrix) -> Result<()> {
        if let Some(w) = self
            .blocks
            .get(layer)
            .and_then(|b| b[target.index()].as_ref())
            && (w.a.cols() != base.cols() || w.b.rows() != base.rows() || w.a.rows() != w.b.cols())
        {
            return Err(Error::InvalidArgument(format!(
                "LoRA {} of block {layer} is {}×{} · {}×{}, the base is {}×{}",
                target.peft_name(),
                w.b.rows(),
                w.b.cols(),
                w.a.rows(),
                w.a.cols(),
                base.rows(),
                base.cols()
            )));
        }
        Ok(())
    }

    /// Whether it wraps projection `target` of block `layer`.
    pub fn wraps(&self, layer: usize, target: Target) -> bool {
        self.blocks
            .get(layer)
            .is_some_and(|b| b[target.index()].is_some())
    }

    /// The update it makes to projection `target` of block `layer`, `ΔW = (α/r)·B A`
    /// (`out × in`, row-major, rows in the base's order), or `None` where it wraps nothing:
    /// `W + ΔW` is the merged weight (LoRA, Hu et al. 2021, eq. 3).
    pub fn delta(&self, layer: usize, target: Target) -> Option<Vec<f32>> {
        let w = self.blocks.get(layer)?[target.index()].as_ref()?;
        let (Storage::F32(a), Storage::F32(b)) = (w.a.storage(), w.b.storage()) else {
            return None;
        };
        let (rank, input, output) = (w.a.rows(), w.a.cols(), w.b.rows());
        let mut delta = vec![0.0f32; output * input];
        delta
            .par_chunks_mut(input)
            .enumerate()
            .for_each(|(o, row)| {
                for (k, &bk) in b[o * rank..(o + 1) * rank].iter().enumerate() {
                    let s = self.scale * bk;
                    for (d, &ak) in row.iter_mut().zip(&a[k * input..(k + 1) * input]) {
                        *d += s * ak;
                    }
                }
            });
        Some(delta)
    }
}

impl<M> LoraAdapter<M> {
    /// Blocks the adapter spans.
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// Identifies these exact weights: equal ids, equal weights.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The A and B wrapping projection `target` of block `layer`, if any.
    pub(crate) fn pair(&self, layer: usize, target: Target) -> Option<&LoraWeights<M>> {
        self.blocks.get(layer)?[target.index()].as_ref()
    }
}
