#!/usr/bin/env python3
"""Generation speed of the engine against llama.cpp on the same GGUF, run alternately.

Both get the same ~230-token prompt (the bench prose of `clawrl bench generate`, cut to the
same token count), greedy decoding of 128 new tokens, and the same thread count. Each round
runs llama.cpp once and `clawrl bench generate` once; the medians and ratios are printed.

    python3 -m venv ~/.cache/clawrl/peer-venv
    ~/.cache/clawrl/peer-venv/bin/pip install llama-cpp-python==0.3.36 numpy
    cargo build --release -p clawrl
    ~/.cache/clawrl/peer-venv/bin/python scripts/bench_generate.py --rounds 3
"""
import argparse
import json
import statistics
import subprocess
import time

import llama_cpp
import numpy as np

# Keep in step with PROSE in src/bench.rs.
PROSE = ("The history of the printing press begins in the fifteenth century, when "
         "Johannes Gutenberg combined movable metal type, oil-based ink and a wooden screw press into a "
         "system that could produce books quickly and cheaply. Before then, most books in Europe were "
         "copied by hand, a slow process that kept them rare and expensive. Within a few decades, print "
         "shops had spread to more than two hundred cities, and millions of volumes were in circulation. ")


def llama_cpp_round(llm, prompt, new_tokens):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t1 = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([nxt])
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), (new_tokens - 1) / (t2 - t1)


def clawrl_round(binary, model, prompt_tokens, new_tokens, threads):
    out = subprocess.run(
        [binary, "--model", model, "--threads", str(threads), "bench", "generate", "--json", "--runs", "1",
         "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens)],
        check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return r["prefill_tok_s"], r["decode_tok_s"], r["rss_mb"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/clawrl")
    ap.add_argument("--model", help="GGUF (default: `clawrl model path`)")
    ap.add_argument("--prompt-tokens", type=int, default=230)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model = args.model or subprocess.run([args.binary, "model", "path"], check=True, capture_output=True,
                                         text=True).stdout.strip()

    llm = llama_cpp.Llama(model, n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads,
                          n_batch=512, logits_all=False, verbose=False)
    unit = llm.tokenize(PROSE.encode(), add_bos=False, special=False)
    prompt = (unit * (args.prompt_tokens // len(unit) + 1))[:args.prompt_tokens]
    llama_cpp_round(llm, prompt, 8)  # warm-up

    lp, ld, cp, cd, rss = [], [], [], [], []
    for r in range(args.rounds):
        p, d = llama_cpp_round(llm, prompt, args.new_tokens)
        lp.append(p), ld.append(d)
        p, d, m = clawrl_round(args.binary, model, args.prompt_tokens, args.new_tokens, args.threads)
        cp.append(p), cd.append(d), rss.append(m)
        print(f"round {r + 1}: llama.cpp prefill {lp[-1]:.1f} decode {ld[-1]:.1f} tok/s | "
              f"clawrl prefill {cp[-1]:.1f} decode {cd[-1]:.1f} tok/s, RSS {m:.0f} MB", flush=True)
    med = statistics.median
    print(json.dumps({
        "llama_cpp": {"prefill_tok_s": med(lp), "decode_tok_s": med(ld)},
        "clawrl": {"prefill_tok_s": med(cp), "decode_tok_s": med(cd), "rss_mb": max(rss)},
        "ratio": {"prefill": med(cp) / med(lp), "decode": med(cd) / med(ld)},
        "threads": args.threads, "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens,
    }, indent=1))


if __name__ == "__main__":
    main()
