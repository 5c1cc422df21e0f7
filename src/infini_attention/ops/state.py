"""The recurrent state of one Infini-attention layer.

Shape legend: B batch, Hkv key/value heads, Dk key dim, Dv value dim,
t tokens of the current, unfinished segment (0 <= t < N), w tokens of the previous segment
that local attention still sees (0 <= w <= overlap; always 0 without the overlap option).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class InfiniState:
    """Compressive memory plus what the unfinished segment still needs.

    Memory is constant-size; the buffers hold at most ``segment_len - 1`` tokens, so the
    whole state is bounded whatever the stream length. A segment is written into ``M`` and
    ``z`` only once it is complete, which is why its keys and values are kept until then.
    """

    M: Tensor  # [B, Hkv, Dk, Dv] associative memory, float32 (float64 for float64 inputs)
    z: Tensor  # [B, Hkv, Dk]     normaliser: sum of sigma(K) over written tokens
    k_mem: Tensor  # [B, t, Hkv, Dk] memory-path keys (no position encoding) of the open segment
    k_local: Tensor  # [B, t, Hkv, Dk] position-encoded keys of the open segment
    v: Tensor  # [B, t, Hkv, Dv] values of the open segment
    # The overlap option only (``overlap > 0``); None means empty (the paper's state):
    k_next: Tensor | None = None  # [B, t or 0, Hkv, Dk] open segment's keys as the next segment sees them
    tail_k: Tensor | None = None  # [B, w, Hkv, Dk] last keys of the previous segment, encoded for this one
    tail_v: Tensor | None = None  # [B, w, Hkv, Dv] their values
    tail_valid: Tensor | None = None  # [B, w] bool: False where a row was reset (another input's tail)
    # Not in the paper: the open segment's write strengths (the op's ``write_strength``); None: all 1
    write: Tensor | None = None  # [B, t, Hkv]

    def __post_init__(self) -> None:
        empty_k = self.k_mem[:, :0]  # [B, 0, Hkv, Dk]
        for name, default in (("k_next", empty_k), ("tail_k", empty_k), ("tail_v", self.v[:, :0])):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if self.write is None:
            ones = torch.ones(self.v.shape[:3], dtype=self.v.dtype, device=self.v.device)  # [B, t, Hkv]
            object.__setattr__(self, "write", ones)
        if self.tail_valid is None:
            valid = torch.zeros(self.tail_v.shape[:2], dtype=torch.bool, device=self.tail_v.device)
            object.__setattr__(self, "tail_valid", valid)

    @classmethod
    def zeros(
        cls,
        batch_size: int,
        n_kv_heads: int,
        d_key: int,
        d_value: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> InfiniState:
        """Empty memory and no open segment. ``dtype`` is the compute dtype of the buffers."""
        mem_dtype = memory_dtype(dtype)
        return cls(
            M=torch.zeros(batch_size, n_kv_heads, d_key, d_value, dtype=mem_dtype, device=device),
            z=torch.zeros(batch_size, n_kv_heads, d_key, dtype=mem_dtype, device=device),
            k_mem=torch.zeros(batch_size, 0, n_kv_heads, d_key, dtype=dtype, device=device),
            k_local=torch.zeros(batch_size, 0, n_kv_heads, d_key, dtype=dtype, device=device),
            v=torch.zeros(batch_size, 0, n_kv_heads, d_value, dtype=dtype, device=device),
        )

    @property
    def batch_size(self) -> int:
        return self.M.shape[0]

    @property
    def buffered(self) -> int:
        """Tokens of the open segment held in the buffers (its position offset)."""
        return self.v.shape[1]

    def tensors(self) -> list[Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    @property
    def nbytes(self) -> int:
        """Bytes held by every tensor of the state."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def detach(self) -> InfiniState:
        """A new state with the same values and no autograd history (truncates BPTT)."""
        return replace(self, **{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def reset_rows(self, rows: Tensor) -> InfiniState:
        """Empty memory (M = 0, z = 0) for the batch rows where ``rows`` ``[B]`` is True.

        Multiplies rather than assigns, so autograd stays simple; buffers are kept (callers
        reset at segment boundaries, where they are empty). The previous segment's tail (the
        overlap option) is hidden from those rows' local attention.
        """
        keep = (~rows.bool()).to(self.M.dtype)  # [B]
        return replace(
            self,
            M=self.M * keep[:, None, None, None],
            z=self.z * keep[:, None, None],
            tail_valid=self.tail_valid & ~rows.bool()[:, None],
        )

    def to(self, device: torch.device | str) -> InfiniState:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def memory_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """M and z are float32 whatever the compute dtype, float64 when computing in float64."""
    return torch.float64 if compute_dtype == torch.float64 else torch.float32
