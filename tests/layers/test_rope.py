"""RoPE: relative positions, identity at 0, tables not rounded by dtype casts."""

from __future__ import annotations

import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.layers import RotaryEmbedding


def test_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(16, 64)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)

    def score(m: int, n: int) -> float:
        return (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum().item()

    assert abs(score(5, 2) - score(40, 37)) < 1e-6  # float32 tables
    assert abs(score(5, 2) - score(5, 3)) > 1e-6
    assert torch.equal(rope(q, torch.tensor([0])), q)


def test_bf16_cast_keeps_float32_tables():
    model = InfiniTransformer(ModelConfig(vocab_size=11, d_model=16, n_layers=1, n_heads=2, segment_len=32))
    before = model.blocks[0].attn.rope._on(torch.device("cpu"))[0].clone()
    model.to(torch.bfloat16)
    after = model.blocks[0].attn.rope._on(torch.device("cpu"))[0]
    assert after.dtype == torch.float32 and torch.equal(before, after)
