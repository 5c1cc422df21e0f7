"""The performance issue's GPU benchmarks: layer against local attention, training efficiency,
streaming memory and decode latency, in one process on one device (``scripts/gpu/bench.sh``
runs each part in its own process under its own timeout, and ``--combine`` prints one table).

From the repository root, on a machine with CUDA (defaults: ``--device cuda --dtype bfloat16``)::

    PYTHONPATH=src python3 benchmarks/gpu_bench.py --json out.json --markdown out.md
    python benchmarks/gpu_bench.py --quick --device cpu --dtype float32   # tiny sizes, seconds

``--dtype bfloat16`` runs every part under ``torch.autocast(device, bfloat16)``: weights float32,
projections and local attention in bf16, the memory M, z float32 (as the library always keeps
them, ops/state.py); ``float32`` runs without autocast. Every timed call is bracketed by
``torch.cuda.synchronize()`` (``op_bench.time_once``; a no-op on the CPU); figures are medians of
repeats after a warm-up, and what is compared runs interleaved, the order rotating per repeat.
Sizes below are the full run's; ``--quick`` shrinks them all (``QUICK``). Parts (``--parts``):

* ``layer``: ``InfiniAttention`` (layers/attention.py, delta and linear) forward + backward,
  ``sum(out * cotangent)`` with gradients into x and every weight, at T = 16K, 32K and N = 512,
  2048 (B = 1, 8 heads of 64, d_model 512), against ``LocalOnly``: the same layer's q/k/v/o weights
  and RoPE, the segments reshaped [B, T, H, D] -> [B*T/N, H, N, D] and one
  ``F.scaled_dot_product_attention(is_causal=True)`` (torch picks the kernel, flash or cuDNN, as
  for the library's own call of it): the layer without its memory path. Neither existing variant
  is that: ``attention = "local"`` (layers/cached.py) loops over segments with an explicit mask
  (no flash kernel), and ``memory_disabled`` only closes the gate, the memory still runs. Before
  timing, LocalOnly is checked against the Infini layer with its gate closed (sigmoid(-1e4) = 0).
  Target: Infini / local <= 1.15x.
* ``train``: a training step of the issue's model (issue_model.py) on B = 8 rows of T = 4096
  (one call with labels: mean cross-entropy, backward with full BPTT), FLOPs counted as
  ``perf.step_flops``, against ``torch.mm`` in the compute dtype at 8192^3 and at the step's FFN
  shape (B*T x 256 @ 256 x 1368), timed interleaved (``perf.train_efficiency``). Target: >= 40%.
* ``memory``: peak device memory (``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats``; everything allocated, the model included) while streaming 16K, 128K
  and 1M tokens, each a new stream, batch 1, 8 segments per call under ``no_grad`` (``perf.stream``).
  On a CPU: the process's peak RSS (VmHWM, reset before each stream; the heap of earlier parts
  stays, so it is not perf.py's one-process-per-length figure). Target: 1M / 16K <= 1.1x.
* ``decode``: median latency of single-token steps after 1K and after 1M tokens (both multiples of
  N, so both start at a segment boundary; 3 interleaved rounds of 64 steps, ``perf.decode_rounds``).
  The 1M state is the memory part's last stream when both run in one process. Target: <= 1.1x.

The op benchmark is op_bench.py's (bench.sh runs it); ``--combine`` folds its JSON and
peer_bench.py's into the same table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import statistics
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from infini_attention.layers import InfiniAttention
from issue_model import D_FF, D_MODEL, VOCAB, N, build_model, run_meta
from op_bench import DEFAULT_ATOL, interleave, synchronize
from perf import decode_rounds, proc_status_bytes, reset_peak_rss, stream, summarise_decode, train_efficiency

PARTS = ("layer", "train", "memory", "decode")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
K = 1024


@dataclasses.dataclass(frozen=True)
class Sizes:
    layer_T: tuple[int, ...] = (16 * K, 32 * K)
    layer_N: tuple[int, ...] = (512, 2048)
    updates: tuple[str, ...] = ("delta", "linear")
    layer_batch: int = 1
    heads: int = 8
    head_dim: int = 64
    layer_repeats: int = 10
    train_batch: int = 8
    train_T: int = 4096
    train_repeats: int = 5
    mm_square: int = 8192
    mm_seconds: float = 0.5
    memory: tuple[int, ...] = (16 * K, 128 * K, 1024 * K)
    chunk_segments: int = 8
    decode_short: int = K
    decode_steps: int = 64
    decode_repeats: int = 3


QUICK = Sizes(
    layer_T=(256, 512),
    layer_N=(64, 128),
    heads=2,
    head_dim=16,
    layer_repeats=2,
    train_batch=1,
    train_T=2 * N,
    train_repeats=2,
    mm_square=256,
    mm_seconds=0.02,
    memory=(2 * N, 4 * N, 8 * N),
    chunk_segments=2,
    decode_short=N,
    decode_steps=4,
    decode_repeats=2,
)


class LocalOnly(nn.Module):
    """The Infini layer's local path alone: its q/k/v/o weights and RoPE, no memory."""

    def __init__(self, layer: InfiniAttention):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L, (B, T, _) = self.layer, x.shape
        Nl, H, Hkv, D = L.segment_len, L.n_heads, L.n_kv_heads, L.head_dim
        assert T % Nl == 0, "LocalOnly takes whole segments"
        pos = torch.arange(T, device=x.device) % Nl
        q = L.rope(L.q_proj(x).unflatten(-1, (H, D)), pos)
        k = L.rope(L.k_proj(x).unflatten(-1, (Hkv, D)), pos)
        v = L.v_proj(x).unflatten(-1, (Hkv, D))

        def segments(t: torch.Tensor) -> torch.Tensor:  # [B, T, h, D] -> [B*T/N, h, N, D]
            return t.unflatten(1, (T // Nl, Nl)).flatten(0, 1).transpose(1, 2)

        o = F.scaled_dot_product_attention(
            segments(q), segments(k), segments(v), is_causal=True, enable_gqa=Hkv != H
        )
        return L.o_proj(o.transpose(1, 2).reshape(B, T, H * D))


def fwd_bwd(module: nn.Module, x: torch.Tensor, cot: torch.Tensor, autocast):
    def run() -> None:
        x.grad = None
        module.zero_grad(set_to_none=True)
        with autocast():
            out = module(x)
        out = out[0] if isinstance(out, tuple) else out
        (out.float() * cot).sum().backward()

    return run


def check_local(layer: InfiniAttention, local: LocalOnly, x: torch.Tensor, autocast, atol: float) -> dict:
    """LocalOnly against the Infini layer with its memory gated off (outputs, forward only)."""
    saved = layer.gate.detach().clone()
    try:
        with torch.no_grad(), autocast():
            layer.gate.fill_(-1e4)
            ref, got = layer(x)[0].float(), local(x).float()
    finally:
        with torch.no_grad():
            layer.gate.copy_(saved)
    diff = (ref - got).abs().max().item()
    return {"out_max_abs_diff": diff, "ok": diff <= atol * max(1.0, ref.abs().max().item())}


def bench_layer(S: Sizes, device, dtype, autocast, seed: int, ctx: dict) -> dict:
    B, H, D = S.layer_batch, S.heads, S.head_dim
    rows = []
    for T in S.layer_T:
        g = torch.Generator().manual_seed(seed + T)
        x = torch.randn(B, T, H * D, generator=g).to(device).requires_grad_()
        cot = torch.randn(B, T, H * D, generator=g).to(device)
        jobs, checks = {}, {}
        for Nl in S.layer_N:
            for update in S.updates:
                torch.manual_seed(seed)  # the same weights for every (N, update)
                layer = InfiniAttention(H * D, H, H, D, Nl, update=update).to(device)
                jobs[Nl, update] = fwd_bwd(layer, x, cot, autocast)
            local = LocalOnly(layer)
            checks[Nl] = check_local(layer, local, x, autocast, DEFAULT_ATOL[dtype])
            print(f"layer: T={T} N={Nl} local-only vs gated-off Infini: {checks[Nl]}", flush=True)
            if not checks[Nl]["ok"]:
                raise RuntimeError("LocalOnly is not the Infini layer without memory; refusing to time")
            jobs[Nl, "local"] = fwd_bwd(local, x, cot, autocast)
        times = interleave(jobs, S.layer_repeats, device)
        for Nl in S.layer_N:
            local_ms = statistics.median(times[Nl, "local"])
            for update in S.updates:
                ms = statistics.median(times[Nl, update])
                rows.append(
                    {
                        "T": T,
                        "N": Nl,
                        "update": update,
                        "infini_ms": ms,
                        "local_ms": local_ms,
                        "ratio": ms / local_ms,
                        "target_met": ms / local_ms <= 1.15,
                        "check": checks[Nl],
                        "times_ms": {"infini": times[Nl, update], "local": times[Nl, "local"]},
                    }
                )
                print(f"layer: T={T} N={Nl} {update}: {ms:.2f} ms vs local {local_ms:.2f} ms", flush=True)
        del x, cot, jobs
    shape = {"batch": B, "heads": H, "head_dim": D, "d_model": H * D}
    return {"rows": rows, "shape": shape, "target_met": all(r["target_met"] for r in rows)}


def bench_train(S: Sizes, device, dtype, autocast, seed: int, ctx: dict) -> dict:
    model = build_model(seed).to(device).train()
    B, T, sq = S.train_batch, S.train_T, S.mm_square
    seq = torch.randint(0, VOCAB, (B, T + 1), generator=torch.Generator().manual_seed(seed)).to(device)
    shapes = {"ffn_step": (B * T, D_MODEL, 2 * D_FF), f"square_{sq}": (sq, sq, sq)}
    res = train_efficiency(
        model, seq[:, :-1], seq[:, 1:], shapes, S.train_repeats, S.mm_seconds, dtype, autocast
    )
    eff = ", ".join(f"{100 * v:.1f}% of {k}" for k, v in res["efficiency"].items())
    print(f"train: {B} x {T} tokens, {res['median_step_s'] * 1e3:.1f} ms/step, {eff}", flush=True)
    return {**res, "batch": B, "row_tokens": T}


def peak_meter(device: torch.device):
    """(what, reset, read) for peak memory: allocated device memory on CUDA, VmHWM on a CPU."""
    if device.type == "cuda":
        reset = lambda: torch.cuda.reset_peak_memory_stats(device)  # noqa: E731
        return "torch.cuda.max_memory_allocated", reset, lambda: torch.cuda.max_memory_allocated(device)
    return "peak RSS (VmHWM), whole process", reset_peak_rss, lambda: proc_status_bytes("VmHWM")


def bench_memory(S: Sizes, device, dtype, autocast, seed: int, ctx: dict) -> dict:
    model = build_model(seed).to(device).eval()
    x = torch.randint(0, VOCAB, (1, 2 * N)).to(device)
    with torch.no_grad(), autocast():  # every code path once, so lazily built kernels exist
        model(x, model(x, logits_to_keep=1).state, logits_to_keep=1)
    what, reset, read = peak_meter(device)
    rows, state = [], None
    for n in S.memory:
        state = None  # the previous stream's state must not count in this one's peak
        gc.collect()
        synchronize(device)
        if reset() is False:
            return {"skipped": f"{what} cannot be reset on this system", "target_met": None}
        t0 = time.perf_counter()
        with autocast():
            state = stream(model, n, S.chunk_segments * N, seed)
        synchronize(device)
        rows.append(
            {
                "tokens": n,
                "peak_bytes": read(),
                "state_bytes": state.nbytes,
                "stream_s": time.perf_counter() - t0,
            }
        )
        print(f"memory: {n:,} tokens, peak {rows[-1]['peak_bytes'] / 2**20:.1f} MiB ({what})", flush=True)
    ctx["decode_model"], ctx["long_state"] = model, state
    ratio = rows[-1]["peak_bytes"] / rows[0]["peak_bytes"]
    return {"measure": what, "rows": rows, "ratio_longest_over_shortest": ratio, "target_met": ratio <= 1.1}


def bench_decode(S: Sizes, device, dtype, autocast, seed: int, ctx: dict) -> dict:
    chunk, long_tokens = S.chunk_segments * N, max(S.memory)
    model, long = ctx.pop("decode_model", None), ctx.pop("long_state", None)
    with autocast():
        if long is None:  # the memory part did not run in this process
            model = build_model(seed).to(device).eval()
            long = stream(model, long_tokens, chunk, seed)
        short = stream(model, S.decode_short, chunk, seed)
        times = decode_rounds(model, short, long, S.decode_steps, S.decode_repeats, seed)
    return summarise_decode({"short_tokens": S.decode_short, "long_tokens": long_tokens, "step_s": times})


BENCHES = {"layer": bench_layer, "train": bench_train, "memory": bench_memory, "decode": bench_decode}


# ---- output -------------------------------------------------------------------------------


def met(ok) -> str:
    return "" if ok is None else "yes" if ok else "no"


def layer_rows(r: dict) -> list[str]:
    s = r["shape"]
    return [
        f"| layer fwd+bwd, T={x['T']} N={x['N']} {x['update']} (B={s['batch']}, {s['heads']} heads of "
        f"{s['head_dim']}): Infini {x['infini_ms']:.2f} ms, local SDPA {x['local_ms']:.2f} ms "
        f"| {x['ratio']:.3f}x | <= 1.15x | {met(x['target_met'])} |"
        for x in r["rows"]
    ]


def train_rows(r: dict) -> list[str]:
    rows = [
        f"| training step, {r['batch']} x {r['row_tokens']} tokens (median) "
        f"| {r['median_step_s'] * 1e3:.1f} ms, {r['flops']['total'] / 1e9:.1f} GFLOP counted, "
        f"{r['achieved_gflops']:,.0f} GFLOP/s | | |"
    ]
    for k, v in r["matmul_gflops"].items():
        shape = " x ".join(str(x) for x in r["matmul_shapes"][k])
        frac = r["efficiency"][k]
        rows.append(
            f"| efficiency vs matmul ({shape}: {v:,.0f} GFLOP/s) | {100 * frac:.1f}% "
            f"| >= 40% | {met(frac >= 0.4)} |"
        )
    return rows


def memory_rows(r: dict) -> list[str]:
    rows = [
        f"| peak memory, streaming {x['tokens']:,} tokens ({r['measure']}) "
        f"| {x['peak_bytes'] / 2**20:.1f} MiB (state {x['state_bytes'] / 2**10:.0f} KiB) | | |"
        for x in r["rows"]
    ]
    ratio = r["ratio_longest_over_shortest"]
    return [
        *rows,
        f"| peak memory ratio, longest / shortest | {ratio:.3f}x | <= 1.1x | {met(r['target_met'])} |",
    ]


def decode_rows(r: dict) -> list[str]:
    rows = [
        f"| decode after {r[k + '_tokens']:,} tokens (median) | {r['median_ms'][k]:.2f} ms/token | | |"
        for k in ("short", "long")
    ]
    return [
        *rows,
        f"| decode ratio, long / short context | {r['ratio']:.3f}x | <= 1.1x | {met(r['target_met'])} |",
    ]


ROWS = {"layer": layer_rows, "train": train_rows, "memory": memory_rows, "decode": decode_rows}


def table_rows(res: dict, parts=PARTS) -> list[str]:
    """Markdown rows (| benchmark | measured | target | met |) of this script's ``parts``."""
    rows = []
    for part in parts:
        r = res.get(part)
        if r is None:
            rows.append(f"| {part} | no result (not run, timed out or killed: see the log) | | |")
        elif "error" in r:
            rows.append(f"| {part} | failed: {r['error']} | | |")
        elif "skipped" in r:
            rows.append(f"| {part} | skipped: {r['skipped']} | | |")
        else:
            rows += ROWS[part](r)
    return rows


def op_rows(doc: dict) -> list[str]:
    """op_bench.py's JSON as rows of the same table (its own table has more columns)."""
    dtype = doc["config"]["dtype"]
    rows = []
    for r in doc["results"]:
        naive = "skipped" if r["naive_ms"] is None else f"{r['naive_ms']:.1f} ms"
        full = (
            "-"
            if r["full_ms"] is None
            else f"{r['full_ms']:.1f} ms (speed-up vs full {r['full_ms'] / r['fast_ms']:.2f}x)"
        )
        rows.append(
            f"| op fwd+bwd ({dtype}), T={r['T']} N={r['N']} {r['update']}: naive {naive}, full SDPA {full} "
            f"| {r['fast_ms']:.1f} ms | | |"
        )
    return rows


def peer_rows(doc: dict) -> list[str]:
    """peer_bench.py's JSON: our speed-up over infini-transformer-pytorch, with its targets."""
    s, t, ok = doc["median_s"]["stream"], doc["median_s"]["train"], doc["targets_met"]
    cases = [
        (
            "streaming, per segment",
            s["peer_segments"],
            s["ours_segments"],
            ">= 3x",
            "streaming_>=3x (per segment)",
        ),
        (
            "streaming, ours in one call",
            s["peer_segments"],
            s["ours_one_call"],
            ">= 3x",
            "streaming_>=3x (ours one call)",
        ),
        ("training step", t["peer"], t["ours"], ">= 2x", "training_>=2x"),
    ]
    return [
        f"| vs infini-transformer-pytorch, {name}: peer {p:.3f} s / ours {o:.3f} s | {p / o:.2f}x | {tgt} "
        f"| {met(ok.get(key))} |"
        for name, p, o, tgt, key in cases
    ]


def markdown(meta: dict, res: dict, extra: list[str] = (), parts=PARTS) -> str:
    where = meta.get("gpu") or meta["device"]
    head = f"{meta['date_utc']} UTC, torch {meta['torch']}, {where}, compute dtype {meta['dtype']}."
    lines = [head, "", "| benchmark | measured | target | met |", "|---|---|---|---|"]
    return "\n".join([*lines, *table_rows(res, parts), *extra]) + "\n"


def combine(paths: list[Path]) -> str:
    """One table from gpu_bench JSONs (parts merged), op_bench JSONs and peer_bench JSONs."""
    meta, res, extra = None, {}, []
    for p in paths:
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            extra.append(f"| {p.name} | unreadable: {e} | | |")
            continue
        if "machine" in doc:
            extra += op_rows(doc)
        elif "peer_version" in doc.get("meta", {}):
            extra += peer_rows(doc)
        else:
            meta = meta or doc["meta"]
            res.update(doc["results"])
    meta = meta or {"date_utc": "-", "torch": torch.__version__, "device": "-", "dtype": "-"}
    return markdown(meta, res, extra)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="torch device (default: %(default)s)")
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), default="bfloat16", help="compute dtype (default: %(default)s)"
    )
    p.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to run (default: all)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU check in seconds)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write results and settings here (after every part)")
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.add_argument("--combine", type=Path, nargs="+", help="print one table from these JSONs; run nothing")
    args = p.parse_args(argv)
    if args.combine:
        table = combine(args.combine)
        print(table)
        if args.markdown:
            args.markdown.write_text(table)
        return 0
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but CUDA is not available")
    S = QUICK if args.quick else Sizes()
    autocast = contextlib.nullcontext
    if dtype != torch.float32:
        autocast = lambda: torch.autocast(device.type, dtype=dtype)  # noqa: E731
    meta = {**run_meta(args), "device": str(device), "dtype": args.dtype, "sizes": dataclasses.asdict(S)}
    if device.type == "cuda":
        meta.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    print(f"torch {meta['torch']}, {meta.get('gpu', device)}, {args.dtype}, parts {args.parts}", flush=True)
    res, ctx, failed = {}, {}, False
    for part in args.parts:
        t0 = time.perf_counter()
        try:
            res[part] = BENCHES[part](S, device, dtype, autocast, args.seed, ctx)
        except Exception as e:  # one part's failure must not cost the others
            traceback.print_exc()
            res[part], failed = {"error": f"{type(e).__name__}: {e}".splitlines()[0]}, True
        res[part]["wall_s"] = time.perf_counter() - t0
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"meta": meta, "results": res}, indent=2) + "\n")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    table = markdown(meta, res, parts=[k for k in PARTS if k in args.parts])
    print()
    print(table)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
