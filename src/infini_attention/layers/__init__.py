"""Modules: the Infini-attention layer and the Llama-style pieces around it."""

from .attention import InfiniAttention
from .mlp import RMSNorm, SwiGLU
from .rope import RotaryEmbedding

__all__ = ["InfiniAttention", "RMSNorm", "RotaryEmbedding", "SwiGLU"]
