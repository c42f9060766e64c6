#!/usr/bin/env python3
"""How far the hinted teacher can pull a persona's opening word into the first answer.

A preference about how an answer *opens* (answer-first's `Answer:`, the teacher's `Great job`)
is decided at the first response position. OPD and the forward KL move the student toward the
hinted teacher π_T(·|s ⊕ h) (DESIGN.md §2), so the teacher's probability of the opening token
there is the most that distillation can give it. For N of the persona's tasks this scores the
opening (argument 3) as the response under the plain prompt (student) and under the prompt with
the persona's correction as the hint (teacher), and prints, per task and on average, the first
token's log-probability and its rank in the top-16 of each.

    python3 scripts/first_token.py crates/clawrl-sim/personas/answer-first.toml 8 "Answer: 1"

Needs the release binary (`cargo build --release -p clawrl`) and the fetched model.
"""

import json
import math
import os
import subprocess
import sys

import persona_probe

CLAWRL = "target/release/clawrl"


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    persona_file, n, opening = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if not os.access(CLAWRL, os.X_OK):
        sys.exit(f"{CLAWRL} is missing: cargo build --release -p clawrl")
    p = persona_probe.load_persona(persona_file)
    rows = []
    for q in persona_probe.first_messages(p, n):
        req = {
            "prompts": [
                [{"role": "user", "content": q}],
                [{"role": "user", "content": persona_probe.hinted(q, p)}],
            ],
            "response": opening,
            "top_k": 16,
        }
        out = subprocess.run(
            [CLAWRL, "score", "-"], input=json.dumps(req), capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout)
        first = r["response_ids"][0]
        row = {}
        for who, s in zip(("student", "teacher"), r["scores"]):
            top = [tok for tok, _ in s["top_logprobs"][0]]
            row[who] = {
                "logprob": round(s["logprobs"][0], 2),
                "rank": top.index(first) + 1 if first in top else None,  # None: below 16
            }
        rows.append(row)
    mean = lambda who: sum(math.exp(r[who]["logprob"]) for r in rows) / len(rows)
    print(json.dumps({
        "opening": opening,
        "tasks": rows,
        "mean_p_student": mean("student"),
        "mean_p_teacher": mean("teacher"),
        "in_teacher_top4": sum(1 for r in rows if (r["teacher"]["rank"] or 99) <= 4),
        "in_teacher_top16": sum(1 for r in rows if r["teacher"]["rank"] is not None),
    }, indent=1))


if __name__ == "__main__":
    main()
