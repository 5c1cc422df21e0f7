"""Rotary position embedding (Su et al. 2021), Llama's rotate-half layout.

Used only on the local softmax path. Positions restart at every segment, so a table of
``segment_len`` positions covers any stream length.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.arange(max_positions, dtype=torch.float64)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)  # [P, D]
        # Plain float64 tensors, not buffers: ``model.to(torch.bfloat16)`` must not round the
        # tables. They are derived from the config, so they never enter a checkpoint.
        self._tables = {torch.device("cpu"): (angles.cos(), angles.sin())}

    def _on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._tables:
            cos, sin = self._tables[torch.device("cpu")]
            self._tables[device] = (cos.to(device), sin.to(device))
        return self._tables[device]

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """x ``[B, T, h, D]`` rotated by ``positions`` ``[T]`` (int)."""
        cos, sin = self._on(x.device)
        cos = cos[positions].to(x.dtype)[None, :, None, :]  # [1, T, 1, D]
        sin = sin[positions].to(x.dtype)[None, :, None, :]
        return x * cos + _rotate_half(x) * sin


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)
