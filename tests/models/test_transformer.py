"""InfiniTransformer: streaming exactness, causality, memory across segments, BPTT options."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from infini_attention import InfiniState, InfiniTransformer, ModelConfig, infini_attention_naive


def small_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=61, d_model=24, n_layers=2, n_heads=6, n_kv_heads=2, segment_len=8)
    return ModelConfig(**{**base, **overrides})


def make_model(seed: int = 0, dtype=torch.float64, **overrides) -> InfiniTransformer:
    torch.manual_seed(seed)
    model = InfiniTransformer(small_config(**overrides)).to(dtype)
    with torch.no_grad():  # spread the gates so memory and local paths both matter
        for gate in model.gates():
            gate.copy_(torch.randn_like(gate) * 2)
    return model


def tokens(B: int, T: int, seed: int = 1, vocab: int = 61) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------- configuration


def test_config_derives_defaults():
    c = ModelConfig(vocab_size=100, d_model=96, n_layers=2, n_heads=4)
    assert (c.n_kv_heads, c.head_dim) == (4, 24)
    assert c.d_ff % 64 == 0 and c.d_ff >= 8 * 96 // 3
    assert ModelConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(n_layers=-1), "n_layers"),
        (dict(n_heads=4, n_kv_heads=3), "multiple of n_kv_heads"),
        (dict(d_model=30, n_heads=4), "not divisible by n_heads"),
        (dict(segment_len=0), "segment_len"),
        (dict(update="hebbian"), "update"),
        (dict(head_dim=7), "even"),
        (dict(rope_theta=0.0), "rope_theta"),
        (dict(mem_eps=-1.0), "mem_eps"),
        (dict(tie_embeddings="yes"), "tie_embeddings"),
        (dict(write_strength=1), "write_strength must be true or false"),
        (dict(write_strength=True, attention="local"), "write_strength is an option of attention = 'infini'"),
        (dict(write_strength_init=float("nan")), "write_strength_init must be a finite number"),
    ],
)
def test_config_rejects_bad_values(overrides, match):
    base = dict(vocab_size=10, d_model=32, n_layers=1, n_heads=4)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**{**base, **overrides})


def test_config_from_dict_rejects_unknown_and_missing_keys():
    good = small_config().to_dict()
    with pytest.raises(ValueError, match="unknown ModelConfig keys: colour"):
        ModelConfig.from_dict({**good, "colour": "red"})
    del good["n_heads"]
    with pytest.raises(ValueError, match="missing required keys: n_heads"):
        ModelConfig.from_dict(good)


def test_gate_parameters_are_named_and_shaped():
    model = make_model()
    names = {n: p.shape for n, p in model.named_parameters() if n.endswith(".gate")}
    assert names == {f"blocks.{i}.attn.gate": torch.Size([6]) for i in range(2)}
    assert model.lm_head.weight is model.embed.weight  # tied by default
    untied = InfiniTransformer(small_config(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.weight


# ---------------------------------------------------------------- forward and loss


def test_loss_is_mean_cross_entropy_over_labelled_positions():
    model = make_model()
    ids = tokens(2, 21)
    labels = tokens(2, 21, seed=2)
    labels[0, :5] = -100
    out = model(ids, labels=labels)
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[keep], labels[keep])
    assert out.logits.shape == (2, 21, 61)
    assert abs(out.loss.item() - expected.item()) < 1e-12
    all_ignored = model(ids, labels=torch.full_like(labels, -100)).loss
    assert all_ignored.item() == 0.0


# W = local_overlap: 0 is the paper; 3 also shows the previous segment's last 3 tokens to local attention
OVERLAPS = [0, 3]
STATE_FIELDS = [f.name for f in dataclasses.fields(InfiniState)]


@pytest.mark.parametrize("write", [False, True])  # learned write strengths (not in the paper)
@pytest.mark.parametrize("W", OVERLAPS)
@pytest.mark.parametrize("update", ["linear", "delta", "deltanet"])
def test_fast_model_matches_reference_op_model(update, W, write):
    model = make_model(update=update, local_overlap=W, write_strength=write, write_strength_init=0.5)
    ids = tokens(2, 29)
    fast = model(ids)
    for block in model.blocks:
        block.attn.op = infini_attention_naive
    ref = model(ids)
    assert max_err(fast.logits, ref.logits) < 1e-10
    for a, b in zip(fast.state.layers, ref.state.layers, strict=True):
        for name in ("M", "z", "tail_k", "tail_v", "k_next", "write"):
            assert getattr(a, name).shape == getattr(b, name).shape, name
            assert getattr(a, name).numel() == 0 or max_err(getattr(a, name), getattr(b, name)) < 1e-10, name


@pytest.mark.parametrize("W", OVERLAPS)
@pytest.mark.parametrize("update", ["linear", "delta", "deltanet"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_split_resume_at_random_points(update, seed, W):
    # seed 2 with learned write strengths (not in the paper), whose buffer the state carries too
    model = make_model(update=update, local_overlap=W, write_strength=seed == 2, write_strength_init=0.5)
    T = 53
    ids = tokens(2, T, seed=seed)
    whole = model(ids)
    gen = torch.Generator().manual_seed(seed)
    cuts = sorted(
        set(torch.randint(1, T, (int(torch.randint(1, 5, (1,), generator=gen)),), generator=gen).tolist())
    )
    state, pieces = None, []
    for a, b in zip([0, *cuts], [*cuts, T], strict=True):
        out = model(ids[:, a:b], state)
        pieces.append(out.logits)
        state = out.state
    assert max_err(torch.cat(pieces, dim=1), whole.logits) < 1e-10, cuts
    for a, b in zip(state.layers, whole.state.layers, strict=True):
        for name in STATE_FIELDS:
            x, y = getattr(a, name), getattr(b, name)
            assert x.shape == y.shape, name
            assert x.numel() == 0 or max_err(x.double(), y.double()) < 1e-10, name


@pytest.mark.parametrize("W", [0, 5])
def test_token_by_token_equals_one_call(W):
    model = make_model(local_overlap=W)
    ids = tokens(1, 27)
    whole = model(ids).logits
    state, steps = None, []
    for t in range(ids.shape[1]):
        out = model(ids[:, t : t + 1], state)
        steps.append(out.logits)
        state = out.state
        assert state.buffered == (t + 1) % 8  # the cache never holds more than N-1 tokens
    assert max_err(torch.cat(steps, dim=1), whole) < 1e-10


@pytest.mark.parametrize("W", OVERLAPS)
def test_causality(W):
    model = make_model(local_overlap=W)
    ids = tokens(1, 40)
    base = model(ids).logits
    for t in (3, 7, 8, 21, 39):
        changed = ids.clone()
        changed[0, t] = (changed[0, t] + 1) % 61
        logits = model(changed).logits
        assert max_err(logits[:, :t], base[:, :t]) == 0.0
        assert max_err(logits[:, t:], base[:, t:]) > 1e-6


def test_memory_carries_information_across_segments():
    """A token in segment 0 changes predictions in segment 3 only through the memory."""
    model = make_model()
    ids = tokens(1, 32)  # 4 segments of 8
    changed = ids.clone()
    changed[0, 2] = (changed[0, 2] + 1) % 61
    late = slice(24, 32)
    assert max_err(model(changed).logits[:, late], model(ids).logits[:, late]) > 1e-6
    with torch.no_grad():
        for gate in model.gates():
            gate.fill_(-1e4)  # memory weight 0: segments become independent
    assert max_err(model(changed).logits[:, late], model(ids).logits[:, late]) < 1e-12


def test_gradient_reaches_memory_writes():
    """The loss of the last segment has a gradient w.r.t. the first segment's keys/values
    (full BPTT through M); with the state detached at every segment it has none."""
    model = make_model()
    ids = tokens(1, 24)
    emb = model.embed(ids).detach().requires_grad_()

    def late_loss(detach: bool) -> torch.Tensor:
        state, x_out = model.init_state(1), None
        x = emb
        for s in range(3):
            seg = x[:, 8 * s : 8 * (s + 1)]
            layers = []
            h = seg
            for block, st in zip(model.blocks, state.layers, strict=True):
                h, st = block(h, st)
                layers.append(st)
            state = type(state)(tuple(layers), state.segment_len)
            if detach:
                state = state.detach()
            x_out = h
        return x_out.pow(2).sum()

    (g,) = torch.autograd.grad(late_loss(False), emb)
    assert g[:, :8].abs().max() > 1e-8
    (g,) = torch.autograd.grad(late_loss(True), emb)
    assert g[:, :8].abs().max() == 0


def test_empty_input_keeps_state():
    model = make_model()
    first = model(tokens(2, 11))
    out = model(tokens(2, 0), first.state)
    assert out.logits.shape == (2, 0, 61)
    for a, b in zip(out.state.layers, first.state.layers, strict=True):
        assert torch.equal(a.M, b.M) and torch.equal(a.v, b.v)


# ---------------------------------------------------------------- BPTT options


def grads(model, ids, **kwargs) -> list[torch.Tensor]:
    model.zero_grad()
    model(ids, labels=torch.roll(ids, -1, dims=1), **kwargs).loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_checkpointing_gives_the_same_values_and_gradients():
    model = make_model()
    ids = tokens(2, 37)
    assert max_err(model(ids, checkpoint_segments=True).logits, model(ids).logits) < 1e-12
    for a, b in zip(grads(model, ids), grads(model, ids, checkpoint_segments=True), strict=True):
        assert max_err(a, b) < 1e-12


@pytest.mark.parametrize("ckpt", [False, True])
def test_detach_every_truncates_bptt(ckpt):
    model = make_model()
    ids = tokens(1, 45)  # 5 full segments + 5 tokens
    labels = torch.roll(ids, -1, dims=1)
    truncated = grads(model, ids, detach_every=2, checkpoint_segments=ckpt)
    # the same by hand: chunks of 2 segments with the state detached between them
    model.zero_grad()
    state, total = None, 0.0
    for a in range(0, 45, 16):
        out = model(ids[:, a : a + 16], None if state is None else state.detach(), labels[:, a : a + 16])
        total = total + out.loss * (min(a + 16, 45) - a) / 45
        state = out.state
    total.backward()
    manual = [p.grad.clone() for p in model.parameters()]
    assert all(max_err(a, b) < 1e-12 for a, b in zip(truncated, manual, strict=True))
    full = grads(model, ids)
    assert max(max_err(a, b) for a, b in zip(truncated, full, strict=True)) > 1e-8
    assert max_err(model(ids, detach_every=2).logits, model(ids).logits) < 1e-12


@pytest.mark.parametrize(
    "backend",
    # aot_eager traces our code as inductor would (dynamo + autograd graphs) in seconds; inductor
    # itself generates and builds C++ kernels, about 2 minutes here: slow
    ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)],
)
def test_compiled_segments_match_eager_values_gradients_and_state(backend):
    """compile_segments(): the checkpointed per-segment body, compiled, against the eager model, in
    float32, from an open segment (a shorter first piece) with padding and local_overlap; a call
    without checkpointing stays eager."""
    torch._dynamo.reset()
    ids = tokens(2, 45)
    pad = torch.zeros(2, 40, dtype=torch.bool)
    pad[1, -4:] = True  # row 1 ends early: its last 4 tokens are padding
    eager = make_model(dtype=torch.float32, local_overlap=3)
    compiled = make_model(dtype=torch.float32, local_overlap=3).compile_segments(backend=backend)
    labels = torch.roll(ids, -1, dims=1)[:, 5:].masked_fill(pad, -100)
    outs, grads_ = [], []
    for m in (eager, compiled):
        first = m(ids[:, :5])  # the stream continues mid-segment
        out = m(ids[:, 5:], first.state, labels, pad_mask=pad, checkpoint_segments=True)
        out.loss.backward()
        outs.append(out)
        grads_.append([p.grad for p in m.parameters()])
    assert max_err(outs[0].logits, outs[1].logits) < 1e-5
    for a, b in zip(outs[0].state.layers, outs[1].state.layers, strict=True):
        assert max_err(a.M, b.M) < 1e-5 and max_err(a.z, b.z) < 1e-4
    for a, b in zip(*grads_, strict=True):
        assert max_err(a, b) < 1e-4 * max(1.0, b.abs().max().item())
    assert compiled._segment_body is not None and eager._segment_body is None


def test_compiled_segments_do_not_recompile_for_new_row_lengths():
    """Every piece is one segment: rows of 3 and then 5 segments (with padding, as training batches
    have) reuse the graphs the first row compiled, where slices of longer rows would differ in strides."""
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    model = make_model(dtype=torch.float32).compile_segments(backend=counter)
    for T in (24, 40, 56):
        pad = torch.zeros(2, T, dtype=torch.bool)
        pad[1, -3:] = True
        model(tokens(2, T), pad_mask=pad, checkpoint_segments=True)
        if T == 24:
            compiled = counter.frame_count  # the first segment (empty state) and the others
    assert compiled >= 1 and counter.frame_count == compiled


def test_chunked_paths_respect_an_open_segment():
    model = make_model()
    ids = tokens(1, 30)
    first = model(ids[:, :5])
    for kwargs in (dict(detach_every=1), dict(checkpoint_segments=True), dict(detach_every=3)):
        out = model(ids[:, 5:], first.state, **kwargs)
        assert max_err(out.logits, model(ids).logits[:, 5:]) < 1e-10


# ---------------------------------------------------------------- state size


def test_state_bytes_constant_in_stream_length():
    model = make_model(dtype=torch.float32, segment_len=4)
    one = model(tokens(1, 4)).state
    many = model(tokens(1, 400)).state
    assert one.nbytes == many.nbytes > 0
    c = model.config
    memory = c.n_layers * c.n_kv_heads * (c.head_dim * c.head_dim + c.head_dim) * 4
    assert one.nbytes == memory  # buffers are empty at a segment boundary


def test_memory_stays_float32_under_bf16():
    model = make_model(dtype=torch.bfloat16)
    out = model(tokens(1, 20))
    assert out.logits.dtype == torch.bfloat16
    assert all(
        layer.M.dtype == torch.float32 and layer.z.dtype == torch.float32 for layer in out.state.layers
    )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "make_call, match",
    [
        (lambda m: m(torch.tensor([[1, 61]])), "token id 61 is outside the vocabulary"),
        (lambda m: m(torch.tensor([[-1, 3]])), "token id -1 is outside the vocabulary"),
        (lambda m: m(torch.tensor([1, 2, 3])), "2-D tensor"),
        (lambda m: m(torch.tensor([[1.0, 2.0]])), "int64 or int32"),
        (lambda m: m(tokens(1, 5), labels=tokens(1, 4)), "labels must have the shape"),
        (lambda m: m(tokens(2, 5), m(tokens(1, 5)).state), "batch size 1"),
        (lambda m: m(tokens(1, 5), make_model(n_layers=3)(tokens(1, 5)).state), "3 layers"),
        (lambda m: m(tokens(1, 5), make_model(segment_len=16)(tokens(1, 5)).state), "segment_len 16"),
        (lambda m: m(tokens(1, 5), make_model(n_kv_heads=3)(tokens(1, 5)).state), "another configuration"),
        (lambda m: m(tokens(1, 5), detach_every=0), "detach_every"),
        (lambda m: m(tokens(1, 5), state="not a state"), "ModelState"),
    ],
)
def test_bad_input_is_a_value_error(make_call, match):
    model = make_model()
    with pytest.raises(ValueError, match=match):
        make_call(model)


def test_model_config_is_a_plain_dataclass():
    assert dataclasses.is_dataclass(ModelConfig)
    with pytest.raises(ValueError, match="ModelConfig"):
        InfiniTransformer({"vocab_size": 3})
