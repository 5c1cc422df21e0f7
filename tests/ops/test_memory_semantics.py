"""Closed-form checks of the memory, independent of both implementations.

Keys and queries that are one-hot in feature space: sigma = ELU + 1 maps 0 to 1 and -1e4 to
exactly 0 (exp underflows), so a vector that is 0 at one index and -1e4 elsewhere has
sigma(.) = e_i. With beta = 30 the gate sigmoid(beta) is 1 - 9e-14, so the output is the
memory path A_mem = sigma(q) M / (sigma(q) z + eps) up to ~1e-13.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from infini_attention.ops import InfiniState

pytestmark = pytest.mark.usefixtures("single_thread")

EPS = 1e-6
BIG = 30.0  # gate logit: memory-only output
F64 = torch.float64


def feature(x: torch.Tensor) -> torch.Tensor:
    """sigma = ELU + 1, written out here rather than imported from the op."""
    return F.elu(x) + 1.0


def one_hot_keys(hot: list[int], Dk: int) -> torch.Tensor:
    """[len(hot), Dk] raw vectors whose feature map is exactly one-hot at ``hot[t]``."""
    x = torch.full((len(hot), Dk), -1e4, dtype=F64)
    x[torch.arange(len(hot)), torch.tensor(hot)] = 0.0
    return x


def test_one_hot_helper_is_exact():
    x = one_hot_keys([2, 0, 1], 4)
    assert torch.equal(feature(x), torch.eye(4, dtype=F64)[[2, 0, 1]])


def _write_then_read_stream(N: int, Dv: int, repeats: int, queries: list[int], seed: int = 0):
    """B=1, H=Hkv=1, Dk=N: ``repeats`` copies of one segment whose keys are one-hot on distinct
    dims (token t -> e_t, values V[t]), then one segment of one-hot queries (``queries``)."""
    g = torch.Generator().manual_seed(seed)
    Dk = N
    V = torch.randn(N, Dv, generator=g, dtype=F64)
    seg_k = one_hot_keys(list(range(N)), Dk)
    k = torch.cat([seg_k] * repeats + [one_hot_keys(queries, Dk)], dim=0)
    v = torch.cat([V] * repeats + [torch.randn(len(queries), Dv, generator=g, dtype=F64)], dim=0)
    q = torch.cat([torch.randn(N * repeats, Dk, generator=g, dtype=F64), one_hot_keys(queries, Dk)], dim=0)
    beta = torch.full((1,), BIG, dtype=F64)
    return q[None, :, None], k[None, :, None], v[None, :, None], beta, V


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_one_hot_keys_store_and_queries_retrieve(op, update, assert_close):
    N, Dv = 4, 3
    queries = [2, 0, 3]  # read in the segment after the write
    q, k, v, beta, V = _write_then_read_stream(N, Dv, repeats=1, queries=queries)
    o, st = op(q, k, v, beta, segment_len=N, update=update, eps=EPS)
    # one write from M = 0, z = 0: both rules give M = sum_t e_t V[t]^T = V, z = 1
    assert_close("M", V, st.M[0, 0], 1e-12, 1e-12)
    assert_close("z", torch.ones(N, dtype=F64), st.z[0, 0], 1e-12, 0)
    # retrieval: e_i^T M / (e_i^T z + eps) = V[i] / (1 + eps)
    expected = V[queries] / (1 + EPS)
    got = o[0, N:, 0]
    assert_close("retrieved", expected, got, 1e-12, 1e-12)
    # and it really is within eps of the stored value, not exactly it (eps is in the denominator)
    assert (got - V[queries]).abs().max() <= 2 * EPS * V.abs().max()


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_writing_the_same_segment_twice(op, update, assert_close):
    N, Dv = 4, 5
    queries = [1, 3]
    q, k, v, beta, V = _write_then_read_stream(N, Dv, repeats=2, queries=queries)
    o, st = op(q, k, v, beta, segment_len=N, update=update, eps=EPS)
    M, z = st.M[0, 0], st.z[0, 0]
    assert_close("z", torch.full((N,), 2.0, dtype=F64), z, 1e-12, 0)
    if update == "linear":
        expected_M = 2 * V  # eq (8): the binding is added again
        assert_close("M (linear: doubles)", expected_M, M, 1e-12, 1e-12)
    else:
        # eq (9): the second write adds V - V / (1 + eps): M unchanged up to a relative eps
        expected_M = V * (1 + EPS / (1 + EPS))
        assert_close("M (delta: closed form)", expected_M, M, 1e-12, 1e-12)
        assert_close("M (delta: unchanged)", V, M, 0, 2 * EPS)
        assert (M - 2 * V).abs().max() > 0.1 * V.abs().max()
    # later retrieval reads M[i] / (z[i] + eps) with z = 2
    assert_close("retrieved", expected_M[queries] / (2 + EPS), o[0, 2 * N :, 0], 1e-12, 1e-12)


@pytest.mark.parametrize("update", ["linear", "delta"])
def test_z_is_the_sum_of_key_features(op, update, make_inputs, assert_close):
    N = 5
    x = make_inputs(2, 2 * N + 3, 4, 2, 3, 2, seed=11)
    _, st = op(x["q"], x["k"], x["v"], x["beta"], segment_len=N, update=update)
    # the first two segments are written, the 3 trailing tokens are not
    expected = feature(x["k"][:, : 2 * N]).sum(dim=1)  # [B, Hkv, Dk]
    assert_close("z", expected, st.z, 1e-12, 1e-12)
    assert st.buffered == 3


@pytest.mark.parametrize("update", ["linear", "delta", "deltanet"])
def test_first_segment_retrieves_zeros(op, update, make_inputs):
    N = 6
    x = make_inputs(2, 2 * N, 4, 2, 3, 5, seed=12)
    beta = torch.full((4,), BIG, dtype=F64)
    o, _ = op(x["q"], x["k"], x["v"], beta, segment_len=N, update=update)
    first, second = o[:, :N], o[:, N:]
    bound = 1e-12 * x["v"].abs().max()  # (1 - sigmoid(30)) * |A_dot|
    assert first.abs().max() <= bound, f"first segment output {first.abs().max():.3e} is not ~0"
    # the second segment reads a non-empty memory (so this test can fail)
    assert second.abs().amin(dim=-1).max() > 1e-3


def test_linear_memory_closed_form(op, make_inputs, assert_close):
    """Linear rule with random inputs: M = sum over written tokens of sigma(k)^T v, per KV head."""
    N = 4
    x = make_inputs(2, 3 * N + 1, 6, 3, 4, 3, seed=13)
    _, st = op(x["q"], x["k"], x["v"], x["beta"], segment_len=N, update="linear")
    sk, vv = feature(x["k"][:, : 3 * N]), x["v"][:, : 3 * N]
    expected = torch.einsum("bthd,bthe->bhde", sk, vv)
    assert_close("M", expected, st.M, 1e-12, 1e-12)


# --- GQA: query head h reads KV head h // (H / Hkv) (repeat_interleave order) ------------------


def _retrieve(q: torch.Tensor, M: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """eq (7) for one head: q [B, T, Dk], M [B, Dk, Dv], z [B, Dk] -> [B, T, Dv]."""
    sq = feature(q)
    return (sq @ M) / ((sq @ z.unsqueeze(-1)) + EPS)


def _check_gqa(o, q, M, z, H, Hkv, assert_close):
    G = H // Hkv
    differs = 0
    for h in range(H):
        expected = _retrieve(q[:, :, h], M[:, h // G], z[:, h // G])
        assert_close(f"head {h} reads KV head {h // G}", expected, o[:, :, h], 1e-9, 1e-9)
        wrong = _retrieve(q[:, :, h], M[:, h % Hkv], z[:, h % Hkv])
        if h // G != h % Hkv:
            differs += 1
            assert (expected - wrong).abs().max() > 1e-2, "test inputs do not tell the two orders apart"
            assert (o[:, :, h] - wrong).abs().max() > 1e-2
    assert differs > 0


def _distinct_state(B, Hkv, Dk, Dv, buffered, g) -> InfiniState:
    """A state whose KV heads have clearly different memories (M random, z positive)."""

    def randn(*s):
        return torch.randn(*s, generator=g, dtype=F64)

    M = randn(B, Hkv, Dk, Dv) * 3 + torch.arange(Hkv, dtype=F64)[None, :, None, None] * 5
    z = randn(B, Hkv, Dk).abs() + 1
    return InfiniState(
        M=M,
        z=z,
        k_mem=randn(B, buffered, Hkv, Dk),
        k_local=randn(B, buffered, Hkv, Dk),
        v=randn(B, buffered, Hkv, Dv),
    )


@pytest.mark.parametrize("H,Hkv", [(4, 2), (6, 2)])
@pytest.mark.parametrize(
    "buffered,T",
    [
        pytest.param(0, 3, id="tail"),  # no open segment, fewer than N tokens
        pytest.param(0, 5, id="full-segment"),  # exactly one complete segment
        pytest.param(2, 3, id="open-segment"),  # continues an open segment (completes it)
    ],
)
def test_gqa_order_from_initial_state(op, H, Hkv, buffered, T, make_inputs, assert_close):
    N, B, Dk, Dv = 5, 2, 3, 4
    g = torch.Generator().manual_seed(20)
    st0 = _distinct_state(B, Hkv, Dk, Dv, buffered, g)
    x = make_inputs(B, T, H, Hkv, Dk, Dv, seed=21)
    beta = torch.full((H,), BIG, dtype=F64)
    o, _ = op(x["q"], x["k"], x["v"], beta, segment_len=N, update="delta", initial_state=st0)
    _check_gqa(o, x["q"], st0.M, st0.z, H, Hkv, assert_close)


@pytest.mark.parametrize("H,Hkv", [(4, 2), (6, 2)])
def test_gqa_order_from_written_segment(op, H, Hkv, make_inputs, assert_close):
    """Each KV head writes its own memory in segment 1; segment 2 reads it."""
    N, B, Dk, Dv = 4, 1, 3, 4
    x = make_inputs(B, 2 * N, H, Hkv, Dk, Dv, seed=22)
    v = x["v"].clone()
    v[:, :, 1] += 4.0  # make the KV heads' values clearly different
    beta = torch.full((H,), BIG, dtype=F64)
    o, _ = op(x["q"], x["k"], v, beta, segment_len=N, update="linear")
    sk = feature(x["k"][:, :N])
    M = torch.einsum("bthd,bthe->bhde", sk, v[:, :N])
    z = sk.sum(dim=1)
    _check_gqa(o[:, N:], x["q"][:, N:], M, z, H, Hkv, assert_close)


# --- deltanet (not in the paper): unit features, token-by-token delta rule, no z -------------
# Its features are x / |x|, so the raw one-hot vector e_i is its own feature.


def _deltanet_stream(N: int, Dv: int, repeats: int, queries: list[int], seed: int = 0):
    """As _write_then_read_stream, with raw one-hot keys and queries (unit(e_i) = e_i)."""
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(N, dtype=F64)
    V = torch.randn(N, Dv, generator=g, dtype=F64)
    k = torch.cat([eye] * repeats + [eye[queries]], dim=0)
    v = torch.cat([V] * repeats + [torch.randn(len(queries), Dv, generator=g, dtype=F64)], dim=0)
    q = torch.cat([torch.randn(N * repeats, N, generator=g, dtype=F64), eye[queries]], dim=0)
    beta = torch.full((1,), BIG, dtype=F64)
    return q[None, :, None], k[None, :, None], v[None, :, None], beta, V


def test_deltanet_one_hot_keys_store_exactly(op, assert_close):
    # with no normaliser the read is e_i^T M = V[i] exactly (no eps), and z is never written
    N, Dv = 4, 3
    queries = [2, 0, 3]
    q, k, v, beta, V = _deltanet_stream(N, Dv, repeats=1, queries=queries)
    o, st = op(q, k, v, beta, segment_len=N, update="deltanet", eps=EPS)
    assert_close("M", V, st.M[0, 0], 1e-12, 1e-12)
    assert torch.equal(st.z, torch.zeros_like(st.z))
    assert_close("retrieved", V[queries], o[0, N:, 0], 1e-12, 1e-12)


def test_deltanet_features_are_scale_free(op, assert_close):
    # unit(c x) = unit(x) for c > 0: scaling keys and queries changes nothing
    N, Dv = 4, 3
    q, k, v, beta, _ = _deltanet_stream(N, Dv, repeats=1, queries=[1, 2], seed=3)
    q, k = q + 0.3, k - 0.2  # not one-hot any more, so the check is not trivial
    o1, st1 = op(q, k, v, beta, segment_len=N, update="deltanet")
    o2, st2 = op(7.0 * q, 0.1 * k, v, beta, segment_len=N, update="deltanet")
    assert_close("outputs", o1, o2, 1e-12, 1e-12)
    assert_close("M", st1.M, st2.M, 1e-12, 1e-12)


def test_deltanet_writing_the_same_segment_twice_changes_nothing(op, assert_close):
    N, Dv = 4, 5
    q, k, v, beta, V = _deltanet_stream(N, Dv, repeats=2, queries=[1, 3])
    _, st = op(q, k, v, beta, segment_len=N, update="deltanet", eps=EPS)
    assert_close("M (unchanged by the repeat)", V, st.M[0, 0], 1e-12, 1e-12)


def test_deltanet_later_token_overwrites_earlier_in_the_same_segment(op, assert_close):
    # key e_0 gets value a, then (same segment) value b: written token by token, the second
    # write replaces the first (M[0] = b); the paper's segment-level delta rule would add them
    N, Dk = 3, 3
    a, b, c = (torch.tensor(x, dtype=F64) for x in ([1.0, 2.0], [-3.0, 0.5], [4.0, 4.0]))
    eye = torch.eye(Dk, dtype=F64)
    k = eye[[0, 0, 1]][None, :, None]
    v = torch.stack([a, b, c])[None, :, None]
    q = torch.zeros(1, N, 1, Dk, dtype=F64)
    beta = torch.full((1,), BIG, dtype=F64)
    _, st = op(q, k, v, beta, segment_len=N, update="deltanet")
    expected = torch.stack([b, c, torch.zeros(2, dtype=F64)])
    assert_close("M", expected, st.M[0, 0], 1e-12, 1e-12)
    _, st_delta = op(q, one_hot_keys([0, 0, 1], Dk)[None, :, None], v, beta, segment_len=N, update="delta")
    assert (st_delta.M[0, 0, 0] - b).abs().max() > 0.5  # the paper's rule does not overwrite


def test_deltanet_zero_keys_write_nothing(op, make_inputs, assert_close):
    # the layer masks this rule's padding keys to 0, and unit() keeps a zero vector zero
    N = 4
    x = make_inputs(1, 2 * N, 2, 1, 3, 2, seed=13)
    _, st = op(x["q"][:, :N], x["k"][:, :N], x["v"][:, :N], x["beta"], segment_len=N, update="deltanet")
    zero_k = torch.zeros_like(x["k"][:, N:])
    _, st2 = op(
        x["q"][:, N:], zero_k, x["v"][:, N:], x["beta"], segment_len=N, update="deltanet", initial_state=st
    )
    assert_close("M after a padding segment", st.M, st2.M, 0, 0)


# --- write strengths (not in the paper): each token's write scaled by its w ----------------------


@pytest.mark.parametrize("update", ["linear", "delta", "deltanet"])
def test_write_strength_one_is_the_paper_and_zero_writes_nothing(op, update, make_inputs):
    N = 4
    x = make_inputs(2, 3 * N + 1, 4, 2, 3, 5, seed=14)
    args = (x["q"], x["k"], x["v"], x["beta"])
    o, st = op(*args, segment_len=N, update=update)
    ones = torch.ones(x["k"].shape[:3], dtype=F64)
    o1, st1 = op(*args, segment_len=N, update=update, write_strength=ones)
    assert torch.equal(o, o1) and torch.equal(st.M, st1.M) and torch.equal(st.z, st1.z)
    o0, st0 = op(*args, segment_len=N, update=update, write_strength=torch.zeros_like(ones))
    assert torch.equal(st0.M, torch.zeros_like(st0.M)) and torch.equal(st0.z, torch.zeros_like(st0.z))
    # with nothing written, every segment reads an empty memory, as the first one does
    first = op(*(t[:, :N] for t in args[:3]), args[3], segment_len=N, update=update)[0]
    assert torch.equal(o0[:, :N], first)


def test_linear_write_strength_scales_each_token(op, assert_close):
    # one-hot keys e_0, e_1 with strengths 0.25 and 2: M = diag(w) V and z = w, by eq. (8)
    N, Dv = 2, 3
    k = one_hot_keys([0, 1], 2)[None, :, None]
    g = torch.Generator().manual_seed(15)
    v = torch.randn(1, N, 1, Dv, generator=g, dtype=F64)
    q = torch.zeros(1, N, 1, 2, dtype=F64)
    w = torch.tensor([0.25, 2.0], dtype=F64)[None, :, None]
    _, st = op(q, k, v, torch.zeros(1, dtype=F64), segment_len=N, update="linear", write_strength=w)
    assert_close("M", w[0] * v[0, :, 0], st.M[0, 0], 1e-12, 1e-12)
    assert_close("z", w[0, :, 0], st.z[0, 0], 1e-12, 1e-12)


def test_deltanet_write_strength_moves_m_part_way(op, assert_close):
    # key e_0 written with value a at strength 0.5, then b at 0.5 (same segment):
    # M[0] = 0.5 a, then 0.5 a + 0.5 (b - 0.5 a) = 0.25 a + 0.5 b
    a, b = (torch.tensor(x, dtype=F64) for x in ([1.0, 2.0], [-3.0, 0.5]))
    k = torch.eye(2, dtype=F64)[[0, 0]][None, :, None]
    v = torch.stack([a, b])[None, :, None]
    q = torch.zeros(1, 2, 1, 2, dtype=F64)
    w = torch.full((1, 2, 1), 0.5, dtype=F64)
    _, st = op(q, k, v, torch.zeros(1, dtype=F64), segment_len=2, update="deltanet", write_strength=w)
    assert_close("M[0]", 0.25 * a + 0.5 * b, st.M[0, 0, 0], 1e-12, 1e-12)
    assert_close("M[1]", torch.zeros(2, dtype=F64), st.M[0, 0, 1], 0, 0)
