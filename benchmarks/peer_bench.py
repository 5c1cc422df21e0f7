"""Model-level comparison against the PyPI package ``infini-transformer-pytorch==0.2.1``.

The peer is a benchmark-only dependency, not a dependency of this project. Install it into the
venv without letting it touch torch:

    pip install --no-deps infini-transformer-pytorch==0.2.1 einops rotary-embedding-torch

Then, from the repository root:

    python benchmarks/peer_bench.py --json docs/results/perf/peer_bench_cpu.json \
        --markdown docs/results/perf/peer_bench_cpu.md

Both models have the same size: vocab 256, d_model 256, 4 layers, 4 heads of 64, segment
length N = 512, delta rule; our SwiGLU width ``d_ff`` is chosen so that our FFN has as many
parameters as the peer's GEGLU FFN (``ff_mult=4``: inner width int(4 * 256 * 2 / 3) = 682, with
biases). Both parameter counts are printed.

Cases, all float32, batch 1, random token ids, in one process (``--device``, default cpu; on
cuda every timing synchronises the device before and after, and the matmul rate is the GPU's
float32 rate):

* streaming forward (``torch.no_grad()``) over ``--stream-tokens`` tokens, one call per
  512-token segment carrying the state (ours: ``ModelOutput.state``; the peer:
  ``past_memories`` with ``return_new_memories=True``), plus ours in one call over all tokens;
* a training step over ``--train-tokens`` tokens: forward with the mean cross-entropy over all
  tokens, then backward with full BPTT through the memory across all segments. Ours is one call
  with ``labels``. The peer's segments are chained by hand with its model's
  ``forward(..., past_memories=..., return_new_memories=True)``, whose memories are not detached
  (``detach_memories=False`` is its default); its ``InfiniTransformerWrapper`` would detach them
  every ``detach_mems_every_num_segments=2`` segments by default (truncated BPTT), so it is not used.

With ``--compile`` a copy of ours with the same weights runs the same cases through
``InfiniTransformer.compile_segments()`` (``torch.compile`` of one segment's body, what
``[train] compile = true`` uses): ``forward(..., checkpoint_segments=True)``, so its training step
also recomputes each segment in the backward pass (more work than the eager step, fewer
element-wise passes). Compilation happens before timing and is printed.

Each case runs one untimed warm-up, then ``--repeats`` timed runs with the models interleaved
(each round times every case once, the order rotating from round to round); the median is reported.

The "dense-layer floor" column is a lower bound no implementation of this model size can beat on
the machine: the forward FLOPs of the dense layers alone (q/k/v/o projections, FFN, logits; no
attention, no memory), times 3 for a training step, divided by the float32 matmul rate measured
in the same run. "peer / floor" is therefore the largest speed-up over the peer still possible.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from issue_model import D_MODEL, HEAD_DIM, HEADS, LAYERS, VOCAB, N, build_model, run_meta
from op_bench import interleave
from perf import mm_gflops

PEER_FF_MULT = 4


def peer_ffn_params(dim: int = D_MODEL, mult: int = PEER_FF_MULT) -> int:
    """Parameters of the peer's FeedForward (proj_in dim -> 2 * inner, proj_out inner -> dim, biases)."""
    inner = int(mult * dim * 2 / 3)
    return dim * 2 * inner + 2 * inner + inner * dim + dim


def matched_d_ff(dim: int = D_MODEL) -> int:
    """Our SwiGLU (3 bias-free dim x d_ff matrices) closest in size to the peer's FFN."""
    return round(peer_ffn_params(dim) / (3 * dim))


def build_models(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    from infini_transformer_pytorch import InfiniTransformer as PeerTransformer

    d_ff = matched_d_ff()
    ours = build_model(seed, d_ff)
    torch.manual_seed(seed)
    peer = PeerTransformer(
        num_tokens=VOCAB,
        dim=D_MODEL,
        depth=LAYERS,
        dim_head=HEAD_DIM,
        heads=HEADS,
        ff_mult=PEER_FF_MULT,
        use_mem_delta_rule=True,
    )
    return ours, peer, d_ff


def count(model: torch.nn.Module, include: Callable[[str], bool] = lambda name: True) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if include(name))


# ---- the timed functions -------------------------------------------------------------------


def ours_stream_segments(model, ids: torch.Tensor) -> torch.Tensor:
    state = None
    for a in range(0, ids.shape[1], N):
        out = model(ids[:, a : a + N], state)
        state = out.state
    return out.logits


def ours_stream_one_call(model, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


def ours_compiled_stream_segments(model, ids: torch.Tensor) -> torch.Tensor:
    """As ``ours_stream_segments``, through the compiled segment body (checkpointing is a no-op
    without gradients)."""
    state = None
    for a in range(0, ids.shape[1], N):
        out = model(ids[:, a : a + N], state, checkpoint_segments=True)
        state = out.state
    return out.logits


def ours_compiled_train_step(model, ids: torch.Tensor, labels: torch.Tensor) -> float:
    loss = model(ids, labels=labels, checkpoint_segments=True).loss  # full BPTT, compiled segments
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def peer_stream_segments(model, ids: torch.Tensor) -> torch.Tensor:
    memories = None
    for a in range(0, ids.shape[1], N):
        logits, _, memories = model(ids[:, a : a + N], past_memories=memories, return_new_memories=True)
    return logits


def ours_train_step(model, ids: torch.Tensor, labels: torch.Tensor) -> float:
    loss = model(ids, labels=labels).loss  # one call: full BPTT (detach_every=None)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def peer_train_step(model, ids: torch.Tensor, labels: torch.Tensor, check: bool = False) -> float:
    memories = None
    total = 0.0
    for a in range(0, ids.shape[1], N):
        logits, _, memories = model(ids[:, a : a + N], past_memories=memories, return_new_memories=True)
        total = total + F.cross_entropy(logits.flatten(0, 1), labels[:, a : a + N].flatten(), reduction="sum")
    if check:  # memories stayed attached to the graph of every earlier segment (full BPTT)
        assert all(m.kv_mem.grad_fn is not None and m.k_norm.grad_fn is not None for m in memories)
    loss = total / labels.numel()
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def linear_flops_per_token(d_ff: int) -> int:
    """Forward FLOPs per token of the dense layers alone (q/k/v/o, FFN, logits), no attention or memory."""
    return LAYERS * (2 * D_MODEL * 4 * HEADS * HEAD_DIM + 2 * 3 * D_MODEL * d_ff) + 2 * D_MODEL * VOCAB


def interleaved_seconds(
    fns: dict[str, Callable[[], object]], repeats: int, device: str
) -> dict[str, list[float]]:
    """``op_bench.interleave``'s timings in seconds (the unit of this benchmark's JSON)."""
    return {k: [t / 1e3 for t in v] for k, v in interleave(fns, repeats, device).items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stream-tokens", type=int, default=16384)
    p.add_argument("--train-tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--json", type=Path, help="write raw timings and settings here")
    p.add_argument("--markdown", type=Path, help="write the table here")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time ours with torch.compile'd segments (compile_segments; needs a C++ compiler on CPU)",
    )
    args = p.parse_args()
    for name in ("stream_tokens", "train_tokens"):
        if getattr(args, name) % N:
            p.error(f"--{name.replace('_', '-')} must be a multiple of {N}")
    torch.set_num_threads(args.threads)

    from importlib.metadata import version

    import infini_transformer_pytorch  # noqa: F401 (fail early with a clear message)

    peer_version = version("infini-transformer-pytorch")
    ours, peer, d_ff = build_models(args.seed)
    ours, peer = ours.to(args.device), peer.to(args.device)
    compiled = copy.deepcopy(ours).compile_segments() if args.compile else None
    is_emb = lambda n: "emb" in n or "to_logits" in n or "lm_head" in n  # noqa: E731
    params = {
        "ours": {"total": count(ours), "non_embedding": count(ours, lambda n: not is_emb(n))},
        "peer": {"total": count(peer), "non_embedding": count(peer, lambda n: not is_emb(n))},
        "ours_ffn_per_layer": 3 * D_MODEL * d_ff,
        "peer_ffn_per_layer": peer_ffn_params(),
        "ours_d_ff": d_ff,
        "peer_ffn_inner": int(PEER_FF_MULT * D_MODEL * 2 / 3),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; "
        f"infini-transformer-pytorch {peer_version}"
    )
    print(f"parameters: {json.dumps(params)}")
    print(f"load average at start: {os.getloadavg()}")

    g = torch.Generator().manual_seed(args.seed)
    stream_ids = torch.randint(0, VOCAB, (1, args.stream_tokens), generator=g)
    train_seq = torch.randint(0, VOCAB, (1, args.train_tokens + 1), generator=g)
    train_ids, train_labels = train_seq[:, :-1], train_seq[:, 1:]
    stream_ids, train_ids, train_labels = (t.to(args.device) for t in (stream_ids, train_ids, train_labels))

    # sanity (not a test): finite outputs; ours segment by segment equals ours in one call
    sanity: dict[str, object] = {}
    ours.eval()
    peer.eval()
    with torch.no_grad():
        a = ours_stream_segments(ours, stream_ids[:, : 4 * N])
        b = ours_stream_one_call(ours, stream_ids[:, : 4 * N])[:, -N:]
        c = peer_stream_segments(peer, stream_ids[:, : 4 * N])
    sanity["ours_segments_vs_one_call_max_abs_diff_last_segment"] = (a - b).abs().max().item()
    sanity["ours_stream_logits_finite"] = bool(torch.isfinite(a).all())
    sanity["peer_stream_logits_finite"] = bool(torch.isfinite(c).all())
    ours.train()
    peer.train()
    sanity["ours_train_loss"] = ours_train_step(ours, train_ids, train_labels)
    sanity["peer_train_loss"] = peer_train_step(peer, train_ids, train_labels, check=True)
    sanity["peer_memories_attached_across_segments"] = True  # the assert above passed
    if compiled is not None:
        t0 = time.perf_counter()
        with torch.no_grad():
            compiled.eval()
            d = ours_compiled_stream_segments(compiled, stream_ids[:, : 4 * N])
        compiled.train()
        sanity["compiled_train_loss"] = ours_compiled_train_step(compiled, train_ids, train_labels)
        sanity["compile_s"] = time.perf_counter() - t0
        sanity["compiled_vs_eager_stream_max_abs_diff"] = (a - d).abs().max().item()
        sanity["compiled_vs_eager_train_loss_diff"] = abs(
            sanity["compiled_train_loss"] - sanity["ours_train_loss"]
        )
        if not (
            sanity["compiled_vs_eager_stream_max_abs_diff"] < 1e-3
            and sanity["compiled_vs_eager_train_loss_diff"] < 1e-4
        ):
            raise SystemExit(f"compiled model disagrees with eager: {sanity}")
    print(f"sanity: {json.dumps(sanity)}", flush=True)
    for k in ("ours_train_loss", "peer_train_loss"):
        if not torch.isfinite(torch.tensor(sanity[k])):
            raise SystemExit(f"{k} is not finite: {sanity[k]}")

    t_start = time.perf_counter()
    models = [ours, peer] + ([compiled] if compiled is not None else [])
    stream_cases = {
        "ours_segments": lambda: ours_stream_segments(ours, stream_ids),
        "peer_segments": lambda: peer_stream_segments(peer, stream_ids),
        "ours_one_call": lambda: ours_stream_one_call(ours, stream_ids),
    }
    train_cases = {
        "ours": lambda: ours_train_step(ours, train_ids, train_labels),
        "peer": lambda: peer_train_step(peer, train_ids, train_labels),
    }
    if compiled is not None:
        stream_cases["ours_compiled_segments"] = lambda: ours_compiled_stream_segments(compiled, stream_ids)
        train_cases["ours_compiled"] = lambda: ours_compiled_train_step(compiled, train_ids, train_labels)
    for m in models:
        m.eval()
    with torch.no_grad():
        stream = interleaved_seconds(stream_cases, args.repeats, args.device)
    print(f"stream times (s): {json.dumps(stream)}", flush=True)
    for m in models:
        m.train()
    train = interleaved_seconds(train_cases, args.repeats, args.device)
    print(f"train times (s): {json.dumps(train)}", flush=True)
    wall = time.perf_counter() - t_start
    print(f"load average at end: {os.getloadavg()}; timed part took {wall:.0f} s")

    # this machine's float32 matmul rate at the FFN's shape for one segment (512 x 256 @ 256 x 1368)
    gflops = mm_gflops(N, D_MODEL, 2 * 684, seconds=1.0, device=args.device)
    floor_fwd = linear_flops_per_token(d_ff) / (gflops * 1e9)  # seconds per token, forward
    print(
        f"float32 matmul rate {gflops:.0f} GFLOP/s; dense-layer floor {floor_fwd * 1e6:.1f} us/token forward"
    )
    med = {k: statistics.median(v) for k, v in stream.items()}
    tmed = {k: statistics.median(v) for k, v in train.items()}
    T, TT = args.stream_tokens, args.train_tokens
    rows = [
        (
            "streaming forward, one call per 512-token segment",
            T,
            med["ours_segments"],
            med["peer_segments"],
            1,
        ),
        (
            "streaming forward, ours in one call (peer: per segment)",
            T,
            med["ours_one_call"],
            med["peer_segments"],
            1,
        ),
        ("training step (forward + backward, full BPTT)", TT, tmed["ours"], tmed["peer"], 3),
    ]
    if compiled is not None:
        rows += [
            (
                "streaming forward, ours compiled, one call per segment",
                T,
                med["ours_compiled_segments"],
                med["peer_segments"],
                1,
            ),
            (
                "training step, ours compiled (checkpointed segments)",
                TT,
                tmed["ours_compiled"],
                tmed["peer"],
                3,
            ),
        ]
    lines = [
        "| case | tokens | ours s | peer s | ours tok/s | peer tok/s | speed-up (ours / peer) "
        "| dense-layer floor s | peer / floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, tok, t_ours, t_peer, passes in rows:
        floor = tok * floor_fwd * passes  # backward ~ 2x forward
        lines.append(
            f"| {name} | {tok} | {t_ours:.3f} | {t_peer:.3f} | {tok / t_ours:,.0f} | {tok / t_peer:,.0f} "
            f"| {t_peer / t_ours:.2f}x | {floor:.3f} | {t_peer / floor:.2f}x |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    targets = {
        "streaming_>=3x (per segment)": med["peer_segments"] / med["ours_segments"] >= 3,
        "streaming_>=3x (ours one call)": med["peer_segments"] / med["ours_one_call"] >= 3,
        "training_>=2x": tmed["peer"] / tmed["ours"] >= 2,
    }
    if compiled is not None:
        targets["streaming_>=3x (ours compiled)"] = med["peer_segments"] / med["ours_compiled_segments"] >= 3
        targets["training_>=2x (ours compiled)"] = tmed["peer"] / tmed["ours_compiled"] >= 2
    print(f"\ntargets met: {json.dumps(targets)}")

    meta = {
        **run_meta(args),
        "peer_version": peer_version,
        "shape": dict(vocab=VOCAB, d_model=D_MODEL, layers=LAYERS, heads=HEADS, head_dim=HEAD_DIM, N=N),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {
            "meta": meta,
            "params": params,
            "sanity": sanity,
            "stream_s": stream,
            "train_s": train,
            "median_s": {"stream": med, "train": tmed},
            "gemm_gflops": gflops,
            "dense_layer_forward_flops_per_token": linear_flops_per_token(d_ff),
            "targets_met": targets,
        }
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        head = (
            f"Against infini-transformer-pytorch {peer_version}, {meta['date_utc']} UTC, "
            f"torch {torch.__version__}, "
            + ("" if args.device == "cpu" else f"device {args.device}, ")
            + f"{meta['threads']} threads, median of {args.repeats} (interleaved). Parameters: ours "
            f"{params['ours']['total']:,}, peer {params['peer']['total']:,}.\n\n"
        )
        args.markdown.write_text(head + table + "\n")


if __name__ == "__main__":
    main()
