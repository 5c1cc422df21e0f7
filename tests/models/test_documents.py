"""Packed training rows: padding never enters the memory, documents never leak into each other."""

from __future__ import annotations

import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.models import memory_disabled

N = 8


@pytest.fixture(scope="module")
def model() -> InfiniTransformer:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=41, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2, segment_len=N)
    m = InfiniTransformer(config).double()
    with torch.no_grad():
        for gate in m.gates():
            gate.copy_(torch.randn_like(gate) * 2)
    return m


def ids(B: int, T: int, seed: int) -> torch.Tensor:
    return torch.randint(1, 41, (B, T), generator=torch.Generator().manual_seed(seed))


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def _with_write_strengths() -> InfiniTransformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=41, d_model=24, n_layers=2, n_heads=4, n_kv_heads=2, segment_len=N, write_strength=True
    )
    return InfiniTransformer(config).double()


@pytest.mark.parametrize("write", [False, True])  # True: learned write strengths, masked by padding
@pytest.mark.parametrize("update", ["linear", "delta", "deltanet"])
def test_padding_never_enters_the_memory(model, update, write):
    model = _with_write_strengths() if write else model
    for block in model.blocks:
        block.attn.update = update
    # a 5-token document padded to the segment boundary, then 2 more segments
    x = ids(1, 3 * N, seed=1)
    pad = torch.zeros(1, 3 * N, dtype=torch.bool)
    pad[0, 5:N] = True
    other = x.clone()
    other[0, 5:N] = ids(1, N - 5, seed=2)  # different padding tokens
    a, b = model(x, pad_mask=pad), model(other, pad_mask=pad)
    real = ~pad[0]
    assert err(a.logits[0, real], b.logits[0, real]) < 1e-12
    for sa, sb in zip(a.state.layers, b.state.layers, strict=True):
        assert err(sa.M, sb.M) < 1e-12 and err(sa.z, sb.z) < 1e-12
    # without the mask the padding does reach later segments through the memory
    assert err(model(x).logits[0, N:], model(other).logits[0, N:]) > 1e-8
    for block in model.blocks:
        block.attn.update = "delta"


def test_padding_writes_exactly_nothing(model):
    """z counts sigma(k) of written tokens: the padded segment adds only its 5 real tokens."""
    x = ids(1, N, seed=3)
    pad = torch.zeros(1, N, dtype=torch.bool)
    pad[0, 5:] = True
    state = model(x, pad_mask=pad).state
    attn = model.blocks[0].attn
    k = attn.k_proj(model.blocks[0].attn_norm(model.embed(x[:, :5]))).unflatten(-1, (2, 6))
    expected_z = (torch.nn.functional.elu(k) + 1).sum(dim=1)  # [1, Hkv, D]
    assert err(state.layers[0].z, expected_z) < 1e-12


@pytest.mark.parametrize("ckpt", [False, True])
def test_memory_after_a_document_boundary_is_fresh(model, ckpt):
    doc_a, doc_b = ids(2, 2 * N, seed=4), ids(2, 2 * N, seed=5)
    packed = torch.cat([doc_a, doc_b], dim=1)
    start = torch.zeros_like(packed, dtype=torch.bool)
    start[:, 0] = True
    start[0, 2 * N] = True  # row 0: doc_b is a new document; row 1: one long document
    out = model(packed, doc_start=start, checkpoint_segments=ckpt)
    alone = model(doc_b)
    assert err(out.logits[0, 2 * N :], alone.logits[0]) < 1e-12  # as if from a fresh memory
    assert err(out.logits[1], model(packed).logits[1]) < 1e-12  # row 1 untouched
    assert err(out.logits[0, 2 * N :], model(packed).logits[0, 2 * N :]) > 1e-8  # the reset matters
    for s_out, s_alone in zip(out.state.layers, alone.state.layers, strict=True):
        assert err(s_out.M[0], s_alone.M[0]) < 1e-12


def test_reset_in_a_later_call_and_gradients_flow(model):
    x = ids(1, 3 * N, seed=6)
    first = model(x[:, :N])
    start = torch.zeros(1, 2 * N, dtype=torch.bool)
    start[0, N] = True
    out = model(x[:, N:], first.state, labels=x[:, N:], doc_start=start)
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()


def test_doc_start_off_a_segment_boundary_is_an_error(model):
    x = ids(1, 2 * N, seed=7)
    start = torch.zeros_like(x, dtype=torch.bool)
    start[0, 3] = True
    with pytest.raises(ValueError, match="segment boundaries"):
        model(x, doc_start=start)
    first = model(x[:, :3])  # 3 tokens buffered: token N-3 of the next call is on a boundary
    start = torch.zeros(1, N, dtype=torch.bool)
    start[0, N - 3] = True
    model(x[:, 3 : 3 + N], first.state, doc_start=start)
    with pytest.raises(ValueError, match="shape of input_ids"):
        model(x, pad_mask=torch.zeros(1, 3, dtype=torch.bool))


def test_memory_disabled_makes_segments_independent_and_restores_gates(model):
    x = ids(1, 4 * N, seed=8)
    changed = x.clone()
    changed[0, 1] = (changed[0, 1] + 1) % 41
    before = [g.clone() for g in model.gates()]
    with memory_disabled(model):
        late = slice(3 * N, 4 * N)
        assert err(model(x).logits[:, late], model(changed).logits[:, late]) == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.gates(), strict=True))
    assert err(model(x).logits[:, late], model(changed).logits[:, late]) > 1e-8
