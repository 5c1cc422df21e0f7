"""Memory, decode latency and efficiency of the model on long streams (benchmarks 3-5 of the issue).

The model is the size used by ``benchmarks/peer_bench.py``: vocab 256, d_model 256, 4 layers,
4 heads of 64, segment length N = 512, delta rule, SwiGLU ``d_ff`` 684; random init, float32,
batch 1, random token ids (generated chunk by chunk, so the ids of a long stream are never all
in memory at once). From the repository root:

    python benchmarks/perf.py all --json docs/results/perf/perf_cpu.json \
        --markdown docs/results/perf/perf_cpu.md

Subcommands (``all`` runs the three in turn and writes one JSON and one markdown file):

* ``memory``: peak resident memory of streaming inference over each of ``--memory-tokens``
  (default 16K, 128K, 1M), each in a fresh process (this script in its ``worker`` mode). The
  worker builds the model, runs two 1,024-token calls (so lazily loaded kernels are resident),
  reads the RSS, resets the peak (Linux: ``/proc/self/clear_refs`` <- 5), then feeds the stream
  ``--chunk-segments`` segments per call, ``model(chunk, state, logits_to_keep=1)`` under
  ``torch.no_grad()``, as ``stream_generate`` prefills a prompt. The peak reported is ``VmHWM``
  at the end (everything resident while streaming, torch and the model included); it also
  records ``getrusage(RUSAGE_SELF).ru_maxrss``, which on Linux carries the parent's peak into a
  child started by fork/vfork + exec and so is not used, and the bytes of the final state.
  Target: the peak at the longest length <= 1.1x the peak at the shortest.
* ``decode``: median latency of a single-token decode step ``model(tok, state,
  logits_to_keep=1)`` after ``--decode-short`` (1K) and ``--decode-long`` (1M) tokens of
  context. Both contexts are multiples of N, so each measurement starts right after a segment
  boundary with an empty open segment: decode cost grows with the open segment's fill (its
  keys and values, up to N - 1 tokens), and only equal offsets make the two comparable. One
  process prefills the long context and keeps the state it had after the short one (the state
  is immutable, so both can be continued from); then ``--decode-repeats`` rounds each time
  ``--decode-steps`` steps from the short state and the same from the long one, interleaved.
  To save a second 1M-token pass, ``all`` runs this in the worker that measures the longest
  memory case, after its peak RSS has been read. Target: long <= 1.1x short.
* ``efficiency``: FLOP/s of a training step (``--train-tokens`` 4096 in one row, mean
  cross-entropy, backward with full BPTT through the memory) over this machine's float32 matmul
  FLOP/s measured in the same process (``torch.mm`` at the FFN's shape for one call of the step,
  4096 x 256 @ 256 x 1368, and at 2048 x 2048 @ 2048 x 2048). The step's FLOPs are counted
  analytically, see ``step_flops``. Target: >= 40% of the matmul rate.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from infini_attention.eval.passkey import parse_length  # "16K", "1M" (x1024)
from issue_model import D_FF, D_MODEL, HEAD_DIM, HEADS, LAYERS, VOCAB, N, build_model, run_meta
from op_bench import synchronize, time_once  # a no-op on the CPU; gpu_bench.py runs these functions on CUDA


def maxrss_bytes() -> int:
    # ru_maxrss is in KiB on Linux (bytes on macOS)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def proc_status_bytes(field: str) -> int | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, from /proc (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def stream(model, tokens: int, chunk: int, seed: int, state=None, start: int = 0, marks=(), on_mark=None):
    """Feed tokens ``start`` .. ``tokens`` in chunks of ``chunk``; call ``on_mark(t, state)`` at each mark.

    The ids are drawn on the CPU (the same ids on every device) and moved to the model's device.
    """
    device = model.embed.weight.device
    t = start
    with torch.no_grad():
        while t < tokens:
            end = min(t + chunk, tokens, *[m for m in marks if m > t])
            g = torch.Generator().manual_seed(seed * 1_000_003 + t)
            ids = torch.randint(0, VOCAB, (1, end - t), generator=g).to(device)
            state = model(ids, state, logits_to_keep=1).state
            t = end
            if on_mark is not None and t in marks:
                on_mark(t, state)
    return state


def decode_steps(model, state, steps: int, seed: int) -> list[float]:
    """Seconds of each of ``steps`` single-token steps from ``state`` (the device synchronised
    before and after each)."""
    device = model.embed.weight.device
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(0, VOCAB, (steps, 1, 1), generator=g).to(device)
    times = []
    with torch.no_grad():
        for i in range(steps):
            synchronize(device)
            t0 = time.perf_counter()
            state = model(toks[i], state, logits_to_keep=1).state
            synchronize(device)
            times.append(time.perf_counter() - t0)
    return times


def decode_rounds(model, short, long, steps: int, repeats: int, seed: int) -> dict[str, list[float]]:
    """8 untimed warm-up steps from each state, then ``repeats`` rounds of ``steps`` steps from
    ``short`` and the same from ``long``, interleaved; both states must be at a segment boundary."""
    assert short.buffered == 0 and long.buffered == 0, "decode must start at a segment boundary"
    decode_steps(model, short, 8, seed)  # warm-up
    decode_steps(model, long, 8, seed)
    times: dict[str, list[float]] = {"short": [], "long": []}
    for r in range(repeats):
        times["short"] += decode_steps(model, short, steps, seed + r)
        times["long"] += decode_steps(model, long, steps, seed + r)
    return times


# ---- worker: one fresh process per streamed length -------------------------------------------


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    model = build_model(args.seed).eval()
    x = torch.randint(0, VOCAB, (1, 2 * N))
    with torch.no_grad():  # touch every code path once, so lazily loaded kernels count as "built"
        model(x, model(x, logits_to_keep=1).state, logits_to_keep=1)
    out: dict[str, object] = {
        "tokens": args.tokens,
        "rss_after_build_bytes": proc_status_bytes("VmRSS"),
        "peak_rss_build_bytes": proc_status_bytes("VmHWM"),
        "ru_maxrss_after_build_bytes": maxrss_bytes(),
    }
    out["peak_reset"] = reset_peak_rss()
    saved: dict[int, object] = {}
    rss_marks = [m for m in args.rss_marks if m < args.tokens]
    marks = tuple(sorted({*rss_marks, *([args.decode_at] if args.decode_at else [])}))
    along: list[dict[str, int | None]] = []

    def on_mark(t: int, s) -> None:
        if t == args.decode_at:
            saved[t] = s
        if t in rss_marks:
            along.append({"tokens": t, "peak": proc_status_bytes("VmHWM"), "now": proc_status_bytes("VmRSS")})

    t0 = time.perf_counter()
    state = stream(model, args.tokens, args.chunk_segments * N, args.seed, marks=marks, on_mark=on_mark)
    out["rss_along_the_stream"] = along  # peak so far and RSS now, at the shorter lengths
    out["stream_s"] = time.perf_counter() - t0
    # read before any decoding. peak_rss_bytes: VmHWM, reset after the build, so the peak while
    # streaming (including everything resident before it); ru_maxrss: the whole process's peak,
    # which on Linux also includes the pre-exec parent's (see docs/performance.md)
    out["peak_rss_bytes"] = proc_status_bytes("VmHWM") if out["peak_reset"] else None
    out["ru_maxrss_bytes"] = maxrss_bytes()
    out["rss_end_bytes"] = proc_status_bytes("VmRSS")
    out["state_bytes"] = state.nbytes
    out["state_buffered"] = state.buffered
    if args.decode_at:
        times = decode_rounds(
            model, saved[args.decode_at], state, args.decode_steps, args.decode_repeats, args.seed
        )
        out["decode"] = {"short_tokens": args.decode_at, "long_tokens": args.tokens, "step_s": times}
        out["peak_rss_after_decode_bytes"] = proc_status_bytes("VmHWM")
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(script_args: list[str]) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "worker", *script_args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({' '.join(cmd)}):\n{proc.stderr}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


# ---- the three benchmarks ---------------------------------------------------------------------


def bench_memory(args, decode_in_longest: bool) -> tuple[dict, dict | None]:
    lengths = [parse_length(s) for s in args.memory_tokens.split(",")]
    rows = []
    decode = None
    for n in lengths:
        if n % N:
            raise SystemExit(f"memory length {n} is not a multiple of N = {N}")
        wargs = ["--tokens", str(n), "--threads", str(args.threads), "--seed", str(args.seed)]
        wargs += ["--chunk-segments", str(args.chunk_segments)]
        wargs += ["--rss-marks", *[str(m) for m in lengths if m < n]]
        if decode_in_longest and n == max(lengths):
            wargs += ["--decode-at", str(parse_length(args.decode_short))]
            wargs += ["--decode-steps", str(args.decode_steps), "--decode-repeats", str(args.decode_repeats)]
        res = run_worker(wargs)
        print(
            f"memory: {n:>9,} tokens  peak RSS while streaming {res['peak_rss_bytes'] / 2**20:8.1f} MiB  "
            f"(RSS after build {res['rss_after_build_bytes'] / 2**20:.1f} MiB, at end "
            f"{res['rss_end_bytes'] / 2**20:.1f}; ru_maxrss {res['ru_maxrss_bytes'] / 2**20:.1f})  "
            f"state {res['state_bytes']:,} B  streamed in {res['stream_s']:.1f} s",
            flush=True,
        )
        decode = res.pop("decode", None) or decode
        rows.append(res)
    ratio = rows[-1]["peak_rss_bytes"] / rows[0]["peak_rss_bytes"]
    print(f"memory: peak RSS {lengths[-1]:,} / {lengths[0]:,} tokens = {ratio:.3f}x (target <= 1.1x)")
    return {"rows": rows, "ratio_longest_over_shortest": ratio, "target_met": ratio <= 1.1}, decode


def summarise_decode(decode: dict) -> dict:
    med = {k: statistics.median(v) for k, v in decode["step_s"].items()}
    ratio = med["long"] / med["short"]
    print(
        f"decode: after {decode['short_tokens']:,} tokens {med['short'] * 1e3:.2f} ms/token, "
        f"after {decode['long_tokens']:,} tokens {med['long'] * 1e3:.2f} ms/token, "
        f"ratio {ratio:.3f}x (target <= 1.1x)"
    )
    return {
        **decode,
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "ratio": ratio,
        "target_met": ratio <= 1.1,
    }


def bench_decode(args) -> dict:
    wargs = ["--tokens", str(parse_length(args.decode_long)), "--threads", str(args.threads)]
    wargs += ["--seed", str(args.seed), "--chunk-segments", str(args.chunk_segments)]
    wargs += ["--decode-at", str(parse_length(args.decode_short))]
    wargs += ["--decode-steps", str(args.decode_steps), "--decode-repeats", str(args.decode_repeats)]
    res = run_worker(wargs)
    return summarise_decode(res["decode"])


def dense_flops_per_token() -> int:
    """Forward FLOPs per token of the dense layers: q/k/v/o, SwiGLU FFN, tied logits."""
    return LAYERS * (2 * D_MODEL * 4 * HEADS * HEAD_DIM + 2 * 3 * D_MODEL * D_FF) + 2 * D_MODEL * VOCAB


def attention_flops_per_token() -> dict[str, float]:
    """Forward FLOPs per token, all layers, of what is not a dense layer.

    local: causal softmax attention within a segment, QK^T and AV, 2 * 2 * d per key over heads,
    on average (N + 1) / 2 keys per query (the causal half only; the masked half is not counted).
    memory: the delta rule per head reads sigma(q) M and sigma(q) z for the query (2 dk dv + 2 dk),
    retrieves sigma(k) M for the write (2 dk dv + 2 dk) and adds sigma(k)^T (v - ...) (2 dk dv).
    Element-wise work (RoPE, ELU, gate, norms, softmax exponentials) is not counted.
    """
    d = HEADS * HEAD_DIM
    local = LAYERS * 4 * d * (N + 1) / 2
    memory = LAYERS * HEADS * (6 * HEAD_DIM * HEAD_DIM + 4 * HEAD_DIM)
    return {"local": local, "memory": memory}


def step_flops(tokens: int) -> dict[str, float]:
    """Training-step FLOPs: forward as above, backward counted as 2x forward (3x in all)."""
    att = attention_flops_per_token()
    fwd = {"dense": dense_flops_per_token() * tokens, **{k: v * tokens for k, v in att.items()}}
    return {**{k: 3 * v for k, v in fwd.items()}, "total": 3 * sum(fwd.values())}


def mm_gflops(
    m: int, k: int, n: int, seconds: float = 1.5, device: str | torch.device = "cpu", dtype=torch.float32
) -> float:
    """GFLOP/s of ``a @ b`` (m x k @ k x n) repeated for ``seconds``. On CUDA the products are
    queued without waiting and the clock stops once the device has finished them all."""
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(a.device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    synchronize(a.device)
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def train_efficiency(
    model,
    ids: torch.Tensor,
    labels: torch.Tensor,
    shapes: dict[str, tuple[int, int, int]],
    repeats: int,
    mm_seconds: float = 1.0,
    mm_dtype: torch.dtype = torch.float32,
    autocast=contextlib.nullcontext,
) -> dict:
    """Median training step (one call with ``labels``: full BPTT) on ``ids`` ``[B, T]``, timed
    interleaved with the matmul rate at each of ``shapes``; FLOPs counted by ``step_flops``.

    ``autocast``: a context factory entered around the forward pass (e.g. bf16 autocast).
    """
    device = ids.device

    def step() -> float:
        with autocast():
            loss = model(ids, labels=labels).loss  # one call: full BPTT
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.item()

    loss = step()  # warm-up
    times, rates = [], {k: [] for k in shapes}
    for _ in range(repeats):  # interleave step and matmul timings
        times.append(time_once(step, device) / 1e3)  # seconds
        for name, s in shapes.items():
            rates[name].append(mm_gflops(*s, seconds=mm_seconds, device=device, dtype=mm_dtype))
    flops = step_flops(ids.numel())
    t = statistics.median(times)
    achieved = flops["total"] / t / 1e9
    mm = {k: statistics.median(v) for k, v in rates.items()}
    frac = {k: achieved / v for k, v in mm.items()}
    return {
        "train_tokens": ids.numel(),
        "step_s": times,
        "median_step_s": t,
        "loss": loss,
        "flops": flops,
        "achieved_gflops": achieved,
        "achieved_gflops_dense_only": flops["dense"] / t / 1e9,
        "matmul_shapes": {k: list(v) for k, v in shapes.items()},
        "matmul_gflops_runs": rates,
        "matmul_gflops": mm,
        "efficiency": frac,
        "target_met": min(frac.values()) >= 0.4,
    }


def bench_efficiency(args) -> dict:
    torch.set_num_threads(args.threads)
    model = build_model(args.seed).train()
    T = args.train_tokens
    g = torch.Generator().manual_seed(args.seed)
    seq = torch.randint(0, VOCAB, (1, T + 1), generator=g)
    ids, labels = seq[:, :-1], seq[:, 1:]
    shapes = {"ffn_step": (T, D_MODEL, 2 * D_FF), "square_2048": (2048, 2048, 2048)}
    res = train_efficiency(model, ids, labels, shapes, args.train_repeats)
    t, loss, flops, achieved = res["median_step_s"], res["loss"], res["flops"], res["achieved_gflops"]
    mm, frac = res["matmul_gflops"], res["efficiency"]
    print(
        f"efficiency: step over {T} tokens {t:.3f} s (loss {loss:.3f}), "
        f"{flops['total'] / 1e9:.1f} GFLOP counted "
        f"-> {achieved:.1f} GFLOP/s; matmul {mm['ffn_step']:.1f} GFLOP/s at {shapes['ffn_step']}, "
        f"{mm['square_2048']:.1f} at 2048^3; efficiency {100 * frac['ffn_step']:.1f}% / "
        f"{100 * frac['square_2048']:.1f}% (target >= 40%)"
    )
    return res


# ---- output -----------------------------------------------------------------------------------


def markdown(meta: dict, res: dict) -> str:
    lines = [
        f"{meta['date_utc']} UTC, torch {meta['torch']}, {meta['threads']} threads, {meta['cpus']} CPUs. "
        f"Model: vocab {VOCAB}, d_model {D_MODEL}, {LAYERS} layers, {HEADS} heads of {HEAD_DIM}, "
        f"N = {N}, delta, d_ff {D_FF}, float32, batch 1.",
        "",
        "| benchmark | measured | target | met |",
        "|---|---|---|---|",
    ]
    if "memory" in res:
        m = res["memory"]
        for r in m["rows"]:
            lines.append(
                f"| peak RSS, streaming {r['tokens']:,} tokens (own process) | "
                f"{r['peak_rss_bytes'] / 2**20:.1f} MiB (state {r['state_bytes'] / 2**10:.0f} KiB) | | |"
            )
        lines.append(
            f"| peak RSS ratio, longest / shortest | {m['ratio_longest_over_shortest']:.3f}x | <= 1.1x "
            f"| {'yes' if m['target_met'] else 'no'} |"
        )
    if "decode" in res:
        d = res["decode"]
        for k in ("short", "long"):
            n = d[f"{k}_tokens"]
            lines.append(f"| decode after {n:,} tokens (median) | {d['median_ms'][k]:.2f} ms/token | | |")
        lines.append(
            f"| decode ratio, long / short context | {d['ratio']:.3f}x | <= 1.1x "
            f"| {'yes' if d['target_met'] else 'no'} |"
        )
    if "efficiency" in res:
        e = res["efficiency"]
        lines.append(
            f"| training step, {e['train_tokens']} tokens (median) | {e['median_step_s']:.3f} s, "
            f"{e['flops']['total'] / 1e9:.1f} GFLOP counted, {e['achieved_gflops']:.1f} GFLOP/s | | |"
        )
        for k, v in e["matmul_gflops"].items():
            shape = " x ".join(str(x) for x in e["matmul_shapes"][k])
            lines.append(
                f"| efficiency vs matmul ({shape}: {v:.1f} GFLOP/s) | {100 * e['efficiency'][k]:.1f}% "
                f"| >= 40% | {'yes' if e['efficiency'][k] >= 0.4 else 'no'} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["all", "memory", "decode", "efficiency", "worker"])
    p.add_argument("--memory-tokens", default="16K,128K,1M")
    p.add_argument("--decode-short", default="1K")
    p.add_argument("--decode-long", default="1M")
    p.add_argument("--decode-steps", type=int, default=64)
    p.add_argument("--decode-repeats", type=int, default=3)
    p.add_argument("--train-tokens", type=int, default=4096)
    p.add_argument("--train-repeats", type=int, default=3)
    p.add_argument("--chunk-segments", type=int, default=8, help="segments per call when streaming")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write raw results and settings here")
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.add_argument("--tokens", type=int, help=argparse.SUPPRESS)  # worker only
    p.add_argument("--decode-at", type=int, default=0, help=argparse.SUPPRESS)  # worker only
    p.add_argument("--rss-marks", type=int, nargs="*", default=[], help=argparse.SUPPRESS)  # worker only
    args = p.parse_args()
    if args.what == "worker":
        worker(args)
        return
    torch.set_num_threads(args.threads)
    for name in ("decode_short", "decode_long"):
        if parse_length(getattr(args, name)) % N:
            p.error(
                f"--{name.replace('_', '-')} must be a multiple of {N} (decode starts at a segment boundary)"
            )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    t_start = time.perf_counter()
    res: dict[str, object] = {}
    if args.what in ("all", "efficiency"):
        res["efficiency"] = bench_efficiency(args)
    if args.what in ("all", "memory"):
        longest = max(parse_length(s) for s in args.memory_tokens.split(","))
        share = args.what == "all" and longest == parse_length(args.decode_long)
        res["memory"], decode = bench_memory(args, decode_in_longest=share)
        if decode is not None:
            res["decode"] = summarise_decode(decode)
            res["decode"]["shared_process_with_memory_worker"] = True
    if args.what == "decode" or (args.what == "all" and "decode" not in res):
        res["decode"] = bench_decode(args)
    wall = time.perf_counter() - t_start
    print(f"load average at end: {os.getloadavg()}; took {wall:.0f} s")
    meta = {
        **run_meta(args),
        "wall_s": wall,
        "shape": dict(
            vocab=VOCAB, d_model=D_MODEL, layers=LAYERS, heads=HEADS, head_dim=HEAD_DIM, N=N, d_ff=D_FF
        ),
    }
    table = markdown(meta, res)
    print()
    print(table)
    targets = {k: v["target_met"] for k, v in res.items()}
    print(f"targets met: {json.dumps(targets)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"meta": meta, "results": res, "targets_met": targets}, indent=2) + "\n"
        )
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)


if __name__ == "__main__":
    main()
