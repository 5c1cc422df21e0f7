"""Evaluation: streamed perplexity by position, passkey retrieval, and plots.

``plots`` is not imported here (it pulls in matplotlib); use ``infini_attention.eval.plots``.
"""

from .passkey import format_passkey_table, run_passkey
from .perplexity import evaluate_ppl, format_ppl_table, stream_nll

__all__ = ["evaluate_ppl", "format_passkey_table", "format_ppl_table", "run_passkey", "stream_nll"]
