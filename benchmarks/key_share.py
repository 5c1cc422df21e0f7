"""How much of each answer token's memory read comes from the key sentence, by prompt length.

For a passkey prompt with the answer appended (teacher-forced), ``eval.memory_read.read_shares``
gives, at every position that predicts an answer token, each layer's and head's share of the memory
read on the key sentence's tokens, and on a filler block of the same size just before it (for
scale): ``share = sigma(q) . sum_{t in span} sigma(k_t) / sigma(q) . z``. A share falling like
1 / length means the haystack's many blocks outweigh the key however well the query matches it:
dilution, not a numerical fault (docs/passkey.md).

    python benchmarks/key_share.py --model passkey --lengths 8K,160000,1000000
"""

from __future__ import annotations

import argparse
import json

import torch

from infini_attention.data.passkey_task import answer_ids
from infini_attention.eval.memory_read import read_shares
from infini_attention.eval.passkey import PasskeyParts, build_prompt, parse_length
from infini_attention.pretrained import load_pretrained


def key_share(model, parts: PasskeyParts, length: int, position: str, key: str = "12345") -> list[dict]:
    """read_shares rows for one prompt, at the positions that predict the answer's tokens."""
    prompt = build_prompt(parts, length, position, key, model.config.segment_len)
    answer = list(answer_ids(parts, key))
    ids = torch.cat([prompt.ids(), torch.tensor(answer)])  # 8 bytes a token: 8 MB at 1M
    a, b = prompt.key_start, prompt.key_end
    first = len(prompt) - 1  # the question's last token predicts the answer's first
    rows = read_shares(
        model, ids, {"key": (a, b), "filler": (max(0, 2 * a - b), a)}, range(first, first + len(answer))
    )
    for r in rows:
        r["tokens"] = len(prompt)
        r["target"] = parts.tokenizer.decode([answer[r["position"] - first]])
    return rows


def weakest_digit(rows: list[dict]) -> tuple[float, str]:
    """The key share of the answer digit read worst, each digit taking its best head: heads may
    split the digits between them, so one head's weakest digit can understate the read."""
    best: dict[int, float] = {}
    for r in rows:
        if r["target"].strip().isdigit():
            best[r["position"]] = max(best.get(r["position"], 0.0), r["key_share"])
    position = min(best, key=best.get)
    return best[position], next(r["target"] for r in rows if r["position"] == position)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="passkey")
    p.add_argument("--lengths", default="8K,160000,1000000")
    p.add_argument("--position", default="start", choices=["start", "middle"])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    model, tok = load_pretrained(args.model)
    parts = PasskeyParts.from_tokenizer(tok)
    rows = []
    print("share of the memory read on the key sentence (on a same-sized filler block), per answer token")
    for n in (parse_length(s) for s in args.lengths.split(",")):
        got = key_share(model, parts, n, args.position)
        rows += got
        heads = sorted({(r["layer"], r["head"]) for r in got})
        targets = [r["target"] for r in got if (r["layer"], r["head"]) == heads[0]]
        print(f"\n{got[0]['tokens']:,} tokens, key at the {args.position}; answer tokens {targets}")
        for layer, head in heads:
            mine = [r for r in got if (r["layer"], r["head"]) == (layer, head)]
            cells = "  ".join(f"{r['key_share']:.3f} ({r['filler_share']:.0e})" for r in mine)
            print(f"  layer {layer} head {head} (gate {mine[0]['gate']:.2f}): {cells}")
        share, digit = weakest_digit(got)
        print(f"  weakest digit, best head each: {share:.3f} (answer digit {digit.strip()!r})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
