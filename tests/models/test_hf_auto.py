"""transformers interop: save/load through the Auto classes, generate() equals stream_generate."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from infini_attention import InfiniTransformer, ModelConfig, stream_generate  # noqa: E402
from infini_attention.models.hf_auto import InfiniConfig, InfiniForCausalLM, to_hf  # noqa: E402


def _model(tie: bool = True, **overrides) -> InfiniTransformer:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=61, d_model=48, n_layers=2, n_heads=6, n_kv_heads=3, segment_len=16, tie_embeddings=tie
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    model = InfiniTransformer(config).eval()
    with torch.no_grad():  # open, distinct gates: the memory path matters in these tests
        for i, gate in enumerate(model.gates()):
            gate.copy_(torch.linspace(-2, 2, gate.numel()) + i)
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_round_trip_through_the_auto_classes(tmp_path, tie):
    model = _model(tie)
    to_hf(model).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), InfiniConfig)
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(again, InfiniForCausalLM)
    assert again.model.config == model.config
    assert (again.model.lm_head.weight is again.model.embed.weight) == tie
    ours, theirs = model.state_dict(), again.model.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_generate_gives_the_greedy_tokens_of_stream_generate(tmp_path):
    model = _model()
    to_hf(model).save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = torch.randint(1, 61, (1, 21), generator=torch.Generator().manual_seed(1))
    # 21 prompt tokens + 45 new ones cross three segment boundaries of 16 tokens
    out = hf.generate(prompt, max_new_tokens=45, do_sample=False, pad_token_id=0)
    expected = list(stream_generate(model, prompt[0], 45))
    assert out[0, 21:].tolist() == expected
    assert out[0, :21].tolist() == prompt[0].tolist()


def test_loss_follows_the_transformers_convention():
    model = _model()
    hf = to_hf(model)
    ids = torch.randint(0, 61, (2, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = hf(ids, labels=ids).loss  # unshifted labels, shifted inside
        ours = model(ids[:, :-1], labels=ids[:, 1:]).loss
        streamed = hf(ids[:, :25])
        rest = hf(ids[:, 25:], infini_state=streamed.infini_state)
        whole = hf(ids).logits
    torch.testing.assert_close(theirs, ours)
    torch.testing.assert_close(torch.cat([streamed.logits, rest.logits], 1), whole, rtol=1e-5, atol=1e-5)


def test_padding_mask_is_refused():
    hf = to_hf(_model())
    ids = torch.randint(0, 61, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, :3] = 0
    with pytest.raises(ValueError, match="attention_mask with padding is not supported"):
        hf(ids, attention_mask=mask)
    hf(ids, attention_mask=torch.ones_like(mask))  # an all-ones mask is fine


def test_bad_inputs():
    with pytest.raises(ValueError, match="expected an InfiniTransformer"):
        to_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="holds no model config"):
        InfiniConfig().model_config()
    with pytest.raises(ValueError, match="unknown ModelConfig keys: bogus"):
        InfiniConfig(infini={"vocab_size": 5, "d_model": 8, "n_layers": 1, "n_heads": 2, "bogus": 1})
