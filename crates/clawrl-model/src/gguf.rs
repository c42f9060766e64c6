//! Loading a GGUF file: shape from its metadata, weights in their stored format,
//! tokenizer and chat template from its `tokenizer.*` keys.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use clawrl_kernels::ops::RopeStyle;
use clawrl_kernels::quant::{QK, q4_1_from_bytes, q8_0_from_bytes, quantize_q8_0};
use clawrl_kernels::{QMatrix, Storage};
use tracing::info_span;

use crate::config::{Arch, ModelConfig};
use crate::error::{Error, Result};
use crate::model::{Block, Model, Weights};
use crate::sampling::SamplingDefaults;
use crate::template::{CHATML, ChatTemplate};
use crate::tokenizer::{GgufVocab, Tokenizer};

struct Reader<'a> {
    path: &'a Path,
    file: BufReader<File>,
    content: Content,
}

impl Reader<'_> {
    fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let v = self
            .meta(key)
            .ok_or_else(|| Error::bad_model(self.path, format!("metadata key {key} is missing")))?;
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(Error::bad_model(
                    self.path,
                    format!("{key} is {other:?}, not a count"),
                ));
            }
        };
        Ok(n as usize)
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.meta(key).is_some() {
            self.usize(key)
        } else {
            Ok(default)
        }
    }

    fn f32_or(&self, key: &str, default: f32) -> f32 {
        self.f32(key).unwrap_or(default)
    }

    fn f32(&self, key: &str) -> Option<f32> {
        match self.meta(key) {
            Some(Value::F32(x)) => Some(*x),
            Some(Value::F64(x)) => Some(*x as f32),
            _ => None,
        }
    }

    fn string(&self, key: &str) -> Option<&str> {
        match self.meta(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.meta(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err(Error::bad_model(
                        self.path,
                        format!("{key} holds a non-string"),
                    )),
                })
                .collect(),
            None => Ok(Vec::new()),
            Some(_) => Err(Error::bad_model(
                self.path,
                format!("{key} is not an array"),
            )),
        }
    }

    fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.content.tensor_infos.get(name)
    }

    fn raw(&mut self, name: &str) -> Result<(Vec<usize>, GgmlDType, Vec<u8>)> {
        let path = self.path;
        let info = self
            .info(name)
            .ok_or_else(|| Error::bad_model(path, format!("tensor {name} is missing")))?;
        let dims = info.shape.dims().to_vec();
        let dtype = info.ggml_dtype;
        let elems: usize = dims.iter().product();
        let bytes = elems / dtype.block_size() * dtype.type_size();
        let start = self.content.tensor_data_offset + info.offset;
        let mut buf = vec![0u8; bytes];
        self.file
            .seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(path, e))?;
        self.file
            .read_exact(&mut buf)
            .map_err(|e| Error::bad_model(path, format!("tensor {name} is truncated ({e})")))?;
        Ok((dims, dtype, buf))
    }

    /// A 1-D tensor as f32.
    fn vector(&mut self, name: &str) -> Result<Vec<f32>> {
        let (_, dtype, bytes) = self.raw(name)?;
        match dtype {
            GgmlDType::F32 => Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            GgmlDType::F16 => Ok(bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            other => Err(Error::bad_model(
                self.path,
                format!("tensor {name} has type {other:?}, expected f32"),
            )),
        }
    }

    fn optional_vector(&mut self, name: &str) -> Result<Option<Vec<f32>>> {
        if self.info(name).is_some() {
            self.vector(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A 2-D weight, kept in its stored format where a kernel exists for it.
    fn matrix(&mut self, name: &str) -> Result<QMatrix> {
        let path = self.path;
        let (dims, dtype, bytes) = self.raw(name)?;
        let [rows, cols] = dims[..] else {
            return Err(Error::bad_model(
                path,
                format!("tensor {name} has shape {dims:?}, expected 2-D"),
            ));
        };
        let storage = match dtype {
            GgmlDType::Q4_1 => Storage::Q4_1(q4_1_from_bytes(&bytes)),
            GgmlDType::Q8_0 => Storage::Q8_0(q8_0_from_bytes(&bytes)),
            GgmlDType::F32 => Storage::F32(
                bytes
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            _ => {
                // No kernel of ours for this format: dequantize through candle, then requantize
                // to Q8_0 (close to lossless) so the fast integer path still applies.
                let q = self
                    .content
                    .tensor(&mut self.file, name, &candle_core::Device::Cpu)
                    .map_err(|e| Error::bad_model(path, format!("tensor {name}: {e}")))?;
                let f = q
                    .dequantize(&candle_core::Device::Cpu)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| Error::bad_model(path, format!("tensor {name}: {e}")))?;
                if cols % QK == 0 {
                    Storage::Q8_0(quantize_q8_0(&f))
                } else {
                    Storage::F32(f)
                }
            }
        };
        QMatrix::new(rows, cols, storage)
            .map_err(|e| Error::bad_model(path, format!("tensor {name}: {e}")))
    }
}

/// Loads a GGUF model file.
pub fn load(path: &Path) -> Result<Model> {
    let _span = info_span!("load_gguf", path = %path.display()).entered();
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut file = BufReader::new(file);
    let content = Content::read(&mut file)
        .map_err(|e| Error::bad_model(path, format!("not a GGUF file ({e})")))?;
    let mut r = Reader {
        path,
        file,
        content,
    };

    let arch_name = r.string("general.architecture").unwrap_or("").to_string();
    let arch =
        Arch::parse(&arch_name).ok_or_else(|| Error::UnsupportedArchitecture(arch_name.clone()))?;
    let key = |k: &str| format!("{arch_name}.{k}");
    let hidden = r.usize(&key("embedding_length"))?;
    let heads = r.usize(&key("attention.head_count"))?;
    let head_dim = r.usize_or(&key("attention.key_length"), hidden / heads.max(1))?;
    let tokens = r.strings("tokenizer.ggml.tokens")?;
    let vocab_size = r.usize_or(&key("vocab_size"), tokens.len())?;
    let config = ModelConfig {
        arch,
        vocab_size,
        hidden,
        intermediate: r.usize(&key("feed_forward_length"))?,
        layers: r.usize(&key("block_count"))?,
        heads,
        kv_heads: r.usize_or(&key("attention.head_count_kv"), heads)?,
        head_dim,
        rope_dim: r.usize_or(&key("rope.dimension_count"), head_dim)?,
        rope_theta: r.f32_or(&key("rope.freq_base"), 10_000.0),
        // llama.cpp's converter permutes Llama's q/k rows for adjacent-pair RoPE; Qwen keeps halves.
        rope_style: if arch == Arch::Llama {
            RopeStyle::Interleaved
        } else {
            RopeStyle::Half
        },
        rms_eps: r.f32_or(&key("attention.layer_norm_rms_epsilon"), 1e-6),
        context_length: r.usize_or(&key("context_length"), 4096)?,
    };

    let tokenizer = tokenizer(&r, tokens)?;
    let template_src = r
        .string("tokenizer.chat_template")
        .unwrap_or(CHATML)
        .to_string();
    let template = ChatTemplate::new(&template_src, tokenizer.bos_text(), tokenizer.eos_text())?;

    let weights = Weights {
        embed: r.matrix("token_embd.weight")?,
        norm: r.vector("output_norm.weight")?,
        output: if r.info("output.weight").is_some() {
            Some(r.matrix("output.weight")?)
        } else {
            None
        },
        blocks: (0..config.layers)
            .map(|i| block(&mut r, i))
            .collect::<Result<_>>()?,
    };
    let mut model = Model::new(
        config,
        weights,
        tokenizer,
        template,
        path.display().to_string(),
    )?;
    let name = format!(
        "{} {}",
        r.string("general.name").unwrap_or(""),
        path.display()
    );
    model.sampling = SamplingDefaults::from_metadata(
        r.f32("general.sampling.temp").map(f64::from),
        r.f32("general.sampling.top_p").map(f64::from),
        &name,
    );
    Ok(model)
}

fn block(r: &mut Reader<'_>, i: usize) -> Result<Block> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let bias = [
        r.optional_vector(&n("attn_q.bias"))?,
        r.optional_vector(&n("attn_k.bias"))?,
        r.optional_vector(&n("attn_v.bias"))?,
    ];
    let qk_norm = [
        r.optional_vector(&n("attn_q_norm.weight"))?,
        r.optional_vector(&n("attn_k_norm.weight"))?,
    ];
    Ok(Block {
        attn_norm: r.vector(&n("attn_norm.weight"))?,
        wq: r.matrix(&n("attn_q.weight"))?,
        wk: r.matrix(&n("attn_k.weight"))?,
        wv: r.matrix(&n("attn_v.weight"))?,
        wo: r.matrix(&n("attn_output.weight"))?,
        qkv_bias: match bias {
            [Some(q), Some(k), Some(v)] => Some([q, k, v]),
            _ => None,
        },
        qk_norm: match qk_norm {
            [Some(q), Some(k)] => Some([q, k]),
            _ => None,
        },
        ffn_norm: r.vector(&n("ffn_norm.weight"))?,
        gate: r.matrix(&n("ffn_gate.weight"))?,
        up: r.matrix(&n("ffn_up.weight"))?,
        down: r.matrix(&n("ffn_down.weight"))?,
    })
}

fn tokenizer(r: &Reader<'_>, tokens: Vec<String>) -> Result<Tokenizer> {
    let id = |key: &str| r.usize(key).ok().map(|v| v as u32);
    let token_types = match r.meta("tokenizer.ggml.token_type") {
        Some(Value::Array(v)) => v.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let add_bos = matches!(
        r.meta("tokenizer.ggml.add_bos_token"),
        Some(Value::Bool(true))
    );
    Tokenizer::from_gguf(GgufVocab {
        model: r.string("tokenizer.ggml.model").unwrap_or("gpt2"),
        pre: r.string("tokenizer.ggml.pre"),
        merges: r.strings("tokenizer.ggml.merges")?,
        tokens,
        token_types,
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        add_bos,
    })
}
