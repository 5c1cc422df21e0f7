"""Rotary position embedding (Su et al. 2021), Llama's rotate-half layout.

Used only on the local softmax path. Positions restart at every segment, so a table of
``segment_len`` positions covers any stream length.

``scaling`` reproduces the frequency rescalings of converted checkpoints (Hugging Face's
``rope_parameters``): ``{"rope_type": "default"}``, ``{"rope_type": "linear", "factor": f}`` and
Llama 3.1's ``{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
"original_max_position_embeddings"}``. Types that change with the input length (dynamic NTK) or
that scale the attention logits (YaRN, LongRoPE) are refused by ``check_rope_scaling``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

ROPE_TYPES = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def check_rope_scaling(scaling: Any) -> None:
    """ValueError unless ``scaling`` is None or a supported ``{"rope_type": ..., params}`` dict."""
    if scaling is None:
        return
    if not isinstance(scaling, dict) or "rope_type" not in scaling:
        raise ValueError(f"rope_scaling must be None or a dict with a 'rope_type', got {scaling!r}")
    kind = scaling["rope_type"]
    if kind not in ROPE_TYPES:
        raise ValueError(
            f"rope_scaling type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)}); "
            "length-dependent and attention-scaling RoPE variants have no exact segment-local form"
        )
    for key in ROPE_TYPES[kind]:
        value = scaling.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"rope_scaling {kind!r} needs a positive number '{key}', got {value!r}")
    extra = sorted(set(scaling) - {"rope_type", *ROPE_TYPES[kind]})
    if extra:
        raise ValueError(f"rope_scaling {kind!r} has unknown keys: {', '.join(extra)}")
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ValueError("rope_scaling 'llama3' needs high_freq_factor > low_freq_factor")


def inverse_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> Tensor:
    """``[head_dim / 2]`` rotation frequencies, rescaled as ``scaling`` says.

    Computed in float32 exactly as Hugging Face's Llama does: pretrained models were trained with
    these rounded angles, and float64 tables would shift a converted model's logits by ~1e-4.
    """
    check_rope_scaling(scaling)
    # device="cpu" explicitly: a model built under a meta-device context (as transformers'
    # from_pretrained does) must still get real tables, which are not weights and never loaded
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "linear":  # positions divided by the factor
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        # Wavelengths longer than the original context / low_freq_factor are slowed by `factor`,
        # those shorter than context / high_freq_factor are kept, and the band between is a
        # linear blend of the two in (context / wavelength).
        factor, context = scaling["factor"], scaling["original_max_position_embeddings"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        blend = ((context / wavelen - low) / (high - low)).clamp(0.0, 1.0)  # 0: slowed, 1: kept
        return (1 - blend) * inv_freq / factor + blend * inv_freq
    return inv_freq


class RotaryEmbedding(nn.Module):
    def __init__(
        self, head_dim: int, max_positions: int, theta: float = 10000.0, scaling: dict | None = None
    ) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self._inv_freq = inverse_frequencies(head_dim, theta, scaling)
        self._build(max_positions)

    def _build(self, max_positions: int) -> None:
        positions = torch.arange(max_positions, device="cpu").float()  # float32 angles, as in HF
        angles = positions[:, None] * self._inv_freq[None, :]
        angles = torch.cat([angles, angles], dim=-1)  # [P, D]
        # Plain float32 tensors, not buffers: ``model.to(torch.bfloat16)`` must not round the
        # tables. They are derived from the config, so they never enter a checkpoint.
        self._tables = {torch.device("cpu"): (angles.cos(), angles.sin())}
        self.max_positions = max_positions

    def cover(self, n_positions: int) -> None:
        """Grow the tables (doubling) to hold positions ``0 .. n_positions - 1``; same values."""
        if n_positions > self.max_positions:
            self._build(max(n_positions, 2 * self.max_positions))

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
