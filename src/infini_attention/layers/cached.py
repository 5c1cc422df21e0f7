"""Softmax attention over a key/value cache: the baselines of the paper's Table 2.

One layer, four ways of choosing what a segment's queries see besides their own segment:
- ``local``: nothing (segment-local attention, no memory: the lower bound);
- ``transformer-xl``: the previous segment's keys/values, cached without gradient (Dai et al. 2019);
- ``full``: every earlier token, with gradient (ordinary causal attention: short inputs only);
- ``memorizing`` (``knn_top_k > 0``, on top of ``transformer-xl``): the k nearest of all earlier
  keys/values (exact top-k by dot product, no gradient), mixed with the local output by a learned
  per-head gate (Wu et al. 2022).
RMT is the ``local`` layer fed memory tokens by the model (models/transformer.py).

Keys and values are cached without position encoding; RoPE is applied on every call at positions
counted from the oldest cached token, so only relative distances matter and a stream can run for
ever. Shape legend: B batch, T tokens, H query heads, Hkv key/value heads, G = H / Hkv, D head dim,
P cached past tokens, t tokens of the open segment, S stored kNN tokens, k top-k.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rope import RotaryEmbedding

CACHE_MODES = ("local", "transformer-xl", "full")
_KNN_BLOCK = 8192  # stored tokens scored at once: bounds the score matrix on long streams


@dataclass(frozen=True)
class CacheState:
    """What one softmax-attention layer keeps between calls.

    ``past_*``: complete earlier segments the queries attend to (empty for ``local``; the last one
    for ``transformer-xl``; all for ``full``). ``k``/``v``/``valid``: the open segment.
    ``store_*``: the kNN memory (empty unless the layer is a memorizing layer). ``*valid`` is False
    for padding and for rows whose memory was reset; such keys are never attended to.
    """

    past_k: Tensor  # [B, P, Hkv, D]
    past_v: Tensor  # [B, P, Hkv, D]
    past_valid: Tensor  # [B, P] bool
    k: Tensor  # [B, t, Hkv, D]
    v: Tensor  # [B, t, Hkv, D]
    valid: Tensor  # [B, t] bool
    store_k: Tensor  # [B, S, Hkv, D]
    store_v: Tensor  # [B, S, Hkv, D]
    store_valid: Tensor  # [B, S] bool

    @classmethod
    def empty(cls, batch_size: int, n_kv_heads: int, head_dim: int, dtype: torch.dtype, device) -> CacheState:
        kv = torch.zeros(batch_size, 0, n_kv_heads, head_dim, dtype=dtype, device=device)
        ok = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)
        return cls(kv, kv, ok, kv, kv, ok, kv, kv, ok)

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]

    @property
    def buffered(self) -> int:
        """Tokens of the open segment (its position offset)."""
        return self.k.shape[1]

    def tensors(self) -> list[Tensor]:
        return [getattr(self, f.name) for f in fields(self)]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def detach(self) -> CacheState:
        return replace(self, **{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def reset_rows(self, rows: Tensor) -> CacheState:
        """Forget everything before the open segment in the rows where ``rows`` ``[B]`` is True."""
        keep = ~rows.bool()[:, None]  # [B, 1]
        return replace(self, past_valid=self.past_valid & keep, store_valid=self.store_valid & keep)

    def to(self, device: torch.device | str) -> CacheState:
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class CachedAttention(nn.Module):
    """Grouped-query softmax attention over the open segment plus a cache (see the module doc).

    ``segment_len`` is the unit at which the cache moves; ``knn_top_k > 0`` adds the memorizing
    kNN path over at most ``knn_memory`` stored tokens (None: unbounded) and a gate ``[H]``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        segment_len: int,
        *,
        mode: str = "local",
        rope_theta: float = 10000.0,
        rope_scaling: dict | None = None,
        bias: bool = False,
        knn_top_k: int = 0,
        knn_memory: int | None = None,
        gate_init: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in CACHE_MODES:
            raise ValueError(f"mode must be one of {CACHE_MODES}, got {mode!r}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.segment_len, self.mode = segment_len, mode
        self.knn_top_k, self.knn_memory = knn_top_k, knn_memory
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=False)
        if knn_top_k:
            self.gate = nn.Parameter(torch.full((n_heads,), float(gate_init)))
        # a segment and the one before it (``full`` grows the table as its cache grows)
        self.rope = RotaryEmbedding(head_dim, 2 * segment_len, rope_theta, rope_scaling)

    def init_state(self, batch_size: int, dtype: torch.dtype, device: torch.device) -> CacheState:
        return CacheState.empty(batch_size, self.n_kv_heads, self.head_dim, dtype, device)

    def forward(
        self, x: Tensor, state: CacheState | None = None, pad_mask: Tensor | None = None
    ) -> tuple[Tensor, CacheState]:
        """x ``[B, T, d_model]``; ``pad_mask`` ``[B, T]`` True on padding (never attended to)."""
        B, T, _ = x.shape
        if state is None:
            state = self.init_state(B, x.dtype, x.device)
        q = self.q_proj(x).unflatten(-1, (self.n_heads, self.head_dim))  # [B, T, H, D]
        k = self.k_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim))  # [B, T, Hkv, D]
        v = self.v_proj(x).unflatten(-1, (self.n_kv_heads, self.head_dim))  # [B, T, Hkv, D]
        valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if pad_mask is None else ~pad_mask
        outs, a = [], 0
        while a < T:  # one piece per segment (the first one finishes the open segment)
            b = min(T, a + self.segment_len - state.buffered)
            o, state = self._piece(q[:, a:b], k[:, a:b], v[:, a:b], valid[:, a:b], state)
            outs.append(o)
            a = b
        o = torch.cat(outs, dim=1) if outs else q.new_zeros(B, 0, self.n_heads, self.head_dim)
        return self.o_proj(o.flatten(2)), state

    def _piece(
        self, q: Tensor, k: Tensor, v: Tensor, valid: Tensor, state: CacheState
    ) -> tuple[Tensor, CacheState]:
        """Queries of one segment (n tokens after ``state.buffered``) -> ``[B, n, H, D]``."""
        n, t0, P = q.shape[1], state.buffered, state.past_k.shape[1]
        seg_k = torch.cat([state.k, k], dim=1)  # [B, t0+n, Hkv, D]
        seg_v = torch.cat([state.v, v], dim=1)
        seg_valid = torch.cat([state.valid, valid], dim=1)  # [B, t0+n]
        keys = torch.cat([state.past_k, seg_k], dim=1)  # [B, L, Hkv, D], L = P + t0 + n
        values = torch.cat([state.past_v, seg_v], dim=1)
        key_ok = torch.cat([state.past_valid, seg_valid], dim=1)  # [B, L]
        L = keys.shape[1]
        q_pos = torch.arange(P + t0, L, device=q.device)  # [n]
        k_pos = torch.arange(L, device=q.device)  # [L]
        causal = k_pos[None, :] <= q_pos[:, None]  # [n, L]
        # a query always sees its own key, so no row is empty (padding rows give finite garbage)
        own = k_pos[None, :] == q_pos[:, None]
        mask = causal & (key_ok[:, None, :] | own)  # [B, n, L]
        self.rope.cover(L)  # only ``full`` outgrows two segments
        o = _attend(self.rope(q, q_pos), self.rope(keys, k_pos), values, mask[:, None])
        if self.knn_top_k:
            g = torch.sigmoid(self.gate).to(o.dtype)[:, None]  # [H, 1]
            o_mem = self._knn(q, state)
            o = g * o_mem + (1 - g) * o  # Wu et al. eq. (per head): memory share g

        if t0 + n < self.segment_len:  # segment still open
            return o, replace(state, k=seg_k, v=seg_v, valid=seg_valid)
        return o, self._close_segment(state, seg_k, seg_v, seg_valid)

    def _close_segment(self, state: CacheState, k: Tensor, v: Tensor, valid: Tensor) -> CacheState:
        """A finished segment moves into the cache (and the kNN store) as the mode says."""
        if self.mode == "local":
            past = (state.past_k, state.past_v, state.past_valid)
        elif self.mode == "transformer-xl":  # the previous segment only, no gradient into it
            past = (k.detach(), v.detach(), valid)
        else:  # full: everything, gradient included
            past = (
                torch.cat([state.past_k, k], dim=1),
                torch.cat([state.past_v, v], dim=1),
                torch.cat([state.past_valid, valid], dim=1),
            )
        store = (state.store_k, state.store_v, state.store_valid)
        if self.knn_top_k:
            new = (k.detach(), v.detach(), valid)
            store = tuple(torch.cat(pair, dim=1) for pair in zip(store, new, strict=True))
            if self.knn_memory is not None:  # oldest tokens out (the paper's 65K memory)
                store = tuple(s[:, -self.knn_memory :] for s in store)
        empty = state.k[:, :0]
        return CacheState(*past, empty, empty, state.valid[:, :0], *store)

    def _knn(self, q: Tensor, state: CacheState) -> Tensor:
        """Attention over the ``knn_top_k`` stored keys nearest each query (by q.k): ``[B, n, H, D]``.

        The store holds earlier complete segments only; a query with no stored key reads zeros.
        Exact top-k, computed block by block so the score matrix stays bounded.
        """
        B, n, H, D = q.shape
        Hkv, S = self.n_kv_heads, state.store_k.shape[1]
        if S == 0:
            return q.new_zeros(B, n, H, D)
        scale = D**-0.5
        qg = q.unflatten(2, (Hkv, H // Hkv)).permute(0, 2, 3, 1, 4)  # [B, Hkv, G, n, D]
        neg = torch.finfo(q.dtype).min
        best_s, best_i = None, None  # running top-k: [B, Hkv, G, n, k]
        for s0 in range(0, S, _KNN_BLOCK):
            ks = state.store_k[:, s0 : s0 + _KNN_BLOCK].transpose(1, 2)  # [B, Hkv, s, D]
            scores = torch.einsum("bhgnd,bhsd->bhgns", qg, ks) * scale
            ok = state.store_valid[:, None, None, None, s0 : s0 + _KNN_BLOCK]
            scores = scores.masked_fill(~ok, neg)
            idx = torch.arange(s0, s0 + ks.shape[2], device=q.device).expand_as(scores)
            if best_s is not None:
                scores, idx = torch.cat([best_s, scores], -1), torch.cat([best_i, idx], -1)
            best_s, pick = scores.topk(min(self.knn_top_k, scores.shape[-1]), dim=-1)
            best_i = idx.gather(-1, pick)
        weights = torch.softmax(best_s, dim=-1)  # [B, Hkv, G, n, k]
        # rows whose store is all invalid (reset) would average garbage: they read zeros instead
        any_ok = state.store_valid.any(dim=1)[:, None, None, None, None].to(weights.dtype)
        weights = weights * any_ok * (best_s > neg).to(weights.dtype)
        # gather the picked values through flat row indices (a [.., k, D] index would be D x larger)
        G, kk = H // Hkv, best_i.shape[-1]
        base = (torch.arange(B, device=q.device)[:, None] * Hkv + torch.arange(Hkv, device=q.device)) * S
        rows = best_i + base[:, :, None, None, None]  # [B, Hkv, G, n, k] into [B*Hkv*S]
        flat_v = state.store_v.transpose(1, 2).reshape(B * Hkv * S, D)
        picked = flat_v[rows.flatten()].view(B, Hkv, G, n, kk, D)
        o = (weights[..., None] * picked).sum(-2)  # [B, Hkv, G, n, D]
        return o.flatten(1, 2).transpose(1, 2)  # [B, n, H, D]


def _attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """q ``[B, n, H, D]``, k/v ``[B, L, Hkv, D]``, mask ``[B, 1, n, L]`` (True: attend) -> ``[B, n, H, D]``;
    query head h reads key/value head h // G (``enable_gqa``, Llama's repeat_kv order)."""
    H, Hkv = q.shape[2], k.shape[2]
    o = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, enable_gqa=Hkv != H
    )  # [B, H, n, D]
    return o.transpose(1, 2)
