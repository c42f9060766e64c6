#!/usr/bin/env python3
"""Check a merged GGUF export against the engine: llama.cpp's greedy tokens on the merged file
must equal `clawrl generate --adapter` (the base with the adapter on top) on the same prompts,
except where llama.cpp's own top-2 logits are a near tie (the criterion of the engine's
llama.cpp parity test: llama.cpp quantizes activations to 8 bits, the engine's prefill does not).

    python3 -m venv ~/.cache/clawrl/peer-venv
    ~/.cache/clawrl/peer-venv/bin/pip install llama-cpp-python==0.3.36 numpy jinja2
    clawrl demo train --save /tmp/adapter            # or any adapter in PEFT's layout
    clawrl export gguf --adapter /tmp/adapter --out /tmp/merged.gguf
    ~/.cache/clawrl/peer-venv/bin/python scripts/check_gguf_export.py \
        --clawrl target/release/clawrl --adapter /tmp/adapter --merged /tmp/merged.gguf

Prints one line per prompt and a JSON summary; exits 1 if a prompt parts from the engine at a
position that is not a near tie.
"""
import argparse
import json
import subprocess
import sys

import jinja2
import llama_cpp
import numpy as np

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Name three primary colors.",
    "What is 12 times 7?",
    "Tell me a fun fact about octopuses.",
    "Write a poem about the ocean.",
    "Answer in one short sentence: why is the sky blue?",
    "List three prime numbers.",
]
GREEDY_TOKENS = 32
# As in crates/clawrl-model/tests/llama_cpp_parity.rs.
NEAR_TIE = 0.4
# Tokens that must agree before a parting is judged at all (the parity test's window).
WINDOW = 16


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clawrl", required=True, help="the clawrl binary")
    ap.add_argument("--adapter", required=True, help="the adapter directory (PEFT layout)")
    ap.add_argument("--merged", required=True, help="the GGUF file clawrl export gguf wrote")
    ap.add_argument("--base", help="the base GGUF (default: clawrl model path)")
    args = ap.parse_args()

    llm = llama_cpp.Llama(args.merged, n_ctx=2048, n_threads=2, logits_all=True, verbose=False)
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(
        llm.metadata["tokenizer.chat_template"])
    eos = llm.token_eos()
    base = ["--model", args.base] if args.base else []

    results, failed = [], 0
    for prompt in PROMPTS:
        text = template.render(messages=[{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        theirs, margins = [], []
        for _ in range(GREEDY_TOKENS):
            row = np.asarray(llm.scores[llm.n_tokens - 1])
            nxt = int(np.argmax(row))
            top2 = np.sort(row)[-2:]
            theirs.append(nxt)
            margins.append(float(top2[1] - top2[0]))
            if nxt == eos:
                break
            llm.eval([nxt])

        out = subprocess.run(
            [args.clawrl, *base, "generate", "--raw", "--json", "--greedy", "--top-k", "0",
             "--max-tokens", str(GREEDY_TOKENS), "--adapter", args.adapter, text],
            check=True, capture_output=True, text=True)
        ours = json.loads(out.stdout)
        if ours["prompt_tokens"] != len(ids):
            sys.exit(f"{prompt!r}: the engine read {ours['prompt_tokens']} prompt tokens, llama.cpp {len(ids)}")
        # Both include the end-of-turn token they stopped at.
        ours = ours["token_ids"]
        parted = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        if parted is None and len(ours) != len(theirs):
            parted = min(len(ours), len(theirs))
        ok = parted is None or parted >= WINDOW or (parted < len(margins) and margins[parted] < NEAR_TIE)
        failed += not ok
        where = "equal" if parted is None else f"parted at token {parted}, llama.cpp's margin there {margins[parted]:.3f}" \
            if parted < len(margins) else f"parted at token {parted}"
        print(f"{'ok  ' if ok else 'FAIL'} {prompt!r}: {where}")
        results.append({"prompt": prompt, "parted": parted, "ok": ok, "engine": ours, "llama_cpp": theirs})

    print(json.dumps({"llama_cpp": llama_cpp.__version__, "prompts": len(PROMPTS),
                      "equal": sum(r["parted"] is None for r in results), "failed": failed}))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
