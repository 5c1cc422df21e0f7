"""AdamW with its parameter groups, and the warmup + cosine learning-rate schedule.

Groups (each parameter in exactly one; tied weights counted once):
- ``decay``: every matrix (``ndim >= 2``): projections, MLP, and the token embedding, which is tied
  to the output head by default, so it is decayed like the head it also is;
- ``no_decay``: vectors: RMSNorm weights and biases;
- ``gates``: the per-head gate logits ``blocks.{i}.attn.gate`` alone, with their own peak learning
  rate ``gate_lr`` and no weight decay. Adam's normalised steps move a logit by about lr per step,
  so at a model-sized lr the gates stay near sigmoid(0) = 0.5; weight decay would pull them back
  to 0 as well (paper.md section 4.1, the Hugging Face reproduction).
- ``write``: the learned write strengths' projections ``blocks.{i}.attn.write_proj`` (not in the
  paper; only with ``ModelConfig.write_strength``), peak learning rate ``write_lr`` (default lr),
  no weight decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import OptimConfig


def param_groups(model: nn.Module, optim: OptimConfig) -> list[dict]:
    """The AdamW groups (empty ones left out); each carries ``name`` and ``peak_lr`` for the schedule."""
    gate_ids = {id(p) for p in model.gates()}
    decay, no_decay, gates, write = [], [], [], []
    for name, p in model.named_parameters():  # named_parameters yields a tied parameter once
        if not p.requires_grad:
            continue
        if id(p) in gate_ids:
            gates.append(p)
        elif ".attn.write_proj." in name:
            write.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": optim.weight_decay, "peak_lr": optim.lr},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "peak_lr": optim.lr},
        {"name": "gates", "params": gates, "weight_decay": 0.0, "peak_lr": optim.gate_lr},
        {
            "name": "write",
            "params": write,
            "weight_decay": 0.0,
            "peak_lr": optim.lr if optim.write_lr is None else optim.write_lr,
        },
    ]
    for g in groups:
        g["lr"] = g["peak_lr"]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    # foreach=False: the plain per-parameter loop, identical on every run (resume is bit-exact)
    return torch.optim.AdamW(
        param_groups(model, optim), lr=optim.lr, betas=optim.betas, eps=optim.eps, foreach=False
    )


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr for optimiser step ``step`` (0-based: the first step is 0).

    Linear warmup ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` steps, then a
    cosine from 1 down to ``min_lr_ratio`` at the last step ``max_steps - 1``; constant after it.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return 1.0 if step < max_steps else min_lr_ratio
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Schedule:
    """Sets every group's lr to ``peak_lr * lr_factor(step)``: the gate group follows the same
    shape with its own peak. ``apply(step)`` before optimiser step ``step``."""

    def __init__(self, optimizer: torch.optim.Optimizer, optim: OptimConfig, max_steps: int) -> None:
        self.optimizer = optimizer
        self.warmup_steps, self.min_lr_ratio, self.max_steps = (
            optim.warmup_steps,
            optim.min_lr_ratio,
            max_steps,
        )

    def factor(self, step: int) -> float:
        return lr_factor(
            step, warmup_steps=self.warmup_steps, max_steps=self.max_steps, min_lr_ratio=self.min_lr_ratio
        )

    def apply(self, step: int) -> dict[str, float]:
        """Set the lrs for ``step``; returns ``{group name: lr}``."""
        f = self.factor(step)
        for g in self.optimizer.param_groups:
            g["lr"] = g["peak_lr"] * f
        return {g["name"]: g["lr"] for g in self.optimizer.param_groups}

    def state_dict(self) -> dict:
        return {
            "warmup_steps": self.warmup_steps,
            "min_lr_ratio": self.min_lr_ratio,
            "max_steps": self.max_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.warmup_steps = int(state["warmup_steps"])
        self.min_lr_ratio = float(state["min_lr_ratio"])
        self.max_steps = int(state["max_steps"])
