#!/usr/bin/env python3
"""Whether a persona's phrases can be reached by top-k OPD: are their first words in the support?

Top-k OPD (DESIGN.md §2) moves probability only among S_i = top-k of the student at each
response position. A phrase the persona requires can be raised only where its first word is in
S_i. For N of the persona's tasks this samples the student's answer (as the simulation does:
temperature 0.7, 160 tokens), scores it under the plain prompt (student) and under the prompt
with the persona's correction as the hint (teacher, the rules judge's hint), and counts the
response positions whose top-k holds the first word of a required phrase, for k = 4 and 16.

    python3 scripts/opd_support.py crates/clawrl-sim/personas/teacher.toml 12

Needs the release binary (`cargo build --release -p clawrl`) and the fetched model.
"""

import json
import math
import os
import subprocess
import sys

import persona_probe

CLAWRL = "target/release/clawrl"


def run(args: list[str], stdin: str | None = None) -> dict:
    out = subprocess.run([CLAWRL, *args], input=stdin, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def first_token_ids(phrases: list[str]) -> set[int]:
    """Token ids that open a phrase: capitalised or not, after a space or not."""
    ids = set()
    for p in phrases:
        w = p.split()[0]
        for v in (w, w.capitalize(), " " + w, " " + w.capitalize()):
            r = run(["score", "-"], json.dumps({"raw_prompts": ["x"], "response": v, "top_k": 1}))
            ids.add(r["response_ids"][0])
    return ids


def main() -> None:
    persona_file, n = sys.argv[1], int(sys.argv[2])
    if not os.access(CLAWRL, os.X_OK):
        sys.exit(f"{CLAWRL} is missing: cargo build --release -p clawrl")
    p, phrases = persona_probe.load(persona_file)
    warm = first_token_ids(phrases)
    positions = 0
    # Positions where a phrase's first word is in: the student's top-4, its top-16, the
    # teacher's top-4, the teacher's top-1; and the probability of those words (where they are
    # in the top-16 that `clawrl score` returns) under the teacher and the student.
    in_q4 = in_q16 = in_p4 = 0
    top1_p: list[int] = []  # response positions where the teacher's top-1 opens a phrase
    p_teacher = p_student = 0.0
    for i, q in enumerate(persona_probe.first_messages(p, n)):
        g = run(["generate", "--json", "--max-tokens", "160", "--seed", str(i), q])
        req = {
            "prompts": [
                [{"role": "user", "content": q}],
                [{"role": "user", "content": persona_probe.hinted(q, p)}],
            ],
            "response_ids": g["token_ids"],
            "top_k": 16,
        }
        student, teacher = run(["score", "-"], json.dumps(req))["scores"]
        for pos, (s, te) in enumerate(zip(student["top_logprobs"], teacher["top_logprobs"])):
            positions += 1
            sq = [tok for tok, _ in s]
            sp = [tok for tok, _ in te]
            in_q4 += bool(warm & set(sq[:4]))
            in_q16 += bool(warm & set(sq))
            in_p4 += bool(warm & set(sp[:4]))
            if sp[0] in warm:
                top1_p.append(pos)
            p_student += sum(math.exp(lp) for tok, lp in s if tok in warm)
            p_teacher += sum(math.exp(lp) for tok, lp in te if tok in warm)
    print(json.dumps({
        "answers": n,
        "positions": positions,
        "phrase_start_in_student_top4": in_q4,
        "phrase_start_in_student_top16": in_q16,
        "phrase_start_in_teacher_top4": in_p4,
        "phrase_start_teacher_top1_at_positions": top1_p,
        "mean_p_phrase_start_student_top16": p_student / max(positions, 1),
        "mean_p_phrase_start_teacher_top16": p_teacher / max(positions, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
