"""The model size the performance issue names for its model-level benchmarks (peer_bench.py, perf.py):
vocab 256, d_model 256, 4 layers, 4 heads of 64, N = 512, delta rule, SwiGLU d_ff 684 (sized to the
peer's GEGLU feed-forward, ``ff_mult=4``: 525,312 against 525,396 parameters per layer)."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import torch

from infini_attention import InfiniTransformer, ModelConfig

VOCAB, D_MODEL, LAYERS, HEADS, HEAD_DIM, N, D_FF = 256, 256, 4, 4, 64, 512, 684


def build_model(seed: int = 0, d_ff: int = D_FF) -> InfiniTransformer:
    """The issue's model, random init from ``seed``."""
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        n_layers=LAYERS,
        n_heads=HEADS,
        head_dim=HEAD_DIM,
        segment_len=N,
        update="delta",
        d_ff=d_ff,
    )
    return InfiniTransformer(config)


def run_meta(args) -> dict:
    """When and where a benchmark ran, and with which arguments (for its JSON)."""
    return {
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
