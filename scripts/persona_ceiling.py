#!/usr/bin/env python3
"""How often a persona's phrases appear in answers with and without its correction as a hint.

The student (plain prompt) is what RL can reward; the teacher (prompt + the persona's correction
under the hint marker) is what OPD distils. When even the teacher rarely satisfies the persona,
no amount of training on these signals will. Only `require_any` is checked.

    python3 scripts/persona_ceiling.py crates/clawrl-sim/personas/teacher.toml 12
"""

import json
import subprocess
import sys

import persona_probe


def main() -> None:
    persona_file, n = sys.argv[1], int(sys.argv[2])
    p, phrases = persona_probe.load(persona_file)
    hits = {"student": 0, "teacher": 0}
    for q in persona_probe.first_messages(p, n):
        for who, prompt in (("student", q), ("teacher", persona_probe.hinted(q, p))):
            out = subprocess.run(
                ["cargo", "run", "-q", "--release", "-p", "clawrl", "--",
                 "generate", "--max-tokens", "160", "--json", prompt],
                capture_output=True, text=True, check=True,
            ).stdout
            text = json.loads(out)["text"].lower()
            hits[who] += any(x in text for x in phrases)
    print(json.dumps({"answers": n, "with_a_phrase": hits}))


if __name__ == "__main__":
    main()
