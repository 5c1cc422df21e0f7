"""Fast Infini-attention: all segments at once, no Python loop over tokens.

Same contract and results as the reference in ``naive.py``. Where the work goes:
- local attention: one ``scaled_dot_product_attention`` call over all complete segments,
  batched as ``[B*S, H, N, D]``, plus one for the ragged tail (and one for the open segment
  left by an earlier call);
- linear memory: closed form, an exclusive prefix sum over segments of sigma(K)^T V;
- delta memory: the write is affine in M, ``M_s = M_{s-1} + U_s - G_s M_{s-1}``, with
  U_s = sigma(K_s)^T V_s and G_s = sigma(K_s)^T diag(1/(sigma(K_s) z_{s-1} + eps)) sigma(K_s)
  both computed for every segment at once (z_s is a prefix sum); the scan over segments
  carries only the Dk x Dv matrix and costs one small matmul per segment;
- retrieval: one batched matmul against [M | z], giving numerator and denominator together;
- ``deltanet`` (not in the paper): the token-by-token delta rule is affine in M over a segment
  too; its U_s and G_s come from one batched unit-triangular solve per segment (ops/README.md).

Shape legend: B batch, T tokens, H query heads, Hkv key/value heads, G = H / Hkv query heads
per key/value head, Dk key dim, Dv value dim, N segment length, S complete segments.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .checks import check_inputs
from .naive import sigma, unit
from .state import InfiniState


def infini_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    *,
    segment_len: int,
    update: str = "delta",
    q_local: Tensor | None = None,
    k_local: Tensor | None = None,
    initial_state: InfiniState | None = None,
    eps: float = 1e-6,
    overlap: int = 0,
    k_next: Tensor | None = None,
    write_strength: Tensor | None = None,
) -> tuple[Tensor, InfiniState]:
    """Infini-attention over a stream chunk, before the output projection.

    Args:
        q: ``[B, T, H, Dk]`` queries for the memory path (no position encoding).
        k: ``[B, T, Hkv, Dk]`` keys for the memory path (no position encoding).
        v: ``[B, T, Hkv, Dv]`` values, shared by both paths.
        beta: ``[H]`` gate logits; memory weight is ``sigmoid(beta)`` per query head.
        segment_len: N, tokens per segment.
        update: ``"linear"`` (eq. 8) or ``"delta"`` (eq. 9) memory write; ``"deltanet"`` (not
            in the paper): unit-length features, the delta rule token by token, no normaliser z.
        q_local, k_local: position-encoded copies for the local softmax path (default q, k).
        initial_state: state returned by an earlier call; continues that stream.
        eps: added to the retrieval denominator (the first segment retrieves zeros).
        overlap: W, not in the paper (0 = the paper): local attention also sees the last W
            tokens of the previous segment, so a segment's first tokens keep some local context.
            Memory reads and writes are unchanged.
        k_next: ``[B, T, Hkv, Dk]`` the keys as the *next* segment's queries see them (with
            RoPE: rotated to positions W - N + p instead of W + p); default ``k_local``.
        write_strength: ``[B, T, Hkv]``, not in the paper (None = all 1 = the paper): scales each
            token's write into M and z (DeltaNet's beta for ``deltanet``); 0 writes nothing, which
            is how the layer keeps padding out of the memory. Meant to lie in [0, 1].

    Returns:
        ``(o, state)``: ``o`` is ``[B, T, H, Dv]``; ``state`` continues the stream. Splitting
        an input at any points and chaining the calls gives the same outputs and final state.
    """
    q_local, k_local, k_next, state = check_inputs(
        q,
        k,
        v,
        beta,
        segment_len,
        update,
        q_local,
        k_local,
        initial_state,
        eps,
        overlap,
        k_next,
        write_strength,
    )
    B, T, H, _ = q.shape
    if T == 0:
        return q.new_zeros(B, 0, H, v.shape[3]), state
    wr = write_strength  # [B, T, Hkv] or None (all 1)
    if wr is None and state.buffered:  # the open segment's buffered strengths meet the new ones
        wr = v.new_ones(v.shape[:3])  # (x * 1.0 is exact: results equal the all-1 path's)
    gate = torch.sigmoid(beta).to(q.dtype)  # [H]
    N = segment_len
    outs = []
    M, z = state.M, state.z

    # 1. Finish the segment an earlier call left open, if any.
    t0 = state.buffered
    n0 = min(N - t0, T) if t0 > 0 else 0
    W = overlap
    # the previous segment's last keys (overlap option; w = 0 otherwise): [B, w, ...]
    tail = _Tail(state.tail_k, state.tail_v, state.tail_valid)
    if n0 > 0:
        k_mem_seg = torch.cat([state.k_mem, k[:, :n0]], dim=1)  # [B, t0+n0, Hkv, Dk]
        k_loc_seg = torch.cat([state.k_local, k_local[:, :n0]], dim=1)
        v_seg = torch.cat([state.v, v[:, :n0]], dim=1)
        k_next_seg = torch.cat([state.k_next, k_next[:, :n0]], dim=1) if W else state.k_next
        w_seg = torch.cat([state.write, wr[:, :n0]], dim=1) if wr is not None else None  # [B, t0+n0, Hkv]
        # queries sit at positions t0..t0+n0-1 of the segment: a bottom-right causal mask
        causal = torch.ones(n0, t0 + n0, dtype=torch.bool, device=q.device).tril(diagonal=t0)
        a_dot = _local_attention(
            q_local[:, None, :n0], k_loc_seg[:, None], v_seg[:, None], causal, tail.per_segment()
        )
        a_mem = _retrieve(q[:, None, :n0], M[:, None], z[:, None], update, eps)
        outs.append(_mix(gate, a_mem[:, 0], a_dot[:, 0]))
        if t0 + n0 < N:  # still open: nothing is written yet
            return outs[0], InfiniState(M, z, k_mem_seg, k_loc_seg, v_seg, k_next_seg, *tail, write=w_seg)
        w_one = w_seg[:, None] if w_seg is not None else None
        M_all, z_all = _write(M, z, k_mem_seg[:, None], v_seg[:, None], update, eps, w_one)
        M, z = M_all[:, -1], z_all[:, -1]
        if W:
            tail = _Tail.of(k_next_seg, v_seg, W)

    # 2. The rest starts on a segment boundary: S complete segments, then r tokens.
    q, k, v, q_local, k_local, k_next = (t[:, n0:] for t in (q, k, v, q_local, k_local, k_next))
    wr = wr[:, n0:] if wr is not None else None
    T = q.shape[1]
    S, r = divmod(T, N)
    full = S * N

    def segments(t: Tensor) -> Tensor:  # [B, S*N, h, d] -> [B, S, N, h, d]
        return t[:, :full].unflatten(1, (S, N))

    if S > 0:
        # memory before each segment, and after the last one: [B, S+1, Hkv, Dk, (Dv)]
        w_segs = wr[:, :full].unflatten(1, (S, N)) if wr is not None else None  # [B, S, N, Hkv]
        M_all, z_all = _write(M, z, segments(k), segments(v), update, eps, w_segs)
        tails = None
        if W:  # segment 0 sees the tail from before; segment s > 0 the end of segment s - 1
            ends = slice(N - W, N)
            tails = tail.padded(W).stacked_with(segments(k_next)[:, :-1, ends], segments(v)[:, :-1, ends])
        a_dot = _local_attention(segments(q_local), segments(k_local), segments(v), None, tails)
        a_mem = _retrieve(segments(q), M_all[:, :S], z_all[:, :S], update, eps)
        outs.append(_mix(gate, a_mem, a_dot).flatten(1, 2))
        M, z = M_all[:, S], z_all[:, S]
        if W:
            tail = _Tail.of(k_next[:, :full], v[:, :full], W)
    if r > 0:
        rest = slice(full, T)
        a_dot = _local_attention(
            q_local[:, None, rest], k_local[:, None, rest], v[:, None, rest], None, tail.per_segment()
        )
        a_mem = _retrieve(q[:, None, rest], M[:, None], z[:, None], update, eps)
        outs.append(_mix(gate, a_mem[:, 0], a_dot[:, 0]))
    # buffers are copies so they do not keep the whole input alive
    new_state = InfiniState(
        M=M,
        z=z,
        k_mem=k[:, full:].clone(),
        k_local=k_local[:, full:].clone(),
        v=v[:, full:].clone(),
        k_next=k_next[:, full:].clone() if W else state.k_next,
        tail_k=tail.k.clone(),
        tail_v=tail.v.clone(),
        tail_valid=tail.valid,
        write=wr[:, full:].clone() if wr is not None else None,
    )
    return torch.cat(outs, dim=1), new_state


class _Tail(NamedTuple):
    """The overlap option's view of the previous segment: its last w keys and values.

    k ``[B, (S,) w, Hkv, Dk]``, v ``[B, (S,) w, Hkv, Dv]``, valid ``[B, (S,) w]`` (False: never seen).
    """

    k: Tensor
    v: Tensor
    valid: Tensor

    @classmethod
    def of(cls, k_next: Tensor, v: Tensor, w: int) -> _Tail:
        """The last ``w`` tokens of a complete segment ``[B, >= w, ...]``."""
        valid = torch.ones(v.shape[0], w, dtype=torch.bool, device=v.device)
        return cls(k_next[:, -w:], v[:, -w:], valid)

    def padded(self, w: int) -> _Tail:
        """Left-pad to ``w`` tokens with invisible zeros (a stream's first segments have fewer)."""
        missing = w - self.v.shape[1]
        if missing == 0:
            return self

        def pad(t: Tensor) -> Tensor:
            return torch.cat([t.new_zeros(t.shape[0], missing, *t.shape[2:]), t], dim=1)

        return _Tail(pad(self.k), pad(self.v), pad(self.valid))

    def per_segment(self) -> _Tail:
        """``[B, w, ...]`` -> ``[B, 1, w, ...]``: the tail of one segment."""
        return _Tail(*(t[:, None] for t in self))

    def stacked_with(self, k: Tensor, v: Tensor) -> _Tail:
        """This tail for segment 0, then ``k``/``v`` ``[B, S-1, w, ...]`` (all visible) for the rest."""
        valid = torch.ones(*v.shape[:3], dtype=torch.bool, device=v.device)
        return _Tail(
            torch.cat([self.k[:, None], k], dim=1),
            torch.cat([self.v[:, None], v], dim=1),
            torch.cat([self.valid[:, None], valid], dim=1),
        )


_MASKED_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _mix(gate: Tensor, a_mem: Tensor, a_dot: Tensor) -> Tensor:
    """eq (10) per query head; ``a_*`` are ``[..., H, Dv]``."""
    g = gate[:, None]  # [H, 1]
    return g * a_mem.to(a_dot.dtype) + (1 - g) * a_dot


def _local_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, tail: _Tail | None = None
) -> Tensor:
    """Causal softmax attention inside each segment, eq (6).

    q ``[B, S, n, H, Dk]``, k ``[B, S, m, Hkv, Dk]``, v ``[B, S, m, Hkv, Dv]`` -> ``[B, S, n, H, Dv]``.
    ``mask`` (``[n, m]``, True = attend) replaces the plain causal mask when n != m. ``tail``
    (overlap option, ``[B, S, w, ...]``): keys before the segment that every query may see.
    """
    B, S, n, H, _ = q.shape
    m, Hkv = k.shape[2], k.shape[3]
    if tail is not None and tail.v.shape[2] > 0:
        w = tail.v.shape[2]
        if mask is None:
            mask = torch.ones(n, m, dtype=torch.bool, device=q.device).tril()
        # [B, S, n, w + m]: the valid tail keys, then the segment's own (causal) keys
        mask = torch.cat([tail.valid[:, :, None, :].expand(B, S, n, w), mask.expand(B, S, n, m)], dim=-1)
        mask = mask.flatten(0, 1)[:, None]  # [B*S, 1, n, w + m]
        k, v = torch.cat([tail.k, k], dim=2), torch.cat([tail.v, v], dim=2)

    def heads_first(t: Tensor) -> Tensor:  # [B, S, n, h, d] -> [B*S, h, n, d]
        return t.flatten(0, 1).transpose(1, 2)

    args = (heads_first(q), heads_first(k), heads_first(v))
    if mask is None:
        o = F.scaled_dot_product_attention(*args, is_causal=True, enable_gqa=Hkv != H)
    else:
        # The open segment's shape changes at every decoding step; cuDNN would build a new
        # execution plan each time (measured: ~16 ms per call on an H200), so leave it out here.
        with sdpa_kernel(_MASKED_BACKENDS):
            o = F.scaled_dot_product_attention(*args, attn_mask=mask, enable_gqa=Hkv != H)
    # o: [B*S, H, n, Dv]
    return o.transpose(1, 2).unflatten(0, (B, S))


def _retrieve(q: Tensor, M: Tensor, z: Tensor, update: str, eps: float) -> Tensor:
    """eq (7) for every segment: q ``[B, S, n, H, Dk]`` reads M ``[B, S, Hkv, Dk, Dv]``
    and z ``[B, S, Hkv, Dk]`` -> ``[B, S, n, H, Dv]`` in the memory dtype.
    ``deltanet`` reads unit(q) M, without z."""
    B, S, n, H, Dk = q.shape
    Hkv, Dv = M.shape[2], M.shape[4]
    deltanet = update == "deltanet"
    Mz = M if deltanet else torch.cat([M, z.unsqueeze(-1)], dim=-1)  # [B, S, Hkv, Dk, Dv(+1)]
    sq = (unit if deltanet else sigma)(q.to(M.dtype))
    # query head h = j * G + g reads key/value head j (repeat_interleave order)
    sq = sq.unflatten(3, (Hkv, H // Hkv)).permute(0, 1, 3, 2, 4, 5)  # [B, S, Hkv, n, G, Dk]
    read = sq.flatten(3, 4) @ Mz  # [B, S, Hkv, n*G, Dv(+1)]
    a = read if deltanet else read[..., :Dv] / (read[..., Dv:] + eps)
    return a.unflatten(3, (n, H // Hkv)).permute(0, 1, 3, 2, 4, 5).flatten(3, 4)  # [B, S, n, H, Dv]


def _write(
    M: Tensor, z: Tensor, k: Tensor, v: Tensor, update: str, eps: float, w: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Write complete segments, eq (8) or (9). k ``[B, S, N, Hkv, Dk]``, v ``[B, S, N, Hkv, Dv]``,
    w ``[B, S, N, Hkv]`` write strengths or None (all 1).

    Returns memory before each segment and after the last: ``[B, S+1, Hkv, Dk, Dv]`` and
    ``[B, S+1, Hkv, Dk]`` (index 0 is the input M, z).
    """
    vv = v.to(M.dtype).permute(0, 1, 3, 2, 4)  # [B, S, Hkv, N, Dv]
    ww = w.to(M.dtype).permute(0, 1, 3, 2).unsqueeze(-1) if w is not None else None  # [B, S, Hkv, N, 1]
    if update == "deltanet":
        U, Gm = _deltanet_affine(unit(k.to(M.dtype)).permute(0, 1, 3, 2, 4), vv, ww)
        z_all = z.unsqueeze(1).expand(-1, U.shape[1] + 1, -1, -1)  # z is not used: unchanged
    else:
        sk = sigma(k.to(M.dtype)).permute(0, 1, 3, 2, 4)  # [B, S, Hkv, N, Dk]
        sk_w = sk if ww is None else sk * ww  # each token's features scaled by its write strength
        z_all = _prefix_sum(z, sk_w.sum(dim=3))  # eq (8): [B, S+1, Hkv, Dk]
        U = sk_w.transpose(-1, -2) @ vv  # sigma(K)^T diag(w) V: [B, S, Hkv, Dk, Dv]
        if update == "linear":
            return _prefix_sum(M, U), z_all  # eq (8)
        # eq (9): M_s = M_{s-1} + U_s - sigma(K)^T diag(w / (sigma(K) z_{s-1} + eps)) sigma(K) M_{s-1}
        inv_den = 1.0 / ((sk @ z_all[:, :-1].unsqueeze(-1)) + eps)  # [B, S, Hkv, N, 1]
        Gm = sk_w.transpose(-1, -2) @ (sk * inv_den)  # [B, S, Hkv, Dk, Dk]
    Ms = [M]
    for s in range(U.shape[1]):  # carries only the [B, Hkv, Dk, Dv] memory
        Ms.append(Ms[-1] + U[:, s] - Gm[:, s] @ Ms[-1])
    return torch.stack(Ms, dim=1), z_all


def _deltanet_affine(uk: Tensor, v: Tensor, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One segment of token-by-token delta writes as ``M -> M + U - G M``.

    uk ``[..., N, Dk]`` unit keys, v ``[..., N, Dv]``, w ``[..., N, 1]`` write strengths (None: 1)
    -> U ``[..., Dk, Dv]``, G ``[..., Dk, Dk]``.
    Token t writes e_t = w_t (v_t - k_t M_{t-1}) (k_t a row), so M_N = M_0 + K^T E, and
    e_t = w_t (v_t - k_t M_0 - sum_{i<t} (k_t . k_i) e_i), i.e. (I + D L) E = D (V - K M_0) with
    D = diag(w) and L the strictly lower triangle of K K^T. Hence U = K^T (I + D L)^{-1} D V and
    G = K^T (I + D L)^{-1} D K: one unit-triangular solve with Dv + Dk right-hand sides, every
    segment at once.
    """
    Dv = v.shape[-1]
    lower = (uk @ uk.transpose(-1, -2)).tril(diagonal=-1)  # L: [..., N, N]
    rhs = torch.cat([v, uk], dim=-1)  # [..., N, Dv + Dk]
    if w is not None:
        lower, rhs = w * lower, w * rhs  # D L and D [V | K]: row t scaled by w_t
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
    solved = torch.linalg.solve_triangular(lower + eye, rhs, upper=False, unitriangular=True)
    kt = uk.transpose(-1, -2)  # [..., Dk, N]
    return kt @ solved[..., :Dv], kt @ solved[..., Dv:]


def _prefix_sum(initial: Tensor, increments: Tensor) -> Tensor:
    """[initial, initial + inc_0, initial + inc_0 + inc_1, ...] along dim 1."""
    return torch.cat([initial.unsqueeze(1), initial.unsqueeze(1) + increments.cumsum(dim=1)], dim=1)
