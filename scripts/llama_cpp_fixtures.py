#!/usr/bin/env python3
"""Write the llama.cpp parity fixtures the engine's tests compare against.

llama.cpp (through the PyPI package llama-cpp-python) reads the same GGUF as the engine;
this records its tokenizer's ids, its greedy continuations of chat prompts and its per-token
log-probs of a fixed response, so the tests need no llama.cpp at run time.

    python3 -m venv ~/.cache/clawrl/peer-venv
    ~/.cache/clawrl/peer-venv/bin/pip install llama-cpp-python==0.3.36 numpy jinja2
    ~/.cache/clawrl/peer-venv/bin/python scripts/llama_cpp_fixtures.py \
        --model "$(clawrl model path)" --out crates/clawrl-model/tests/fixtures/llama_cpp.json
"""
import argparse
import json

import jinja2
import llama_cpp
import numpy as np

STRINGS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing   ",
    "line one\nline two\n\n\nline five",
    "tabs\tand\t\ttabs",
    "1234567890 and 3.14159 and 1,000,000",
    "Ünïcödé: café, naïve, Zürich, São Paulo",
    "日本語のテキストと中文文本",
    "Emoji: 🦀🚀👍🏽 done",
    "def f(x):\n    return x ** 2  # square\n",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>special<|im_end|> mixed",
    "don't won't I'm you're we've they'll she'd",
    "ALL CAPS SHOUTING AND MiXeD cAsE",
    "    \n    \n",
    "a" * 40,
    "The answer is \\boxed{42}.",
    "**bold** and _italic_ and `code` in markdown\n- item\n1. first",
    "https://example.com/path?query=1&x=y#frag",
    "Ελληνικά και русский текст",
    "     ",
    "x=1;y=2;z=x+y",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
]

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "Name three primary colors."}],
    [{"role": "user", "content": "What is 12 times 7?"}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Tell me a fun fact about octopuses."}],
]

SCORE_PROMPT = [{"role": "user", "content": "Explain what a prime number is."}]
SCORE_RESPONSE = ("A prime number is a whole number greater than 1 whose only divisors are 1 and "
                  "itself. For example, 2, 3, 5 and 7 are prime, while 4 and 6 are not.")

GREEDY_TOKENS = 32


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    llm = llama_cpp.Llama(args.model, n_ctx=2048, n_threads=2, logits_all=True, verbose=False)
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(
        llm.metadata["tokenizer.chat_template"])
    eos = llm.token_eos()

    def render(messages):
        return template.render(messages=messages, add_generation_prompt=True)

    def tok(text):
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    tokenize = [{"text": s, "ids": tok(s)} for s in STRINGS]

    greedy = []
    for messages in CHATS:
        text = render(messages)
        ids = tok(text)
        llm.reset()
        llm.eval(ids)
        out, margins = [], []
        for _ in range(GREEDY_TOKENS):
            row = np.asarray(llm.scores[llm.n_tokens - 1])
            nxt = int(np.argmax(row))
            top2 = np.sort(row)[-2:]
            out.append(nxt)
            margins.append(float(top2[1] - top2[0]))
            if nxt == eos:
                break
            llm.eval([nxt])
        greedy.append({"messages": messages, "rendered": text, "prompt_ids": ids, "greedy_ids": out,
                       "margins": margins})

    prompt_ids = tok(render(SCORE_PROMPT))
    response_ids = tok(SCORE_RESPONSE)
    llm.reset()
    llm.eval(prompt_ids + response_ids)
    logprobs = []
    for i, y in enumerate(response_ids):
        row = log_softmax(llm.scores[len(prompt_ids) - 1 + i])
        logprobs.append(float(row[y]))
    score = {"messages": SCORE_PROMPT, "prompt_ids": prompt_ids, "response": SCORE_RESPONSE,
             "response_ids": response_ids, "logprobs": logprobs}

    fixture = {"generator": f"llama-cpp-python {llama_cpp.__version__}",
               "tokenize": tokenize, "greedy": greedy, "score": score}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)
    print(f"wrote {args.out}: {len(tokenize)} strings, {len(greedy)} chats, {len(response_ids)} scored tokens")


if __name__ == "__main__":
    main()
