"""Perplexity of whole documents of any length, streamed through the model at bounded memory.

A document of T tokens gives T - 1 predictions; the prediction of token ``p`` (0-based) is made
with ``p`` tokens of context, and ``p`` is its *position*: how many tokens into the document it is.
Position buckets ``(0, 2048, 8192, 32768)`` are the half-open ranges ``[0, 2048)``, ``[2048, 8192)``,
``[8192, 32768)`` and ``[32768, inf)``, labelled ``0-2K``, ``2K-8K``, ``8K-32K`` and ``32K+``. Past the
first segment a prediction can only use earlier text through the compressive memory, so comparing
each bucket with the memory gated off (local attention only) shows what the memory contributes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_BUCKETS = (0, 2048, 8192, 32768)


def format_tokens(n: int) -> str:
    """A token count as the paper writes it: 2048 -> ``2K``, 1048576 -> ``1M``, 1000 -> ``1000``."""
    if n >= 2**20 and n % 2**20 == 0:
        return f"{n // 2**20}M"
    if n >= 2**10 and n % 2**10 == 0:
        return f"{n // 2**10}K"
    return str(n)


def bucket_labels(buckets: Sequence[int]) -> list[str]:
    """``(0, 2048, 8192)`` -> ``["0-2K", "2K-8K", "8K+"]``."""
    edges = [format_tokens(b) for b in buckets]
    return [f"{a}-{b}" for a, b in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]


def _as_ids(ids: Tensor | np.ndarray | Sequence[int]) -> Tensor:
    # np.memmap views of uint16 shards: copied into int64 (torch embeddings index with int64)
    t = ids if isinstance(ids, Tensor) else torch.from_numpy(np.asarray(ids).astype(np.int64, copy=True))
    if t.dim() != 1:
        raise ValueError(f"ids must be a 1-D sequence of token ids, got shape {tuple(t.shape)}")
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"ids must be integer token ids, got {t.dtype}")
    return t.long()


@torch.no_grad()
def stream_nll(
    model,
    ids: Tensor | np.ndarray,
    *,
    chunk_len: int | None = None,
    progress: Callable[[int], None] | None = None,
    reset_every_segment: bool = False,
) -> Tensor:
    """Per-token negative log-likelihood ``[T - 1]`` (float64) of one document ``ids`` ``[T]``.

    The document is fed ``chunk_len`` tokens at a time (default: the model's ``segment_len``),
    each call continuing the previous one's state, so memory is bounded by the chunk whatever the
    document's length; the result equals one forward pass over the whole document. Entry ``t`` is
    ``-log p(ids[t + 1] | ids[:t + 1])``. ``progress(n)`` is called with the tokens of each chunk.

    ``reset_every_segment``: empty the memory at every segment boundary (gates untouched), so each
    segment sees exactly what the first one of a document sees: no information from earlier
    segments. Against the normal stream this isolates what the memory carries across segments.
    """
    ids = _as_ids(ids)
    if reset_every_segment:
        chunk_len = model.config.segment_len  # chunks start on segment boundaries
    elif chunk_len is None:
        chunk_len = model.config.segment_len
    if isinstance(chunk_len, bool) or not isinstance(chunk_len, int) or chunk_len <= 0:
        raise ValueError(f"chunk_len must be a positive int, got {chunk_len!r}")
    T = ids.shape[0]
    nll = torch.zeros(max(T - 1, 0), dtype=torch.float64)
    if T < 2:
        return nll
    device = next(model.parameters()).device
    state = None
    for a in range(0, T - 1, chunk_len):  # the last token is only a target
        b = min(a + chunk_len, T - 1)
        x = ids[a:b].to(device)[None]
        out = model(x, None if reset_every_segment else state)
        state = out.state
        logits = out.logits[0]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        targets = ids[a + 1 : b + 1].to(device)
        nll[a:b] = F.cross_entropy(logits, targets, reduction="none").to("cpu", torch.float64)
        if progress is not None:
            progress(b - a + (1 if b == T - 1 else 0))
    return nll


def _iter_docs(docs: Any) -> Iterator[tuple[str, Tensor | np.ndarray]]:
    """``(name, ids)`` from a ``TokenShards`` (``.doc(i)``, ``.names``), ``(name, ids)`` pairs or ids."""
    if hasattr(docs, "doc") and hasattr(docs, "num_docs"):
        names = getattr(docs, "names", None)
        for i in range(docs.num_docs):
            yield (names[i] if names is not None else f"doc{i}"), docs.doc(i)
        return
    for i, item in enumerate(docs):
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            yield item
        else:
            yield f"doc{i}", item


def _check_buckets(buckets: Sequence[int]) -> tuple[int, ...]:
    b = tuple(buckets)
    if not b or b[0] != 0 or any(isinstance(x, bool) or not isinstance(x, int) for x in b):
        raise ValueError(f"buckets must be ints starting at 0, got {buckets!r}")
    if any(y <= x for x, y in zip(b, b[1:], strict=False)):
        raise ValueError(f"buckets must be strictly increasing, got {buckets!r}")
    return b


def _ppl(nll_sum: float, n: int) -> float | None:
    if not n:
        return None
    try:
        return math.exp(nll_sum / n)
    except OverflowError:  # a mean NLL above ~709 nats: a broken model, reported as infinite
        return math.inf


_SUFFIX = {"on": "", "off": "_no_memory", "reset": "_memory_reset"}


def evaluate_ppl(
    model,
    docs: Iterable,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    max_tokens: int | None = None,
    *,
    memory_off: bool = True,
    memory_reset: bool = False,
    chunk_len: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Perplexity overall and per position bucket, with the memory on and (``memory_off``) off.

    ``docs``: a ``TokenShards`` split, or an iterable of 1-D token id arrays or ``(name, ids)``
    pairs. Each document is streamed on its own (a fresh memory per document). ``max_tokens``
    caps the tokens read in total: documents are taken in order and the last one is cut short.

    Returns a JSON-ready dict::

        {"docs": [{"name", "tokens"}], "tokens": predictions scored, "buckets": [{"label",
         "start", "end" (None: open), "tokens", "nll", "ppl", "nll_no_memory", "ppl_no_memory"}],
         "overall": {same keys but start/end}, "seconds", "tokens_per_s",
         "seconds_no_memory", "tokens_per_s_no_memory"}

    ``nll`` is the mean negative log-likelihood in nats, ``ppl = exp(nll)``; an empty bucket has
    ``None`` for both. The ``*_no_memory`` entries are absent when ``memory_off`` is False or the
    model has no memory gate (the gateless baselines of ``ModelConfig.attention``).
    ``tokens_per_s`` counts document tokens streamed per second (memory on).

    Gating the memory off also rescales the local path (a trained gate mixes both), so it is not
    a clean test of long-range use; ``memory_reset`` adds ``*_memory_reset`` entries where the
    memory is emptied at every segment (gates untouched): the gap to ``ppl`` is what the memory
    carries from earlier segments.
    """
    from ..models import memory_disabled

    edges = _check_buckets(buckets)
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise ValueError(f"max_tokens must be a positive int or None, got {max_tokens!r}")
    if max_tokens is not None and max_tokens < 2:
        raise ValueError(f"max_tokens must be at least 2 (one prediction), got {max_tokens}")
    memory_off = memory_off and any(True for _ in model.gates())  # gateless baselines: no such pass
    modes = ["on"] + (["off"] if memory_off else []) + (["reset"] if memory_reset else [])
    sums = {m: [0.0] * len(edges) for m in modes}
    counts = [0] * len(edges)
    seconds = dict.fromkeys(modes, 0.0)
    streamed = 0
    doc_info = []
    remaining = max_tokens
    for name, ids in _iter_docs(docs):
        if remaining is not None and remaining <= 0:
            break
        ids = _as_ids(ids)
        if remaining is not None:
            ids = ids[:remaining]
            remaining -= ids.shape[0]
        doc_info.append({"name": name, "tokens": int(ids.shape[0])})
        if ids.shape[0] < 2:
            continue
        streamed += ids.shape[0]
        positions = torch.arange(1, ids.shape[0])  # context length of each prediction
        which = torch.bucketize(positions, torch.tensor(edges[1:]), right=True)  # bucket index
        for i in range(len(edges)):
            counts[i] += int((which == i).sum())
        for mode in modes:
            t0 = time.perf_counter()
            if mode == "on":
                nll = stream_nll(model, ids, chunk_len=chunk_len, progress=progress)
            elif mode == "reset":
                nll = stream_nll(model, ids, progress=progress, reset_every_segment=True)
            else:
                with memory_disabled(model):
                    nll = stream_nll(model, ids, chunk_len=chunk_len, progress=progress)
            seconds[mode] += time.perf_counter() - t0
            per_bucket = torch.zeros(len(edges), dtype=torch.float64).index_add_(0, which, nll)
            for i in range(len(edges)):
                sums[mode][i] += float(per_bucket[i])

    if not any(counts):
        raise ValueError("no tokens to evaluate: every document is shorter than 2 tokens")
    labels = bucket_labels(edges)
    total = sum(counts)

    def stats(mode_sums: dict[str, float], n: int) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": n}
        for mode in modes:
            suffix = _SUFFIX[mode]
            mean = mode_sums[mode] / n if n else None
            out[f"nll{suffix}"] = mean
            out[f"ppl{suffix}"] = _ppl(mode_sums[mode], n)
        return out

    result: dict[str, Any] = {"docs": doc_info, "tokens": total, "buckets": []}
    for i, label in enumerate(labels):
        entry = {"label": label, "start": edges[i], "end": edges[i + 1] if i + 1 < len(edges) else None}
        entry.update(stats({m: sums[m][i] for m in modes}, counts[i]))
        result["buckets"].append(entry)
    result["overall"] = {"label": "overall", **stats({m: sum(sums[m]) for m in modes}, total)}
    for mode in modes:
        suffix = _SUFFIX[mode]
        result[f"seconds{suffix}"] = seconds[mode]
        result[f"tokens_per_s{suffix}"] = streamed / seconds[mode] if seconds[mode] > 0 else None
    return result


def format_ppl_table(result: dict[str, Any]) -> str:
    """The table ``infini eval ppl`` prints: bucket, tokens, perplexity with and without memory."""
    has_off = "ppl_no_memory" in result["overall"]
    has_reset = "ppl_memory_reset" in result["overall"]
    header = (
        f"{'bucket':<10} {'tokens':>12} {'ppl memory':>12}"
        + (f" {'ppl no memory':>14}" if has_off else "")
        + (f" {'ppl reset/segment':>18}" if has_reset else "")
    )
    lines = [header, "-" * len(header)]

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}" if x < 1e4 else f"{x:.4g}"

    for entry in [*result["buckets"], result["overall"]]:
        if entry is result["overall"]:
            lines.append("-" * len(header))
        row = f"{entry['label']:<10} {entry['tokens']:>12,} {num(entry['ppl']):>12}"
        if has_off:
            row += f" {num(entry['ppl_no_memory']):>14}"
        if has_reset:
            row += f" {num(entry['ppl_memory_reset']):>18}"
        lines.append(row)
    speed = result.get("tokens_per_s")
    if speed:
        lines.append(f"{len(result['docs'])} document(s), {speed:,.0f} tokens/s (memory on)")
    return "\n".join(lines)
