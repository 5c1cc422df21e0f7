"""Input validation shared by the fast and the reference op, so both reject the same inputs."""

from __future__ import annotations

import torch
from torch import Tensor

from .state import InfiniState, memory_dtype

UPDATE_RULES = ("linear", "delta", "deltanet")  # deltanet: not in the paper (ops/README.md)


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    segment_len: int,
    update: str,
    q_local: Tensor | None,
    k_local: Tensor | None,
    initial_state: InfiniState | None,
    eps: float,
    overlap: int = 0,
    k_next: Tensor | None = None,
    write_strength: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, InfiniState]:
    """Validate op inputs; return (q_local, k_local, k_next, state) with defaults filled in.

    Every problem is a ``ValueError`` that names what was expected and what was received.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = _shape(t) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor [B, T, heads, dim], got {got}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, T, H, Dk = q.shape
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch sizes differ: q {B}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1] != T or v.shape[1] != T:
        raise ValueError(f"sequence lengths differ: q {T}, k {k.shape[1]}, v {v.shape[1]}")
    Hkv = k.shape[2]
    if v.shape[2] != Hkv:
        raise ValueError(f"k and v must have the same number of heads, got {Hkv} and {v.shape[2]}")
    if k.shape[3] != Dk:
        raise ValueError(f"q and k must have the same head dim, got {Dk} and {k.shape[3]}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({Hkv})")
    if not isinstance(beta, Tensor) or _shape(beta) != (H,):
        got = _shape(beta) if isinstance(beta, Tensor) else type(beta).__name__
        raise ValueError(f"beta must have shape ({H},) (one gate logit per query head), got {got}")
    if isinstance(segment_len, bool) or not isinstance(segment_len, int) or segment_len <= 0:
        raise ValueError(f"segment_len must be a positive int, got {segment_len!r}")
    if update not in UPDATE_RULES:
        raise ValueError(f"update must be one of {UPDATE_RULES}, got {update!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    check_overlap(overlap, segment_len)

    q_local = q if q_local is None else q_local
    k_local = k if k_local is None else k_local
    if not isinstance(q_local, Tensor) or _shape(q_local) != _shape(q):
        raise ValueError(f"q_local must have the shape of q {_shape(q)}, got {_describe(q_local)}")
    if not isinstance(k_local, Tensor) or _shape(k_local) != _shape(k):
        raise ValueError(f"k_local must have the shape of k {_shape(k)}, got {_describe(k_local)}")
    if q_local.dtype != q.dtype or k_local.dtype != q.dtype:
        raise ValueError(
            f"q_local and k_local must have the dtype of q ({q.dtype}), "
            f"got {q_local.dtype} and {k_local.dtype}"
        )

    k_next = k_local if k_next is None else k_next
    if not isinstance(k_next, Tensor) or _shape(k_next) != _shape(k) or k_next.dtype != q.dtype:
        got = f"{_describe(k_next)} {getattr(k_next, 'dtype', '')}".strip()
        raise ValueError(f"k_next must have the shape and dtype of k {_shape(k)} {q.dtype}, got {got}")

    if write_strength is not None and (
        not isinstance(write_strength, Tensor)
        or _shape(write_strength) != _shape(k)[:3]
        or write_strength.dtype != q.dtype
    ):
        got = f"{_describe(write_strength)} {getattr(write_strength, 'dtype', '')}".strip()
        raise ValueError(
            f"write_strength must have shape [B, T, Hkv] {_shape(k)[:3]} and dtype {q.dtype}, got {got}"
        )

    Dv = v.shape[3]
    if initial_state is None:
        state = InfiniState.zeros(B, Hkv, Dk, Dv, dtype=q.dtype, device=q.device)
    else:
        state = initial_state
        _check_state(state, B, Hkv, Dk, Dv, segment_len, q, overlap)
    return q_local, k_local, k_next, state


def check_overlap(overlap: int, segment_len: int) -> None:
    """The local-overlap option: an int W with 0 <= W <= segment_len (shared by the op and the layer)."""
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= segment_len:
        raise ValueError(f"overlap must be an int in [0, segment_len={segment_len}], got {overlap!r}")


def _describe(t: object) -> str:
    return str(_shape(t)) if isinstance(t, Tensor) else type(t).__name__


def _check_state(
    state: InfiniState, B: int, Hkv: int, Dk: int, Dv: int, segment_len: int, q: Tensor, overlap: int
) -> None:
    if not isinstance(state, InfiniState):
        raise ValueError(f"initial_state must be an InfiniState, got {type(state).__name__}")
    t = state.v.shape[1] if state.v.dim() == 4 else -1
    w = state.tail_v.shape[1] if state.tail_v.dim() == 4 else -1
    expected = {
        "M": (B, Hkv, Dk, Dv),
        "z": (B, Hkv, Dk),
        "k_mem": (B, t, Hkv, Dk),
        "k_local": (B, t, Hkv, Dk),
        "v": (B, t, Hkv, Dv),
        "k_next": (B, t if overlap else 0, Hkv, Dk),
        "tail_k": (B, w, Hkv, Dk),
        "tail_v": (B, w, Hkv, Dv),
        "tail_valid": (B, w),
        "write": (B, t, Hkv),
    }
    for name, shape in expected.items():
        got = _shape(getattr(state, name))
        if got != shape:
            raise ValueError(
                f"initial_state.{name} has shape {got}, but these inputs need {shape} "
                "(a state from another configuration or batch size?)"
            )
    if t >= segment_len:
        raise ValueError(
            f"initial_state holds {t} buffered tokens, but segment_len={segment_len} allows "
            f"at most {segment_len - 1} (a state from another segment length?)"
        )
    if w > overlap:
        raise ValueError(
            f"initial_state holds a tail of {w} tokens of the previous segment, but overlap={overlap} "
            f"allows at most {overlap} (a state from another overlap?)"
        )
    for name in ("k_mem", "k_local", "v", "k_next", "tail_k", "tail_v", "write"):
        if getattr(state, name).dtype != q.dtype:
            raise ValueError(
                f"initial_state.{name} is {getattr(state, name).dtype}, but the inputs are {q.dtype}"
            )
    if state.tail_valid.dtype != torch.bool:
        raise ValueError(f"initial_state.tail_valid must be bool, got {state.tail_valid.dtype}")
    want = memory_dtype(q.dtype)
    if state.M.dtype != want or state.z.dtype != want:
        raise ValueError(
            f"initial_state memory must be {want} for {q.dtype} inputs, "
            f"got M {state.M.dtype}, z {state.z.dtype}"
        )
