"""Modules: the Infini-attention layer and the Llama-style pieces around it."""

from .attention import InfiniAttention
from .cached import CachedAttention, CacheState
from .mlp import RMSNorm, SwiGLU
from .rope import RotaryEmbedding

__all__ = ["CacheState", "CachedAttention", "InfiniAttention", "RMSNorm", "RotaryEmbedding", "SwiGLU"]
