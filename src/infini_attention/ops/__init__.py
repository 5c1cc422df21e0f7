"""Infini-attention ops: the fast op and its reference, same contract."""

from .chunked import infini_attention
from .naive import infini_attention_naive, sigma
from .state import InfiniState

__all__ = ["InfiniState", "infini_attention", "infini_attention_naive", "sigma"]
