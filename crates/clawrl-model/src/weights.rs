//! A model's weights, on the host or, mapped, on a device.

use clawrl_kernels::QMatrix;

use crate::adapter::Target;

/// The weights of one transformer block: matrices `M` and vectors `V` on the host
/// ([`QMatrix`], `Vec<f32>`) or on a device (a [`Backend`]'s matrix and tensor).
#[derive(Clone, Debug)]
pub struct Block<M = QMatrix, V = Vec<f32>> {
    /// RMSNorm before attention.
    pub attn_norm: V,
    /// Query projection (`q_dim × hidden`).
    pub wq: M,
    /// Key projection (`kv_dim × hidden`).
    pub wk: M,
    /// Value projection (`kv_dim × hidden`).
    pub wv: M,
    /// Output projection (`hidden × q_dim`).
    pub wo: M,
    /// Query/key/value biases (Qwen2).
    pub qkv_bias: Option<[V; 3]>,
    /// Per-head RMSNorm of queries and keys (Qwen3).
    pub qk_norm: Option<[V; 2]>,
    /// RMSNorm before the MLP.
    pub ffn_norm: V,
    /// SwiGLU gate (`intermediate × hidden`).
    pub gate: M,
    /// SwiGLU up (`intermediate × hidden`).
    pub up: M,
    /// SwiGLU down (`hidden × intermediate`).
    pub down: M,
}

impl<M, V> Block<M, V> {
    /// The same block with every matrix mapped by `fm` and every vector by `fv` (uploaded).
    pub fn map<N, W>(
        &self,
        fm: &mut impl FnMut(&M) -> N,
        fv: &mut impl FnMut(&V) -> W,
    ) -> Block<N, W> {
        Block {
            attn_norm: fv(&self.attn_norm),
            wq: fm(&self.wq),
            wk: fm(&self.wk),
            wv: fm(&self.wv),
            wo: fm(&self.wo),
            qkv_bias: self.qkv_bias.as_ref().map(|b| b.each_ref().map(&mut *fv)),
            qk_norm: self.qk_norm.as_ref().map(|n| n.each_ref().map(&mut *fv)),
            ffn_norm: fv(&self.ffn_norm),
            gate: fm(&self.gate),
            up: fm(&self.up),
            down: fm(&self.down),
        }
    }

    /// The projection an adapter target wraps.
    pub fn projection(&self, t: Target) -> &M {
        match t {
            Target::Q => &self.wq,
            Target::K => &self.wk,
            Target::V => &self.wv,
            Target::O => &self.wo,
            Target::Gate => &self.gate,
            Target::Up => &self.up,
            Target::Down => &self.down,
        }
    }
}

impl Block {
    /// The projection `t`, to replace its weights (full fine-tuning publishes this way).
    pub fn projection_mut(&mut self, t: Target) -> &mut QMatrix {
        match t {
            Target::Q => &mut self.wq,
            Target::K => &mut self.wk,
            Target::V => &mut self.wv,
            Target::O => &mut self.wo,
            Target::Gate => &mut self.gate,
            Target::Up => &mut self.up,
            Target::Down => &mut self.down,
        }
    }

    /// The projections an adapter can wrap, with their targets.
    pub fn projections(&self) -> [(Target, &QMatrix); 7] {
        [
            (Target::Q, &self.wq),
            (Target::K, &self.wk),
            (Target::V, &self.wv),
            (Target::O, &self.wo),
            (Target::Gate, &self.gate),
            (Target::Up, &self.up),
            (Target::Down, &self.down),
        ]
    }
}

/// All weights of a model, on the host (the defaults) or on a device.
#[derive(Clone, Debug)]
pub struct Weights<M = QMatrix, V = Vec<f32>> {
    /// Token embedding (`vocab × hidden`).
    pub embed: M,
    /// The blocks, first to last.
    pub blocks: Vec<Block<M, V>>,
    /// Final RMSNorm.
    pub norm: V,
    /// Output projection (`vocab × hidden`); `None` when tied to the embedding.
    pub output: Option<M>,
}

impl<M, V> Weights<M, V> {
    /// The same weights with every matrix mapped by `fm` and every vector by `fv` (uploaded
    /// once to a device).
    pub fn map<N, W>(
        &self,
        mut fm: impl FnMut(&M) -> N,
        mut fv: impl FnMut(&V) -> W,
    ) -> Weights<N, W> {
        Weights {
            embed: fm(&self.embed),
            blocks: self
                .blocks
                .iter()
                .map(|b| b.map(&mut fm, &mut fv))
                .collect(),
            norm: fv(&self.norm),
            output: self.output.as_ref().map(fm),
        }
    }

    /// The output projection: its own, or the embedding when tied.
    pub fn head(&self) -> &M {
        self.output.as_ref().unwrap_or(&self.embed)
    }
}
