"""How the memory's numerator M and normaliser z grow along a passkey haystack (docs/passkey.md).

With the delta rule M stays bounded on a repeated haystack (it only corrects what it cannot yet
retrieve), while z, updated as in the linear rule (paper eq. 9), sums sigma(K) over every token and
grows linearly: the memory read sigma(q) M / (sigma(q) z) then shrinks like 1/T unless the
question's features avoid every dimension the haystack writes.

    python benchmarks/memory_growth.py --model runs/passkey-8k --lengths 1K,8K,32K,128K,1M
"""

from __future__ import annotations

import argparse
import json

import torch

from infini_attention.eval.passkey import PasskeyParts, build_prompt, parse_length, prefill
from infini_attention.pretrained import load_pretrained


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="passkey")
    p.add_argument("--lengths", default="1K,8K,32K,128K,1M")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    model, tok = load_pretrained(args.model)
    model.eval()
    parts = PasskeyParts.from_tokenizer(tok)
    rows = []
    for n in (parse_length(s) for s in args.lengths.split(",")):
        prompt = build_prompt(parts, n, "start", "12345", model.config.segment_len)
        state, _, _ = prefill(model, prompt)
        for i, layer in enumerate(state.layers):
            rows.append(
                {
                    "tokens": len(prompt),
                    "layer": i,
                    "M_norm": float(layer.M.norm()),
                    "z_norm": float(layer.z.norm()),
                    "finite": bool(torch.isfinite(layer.M).all() and torch.isfinite(layer.z).all()),
                }
            )
            r = rows[-1]
            print(f"{r['tokens']:>10,} tokens  layer {i}:  |M| {r['M_norm']:10.2f}   |z| {r['z_norm']:12.1f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
