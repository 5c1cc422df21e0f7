"""Bad input: both ops raise a ValueError that names the problem."""

from __future__ import annotations

import pytest
import torch

from infini_attention.ops import InfiniState, infini_attention

pytestmark = pytest.mark.usefixtures("single_thread")

B, T, H, Hkv, Dk, Dv, N = 2, 6, 4, 2, 3, 5, 4
F64 = torch.float64


def _rand(*shape: int) -> torch.Tensor:
    return torch.randn(shape, dtype=F64)


def _base() -> dict:
    return dict(
        q=_rand(B, T, H, Dk),
        k=_rand(B, T, Hkv, Dk),
        v=_rand(B, T, Hkv, Dv),
        beta=_rand(H),
        segment_len=N,
        update="delta",
        q_local=None,
        k_local=None,
        initial_state=None,
    )


def _state(b=B, hkv=Hkv, dk=Dk, dv=Dv, T0=N + 1, segment_len=N) -> InfiniState:
    """A genuine state from an earlier call with the given configuration."""
    _, st = infini_attention(
        _rand(b, T0, 2 * hkv, dk), _rand(b, T0, hkv, dk), _rand(b, T0, hkv, dv), _rand(2 * hkv),
        segment_len=segment_len,
    )  # fmt: skip
    return st


# name -> (changes to the base kwargs, regex the message must match)
BAD = {
    "batch-k": (lambda: {"k": _rand(B + 1, T, Hkv, Dk)}, r"batch sizes differ.*q 2, k 3"),
    "batch-v": (lambda: {"v": _rand(B + 1, T, Hkv, Dv)}, r"batch sizes differ.*v 3"),
    "seqlen-k": (lambda: {"k": _rand(B, T + 1, Hkv, Dk)}, r"sequence lengths differ.*q 6, k 7"),
    "seqlen-v": (lambda: {"v": _rand(B, T - 1, Hkv, Dv)}, r"sequence lengths differ.*v 5"),
    "Dk-q-vs-k": (lambda: {"k": _rand(B, T, Hkv, Dk + 1)}, r"same head dim.*3 and 4"),
    "heads-k-vs-v": (lambda: {"v": _rand(B, T, Hkv + 1, Dv)}, r"same number of heads.*2 and 3"),
    "H-not-multiple-of-Hkv": (
        lambda: {"q": _rand(B, T, 3, Dk), "beta": _rand(3)},
        r"query heads \(3\) must be a multiple of key/value heads \(2\)",
    ),
    "segment_len-0": (lambda: {"segment_len": 0}, r"segment_len must be a positive int, got 0"),
    "segment_len-negative": (lambda: {"segment_len": -4}, r"segment_len must be a positive int, got -4"),
    "segment_len-float": (lambda: {"segment_len": 4.0}, r"segment_len must be a positive int, got 4\.0"),
    "segment_len-True": (lambda: {"segment_len": True}, r"segment_len must be a positive int, got True"),
    "segment_len-str": (lambda: {"segment_len": "4"}, r"segment_len must be a positive int"),
    "update-unknown": (lambda: {"update": "delta_rule"}, r"update must be one of.*'delta_rule'"),
    "update-case": (lambda: {"update": "Linear"}, r"update must be one of.*'Linear'"),
    "beta-too-long": (lambda: {"beta": _rand(H + 1)}, r"beta must have shape \(4,\).*\(5,\)"),
    "beta-2d": (lambda: {"beta": _rand(1, H)}, r"beta must have shape \(4,\).*\(1, 4\)"),
    "beta-scalar": (lambda: {"beta": _rand()}, r"beta must have shape \(4,\).*\(\)"),
    "beta-per-kv-head": (lambda: {"beta": _rand(Hkv)}, r"beta must have shape \(4,\).*\(2,\)"),
    "beta-float": (lambda: {"beta": 0.5}, r"beta must have shape \(4,\).*float"),
    "q_local-shape": (lambda: {"q_local": _rand(B, T, Hkv, Dk)}, r"q_local must have the shape of q"),
    "q_local-T": (lambda: {"q_local": _rand(B, T + 1, H, Dk)}, r"q_local must have the shape of q"),
    "k_local-shape": (lambda: {"k_local": _rand(B, T, H, Dk)}, r"k_local must have the shape of k"),
    "k_local-Dk": (lambda: {"k_local": _rand(B, T, Hkv, Dk + 1)}, r"k_local must have the shape of k"),
    "state-wrong-Hkv": (
        lambda: {"initial_state": _state(hkv=1)},
        r"initial_state\.M has shape.*configuration",
    ),
    "state-wrong-Dk": (
        lambda: {"initial_state": _state(dk=Dk + 1)},
        r"initial_state\.M has shape.*configuration",
    ),
    "state-wrong-Dv": (
        lambda: {"initial_state": _state(dv=Dv + 1)},
        r"initial_state\.M has shape.*configuration",
    ),
    "state-wrong-batch": (
        lambda: {"initial_state": _state(b=B + 1)},
        r"initial_state\.M has shape \(3, 2, 3, 5\).*\(2, 2, 3, 5\).*batch size",
    ),
    "state-buffer-too-long": (
        lambda: {"initial_state": _state(T0=6, segment_len=8)},  # 6 buffered, but N = 4 allows 3
        r"holds 6 buffered tokens.*segment_len=4.*at most 3",
    ),
    "state-buffer-equal-N": (
        lambda: {"initial_state": _state(T0=4, segment_len=8)},  # 4 buffered, N = 4
        r"holds 4 buffered tokens.*segment_len=4",
    ),
    "state-wrong-dtype": (
        lambda: {"initial_state": InfiniState.zeros(B, Hkv, Dk, Dv, dtype=torch.float32)},
        r"initial_state\.k_mem is torch\.float32.*torch\.float64",
    ),
    "qkv-mixed-dtype": (lambda: {"v": _rand(B, T, Hkv, Dv).float()}, r"q, k, v must share a dtype"),
    "state-not-a-state": (lambda: {"initial_state": (torch.zeros(1),)}, r"InfiniState"),
    "q-3d": (lambda: {"q": _rand(B, T, H * Dk)}, r"q must be a 4-D tensor"),
    "k-5d": (lambda: {"k": _rand(B, T, Hkv, Dk, 1)}, r"k must be a 4-D tensor"),
    "v-3d": (lambda: {"v": _rand(T, Hkv, Dv)}, r"v must be a 4-D tensor"),
    "q-not-a-tensor": (lambda: {"q": [[1.0]]}, r"q must be a 4-D tensor.*list"),
    "write_strength-per-query-head": (
        lambda: {"write_strength": _rand(B, T, H)},
        r"write_strength must have shape \[B, T, Hkv\] \(2, 6, 2\).*\(2, 6, 4\)",
    ),
    "write_strength-float32": (
        lambda: {"write_strength": _rand(B, T, Hkv).float()},
        r"write_strength must have .*dtype torch\.float64.*torch\.float32",
    ),
    "write_strength-scalar": (lambda: {"write_strength": 1.0}, r"write_strength must have shape.*float"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_raises_value_error(op, name):
    changes, match = BAD[name]
    kwargs = _base()
    kwargs.update(changes())
    q, k, v, beta = (kwargs.pop(n) for n in ("q", "k", "v", "beta"))
    with pytest.raises(ValueError, match=match):
        op(q, k, v, beta, **kwargs)


def test_base_inputs_are_valid(op):
    """The bad cases above differ from a valid call only by the one change each names."""
    kwargs = _base()
    q, k, v, beta = (kwargs.pop(n) for n in ("q", "k", "v", "beta"))
    o, _ = op(q, k, v, beta, **kwargs)
    assert o.shape == (B, T, H, Dv)
    o, _ = op(q, k, v, beta, **{**kwargs, "initial_state": _state()})
    assert o.shape == (B, T, H, Dv)
    o, _ = op(q, k, v, beta, **{**kwargs, "initial_state": _state(T0=3, segment_len=8)})  # 3 < N buffered
    assert o.shape == (B, T, H, Dv)
