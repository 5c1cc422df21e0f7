"""Language models built from Infini-attention layers."""

from .config import ModelConfig
from .transformer import InfiniTransformer, ModelOutput, ModelState, memory_disabled

__all__ = ["InfiniTransformer", "ModelConfig", "ModelOutput", "ModelState", "memory_disabled"]
