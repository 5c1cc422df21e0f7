"""Passkey retrieval when a segment boundary falls inside the answer, by where it falls.

Each prompt is the evaluation's (``build_prompt``), shortened by whole filler blocks
(``data.passkey_task.crossing_prompt``) so that the boundary comes after 1..6 of the answer's 7
tokens (``' '``, five digits, ``'.'``); greedy decoding and exact match as in ``infini eval
passkey``. The tokens after the boundary are predicted with the question and the answer's start
only in the memory (docs/passkey.md).

    python benchmarks/boundary_crossing.py --model passkey --length 32K --trials 10
"""

from __future__ import annotations

import argparse
import json
import random

from infini_attention.data.passkey_task import crossing_prompt
from infini_attention.eval.passkey import PasskeyParts, build_prompt, parse_length, run_trial
from infini_attention.pretrained import load_pretrained


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="passkey")
    p.add_argument("--length", default="32K")
    p.add_argument("--position", default="start", choices=["start", "middle", "end"])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    model, tok = load_pretrained(args.model)
    parts = PasskeyParts.from_tokenizer(tok)
    N, L = model.config.segment_len, parse_length(args.length)
    rows = []
    for before in range(1, 7):  # answer tokens before the boundary
        correct = 0
        for t in range(args.trials):
            rng = random.Random(f"crossing-{L}-{args.position}-{before}-{t}")
            key = str(rng.randint(10000, 99999))
            prompt = crossing_prompt(build_prompt(parts, L, args.position, key, N, rng), before, N)
            r = run_trial(model, parts, prompt)
            correct += r["correct"]
            kept = {k: r[k] for k in ("key", "output", "correct", "prompt_tokens")}
            rows.append({"before": before, **kept})
        print(f"boundary after {before} answer token(s): {correct}/{args.trials}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            out = {"model": args.model, "length": L, "position": args.position, "trials": rows}
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
