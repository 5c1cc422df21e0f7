"""stream_generate: equals recomputing from scratch, bounded cache, sampling options."""

from __future__ import annotations

import pytest
import torch

from infini_attention import InfiniTransformer, ModelConfig, stream_generate


@pytest.fixture(scope="module")
def model() -> InfiniTransformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=53, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, segment_len=8, tie_embeddings=False
    )
    m = InfiniTransformer(config).double().eval()
    with torch.no_grad():
        for gate in m.gates():
            gate.copy_(torch.randn_like(gate) * 2)
        m.embed.weight.normal_()  # unit-scale embeddings and head: varied greedy tokens, few near-ties
        m.lm_head.weight.normal_()
    return m


def prompt(T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 53, (T,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("T", [1, 5, 8, 19])
def test_greedy_equals_recomputing_from_scratch(model, T):
    ids = prompt(T)
    generated = list(stream_generate(model, ids, max_new_tokens=20))
    assert len(generated) == 20 and all(isinstance(t, int) for t in generated)
    seq = ids.tolist()
    for token in generated:  # one full forward over everything so far, no state
        expected = model(torch.tensor([seq])).logits[0, -1].argmax().item()
        assert token == expected
        seq.append(token)
    assert len(set(generated)) > 1  # the check is not vacuous


def test_returns_bounded_state_and_continues_the_stream(model):
    ids = prompt(13)
    gen = stream_generate(model, ids, max_new_tokens=6)
    tokens = []
    while True:
        try:
            tokens.append(next(gen))
        except StopIteration as stop:
            state = stop.value
            break
    # the state holds the prompt and all but the last token: continuing equals one call
    assert state.buffered == (13 + 5) % 8
    whole = model(torch.tensor([ids.tolist() + tokens])).logits[:, -1]
    cont = model(torch.tensor([[tokens[-1]]]), state).logits[:, -1]
    assert (whole - cont).abs().max() < 1e-10


def test_batched_prompt_yields_one_token_per_sequence(model):
    ids = torch.stack([prompt(10, 1), prompt(10, 2)])
    batched = list(stream_generate(model, ids, max_new_tokens=5))
    assert all(t.shape == (2,) for t in batched)
    for row in range(2):
        single = list(stream_generate(model, ids[row], max_new_tokens=5))
        assert [t[row].item() for t in batched] == single


def test_sampling_is_reproducible_and_top_p_tiny_is_greedy(model):
    ids = prompt(9)

    def sample(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return list(stream_generate(model, ids, 15, temperature=1.0, generator=g, **kw))

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    greedy = list(stream_generate(model, ids, 15))
    assert sample(5, top_p=1e-9) == greedy


def test_eos_stops_generation(model):
    ids = prompt(9)
    greedy = list(stream_generate(model, ids, 15))
    eos = greedy[3]
    stopped = list(stream_generate(model, ids, 15, eos_id=eos))
    assert stopped == greedy[: greedy.index(eos) + 1]


def test_prompt_as_a_state(model):
    ids = prompt(12)
    state = model(ids[None, :-1]).state
    assert list(stream_generate(model, ids[-1:], 7, state=state)) == list(stream_generate(model, ids, 7))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_ids=torch.zeros(1, 1, 1, dtype=torch.long)), "1-D"),
        (dict(input_ids=torch.zeros(0, dtype=torch.long)), "empty"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(input_ids=torch.tensor([99])), "outside the vocabulary"),
    ],
)
def test_bad_input(model, kwargs, match):
    args = dict(input_ids=prompt(4), max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=match):
        list(stream_generate(model, **args))
