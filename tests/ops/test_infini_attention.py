"""The fast op against the naive reference: outputs, final state and gradients.

Gradients use a random cotangent on the output and on the final M and z, and are taken
w.r.t. every input: q, k, v, beta, q_local, k_local (k_next with the overlap option) and the
initial state's M, z and buffers (and the previous segment's tail with the overlap option).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch

from infini_attention.ops import InfiniState, infini_attention, infini_attention_naive

pytestmark = pytest.mark.usefixtures("single_thread")

STATE_FIELDS = tuple(f.name for f in dataclasses.fields(InfiniState))
INPUT_NAMES = ("q", "k", "v", "beta", "q_local", "k_local", "k_next", "write_strength")


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
    local: bool = False  # separate, random q_local / k_local (and k_next with an overlap)
    overlap: int = 0  # W: local attention also sees the previous segment's last W tokens
    write: bool = False  # random write strengths in [0, 1] (not in the paper; None = all 1)

    @property
    def id(self) -> str:
        s = f"B{self.B}-T{self.T}-H{self.H}-Hkv{self.Hkv}-Dk{self.Dk}-Dv{self.Dv}-N{self.N}"
        if self.T0 is not None:
            s += f"-state{self.T0}"
        if self.overlap:
            s += f"-W{self.overlap}"
        if self.write:
            s += "-write"
        return s + ("-local" if self.local else "")


def _inputs(case: Case, make_inputs, dtype, seed: int, T: int) -> dict:
    x = make_inputs(case.B, T, case.H, case.Hkv, case.Dk, case.Dv, dtype=dtype, seed=seed, local=case.local)
    x["k_next"] = None
    if case.overlap and case.local:
        g = torch.Generator().manual_seed(seed + 100)
        x["k_next"] = torch.randn(case.B, T, case.Hkv, case.Dk, generator=g, dtype=torch.float64).to(dtype)
    x["write_strength"] = None
    if case.write:
        g = torch.Generator().manual_seed(seed + 200)
        x["write_strength"] = torch.rand(case.B, T, case.Hkv, generator=g, dtype=torch.float64).to(dtype)
    return x


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
    # the overlap option: the previous segment's last W tokens stay visible to local attention
    Case(2, 37, 6, 2, 5, 7, 8, overlap=3, local=True),  # several segments, ragged end
    Case(1, 24, 3, 1, 4, 3, 6, overlap=6, local=True),  # W == N: the whole previous segment
    Case(2, 37, 4, 2, 3, 5, 8, overlap=1),  # k_next defaults to k_local
    Case(1, 7, 2, 1, 3, 2, 1, overlap=1, local=True),  # N == 1: the previous token
    Case(2, 20, 4, 2, 5, 3, 8, T0=11, overlap=3, local=True),  # open segment completed, tail from state
    Case(1, 3, 4, 4, 4, 5, 8, T0=11, overlap=2, local=True),  # open segment stays open, tail from state
    Case(2, 5, 6, 2, 3, 4, 8, T0=3, overlap=4, local=True),  # state before any tail, segment completed
    Case(1, 13, 6, 3, 4, 4, 4, T0=16, overlap=2, local=True),  # empty buffers, tail from state
    Case(2, 2, 3, 1, 5, 2, 4, T0=9, overlap=3, local=True),  # 1 buffered, stays open
    # write strengths (not in the paper): each token's write scaled by its own w in [0, 1]
    Case(2, 37, 6, 2, 5, 7, 8, write=True),  # several segments, ragged end
    Case(1, 7, 2, 1, 3, 2, 1, local=True, write=True),  # N == 1
    Case(2, 20, 4, 2, 5, 3, 8, T0=11, local=True, write=True),  # buffered strengths complete a segment
    Case(1, 3, 4, 4, 4, 5, 8, T0=3, write=True),  # segment stays open: strengths stay buffered
    Case(2, 20, 4, 2, 5, 3, 8, T0=11, overlap=3, local=True, write=True),
]

CASES_F32 = [
    Case(2, 37, 6, 2, 5, 7, 8, local=True),
    Case(1, 5, 2, 2, 4, 4, 8),
    Case(2, 20, 4, 2, 5, 3, 8, T0=11, local=True),
    Case(1, 3, 4, 4, 4, 5, 8, T0=3),
    Case(2, 20, 4, 2, 5, 3, 8, T0=11, overlap=3, local=True),
    Case(2, 20, 4, 2, 5, 3, 8, T0=11, local=True, write=True),
]

UPDATES = ["linear", "delta", "deltanet"]


def _params(cases):
    return [pytest.param(c, id=c.id) for c in cases]


def _initial_state(case: Case, make_inputs, dtype) -> InfiniState | None:
    if case.T0 is None:
        return None
    x = _inputs(case, make_inputs, dtype, seed=1, T=case.T0)
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
            overlap=case.overlap,
            k_next=x["k_next"],
            write_strength=x["write_strength"],
        )
    assert st.tail_v.shape[1] == (case.overlap if case.T0 >= case.N else 0)
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
        overlap=case.overlap,
        k_next=leaves.get("k_next"),
        write_strength=leaves.get("write_strength"),
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
            if t.is_floating_point():
                grads[f"state.{f}"] = t.grad if t.grad is not None else torch.zeros_like(t)
    return o.detach(), st.detach(), grads


def _compare(case: Case, update: str, dtype, atol, rtol, make_inputs, leaf_state, assert_close):
    x = _inputs(case, make_inputs, dtype, seed=0, T=case.T)
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


@pytest.mark.parametrize("overlap", [0, 3])  # 3: the tail reaches into the 2 buffered tokens
def test_gradients_reach_every_input(overlap, make_inputs, leaf_state):
    """Guards the comparison above against vacuous zero gradients: every input matters."""
    case = Case(1, 10, 4, 2, 3, 3, 4, T0=6, local=True, overlap=overlap, write=True)
    x = _inputs(case, make_inputs, torch.float64, seed=0, T=case.T)
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
            if overlap:  # the tail and the open segment's next-segment keys are really used
                assert {"k_next", "state.k_next", "state.tail_k", "state.tail_v"} <= set(grads)
            for n, gr in grads.items():
                if gr.numel():
                    assert gr.abs().max() > 0, f"{op.__name__} {update}: gradient w.r.t. {n} is zero"


# --- torch.autograd.gradcheck on small float64 inputs, with an initial state ------------------


def _gradcheck_inputs(overlap: int, make_inputs, leaf_state):
    case = Case(1, 7, 4, 2, 3, 2, 3, local=True, overlap=overlap, T0=4, write=True)
    x = _inputs(case, make_inputs, torch.float64, seed=5, T=case.T)
    # one segment written (z > 0 keeps the delta rule's 1/(sigma(K) z + eps) tame), 1 buffered;
    # the checked call completes that open segment, writes one more and leaves 2 tokens buffered
    st = leaf_state(_initial_state(case, make_inputs, torch.float64))
    names = [n for n in INPUT_NAMES if x[n] is not None]
    fields = [f for f in STATE_FIELDS if getattr(st, f).is_floating_point() and getattr(st, f).numel()]
    tensors = [x[n].detach().clone().requires_grad_() for n in names] + [getattr(st, f) for f in fields]
    return case, st, names, fields, tensors


@pytest.mark.parametrize("overlap", [0, 2])
@pytest.mark.parametrize(
    "op_name,update",
    [(op, rule) for op in ("fast", "naive") for rule in ("linear", "delta", "deltanet")],
)
def test_gradcheck(op_name, update, overlap, make_inputs, leaf_state):
    op = {"fast": infini_attention, "naive": infini_attention_naive}[op_name]
    case, st, names, fields, tensors = _gradcheck_inputs(overlap, make_inputs, leaf_state)

    def f(*args):
        inputs = dict(zip(names, args[: len(names)], strict=True))
        st0 = dataclasses.replace(st, **dict(zip(fields, args[len(names) :], strict=True)))
        o, st1 = op(**inputs, segment_len=case.N, update=update, initial_state=st0, overlap=case.overlap)
        return o, st1.M, st1.z, st1.k_mem, st1.k_local, st1.v, st1.k_next, st1.tail_k, st1.tail_v, st1.write

    assert torch.autograd.gradcheck(f, tuple(tensors), eps=1e-6, atol=1e-6, rtol=1e-5)
