#!/usr/bin/env python3
"""One hybrid LoRA training step in PyTorch against `clawrl bench train`, run alternately.

The reference does what the trainer does: transformers loads the same GGUF (dequantized),
PEFT wraps q/k/v/o/gate/up/down with the same LoRA (r 16, α 32), and each of the 16 samples
(a 32-token prompt and a 224-token response, as `clawrl bench train` builds them) runs the
student forward with gradient, a teacher forward under the hint prompt without it, the
same GRPO + top-k OPD loss, and a backward; then one AdamW step. CPU, the same threads.

PyTorch from PyPI is large (CUDA wheels, ~5.6 GB); keep it in its own environment:

    python3 -m venv ~/.cache/clawrl/torch-venv
    ~/.cache/clawrl/torch-venv/bin/pip install torch transformers peft gguf numpy
    cargo build --release -p clawrl
    ~/.cache/clawrl/torch-venv/bin/python scripts/bench_train_pytorch.py --rounds 2
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

# Keep in step with PROSE in src/bench.rs.
PROSE = ("The history of the printing press begins in the fifteenth century, when "
         "Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press into a "
         "system that could produce books quickly and cheaply. Before then, most books in Europe were "
         "copied by hand, a slow process that kept them rare and expensive. Within a few decades, print "
         "shops had spread to more than two hundred cities, and millions of volumes were in circulation. ")
HINT = "\n\n[user's hint / instruction]\nAnswer briefly."
EPS_LO, EPS_HI, C, K = 0.2, 0.28, 1.0, 4


def surrogate(ratio, adv):
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - EPS_LO, 1 + EPS_HI))


def sample_loss(model, prompt, response, hint_prompt, adv):
    ids = torch.tensor([prompt + response[:-1]])
    lp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1:].float(), -1)
    y = torch.tensor(response)
    lp_y = lp.gather(1, y[:, None])[:, 0]
    old_y = lp_y.detach()
    grpo = surrogate(torch.exp(lp_y - old_y), torch.full_like(lp_y, adv))
    with torch.no_grad():
        t_ids = torch.tensor([hint_prompt + response[:-1]])
        lp_t = torch.log_softmax(model(t_ids).logits[0, len(hint_prompt) - 1:].float(), -1)
    old = lp.detach()
    support = old.topk(K, -1).indices
    l_old, l_cur, l_t = old.gather(1, support), lp.gather(1, support), lp_t.gather(1, support)
    w = torch.softmax(l_old, -1)
    a = (l_t - l_old).clamp(-C, C) * w
    opd = surrogate(torch.exp(l_cur - l_old), a).sum(-1)
    return (grpo + opd).mean()


def torch_step(model, opt, batch):
    t0 = time.perf_counter()
    opt.zero_grad()
    for prompt, response, hint_prompt, adv in batch:
        (sample_loss(model, prompt, response, hint_prompt, adv) / len(batch)).backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/clawrl")
    ap.add_argument("--model", help="GGUF (default: `clawrl model path`)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = args.model or subprocess.run([args.binary, "model", "path"], check=True, capture_output=True,
                                        text=True).stdout.strip()
    folder, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)

    unit = tok(PROSE, add_special_tokens=False).input_ids
    text = (unit * ((args.tokens + 32) // len(unit) + 1))[:args.tokens + 32]
    prompt, response = text[:32], text[32:args.tokens]
    hint_prompt = prompt + tok(HINT, add_special_tokens=False).input_ids
    batch = [(prompt, response, hint_prompt, 1.0 if i % 2 == 0 else -1.0) for i in range(args.samples)]

    torch_step(model, opt, batch)  # warm-up
    ours, theirs = [], []
    for r in range(args.rounds):
        theirs.append(torch_step(model, opt, batch))
        # PyTorch's OpenMP threads spin for a while after their work; let them settle first.
        time.sleep(2)
        out = subprocess.run([args.binary, "--model", path, "--threads", str(args.threads), "bench", "train",
                              "--json", "--samples", str(args.samples), "--tokens", str(args.tokens)],
                             check=True, capture_output=True, text=True).stdout
        report = json.loads(out)
        ours.append(report["step_s"])
        print(f"round {r + 1}: pytorch {theirs[-1]:.2f} s | clawrl {ours[-1]:.2f} s "
              f"(RSS {report['peak_rss_mb']:.0f} MB)", flush=True)
    torch_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med = statistics.median
    print(json.dumps({
        "pytorch": {"step_s": med(theirs), "peak_rss_mb": torch_rss, "version": torch.__version__},
        "clawrl": {"step_s": med(ours), "peak_rss_mb": report["peak_rss_mb"]},
        "ratio": med(ours) / med(theirs),
        "samples": args.samples, "tokens": args.tokens, "threads": args.threads,
    }, indent=1))


if __name__ == "__main__":
    main()
