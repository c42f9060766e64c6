#!/usr/bin/env python3
"""Checks that an adapter saved by clawrl loads in Hugging Face PEFT and computes what clawrl
computes: the OPD demo trains and saves an adapter, `clawrl score --adapter` scores a response
with it, and transformers + PEFT score the same token ids on the same GGUF (dequantized).
Prints the largest per-token log-prob difference, with and without the adapter.

Needs torch, transformers, peft and gguf in its own environment (see bench_train_pytorch.py):

    cargo build --release -p clawrl
    ~/.cache/clawrl/torch-venv/bin/python scripts/check_peft_adapter.py
"""
import argparse
import json
import os
import subprocess
import tempfile

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

REQUEST = {
    "prompts": [[{"role": "user", "content": "Which animal says moo?"}]],
    "response": "The animal that says moo is the cow. Cows are farm animals that give milk.",
    "top_k": 1,
}


def clawrl(binary, *args, stdin=None):
    out = subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, check=True)
    return out.stdout


def logprobs(model, prompt, response):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    start = len(prompt) - 1
    return [lp[start + i, t].item() for i, t in enumerate(response)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/clawrl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=0.02, help="largest allowed |Δ log-prob|")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = clawrl(args.binary, "model", "path").strip()
    with tempfile.TemporaryDirectory() as tmp:
        adapter = os.path.join(tmp, "adapter")
        clawrl(args.binary, "demo", "train", "--steps", "3", "--save", adapter)
        request = json.dumps(REQUEST)
        base = json.loads(clawrl(args.binary, "score", stdin=request))
        tuned = json.loads(clawrl(args.binary, "score", "--adapter", adapter, stdin=request))
        prompt, response = base["scores"][0]["prompt_ids"], base["response_ids"]

        folder, name = os.path.split(path)
        hf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
        hf_base = logprobs(hf, prompt, response)
        peft = PeftModel.from_pretrained(hf, adapter)
        hf_tuned = logprobs(peft, prompt, response)

    def worst(a, b):
        return max(abs(x - y) for x, y in zip(a, b))

    report = {
        "tokens": len(response),
        "base_max_abs_diff": worst(base["scores"][0]["logprobs"], hf_base),
        "adapter_max_abs_diff": worst(tuned["scores"][0]["logprobs"], hf_tuned),
        "adapter_moved_max": worst(hf_base, hf_tuned),
    }
    print(json.dumps(report))
    ok = report["adapter_max_abs_diff"] <= args.tolerance and report["adapter_moved_max"] > args.tolerance
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
