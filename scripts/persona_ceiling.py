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
import tomllib

HINT_MARKER = "[user's hint / instruction]"


def main() -> None:
    persona_file, n = sys.argv[1], int(sys.argv[2])
    tasks = json.load(open("../shared/data/gsm8k-test.json"))
    p = tomllib.load(open(persona_file, "rb"))
    phrases = [x.lower() for x in p["preference"]["require_any"]]
    if not phrases:
        sys.exit("this persona has no require_any phrases to count")
    correction = p["replies"]["correction"]
    hits = {"student": 0, "teacher": 0}
    for i in range(n):
        t = tasks[(i * 7919) % len(tasks)]
        q = p["first_message"].replace("{question}", t["question"])
        q = q.replace("{answer}", t["ground_truth_answer"])
        for who, prompt in (("student", q), ("teacher", f"{q}\n\n{HINT_MARKER}\n{correction}")):
            out = subprocess.run(
                ["cargo", "run", "-q", "--release", "-p", "clawrl-cli", "--",
                 "generate", "--max-tokens", "160", "--json", prompt],
                capture_output=True, text=True, check=True,
            ).stdout
            text = json.loads(out)["text"].lower()
            hits[who] += any(x in text for x in phrases)
    print(json.dumps({"answers": n, "with_a_phrase": hits}))


if __name__ == "__main__":
    main()
