"""Peak resident memory of one stream, with or without glibc's malloc_trim (Linux/glibc only).

    python benchmarks/rss_trim.py TOKENS plain|trim|keep [EVERY]

Streams TOKENS random tokens through the issue's model (issue_model.py) in chunks of 8 segments and
prints the peak RSS (VmHWM, reset after the warm-up) and tokens/s; "trim" calls malloc_trim(0) after
every EVERY-th chunk (default 1); "keep" raises glibc's thresholds first
(``infini_attention.malloc.keep_freed_memory``, what the CLI does). Run each case in its own
process (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import sys
import time
from pathlib import Path

import torch

from issue_model import VOCAB, N, build_model


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    tokens, mode = int(sys.argv[1]), sys.argv[2]
    every = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    libc = ctypes.CDLL("libc.so.6")
    if mode == "keep":
        from infini_attention.malloc import keep_freed_memory

        assert keep_freed_memory()
    elif mode not in ("plain", "trim"):
        raise SystemExit(f"mode must be plain, trim or keep, got {mode!r}")
    model = build_model(0).eval()
    x = torch.randint(0, VOCAB, (1, 2 * N))
    with torch.no_grad():  # warm-up: every code path once
        model(x, model(x, logits_to_keep=1).state, logits_to_keep=1)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    g = torch.Generator().manual_seed(0)
    state, t0 = None, time.perf_counter()
    with torch.no_grad():
        for i, a in enumerate(range(0, tokens, 8 * N)):
            ids = torch.randint(0, VOCAB, (1, min(8 * N, tokens - a)), generator=g)
            state = model(ids, state, logits_to_keep=1).state
            if mode == "trim" and i % every == every - 1:
                libc.malloc_trim(0)  # hand freed heap pages back to the OS
    label = mode + (f" every {every}" if mode == "trim" else "")
    rate = tokens / (time.perf_counter() - t0)
    print(f"{tokens} {label}: peak {peak_mib():.1f} MiB, {rate:.0f} tok/s")


if __name__ == "__main__":
    main()
