"""Training logs: ``metrics.csv`` (one row per logged step) and TensorBoard (``<out_dir>/tb``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

FIELDS = [
    "step",
    "loss",
    "lr",
    "gate_lr",
    "tokens_per_s",
    "grad_norm",
    "gate_mean",
    "gate_min",
    "gate_max",
    "eval_loss",
    "eval_ppl",
    "passkey_acc",
    "eval_passkey_acc",
    "copy_loss",
    "eval_summary_loss",
]
_TB_TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "gate_lr": "train/gate_lr",
    "tokens_per_s": "train/tokens_per_s",
    "grad_norm": "train/grad_norm",
    "gate_mean": "gates/mean",
    "gate_min": "gates/min",
    "gate_max": "gates/max",
    "eval_loss": "eval/loss",
    "eval_ppl": "eval/ppl",
    "passkey_acc": "train/passkey_acc",
    "eval_passkey_acc": "eval/passkey_acc",
    "copy_loss": "train/copy_loss",
    "eval_summary_loss": "eval/summary_loss",
}


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


class MetricsLog:
    """Appends rows to ``metrics.csv``. When resuming from ``start_step``, rows after it (logged by
    the interrupted run past its last checkpoint) are dropped, and TensorBoard purges them too."""

    def __init__(self, out_dir: Path, *, start_step: int = 0, tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / "metrics.csv"
        kept: list[list[str]] = []
        if start_step > 0 and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f))
            kept = [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= start_step]
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(FIELDS)
            w.writerows(kept)
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = start_step + 1 if start_step > 0 else None
            self.tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=purge)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([_fmt(row.get(k)) for k in FIELDS])
        if self.tb is not None:
            for key, tag in _TB_TAGS.items():
                value = row.get(key)
                if value is not None and math.isfinite(value):
                    self.tb.add_scalar(tag, value, row["step"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def read_metrics(out_dir: str | Path) -> list[dict]:
    """Rows of ``metrics.csv`` as dicts of floats (None where empty); ``step`` as int."""
    with open(Path(out_dir) / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        out.append({k: (int(v) if k == "step" else float(v)) if v != "" else None for k, v in r.items()})
    return out
