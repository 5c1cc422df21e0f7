"""How large the compressive memory grows over one passkey prompt: the largest |M| (Frobenius norm,
max over heads) of every layer after chosen numbers of written segments.

    python benchmarks/memory_growth.py --model runs/passkey4-stage1 --length 65536 \
        --after 8,16,64,128,256,511

The prompt is the evaluation's (key at the start band's middle, key 12345), streamed one segment
per call. The paper's rules grow M like the stream (their reads divide by z, which grows too);
the deltanet rule (no z) is meant to stay bounded (docs/passkey.md, "A bounded memory"). For a
model with learned write strengths (``write_strength``, not in the paper) it also prints their
mean per layer over the key's tokens and over every other streamed token.
"""

from __future__ import annotations

import argparse
import sys

import torch

from infini_attention import load_pretrained
from infini_attention.eval import passkey as P


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint or run folder, or a shipped name")
    p.add_argument("--length", type=P.parse_length, default=65536, help="prompt length in tokens (e.g. 64K)")
    p.add_argument("--after", default="8,16,64,128,256,511", help="comma-separated written-segment counts")
    args = p.parse_args(argv)
    try:
        marks = sorted({int(a) for a in args.after.split(",")})
    except ValueError:
        print(f"error: --after must be comma-separated integers, got {args.after!r}", file=sys.stderr)
        return 2
    model, tokenizer = load_pretrained(args.model)
    model.eval()
    N = model.config.segment_len
    if marks[0] < 1 or marks[-1] * N > args.length:
        limit = args.length // N
        print(f"error: --after must lie in 1..{limit} for a {args.length}-token prompt", file=sys.stderr)
        return 2
    parts = P.PasskeyParts.from_tokenizer(tokenizer)
    prompt = P.build_prompt(parts, args.length, "start", "12345", N)
    state = model.init_state(1)
    rows = []
    strengths = _WriteStrengths(model) if model.config.write_strength else None
    with torch.no_grad():
        for s in range(marks[-1]):
            ids = torch.from_numpy(prompt.slice(s * N, (s + 1) * N))[None]
            if strengths is not None:
                pos = s * N + torch.arange(N)  # [N] prompt positions of this segment
                strengths.on_key = (prompt.key_start <= pos) & (pos < prompt.key_end)
            state = model(ids, state, logits_to_keep=1).state
            if s + 1 in marks:
                rows.append((s + 1, [round(float(ls.M.norm(dim=(-2, -1)).max()), 2) for ls in state.layers]))
    print(f"{args.model} ({args.length}-token prompt, update {model.config.update}): largest |M| per layer")
    for n, norms in rows:
        print(f"  after {n:>5} segments: " + "  ".join(f"{x:>10.2f}" for x in norms))
    if strengths is not None:
        print("mean write strength per layer (key tokens / all other tokens):")
        print("  " + "  ".join(f"{k:.3f} / {o:.3f}" for k, o in strengths.means()))
    return 0


class _WriteStrengths:
    """Sums sigmoid(write_proj(x)) of every layer, split into the key's tokens and the rest."""

    def __init__(self, model) -> None:
        self.on_key = None  # [N] bool for the segment being streamed
        self.sums = [[0.0, 0, 0.0, 0] for _ in model.blocks]  # key sum, key count, other sum, other count
        for i, block in enumerate(model.blocks):
            block.attn.write_proj.register_forward_hook(self._hook(i))

    def _hook(self, i: int):
        def record(_module, _inputs, out) -> None:
            w = torch.sigmoid(out[0]).mean(dim=-1)  # [n]: mean over key/value heads
            key = self.on_key[: w.shape[0]]
            acc = self.sums[i]
            acc[0] += float(w[key].sum())
            acc[1] += int(key.sum())
            acc[2] += float(w[~key].sum())
            acc[3] += int((~key).sum())

        return record

    def means(self) -> list[tuple[float, float]]:
        return [(ks / max(kn, 1), os / max(on, 1)) for ks, kn, os, on in self.sums]


if __name__ == "__main__":
    sys.exit(main())
