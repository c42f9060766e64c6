//! Hugging Face checkpoint directories written here from the tiny model and loaded back.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use clawrl_model::{Arch, Model};

/// GGUF Llama rows are permuted for adjacent-pair RoPE; Hugging Face keeps halves. Row g of
/// the GGUF layout is row `hf(g)` of Hugging Face's.
fn to_hf_rows(w: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; w.len()];
    for g in 0..heads * head_dim {
        let (h, r) = (g / head_dim, g % head_dim);
        let hf = h * head_dim + (r % 2) * (head_dim / 2) + r / 2;
        out[hf * cols..(hf + 1) * cols].copy_from_slice(&w[g * cols..(g + 1) * cols]);
    }
    out
}

fn write_hf(dir: &Path, model_type: &str, extra: impl Fn(&mut HashMap<String, Tensor>, usize)) {
    let m = Model::tiny(21);
    let c = &m.config;
    let t =
        |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor");
    let mut tensors = HashMap::new();
    tensors.insert(
        "model.embed_tokens.weight".to_string(),
        t(m.weights.embed.to_f32(), &[c.vocab_size, c.hidden]),
    );
    tensors.insert(
        "model.norm.weight".to_string(),
        t(m.weights.norm.clone(), &[c.hidden]),
    );
    for (i, b) in m.weights.blocks.iter().enumerate() {
        let n = |s: &str| format!("model.layers.{i}.{s}");
        let q = to_hf_rows(&b.wq.to_f32(), c.heads, c.head_dim, c.hidden);
        let k = to_hf_rows(&b.wk.to_f32(), c.kv_heads, c.head_dim, c.hidden);
        tensors.insert(n("self_attn.q_proj.weight"), t(q, &[c.q_dim(), c.hidden]));
        tensors.insert(n("self_attn.k_proj.weight"), t(k, &[c.kv_dim(), c.hidden]));
        for (name, w) in [
            ("self_attn.v_proj.weight", &b.wv),
            ("self_attn.o_proj.weight", &b.wo),
            ("mlp.gate_proj.weight", &b.gate),
            ("mlp.up_proj.weight", &b.up),
            ("mlp.down_proj.weight", &b.down),
        ] {
            tensors.insert(n(name), t(w.to_f32(), &[w.rows(), w.cols()]));
        }
        tensors.insert(
            n("input_layernorm.weight"),
            t(b.attn_norm.clone(), &[c.hidden]),
        );
        tensors.insert(
            n("post_attention_layernorm.weight"),
            t(b.ffn_norm.clone(), &[c.hidden]),
        );
        extra(&mut tensors, i);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("save");
    let config = serde_json::json!({
        "model_type": model_type,
        "vocab_size": c.vocab_size, "hidden_size": c.hidden, "intermediate_size": c.intermediate,
        "num_hidden_layers": c.layers, "num_attention_heads": c.heads, "num_key_value_heads": c.kv_heads,
        "head_dim": c.head_dim, "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_eps,
        "max_position_embeddings": c.context_length, "tie_word_embeddings": true,
        "bos_token_id": 1, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    m.tokenizer
        .save(&dir.join("tokenizer.json"))
        .expect("tokenizer");
    let tok_cfg = serde_json::json!({"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"});
    std::fs::write(dir.join("tokenizer_config.json"), tok_cfg.to_string())
        .expect("tokenizer config");
}

fn logits(m: &Model) -> Vec<f32> {
    let tokens = m
        .tokenizer
        .encode("the cat sat on the mat")
        .expect("encodes");
    m.forward(&tokens, &mut m.new_cache(), tokens.len())
        .expect("forward")
}

#[test]
fn a_llama_directory_computes_what_the_same_gguf_layout_weights_compute() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf(dir.path(), "llama", |_, _| {});
    let hf = Model::load(dir.path()).expect("loads");
    assert_eq!(hf.config.arch, Arch::Llama);
    let reference = Model::tiny(21);
    assert_eq!(
        hf.tokenizer
            .encode("hello <|im_end|> there")
            .expect("encodes"),
        reference
            .tokenizer
            .encode("hello <|im_end|> there")
            .expect("encodes")
    );
    assert!(hf.tokenizer.is_end_of_generation(2));
    // Half-split RoPE over un-permuted rows equals adjacent-pair RoPE over permuted ones; the
    // projections were requantized to Q8_0, hence the tolerance.
    let (a, b) = (logits(&hf), logits(&reference));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(worst < 0.1, "logits differ by up to {worst}");
}

#[test]
fn qwen2_biases_and_qwen3_head_norms_are_loaded_and_used() {
    let c = Model::tiny(21).config;
    // Qwen2 with zero biases computes what Llama computes.
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf(dir.path(), "qwen2", |t, i| {
        for (p, n) in [("q", c.q_dim()), ("k", c.kv_dim()), ("v", c.kv_dim())] {
            let z = Tensor::zeros(n, candle_core::DType::F32, &Device::Cpu).expect("zeros");
            t.insert(format!("model.layers.{i}.self_attn.{p}_proj.bias"), z);
        }
    });
    let qwen2 = Model::load(dir.path()).expect("loads");
    assert_eq!(qwen2.config.arch, Arch::Qwen2);
    assert!(qwen2.weights.blocks[0].qkv_bias.is_some());
    let llama_dir = tempfile::tempdir().expect("tempdir");
    write_hf(llama_dir.path(), "llama", |_, _| {});
    let llama = Model::load(llama_dir.path()).expect("loads");
    assert_eq!(logits(&qwen2), logits(&llama));

    // Qwen3's per-head norms change the result, and it stays finite.
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf(dir.path(), "qwen3", |t, i| {
        for p in ["q", "k"] {
            let w = Tensor::full(0.5f32, c.head_dim, &Device::Cpu).expect("full");
            t.insert(format!("model.layers.{i}.self_attn.{p}_norm.weight"), w);
        }
    });
    let qwen3 = Model::load(dir.path()).expect("loads");
    assert_eq!(qwen3.config.arch, Arch::Qwen3);
    let l = logits(&qwen3);
    assert!(l.iter().all(|x| x.is_finite()));
    assert_ne!(l, logits(&llama));
}

#[test]
fn a_directory_with_an_unknown_architecture_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_hf(dir.path(), "gpt_neox", |_, _| {});
    let err = Model::load(dir.path()).expect_err("refused");
    assert!(
        err.to_string().contains("unsupported model architecture"),
        "{err}"
    );
}
