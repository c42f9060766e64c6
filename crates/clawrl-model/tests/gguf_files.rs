//! GGUF files written here (with candle's writer) and read back by the engine's loader.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use clawrl_model::{Error, Model, tiny_vocab};

/// Writes the tiny model (seed 1) as a GGUF with matrices in `dtype`, under `arch`.
fn write_tiny(path: &Path, dtype: GgmlDType, arch: &str) {
    let m = Model::tiny(1);
    let c = &m.config;
    let v = tiny_vocab();
    let s = |x: &str| Value::String(x.to_string());
    let u = |x: usize| Value::U32(x as u32);
    let strings = |xs: &[String]| Value::Array(xs.iter().map(|x| s(x)).collect());
    let meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(arch)),
        (format!("{arch}.embedding_length"), u(c.hidden)),
        (format!("{arch}.feed_forward_length"), u(c.intermediate)),
        (format!("{arch}.block_count"), u(c.layers)),
        (format!("{arch}.attention.head_count"), u(c.heads)),
        (format!("{arch}.attention.head_count_kv"), u(c.kv_heads)),
        (format!("{arch}.rope.freq_base"), Value::F32(c.rope_theta)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_eps),
        ),
        (format!("{arch}.context_length"), u(c.context_length)),
        ("tokenizer.ggml.model".into(), s("gpt2")),
        ("tokenizer.ggml.pre".into(), s("default")),
        ("tokenizer.ggml.tokens".into(), strings(&v.tokens)),
        ("tokenizer.ggml.merges".into(), strings(&v.merges)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(v.token_types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
    ];
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut put = |name: String, rows: usize, cols: usize, data: Vec<f32>, dt: GgmlDType| {
        let t = Tensor::from_vec(data, (rows, cols), &Device::Cpu).expect("tensor");
        let t = if rows == 1 {
            t.flatten_all().expect("flatten")
        } else {
            t
        };
        tensors.push((name, QTensor::quantize(&t, dt).expect("quantize")));
    };
    let w = &m.weights;
    put(
        "token_embd.weight".into(),
        c.vocab_size,
        c.hidden,
        w.embed.to_f32(),
        GgmlDType::Q8_0,
    );
    put(
        "output_norm.weight".into(),
        1,
        c.hidden,
        w.norm.clone(),
        GgmlDType::F32,
    );
    for (i, b) in w.blocks.iter().enumerate() {
        let n = |x: &str| format!("blk.{i}.{x}");
        put(
            n("attn_norm.weight"),
            1,
            c.hidden,
            b.attn_norm.clone(),
            GgmlDType::F32,
        );
        put(
            n("ffn_norm.weight"),
            1,
            c.hidden,
            b.ffn_norm.clone(),
            GgmlDType::F32,
        );
        for (name, q) in [
            ("attn_q.weight", &b.wq),
            ("attn_k.weight", &b.wk),
            ("attn_v.weight", &b.wv),
            ("attn_output.weight", &b.wo),
            ("ffn_gate.weight", &b.gate),
            ("ffn_up.weight", &b.up),
            ("ffn_down.weight", &b.down),
        ] {
            put(n(name), q.rows(), q.cols(), q.to_f32(), dtype);
        }
    }
    let mut file = std::fs::File::create(path).expect("create");
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).expect("write gguf");
}

fn logits(m: &Model, text: &str) -> Vec<f32> {
    let tokens = m.tokenizer.encode(text).expect("encodes");
    m.forward(&tokens, &mut m.new_cache(), tokens.len())
        .expect("forward")
}

#[test]
fn a_written_gguf_loads_back_with_the_same_tokenizer_and_close_logits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = Model::tiny(1);
    let want = logits(&reference, "the cat sat");
    for (dtype, tol) in [
        (GgmlDType::F32, 0.05),
        (GgmlDType::Q8_0, 0.1),
        (GgmlDType::Q4_1, 1.0),
        (GgmlDType::Q5_0, 1.0),
    ] {
        let path = dir.path().join(format!("tiny-{dtype:?}.gguf"));
        write_tiny(&path, dtype, "llama");
        let m = Model::load(&path).expect("loads");
        assert_eq!(
            m.tokenizer.encode("the cat sat").expect("encodes"),
            reference.tokenizer.encode("the cat sat").expect("encodes")
        );
        let got = logits(&m, "the cat sat");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < tol, "{dtype:?}: logits differ by up to {worst}");
    }
}

#[test]
fn an_unknown_architecture_and_a_truncated_file_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gpt2.gguf");
    write_tiny(&path, GgmlDType::F32, "gpt2");
    let err = Model::load(&path).expect_err("gpt2 is not supported");
    assert!(
        matches!(err, Error::UnsupportedArchitecture(ref a) if a == "gpt2"),
        "{err}"
    );

    let good = dir.path().join("good.gguf");
    write_tiny(&good, GgmlDType::Q8_0, "llama");
    let bytes = std::fs::read(&good).expect("read");
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).expect("write");
    let err = Model::load(&cut).expect_err("truncated");
    assert!(matches!(err, Error::BadModel { .. }), "{err}");
}
