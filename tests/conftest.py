"""Shared test helpers, exposed as fixtures (test modules never import this file).

- ``assert_close(name, ref, got, atol, rtol)``: elementwise ``|got - ref| <= atol + rtol * |ref|``;
  the failure message gives the max abs error and the relative RMS error.
- ``make_inputs(B, T, H, Hkv, Dk, Dv, ...)``: random q, k, v, beta (and optional distinct
  q_local, k_local) from a seeded ``torch.Generator``.
- ``leaf_state(state)``: a copy of an ``InfiniState`` whose tensors are fresh autograd leaves.
- ``op``: parametrized over the fast op and the naive reference (ids ``fast`` and ``naive``).
- ``no_unpickling``: makes ``torch.load`` and ``pickle.load(s)`` fail, to prove loading never unpickles.
- ``single_thread``: runs a module's tests with one intra-op thread (tiny tensors run many times
  faster that way than with a contended thread pool); use it as
  ``pytestmark = pytest.mark.usefixtures("single_thread")``.
"""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch

from infini_attention.ops import InfiniState, infini_attention, infini_attention_naive


def _assert_close(name: str, ref: torch.Tensor, got: torch.Tensor, atol: float, rtol: float) -> None:
    assert isinstance(got, torch.Tensor), f"{name}: expected a tensor, got {type(got).__name__}"
    assert tuple(got.shape) == tuple(ref.shape), f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    r = ref.detach().to(torch.float64).cpu()
    g = got.detach().to(torch.float64).cpu()
    finite_ref, finite_got = torch.isfinite(r), torch.isfinite(g)
    assert torch.equal(finite_ref, finite_got), (
        f"{name}: non-finite values differ ({int((~finite_got).sum())} non-finite in got, "
        f"{int((~finite_ref).sum())} in ref)"
    )
    r, g = r[finite_ref], g[finite_ref]
    diff = (g - r).abs()
    max_abs = diff.max().item() if diff.numel() else 0.0
    ref_rms = r.pow(2).mean().sqrt().item() if r.numel() else 0.0
    err_rms = diff.pow(2).mean().sqrt().item() if diff.numel() else 0.0
    rel_rms = err_rms / ref_rms if ref_rms > 0 else float("inf") if err_rms > 0 else 0.0
    bad = diff > atol + rtol * r.abs()
    assert not bad.any(), (
        f"{name}: {int(bad.sum())}/{bad.numel()} elements out of tolerance: max abs err {max_abs:.3e}, "
        f"rel RMS err {rel_rms:.3e} (atol={atol:g}, rtol={rtol:g}, max |ref| {r.abs().max().item():.3e}, "
        f"shape {tuple(ref.shape)})"
    )


@pytest.fixture
def assert_close():
    return _assert_close


def _make_inputs(
    B: int,
    T: int,
    H: int,
    Hkv: int,
    Dk: int,
    Dv: int,
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    local: bool = False,
    requires_grad: bool = False,
) -> dict[str, torch.Tensor | None]:
    """Random op inputs; ``q_local``/``k_local`` are distinct random tensors when ``local`` else None.

    Tensors are drawn in float64 on the CPU and then cast, so every dtype sees the same values
    (up to rounding) for the same seed.
    """
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    out: dict[str, torch.Tensor | None] = {
        "q": randn(B, T, H, Dk),
        "k": randn(B, T, Hkv, Dk),
        "v": randn(B, T, Hkv, Dv),
        "beta": randn(H),
        "q_local": randn(B, T, H, Dk) if local else None,
        "k_local": randn(B, T, Hkv, Dk) if local else None,
    }
    for name, t in out.items():
        if t is not None:
            t = t.to(dtype)
            out[name] = t.requires_grad_() if requires_grad else t
    return out


@pytest.fixture
def make_inputs():
    return _make_inputs


def _leaf_state(state: InfiniState, requires_grad: bool = True) -> InfiniState:
    """A copy of ``state`` whose tensors are new leaves (so gradients w.r.t. them can be read)."""

    def leaf(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        return t.requires_grad_(requires_grad) if t.is_floating_point() else t

    return InfiniState(**{f.name: leaf(getattr(state, f.name)) for f in dataclasses.fields(state)})


@pytest.fixture
def leaf_state():
    return _leaf_state


OPS = {"fast": infini_attention, "naive": infini_attention_naive}


@pytest.fixture(params=list(OPS))
def op(request):
    """Both implementations of the same contract."""
    return OPS[request.param]


@pytest.fixture(scope="module")
def single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def no_unpickling(monkeypatch):
    """Loading must read only JSON and safetensors: any unpickling attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
