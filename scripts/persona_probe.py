"""What the persona probes share: a persona file, its required phrases and its first messages.

Imported by `persona_ceiling.py`, `opd_support.py` and `first_token.py` (run them from the project
root).
"""

import json
import sys
import tomllib
from collections.abc import Iterator

HINT_MARKER = "[user's hint / instruction]"


def load_persona(persona_file: str) -> dict:
    """The persona file, parsed."""
    with open(persona_file, "rb") as f:
        return tomllib.load(f)


def load(persona_file: str) -> tuple[dict, list[str]]:
    """The persona and its `require_any` phrases, lower-cased; exits when it has none."""
    p = load_persona(persona_file)
    phrases = [x.lower() for x in p["preference"].get("require_any", [])]
    if not phrases:
        sys.exit("this persona has no require_any phrases")
    return p, phrases


def first_messages(p: dict, n: int) -> Iterator[str]:
    """The persona's first message over n tasks spread through the shared set (a fixed stride)."""
    tasks = json.load(open("../shared/data/gsm8k-test.json"))
    for i in range(n):
        t = tasks[(i * 7919) % len(tasks)]
        q = p["first_message"].replace("{question}", t["question"])
        yield q.replace("{answer}", t["ground_truth_answer"])


def hinted(q: str, p: dict) -> str:
    """The teacher's prompt: the message with the persona's correction as the hint (§2)."""
    return f"{q}\n\n{HINT_MARKER}\n{p['replies']['correction']}"
