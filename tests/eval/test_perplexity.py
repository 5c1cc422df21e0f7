"""Streamed perplexity: equals one full forward, chunking-invariant, bounded chunks, buckets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.eval.perplexity import (
    bucket_labels,
    evaluate_ppl,
    format_ppl_table,
    format_tokens,
    stream_nll,
)
from infini_attention.models import memory_disabled

pytestmark = pytest.mark.usefixtures("single_thread")

V, N = 61, 8


@pytest.fixture(scope="module")
def model() -> InfiniTransformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, segment_len=N)
    m = InfiniTransformer(config).double().eval()
    with torch.no_grad():
        for gate in m.gates():
            gate.copy_(torch.randn_like(gate) * 2)  # varied gates: the memory matters
        m.embed.weight.normal_()  # unit-scale embeddings: NLLs far from uniform
    return m


def doc(T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (T,), generator=torch.Generator().manual_seed(seed))


def full_forward_nll(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(ids[None]).logits[0, :-1]
    return F.cross_entropy(logits.double(), ids[1:], reduction="none")


def test_stream_nll_equals_one_full_forward(model):
    ids = doc(53)
    ref = full_forward_nll(model, ids)
    got = stream_nll(model, ids)
    assert got.dtype == torch.float64 and got.shape == (52,)
    assert (got - ref).abs().max().item() < 1e-9
    assert ref.std() > 0.1  # not a flat distribution: the comparison can fail


@pytest.mark.parametrize("chunk_len", [1, 3, 8, 13, 52, 500])
def test_chunk_len_does_not_matter(model, chunk_len):
    ids = doc(53, seed=1)
    ref = stream_nll(model, ids)
    got = stream_nll(model, ids, chunk_len=chunk_len)
    assert (got - ref).abs().max().item() < 1e-9


def test_accepts_numpy_uint16_views_and_short_docs(model):
    ids = doc(30, seed=2)
    arr = ids.numpy().astype(np.uint16)
    arr.setflags(write=False)  # like a read-only memmap shard view
    assert (stream_nll(model, arr) - stream_nll(model, ids)).abs().max().item() == 0
    assert stream_nll(model, ids[:1]).shape == (0,)
    with pytest.raises(ValueError, match="1-D"):
        stream_nll(model, ids[None])
    with pytest.raises(ValueError, match="chunk_len"):
        stream_nll(model, ids, chunk_len=0)


def test_never_feeds_more_than_a_chunk(model):
    """Memory is bounded by the chunk: no call sees the whole document."""
    seen = []
    handle = model.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    try:
        stream_nll(model, doc(200, seed=3))
        default = list(seen)
        seen.clear()
        stream_nll(model, doc(200, seed=3), chunk_len=5)
    finally:
        handle.remove()
    assert max(default) == N and sum(default) == 199
    assert max(seen) == 5 and sum(seen) == 199


def test_memory_changes_the_nll(model):
    ids = doc(60, seed=4)
    on = stream_nll(model, ids)
    with memory_disabled(model):
        off = stream_nll(model, ids)
    assert (on - off).abs().max().item() > 1e-3


def test_labels_and_token_formatting():
    assert bucket_labels((0, 2048, 8192, 32768)) == ["0-2K", "2K-8K", "8K-32K", "32K+"]
    assert bucket_labels((0, 8, 16)) == ["0-8", "8-16", "16+"]
    assert [format_tokens(n) for n in (1000, 2048, 131072, 2**20, 3 * 2**20)] == [
        "1000",
        "2K",
        "128K",
        "1M",
        "3M",
    ]


def test_evaluate_ppl_by_bucket_with_memory_on_and_off(model):
    docs = [doc(30, seed=5), doc(12, seed=6)]
    gates_before = [g.detach().clone() for g in model.gates()]
    r = evaluate_ppl(model, docs, buckets=(0, 8, 16))
    # the gates are restored after the memory-off pass
    assert all(torch.equal(a, b) for a, b in zip(gates_before, model.gates(), strict=True))

    # predictions with p tokens of context, p = 1..T-1: doc 1 gives 7/8/14, doc 2 gives 7/4/0
    assert [b["label"] for b in r["buckets"]] == ["0-8", "8-16", "16+"]
    assert [b["tokens"] for b in r["buckets"]] == [14, 12, 14]
    assert r["tokens"] == r["overall"]["tokens"] == 40
    assert r["buckets"][2]["end"] is None and r["buckets"][1]["start"] == 8

    on = [stream_nll(model, d) for d in docs]
    with memory_disabled(model):
        off = [stream_nll(model, d) for d in docs]
    for key, nll in (("ppl", on), ("ppl_no_memory", off)):
        everything = torch.cat(nll)
        assert math.isclose(r["overall"][key], math.exp(everything.mean().item()), rel_tol=1e-12)
        first = torch.cat([nll[0][:7], nll[1][:7]])  # context 1..7
        assert math.isclose(r["buckets"][0][key], math.exp(first.mean().item()), rel_tol=1e-12)
        last = nll[0][15:]  # context 16..29
        assert math.isclose(r["buckets"][2][key], math.exp(last.mean().item()), rel_tol=1e-12)
    assert r["overall"]["ppl"] != r["overall"]["ppl_no_memory"]
    assert r["tokens_per_s"] > 0 and r["tokens_per_s_no_memory"] > 0
    assert [d["tokens"] for d in r["docs"]] == [30, 12]


def test_max_tokens_cuts_the_last_document_and_skips_the_rest(model):
    docs = [("a", doc(30, seed=5)), ("b", doc(12, seed=6)), ("c", doc(12, seed=7))]
    r = evaluate_ppl(model, docs, buckets=(0, 8), max_tokens=35, memory_off=False)
    assert r["docs"] == [{"name": "a", "tokens": 30}, {"name": "b", "tokens": 5}]
    assert r["tokens"] == 29 + 4
    assert "ppl_no_memory" not in r["overall"]


def test_token_shards_like_input_and_empty_buckets(model):
    class Shards:
        names = ["one", "two"]
        num_docs = 2

        def doc(self, i):
            return doc(10 + 5 * i, seed=i).numpy().astype(np.uint16)

    r = evaluate_ppl(model, Shards(), buckets=(0, 2048))
    assert [d["name"] for d in r["docs"]] == ["one", "two"]
    assert r["buckets"][1]["tokens"] == 0 and r["buckets"][1]["ppl"] is None
    table = format_ppl_table(r)
    assert "0-2K" in table and "2K+" in table and "overall" in table and "ppl no memory" in table


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="buckets"):
        evaluate_ppl(model, [doc(10)], buckets=(1, 8))
    with pytest.raises(ValueError, match="increasing"):
        evaluate_ppl(model, [doc(10)], buckets=(0, 8, 8))
    with pytest.raises(ValueError, match="max_tokens"):
        evaluate_ppl(model, [doc(10)], max_tokens=1)
    with pytest.raises(ValueError, match="no tokens"):
        evaluate_ppl(model, [doc(1)])
