"""read_shares: the weight a memory read gives to spans of the stream, against a one-shot recomputation."""

from __future__ import annotations

import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.eval.memory_read import read_shares
from infini_attention.ops.naive import sigma

pytestmark = pytest.mark.usefixtures("single_thread")
N = 16


@pytest.fixture(scope="module", params=["linear", "delta"])
def model(request) -> InfiniTransformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=37, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, segment_len=N, update=request.param
    )
    return InfiniTransformer(config).double()


def brute_force(model, ids, lo, hi, p):
    """sigma(q_p) . sum_{lo<=t<hi} sigma(k_t) / sigma(q_p) . sum_{t < written} sigma(k_t), from one
    forward over the whole input with the projections captured: [L, H]."""
    qs, ks = [], []
    hooks = []
    for block in model.blocks:
        a = block.attn
        hooks.append(
            a.q_proj.register_forward_hook(
                lambda m, i, o, a=a: qs.append(o[0].unflatten(-1, (a.n_heads, -1)))
            )
        )
        hooks.append(
            a.k_proj.register_forward_hook(
                lambda m, i, o, a=a: ks.append(o[0].unflatten(-1, (a.n_kv_heads, -1)))
            )
        )
    with torch.no_grad():
        model(ids[None])
    for h in hooks:
        h.remove()
    written = (p // N) * N
    out = []
    for q, k in zip(qs, ks, strict=True):
        sk = sigma(k).repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # [T, H, D], GQA order
        sq = sigma(q[p])  # [H, D]
        out.append((sq * sk[lo:hi].sum(0)).sum(-1) / (sq * sk[:written].sum(0)).sum(-1))
    return torch.stack(out)


def test_shares_match_a_one_shot_recomputation(model):
    torch.manual_seed(1)
    ids = torch.randint(0, 37, (5 * N + 7,))
    spans = {"a": (3, 11), "b": (11, 40), "all": (0, 3 * N)}
    positions = [3 * N + 2, 4 * N, 5 * N + 6]  # 3, 4 and 5 segments written
    rows = read_shares(model, ids, spans, positions, chunk_segments=2)
    assert len(rows) == len(positions) * 2 * 4
    for p in positions:
        mine = [r for r in rows if r["position"] == p]
        for name, (lo, hi) in spans.items():
            got = torch.tensor([r[f"{name}_share"] for r in mine], dtype=torch.float64).view(2, 4)
            torch.testing.assert_close(got, brute_force(model, ids, lo, hi, p), rtol=1e-9, atol=1e-12)


def test_shares_add_up_and_the_written_stream_has_all_the_weight(model):
    torch.manual_seed(2)
    ids = torch.randint(0, 37, (4 * N + 3,))
    p = 4 * N + 1
    rows = read_shares(model, ids, {"a": (0, 20), "b": (20, 4 * N), "all": (0, 4 * N)}, [p])
    for r in rows:
        assert r["a_share"] + r["b_share"] == pytest.approx(r["all_share"], rel=1e-12)
        assert r["all_share"] == pytest.approx(1.0, rel=1e-12)  # every written token: weights sum to 1
        assert 0 < r["a_share"] < 1


def test_empty_memory_reads_nothing(model):
    rows = read_shares(model, torch.arange(N), {"none": (0, 0)}, [3])
    assert all(r["none_share"] == 0.0 for r in rows)


@pytest.mark.parametrize(
    ("spans", "positions", "match"),
    [
        ({"a": (0, N + 1)}, [N + 5], "must lie in"),  # a token still in the open segment
        ({"a": (5, 2)}, [2 * N], "must lie in"),
        ({"a": (0, 4)}, [2 * N, N + 1], "increasing"),
        ({"a": (0, 4)}, [3 * N], "increasing"),  # past the end of the input
        ({"a": (0, 4)}, [], "increasing"),
    ],
)
def test_bad_arguments_name_the_problem(model, spans, positions, match):
    with pytest.raises(ValueError, match=match):
        read_shares(model, torch.arange(3 * N) % 37, spans, positions)


def test_deltanet_models_are_refused():
    # its read phi(q) M has no normaliser, so "the weight a span gets" is not defined
    config = ModelConfig(vocab_size=37, d_model=16, n_layers=1, n_heads=2, segment_len=N, update="deltanet")
    with pytest.raises(ValueError, match="deltanet"):
        read_shares(InfiniTransformer(config), torch.arange(3 * N) % 37, {"a": (0, 4)}, [2 * N])
