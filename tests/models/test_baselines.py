"""The Table 2 baselines as whole models (``ModelConfig.attention``): streaming, RMT, state, errors."""

from __future__ import annotations

import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig
from infini_attention.models import memory_disabled

N, P, V = 6, 2, 37
VARIANTS = ["infini", "local", "transformer-xl", "full", "memorizing", "rmt"]


def build(attention: str, seed: int = 0, **kw) -> InfiniTransformer:
    torch.manual_seed(seed)
    kw.setdefault("vocab_size", V)
    config = ModelConfig(
        d_model=24, n_layers=3, n_heads=4, n_kv_heads=2, segment_len=N,
        attention=attention, rmt_memory_tokens=P, knn_top_k=3, knn_layer=1, **kw,
    )  # fmt: skip
    model = InfiniTransformer(config).double()
    with torch.no_grad():
        for gate in model.gates():
            gate.copy_(torch.randn_like(gate))
    return model


def ids(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype == torch.bool or a.numel() == 0:
        return torch.equal(a, b)
    return bool((a - b).abs().max() <= tol)


@pytest.mark.parametrize("attention", VARIANTS)
def test_split_anywhere_equals_one_call(attention):
    model, x = build(attention), ids(2, 31)
    with torch.no_grad():
        whole = model(x)
        parts, state = [], None
        for a, b in [(0, 1), (1, 6), (6, 7), (7, 19), (19, 31)]:
            out = model(x[:, a:b], state)
            parts.append(out.logits)
            state = out.state
    assert close(torch.cat(parts, 1), whole.logits)
    assert state.buffered == whole.state.buffered == 31 % N
    for got, want in zip(state.layers, whole.state.layers, strict=True):
        assert all(close(g, w) for g, w in zip(got.tensors(), want.tensors(), strict=True))
    if attention == "rmt":
        assert close(state.memory, whole.state.memory)


@pytest.mark.parametrize("attention", VARIANTS)
def test_document_start_equals_a_fresh_stream(attention):
    """A document that starts at a segment boundary sees nothing of the one before it."""
    model, x = build(attention), ids(1, 5 * N)
    start = torch.zeros_like(x, dtype=torch.bool)
    start[0, 2 * N] = True
    with torch.no_grad():
        joined = model(x, doc_start=start).logits[:, 2 * N :]
        alone = model(x[:, 2 * N :]).logits
    # 1e-6: the cache's RoPE positions are offset by the forgotten segment (float32 tables)
    assert close(joined, alone, 1e-6)


@pytest.mark.parametrize("attention", VARIANTS)
def test_detach_and_checkpointing_leave_the_forward_unchanged(attention):
    model, x = build(attention), ids(2, 4 * N + 3)
    labels = ids(2, 4 * N + 3, seed=2)
    with torch.no_grad():
        plain = model(x, labels=labels)
        cut = model(x, labels=labels, detach_every=1)
    ckpt = model(x, labels=labels, checkpoint_segments=True)
    ckpt.loss.backward()
    assert close(plain.logits, cut.logits) and close(plain.logits, ckpt.logits.detach())


def rmt_reference(model: InfiniTransformer, x: torch.Tensor) -> torch.Tensor:
    """RMT by its definition: every segment is one call on [memory | text | memory] from an empty
    cache; the text positions give the logits, the last p positions the next memory."""
    memory = model.rmt_memory[None].expand(x.shape[0], -1, -1)
    logits = []
    for a in range(0, x.shape[1], N):
        seg = model.embed(x[:, a : a + N])
        inp = torch.cat([memory, seg, memory], dim=1)
        empty = tuple(b.attn.init_state(x.shape[0], inp.dtype, inp.device) for b in model.blocks)
        h, _ = model._blocks(inp, empty, None)
        logits.append(model.lm_head(model.norm(h[:, P : P + seg.shape[1]])))
        memory = h[:, P + N :]
    return torch.cat(logits, dim=1)


def test_rmt_matches_its_definition():
    model, x = build("rmt"), ids(2, 4 * N)
    with torch.no_grad():
        assert close(model(x).logits, rmt_reference(model, x), 1e-6)


def test_rmt_memory_carries_gradient_across_segments_unless_detached():
    model, x = build("rmt", tie_embeddings=False), ids(1, 3 * N)  # untied: no path via the head
    grads = []
    for detach in (None, 1):
        model.zero_grad()
        emb = model.embed.weight
        out = model(x, detach_every=detach)
        (g,) = torch.autograd.grad(out.logits[:, 2 * N :].sum(), emb)
        first_only = sorted(set(x[0, :N].tolist()) - set(x[0, N:].tolist()))
        grads.append(g[first_only].abs().max().item() if first_only else None)
    assert grads[0] is not None and grads[0] > 0 and grads[1] == 0


def test_state_size_is_bounded_except_for_full_and_memorizing():
    sizes = {}
    for attention in VARIANTS:
        model = build(attention, knn_memory=4 * N)
        with torch.no_grad():
            short = model(ids(1, 2 * N)).state.nbytes
            long = model(ids(1, 8 * N)).state.nbytes
        sizes[attention] = (short, long)
    for attention in ("infini", "local", "transformer-xl", "rmt"):
        assert sizes[attention][0] == sizes[attention][1], attention
    assert sizes["full"][1] == 4 * sizes["full"][0]  # grows with the input
    assert sizes["memorizing"][1] > sizes["memorizing"][0]  # grows up to the 4-segment cap
    capped = build("memorizing", knn_memory=4 * N)
    with torch.no_grad():
        assert capped(ids(1, 12 * N)).state.nbytes == sizes["memorizing"][1]
    assert sizes["local"][1] == 0  # at a segment boundary nothing is kept


def test_gates_and_memory_off():
    assert len(list(build("memorizing").gates())) == 1  # the kNN layer alone
    assert len(list(build("infini").gates())) == 3
    x = ids(1, 3 * N)
    model = build("memorizing")
    with torch.no_grad(), memory_disabled(model):
        off = model(x).logits
    with torch.no_grad():
        for gate in model.gates():
            gate.fill_(-1e4)
        assert close(off, model(x).logits)
    for attention in ("local", "transformer-xl", "full", "rmt"):
        with pytest.raises(ValueError, match="no memory gate"), memory_disabled(build(attention)):
            pass


@pytest.mark.parametrize("attention", ["memorizing", "rmt"])
def test_save_and_load_keep_every_weight(attention, tmp_path):
    from infini_attention.data.tokenizer import Tokenizer
    from infini_attention.pretrained import load_pretrained, save_pretrained

    tokenizer = Tokenizer.train(["a small text to train a small tokenizer on. " * 40], vocab_size=300)
    model = build(attention, vocab_size=tokenizer.vocab_size).float()
    save_pretrained(model, tokenizer, tmp_path / "m")
    loaded, _ = load_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    weights = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"attention": "xl"}, "attention must be one of"),
        ({"attention": "memorizing", "knn_layer": 3}, "knn_layer must be in"),
        ({"knn_top_k": 0}, "knn_top_k must be a positive int"),
        ({"rmt_memory_tokens": -1}, "rmt_memory_tokens must be a positive int"),
        ({"knn_memory": 0}, "knn_memory must be a positive int"),
    ],
)
def test_bad_config(kw, message):
    base = {"vocab_size": V, "d_model": 24, "n_layers": 3, "n_heads": 4}
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**base, **kw})


def test_knn_layer_default_is_two_thirds_up():
    kw = {"vocab_size": V, "d_model": 24, "n_layers": 12, "n_heads": 4}
    assert ModelConfig(**kw, attention="memorizing").knn_layer == 8  # the 9th
    assert ModelConfig(**kw).knn_layer is None  # only memorizing has one
