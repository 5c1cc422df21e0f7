"""infini-attention: Infini-attention transformers with unbounded context at bounded memory."""

from . import ops
from .ops import InfiniState, infini_attention, infini_attention_naive

__version__ = "0.1.0"

__all__ = ["InfiniState", "infini_attention", "infini_attention_naive", "ops", "__version__"]
