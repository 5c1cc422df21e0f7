"""Reference Infini-attention: a literal, segment-by-segment transcription of the paper.

Munkhdalai et al., "Leave No Context Behind" (arXiv 2404.07143), section 3. Equation numbers
below are the paper's. Slow and obviously correct on purpose: never optimise this file; the
fast op in ``chunked.py`` is tested against it.

Shape legend: B batch, T new tokens, H query heads, Hkv key/value heads, Dk key dim,
Dv value dim, N segment length, n tokens of the current segment.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import check_inputs
from .state import InfiniState, memory_dtype


def sigma(x: Tensor) -> Tensor:
    """The memory's feature map: ELU + 1 (Katharopoulos et al. 2020), always positive."""
    return F.elu(x) + 1.0


def unit(x: Tensor) -> Tensor:
    """The ``deltanet`` rule's feature map (not in the paper): x scaled to unit length, no ELU + 1.

    Signed features spread keys over the whole sphere, where ELU + 1's all-positive ones crowd into
    one orthant (a first try with those let M grow along weakly written directions; with these it
    grows the same, docs/passkey.md, "A bounded memory"). A zero vector stays zero, so a zero key
    writes nothing (padding is kept out by a write strength of 0 instead, for every rule).
    """
    return F.normalize(x, dim=-1)


def infini_attention_naive(
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
    """Same contract as :func:`infini_attention.ops.infini_attention`, one segment at a time."""
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
    B, T, H, Dk = q.shape
    Hkv, Dv = v.shape[2], v.shape[3]
    group = H // Hkv  # query head h reads key/value head h // group
    N = segment_len
    mem_dtype = memory_dtype(q.dtype)

    # The stream as this call sees it: the open segment's buffered tokens, then the new ones.
    # Absolute index i in [0, t0 + T); segments start at multiples of N; queries exist for i >= t0.
    t0 = state.buffered
    K_mem = torch.cat([state.k_mem, k], dim=1)  # [B, t0+T, Hkv, Dk]
    K_loc = torch.cat([state.k_local, k_local], dim=1)  # [B, t0+T, Hkv, Dk]
    V = torch.cat([state.v, v], dim=1)  # [B, t0+T, Hkv, Dv]
    K_next = torch.cat([state.k_next, k_next], dim=1) if overlap else None  # [B, t0+T, Hkv, Dk]
    if write_strength is None:
        write_strength = v.new_ones(v.shape[:3])
    Wr = torch.cat([state.write, write_strength], dim=1)  # [B, t0+T, Hkv]: each token's write strength
    total = t0 + T
    # The overlap option: the last keys of the previous segment, seen by this segment's queries.
    tail_k, tail_v, tail_valid = state.tail_k, state.tail_v, state.tail_valid  # [B, w, ...]

    M = [state.M[:, j] for j in range(Hkv)]  # per KV head: [B, Dk, Dv]
    z = [state.z[:, j] for j in range(Hkv)]  # per KV head: [B, Dk]
    gate = torch.sigmoid(beta)  # [H]
    out = q.new_zeros(B, T, H, Dv)

    for seg_start in range(0, total, N) if T > 0 else ():
        seg_end = min(seg_start + N, total)
        q_from = max(seg_start, t0)  # first query of this segment that this call produces
        rows = slice(q_from - t0, seg_end - t0)  # those queries' indices into q / out
        query_pos = torch.arange(q_from, seg_end, device=q.device)
        key_pos = torch.arange(seg_start, seg_end, device=q.device)
        causal = key_pos[None, :] <= query_pos[:, None]  # [n_q, n]
        # every query also sees the valid tail keys (none without the overlap option)
        w = tail_k.shape[1]
        n_q = len(query_pos)
        visible = torch.cat([tail_valid[:, None, :].expand(B, n_q, w), causal.expand(B, n_q, -1)], dim=-1)

        for h in range(H):
            j = h // group
            # eq (6): causal dot-product attention inside the segment, scale 1/sqrt(d_key)
            keys = torch.cat([tail_k[:, :, j], K_loc[:, seg_start:seg_end, j]], dim=1)  # [B, w+n, Dk]
            values = torch.cat([tail_v[:, :, j], V[:, seg_start:seg_end, j]], dim=1)  # [B, w+n, Dv]
            scores = q_local[:, rows, h] @ keys.transpose(1, 2) / math.sqrt(Dk)  # [B, n_q, w+n]
            scores = scores.masked_fill(~visible, float("-inf"))
            A_dot = torch.softmax(scores, dim=-1) @ values  # [B, n_q, Dv]

            # eq (7): retrieval from the memory of earlier segments only (no position encoding)
            if update == "deltanet":  # not in the paper: unit features, no normaliser
                A_mem = unit(q[:, rows, h].to(mem_dtype)) @ M[j]  # [B, n_q, Dv]
            else:
                sq = sigma(q[:, rows, h]).to(mem_dtype)  # [B, n_q, Dk]
                A_mem = (sq @ M[j]) / ((sq @ z[j].unsqueeze(-1)) + eps)  # [B, n_q, Dv]

            # eq (10): learned per-head gate mixes long-term and local context
            g = gate[h].to(q.dtype)
            out[:, rows, h] = g * A_mem.to(q.dtype) + (1 - g) * A_dot

        if seg_end - seg_start < N:
            continue  # an unfinished segment is not written; it stays in the buffers
        for j in range(Hkv):
            Vj = V[:, seg_start:seg_end, j].to(mem_dtype)  # [B, N, Dv]
            # not in the paper: token t's write is scaled by its write strength w_t (1 = the paper)
            wj = Wr[:, seg_start:seg_end, j, None].to(mem_dtype)  # [B, N, 1]
            if update == "deltanet":
                # not in the paper: the delta rule token by token (Schlag et al. 2021), unit
                # keys: with w_t = 1, unit(k_t) M = v_t exactly after token t; z unused
                uk = unit(K_mem[:, seg_start:seg_end, j].to(mem_dtype))  # [B, N, Dk]
                for t in range(N):
                    kt = uk[:, t : t + 1]  # [B, 1, Dk]
                    M[j] = M[j] + kt.transpose(1, 2) @ (wj[:, t : t + 1] * (Vj[:, t : t + 1] - kt @ M[j]))
                continue
            sk = sigma(K_mem[:, seg_start:seg_end, j]).to(mem_dtype)  # [B, N, Dk]
            if update == "linear":
                M[j] = M[j] + (wj * sk).transpose(1, 2) @ Vj  # eq (8)
            else:
                retrieved = (sk @ M[j]) / ((sk @ z[j].unsqueeze(-1)) + eps)
                M[j] = M[j] + (wj * sk).transpose(1, 2) @ (Vj - retrieved)  # eq (9)
            z[j] = z[j] + (wj * sk).sum(dim=1)  # eq (8), also for the delta rule
        if overlap:
            tail_k = K_next[:, seg_end - overlap : seg_end]
            tail_v = V[:, seg_end - overlap : seg_end]
            tail_valid = torch.ones(B, overlap, dtype=torch.bool, device=q.device)

    open_from = (total // N) * N if T > 0 else 0  # the open segment after this call
    new_state = InfiniState(
        M=torch.stack(M, dim=1),
        z=torch.stack(z, dim=1),
        k_mem=K_mem[:, open_from:].clone(),
        k_local=K_loc[:, open_from:].clone(),
        v=V[:, open_from:].clone(),
        k_next=K_next[:, open_from:].clone() if overlap else state.k_next,
        tail_k=tail_k.clone(),
        tail_v=tail_v.clone(),
        tail_valid=tail_valid,
        write=Wr[:, open_from:].clone(),
    )
    return out, new_state
