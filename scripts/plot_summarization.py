"""Rouge against input length (the shape of the paper's Figure 4) from scripts/summarization_eval.sh's
JSON files: one line with the memory, one with it gated off, the lead baseline as a level.

    python scripts/plot_summarization.py RESULTS_DIR NAME FIGURE.png
    (e.g. docs/results/summarization tiny docs/img/summarization_rouge_vs_length.png)

Also prints the markdown table of docs/summarization.md (x100, as the paper prints Rouge), with the
control (each summary scored against the next paper's abstract: ``eval.summarize.control_aggregate``).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

METRICS = [("rouge1", "R-1"), ("rouge2", "R-2"), ("rougeL", "R-L"), ("overall", "overall")]


def load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def input_sizes(results: dict) -> int:
    """The median prompt length in tokens over the documents (cue and title included)."""
    return round(statistics.median(d["input_tokens"] for d in results["documents"]))


def main(out_dir: str, name: str, figure: str) -> None:
    import matplotlib

    from infini_attention.eval.summarize import control_aggregate

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(out_dir)
    rows, lines = [], {"memory on": [], "memory off": []}
    for cut in ["256", "1024", "2048", "3584", "8192", "full"]:
        for label, suffix in [("memory on", ""), ("memory off", "_memory_off")]:
            r = load(folder / f"{name}_input_{cut}{suffix}.json")
            if r is None:
                continue
            agg, size = r["aggregate"], input_sizes(r)
            lines[label].append((size, 100 * agg["overall"]))
            kept = "whole paper" if cut == "full" else f"first {int(cut):,}"
            cells = " | ".join(f"{100 * agg[k]:.2f}" for k, _ in METRICS)
            control = r.get("control") or control_aggregate(r["documents"])
            cells += f" | {100 * control['overall']:.2f}"
            rows.append(f"| {kept} | {label} | {size:,} | {agg['documents']} | {cells} |")
    print(
        "| document tokens kept | memory | median prompt tokens | papers | R-1 | R-2 | R-L | overall "
        "| control overall |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, points in lines.items():
        if points:
            x, y = zip(*points, strict=True)
            style = "-" if label == "memory on" else "--"
            ax.plot(x, y, marker="o", label=f"{name}, {label}", linestyle=style)
    lead = load(folder / "lead_test.json")
    if lead is not None:
        ax.axhline(100 * lead["aggregate"]["overall"], color="gray", linestyle=":", label="lead baseline")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt tokens (median over papers; the first K tokens of each paper)")
    ax.set_ylabel("Rouge overall (geometric mean of R-1, R-2, R-L)")
    ax.set_title("ACLSum test: Rouge against input length (scaled-down Fig. 4)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    print(f"figure written to {figure}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: plot_summarization.py RESULTS_DIR NAME FIGURE.png")
    main(*sys.argv[1:])
