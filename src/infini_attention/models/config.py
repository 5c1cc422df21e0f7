"""Model configuration: one plain dataclass, validated on construction."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..layers.rope import check_rope_scaling
from ..ops.checks import UPDATE_RULES

ATTENTION_VARIANTS = ("infini", "local", "transformer-xl", "full", "memorizing", "rmt")


@dataclass
class ModelConfig:
    """A Llama-style decoder whose attention layers are Infini-attention (or, for comparisons,
    one of the baselines of the paper's Table 2, chosen by ``attention``).

    Only the first four fields are required; ``None`` fields are derived in ``__post_init__``
    so that a saved config always holds concrete values.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # None: n_heads (plain multi-head attention)
    head_dim: int | None = None  # None: d_model // n_heads
    d_ff: int | None = None  # None: about 8/3 d_model, rounded up to a multiple of 64
    segment_len: int = 2048  # N: tokens per segment (the paper uses 2048 throughout)
    update: str = "delta"  # memory write: "linear" (eq. 8), "delta" (eq. 9), "deltanet" (not in the paper)
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # converted checkpoints' RoPE rescaling (layers/rope.py)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    gate_init: float = 0.0  # initial gate logit; sigmoid(0) = 0.5 mixes memory and local equally
    attention_bias: bool = False  # biases on the q/k/v projections (Qwen2 has them)
    mem_eps: float = 1e-6  # added to the retrieval denominator
    # Not in the paper (0 = the paper): local attention also sees the previous segment's last
    # ``local_overlap`` tokens, so tokens just after a boundary keep some local context.
    local_overlap: int = 0
    # Not in the paper (False = the paper): each token's write into the memory is scaled by a
    # learned strength sigmoid(W x + b) in (0, 1) per key/value head (DeltaNet's beta for
    # ``update = "deltanet"``), so the model can leave filler out of the memory. ``b`` starts at
    # ``write_strength_init`` (sigmoid(3) = 0.95: close to the paper's full writes).
    write_strength: bool = False
    write_strength_init: float = 3.0
    init_std: float = 0.02
    # The attention of every block. "infini" is the library's; the others are baselines
    # (layers/cached.py): "local" (segment only), "transformer-xl" (+ previous segment, cached
    # without gradient), "full" (causal over everything: short inputs only), "memorizing"
    # (transformer-xl + a kNN memory at layer ``knn_layer``), "rmt" (local + memory tokens).
    attention: str = "infini"
    rmt_memory_tokens: int = 16  # p: memory tokens read at a segment's start, written at its end
    knn_layer: int | None = None  # memorizing's kNN layer (None: 2/3 of the way up, the paper's 9 of 12)
    knn_top_k: int = 32  # keys retrieved per query and head (Wu et al. use 32)
    knn_memory: int | None = 65536  # stored tokens, oldest dropped first (the paper's 65K); None: all

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "segment_len"):
            _positive_int(name, getattr(self, name))
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.d_model % self.n_heads != 0:
                raise ValueError(
                    f"d_model ({self.d_model}) is not divisible by n_heads ({self.n_heads}); "
                    "set head_dim explicitly"
                )
            self.head_dim = self.d_model // self.n_heads
        if self.d_ff is None:
            self.d_ff = -(-8 * self.d_model // 3 // 64) * 64
        if self.knn_layer is None and self.attention == "memorizing":
            self.knn_layer = (2 * self.n_layers) // 3
        for name in ("n_kv_heads", "head_dim", "d_ff", "rmt_memory_tokens", "knn_top_k"):
            _positive_int(name, getattr(self, name))
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.update not in UPDATE_RULES:
            raise ValueError(f"update must be one of {UPDATE_RULES}, got {self.update!r}")
        for name in ("rope_theta", "norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if isinstance(self.mem_eps, bool) or not isinstance(self.mem_eps, int | float) or self.mem_eps < 0:
            raise ValueError(f"mem_eps must be a number >= 0, got {self.mem_eps!r}")
        if isinstance(self.gate_init, bool) or not isinstance(self.gate_init, int | float):
            raise ValueError(f"gate_init must be a number, got {self.gate_init!r}")
        check_rope_scaling(self.rope_scaling)
        if self.attention not in ATTENTION_VARIANTS:
            raise ValueError(f"attention must be one of {ATTENTION_VARIANTS}, got {self.attention!r}")
        layer = self.knn_layer
        if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
            raise ValueError(f"knn_layer must be an int or None, got {self.knn_layer!r}")
        if self.attention == "memorizing" and not 0 <= self.knn_layer < self.n_layers:
            raise ValueError(f"knn_layer must be in [0, n_layers={self.n_layers}), got {self.knn_layer}")
        if self.knn_memory is not None:
            _positive_int("knn_memory", self.knn_memory)
        overlap = self.local_overlap
        if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= self.segment_len:
            raise ValueError(
                f"local_overlap must be an int in [0, segment_len={self.segment_len}], got {overlap!r}"
            )
        if overlap and self.attention != "infini":
            raise ValueError(f"local_overlap is an option of attention = 'infini', not {self.attention!r}")
        if self.write_strength and self.attention != "infini":
            raise ValueError(f"write_strength is an option of attention = 'infini', not {self.attention!r}")
        w_init = self.write_strength_init
        if isinstance(w_init, bool) or not isinstance(w_init, int | float) or not math.isfinite(w_init):
            raise ValueError(f"write_strength_init must be a finite number, got {w_init!r}")
        for name in ("tie_embeddings", "attention_bias", "write_strength"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict (e.g. ``config.json``); unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {', '.join(unknown)}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"ModelConfig is missing required keys: {', '.join(missing)}")
        return cls(**data)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
