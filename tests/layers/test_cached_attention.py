"""The baseline attention layers against a per-token reference written from their definitions.

For every token the reference lists the keys it may see (local: its segment so far; transformer-xl:
also the whole previous segment; full: everything before it; memorizing: the transformer-xl keys
plus the top-k of every token in earlier segments, capped at ``knn_memory``), then does plain
softmax attention over them. No segment batching, no cache, no streaming: nothing shared with the
layer beyond its projections and the RoPE formula.
"""

from __future__ import annotations

import math

import pytest
import torch

from infini_attention.layers import CachedAttention

B, T, N, H, HKV, D, DM = 2, 29, 6, 4, 2, 8, 20
ROPE_TOL = 1e-6  # the layer's RoPE tables are float32 by design (converted models' parity)


def _rope(x: torch.Tensor, pos: int, theta: float = 10000.0) -> torch.Tensor:
    """x ``[h, D]`` rotated to position ``pos`` (rotate-half layout), from the formula."""
    half = x.shape[-1] // 2
    out = torch.empty_like(x)
    for i in range(half):
        angle = pos * theta ** (-2 * i / x.shape[-1])
        c, s = math.cos(angle), math.sin(angle)
        out[..., i] = x[..., i] * c - x[..., i + half] * s
        out[..., i + half] = x[..., i + half] * c + x[..., i] * s
    return out


def reference(layer: CachedAttention, x: torch.Tensor, mode: str, top_k: int = 0, cap=None) -> torch.Tensor:
    Bx, Tx, _ = x.shape
    q = layer.q_proj(x).view(Bx, Tx, H, D)
    k = layer.k_proj(x).view(Bx, Tx, HKV, D)
    v = layer.v_proj(x).view(Bx, Tx, HKV, D)
    out = torch.zeros(Bx, Tx, H, D, dtype=x.dtype)
    for b in range(Bx):
        for t in range(Tx):
            seg_start = (t // N) * N
            first = {"local": seg_start, "transformer-xl": max(seg_start - N, 0), "full": 0}[mode]
            for h in range(H):
                g = h // (H // HKV)  # query head h reads key/value head h // G (Llama's repeat_kv)
                qr = _rope(q[b, t, h], t - first)
                scores = torch.stack([qr @ _rope(k[b, j, g], j - first) for j in range(first, t + 1)])
                a = torch.softmax(scores / math.sqrt(D), 0) @ v[b, first : t + 1, g]
                if top_k:
                    lo = 0 if cap is None else max(0, seg_start - cap)
                    if seg_start > lo:
                        mem = q[b, t, h] @ k[b, lo:seg_start, g].T / math.sqrt(D)
                        best, idx = mem.sort(descending=True)
                        w = torch.softmax(best[:top_k], 0)
                        m = w @ v[b, lo:seg_start, g][idx[:top_k]]
                    else:
                        m = torch.zeros(D, dtype=x.dtype)
                    gate = torch.sigmoid(layer.gate[h])
                    a = gate * m + (1 - gate) * a
                out[b, t, h] = a
    return layer.o_proj(out.flatten(2))


def make(mode: str, seed: int = 0, **kw) -> CachedAttention:
    torch.manual_seed(seed)
    layer = CachedAttention(DM, H, HKV, D, N, mode=mode, **kw).double()
    if hasattr(layer, "gate"):
        with torch.no_grad():
            layer.gate.copy_(torch.randn(H))
    return layer


def x_input(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, T, DM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["local", "transformer-xl", "full"])
def test_matches_the_per_token_reference(mode):
    layer, x = make(mode), x_input()
    with torch.no_grad():
        y, _ = layer(x)
        assert (y - reference(layer, x, mode)).abs().max() < ROPE_TOL


@pytest.mark.parametrize("cap", [None, 9])
def test_memorizing_matches_the_per_token_reference(cap):
    layer, x = make("transformer-xl", knn_top_k=3, knn_memory=cap), x_input()
    with torch.no_grad():
        y, state = layer(x)
        assert (y - reference(layer, x, "transformer-xl", top_k=3, cap=cap)).abs().max() < ROPE_TOL
    stored = (T // N) * N if cap is None else cap
    assert state.store_k.shape[1] == stored


def test_knn_blocks_give_the_same_top_k(monkeypatch):
    """The blockwise running top-k equals one pass over the whole store."""
    import infini_attention.layers.cached as cached

    layer, x = make("transformer-xl", knn_top_k=4), x_input()
    with torch.no_grad():
        whole, _ = layer(x)
        monkeypatch.setattr(cached, "_KNN_BLOCK", 5)  # blocks smaller than a segment and than k+1
        blocked, _ = layer(x)
    assert (whole - blocked).abs().max() < 1e-12


@pytest.mark.parametrize("mode", ["local", "transformer-xl", "full", "memorizing"])
def test_streaming_equals_one_call_with_state(mode):
    kw = {"knn_top_k": 3} if mode == "memorizing" else {}
    layer, x = make("transformer-xl" if mode == "memorizing" else mode, **kw), x_input()
    with torch.no_grad():
        y, final = layer(x)
        parts, state = [], None
        for a, b in [(0, 1), (1, 7), (7, 8), (8, 20), (20, 29)]:
            o, state = layer(x[:, a:b], state)
            parts.append(o)
    assert (torch.cat(parts, 1) - y).abs().max() < 1e-12
    for got, want in zip(state.tensors(), final.tensors(), strict=True):
        assert got.shape == want.shape
        assert torch.equal(got, want) if got.dtype == torch.bool else torch.allclose(got, want, atol=1e-12)


def test_transformer_xl_cache_carries_no_gradient_full_does():
    x = x_input().requires_grad_()
    for mode, flows in [("transformer-xl", False), ("full", True)]:
        layer = make(mode)
        y, _ = layer(x)
        (grad,) = torch.autograd.grad(y[:, 2 * N :].sum(), x)  # third segment's outputs
        # transformer-xl sees segment 2's keys (cached, detached) but no gradient reaches them
        assert bool(grad[:, : 2 * N].abs().max() > 0) is flows
        assert grad[:, 2 * N : 3 * N].abs().max() > 0


def test_padding_is_never_attended_to():
    layer, x = make("transformer-xl"), x_input()
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[:, 3:N] = True
    other = x.clone()
    other[:, 3:N] = torch.randn(B, N - 3, DM, dtype=torch.float64)
    with torch.no_grad():
        a, _ = layer(x, pad_mask=pad)
        b, _ = layer(other, pad_mask=pad)
    assert (a[~pad] - b[~pad]).abs().max() < 1e-12


def test_reset_rows_forgets_the_past():
    layer = make("transformer-xl", knn_top_k=2)
    x = x_input()
    with torch.no_grad():
        _, state = layer(x[:, : 2 * N])
        state = state.reset_rows(torch.tensor([True, False]))
        after, _ = layer(x[:, 2 * N : 3 * N], state)
        fresh, _ = layer(x[:, 2 * N : 3 * N])
        kept, _ = layer(x[:, 2 * N : 3 * N], layer(x[:, : 2 * N])[1])
    assert (after[0] - fresh[0]).abs().max() < ROPE_TOL  # row 0 starts over (RoPE offset by N)
    assert (after[1] - kept[1]).abs().max() < 1e-12  # row 1 untouched


def test_bad_mode():
    with pytest.raises(ValueError, match="mode must be one of"):
        CachedAttention(DM, H, HKV, D, N, mode="xl")
