"""Training-step throughput of a checkpoint at several segment lengths (tokens/s, forward + backward).

For a converted LLM on a CPU, e.g.:
    python benchmarks/train_step.py --model runs/smollm2-256 --tokens 2048 --segment-lens 2048 512 256
Each case runs one untimed warm-up step and then ``--repeats`` timed ones (the median is printed),
on random token ids, batch 1, float32, full BPTT.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from infini_attention import InfiniTransformer, load_pretrained


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="checkpoint folder or shipped name")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step (batch 1)")
    p.add_argument("--segment-lens", type=int, nargs="+", default=[2048, 512, 256])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="raise glibc's mmap/trim thresholds first (infini_attention.malloc, as the infini CLI does)",
    )
    args = p.parse_args()
    if args.keep_freed_memory:
        from infini_attention.malloc import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("--keep-freed-memory needs glibc (Linux)")
    base, _ = load_pretrained(args.model)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.tokens} tokens per step")
    for N in args.segment_lens:
        model = InfiniTransformer(dataclasses.replace(base.config, segment_len=N))
        model.load_state_dict(base.state_dict())
        model.train()
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, base.config.vocab_size, (1, args.tokens), generator=g)
        times = []
        for i in range(args.repeats + 1):
            t0 = time.perf_counter()
            model(ids, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)
            if i:  # the first step warms up
                times.append(time.perf_counter() - t0)
        dt = statistics.median(times)
        print(f"N={N:5d}: {dt:6.1f} s per step, {args.tokens / dt:7.0f} tokens/s", flush=True)


if __name__ == "__main__":
    main()
