"""Op benchmark: the fast Infini-attention op against the naive reference and full causal SDPA.

Times forward + backward (``sum(out * cotangent)``, gradients into q, k, v and beta) of

- ``fast``:  :func:`infini_attention.infini_attention` (segments batched, closed-form memory),
- ``naive``: :func:`infini_attention.infini_attention_naive` (the paper, one segment at a time),
- ``full``:  ``F.scaled_dot_product_attention(..., is_causal=True)`` over the whole input, the
  quadratic baseline the memory is meant to replace (same B, H, Hkv, Dk, Dv; layout [B, H, T, D]),
- ``compiled`` (with ``--compile``): the fast op under ``torch.compile(dynamic=False)``, which
  fuses its element-wise work (sigma, the gate's mix, the re-layouts around SDPA); compiled
  once per shape before timing, so the compile time is not in the figures (it is printed).

All three run side by side in one process with the same thread count. Each implementation is
warmed up once, then every repeat runs all of them back to back (the order rotates from one
repeat to the next) so machine noise hits them alike; the reported figure is the median.
Before any timing, each case checks the fast op against the naive one (outputs and gradients),
so a wrong op is never timed. Full attention does not depend on N or the update rule; it is
timed once per T (per repeat) and shown on every row with that T.

Run from the repository root::

    python benchmarks/op_bench.py                       # the spec's cases: T = 4K, 16K; N = 512
    python benchmarks/op_bench.py --T 32768 --N 2048 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from infini_attention import infini_attention, infini_attention_naive

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
# default pass/fail bound on |fast - naive| (outputs and gradients), per compute dtype
DEFAULT_ATOL = {torch.float64: 1e-8, torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 1e-2}


DEF = " (default: %(default)s)"  # argparse fills in each option's default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--T", type=int, nargs="+", default=[4096, 16384], help="sequence lengths in tokens" + DEF)
    p.add_argument(
        "--N", type=int, nargs="+", default=[512], help="segment lengths N of the Infini ops" + DEF
    )
    p.add_argument(
        "--update",
        nargs="+",
        choices=["linear", "delta"],
        default=["linear", "delta"],
        help="memory update rules to time" + DEF,
    )
    p.add_argument(
        "--overlap",
        type=int,
        nargs="+",
        default=[0],
        help="local-overlap W of the Infini ops (0: the paper; W > 0 sees the previous segment's last W)"
        + DEF,
    )
    p.add_argument("--batch", type=int, default=1, help="batch size B" + DEF)
    p.add_argument("--heads", type=int, default=8, help="query heads H" + DEF)
    p.add_argument(
        "--kv-heads", type=int, default=None, help="key/value heads Hkv (default: same as --heads)"
    )
    p.add_argument("--dk", type=int, default=64, help="key/query head dim Dk" + DEF)
    p.add_argument("--dv", type=int, default=64, help="value head dim Dv" + DEF)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="compute dtype" + DEF)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda" + DEF)
    p.add_argument(
        "--repeats", type=int, default=3, help="timed runs per implementation, median reported" + DEF
    )
    p.add_argument(
        "--skip-naive-above",
        type=int,
        default=16384,
        help="do not time the naive op when T exceeds this, its cost grows faster than T "
        "(default: %(default)s); the correctness check still runs its forward pass",
    )
    p.add_argument("--no-full", action="store_true", help="do not time full causal SDPA over the whole input")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the fast op under torch.compile (checked against naive like the fast op; "
        "needs a C++ compiler on CPU)",
    )
    p.add_argument(
        "--atol",
        type=float,
        default=None,
        help="max allowed |fast - naive| on outputs and gradients, relative to max(1, max|naive|) "
        "(default depends on --dtype)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="call torch.set_num_threads(THREADS) (default: torch's choice)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for inputs and cotangents" + DEF)
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="raise glibc's mmap/trim thresholds first (infini_attention.malloc, as the infini CLI "
        "does): large buffers are reused instead of page-faulted in anew; applies to every "
        "implementation timed",
    )
    p.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write results, raw runs and machine info to this JSON file",
    )
    args = p.parse_args(argv)
    if args.kv_heads is None:
        args.kv_heads = args.heads
    if args.heads % args.kv_heads:
        p.error(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    info = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "device": str(device),
        "loadavg_1_5_15_at_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def make_randn(args: argparse.Namespace, seed: int, device: torch.device) -> Callable[..., torch.Tensor]:
    """Seeded standard-normal leaf tensors (drawn in float32 on the CPU, so every device and
    dtype sees the same values) that require grad."""
    g = torch.Generator().manual_seed(seed)
    dtype = DTYPES[args.dtype]

    def randn(*shape: int) -> torch.Tensor:
        x = torch.randn(*shape, generator=g, dtype=torch.float32)
        return x.to(device=device, dtype=dtype).requires_grad_()

    return randn


class FullAttention:
    """Causal softmax attention over the whole input, layout [B, heads, T, D] (its best case)."""

    def __init__(self, args: argparse.Namespace, T: int, device: torch.device):
        randn = make_randn(args, args.seed + 1_000_003 * T + 1, device)
        B, H, Hkv, Dk, Dv = args.batch, args.heads, args.kv_heads, args.dk, args.dv
        self.q, self.k, self.v = randn(B, H, T, Dk), randn(B, Hkv, T, Dk), randn(B, Hkv, T, Dv)
        self.cot = randn(B, H, T, Dv).detach()
        self.gqa = Hkv != H

    def __call__(self) -> torch.Tensor:
        for t in (self.q, self.k, self.v):
            t.grad = None
        out = F.scaled_dot_product_attention(self.q, self.k, self.v, is_causal=True, enable_gqa=self.gqa)
        (out * self.cot).sum().backward()
        return out


class Case:
    """Inputs, cotangent and the fast / naive fwd+bwd closures for one (T, N, update)."""

    def __init__(
        self, args: argparse.Namespace, T: int, N: int, update: str, device: torch.device, overlap: int = 0
    ):
        randn = make_randn(args, args.seed + 1_000_003 * T, device)
        B, H, Hkv, Dk, Dv = args.batch, args.heads, args.kv_heads, args.dk, args.dv
        self.T, self.N, self.update, self.overlap = T, N, update, overlap
        self.options = dict(segment_len=N, update=update, overlap=overlap)  # the op's keyword arguments
        # Infini ops: [B, T, heads, D]
        self.q, self.k, self.v = randn(B, T, H, Dk), randn(B, T, Hkv, Dk), randn(B, T, Hkv, Dv)
        self.beta = randn(H)
        self.cot = randn(B, T, H, Dv).detach()
        self.times: dict[str, list[float]] = {"fast": [], "naive": [], "compiled": []}
        self.check_result: dict = {}
        self.compiled_check: dict = {}

    def _infini(self, op: Callable) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            for t in (self.q, self.k, self.v, self.beta):
                t.grad = None
            out, _ = op(self.q, self.k, self.v, self.beta, **self.options)
            (out * self.cot).sum().backward()
            return out

        return run

    def fast(self) -> torch.Tensor:
        return self._infini(infini_attention)()

    def naive(self) -> torch.Tensor:
        return self._infini(infini_attention_naive)()

    def compiled(self) -> torch.Tensor:
        return self._infini(compiled_op())()

    def grads(self) -> list[torch.Tensor]:
        return [t.grad.detach().clone() for t in (self.q, self.k, self.v, self.beta)]

    def check(self, atol: float, run_naive_backward: bool, impl: str = "fast") -> dict:
        """``impl`` (fast or compiled) vs naive: max |diff| of outputs (and of gradients when the
        naive backward runs).

        A tensor passes when ``max|fast - naive| <= atol * max(1, max|naive|)``, so large
        gradient sums (beta's gathers B*T*Dv terms) are judged relative to their size."""
        out_fast = getattr(self, impl)().detach()
        g_fast = self.grads()
        if run_naive_backward:
            out_naive = self.naive().detach()
            g_naive = self.grads()
            pairs = list(zip(g_fast, g_naive, strict=True))
        else:
            with torch.no_grad():
                out_naive, _ = infini_attention_naive(self.q, self.k, self.v, self.beta, **self.options)
            pairs = []
        diffs = [(a - b).abs().max().item() for a, b in pairs]
        grad_diff = max(diffs) if diffs else None
        pairs.append((out_fast, out_naive.detach()))
        out_diff = (out_fast - out_naive).abs().max().item()
        ok = all(
            math.isfinite(d) and d <= atol * max(1.0, b.abs().max().item())
            for d, (_, b) in zip([*diffs, out_diff], pairs, strict=True)
        )
        return {"out_max_abs_diff": out_diff, "grad_max_abs_diff": grad_diff, "ok": ok}


@functools.cache
def compiled_op() -> Callable:
    """``torch.compile(infini_attention)``, made once (each new shape compiles anew inside it)."""
    return torch.compile(infini_attention, dynamic=False)


def busy_cpu_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine so far (all cores, Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def others_cpu_seconds(busy_start: float | None, own_start: float) -> float | None:
    """CPU seconds used by other processes since the two readings: a contention gauge."""
    busy = busy_cpu_seconds()
    if busy is None or busy_start is None:
        return None
    return max(0.0, busy - busy_start - (time.process_time() - own_start))


def time_once(fn: Callable[[], torch.Tensor], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return (time.perf_counter() - start) * 1e3  # ms


def interleave(jobs: dict, repeats: int, device: torch.device | str) -> dict[object, list[float]]:
    """One untimed warm-up of each job, then ``repeats`` rounds timing each once (ms), the order
    rotating per round, so that no job always runs first (after a pause) or right after another."""
    device = torch.device(device)
    for fn in jobs.values():
        fn()
    keys, times = list(jobs), {k: [] for k in jobs}
    for rep in range(repeats):
        shift = rep % len(keys)
        for key in keys[shift:] + keys[:shift]:
            times[key].append(time_once(jobs[key], device))
    return times


def fmt_ms(x: float | None) -> str:
    return "skipped" if x is None else f"{x:,.1f}"


def fmt_speedup(num: float | None, den: float | None) -> str:
    return "-" if num is None or den is None else f"{num / den:.1f}x"


def check_or_refuse(c: Case, impl: str, atol: float, run_naive_backward: bool, label: str) -> dict:
    """``c.check`` for ``impl`` (fast or compiled), printed; stops the run if it fails."""
    chk = c.check(atol, run_naive_backward=run_naive_backward, impl=impl)
    grad = "fwd only" if chk["grad_max_abs_diff"] is None else f"{chk['grad_max_abs_diff']:.2e}"
    print(
        f"{label} N={c.N} {c.update} W={c.overlap}: "
        f"max|{impl}-naive| out {chk['out_max_abs_diff']:.2e}, "
        f"grads {grad} -> {'ok' if chk['ok'] else 'FAIL'}",
        flush=True,
    )
    if not chk["ok"]:
        raise SystemExit(f"{impl} op disagrees with naive beyond atol={atol}; refusing to time it")
    return chk


def bench_T(args: argparse.Namespace, T: int, device: torch.device, atol: float) -> list[dict]:
    """All (N, update) cases at one T, timed interleaved together with full attention."""
    time_naive = T <= args.skip_naive_above  # noqa: SIM300 (T is the sequence length)
    cases = [Case(args, T, N, u, device, W) for N in args.N for u in args.update for W in args.overlap]

    # correctness first (this also warms up fast, and naive when it is timed)
    for c in cases:
        c.check_result = check_or_refuse(c, "fast", atol, time_naive, f"check T={T}")
        if args.compile:
            t0 = time.perf_counter()
            c.compiled()  # compiles for this shape, forward and backward
            label = f"check T={T} compiled ({time.perf_counter() - t0:.0f} s to compile)"
            c.compiled_check = check_or_refuse(c, "compiled", atol, time_naive, label)

    # the runs of one repeat, in a fixed order that rotates between repeats
    jobs: list[tuple[Callable[[], torch.Tensor], list[float]]] = []
    for c in cases:
        jobs.append((c.fast, c.times["fast"]))
        if time_naive:
            jobs.append((c.naive, c.times["naive"]))
        if args.compile:
            jobs.append((c.compiled, c.times["compiled"]))
    full_times: list[float] = []
    if not args.no_full:
        full = FullAttention(args, T, device)
        full()  # warm-up
        jobs.append((full, full_times))
    others: list[float | None] = []
    for rep in range(args.repeats):
        shift = rep % len(jobs)
        busy0, own0, wall0 = busy_cpu_seconds(), time.process_time(), time.perf_counter()
        for fn, store in jobs[shift:] + jobs[:shift]:
            store.append(time_once(fn, device))
        others.append(others_cpu_seconds(busy0, own0))
        gauge = "" if others[-1] is None else f"; other processes used {others[-1]:.1f} CPU-s"
        print(
            f"  T={T} repeat {rep + 1}/{args.repeats}: {time.perf_counter() - wall0:.1f} s wall{gauge}",
            flush=True,
        )

    full_ms = statistics.median(full_times) if full_times else None
    rows = []
    for c in cases:
        rows.append(
            {
                "T": T,
                "N": c.N,
                "update": c.update,
                "overlap": c.overlap,
                "fast_ms": statistics.median(c.times["fast"]),
                "naive_ms": statistics.median(c.times["naive"]) if c.times["naive"] else None,
                "compiled_ms": statistics.median(c.times["compiled"]) if c.times["compiled"] else None,
                "full_ms": full_ms,
                "check": c.check_result,
                "compiled_check": c.compiled_check,
                "times_ms": {**c.times, "full": full_times},
                "others_cpu_s_per_repeat": others,
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    compiled = any(r.get("compiled_ms") is not None for r in rows)
    head = "| T | N | update | W | fast ms | naive ms | full-SDPA ms | speedup vs naive | speedup vs full |"
    rule = "|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    if compiled:
        head += " compiled ms | compiled vs full |"
        rule += "---:|---:|"
    lines = [head, rule]
    for r in rows:
        line = (
            f"| {r['T']} | {r['N']} | {r['update']} | {r.get('overlap', 0)} | {fmt_ms(r['fast_ms'])} "
            f"| {fmt_ms(r['naive_ms'])} "
            f"| {fmt_ms(r['full_ms'])} | {fmt_speedup(r['naive_ms'], r['fast_ms'])} "
            f"| {fmt_speedup(r['full_ms'], r['fast_ms'])} |"
        )
        if compiled:
            line += f" {fmt_ms(r.get('compiled_ms'))} | {fmt_speedup(r['full_ms'], r.get('compiled_ms'))} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from infini_attention.malloc import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("--keep-freed-memory needs glibc (Linux)")
    dtype = DTYPES[args.dtype]
    atol = args.atol if args.atol is not None else DEFAULT_ATOL[dtype]
    info = machine_info(device)
    info["keep_freed_memory"] = args.keep_freed_memory
    print(
        f"torch {info['torch']} | device {info['device']}"
        + (f" ({info['gpu']})" if "gpu" in info else "")
        + f" | cpu {info['cpu_model']} | torch.get_num_threads() = {info['threads']} | {info['date_utc']}"
    )
    print("load average at start (1/5/15 min): " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(
        f"B={args.batch} H={args.heads} Hkv={args.kv_heads} Dk={args.dk} Dv={args.dv} {args.dtype}; "
        f"forward+backward, median of {args.repeats} after 1 warm-up; "
        f"naive timed for T <= {args.skip_naive_above}"
        + ("; glibc thresholds raised (--keep-freed-memory)" if args.keep_freed_memory else ""),
        flush=True,
    )

    rows: list[dict] = []
    for T in args.T:
        rows.extend(bench_T(args, T, device, atol))
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print()
    print(table(rows))
    end_load = list(os.getloadavg())
    print("\nload average at end (1/5/15 min): " + " ".join(f"{x:.2f}" for x in end_load))
    info["loadavg_1_5_15_at_end"] = end_load
    if args.json:
        config = {k: v for k, v in vars(args).items() if k != "json"}
        with open(args.json, "w") as f:
            json.dump({"machine": info, "config": config, "atol": atol, "results": rows}, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
