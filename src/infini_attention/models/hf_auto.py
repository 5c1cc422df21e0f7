"""Hugging Face ``transformers`` interop: an ``InfiniTransformer`` behind the Auto classes.

Importing this module registers the pair with ``AutoConfig`` and ``AutoModelForCausalLM`` (model
type ``"infini_attention"``), so that after ``import infini_attention.models.hf_auto``::

    hf_model = to_hf(model)                      # wraps, sharing the weights
    hf_model.save_pretrained(folder)             # config.json + model.safetensors
    again = AutoModelForCausalLM.from_pretrained(folder)
    again.generate(input_ids, max_new_tokens=20) # greedy tokens equal stream_generate's

Generation carries the stream's ``ModelState`` (memory + open segment) from step to step under the
keyword ``infini_state``, the way Mamba carries its recurrent state: the prompt is fed once, then
one token per step. ``labels`` follow Hugging Face's convention (unshifted; shifted inside).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .config import ModelConfig
from .transformer import InfiniTransformer, ModelState

MODEL_TYPE = "infini_attention"


class InfiniConfig(PretrainedConfig):
    """``ModelConfig``'s fields under ``infini``; everything else is ``PretrainedConfig``'s."""

    model_type = MODEL_TYPE

    def __init__(self, infini: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.infini = ModelConfig.from_dict(infini).to_dict() if infini is not None else None
        if self.infini is not None:
            kwargs.setdefault("tie_word_embeddings", self.infini["tie_embeddings"])
            kwargs.setdefault("vocab_size", self.infini["vocab_size"])
        super().__init__(**kwargs)

    def model_config(self) -> ModelConfig:
        if self.infini is None:
            raise ValueError("this InfiniConfig holds no model config ('infini' is missing)")
        return ModelConfig.from_dict(self.infini)


@dataclass
class InfiniCausalLMOutput(ModelOutput):
    loss: Tensor | None = None
    logits: Tensor | None = None
    infini_state: ModelState | None = None  # continues the stream


class InfiniForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = InfiniConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _is_stateful = True  # a recurrent state, not a key/value cache: no assisted decoding, no cache
    _no_split_modules = ["Block"]

    def __init__(self, config: InfiniConfig, model: InfiniTransformer | None = None) -> None:
        super().__init__(config)
        self.model = model if model is not None else InfiniTransformer(config.model_config())
        if config.tie_word_embeddings:
            self._tied_weights_keys = {"model.lm_head.weight": "model.embed.weight"}
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the state travels as ``infini_state``, not as a transformers Cache

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Fresh models are initialised by ``InfiniTransformer.reset_parameters``; loading overwrites."""

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.model.lm_head

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        infini_state: ModelState | None = None,
        labels: Tensor | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> InfiniCausalLMOutput:
        """``input_ids`` ``[B, T]`` continue ``infini_state`` (None: a new stream)."""
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError(
                "attention_mask with padding is not supported: a stream has no left padding; "
                "generate one prompt at a time or use infini_attention.stream_generate"
            )
        shifted = None
        if labels is not None:  # labels[:, t] is input t itself here; the model wants t + 1
            shifted = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)
        out = self.model(input_ids, infini_state, shifted, logits_to_keep=int(logits_to_keep))
        return InfiniCausalLMOutput(loss=out.loss, logits=out.logits, infini_state=out.state)

    def prepare_inputs_for_generation(
        self, input_ids: Tensor, infini_state: ModelState | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        # The state already holds every token but the newest: feed only that one.
        if infini_state is not None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "infini_state": infini_state, "logits_to_keep": 1}

    def _update_model_kwargs_for_generation(
        self, outputs: ModelOutput, model_kwargs: dict[str, Any], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        model_kwargs["infini_state"] = outputs.infini_state
        return model_kwargs


def to_hf(model: InfiniTransformer) -> InfiniForCausalLM:
    """Wrap ``model`` (sharing its weights) for ``save_pretrained``/``generate``."""
    if not isinstance(model, InfiniTransformer):
        raise ValueError(f"expected an InfiniTransformer, got {type(model).__name__}")
    config = InfiniConfig(infini=dataclasses.asdict(model.config))
    wrapped = InfiniForCausalLM(config, model=model)
    return wrapped.to(model.embed.weight.device)


AutoConfig.register(MODEL_TYPE, InfiniConfig, exist_ok=True)
AutoModelForCausalLM.register(InfiniConfig, InfiniForCausalLM, exist_ok=True)
