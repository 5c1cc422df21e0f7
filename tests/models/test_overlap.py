"""The local-overlap option (``local_overlap`` W > 0, not in the paper): a segment's local
attention also sees the previous segment's last W tokens.

Checked here against an independent reference (sliding-window softmax attention with RoPE at
absolute positions), for resets, gradients and state size; tests/models/test_transformer.py runs
its naive-op, streaming and causality tests with and without the overlap.
"""

from __future__ import annotations

import math

import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.layers import InfiniAttention
from infini_attention.layers.rope import RotaryEmbedding

N = 8


def make_model(seed: int = 0, W: int = 3, **overrides) -> InfiniTransformer:
    torch.manual_seed(seed)
    base = dict(vocab_size=61, d_model=24, n_layers=2, n_heads=6, n_kv_heads=2, segment_len=N)
    model = InfiniTransformer(ModelConfig(**{**base, "local_overlap": W, **overrides})).double()
    with torch.no_grad():  # spread the gates so memory and local paths both matter
        for gate in model.gates():
            gate.copy_(torch.randn_like(gate) * 2)
    return model


def tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 61, (B, T), generator=torch.Generator().manual_seed(seed))


def err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def sliding_window_reference(layer: InfiniAttention, x: torch.Tensor) -> torch.Tensor:
    """Local path only: token i attends to tokens [start of its segment - W, i], RoPE at absolute
    positions. Written from the definition, sharing nothing with the layer but its weights."""
    B, T, _ = x.shape
    H, Hkv, D, W = layer.n_heads, layer.n_kv_heads, layer.head_dim, layer.overlap
    q = layer.q_proj(x).unflatten(-1, (H, D))
    k = layer.k_proj(x).unflatten(-1, (Hkv, D))
    v = layer.v_proj(x).unflatten(-1, (Hkv, D))
    rope = RotaryEmbedding(D, T)
    pos = torch.arange(T)
    q, k = rope(q, pos), rope(k, pos)
    out = torch.zeros(B, T, H, D, dtype=x.dtype)
    for i in range(T):
        lo = max(0, (i // layer.segment_len) * layer.segment_len - W)
        for h in range(H):
            j = h // (H // Hkv)
            scores = torch.einsum("bd,btd->bt", q[:, i, h], k[:, lo : i + 1, j]) / math.sqrt(D)
            out[:, i, h] = torch.einsum("bt,btd->bd", scores.softmax(-1), v[:, lo : i + 1, j])
    return layer.o_proj(out.flatten(2))


@pytest.mark.parametrize("W", [0, 1, 3, N])
def test_local_path_is_a_window_reaching_w_tokens_back(W):
    torch.manual_seed(0)
    layer = InfiniAttention(24, 4, 2, 6, N, overlap=W).double()
    with torch.no_grad():
        layer.gate.fill_(-1e4)  # memory weight sigmoid(-1e4) = 0: the local path alone
    x = torch.randn(2, 29, 24, dtype=torch.float64)
    ref = sliding_window_reference(layer, x)
    whole, _ = layer(x)
    # RoPE tables hold float32 angles (as in HF), so other absolute positions round differently
    # (~1e-8 here); a key rotated to a wrong position would be off by ~1e-1
    assert err(whole, ref) < 1e-7
    state, pieces = None, []  # and streamed in uneven pieces
    for a, b in ((0, 5), (5, 6), (6, 19), (19, 29)):
        o, state = layer(x[:, a:b], state)
        pieces.append(o)
    assert err(torch.cat(pieces, dim=1), whole) < 1e-12


def test_overlap_changes_the_first_tokens_of_a_segment_only():
    """With memory off, token N-1 reaches token N only through the overlap."""
    torch.manual_seed(0)
    x = torch.randn(1, 3 * N, 24, dtype=torch.float64)
    changed = x.clone()
    changed[0, N - 1] += 1.0
    for W, reaches in ((0, False), (1, True)):
        layer = InfiniAttention(24, 4, 2, 6, N, overlap=W).double()
        with torch.no_grad():
            layer.gate.fill_(-1e4)
        diff = (layer(changed)[0] - layer(x)[0]).abs().amax(dim=-1)[0]  # [T]
        assert (diff[N : 2 * N] > 1e-9).all().item() is reaches
        assert diff[2 * N :].max() == 0.0  # two segments on: out of reach of the window


@pytest.mark.parametrize("ckpt", [False, True])
def test_a_reset_hides_the_previous_documents_tail(ckpt):
    model = make_model(W=4)
    doc_a, doc_b = tokens(2, 2 * N, seed=4), tokens(2, 2 * N, seed=5)
    packed = torch.cat([doc_a, doc_b], dim=1)
    start = torch.zeros_like(packed, dtype=torch.bool)
    start[:, 0] = True
    start[0, 2 * N] = True  # row 0: doc_b is a new document; row 1: one long document
    out = model(packed, doc_start=start, checkpoint_segments=ckpt)
    alone = model(doc_b)
    assert err(out.logits[0, 2 * N :], alone.logits[0]) < 1e-12  # as if from a fresh stream
    assert err(out.logits[1], model(packed).logits[1]) < 1e-12  # row 1 untouched
    for s_out, s_alone in zip(out.state.layers, alone.state.layers, strict=True):
        assert err(s_out.tail_k[0], s_alone.tail_k[0]) < 1e-12


def test_gradients_flow_through_the_tail():
    model = make_model(W=3)
    ids = tokens(1, 2 * N)
    out = model(ids, labels=ids)
    # the loss at segment 2's first token depends on segment 1's last tokens' keys via the tail
    k_proj = model.blocks[0].attn.k_proj.weight
    (g,) = torch.autograd.grad(out.logits[0, N].sum(), k_proj)
    assert g.abs().max() > 0


def test_state_bytes_constant_in_stream_length():
    model = make_model(W=3).float()
    one = model(tokens(1, N)).state
    many = model(tokens(1, 50 * N)).state
    assert one.nbytes == many.nbytes
    c = model.config
    memory = c.n_layers * c.n_kv_heads * (c.head_dim * c.head_dim + c.head_dim) * 4
    tail = c.n_layers * (3 * c.n_kv_heads * 2 * c.head_dim * 4 + 3)  # keys + values (fp32), valid flags
    assert one.nbytes == memory + tail


def test_memory_stays_float32_under_bf16():
    model = make_model(W=3).to(torch.bfloat16)
    out = model(tokens(1, 20))
    assert torch.isfinite(out.logits).all()
    for layer in out.state.layers:
        assert layer.M.dtype == torch.float32 and layer.tail_k.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(local_overlap=-1), "local_overlap"),
        (dict(local_overlap=N + 1), "local_overlap"),
        (dict(local_overlap=True), "local_overlap"),
        (dict(local_overlap=2, attention="transformer-xl"), "local_overlap"),
    ],
)
def test_config_rejects_bad_overlap(overrides, match):
    base = dict(vocab_size=61, d_model=24, n_layers=2, n_heads=6, segment_len=N)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**base, **overrides})


def test_layer_and_op_reject_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        InfiniAttention(24, 4, 2, 6, N, overlap=N + 1)
    model = make_model(W=3)
    state = model(tokens(1, 2 * N)).state
    paper = make_model(W=0)
    with pytest.raises(ValueError, match="overlap"):  # a state with a 3-token tail, into W = 0
        paper(tokens(1, 4), state)


def test_overlap_is_saved_with_the_config():
    config = make_model(W=3).config
    again = ModelConfig.from_dict(config.to_dict())
    assert again.local_overlap == 3
