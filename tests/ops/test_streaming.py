"""Streaming: split-resume, token-by-token decoding, causality, the state object, empty input."""

from __future__ import annotations

import pytest
import torch

from infini_attention.ops import InfiniState, infini_attention

pytestmark = pytest.mark.usefixtures("single_thread")

STATE_FIELDS = ("M", "z", "k_mem", "k_local", "v")
NBYTES_FIELDS = (*STATE_FIELDS, "write")  # the open segment's write strengths count too
UPDATES = ["linear", "delta", "deltanet"]


def _call(op, x, sl, update, N, state=None):
    """Run ``op`` on the token slice ``sl`` of the inputs ``x``."""
    return op(
        x["q"][:, sl],
        x["k"][:, sl],
        x["v"][:, sl],
        x["beta"],
        segment_len=N,
        update=update,
        q_local=None if x["q_local"] is None else x["q_local"][:, sl],
        k_local=None if x["k_local"] is None else x["k_local"][:, sl],
        initial_state=state,
    )


def _chained(op, x, cuts, update, N, state=None):
    """Split at ``cuts`` (sorted token indices) and chain the calls through the returned state."""
    T = x["q"].shape[1]
    bounds = [0, *cuts, T]
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        o, state = _call(op, x, slice(a, b), update, N, state)
        outs.append(o)
    return torch.cat(outs, dim=1), state


def _assert_same_run(ref, got, assert_close, atol=1e-10, rtol=1e-10):
    (o_ref, st_ref), (o, st) = ref, got
    assert_close("o", o_ref, o, atol, rtol)
    for f in STATE_FIELDS:
        assert_close(f"state.{f}", getattr(st_ref, f), getattr(st, f), atol, rtol)


T_SPLIT, N_SPLIT = 37, 5

EXPLICIT_CUTS = {
    "1tok-first": [1],
    "1tok-last": [T_SPLIT - 1],
    "at-boundary": [N_SPLIT],
    "at-boundaries": [N_SPLIT, 4 * N_SPLIT],
    "1tok-pieces": [1, 2, 3, 4],
    "long-middle": [3, 30],  # a piece of 27 tokens spans several segments
    "1tok-at-boundary": [N_SPLIT - 1, N_SPLIT, N_SPLIT + 1],
    "mixed": [4, 6, 20, 21],
    "empty-piece": [7, 7, 15],  # a T=0 call in the middle of the stream
}


def _random_cuts(seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    n_pieces = int(torch.randint(2, 6, (1,), generator=g))
    cuts = torch.randperm(T_SPLIT - 1, generator=g)[: n_pieces - 1] + 1
    return sorted(cuts.tolist())


CUTS = [pytest.param(c, id=name) for name, c in EXPLICIT_CUTS.items()] + [
    pytest.param(_random_cuts(s), id=f"random{s}-{'-'.join(map(str, _random_cuts(s)))}") for s in range(6)
]


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("cuts", CUTS)
def test_split_resume_equals_one_call(op, update, cuts, make_inputs, assert_close):
    x = make_inputs(2, T_SPLIT, 4, 2, 3, 4, seed=30, local=True)
    ref = _call(op, x, slice(None), update, N_SPLIT)
    got = _chained(op, x, cuts, update, N_SPLIT)
    _assert_same_run(ref, got, assert_close)


@pytest.mark.parametrize("update", UPDATES)
def test_split_resume_from_an_initial_state(op, update, make_inputs, assert_close):
    """The stream already has memory and 2 buffered tokens before either run starts."""
    x0 = make_inputs(1, 2 * N_SPLIT + 2, 6, 3, 4, 2, seed=31, local=True)
    _, st0 = _call(op, x0, slice(None), update, N_SPLIT)
    assert st0.buffered == 2
    x = make_inputs(1, 23, 6, 3, 4, 2, seed=32, local=True)
    ref = _call(op, x, slice(None), update, N_SPLIT, st0)
    got = _chained(op, x, [2, 3, 13], update, N_SPLIT, st0)
    _assert_same_run(ref, got, assert_close)


@pytest.mark.parametrize("update", UPDATES)
def test_token_by_token_equals_one_call(op, update, make_inputs, assert_close):
    T, N = 13, 4
    x = make_inputs(2, T, 4, 2, 3, 5, seed=33, local=True)
    ref = _call(op, x, slice(None), update, N)
    got = _chained(op, x, list(range(1, T)), update, N)
    _assert_same_run(ref, got, assert_close)


def test_fast_and_naive_chain_into_each_other(make_inputs, assert_close):
    """A state produced by one op continues correctly in the other."""
    from infini_attention.ops import infini_attention_naive

    N = 4
    x = make_inputs(1, 19, 4, 2, 3, 3, seed=34, local=True)
    ref = _call(infini_attention, x, slice(None), "delta", N)
    o1, st = _call(infini_attention, x, slice(0, 6), "delta", N)
    o2, st = _call(infini_attention_naive, x, slice(6, 15), "delta", N, st)
    o3, st = _call(infini_attention, x, slice(15, None), "delta", N, st)
    _assert_same_run(ref, (torch.cat([o1, o2, o3], dim=1), st), assert_close)


# --- causality --------------------------------------------------------------------------------

T_CAUSAL, N_CAUSAL = 23, 5


def _changes_output(which: str, t: int) -> bool:
    """Whether perturbing ``which`` at token t must change some output at or after t, with
    separate q_local/k_local (q and k are then memory-path only) and T=23, N=5."""
    N, T = N_CAUSAL, T_CAUSAL
    seg_start = t - t % N
    if which == "q":  # a memory query: the first segment's memory is empty
        return t >= N
    if which == "q_local":  # a segment's first query attends only to itself (softmax weight 1)
        return t != seg_start
    if which == "k":  # a memory key: only read once its segment is complete and written
        return seg_start + N < T
    if which == "k_local":  # seen by the queries after it in its segment (and itself unless first)
        return t != seg_start or t + 1 < min(seg_start + N, T)
    return True  # v: always read by query t itself


@pytest.mark.parametrize("update", UPDATES)
@pytest.mark.parametrize("which", ["q", "k", "v", "q_local", "k_local"])
@pytest.mark.parametrize("t", [0, 2, 4, 5, 12, 22])  # first segment, its last token, later segments
def test_causality(update, which, t, make_inputs):
    x = make_inputs(2, T_CAUSAL, 4, 2, 3, 4, seed=40, local=True)
    o, _ = _call(infini_attention, x, slice(None), update, N_CAUSAL)
    y = dict(x)
    y[which] = x[which].clone()
    g = torch.Generator().manual_seed(t)
    y[which][:, t] += torch.randn(y[which][:, t].shape, generator=g, dtype=y[which].dtype)
    o2, _ = _call(infini_attention, y, slice(None), update, N_CAUSAL)
    before = (o2[:, :t] - o[:, :t]).abs()
    assert before.numel() == 0 or before.max() <= 1e-12, f"output before t={t} changed by {before.max():.3e}"
    after = (o2[:, t:] - o[:, t:]).abs().max()
    if _changes_output(which, t):
        assert after > 1e-6, f"changing {which} at t={t} changed nothing at or after t"
    else:
        assert after <= 1e-12, f"changing {which} at t={t} should change nothing, changed {after:.3e}"


@pytest.mark.parametrize("t", [1, 6, 11])
def test_memory_path_change_reaches_later_segments(t, make_inputs):
    """Changing k/v at token t changes outputs of later segments through the memory (so the
    memory really carries information forward), and still nothing before t."""
    N = 5
    x = make_inputs(1, 20, 2, 1, 3, 3, seed=41)
    for which in ("k", "v"):
        o, _ = _call(infini_attention, x, slice(None), "delta", N)
        y = dict(x)
        y[which] = x[which].clone()
        y[which][:, t] += 1.0
        o2, _ = _call(infini_attention, y, slice(None), "delta", N)
        next_segment = (t // N + 1) * N
        assert (o2[:, :t] - o[:, :t]).abs().max() <= 1e-12
        assert (o2[:, next_segment:] - o[:, next_segment:]).abs().max() > 1e-6


# --- the state object ---------------------------------------------------------------------------


def _expected_nbytes(st: InfiniState) -> int:
    return sum(getattr(st, f).numel() * getattr(st, f).element_size() for f in NBYTES_FIELDS)


def test_nbytes_same_after_1_and_100_segments(op, make_inputs):
    B, H, Hkv, Dk, Dv, N = 1, 2, 1, 4, 3, 4
    x = make_inputs(B, 100 * N, H, Hkv, Dk, Dv, seed=50)
    _, st1 = _call(op, x, slice(0, N), "delta", N)
    _, st100 = _call(op, x, slice(None), "delta", N)
    assert st1.buffered == st100.buffered == 0
    assert st1.nbytes == st100.nbytes == _expected_nbytes(st1)
    assert st1.nbytes == (B * Hkv * Dk * Dv + B * Hkv * Dk) * 8  # float64 M and z, empty buffers
    assert not torch.equal(st1.M, st100.M)  # the two states really differ


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nbytes_bounded_while_decoding(op, dtype, make_inputs):
    B, H, Hkv, Dk, Dv, N = 2, 4, 2, 3, 5, 4
    x = make_inputs(B, 3 * N + 2, H, Hkv, Dk, Dv, dtype=dtype, seed=51, local=True)
    elt = torch.empty((), dtype=dtype).element_size()
    mem_bytes = (B * Hkv * Dk * Dv + B * Hkv * Dk) * elt  # M, z in float32 / float64 here
    per_token = B * Hkv * (2 * Dk + Dv + 1) * elt  # k_mem, k_local, v and the write strength
    st = None
    seen = []
    for i in range(3 * N + 2):
        _, st = _call(op, x, slice(i, i + 1), "linear", N, st)
        assert st.buffered == (i + 1) % N <= N - 1
        assert st.nbytes == _expected_nbytes(st) == mem_bytes + st.buffered * per_token
        assert st.nbytes <= mem_bytes + (N - 1) * per_token
        seen.append(st.nbytes)
    assert max(seen) == mem_bytes + (N - 1) * per_token


def test_detach(op, make_inputs, assert_close):
    x = make_inputs(1, 7, 2, 1, 3, 2, seed=52, local=True, requires_grad=True)
    _, st = _call(op, x, slice(None), "delta", 4)
    assert st.M.grad_fn is not None and st.z.grad_fn is not None and st.v.requires_grad
    before = {f: getattr(st, f).detach().clone() for f in STATE_FIELDS}
    d = st.detach()
    assert isinstance(d, InfiniState) and d is not st
    for f in STATE_FIELDS:
        t, orig = getattr(d, f), getattr(st, f)
        assert t.grad_fn is None and not t.requires_grad, f"detached {f} still has autograd history"
        assert torch.equal(t, before[f])
        # the original is not modified
        assert orig.requires_grad and torch.equal(orig.detach(), before[f])
    assert st.M.grad_fn is not None
    # the detached state continues the stream like the original
    y = {n: (None if t is None else t.detach()) for n, t in x.items()}
    o_a, _ = _call(op, y, slice(0, 3), "delta", 4, st)
    o_b, _ = _call(op, y, slice(0, 3), "delta", 4, d)
    assert_close("continuation", o_a, o_b, 0, 0)


@pytest.mark.parametrize(
    "dtype,mem_dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float64, torch.float64)],
)
def test_state_dtypes(op, dtype, mem_dtype, make_inputs):
    x = make_inputs(2, 11, 4, 2, 3, 5, dtype=dtype, seed=53, local=True)
    o, st = _call(op, x, slice(None), "delta", 4)
    assert o.dtype == dtype
    assert st.M.dtype == mem_dtype and st.z.dtype == mem_dtype
    assert st.k_mem.dtype == st.k_local.dtype == st.v.dtype == dtype
    # and the state is accepted back
    o2, st2 = _call(op, x, slice(None), "delta", 4, st)
    assert o2.dtype == dtype and st2.M.dtype == mem_dtype


@pytest.mark.parametrize("update", UPDATES)
def test_bfloat16_close_to_float32(update, make_inputs, assert_close):
    x32 = make_inputs(2, 37, 4, 2, 8, 8, dtype=torch.float32, seed=54, local=True)
    x16 = {n: None if t is None else t.to(torch.bfloat16) for n, t in x32.items()}
    o32, st32 = _call(infini_attention, x32, slice(None), update, 8)
    o16, st16 = _call(infini_attention, x16, slice(None), update, 8)
    assert_close("o bf16 vs f32", o32, o16.float(), 3e-2, 3e-2)
    assert_close("M bf16 vs f32", st32.M, st16.M, 3e-2, 3e-2)
    assert_close("z bf16 vs f32", st32.z, st16.z, 3e-2, 3e-2)


# --- empty input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_empty_input(op, with_state, dtype, make_inputs, assert_close):
    B, H, Hkv, Dk, Dv, N = 2, 6, 3, 4, 5, 4
    st0 = None
    if with_state:
        x0 = make_inputs(B, 2 * N + 3, H, Hkv, Dk, Dv, dtype=dtype, seed=60, local=True)
        _, st0 = _call(op, x0, slice(None), "delta", N)
        assert st0.buffered == 3 and st0.z.abs().max() > 0
    x = make_inputs(B, 0, H, Hkv, Dk, Dv, dtype=dtype, seed=61, local=True)
    o, st = _call(op, x, slice(None), "delta", N, st0)
    assert o.shape == (B, 0, H, Dv) and o.dtype == dtype
    if st0 is None:
        mem = torch.float64 if dtype == torch.float64 else torch.float32
        st0 = InfiniState.zeros(B, Hkv, Dk, Dv, dtype=dtype)
        assert st.M.dtype == st.z.dtype == mem
    for f in STATE_FIELDS:
        got, ref = getattr(st, f), getattr(st0, f)
        assert got.dtype == ref.dtype
        assert_close(f"state.{f}", ref, got, 0, 0)
