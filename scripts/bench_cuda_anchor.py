#!/usr/bin/env python3
"""The PyTorch anchor of the CUDA benchmark (scripts/bench-cuda): the same model shape with
random weights, on the same GPU, in the same run, so that ClawRL's figures are ratios.

- train: one LoRA step (r 16, alpha 32, all seven projections; PEFT) on `--samples` sequences of
  `--tokens` tokens: a teacher forward without gradients, a student forward and backward through
  a loss of the hybrid objective's cost (token log-probs of the sampled tokens, and a full-vocab
  KL to the teacher), and an AdamW step. Median of `--steps` steps after one warm-up.
- generate: Hugging Face `generate`, greedy, `--prompt-tokens` then `--new-tokens`, at batch 1
  and batch 32; tokens per second across the batch.

Prints one JSON object. Needs torch, transformers and peft (the GPU machine has them).
"""

import argparse
import json
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

# The shapes `clawrl --model random:<name>` builds (crates/clawrl-model/src/tiny.rs).
SHAPES = {
    "smollm2-135m": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(
            vocab_size=49152,
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            head_dim=64,
            rope_theta=100000.0,
            rms_norm_eps=1e-5,
            max_position_embeddings=8192,
            tie_word_embeddings=True,
        ),
    ),
    "qwen3-4b": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(
            vocab_size=151936,
            hidden_size=2560,
            intermediate_size=9728,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            max_position_embeddings=40960,
            tie_word_embeddings=True,
        ),
    ),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def timed(f):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    f()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=230)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--batches", default="1,32")
    a = p.parse_args()
    dtype = torch.float32 if a.dtype == "fp32" else torch.bfloat16
    # fp32 means fp32: no TF32 in the products (PyTorch's default for matmul, made explicit).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg_cls, model_cls, kw = SHAPES[a.shape]
    torch.manual_seed(0)
    model = model_cls(cfg_cls(**kw)).to(device="cuda", dtype=dtype)
    model.generation_config.pad_token_id = 0
    report = {"shape": a.shape, "dtype": a.dtype, "device": torch.cuda.get_device_name()}

    # Decode first, on the base model.
    model.eval()
    for batch in [int(b) for b in a.batches.split(",") if b]:
        ids = torch.randint(0, kw["vocab_size"], (batch, a.prompt_tokens), device="cuda")
        run = lambda: model.generate(  # noqa: E731
            ids,
            max_new_tokens=a.new_tokens,
            min_new_tokens=a.new_tokens,
            do_sample=False,
        )
        with torch.no_grad():
            timed(run)
            secs = timed(run)
        report[f"generate_b{batch}_tok_s"] = batch * a.new_tokens / secs

    # One LoRA step.
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS)
    student = get_peft_model(model, lora)
    student.train()
    opt = torch.optim.AdamW([q for q in student.parameters() if q.requires_grad], lr=1e-5)
    ids = torch.randint(0, kw["vocab_size"], (a.samples, a.tokens), device="cuda")

    def step():
        with torch.no_grad(), student.disable_adapter():
            teacher = torch.log_softmax(student(ids).logits[:, :-1].float(), -1)
        logits = student(ids).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1)
        taken = lp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        kl = (teacher.exp() * (teacher - lp)).sum(-1)
        loss = (-taken + kl).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    timed(step)
    torch.cuda.reset_peak_memory_stats()
    times = [timed(step) for _ in range(a.steps)]
    report["train_step_s"] = statistics.median(times)
    report["train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    report["samples"], report["tokens"] = a.samples, a.tokens
    print(json.dumps(report))


if __name__ == "__main__":
    main()
