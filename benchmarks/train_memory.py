"""Peak resident memory and time of one long training row under each malloc policy.

One forward + backward over a single row of random tokens with the loss on its last 7 (a passkey
row's answer), full BPTT with per-segment checkpointing, as `infini train` does for the passkey
stages. Run each policy in its own process (peak RSS is per process):

    for m in keep system release; do
      python benchmarks/train_memory.py --model passkey --tokens 65536 --malloc $m
    done
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from infini_attention import malloc
from infini_attention.pretrained import load_pretrained


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="passkey", help="checkpoint folder or shipped name")
    p.add_argument("--tokens", type=int, default=65536, help="tokens in the row")
    p.add_argument("--malloc", choices=malloc.MODES, default="keep", help="glibc policy (INFINI_MALLOC's)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="append the result as one JSON line")
    args = p.parse_args()
    if not malloc.apply(args.malloc) and args.malloc != "system":
        raise SystemExit(f"--malloc {args.malloc} needs glibc (Linux)")
    model, _ = load_pretrained(args.model)
    model.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens), generator=gen)
    labels = torch.full_like(ids, -100)
    labels[0, -7:] = ids[0, -7:]
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = model(ids, None, labels, checkpoint_segments=True, logits_to_keep=7)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        del out
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "model": args.model,
        "tokens": args.tokens,
        "segment_len": model.config.segment_len,
        "malloc": args.malloc,
        "threads": torch.get_num_threads(),
        "step_s_median": statistics.median(times),
        "step_s": times,
        "peak_rss_mb": peak_mb,
    }
    print(
        f"{args.tokens:,} tokens, malloc={args.malloc}, {row['threads']} threads: "
        f"step {row['step_s_median']:.2f} s (median of {args.repeats}), peak RSS {peak_mb:,.0f} MB"
    )
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
