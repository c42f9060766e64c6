#!/usr/bin/env python3
"""Drives a running `clawrl serve` with the official `openai` package: model list, a chat
completion with log-probs, a streamed one, and a session continued through `extra_body`.
Prints a JSON summary; exits non-zero on the first mismatch.

    python3 -m venv ~/.cache/clawrl/openai-venv
    ~/.cache/clawrl/openai-venv/bin/pip install openai==3.51.0
    ~/.cache/clawrl/openai-venv/bin/python scripts/openai_sdk_check.py --base-url http://127.0.0.1:8080/v1
"""
import argparse
import json

import openai


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--api-key", default="none")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)

    models = [m.id for m in client.models.list().data]
    assert models, "no models listed"
    model = models[0]

    question = [{"role": "user", "content": "Say hello."}]
    r = client.chat.completions.create(
        model=model, messages=question, max_tokens=8, logprobs=True, top_logprobs=2, seed=1,
        extra_body={"session_id": "sdk"},
    )
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.logprobs is not None and len(choice.logprobs.content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)

    pieces, finish, chunks = [], None, 0
    stream = client.chat.completions.create(
        model=model, max_tokens=8, stream=True, seed=2,
        messages=question + [{"role": "assistant", "content": choice.message.content},
                             {"role": "user", "content": "Thanks!"}],
        extra_headers={"X-Session-Id": "sdk"},
    )
    for chunk in stream:
        chunks += 1
        if chunk.choices:
            delta = chunk.choices[0].delta
            if delta.content:
                pieces.append(delta.content)
            finish = chunk.choices[0].finish_reason or finish
    assert chunks >= 2 and finish in ("stop", "length"), (chunks, finish)

    try:
        client.chat.completions.create(model=model, messages=[], max_tokens=4)
        raise AssertionError("an empty conversation was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400

    print(json.dumps({
        "model": model,
        "completion_tokens": r.usage.completion_tokens,
        "streamed_chunks": chunks,
        "streamed_text": "".join(pieces),
        "finish_reason": finish,
    }))


if __name__ == "__main__":
    main()
