"""Perplexity with the memory emptied at every segment: the ablation that isolates cross-segment memory."""

from __future__ import annotations

import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.eval.perplexity import evaluate_ppl, stream_nll

pytestmark = pytest.mark.usefixtures("single_thread")
N = 16


@pytest.fixture(scope="module")
def model() -> InfiniTransformer:
    torch.manual_seed(0)
    m = InfiniTransformer(ModelConfig(vocab_size=37, d_model=16, n_layers=2, n_heads=2, segment_len=N))
    with torch.no_grad():
        for gate in m.gates():
            gate.fill_(1.0)
    return m.double()


def test_reset_equals_independent_segments(model):
    ids = torch.randint(0, 37, (5 * N + 3,), generator=torch.Generator().manual_seed(1))
    reset = stream_nll(model, ids, reset_every_segment=True)
    expected = []
    for a in range(0, ids.shape[0] - 1, N):  # each segment from a fresh memory
        b = min(a + N, ids.shape[0] - 1)
        logits = model(ids[None, a:b]).logits[0]
        expected.append(torch.nn.functional.cross_entropy(logits, ids[a + 1 : b + 1], reduction="none"))
    assert torch.allclose(reset, torch.cat(expected).double(), atol=1e-12)
    normal = stream_nll(model, ids)
    assert torch.allclose(reset[:N], normal[:N], atol=1e-12)  # the first segment is the same
    assert (reset[N:] - normal[N:]).abs().max() > 1e-6  # later ones lose the memory


def test_evaluate_ppl_reports_the_reset_column(model):
    ids = torch.randint(0, 37, (4 * N,), generator=torch.Generator().manual_seed(2))
    result = evaluate_ppl(model, [ids], buckets=(0, N), memory_reset=True)
    assert result["buckets"][0]["ppl_memory_reset"] == pytest.approx(result["buckets"][0]["ppl"])
    assert result["overall"]["ppl_memory_reset"] != pytest.approx(result["overall"]["ppl"])
