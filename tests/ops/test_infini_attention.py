"""The fast op against the naive reference: outputs, final state and gradients.

Gradients use a random cotangent on the output and on the final M and z, and are taken
w.r.t. every input: q, k, v, beta, q_local, k_local and the initial state's M, z and buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from infini_attention.ops import InfiniState, infini_attention, infini_attention_naive

pytestmark = pytest.mark.usefixtures("single_thread")

STATE_FIELDS = ("M", "z", "k_mem", "k_local", "v")
INPUT_NAMES = ("q", "k", "v", "beta", "q_local", "k_local")


@dataclass(frozen=True)
class Case:
    B: int
    T: int
    H: int
    Hkv: int
    Dk: int
    Dv: int
    N: int
    T0: int | None = None  # tokens of an earlier call that produces the initial state (None: no state)
    local: bool = False  # separate, random q_local / k_local

    @property
    def id(self) -> str:
        s = f"B{self.B}-T{self.T}-H{self.H}-Hkv{self.Hkv}-Dk{self.Dk}-Dv{self.Dv}-N{self.N}"
        if self.T0 is not None:
            s += f"-state{self.T0}"
        return s + ("-local" if self.local else "")


CASES_F64 = [
    Case(2, 37, 6, 2, 5, 7, 8),  # T not a multiple of N, group 3, Dk != Dv
    Case(1, 5, 2, 2, 4, 4, 8),  # T < N, group 1
    Case(2, 8, 4, 2, 3, 6, 8),  # T == N, group 2
    Case(1, 24, 3, 1, 4, 3, 6, local=True),  # T a multiple of N, MQA (group 3)
    Case(2, 37, 6, 2, 5, 7, 8, local=True),
    Case(1, 7, 2, 1, 3, 2, 1, local=True),  # N == 1: every token is its own segment
    # with an initial state from an earlier call
    Case(2, 20, 4, 2, 5, 3, 8, T0=11, local=True),  # open segment (3 buffered) completed, then 1.x more
    Case(1, 3, 4, 4, 4, 5, 8, T0=3, local=True),  # open segment not completed by this call (3 + 3 < 8)
    Case(2, 5, 6, 2, 3, 4, 8, T0=3),  # open segment completed exactly (3 + 5 == 8)
    Case(1, 13, 6, 3, 4, 4, 4, T0=16, local=True),  # state with M, z written and empty buffers
    Case(2, 2, 3, 1, 5, 2, 4, T0=9),  # 1 buffered, call ends inside the same open segment
    Case(1, 30, 2, 1, 6, 3, 7, T0=5),  # state with buffers only (z = 0), then several segments
]

CASES_F32 = [
    Case(2, 37, 6, 2, 5, 7, 8, local=True),
    Case(1, 5, 2, 2, 4, 4, 8),
    Case(2, 20, 4, 2, 5, 3, 8, T0=11, local=True),
    Case(1, 3, 4, 4, 4, 5, 8, T0=3),
]

UPDATES = ["linear", "delta"]


def _params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


def _initial_state(case: Case, make_inputs, dtype) -> InfiniState | None:
    if case.T0 is None:
        return None
    x = make_inputs(
        case.B, case.T0, case.H, case.Hkv, case.Dk, case.Dv, dtype=dtype, seed=1, local=case.local
    )
    with torch.no_grad():
        _, st = infini_attention(
            x["q"],
            x["k"],
            x["v"],
            x["beta"],
            segment_len=case.N,
            update="linear",
            q_local=x["q_local"],
            k_local=x["k_local"],
        )
    assert st.buffered == case.T0 % case.N
    return st


def _run(op, x, state, case: Case, update, cot, leaf_state):
    """One forward + backward; returns (o, final state, grads by name) all detached."""
    leaves = {n: x[n].detach().clone().requires_grad_() for n in INPUT_NAMES if x[n] is not None}
    st0 = leaf_state(state) if state is not None else None
    o, st = op(
        leaves["q"],
        leaves["k"],
        leaves["v"],
        leaves["beta"],
        segment_len=case.N,
        update=update,
        q_local=leaves.get("q_local"),
        k_local=leaves.get("k_local"),
        initial_state=st0,
    )
    do, dM, dz = cot
    loss = (o * do).sum() + (st.M * dM).sum() + (st.z * dz).sum()
    loss.backward()
    grads = {}
    for n, t in leaves.items():
        grads[n] = t.grad if t.grad is not None else torch.zeros_like(t)
    if st0 is not None:
        for f in STATE_FIELDS:
            t = getattr(st0, f)
            grads[f"state.{f}"] = t.grad if t.grad is not None else torch.zeros_like(t)
    return o.detach(), st.detach(), grads


def _compare(case: Case, update: str, dtype, atol, rtol, make_inputs, leaf_state, assert_close):
    x = make_inputs(case.B, case.T, case.H, case.Hkv, case.Dk, case.Dv, dtype=dtype, seed=0, local=case.local)
    state = _initial_state(case, make_inputs, dtype)
    g = torch.Generator().manual_seed(2)
    mem = torch.float64 if dtype == torch.float64 else torch.float32
    cot = (
        torch.randn(case.B, case.T, case.H, case.Dv, generator=g, dtype=torch.float64).to(dtype),
        torch.randn(case.B, case.Hkv, case.Dk, case.Dv, generator=g, dtype=torch.float64).to(mem),
        torch.randn(case.B, case.Hkv, case.Dk, generator=g, dtype=torch.float64).to(mem),
    )
    o_ref, st_ref, g_ref = _run(infini_attention_naive, x, state, case, update, cot, leaf_state)
    o, st, g_fast = _run(infini_attention, x, state, case, update, cot, leaf_state)

    assert o.shape == (case.B, case.T, case.H, case.Dv)
    assert o.dtype == dtype
    assert_close("o", o_ref, o, atol, rtol)
    for f in STATE_FIELDS:
        ref_t, got_t = getattr(st_ref, f), getattr(st, f)
        assert got_t.dtype == ref_t.dtype, f"state.{f}: dtype {got_t.dtype} != {ref_t.dtype}"
        assert_close(f"state.{f}", ref_t, got_t, atol, rtol)
    expected_buffered = ((case.T0 or 0) + case.T) % case.N
    assert st.buffered == st_ref.buffered == expected_buffered
    assert set(g_fast) == set(g_ref)
    for n in g_ref:
        # the memory gradients can be large (1/eps when z starts at 0): compare relative to their scale
        scale = max(1.0, g_ref[n].abs().amax().item()) if g_ref[n].numel() else 1.0
        assert_close(f"grad {n}", g_ref[n], g_fast[n], atol * scale, rtol)


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("case", _params(CASES_F64))
def test_fast_matches_naive_float64(case, update, make_inputs, leaf_state, assert_close):
    _compare(case, update, torch.float64, 1e-10, 1e-10, make_inputs, leaf_state, assert_close)


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("case", _params(CASES_F32))
def test_fast_matches_naive_float32(case, update, make_inputs, leaf_state, assert_close):
    _compare(case, update, torch.float32, 1e-4, 1e-5, make_inputs, leaf_state, assert_close)


def test_gradients_reach_every_input(make_inputs, leaf_state):
    """Guards the comparison above against vacuous zero gradients: every input matters."""
    case = Case(1, 10, 4, 2, 3, 3, 4, T0=6, local=True)
    x = make_inputs(case.B, case.T, case.H, case.Hkv, case.Dk, case.Dv, seed=0, local=True)
    state = _initial_state(case, make_inputs, torch.float64)
    g = torch.Generator().manual_seed(3)
    cot = (
        torch.randn(1, 10, 4, 3, generator=g, dtype=torch.float64),
        torch.randn(1, 2, 3, 3, generator=g, dtype=torch.float64),
        torch.randn(1, 2, 3, generator=g, dtype=torch.float64),
    )
    for op in (infini_attention, infini_attention_naive):
        for update in UPDATES:
            _, _, grads = _run(op, x, state, case, update, cot, leaf_state)
            for n, gr in grads.items():
                assert gr.abs().max() > 0, f"{op.__name__} {update}: gradient w.r.t. {n} is zero"


# --- torch.autograd.gradcheck on small float64 inputs, with an initial state ------------------


def _gradcheck_inputs(make_inputs, leaf_state):
    B, T, H, Hkv, Dk, Dv, N = 1, 7, 4, 2, 3, 2, 3
    x = make_inputs(B, T, H, Hkv, Dk, Dv, seed=5, local=True)
    x0 = make_inputs(B, 4, H, Hkv, Dk, Dv, seed=6, local=True)
    with torch.no_grad():
        # one segment written (z > 0 keeps the delta rule's 1/(sigma(K) z + eps) tame), 1 buffered;
        # the checked call completes that open segment, writes one more and leaves 2 tokens buffered
        _, st = infini_attention(
            x0["q"], x0["k"], x0["v"], x0["beta"], segment_len=N, q_local=x0["q_local"], k_local=x0["k_local"]
        )
    st = leaf_state(st)
    tensors = [x[n].detach().clone().requires_grad_() for n in INPUT_NAMES] + [
        getattr(st, f) for f in STATE_FIELDS
    ]
    return tensors, N


@pytest.mark.parametrize(
    "op_name,update",
    [("fast", "linear"), ("fast", "delta"), ("naive", "linear"), ("naive", "delta")],
)
def test_gradcheck(op_name, update, make_inputs, leaf_state):
    op = {"fast": infini_attention, "naive": infini_attention_naive}[op_name]
    tensors, N = _gradcheck_inputs(make_inputs, leaf_state)

    def f(q, k, v, beta, q_local, k_local, M, z, k_mem, k_loc_buf, v_buf):
        st0 = InfiniState(M=M, z=z, k_mem=k_mem, k_local=k_loc_buf, v=v_buf)
        o, st = op(
            q, k, v, beta, segment_len=N, update=update, q_local=q_local, k_local=k_local, initial_state=st0
        )
        return o, st.M, st.z, st.k_mem, st.k_local, st.v

    assert torch.autograd.gradcheck(f, tuple(tensors), eps=1e-6, atol=1e-6, rtol=1e-5)
