#!/usr/bin/env python3
"""Drives a running `clawrl serve` with the official `openai` package: model list, a chat
completion with log-probs, a streamed one, a session continued through `extra_body`, and the
tool-calling flow (a forced call, streamed and not, the tool's result sent back, the final
answer) with `response_format` and a refused `tool_choice`.
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

    tools_summary = check_tools(client, model)

    print(json.dumps({
        **tools_summary,
        "model": model,
        "completion_tokens": r.usage.completion_tokens,
        "streamed_chunks": chunks,
        "streamed_text": "".join(pieces),
        "finish_reason": finish,
    }))


ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Adds two integers.",
        "parameters": {
            "type": "object",
            "properties": {
                "a": {"type": "integer", "minimum": 0, "maximum": 99},
                "b": {"type": "integer", "minimum": 0, "maximum": 99},
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}


def check_tools(client, model):
    """The SDK's tool-calling flow: call -> tool result -> final answer."""
    question = [{"role": "user", "content": "What is 12 + 30? Use the add tool."}]
    plain = client.chat.completions.create(model=model, messages=question, max_tokens=1)
    r = client.chat.completions.create(
        model=model, messages=question, tools=[ADD], tool_choice="required", max_tokens=128, seed=3,
        parallel_tool_calls=False,
    )
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens, "the tools are not in the prompt"
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls and calls[0].type == "function" and calls[0].function.name == "add", calls
    args = json.loads(calls[0].function.arguments)
    assert set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values()), args

    # Streamed, a named function: the SDK accumulates the call from the deltas.
    streamed_calls, finish = {}, None
    for chunk in client.chat.completions.create(
        model=model, messages=question, tools=[ADD], stream=True, max_tokens=128, seed=4,
        tool_choice={"type": "function", "function": {"name": "add"}},
    ):
        if not chunk.choices:
            continue
        for d in chunk.choices[0].delta.tool_calls or []:
            c = streamed_calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            c["id"] = d.id or c["id"]
            c["name"] += d.function.name or ""
            c["arguments"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and streamed_calls[0]["name"] == "add", (finish, streamed_calls)
    assert streamed_calls[0]["id"].startswith("call_")
    json.loads(streamed_calls[0]["arguments"])

    # The result goes back; the history is replayed without a session id and continues the
    # first call's session.
    result = args["a"] + args["b"]
    follow = question + [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": calls[0].id, "content": str(result)},
    ]
    final = client.chat.completions.create(
        model=model, messages=follow, tools=[ADD], tool_choice="none", max_tokens=8, seed=5,
    )
    assert final.choices[0].message.tool_calls is None
    assert isinstance(final.choices[0].message.content, str)
    first_session = r.model_extra["session_id"]
    assert final.model_extra["session_id"] == first_session, (final.model_extra, first_session)

    # response_format: the answer is JSON under the schema.
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    j = client.chat.completions.create(
        model=model, messages=question, max_tokens=32, seed=6,
        response_format={"type": "json_schema", "json_schema": {"name": "sum", "schema": schema}},
    )
    answer = json.loads(j.choices[0].message.content)
    assert list(answer) == ["answer"] and isinstance(answer["answer"], int), answer

    for bad in (3, "sometimes", {"type": "function", "function": {"name": "sub"}}):
        try:
            client.chat.completions.create(
                model=model, messages=question, tools=[ADD], tool_choice=bad, max_tokens=4,
            )
            raise AssertionError(f"tool_choice {bad!r} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["param"] == "tool_choice", e.body

    return {
        "tool_call": {"name": calls[0].function.name, "arguments": args},
        "tool_session": first_session,
        "json_answer": answer,
    }


if __name__ == "__main__":
    main()
