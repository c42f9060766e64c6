//! Loading a Hugging Face checkpoint directory: `config.json`, `*.safetensors`,
//! `tokenizer.json` and `tokenizer_config.json`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use clawrl_kernels::ops::RopeStyle;
use clawrl_kernels::quant::{QK, quantize_q8_0};
use clawrl_kernels::{QMatrix, Storage};
use serde::Deserialize;
use serde_json::Value;
use tracing::info_span;

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::model::{Block, Model, Weights};
use crate::sampling::SamplingDefaults;
use crate::template::{CHATML, ChatTemplate};
use crate::tokenizer::Tokenizer;

#[derive(Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rope_theta: Option<f32>,
    rms_norm_eps: Option<f32>,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: bool,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::bad_model(path, e))
}

fn ids(v: &Option<Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Loads a Llama / Qwen2 / Qwen3 checkpoint directory.
pub fn load(dir: &Path) -> Result<Model> {
    let _span = info_span!("load_hf", dir = %dir.display()).entered();
    let cfg: HfConfig = read_json(&dir.join("config.json"))?;
    let arch_name = cfg
        .architectures
        .first()
        .cloned()
        .or(cfg.model_type.clone())
        .unwrap_or_default();
    let arch = Arch::parse(&arch_name)
        .or_else(|| cfg.model_type.as_deref().and_then(Arch::parse))
        .ok_or_else(|| Error::UnsupportedArchitecture(arch_name.clone()))?;
    let head_dim = cfg
        .head_dim
        .unwrap_or(cfg.hidden_size / cfg.num_attention_heads.max(1));
    let config = ModelConfig {
        arch,
        vocab_size: cfg.vocab_size,
        hidden: cfg.hidden_size,
        intermediate: cfg.intermediate_size,
        layers: cfg.num_hidden_layers,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads.unwrap_or(cfg.num_attention_heads),
        head_dim,
        rope_dim: head_dim,
        rope_theta: cfg.rope_theta.unwrap_or(10_000.0),
        rope_style: RopeStyle::Half,
        rms_eps: cfg.rms_norm_eps.unwrap_or(1e-6),
        context_length: cfg.max_position_embeddings.unwrap_or(4096),
    };

    let mut shards: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    shards.sort();
    if shards.is_empty() {
        return Err(Error::bad_model(
            dir,
            "no *.safetensors file in the directory",
        ));
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for shard in &shards {
        let t = candle_core::safetensors::load(shard, &Device::Cpu)
            .map_err(|e| Error::bad_model(shard, e))?;
        tensors.extend(t);
    }
    let mut w = Tensors { dir, tensors };

    let tok_cfg: Value = if dir.join("tokenizer_config.json").exists() {
        read_json(&dir.join("tokenizer_config.json"))?
    } else {
        Value::Null
    };
    let mut eos = ids(&cfg.eos_token_id);
    let gen_cfg = dir.join("generation_config.json");
    let generation: Value = if gen_cfg.exists() {
        read_json(&gen_cfg)?
    } else {
        Value::Null
    };
    for id in ids(&generation.get("eos_token_id").cloned()) {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }
    let bos = ids(&cfg.bos_token_id).first().copied();
    let add_bos = tok_cfg
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"), bos, &eos, add_bos)?;
    let template = ChatTemplate::new(
        &chat_template(&tok_cfg),
        tokenizer.bos_text(),
        tokenizer.eos_text(),
    )?;

    let embed = w.matrix("model.embed_tokens.weight")?;
    let output = if cfg.tie_word_embeddings || !w.has("lm_head.weight") {
        None
    } else {
        Some(w.matrix("lm_head.weight")?)
    };
    let weights = Weights {
        norm: w.vector("model.norm.weight")?,
        blocks: (0..config.layers)
            .map(|i| block(&mut w, i))
            .collect::<Result<_>>()?,
        embed,
        output,
    };
    let mut model = Model::new(
        config,
        weights,
        tokenizer,
        template,
        dir.display().to_string(),
    )?;
    let number = |k: &str| generation.get(k).and_then(Value::as_f64);
    model.sampling = SamplingDefaults::from_metadata(
        number("temperature"),
        number("top_p"),
        &dir.display().to_string(),
    );
    Ok(model)
}

fn chat_template(tok_cfg: &Value) -> String {
    match tok_cfg.get("chat_template") {
        Some(Value::String(s)) => s.clone(),
        // A list of named templates: take "default", else the first.
        Some(Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or(list.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .unwrap_or(CHATML)
            .to_string(),
        _ => CHATML.to_string(),
    }
}

struct Tensors<'a> {
    dir: &'a Path,
    tensors: HashMap<String, Tensor>,
}

impl Tensors<'_> {
    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn take(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| Error::bad_model(self.dir, format!("tensor {name} is missing")))?;
        let dims = t.dims().to_vec();
        let v = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| Error::bad_model(self.dir, format!("tensor {name}: {e}")))?;
        Ok((dims, v))
    }

    fn vector(&mut self, name: &str) -> Result<Vec<f32>> {
        Ok(self.take(name)?.1)
    }

    fn optional_vector(&mut self, name: &str) -> Result<Option<Vec<f32>>> {
        if self.has(name) {
            self.vector(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A projection, requantized to Q8_0 so decoding uses the integer kernels.
    fn matrix(&mut self, name: &str) -> Result<QMatrix> {
        let (dims, v) = self.take(name)?;
        let [rows, cols] = dims[..] else {
            return Err(Error::bad_model(
                self.dir,
                format!("tensor {name} has shape {dims:?}, expected 2-D"),
            ));
        };
        let storage = if cols % QK == 0 {
            Storage::Q8_0(quantize_q8_0(&v))
        } else {
            Storage::F32(v)
        };
        QMatrix::new(rows, cols, storage)
            .map_err(|e| Error::bad_model(self.dir, format!("tensor {name}: {e}")))
    }
}

fn block(w: &mut Tensors<'_>, i: usize) -> Result<Block> {
    let n = |s: &str| format!("model.layers.{i}.{s}");
    let bias = [
        w.optional_vector(&n("self_attn.q_proj.bias"))?,
        w.optional_vector(&n("self_attn.k_proj.bias"))?,
        w.optional_vector(&n("self_attn.v_proj.bias"))?,
    ];
    let qk_norm = [
        w.optional_vector(&n("self_attn.q_norm.weight"))?,
        w.optional_vector(&n("self_attn.k_norm.weight"))?,
    ];
    Ok(Block {
        attn_norm: w.vector(&n("input_layernorm.weight"))?,
        wq: w.matrix(&n("self_attn.q_proj.weight"))?,
        wk: w.matrix(&n("self_attn.k_proj.weight"))?,
        wv: w.matrix(&n("self_attn.v_proj.weight"))?,
        wo: w.matrix(&n("self_attn.o_proj.weight"))?,
        qkv_bias: match bias {
            [Some(q), Some(k), Some(v)] => Some([q, k, v]),
            _ => None,
        },
        qk_norm: match qk_norm {
            [Some(q), Some(k)] => Some([q, k]),
            _ => None,
        },
        ffn_norm: w.vector(&n("post_attention_layernorm.weight"))?,
        gate: w.matrix(&n("mlp.gate_proj.weight"))?,
        up: w.matrix(&n("mlp.up_proj.weight"))?,
        down: w.matrix(&n("mlp.down_proj.weight"))?,
    })
}
