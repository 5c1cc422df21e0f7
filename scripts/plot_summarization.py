"""Rouge against input length (the shape of the paper's Figure 4) from scripts/summarization_eval.sh's
JSON files: one line with the memory, one with it gated off, the lead baseline as a level.

    python scripts/plot_summarization.py RESULTS_DIR NAME[,NAME...] FIGURE.png
    (e.g. docs/results/summarization tiny,smollm2 docs/img/summarization_rouge_vs_length.png)

Also prints the markdown table of docs/summarization.md (x100, as the paper prints Rouge), with the
control (each summary scored against the next paper's abstract: ``eval.summarize.control_aggregate``)
and, where memory off was run, the on - off gap in overall with a 95% paired bootstrap interval.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
from pathlib import Path

METRICS = [("rouge1", "R-1"), ("rouge2", "R-2"), ("rougeL", "R-L"), ("overall", "overall")]


def load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def input_sizes(results: dict) -> int:
    """The median prompt length in tokens over the documents (cue and title included)."""
    return round(statistics.median(d["input_tokens"] for d in results["documents"]))


def input_cuts(folder: Path, name: str) -> list[str]:
    """The K of every ``NAME_input_K.json`` (memory on) in ``folder``, ascending, "full" last."""
    cuts = {p.stem.removeprefix(f"{name}_input_") for p in folder.glob(f"{name}_input_*.json")}
    cuts = {c for c in cuts if c == "full" or c.isdigit()}
    return sorted(cuts, key=lambda c: float("inf") if c == "full" else int(c))


def bootstrap_gap(
    a: list[dict], b: list[dict], draws: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Overall(a) - overall(b) x100 on the same papers, with a 95% paired bootstrap interval
    (papers resampled with replacement, both systems on the same draw)."""
    from infini_attention.eval.summarize import aggregate

    assert [d["id"] for d in a] == [d["id"] for d in b], "compare the same papers"
    rng = random.Random(seed)
    gap = 100 * (aggregate(a)["overall"] - aggregate(b)["overall"])
    gaps = []
    for _ in range(draws):
        idx = [rng.randrange(len(a)) for _ in a]
        gaps.append(
            100 * (aggregate([a[i] for i in idx])["overall"] - aggregate([b[i] for i in idx])["overall"])
        )
    gaps.sort()
    return gap, gaps[int(0.025 * draws)], gaps[int(0.975 * draws) - 1]


def table_and_lines(folder: Path, name: str) -> tuple[list[str], dict[str, list[tuple[int, float]]]]:
    """Markdown rows and ``{memory on/off: [(median prompt tokens, overall x100)]}`` of one model."""
    from infini_attention.eval.summarize import control_aggregate

    rows, lines = [], {"memory on": [], "memory off": []}
    for cut in input_cuts(folder, name):
        on = load(folder / f"{name}_input_{cut}.json")
        off = load(folder / f"{name}_input_{cut}_memory_off.json")
        for label, r in [("memory on", on), ("memory off", off)]:
            if r is None:
                continue
            agg, size = r["aggregate"], input_sizes(r)
            lines[label].append((size, 100 * agg["overall"]))
            kept = "whole paper" if cut == "full" else f"first {int(cut):,}"
            cells = " | ".join(f"{100 * agg[k]:.2f}" for k, _ in METRICS)
            control = r.get("control") or control_aggregate(r["documents"])
            cells += f" | {100 * control['overall']:.2f}"
            rows.append(f"| {kept} | {label} | {size:,} | {agg['documents']} | {cells} |")
            if r is off:  # memory off beside memory on, on the same papers
                gap, low, high = bootstrap_gap(on["documents"], r["documents"])
                rows.append(f"|  | on - off | | | | | | {gap:+.2f} [{low:+.2f}, {high:+.2f}] | |")
    return rows, lines


def main(out_dir: str, names: str, figure: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(out_dir)
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for name in names.split(","):
        rows, lines = table_and_lines(folder, name)
        print(f"\n{name}:\n")
        print(
            "| document tokens kept | memory | median prompt tokens | papers | R-1 | R-2 | R-L | overall "
            "| control overall |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        print("\n".join(rows))
        for label, points in lines.items():
            if points:
                x, y = zip(*points, strict=True)
                style = "-" if label == "memory on" else "--"
                ax.plot(x, y, marker="o", label=f"{name}, {label}", linestyle=style)
    lead = load(folder / "lead_test.json")
    if lead is not None:
        papers = lead["aggregate"]["documents"]
        ax.axhline(
            100 * lead["aggregate"]["overall"], color="gray", linestyle=":", label=f"lead ({papers} papers)"
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt tokens (median over papers; the first K tokens of each paper)")
    ax.set_ylabel("Rouge overall (geometric mean of R-1, R-2, R-L)")
    ax.set_title("ACLSum test: Rouge against input length (scaled-down Fig. 4)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    print(f"figure written to {figure}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: plot_summarization.py RESULTS_DIR NAME[,NAME...] FIGURE.png")
    main(*sys.argv[1:])
