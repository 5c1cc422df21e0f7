"""The Infini-attention layer: projections, RoPE on the local path, the op, output projection.

Shape legend: B batch, T tokens, H query heads, Hkv key/value heads, D head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import InfiniState, infini_attention
from ..ops.checks import check_overlap
from .rope import RotaryEmbedding


class InfiniAttention(nn.Module):
    """Multi-head (or grouped-query) Infini-attention (paper eqs. 5-11).

    Q, K, V are shared by both paths; the only parameters beyond ordinary attention are the
    per-head gate logits ``gate`` ``[H]`` (memory weight ``sigmoid(gate)``). RoPE is applied
    to the local path only, at positions that restart every segment.

    ``overlap`` W > 0 (not in the paper) lets local attention also see the previous segment's
    last W tokens: a segment's tokens sit at positions W..W+N-1 and the previous segment's last
    W at 0..W-1, so the RoPE table covers N + W positions and relative distances stay exact.

    ``write_strength`` (not in the paper) adds ``write_proj`` ``[d_model -> Hkv]``: token t's write
    into the memory of key/value head j is scaled by sigmoid(write_proj(x_t))_j.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        segment_len: int,
        *,
        update: str = "delta",
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        gate_init: float = 0.0,
        bias: bool = False,
        mem_eps: float = 1e-6,
        overlap: int = 0,
        write_strength: bool = False,
    ) -> None:
        super().__init__()
        check_overlap(overlap, segment_len)  # at construction, not at the first forward
        self.overlap = overlap
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.segment_len, self.update, self.mem_eps = segment_len, update, mem_eps
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.gate = nn.Parameter(torch.full((n_heads,), float(gate_init)))
        self.write_proj = nn.Linear(d_model, n_kv_heads, bias=True) if write_strength else None
        self.rope = RotaryEmbedding(head_dim, segment_len + overlap, rope_theta, rope_scaling)
        self.op = infini_attention  # tests swap in infini_attention_naive

    def init_state(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> InfiniState:
        D = self.head_dim
        return InfiniState.zeros(batch_size, self.n_kv_heads, D, D, dtype=dtype, device=device)

    def forward(
        self, x: Tensor, state: InfiniState | None = None, pad_mask: Tensor | None = None
    ) -> tuple[Tensor, InfiniState]:
        """x ``[B, T, d_model]``; ``pad_mask`` ``[B, T]`` True on padding, which writes nothing."""
        B, T, _ = x.shape
        q = self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim))  # [B, T, H, D]
        k = self.k_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim))  # [B, T, Hkv, D]
        v = self.v_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim))  # [B, T, Hkv, D]
        write = torch.sigmoid(self.write_proj(x)) if self.write_proj is not None else None  # [B, T, Hkv]
        if pad_mask is not None:  # padding writes nothing into M or z, whatever the rule
            keep = ~pad_mask[:, :, None]  # [B, T, 1]
            write = keep.to(q.dtype) if write is None else write * keep
            write = write.expand(B, T, self.n_kv_heads)
        if write is not None:
            write = write.to(q.dtype)  # (under autocast the projections' dtype)
        t0 = 0 if state is None else state.buffered  # offset inside the open segment
        N, W = self.segment_len, self.overlap
        positions = (t0 + torch.arange(T, device=x.device)) % N + W  # [T]
        k_next = None
        if W:  # as the next segment sees them: N earlier (only the last W of a segment are used)
            k_next = self.rope(k, (positions - N).clamp(min=0))
        o, state = self.op(
            q,
            k,
            v,
            self.gate,
            segment_len=self.segment_len,
            update=self.update,
            q_local=self.rope(q, positions),
            k_local=self.rope(k, positions),
            initial_state=state,
            eps=self.mem_eps,
            overlap=W,
            k_next=k_next,
            write_strength=write,
        )  # o: [B, T, H, D]
        return self.o_proj(o.flatten(2)), state
