"""Plots: the gate scores per layer and head (the paper's Figure 3) and perplexity by position.

matplotlib is imported inside the functions, with the non-interactive Agg backend, so importing
this module is cheap and works without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

NEAR_ZERO, NEAR_ONE = 0.1, 0.9


def gate_scores(model) -> np.ndarray:
    """``sigmoid(beta)`` per layer and head, ``[n_layers, n_heads]`` (float64)."""
    with torch.no_grad():
        rows = [torch.sigmoid(g.detach().to("cpu", torch.float64)).numpy() for g in model.gates()]
    if not rows:
        raise ValueError("the model has no gates")
    return np.stack(rows)


def gate_summary(scores: np.ndarray) -> dict[str, Any]:
    """Shares of heads that are local-only (< 0.1), memory-only (> 0.9) and mixers (the rest)."""
    s = np.asarray(scores, dtype=np.float64)
    n = s.size
    local, memory = int((s < NEAR_ZERO).sum()), int((s > NEAR_ONE).sum())
    mixers = n - local - memory
    return {
        "heads": n,
        "near_0": local,
        "near_1": memory,
        "mixers": mixers,
        "share_near_0": local / n,
        "share_near_1": memory / n,
        "share_mixers": mixers / n,
        "layers_with_a_local_head": int((s < NEAR_ZERO).any(axis=1).sum()),
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_gates(model, path: str | Path) -> dict[str, Any]:
    """Heatmap of ``sigmoid(beta)``: layers along x, heads along y, with a colour bar.

    0 means the head reads only its local (in-segment) attention, 1 only the compressive memory.
    The title gives the share of heads near 0 (< 0.1), near 1 (> 0.9) and in between (mixers).
    Writes a PNG (or any format matplotlib infers from ``path``); returns ``gate_summary``.
    """
    scores = gate_scores(model)  # [L, H]
    summary = gate_summary(scores)
    plt = _pyplot()
    L, H = scores.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * L + 2.5), max(3.0, 0.3 * H + 1.8)), dpi=120)
    try:
        im = ax.imshow(scores.T, origin="lower", aspect="auto", cmap="coolwarm", vmin=0.0, vmax=1.0)
        ax.set_xlabel("layer")
        ax.set_ylabel("head")
        ax.set_xticks(range(L))
        ax.set_yticks(range(H))
        if L * H <= 256:  # annotate each cell when it stays readable
            for i in range(L):
                for j in range(H):
                    v = scores[i, j]
                    color = "white" if v < 0.2 or v > 0.8 else "black"
                    ax.text(i, j, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
        bar = fig.colorbar(im, ax=ax)
        bar.set_label("gate score sigmoid(β): 0 local, 1 memory")
        ax.set_title(
            "Gate scores: "
            f"{100 * summary['share_near_0']:.0f}% near 0 (<0.1), "
            f"{100 * summary['share_near_1']:.0f}% near 1 (>0.9), "
            f"{100 * summary['share_mixers']:.0f}% mixers",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return summary


def plot_ppl(results: dict[str, Any], path: str | Path) -> None:
    """Grouped bars: perplexity per position bucket with the memory on and off.

    ``results`` is ``evaluate_ppl``'s dict (or its JSON from ``infini eval ppl --json``). Empty
    buckets are left out; without the memory-off numbers only the memory-on bars are drawn.
    """
    try:
        buckets = [b for b in results["buckets"] if b["tokens"] and b["ppl"] is not None]
        overall = results["overall"]
    except (KeyError, TypeError):
        raise ValueError(
            "not perplexity results: expected 'buckets' and 'overall' (from 'infini eval ppl')"
        ) from None
    if not buckets:
        raise ValueError("the perplexity results have no tokens to plot")
    series = [("ppl", "memory on", "tab:blue")] + [
        (key, label, colour)
        for key, label, colour in (
            ("ppl_no_memory", "memory gated off (local only)", "tab:orange"),
            ("ppl_memory_reset", "memory emptied every segment", "tab:green"),
        )
        if all(b.get(key) is not None for b in buckets)
    ]
    plt = _pyplot()
    labels = [f"{b['label']}\n{b['tokens']:,} tok" for b in buckets]
    x = np.arange(len(buckets))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 * len(buckets) + 2), 3.8), dpi=120)
    try:
        for n, (key, label, colour) in enumerate(series):
            offset = (n - (len(series) - 1) / 2) * width
            group = ax.bar(x + offset, [b[key] for b in buckets], width, label=label, color=colour)
            ax.bar_label(group, fmt="%.1f", fontsize=6, padding=2)
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlabel("position in the document (tokens)")
        ax.set_ylabel("perplexity")
        ax.margins(y=0.35)  # headroom for the legend above the bars
        title = f"Perplexity by position; overall {overall['ppl']:.2f} with memory"
        if overall.get("ppl_no_memory") is not None:
            title += f", {overall['ppl_no_memory']:.2f} gated off"
        if overall.get("ppl_memory_reset") is not None:
            title += f", {overall['ppl_memory_reset']:.2f} emptied"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8, loc="upper left", ncol=len(series))
        fig.tight_layout()
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)


_DEPTH_LABELS = {"start": "start\n(depth 0-10%)", "middle": "middle\n(45-55%)", "end": "end\n(last segment)"}


def plot_passkey(results: dict[str, Any], path: str | Path, title: str | None = None) -> None:
    """Heatmap of passkey accuracy: prompt length along x, the key's depth (position) along y.

    ``results`` is ``run_passkey``'s dict (or its JSON from ``infini eval passkey --json``); each
    cell is annotated ``correct/trials``; cells not run stay blank.
    """
    from .perplexity import format_tokens

    try:
        lengths, positions = list(results["lengths"]), list(results["positions"])
        cells = {(c["length"], c["position"]): c for c in results["cells"]}
    except (KeyError, TypeError):
        raise ValueError(
            "not passkey results: expected 'lengths', 'positions' and 'cells' (from 'infini eval passkey')"
        ) from None
    if not cells:
        raise ValueError("the passkey results have no cells to plot")
    acc = np.full((len(positions), len(lengths)), np.nan)
    for (n, p), c in cells.items():
        if n in lengths and p in positions:
            acc[positions.index(p), lengths.index(n)] = 100.0 * c["correct"] / c["trials"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(lengths) + 2.5), 0.8 * len(positions) + 1.8), dpi=120)
    try:
        im = ax.imshow(acc, aspect="auto", cmap="RdYlGn", vmin=0.0, vmax=100.0)
        ax.set_xticks(range(len(lengths)), [format_tokens(n) for n in lengths], fontsize=8)
        ax.set_yticks(range(len(positions)), [_DEPTH_LABELS.get(p, p) for p in positions], fontsize=8)
        ax.set_xlabel("prompt length (tokens)")
        for (n, p), c in cells.items():
            if n in lengths and p in positions:
                ax.text(
                    lengths.index(n), positions.index(p), f"{c['correct']}/{c['trials']}",
                    ha="center", va="center", fontsize=7,
                )  # fmt: skip
        fig.colorbar(im, ax=ax).set_label("accuracy (%)")
        ax.set_title(title or "Passkey retrieval accuracy (greedy, exact match)", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
